// Store, then reply. The recipients of one message are split by destination domain and the
// message is appended once to each destination queue, all in parallel; the client gets 250 only
// when every append resolved (each resolves once both replicas hold the copy, at write concern
// `all`). If any append fails, what was appended for that message is withdrawn, so that the
// client's retry cannot lead to a double delivery, and the client gets 451 4.3.0 (452 4.3.1 when
// storage or the queue is full).
//
// Every copy has its own message id (the idempotency key of its queue); all copies of one
// message share the submission id in meta.submission, which is the id the 250 reply names. The
// copy of a message with a single destination domain has the submission id as its message id.
//
// The sender's outbox: when a local user authenticated and no recipient is local, one more copy
// goes to the sender's own domain queue, addressed to the sender and marked meta.outboxOnly, so
// that local delivery keeps it in the sender's `outbox` (a local recipient's copy does that
// already otherwise).
import type { Logger } from '../../log.ts';
import { domainOf, newMessageId } from '../../message/types.ts';
import { QueueError } from '../../queue/errors.ts';
import type { QueueManager } from '../../queue/manager.ts';
import { reply, type SmtpReply } from './replies.ts';

export interface Submission {
  submissionId: string;
  from: string;
  /** Recipients as queued (domain in lower-case ASCII), in the order given. */
  to: string[];
  raw: Buffer;
  meta: Record<string, unknown>;
}

export interface Stored {
  /** One copy per destination domain. */
  copies: { domain: string; id: string; queue: string; recipients: number }[];
}

/** Recipients grouped by the final domain of each address, in order of first appearance. */
export function splitByDomain(to: readonly string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const seen = new Set<string>();
  for (const rcpt of to) {
    const key = rcpt.toLowerCase();
    if (seen.has(key)) continue;
    seen.add(key);
    const domain = rcpt.slice(rcpt.lastIndexOf('@') + 1).toLowerCase();
    const list = out.get(domain);
    if (list) list.push(rcpt);
    else out.set(domain, [rcpt]);
  }
  return out;
}

function toReply(err: unknown): SmtpReply {
  if (err instanceof QueueError && (err.code === 'STORAGE_FULL' || err.code === 'QUEUE_FULL')) return reply('storageFull');
  if (err instanceof QueueError) return reply('queueUnavailable');
  return reply('localError');
}

/**
 * Withdrawals that could not be written at once (the queue was not writable) are tried again
 * until they succeed, for up to `giveUpAfter` ms.
 */
export class Withdrawals {
  private readonly pending = new Map<string, { domain: string; id: string; details: Record<string, unknown>; since: number }>();
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private readonly queues: QueueManager;
  private readonly log: Logger;
  private readonly giveUpAfter: number;

  constructor(queues: QueueManager, log: Logger, giveUpAfter = 3_600_000) {
    this.queues = queues;
    this.log = log;
    this.giveUpAfter = giveUpAfter;
  }

  get size(): number {
    return this.pending.size;
  }

  async withdraw(domain: string, id: string, details: Record<string, unknown>): Promise<void> {
    try {
      await this.queues.settle(domain, id, 'withdrawn', details);
    } catch (err) {
      if (err instanceof QueueError && err.code === 'NOT_FOUND') return; // gone already
      this.log.warn({ err, queue: domain, messageId: id }, 'withdraw failed, will retry');
      this.pending.set(`${domain}\n${id}`, { domain, id, details, since: Date.now() });
      this.timer ??= setInterval(() => void this.retry(), 1000).unref();
    }
  }

  async retry(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (const [key, w] of [...this.pending]) {
        try {
          await this.queues.settle(w.domain, w.id, 'withdrawn', w.details);
          this.pending.delete(key);
          this.log.info({ queue: w.domain, messageId: w.id }, 'withdrawn');
        } catch (err) {
          if (err instanceof QueueError && err.code === 'NOT_FOUND') this.pending.delete(key);
          else if (Date.now() - w.since > this.giveUpAfter) {
            this.pending.delete(key);
            this.log.error({ err, queue: w.domain, messageId: w.id }, 'withdraw given up: the message may be delivered although the client was told to retry');
          }
        }
      }
    } finally {
      this.running = false;
      if (!this.pending.size && this.timer) {
        clearInterval(this.timer);
        this.timer = undefined;
      }
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const w of this.pending.values()) this.log.error({ queue: w.domain, messageId: w.id }, 'withdraw pending at shutdown');
  }
}

/** Appends one message to every destination queue; throws an SmtpReply when not all of them took it. */
export async function storeMessage(queues: QueueManager, withdrawals: Withdrawals, sub: Submission, log: Logger, localDomains?: ReadonlySet<string>): Promise<Stored> {
  const groups = splitByDomain(sub.to);
  const plan: { domain: string; to: string[]; id: string; meta?: Record<string, unknown> }[] = [...groups].map(([domain, to], i) => ({ domain, to, id: i === 0 ? sub.submissionId : newMessageId() }));
  const authUser = (sub.meta.auth as { user?: unknown } | null | undefined)?.user;
  if (typeof authUser === 'string' && localDomains?.has(domainOf(authUser)) && ![...groups.keys()].some((d) => localDomains.has(d))) {
    plan.push({ domain: domainOf(authUser), to: [authUser], id: newMessageId(), meta: { ...sub.meta, outboxOnly: true } });
  }
  const results = await Promise.allSettled(
    plan.map((p) =>
      queues.append({
        id: p.id,
        domain: p.domain,
        envelope: { from: sub.from, to: p.to },
        raw: sub.raw,
        meta: p.meta ?? (plan.length > 1 ? { ...sub.meta, copies: plan.length } : sub.meta),
      }),
    ),
  );
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (!failed) {
    return {
      copies: plan.map((p, i) => ({ domain: p.domain, id: p.id, queue: (results[i] as PromiseFulfilledResult<{ queue: string }>).value.queue, recipients: p.to.length })),
    };
  }
  const r = toReply(failed.reason);
  log.warn({ err: failed.reason, submission: sub.submissionId, reply: r.toString() }, 'not queued');
  const details = { reason: `append failed on another destination queue: ${(failed.reason as Error)?.message ?? String(failed.reason)}`, submission: sub.submissionId };
  await Promise.all(
    results.map((res, i) => {
      if (res.status !== 'fulfilled' || res.value.duplicate) return undefined;
      return withdrawals.withdraw(plan[i]!.domain, plan[i]!.id, details);
    }),
  );
  throw r;
}
