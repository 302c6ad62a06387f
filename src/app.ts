// The composition root: creates the clients, wires the parts and owns their lifecycle. Parts are
// started in order and stopped in reverse; a failure while starting stops what was started.
import { Redis } from 'ioredis';
import { redisNodeId, type Config } from './config/schema.ts';
import { HistoryArchive } from './events/archive.ts';
import { EventPublisher } from './events/publisher.ts';
import { queuesAt, rebuildCheck, rebuildState } from './events/projection.ts';
import { PurgeVault } from './events/purgeVault.ts';
import { ProducerWorker } from './ingress/producers/worker.ts';
import { SmtpIngress } from './ingress/smtp/server.ts';
import type { Logger } from './log.ts';
import { startMailbox } from './mailbox/service.ts';
import { startOps } from './ops/http.ts';
import { HistoryBudget } from './queue/historyBudget.ts';
import { QueueManager } from './queue/manager.ts';
import { memoryReport, type MemoryReport } from './ops/memory.ts';
import { GatewayMetrics } from './ops/metrics.ts';
import { startRelay } from './relay/relay.ts';
import { lowestCursor } from './message/ids.ts';
import { tuneHeap } from './heap.ts';

export interface Gateway {
  queues: QueueManager;
  /** The event log in Cassandra; undefined when events.archive is off. */
  archive: HistoryArchive | undefined;
  /** The memory budgets (mail, history, events) as last measured. */
  memory: () => MemoryReport;
  /** Every metric of /metrics; other parts add theirs with metrics.extend(). */
  metrics: GatewayMetrics;
  stop(): Promise<void>;
}

export interface Part {
  name: string;
  stop(): Promise<void>;
}

export async function startGateway(config: Config, log: Logger): Promise<Gateway> {
  tuneHeap();
  const parts: Part[] = [];
  const stopAll = async () => {
    for (const p of parts.reverse()) {
      await p.stop().catch((err: unknown) => log.error({ err, part: p.name }, 'stop failed'));
    }
  };
  try {
    const queues = new QueueManager(config, log, { archived: config.events.archive });
    await queues.start();
    parts.push({ name: 'queue', stop: () => queues.stop() });
    const metrics = new GatewayMetrics({ topDestinations: config.ops.topDestinations });
    metrics.watchQueues(queues, config.queue.memoryHighWater);
    parts.push({ name: 'metrics', stop: async () => metrics.stop() });
    log.info({ gateway: config.gateway.id, nodes: queues.nodes.map((n) => n.id), queues: queues.domains().length }, 'queues ready');

    // Cassandra mailboxes, local delivery, the user directory and POP3. Starts even while
    // Cassandra is down (logged): mail for local domains then defers until it answers.
    const mailbox = await startMailbox(config, log);
    parts.push({ name: 'mailbox', stop: () => mailbox.stop() });

    // The relay delivers `local` routes (and domains.local) through the mailbox part.
    const relay = startRelay(queues, config, log, { local: mailbox.localDelivery });
    parts.push({ name: 'relay', stop: () => relay.stop() });
    metrics.watchRelay(relay);

    // SMTP ingress: recipient checks for local domains and submission AUTH use the mailbox
    // part's user directory (the configuration's `users` first, then the users table).
    const ingress = new SmtpIngress({ config, queues, log, users: mailbox.users });
    await ingress.start();
    metrics.watchIngress(ingress);
    parts.push({ name: 'smtp', stop: () => ingress.stop() });

    // Producers in, lifecycle events out (BullMQ on events.redis: a Redis of its own by default).
    const eventsShared = queues.nodes.some((n) => n.is(redisNodeId(config.events.redis)));
    const bullConnection = new Redis(config.events.redis, { maxRetriesPerRequest: null });
    bullConnection.on('error', (err) => log.warn({ err: err.message, component: 'events' }, 'events redis error'));
    parts.push({ name: 'events-redis', stop: async () => void bullConnection.disconnect() });
    const publisher = new EventPublisher(queues, config.events.queue, bullConnection, log, {
      budget: config.events.budget,
      whenFull: config.events.whenFull,
      dedicated: !eventsShared,
      batch: config.events.batch,
    });
    await publisher.start();
    parts.push({ name: 'events', stop: () => publisher.stop() });
    // The event log: every history event archived into Cassandra before Redis may trim it.
    const archive = config.events.archive ? new HistoryArchive(queues, mailbox.store, config, log) : undefined;
    archive?.start();
    if (archive) parts.push({ name: 'archive', stop: () => archive.stop() });
    // The history budget across all queues, and queue.historyMaxLength once archived: trims
    // oldest-first, never past the events cursor nor what the archive confirmed, unless history
    // held by unsent events would reach into mail's share below the high-water mark.
    const trimBound = (domain: string) => (archive ? lowestCursor(publisher.cursorOf(domain), archive.cursorOf(domain)) : publisher.cursorOf(domain));
    const ceiling = config.queue.memoryHighWater - config.queue.mailBudget - (eventsShared ? config.events.budget : 0);
    const history = new HistoryBudget(queues, config.queue.historyBudget, trimBound, log, { capTo: archive ? config.queue.historyMaxLength : 0, ceiling });
    archive?.on('archived', (domain: string) => void history.cap(domain));
    history.start();
    parts.push({ name: 'history', stop: async () => history.stop() });
    const producers = new ProducerWorker({ config, queues, connection: bullConnection, log });
    producers.start();
    parts.push({ name: 'producers', stop: () => producers.stop() });

    // Ops HTTP API: dashboard, health, metrics, queues, message history, hold/release/purge/flush.
    const memory = memoryReport(config, queues, history, publisher, archive);
    metrics.watchMemory(memory);
    metrics.watchPublisher(queues, (domain) => publisher.cursorOf(domain));
    const vault = archive && config.queue.purgeGrace > 0 ? new PurgeVault(queues, mailbox.store, config) : undefined;
    const ops = await startOps({ config, queues, relay, log, memory, metrics, ...(archive ? { story: (id: string) => archive.story(id), rebuildCheck: (domain: string) => rebuildCheck(queues, archive, domain), rebuildState: (domain: string, who: { actor: string; reason: string; token: string }) => rebuildState(queues, archive, domain, who), queuesAt: (at: number, domain?: string) => queuesAt(queues, archive, at, domain) } : {}), ...(vault ? { vault } : {}) });
    parts.push({ name: 'ops', stop: () => ops.stop() });
    log.info({ gateway: config.gateway.id, parts: parts.map((p) => p.name) }, 'gateway ready');

    return { queues, archive, memory, metrics, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
