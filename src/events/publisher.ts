// Lifecycle events out to billing and notification consumers: a BullMQ queue (events.queue) with
// one job per event, the event id as job id so a consumer sees each event once even when this
// publisher sends it twice; or, with events.batch N, up to N consecutive events of one queue per
// job (eventJobs()), each keeping its id inside, for consumers to deduplicate on. The source is the queues' history streams, read through a durable
// cursor per destination queue (kept in the events Redis): live events are sent as they happen,
// and at start everything after the cursor is sent again, so a crash loses no event.
//
// The events queue has a memory budget of its own (events.budget × the events Redis's maxmemory),
// measured every couple of seconds: jobs in the queue × their sampled size (MEMORY USAGE of a few
// jobs). Finished jobs (completed, failed) go first when it is full; then events.whenFull decides:
// `stop` stops publishing, the cursors stay where they are, and the events follow from the history
// once a consumer has drained the queue below 80% of the budget (nothing lost); `drop` removes the
// oldest waiting jobs (counted) and goes on. Either way the gateway is degraded, not failing, and
// mail is never refused for it.
import { Queue as BullQueue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import { type LifecycleEvent } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';
import { compareIds, histIdOf } from '../message/ids.ts';
import { splitQueueName } from '../queue/placement.ts';
import { EVENT_BATCH_JOB } from '../client/schema.ts';

/** Live events are sent this soon after the first of them (with events.batch, later: bigger jobs, fewer of them). */
const FLUSH_MS = 50;
const BATCH_FLUSH_MS = 250;

/**
 * Each event job: a consumer whose handler throws gets it again, up to 10 times over about 17
 * minutes (1 s, 2 s, 4 s ...), then it stays in the failed set; finished jobs are kept (the last
 * 100,000), and while kept, the same event sent again is not added twice.
 */
export const JOB_OPTIONS = { attempts: 10, backoff: { type: 'exponential', delay: 1000 }, removeOnComplete: { count: 1000 }, removeOnFail: { count: 10_000 } } as const;
/** Events read per catch-up step, and live events sent at once (one job each). */
const BATCH = 500;
/** Live events sent at once with events.batch: fewer, fuller addBulk calls (each a pipeline of its own). */
const BATCHED_LIVE = 2000;
/** How often the events queue's memory is measured. */
const MEASURE_MS = 2000;
/** Publishing stopped for a full budget starts again below this share of it. */
const RESUME_AT = 0.8;
/** Live events held while a catch-up runs, at most; beyond, they are read again from the history. */
const HOLD_MAX = 50_000;

export interface EventsBudgetOptions {
  /** Share of the events Redis's maxmemory the events queue may use. */
  budget: number;
  whenFull: 'stop' | 'drop';
  /** The events Redis holds nothing but events and producer jobs: its used_memory counts whole. */
  dedicated?: boolean;
  /** events.batch: false, one job per event; N, up to N events of one queue per job. */
  batch?: number | false;
}

export interface EventsBudgetStatus {
  policy: 'stop' | 'drop';
  /** Estimated bytes of the events queue's jobs, and its limit (0: the events Redis has no maxmemory). */
  bytes: number;
  limit: number;
  jobs: number;
  waiting: number;
  full: boolean;
  /** Publishing stopped (whenFull stop, or the events Redis failing): events wait in the history. */
  paused: boolean;
  /** Undelivered event jobs dropped for the budget (whenFull drop), since start. */
  dropped: number;
  /** Events the events queue refused, parked with their reason (sg:events:parked:{gateway}), since start. */
  parked: number;
  usedMemory: number;
  maxmemory: number;
}

class BudgetFull extends Error {}

/** The job id of an event: its id, which eventId() keeps free of ":" (BullMQ refuses it). */
export const jobIdOf = (ev: { id: string }) => ev.id;

export interface EventJob {
  name: string;
  data: unknown;
  opts: { jobId: string };
  /** The events it carries. */
  events: LifecycleEvent[];
}

/**
 * The jobs that carry `events` (in history order): one per event (named by its kind, the event
 * as data, its id as job id), or with `batch` N, runs of up to N consecutive events of one queue
 * (named EVENT_BATCH_JOB, data { events }, id "<first event id>..<last ms-seq>": the same run sent
 * again is the same job).
 */
export function eventJobs(events: LifecycleEvent[], batch: number | false | undefined): EventJob[] {
  if (!batch) return events.map((ev) => ({ name: ev.kind, data: ev, opts: { jobId: jobIdOf(ev) }, events: [ev] }));
  const out: EventJob[] = [];
  let run: LifecycleEvent[] = [];
  const close = () => {
    if (!run.length) return;
    out.push({ name: EVENT_BATCH_JOB, data: { events: run }, opts: { jobId: `${jobIdOf(run[0]!)}..${histIdOf(run[run.length - 1]!.id)}` }, events: run });
    run = [];
  };
  for (const ev of events) {
    if (run.length >= batch || (run.length && run[0]!.domain !== ev.domain)) close();
    run.push(ev);
  }
  close();
  return out;
}

/** Why BullMQ would refuse `id` as a custom job id, or undefined. */
export function unfitJobId(id: string): string | undefined {
  if (!id) return 'an empty job id';
  if (id.includes(':')) return `job id ${JSON.stringify(id)} contains ":", which BullMQ refuses`;
  if (/^\d+$/.test(id)) return `job id ${JSON.stringify(id)} is an integer, which BullMQ refuses`;
  return undefined;
}

/** Errors of the events Redis as a whole (the batch is tried again later), not of one event. */
const STORE_FAULT = /OOM|LOADING|READONLY|MISCONF|BUSY|MASTERDOWN|NOREPLICAS|connection|closed|ECONN|ETIMEDOUT|EPIPE|timed? ?out/i;
/** Parked events kept, the newest. */
const PARKED_MAX = 10_000;

export class EventPublisher {
  private readonly bull: BullQueue;
  private readonly buffer: LifecycleEvent[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private readonly onEvent = (ev: LifecycleEvent) => this.push(ev);
  private readonly onDropped = (ref: string) => void this.forget(ref);
  private readonly cursorKey: (domain: string) => string;
  private readonly queues: QueueManager;
  private readonly redis: Redis;
  private readonly log: Logger;
  sent = 0;
  /** Events parked since start: the events queue could not take them (see park()). */
  parked = 0;
  private readonly parkedKey: string;
  private degraded = false;
  private recovering = false;
  private retry: NodeJS.Timeout | undefined;
  /** Live events are held, not sent, while a catch-up runs (the cursor must not jump ahead of it). */
  private holding = false;
  private heldOver = false;
  /** The last event id sent per queue (its cursor), as this process knows it. */
  private readonly cursors = new Map<string, string>();
  private readonly opts: EventsBudgetOptions;
  private measureTimer: NodeJS.Timeout | undefined;
  private jobBytes = 600;
  private readonly state: EventsBudgetStatus;

  constructor(queues: QueueManager, queueName: string, redis: Redis, log: Logger, opts: EventsBudgetOptions = { budget: 0.8, whenFull: 'stop' }) {
    this.queues = queues;
    this.redis = redis;
    this.opts = opts;
    this.log = log.child({ component: 'events' });
    this.bull = new BullQueue(queueName, { connection: redis, defaultJobOptions: JOB_OPTIONS });
    // by queue name: an adopted queue's events go on from the cursor of the gateway it came from
    this.cursorKey = (ref) => {
      const { origin, domain } = splitQueueName(queues.nameOf(ref));
      return `sg:events:cursor:{${origin}}:${domain}`;
    };
    this.parkedKey = `sg:events:parked:{${queues.gatewayId}}`;
    this.state = { policy: opts.whenFull, bytes: 0, limit: 0, jobs: 0, waiting: 0, full: false, paused: false, dropped: 0, parked: 0, usedMemory: 0, maxmemory: 0 };
  }

  /** The events budget as last measured, and what the publisher does about it. */
  budget(): EventsBudgetStatus {
    return { ...this.state, paused: this.state.paused || this.degraded, parked: this.parked };
  }

  /** The last event id of `domain` sent to the events queue: history up to it may be trimmed. */
  cursorOf(domain: string): string | undefined {
    return this.cursors.get(domain);
  }

  async start(): Promise<void> {
    this.queues.on('event', this.onEvent);
    this.queues.on('dropped', this.onDropped);
    await this.measure().catch((err: unknown) => this.log.warn({ err }, 'events budget not measured'));
    this.measureTimer = setInterval(() => void this.tick(), MEASURE_MS);
    this.measureTimer.unref();
    let caught = 0;
    this.holding = true;
    try {
      for (const domain of this.queues.refs()) caught += await this.catchUp(domain);
    } catch (err) {
      if (!(err instanceof BudgetFull)) throw err;
      this.pause();
    } finally {
      this.holding = false;
    }
    if (caught) this.log.info({ events: caught }, 'events sent again after the cursor');
    if (this.buffer.length) void this.flush();
  }

  /** Reads the events queue's size and the events Redis's memory; applies events.whenFull. */
  private async measure(): Promise<void> {
    const info = await this.redis.info('memory');
    this.state.usedMemory = Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0);
    this.state.maxmemory = Number(/maxmemory:(\d+)/.exec(info)?.[1] ?? 0);
    this.state.limit = Math.floor(this.state.maxmemory * this.opts.budget);
    const counts = await this.bull.getJobCounts('wait', 'active', 'delayed', 'prioritized', 'completed', 'failed', 'waiting-children');
    this.state.jobs = Object.values(counts).reduce((a, b) => a + b, 0);
    this.state.waiting = (counts.wait ?? 0) + (counts.prioritized ?? 0) + (counts.delayed ?? 0);
    if (this.state.jobs) {
      // a few of the oldest waiting (else finished) jobs, every field counted: their hash plus a list entry each
      const ids = (await this.redis.lrange(this.bull.toKey('wait'), -3, -1)).concat(this.state.waiting ? [] : await this.redis.zrange(this.bull.toKey('completed'), '0', '2'));
      const sizes = await Promise.all(ids.map((id) => this.redis.call('MEMORY', 'USAGE', this.bull.toKey(id), 'SAMPLES', '0').then(Number, () => 0)));
      const known = sizes.filter((n) => n > 0);
      if (known.length) this.jobBytes = Math.round(0.5 * this.jobBytes + 0.5 * (known.reduce((a, b) => a + b, 0) / known.length + 64));
    }
    this.state.bytes = this.state.jobs * this.jobBytes;
    // On a Redis of its own everything there is the events' (the BullMQ event stream, finished
    // jobs, producer jobs): the estimate never reads below its used memory.
    if (this.opts.dedicated && this.state.usedMemory > this.state.bytes && this.state.jobs) {
      this.jobBytes = Math.ceil(this.state.usedMemory / this.state.jobs);
      this.state.bytes = this.state.usedMemory;
    }
    this.state.full = this.state.limit > 0 && this.state.bytes >= this.state.limit;
  }

  private measuring = false;

  private async tick(): Promise<void> {
    if (this.measuring) return;
    this.measuring = true;
    try {
      await this.measure();
      const { limit } = this.state;
      if (this.state.full) {
        // finished jobs first: a consumer has them already
        const over = () => Math.ceil((this.state.bytes - limit * RESUME_AT) / this.jobBytes);
        for (const kind of ['completed', 'failed'] as const) {
          if (over() <= 0) break;
          const gone = (await this.bull.clean(0, over(), kind)).length;
          this.state.jobs -= gone;
          this.state.bytes = this.state.jobs * this.jobBytes;
        }
        if (over() > 0 && this.opts.whenFull === 'drop') {
          const gone = (await this.bull.clean(0, over(), 'wait')).length;
          if (gone) {
            this.state.dropped += gone;
            this.state.jobs -= gone;
            this.state.bytes = this.state.jobs * this.jobBytes;
            this.log.warn({ dropped: gone, droppedTotal: this.state.dropped, limit }, 'events budget full: dropped the oldest undelivered events (events.whenFull: drop)');
          }
        }
        this.state.full = this.state.bytes >= limit;
        if (this.state.full && this.opts.whenFull === 'stop') this.pause();
      } else if (this.state.paused && !this.degraded && this.state.bytes < limit * RESUME_AT) {
        this.log.info({ bytes: this.state.bytes, limit }, 'events budget has room again: publishing from the cursors');
        this.state.paused = false;
        this.startRecovery();
      }
    } catch (err) {
      this.log.warn({ err }, 'events budget not measured');
    } finally {
      this.measuring = false;
    }
  }

  /** whenFull stop: no more jobs until the consumer drains the queue; the cursors stay. */
  private pause(): void {
    if (this.state.paused) return;
    this.state.paused = true;
    this.buffer.length = 0;
    this.log.warn({ bytes: this.state.bytes, limit: this.state.limit }, 'events budget full: publishing stopped, the cursors stay; events follow once a consumer drains the queue (events.whenFull: stop)');
  }

  /** Sends every history event after the queue's cursor; stops when the budget fills. */
  private async catchUp(domain: string): Promise<number> {
    let cursor = (await this.redis.get(this.cursorKey(domain))) ?? undefined;
    if (cursor) this.advance(domain, cursor);
    let n = 0;
    for (;;) {
      // state.jobs counts the jobs send() added
      if (this.state.limit > 0 && this.opts.whenFull === 'stop' && this.state.jobs * this.jobBytes >= this.state.limit) throw new BudgetFull();
      const rows = await this.queues.historySince(domain, cursor, BATCH);
      if (!rows.length) break;
      await this.send(rows.map((r) => this.queues.eventOf(domain, r)));
      cursor = rows[rows.length - 1]!.histId;
      n += rows.length;
    }
    return n;
  }

  /**
   * A queue deleted as idle (QueueManager 'dropped': only once its events were sent and archived):
   * its cursor goes, here and in the events Redis, so that queues that come and go leave no key
   * behind. A new queue for the domain has a history of its own, sent from its start.
   */
  private async forget(ref: string): Promise<void> {
    const key = this.cursorKey(ref);
    this.cursors.delete(ref);
    await this.redis.del(key).catch((err: unknown) => this.log.warn({ err, queue: ref }, 'cursor of a deleted queue not removed'));
  }

  private advance(domain: string, histId: string): void {
    const cur = this.cursors.get(domain);
    if (!cur || compareIds(histId, cur) > 0) this.cursors.set(domain, histId);
  }

  private push(ev: LifecycleEvent): void {
    if (this.degraded || this.state.paused) return; // in the history: the catch-up sends it
    if (ev.kind === 'adopted') {
      // a queue taken over from another gateway: what it had not sent yet comes from the history,
      // after that gateway's cursor, before this event (a catch-up of every queue)
      this.degraded = true;
      this.startRecovery();
      return;
    }
    if (this.opts.whenFull === 'stop' && this.state.limit > 0 && this.state.bytes >= this.state.limit) {
      this.state.full = true;
      return this.pause();
    }
    if (this.holding) {
      if (this.buffer.length < HOLD_MAX) this.buffer.push(ev);
      else this.heldOver = true;
      return;
    }
    this.buffer.push(ev);
    if (this.buffer.length >= (this.opts.batch ? BATCHED_LIVE : BATCH)) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), this.opts.batch ? BATCH_FLUSH_MS : FLUSH_MS);
  }

  /** Sends what is buffered; the cursors move only after BullMQ took the jobs. */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.buffer.splice(0);
    this.flushing = this.flushing.then(async () => {
      if (!batch.length) return;
      if (this.degraded || this.state.paused) return;
      try {
        await this.send(batch);
      } catch (err) {
        // The cursors did not move past these: stop sending live events and catch up from the
        // history streams until the events Redis takes them again.
        this.log.warn({ err, events: batch.length }, 'events not sent; catching up from the history');
        this.degraded = true;
        this.buffer.length = 0;
        this.startRecovery();
      }
    });
    return this.flushing;
  }

  private startRecovery(): void {
    clearInterval(this.retry);
    this.retry = setInterval(() => void this.recover(), 1000);
    void this.recover();
  }

  /** Catches up every queue from its cursor, holding live events meanwhile, then sends them. */
  private async recover(): Promise<void> {
    if (this.recovering || this.state.paused) return;
    this.recovering = true;
    this.holding = true;
    try {
      this.degraded = false;
      do {
        this.heldOver = false;
        for (const domain of this.queues.refs()) await this.catchUp(domain);
      } while (this.heldOver);
      clearInterval(this.retry);
      this.log.info('events flowing again');
    } catch (err) {
      if (err instanceof BudgetFull) {
        clearInterval(this.retry);
        this.pause();
      } else this.degraded = true;
      this.buffer.length = 0;
    } finally {
      this.holding = false;
      this.recovering = false;
    }
    if (this.buffer.length) void this.flush();
  }

  /** Sends the events as jobs, parks those the events queue refuses, then moves the cursors; returns the jobs added. */
  private async send(batch: LifecycleEvent[]): Promise<number> {
    const refused: [LifecycleEvent, string][] = [];
    const fit: LifecycleEvent[] = [];
    for (const ev of batch) {
      const why = unfitJobId(jobIdOf(ev));
      if (why) refused.push([ev, why]);
      else fit.push(ev);
    }
    const jobs = eventJobs(fit, this.opts.batch);
    let added = 0;
    if (jobs.length) {
      try {
        await this.bull.addBulk(jobs);
        added = jobs.length;
      } catch (err) {
        if (this.storeFault(err)) throw err;
        // The events Redis answers but refused the batch: one event it cannot take must not hold
        // the others. Each job is sent alone, and the events of one refused alone are parked.
        for (const job of jobs) {
          try {
            await this.bull.add(job.name, job.data, job.opts);
            added++;
          } catch (e) {
            if (this.storeFault(e)) throw e;
            for (const ev of job.events) refused.push([ev, e instanceof Error ? e.message : String(e)]);
          }
        }
      }
    }
    if (refused.length) await this.park(refused);
    // per queue the highest history id sent, then the cursors it moves
    const top = new Map<string, string>();
    for (const ev of batch) {
      const histId = histIdOf(ev.id);
      const cur = top.get(ev.queue);
      if (!cur || compareIds(histId, cur) > 0) top.set(ev.queue, histId);
    }
    const last = new Map<string, string>();
    for (const [name, histId] of top) {
      const ref = this.queues.refOf(name);
      const cur = this.cursors.get(ref);
      if (!cur || compareIds(histId, cur) > 0) last.set(ref, histId);
    }
    if (last.size) await this.redis.mset(new Map([...last].map(([domain, histId]) => [this.cursorKey(domain), histId])));
    for (const [domain, histId] of last) this.advance(domain, histId);
    this.sent += batch.length - refused.length;
    this.state.jobs += added;
    this.state.bytes = this.state.jobs * this.jobBytes;
    return added;
  }

  /** A failure of the events Redis itself (the batch is sent again later), not of one event. */
  private storeFault(err: unknown): boolean {
    return this.redis.status !== 'ready' || STORE_FAULT.test(err instanceof Error ? err.message : String(err));
  }

  /**
   * Events the events queue cannot take go to the parked stream (sg:events:parked:{gateway}, the
   * newest PARKED_MAX kept) with the reason; the cursor moves past them, the others go on.
   */
  private async park(refused: [LifecycleEvent, string][]): Promise<void> {
    const pipe = this.redis.pipeline();
    for (const [ev, reason] of refused) {
      pipe.xadd(this.parkedKey, 'MAXLEN', '~', PARKED_MAX, '*', 'id', ev.id, 'reason', reason, 'event', JSON.stringify(ev));
      this.log.warn({ eventId: ev.id, queue: ev.queue, kind: ev.kind, reason }, 'event parked: the events queue cannot take it');
    }
    const res = (await pipe.exec()) ?? [];
    const failed = res.find(([err]) => err);
    if (failed) throw failed[0]!;
    this.parked += refused.length;
  }

  /** Parked events, newest first (at most `count`): their ids, reasons and the events. */
  async parkedEvents(count = 100): Promise<{ id: string; reason: string; event: LifecycleEvent }[]> {
    const rows = (await this.redis.xrevrange(this.parkedKey, '+', '-', 'COUNT', count)) as [string, string[]][];
    return rows.map(([, f]) => {
      const get = (k: string) => f[f.indexOf(k) + 1]!;
      return { id: get('id'), reason: get('reason'), event: JSON.parse(get('event')) as LifecycleEvent };
    });
  }

  async stop(): Promise<void> {
    this.queues.off('event', this.onEvent);
    this.queues.off('dropped', this.onDropped);
    clearInterval(this.retry);
    clearInterval(this.measureTimer);
    await this.flush();
    await this.bull.close();
  }
}
