// The contract with other programs, in one place: the producer job the gateway's worker validates
// (ingress/producers/worker.ts parses every job with jobSchema) and the lifecycle event it
// publishes (events/publisher.ts; the event's fields are message/types.ts LifecycleEvent, its kinds
// LIFECYCLE_KINDS). The client module (client/index.ts) and docs/integration.md are built on these
// schemas, so a producer's types and the gateway's checks cannot drift apart.
// This module imports nothing but zod and message/headers.ts: applications load it as it is.
import { z } from 'zod';
import { JOB_ID, JOB_ID_EXPECTED } from '../message/headers.ts';

export { JOB_ID, JOB_ID_EXPECTED };

/** An address as jobs give it: local@domain, no display name, no comments, at most 254 characters. */
export const address = z
  .string()
  .max(254)
  .regex(/^[^\s@<>()",;:\\[\]]+@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$/, 'expected an e-mail address local@domain');

/** The parts of a message the gateway composes (nodemailer's composer adds Message-ID, Date, MIME). */
export const composedMessage = z.strictObject({
  subject: z.string().max(998),
  text: z.string().optional(),
  html: z.string().optional(),
  headers: z.record(z.string(), z.string()).optional(),
});

/**
 * A producer job's data. Unknown properties are refused. Beyond this schema the worker checks,
 * with the gateway's configuration: at most smtp.maxRecipients recipients, a message of at most
 * smtp.maxMessageSize bytes, and the SMTP DATA hygiene (docs/integration.md lists the reasons).
 */
export const jobSchema = z
  .strictObject({
    /** Envelope sender; "" is the null sender. */
    from: z.union([address, z.literal('')]),
    /** Envelope recipients; one message is queued per destination domain. */
    to: z.array(address).min(1, 'expected at least one recipient'),
    /** The whole RFC 5322 message as text (LF line ends are turned into CRLF). */
    raw: z.string().optional(),
    /** The whole message, base64, for 8-bit content. */
    rawBase64: z.string().regex(/^[A-Za-z0-9+/=\s]+$/, 'expected base64').optional(),
    /** Or the parts of a message, composed here. */
    message: composedMessage.optional(),
  })
  .refine((j) => [j.raw, j.rawBase64, j.message].filter((x) => x !== undefined).length === 1, { message: 'expected exactly one of raw, rawBase64, message' });

/** The job's data as a producer writes it. */
export type ProducerJob = z.input<typeof jobSchema>;

/** The job as the worker sees it after validation. */
export type ParsedJob = z.output<typeof jobSchema>;

/** One queued copy: the destination queue of a domain and the message id ("job-" + the job id). */
export const queuedCopy = z.strictObject({ domain: z.string(), queue: z.string(), id: z.string() });

/** A completed job's return value: one copy per destination domain of `to`. */
export const jobResultSchema = z.strictObject({ queued: z.array(queuedCopy).min(1) });
export type JobResult = z.output<typeof jobResultSchema>;
export type QueuedCopy = z.output<typeof queuedCopy>;

/**
 * The precise reason of a job the gateway refuses: "job <id>: <field>: <why>" (or "job id: ...").
 * Such a job fails at once (BullMQ UnrecoverableError) and is not retried.
 */
export function jobFailure(jobId: string, issue: { path: PropertyKey[]; message: string }): string {
  return `job ${jobId}: ${issue.path.map(String).join('.') || 'data'}: ${issue.message}`;
}

// ---- lifecycle events ---------------------------------------------------------------------------

/** Every kind of lifecycle event, in the order a message usually meets them. */
export const LIFECYCLE_KINDS = ['accepted', 'attempted', 'deferred', 'requeued', 'delivered', 'bounced', 'expired', 'held', 'released', 'purged', 'withdrawn', 'recovered', 'flushed', 'suspended', 'resumed', 'unpurged', 'rebuilt', 'adopted'] as const;
export const lifecycleKind = z.enum(LIFECYCLE_KINDS);
export type LifecycleKind = (typeof LIFECYCLE_KINDS)[number];

/** Kinds after which the message is no longer in any queue. */
export const FINAL_KINDS = ['delivered', 'bounced', 'expired', 'purged', 'withdrawn'] as const satisfies readonly LifecycleKind[];

// Details are open objects: a gateway may add fields; the ones named here are always there.

const recipientOutcome = z.looseObject({
  rcpt: z.string(),
  status: z.enum(['delivered', 'deferred', 'bounced']),
  code: z.number().nullable(),
  enhanced: z.string().nullable(),
  text: z.string().nullable(),
  /** How the reply was classified: ok, routing, dns, local, a bounce rule's category... */
  category: z.string(),
});

/** What a delivery attempt's outcome says (deferred, delivered, bounced, expired). */
const attemptOutcome = {
  attempt: z.number().int(),
  /** The MX host that answered, "local" for a mailbox, null when none was reached. */
  mx: z.string().nullable(),
  tls: z.boolean().nullable(),
  /** The first SMTP reply code, null when there was none. */
  code: z.number().nullable(),
  reply: z.string().nullable(),
  durationMs: z.number(),
  recipients: z.array(recipientOutcome),
};

const adminAction = { actor: z.string(), reason: z.string() };

export const eventDetails = {
  /** The envelope and size, with what the ingress knew: source "producer" with job and producerQueue, or the SMTP client's facts. */
  accepted: z.looseObject({ envelope: z.strictObject({ from: z.string(), to: z.array(z.string()) }), size: z.number().int() }),
  /** Taken for delivery; attempt counts from 1. */
  attempted: z.looseObject({ attempt: z.number().int() }),
  /** Some recipients failed temporarily; retried at nextAt (ms). */
  deferred: z.looseObject({ ...attemptOutcome, nextAt: z.number() }),
  /** Put back to ready without counting an attempt (shutdown, destination suspended, recovery). */
  requeued: z.looseObject({ reason: z.string() }),
  /** Every recipient done, at least one delivered (the others bounced: see recipients). */
  delivered: z.looseObject(attemptOutcome),
  /** Every recipient failed permanently; a DSN went to the sender. */
  bounced: z.looseObject(attemptOutcome),
  /** Out of time (relay.retry.maxLifetime, ms); a DSN went to the sender. */
  expired: z.looseObject({ ...attemptOutcome, maxLifetime: z.number() }),
  held: z.looseObject(adminAction),
  released: z.looseObject(adminAction),
  purged: z.looseObject(adminAction),
  /** Stored, but the sender was told to retry (not every copy was stored): never delivered. */
  withdrawn: z.looseObject({ reason: z.string() }),
  /** Queue-level (messageId ""): an operator opened a closed queue from one replica. */
  recovered: z.looseObject({ ...adminAction, from: z.string(), previousTxn: z.number().nullable(), messages: z.number().int() }),
  /** Queue-level: an operator made every deferred message due now (flushed: how many; before / after: ready and deferred). */
  flushed: z.looseObject({ ...adminAction, flushed: z.number().int() }),
  /** Queue-level: an operator stopped taking from the destination's queue, or started again. */
  suspended: z.looseObject(adminAction),
  resumed: z.looseObject(adminAction),
  /** A purged message put back within queue.purgeGrace (an `accepted` event comes before it): purgedAt (ms). */
  unpurged: z.looseObject({ ...adminAction, purgedAt: z.number() }),
  /** Queue-level: an operator rebuilt the queue's state from its events (before / after: the counters). */
  rebuilt: z.looseObject({ ...adminAction, events: z.number().int(), messages: z.number().int() }),
  /** Queue-level: the queue of a gateway whose lease lapsed, taken over by another (from, by: gateway ids; epoch; messages loaded). */
  adopted: z.looseObject({ from: z.string(), by: z.string(), epoch: z.number().int(), messages: z.number().int() }),
} satisfies Record<LifecycleKind, z.ZodType>;

const eventFields = {
  /** Unique and stable: "<gateway id>/<domain>/<ms>-<seq>"; deduplicate on it. */
  id: z.string().regex(/^.+\/[^/]+\/\d+-\d+$/, 'expected <gateway>/<domain>/<ms>-<seq>'),
  /** The destination queue's name. */
  queue: z.string(),
  domain: z.string(),
  /** The message id ("job-" + job id for producer jobs); "" for a queue-level event. */
  messageId: z.string(),
  /** The queue's transaction number after the change (events of one batch share it). */
  txn: z.number().int(),
  /** When it happened, ms since the epoch. */
  at: z.number(),
};

/**
 * With events.batch N, each job carries up to N events of one queue, consecutive and in order:
 * named EVENT_BATCH_JOB, its data { events: [...] }, its id "<first event id>..<last ms-seq>";
 * each event keeps its own id inside.
 */
export const EVENT_BATCH_JOB = 'batch';
export const eventBatchSchema = z.strictObject({ events: z.array(z.unknown()).min(1) });

/** A lifecycle event as published (one BullMQ job per event, named by its kind, id = event id). */
export const eventSchema = z.discriminatedUnion(
  'kind',
  LIFECYCLE_KINDS.map((kind) => z.looseObject({ ...eventFields, kind: z.literal(kind), details: eventDetails[kind] })) as unknown as [EventOf<'accepted'>, ...EventOf<LifecycleKind>[]],
);

type EventOf<K extends LifecycleKind> = z.ZodObject<typeof eventFields & { kind: z.ZodLiteral<K>; details: (typeof eventDetails)[K] }, z.core.$loose>;

/** A lifecycle event, its details typed by its kind. */
export type StreamgateEvent = { [K in LifecycleKind]: z.output<EventOf<K>> }[LifecycleKind];
export type EventOfKind<K extends LifecycleKind> = Extract<StreamgateEvent, { kind: K }>;

/** The position of an event in its queue's history ([ms, seq]): compare to order events of one queue. */
export function eventPosition(id: string): [number, number] {
  const tail = id.slice(id.lastIndexOf('/') + 1);
  const [ms, seq] = tail.split('-');
  return [Number(ms), Number(seq)];
}

/** Orders two events of the same queue by their history position (negative: a came first). */
export function compareEvents(a: { id: string }, b: { id: string }): number {
  const [am, as] = eventPosition(a.id);
  const [bm, bs] = eventPosition(b.id);
  return am - bm || as - bs;
}
