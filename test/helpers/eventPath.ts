// A gateway's event path without SMTP, for the event log's tests: queues, the events publisher,
// the archive into Cassandra and the history trims, wired as src/app.ts wires them.
import { Queue as BullQueue } from 'bullmq';
import { Redis } from 'ioredis';
import type { Config } from '../../src/config/schema.ts';
import { HistoryArchive } from '../../src/events/archive.ts';
import { EventPublisher } from '../../src/events/publisher.ts';
import { silentLogger } from '../../src/log.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import { lowestCursor } from '../../src/message/ids.ts';
import type { LifecycleEvent } from '../../src/message/types.ts';
import { HistoryBudget } from '../../src/queue/historyBudget.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { randomBytes } from 'node:crypto';
import { cassandraForTests } from './cassandra.ts';
import { testConfig } from './config.ts';
import { startRedis, startRedisPool, type TestRedis } from './redis.ts';

/** A gateway's event path without SMTP: queues, publisher, archive and the history trims. */
export class EventPath {
  qm!: QueueManager;
  pub!: EventPublisher;
  archive!: HistoryArchive;
  history!: HistoryBudget;
  store!: MailStore;
  bull!: BullQueue;
  conn!: Redis;
  readonly emitted: LifecycleEvent[] = [];
  readonly config: Config;
  readonly events: TestRedis;
  readonly queueName: string;
  readonly max: number;
  readonly gatewayId: string;
  readonly batch: number | false;
  constructor(config: Config, events: TestRedis, queueName: string, opts: { max?: number; gatewayId?: string; batch?: number } = {}) {
    this.batch = opts.batch ?? false;
    this.max = opts.max ?? 1000;
    this.gatewayId = opts.gatewayId ?? 'gw-arch';
    this.config = config;
    this.events = events;
    this.queueName = queueName;
  }

  async start(): Promise<void> {
    this.qm = new QueueManager(this.config, silentLogger, { gatewayId: this.gatewayId, archived: true });
    this.qm.on('event', (ev: LifecycleEvent) => this.emitted.push(ev));
    await this.qm.start();
    this.conn = new Redis(this.events.url, { maxRetriesPerRequest: null });
    this.bull = new BullQueue(this.queueName, { connection: this.conn });
    this.pub = new EventPublisher(this.qm, this.queueName, this.conn, silentLogger, { budget: 0.8, whenFull: 'stop', batch: this.batch });
    await this.pub.start();
    this.store = new MailStore(this.config, silentLogger, { connectTimeoutMs: 1000, readTimeoutMs: 3000 });
    this.archive = new HistoryArchive(this.qm, this.store, this.config, silentLogger);
    this.archive.start();
    this.history = new HistoryBudget(this.qm, this.config.queue.historyBudget, (d) => lowestCursor(this.pub.cursorOf(d), this.archive.cursorOf(d)), silentLogger, { capTo: this.max });
    this.archive.on('archived', (d: string) => void this.history.cap(d));
  }

  async stop(): Promise<void> {
    await this.archive.stop().catch(() => {});
    await this.pub.stop();
    await this.bull.close();
    this.conn.disconnect();
    await this.qm.stop();
    await this.store.close();
  }

  /** `n` messages through the queue of `domain`: accepted, attempted, delivered (three events each). */
  async traffic(domain: string, n: number, tag: string, delivered: Record<string, unknown> = { reply: '250 ok' }): Promise<string[]> {
    const ids: string[] = [];
    const raw = Buffer.from(`Subject: ${tag}\r\n\r\n${'x'.repeat(200)}\r\n`);
    for (let i = 0; i < n; i += 500) {
      const batch = Array.from({ length: Math.min(500, n - i) }, (_, k) => `${tag}-${i + k}`);
      ids.push(...batch);
      await Promise.all(batch.map((id) => this.qm.append({ id, domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw })));
      for (;;) {
        const taken = await this.qm.take(domain, 500);
        if (!taken.length) break;
        await Promise.all(taken.map((m) => this.qm.settle(domain, m.id, 'delivered', delivered)));
      }
    }
    return ids;
  }

  async histLens(domain: string, pool: TestRedis[]): Promise<number[]> {
    const q = this.qm.queues.get(domain)!;
    return Promise.all(q.replicas.map((r) => pool.find((p) => r.node.is(new URL(p.url).host))!.client().xlen(q.keys[1])));
  }

  /** Every row of the queue's archived history: [ms-seq] in clustering order. */
  async archivedIds(domain: string): Promise<string[]> {
    const out: string[] = [];
    for await (const ev of this.archive.eventsOf(domain, 0, Date.now() + 60_000)) out.push(ev.id);
    return out;
  }
}

/** What an event-log test runs against: a pool of two Redis nodes, an events Redis, the run's Cassandra and a keyspace of its own. */
export interface EventLogServers {
  pool: TestRedis[];
  events: TestRedis;
  contactPoint: string;
  keyspace: string;
  /** A test configuration on these servers, with `overrides`. */
  config(overrides?: Record<string, unknown>): Config;
  /** Drops the keyspace and stops the Redis servers. */
  stop(): Promise<void>;
}

export async function startEventLogServers(name: string): Promise<EventLogServers> {
  const contactPoint = (await cassandraForTests()).contactPoint;
  const [pool, events] = await Promise.all([startRedisPool(2), startRedis()]);
  const keyspace = `sg_${name}_${randomBytes(3).toString('hex')}`;
  return {
    pool,
    events,
    contactPoint,
    keyspace,
    config: (overrides = {}) => testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { historyMaxLength: 1000 }, cassandra: { contactPoints: [contactPoint], keyspace }, ...overrides }),
    async stop() {
      const s = new MailStore(testConfig({ cassandra: { contactPoints: [contactPoint], keyspace } }), silentLogger);
      await s.client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`).catch(() => {});
      await s.close();
      await Promise.all([...pool, events].map((r) => r.stop()));
    },
  };
}
