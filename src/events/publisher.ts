// Lifecycle events out to billing and notification consumers: a BullMQ queue (events.queue) with
// one job per event, the event id as job id so a consumer sees each event once even when this
// publisher sends it twice. The source is the queues' history streams, read through a durable
// cursor per destination queue (kept in the events Redis): live events are sent as they happen,
// and at start everything after the cursor is sent again, so a crash loses no event.
import { Queue as BullQueue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import type { LifecycleEvent } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';

const FLUSH_MS = 50;

/**
 * Each event job: a consumer whose handler throws gets it again, up to 10 times over about 17
 * minutes (1 s, 2 s, 4 s ...), then it stays in the failed set; finished jobs are kept (the last
 * 100,000), and while kept, the same event sent again is not added twice.
 */
export const JOB_OPTIONS = { attempts: 10, backoff: { type: 'exponential', delay: 1000 }, removeOnComplete: { count: 100_000 }, removeOnFail: { count: 100_000 } } as const;
const BATCH = 500;

/** BullMQ refuses ":" in custom job ids; event ids have none ("gw/domain/ms-seq"). */
export const jobIdOf = (ev: { id: string }) => ev.id;

export class EventPublisher {
  private readonly bull: BullQueue;
  private readonly buffer: LifecycleEvent[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private readonly onEvent = (ev: LifecycleEvent) => this.push(ev);
  private readonly cursorKey: (domain: string) => string;
  private readonly queues: QueueManager;
  private readonly redis: Redis;
  private readonly log: Logger;
  sent = 0;
  private degraded = false;
  private recovering = false;
  private retry: NodeJS.Timeout | undefined;

  constructor(queues: QueueManager, queueName: string, redis: Redis, log: Logger) {
    this.queues = queues;
    this.redis = redis;
    this.log = log.child({ component: 'events' });
    this.bull = new BullQueue(queueName, { connection: redis, defaultJobOptions: JOB_OPTIONS });
    this.cursorKey = (domain) => `sg:events:cursor:{${queues.gatewayId}}:${domain}`;
  }

  async start(): Promise<void> {
    this.queues.on('event', this.onEvent);
    let caught = 0;
    for (const domain of this.queues.domains()) caught += await this.catchUp(domain);
    if (caught) this.log.info({ events: caught }, 'events sent again after the cursor');
  }

  /** Sends every history event after the queue's cursor. */
  private async catchUp(domain: string): Promise<number> {
    let cursor = (await this.redis.get(this.cursorKey(domain))) ?? undefined;
    let n = 0;
    for (;;) {
      const rows = await this.queues.historySince(domain, cursor, BATCH);
      if (!rows.length) break;
      const q = this.queues.view(domain)!;
      await this.send(
        rows.map((r) => ({ id: `${this.queues.gatewayId}/${domain}/${r.histId}`, queue: q.name, domain, kind: r.kind as LifecycleEvent['kind'], messageId: r.messageId, txn: r.txn, at: r.at, details: r.details })),
      );
      cursor = rows[rows.length - 1]!.histId;
      n += rows.length;
    }
    return n;
  }

  private push(ev: LifecycleEvent): void {
    if (this.degraded) return; // in the history: the catch-up sends it
    this.buffer.push(ev);
    if (this.buffer.length >= BATCH) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), FLUSH_MS);
  }

  /** Sends what is buffered; the cursors move only after BullMQ took the jobs. */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.buffer.splice(0);
    this.flushing = this.flushing.then(async () => {
      if (!batch.length) return;
      if (this.degraded) return;
      try {
        await this.send(batch);
      } catch (err) {
        // The cursors did not move past these: stop sending live events and catch up from the
        // history streams until the events Redis takes them again.
        this.log.warn({ err, events: batch.length }, 'events not sent; catching up from the history');
        this.degraded = true;
        this.buffer.length = 0;
        this.retry = setInterval(() => void this.recover(), 1000);
      }
    });
    return this.flushing;
  }

  private async recover(): Promise<void> {
    if (this.recovering) return;
    this.recovering = true;
    try {
      this.degraded = false;
      for (const domain of this.queues.domains()) await this.catchUp(domain);
      clearInterval(this.retry);
      this.log.info('events flowing again');
    } catch {
      this.degraded = true;
    } finally {
      this.recovering = false;
    }
  }

  private async send(batch: LifecycleEvent[]): Promise<void> {
    await this.bull.addBulk(batch.map((ev) => ({ name: ev.kind, data: ev, opts: { jobId: jobIdOf(ev) } })));
    const last = new Map<string, string>();
    for (const ev of batch) last.set(ev.domain, ev.id.slice(ev.id.lastIndexOf('/') + 1));
    const pipe = this.redis.pipeline();
    for (const [domain, histId] of last) pipe.set(this.cursorKey(domain), histId);
    await pipe.exec();
    this.sent += batch.length;
  }

  async stop(): Promise<void> {
    this.queues.off('event', this.onEvent);
    clearInterval(this.retry);
    await this.flush();
    await this.bull.close();
  }
}
