// Store, then reply. The recipients of one message are split by destination domain and the
// message is appended once to each destination queue, all in parallel (QueueManager.store); the
// client gets 250 only when every append resolved (each resolves once both replicas hold the
// copy, at write concern `all`). No copy is dispatched before that. If any append fails, what was
// appended for that message is withdrawn, so that the client's retry cannot lead to a double
// delivery, and the client gets 451 4.3.0 (452 4.3.1 when storage or the queue is full).
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
import { domainOf } from '../../message/types.ts';
import { QueueError } from '../../queue/errors.ts';
import type { QueueManager } from '../../queue/manager.ts';
import { reply, type SmtpReply } from './replies.ts';
import { newMessageId } from '../../message/ids.ts';

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
  if (err instanceof QueueError && err.code === 'TOO_MANY_QUEUES') return reply('tooManyQueues');
  if (err instanceof QueueError) return reply('queueUnavailable');
  return reply('localError');
}

/** Appends one message to every destination queue; throws an SmtpReply when not all of them took it. */
export async function storeMessage(queues: QueueManager, sub: Submission, log: Logger, localDomains?: ReadonlySet<string>): Promise<Stored> {
  const groups = splitByDomain(sub.to);
  const plan: { domain: string; to: string[]; id: string; meta?: Record<string, unknown> }[] = [...groups].map(([domain, to], i) => ({ domain, to, id: i === 0 ? sub.submissionId : newMessageId() }));
  const authUser = (sub.meta.auth as { user?: unknown } | null | undefined)?.user;
  if (typeof authUser === 'string' && localDomains?.has(domainOf(authUser)) && ![...groups.keys()].some((d) => localDomains.has(d))) {
    plan.push({ domain: domainOf(authUser), to: [authUser], id: newMessageId(), meta: { ...sub.meta, outboxOnly: true } });
  }
  try {
    const stored = await queues.store(
      plan.map((p) => ({ id: p.id, domain: p.domain, envelope: { from: sub.from, to: p.to }, raw: sub.raw, meta: p.meta ?? (plan.length > 1 ? { ...sub.meta, copies: plan.length } : sub.meta) })),
      { submission: sub.submissionId },
    );
    return { copies: plan.map((p, i) => ({ domain: p.domain, id: p.id, queue: stored[i]!.queue, recipients: p.to.length })) };
  } catch (err) {
    const r = toReply(err);
    log.warn({ err, submission: sub.submissionId, reply: r.toString() }, 'not queued');
    throw r;
  }
}
