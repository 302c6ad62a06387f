// Producers (billing, notifications) add BullMQ jobs to events.producerQueue; each job becomes a
// message through the same append path as SMTP. The job id is the idempotency key: the message id
// of every destination queue is derived from it, so a job run twice queues the message once.
// A job that is not a valid message fails at once (UnrecoverableError) with a precise reason and
// appends nothing: its id must be one that can become a message id (message/headers.ts), and its
// message passes the same hygiene as SMTP DATA (ingress/smtp/hygiene.ts); while the queues cannot take appends the worker pauses, and it resumes by itself.
// The job's schema is the contract in client/schema.ts (documented in docs/integration.md).
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import MailComposer from 'nodemailer/lib/mail-composer/index.js';
import type { Config } from '../../config/schema.ts';
import type { Logger } from '../../log.ts';
import { jobFailure, jobSchema, type JobResult, type ParsedJob } from '../../client/schema.ts';
import { JOB_ID, JOB_ID_EXPECTED } from '../../message/headers.ts';
import { domainOf } from '../../message/types.ts';
import { QueueError } from '../../queue/errors.ts';
import type { QueueManager } from '../../queue/manager.ts';
import { checkMessage, faultReply } from '../smtp/hygiene.ts';

export { jobSchema, type ProducerJob } from '../../client/schema.ts';

/**
 * Builds the message with nodemailer's composer (it adds Message-ID, Date and MIME structure),
 * with CRLF line ends: its default keeps the LF of a multi-line text, which the hygiene refuses.
 */
function compose(from: string, to: string[], m: NonNullable<ParsedJob['message']>): Promise<Buffer> {
  return new MailComposer({ from: from || undefined, to, subject: m.subject, text: m.text, html: m.html, headers: m.headers, newline: '\r\n' }).compile().build();
}

export function toRaw(job: ParsedJob): Buffer | Promise<Buffer> {
  if (job.raw !== undefined) return Buffer.from(job.raw.replace(/\r?\n/g, '\r\n'));
  if (job.rawBase64 !== undefined) return Buffer.from(job.rawBase64, 'base64');
  return compose(job.from, job.to, job.message!);
}

export interface ProducerOptions {
  config: Config;
  queues: QueueManager;
  connection: Redis;
  log: Logger;
  concurrency?: number;
}

export class ProducerWorker {
  readonly worker: Worker;
  private readonly queues: QueueManager;
  private readonly log: Logger;
  private readonly config: Config;
  private readonly onHealth = () => this.door();

  constructor(opts: ProducerOptions) {
    this.queues = opts.queues;
    this.config = opts.config;
    this.log = opts.log.child({ component: 'producers' });
    this.worker = new Worker(opts.config.events.producerQueue, (job) => this.handle(job), {
      connection: opts.connection,
      concurrency: opts.concurrency ?? 32,
      autorun: false,
    });
    this.worker.on('failed', (job, err) => this.log.warn({ job: job?.id, err: err.message }, 'job failed'));
  }

  start(): void {
    this.queues.on('health', this.onHealth);
    void this.worker.run();
  }

  /** Pauses while appends would fail, resumes when they would not. */
  private door(): void {
    const writable = this.queues.writable;
    if (!writable && !this.worker.isPaused()) {
      this.log.warn('queues not writable: producers paused');
      void this.worker.pause(true);
    } else if (writable && this.worker.isPaused()) {
      this.log.info('producers resumed');
      this.worker.resume();
    }
  }

  async handle(job: Job): Promise<JobResult> {
    if (!job.id) throw new UnrecoverableError('a producer job needs an id');
    if (!JOB_ID.test(job.id)) throw new UnrecoverableError(`job id: ${JOB_ID_EXPECTED}, got ${JSON.stringify(job.id)}`);
    const parsed = jobSchema.safeParse(job.data);
    if (!parsed.success) {
      throw new UnrecoverableError(jobFailure(job.id, parsed.error.issues[0]!));
    }
    const data = parsed.data;
    if (data.to.length > this.config.smtp.maxRecipients) throw new UnrecoverableError(`job ${job.id}: to: at most ${this.config.smtp.maxRecipients} recipients, got ${data.to.length}`);
    const raw = await toRaw(data);
    if (raw.length > this.config.smtp.maxMessageSize) throw new UnrecoverableError(`job ${job.id}: message of ${raw.length} bytes is over smtp.maxMessageSize (${this.config.smtp.maxMessageSize})`);
    const fault = checkMessage(raw, this.config.smtp);
    if (fault) throw new UnrecoverableError(`job ${job.id}: ${faultReply(fault, this.config.smtp).text}`);
    const byDomain = new Map<string, string[]>();
    for (const rcpt of data.to) {
      const d = domainOf(rcpt);
      byDomain.set(d, [...(byDomain.get(d) ?? []), rcpt]);
    }
    const id = `job-${job.id}`;
    const meta = { source: 'producer', producerQueue: job.queueName, job: job.id, size: raw.length };
    const copies = [...byDomain].map(([domain, to]) => ({ id, domain, envelope: { from: data.from, to }, raw, meta }));
    let done: JobResult['queued'];
    try {
      // all copies or none, the same path as SMTP: what this run stored is withdrawn if the job is retried
      const stored = await this.queues.store(copies, { job: job.id });
      done = copies.map((c, i) => ({ domain: c.domain, queue: stored[i]!.queue, id }));
    } catch (err) {
      if (err instanceof QueueError && err.code === 'BAD_INPUT') throw new UnrecoverableError(`job ${job.id}: ${err.message}`);
      throw err; // retried by BullMQ with the job's backoff
    }
    this.log.debug({ job: job.id, queues: done.map((d) => d.queue) }, 'queued');
    return { queued: done };
  }

  async stop(): Promise<void> {
    this.queues.off('health', this.onHealth);
    await this.worker.close();
  }
}
