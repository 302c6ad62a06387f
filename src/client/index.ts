// streamgate/client: what an application imports to hand messages to the gateway and to follow
// what happens to them. submit() adds a producer job (BullMQ queue events.producerQueue) and waits
// for its outcome; onEvent() runs a BullMQ worker on the lifecycle events queue (events.queue).
// Both queues live on the gateway's events Redis (events.redis, default its first redis.nodes
// entry). Jobs and events are checked with the gateway's own schemas (./schema.ts). The contract
// behind it: docs/integration.md.
import { Queue, QueueEvents, UnrecoverableError, Worker, type Job } from 'bullmq';
import { Redis, type RedisOptions } from 'ioredis';
import { JOB_ID, JOB_ID_EXPECTED, EVENT_BATCH_JOB, eventBatchSchema, eventSchema, jobFailure, jobResultSchema, jobSchema, type JobResult, type LifecycleKind, type ProducerJob, type StreamgateEvent } from './schema.ts';

export * from './schema.ts';

export const DEFAULT_SUBMIT_QUEUE = 'streamgate-submit';
export const DEFAULT_EVENTS_QUEUE = 'streamgate-events';

export interface ClientOptions {
  /** The gateway's events Redis: a redis:// URL or ioredis options (a connection of its own is made for each use). */
  connection: string | RedisOptions;
  /** The gateway's events.producerQueue; default "streamgate-submit". */
  submitQueue?: string;
  /** The gateway's events.queue; default "streamgate-events". */
  eventsQueue?: string;
}

export interface SubmitOptions {
  /** The job id, the idempotency key: 1 to 190 of A-Z a-z 0-9 _ . + = - (the message id is "job-" + it). */
  id: string;
  /** The BullMQ job name (free text, shown in BullMQ tools); default "message". */
  name?: string;
  /** How long to wait for the outcome, ms; default 60,000. The job stays queued when this passes. */
  timeout?: number;
  /** Tries while the gateway cannot store (queues unavailable); default 10, at 1 s, 2 s, 4 s... */
  attempts?: number;
  /** How long the finished job is kept in Redis, s; while kept, the same id answers with the same outcome without running again. Default 7 days. */
  keepFor?: number;
}

/** A job that did not end in queued copies. */
export class SubmitError extends Error {
  readonly jobId: string;
  /** The failure as the gateway (or this client, before sending) gave it: "job <id>: <field>: <why>". */
  readonly reason: string;
  /**
   * True when the gateway refused the job (invalid, over a limit, failing the hygiene): sending
   * it again gives the same answer. False when it could not be stored in time or the wait timed
   * out: the same id may be submitted again, it is never queued twice.
   */
  readonly refused: boolean;
  constructor(jobId: string, reason: string, refused: boolean) {
    super(reason);
    this.name = 'SubmitError';
    this.jobId = jobId;
    this.reason = reason;
    this.refused = refused;
  }
}

export interface EventOptions {
  /** Only these kinds reach the handler; events of other kinds are taken from the queue and dropped. */
  kinds?: readonly LifecycleKind[];
  /** Events that happened before this time (ms or Date) are taken and dropped: skip an old backlog. */
  from?: number | Date;
  /** Events handled at once; default 1, which keeps the queue's order for this consumer. */
  concurrency?: number;
}

export interface EventContext {
  /** How many times this event was handed to a handler before (a handler threw or a consumer died). */
  attemptsMade: number;
  job: Job;
}

export type EventHandler<K extends LifecycleKind = LifecycleKind> = (event: Extract<StreamgateEvent, { kind: K }>, ctx: EventContext) => unknown;

export interface EventConsumer {
  readonly worker: Worker;
  close(): Promise<void>;
}

/** The connection BullMQ needs: commands wait for a reconnect instead of failing. */
function redisOf(c: string | RedisOptions): Redis {
  return typeof c === 'string' ? new Redis(c, { maxRetriesPerRequest: null }) : new Redis({ ...c, maxRetriesPerRequest: null });
}

/** A refusal the gateway would give, found before sending: same reason, same wording. */
export function checkJob(id: string, job: unknown): string | undefined {
  if (!JOB_ID.test(id)) return `job id: ${JOB_ID_EXPECTED}, got ${JSON.stringify(id)}`;
  const parsed = jobSchema.safeParse(job);
  return parsed.success ? undefined : jobFailure(id, parsed.error.issues[0]!);
}

export class StreamgateClient {
  private readonly opts: Required<ClientOptions>;
  private readonly conns: Redis[] = [];
  private submitQ: Queue | undefined;
  private submitEvents: QueueEvents | undefined;
  private readonly consumers = new Set<EventConsumer>();

  constructor(opts: ClientOptions) {
    this.opts = { submitQueue: DEFAULT_SUBMIT_QUEUE, eventsQueue: DEFAULT_EVENTS_QUEUE, ...opts };
  }

  private conn(): Redis {
    const c = redisOf(this.opts.connection);
    c.on('error', () => {}); // ioredis reconnects; BullMQ reports what fails
    this.conns.push(c);
    return c;
  }

  private async submitter(): Promise<{ queue: Queue; events: QueueEvents }> {
    this.submitQ ??= new Queue(this.opts.submitQueue, { connection: this.conn() });
    this.submitEvents ??= new QueueEvents(this.opts.submitQueue, { connection: this.conn() });
    await this.submitEvents.waitUntilReady();
    return { queue: this.submitQ, events: this.submitEvents };
  }

  /**
   * Hands a message to the gateway and waits until every copy is stored on both replicas of its
   * queue. Resolves to the queued copies (one per destination domain); rejects with a SubmitError.
   * The same id again resolves to the same copies and queues nothing twice.
   */
  async submit(job: ProducerJob, opts: SubmitOptions): Promise<JobResult> {
    const early = checkJob(opts.id, job);
    if (early) throw new SubmitError(opts.id, early, true);
    const { queue, events } = await this.submitter();
    const attempts = opts.attempts ?? 10;
    const keep = opts.keepFor ?? 7 * 24 * 3600;
    let added = await queue.add(opts.name ?? 'message', job, {
      jobId: opts.id,
      attempts,
      backoff: { type: 'exponential', delay: 1000 },
      removeOnComplete: { age: keep },
      removeOnFail: { age: keep },
    });
    // An id whose earlier job gave up for want of storage (not refused) is run again.
    if ((await added.getState()) === 'failed') {
      const old = (await queue.getJob(opts.id)) ?? added;
      if (!/^job /.test(old.failedReason ?? '')) {
        await old.retry('failed');
        added = old;
      }
    }
    let value: unknown;
    try {
      value = await added.waitUntilFinished(events, opts.timeout ?? 60_000);
    } catch (err) {
      const reason = (err as Error).message;
      throw new SubmitError(opts.id, reason, /^job /.test(reason));
    }
    const result = jobResultSchema.safeParse(value);
    if (!result.success) throw new SubmitError(opts.id, `job ${opts.id}: unexpected return value ${JSON.stringify(value)}`, false);
    return result.data;
  }

  /**
   * Runs a BullMQ worker on the lifecycle events queue: the handler gets each event, typed by its
   * kind. Delivery is at least once: deduplicate on event.id. A handler that throws gets the event
   * again later (the gateway publishes events with retries); events that do not match the
   * gateway's event schema fail in BullMQ without reaching the handler. A batch job (events.batch)
   * gives the handler its events one after the other; when the handler throws, the job is tried
   * again from its first event (those already handled come again: the id says so).
   */
  onEvent<K extends LifecycleKind = LifecycleKind>(handler: EventHandler<K>, opts: EventOptions & { kinds?: readonly K[] } = {}): EventConsumer {
    const kinds = opts.kinds ? new Set<string>(opts.kinds) : undefined;
    const from = opts.from === undefined ? undefined : Number(opts.from);
    const worker = new Worker(
      this.opts.eventsQueue,
      async (job) => {
        // a batch job (events.batch) carries several events, in order: each goes to the handler
        let items: unknown[] = [job.data];
        if (job.name === EVENT_BATCH_JOB) {
          const batch = eventBatchSchema.safeParse(job.data);
          if (!batch.success) throw new UnrecoverableError(`event batch ${job.id}: ${batch.error.issues[0]!.path.map(String).join('.') || 'data'}: ${batch.error.issues[0]!.message}`);
          items = batch.data.events;
        }
        const events = items.map((data, k) => {
          const parsed = eventSchema.safeParse(data);
          if (!parsed.success) {
            const i = parsed.error.issues[0]!;
            throw new UnrecoverableError(`event ${job.name === EVENT_BATCH_JOB ? `${job.id} #${k}` : job.id}: ${i.path.map(String).join('.') || 'data'}: ${i.message}`);
          }
          return parsed.data;
        });
        for (const ev of events) {
          if (kinds && !kinds.has(ev.kind)) continue;
          if (from !== undefined && ev.at < from) continue;
          await handler(ev as Extract<StreamgateEvent, { kind: K }>, { attemptsMade: job.attemptsMade, job });
        }
      },
      { connection: this.conn(), concurrency: opts.concurrency ?? 1 },
    );
    worker.on('error', () => {}); // connection trouble: BullMQ retries
    const consumer: EventConsumer = {
      worker,
      close: async () => {
        this.consumers.delete(consumer);
        await worker.close();
      },
    };
    this.consumers.add(consumer);
    return consumer;
  }

  /** Stops the consumers (each waits for its running handlers) and closes every connection. */
  async close(): Promise<void> {
    await Promise.all([...this.consumers].map((c) => c.close()));
    await this.submitEvents?.close();
    await this.submitQ?.close();
    for (const c of this.conns) c.disconnect();
    this.conns.length = 0;
  }
}

/** A client for the gateway whose events Redis is `opts.connection`. */
export function connect(opts: ClientOptions): StreamgateClient {
  return new StreamgateClient(opts);
}
