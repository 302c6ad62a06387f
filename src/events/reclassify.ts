// Re-classification: the bounce rules run again over the replies kept in the event log, so an
// operator who fixes a rule sees its effect on past traffic before using it (`streamgate bounces
// reclassify --since TIME [--rules FILE]`). Every attempt outcome (deferred, delivered, bounced,
// expired) whose attempt reached a destination host lists each recipient's reply; each is
// classified again as the relay classifies it (src/relay/deliver.ts): a reply in the session by
// the rules, then its code; a failure to have a session (a network error, or a reply to the
// connection itself) by the rules alone, deferred otherwise and never delivered. Results the
// gateway made itself (routing, DNS, local delivery, expiry) are no reply and are left out.
// A dry run: nothing is written, nothing is sent again.
import { parseReply, type Classified, type Classifier, type Reply } from '../relay/classify.ts';
import type { EventLog } from './archive.ts';

const ATTEMPT_KINDS = new Set(['deferred', 'delivered', 'bounced', 'expired']);

export interface Reclassified {
  messageId: string;
  /** The gateway id whose event log holds it (a worker's `<id>-N`, or a dead member's), and its queue's domain. */
  gateway: string;
  domain: string;
  /** The event that recorded the reply, and its attempt. */
  eventId: string;
  attempt: number;
  at: number;
  rcpt: string;
  /** The reply as one line. */
  reply: string;
  from: Classified;
  to: Classified;
}

export interface ReclassifyReport {
  /** Attempt events read, and recipients' replies classified again. */
  events: number;
  replies: number;
  changes: Reclassified[];
  /** Per change ("bounced/permanent → deferred/mailbox-full"), how many replies. */
  counts: Map<string, number>;
}

interface RecipientRow {
  rcpt?: unknown;
  status?: unknown;
  code?: unknown;
  enhanced?: unknown;
  text?: unknown;
  category?: unknown;
}

/** One recipient's reply classified again, or undefined when it is no reply of a destination. */
export function classifyAgain(classifier: Classifier, r: RecipientRow): { reply: string; to: Classified } | undefined {
  const text = typeof r.text === 'string' ? r.text : '';
  const code = typeof r.code === 'number' ? r.code : undefined;
  if (code !== undefined && !text.startsWith(`${code}`)) {
    const reply: Reply = { code, enhanced: typeof r.enhanced === 'string' ? r.enhanced : undefined, text };
    return { reply: [code, reply.enhanced, text].filter(Boolean).join(' '), to: classifier.classify(reply) };
  }
  // no session: the reply line as recorded, a network error ("ECONNREFUSED connect …") or a reply to the connection
  const reply: Reply = code !== undefined ? parseReply(text) : { error: text.split(' ')[0] || 'ERROR', text: text.slice(text.indexOf(' ') + 1) };
  const rule = classifier.rule(reply);
  return { reply: text, to: rule && rule.status !== 'delivered' ? rule : { status: 'deferred', category: rule?.category ?? 'network' } };
}

/**
 * Re-runs `classifier` over the archived replies from `since` (ms) on, of every queue or `domains`,
 * in the event logs of `logs` (one per gateway id: with gateway.workers each worker's).
 */
export async function reclassify(logs: EventLog[], classifier: Classifier, opts: { since: number; until?: number; domains?: ReadonlySet<string> }): Promise<ReclassifyReport> {
  const until = opts.until ?? Date.now();
  const report: ReclassifyReport = { events: 0, replies: 0, changes: [], counts: new Map() };
  for (const log of logs) await reclassifyLog(log, classifier, { ...opts, until }, report);
  return report;
}

async function reclassifyLog(log: EventLog, classifier: Classifier, opts: { since: number; until: number; domains?: ReadonlySet<string> }, report: ReclassifyReport): Promise<void> {
  const { until } = opts;
  for (const domain of (await log.archivedQueues()).sort()) {
    if (opts.domains && !opts.domains.has(domain)) continue;
    for await (const ev of log.eventsOf(domain, opts.since, until)) {
      const mx = ev.details.mx;
      if (!ATTEMPT_KINDS.has(ev.kind) || typeof mx !== 'string' || mx === 'local' || !Array.isArray(ev.details.recipients)) continue;
      report.events++;
      for (const r of ev.details.recipients as RecipientRow[]) {
        const again = classifyAgain(classifier, r);
        if (!again || typeof r.rcpt !== 'string') continue;
        report.replies++;
        const from = { status: r.status, category: r.category } as Classified;
        if (from.status === again.to.status && from.category === again.to.category) continue;
        const change = `${from.status}/${from.category} → ${again.to.status}/${again.to.category}`;
        report.counts.set(change, (report.counts.get(change) ?? 0) + 1);
        report.changes.push({ messageId: ev.messageId, gateway: log.gateway, domain, eventId: ev.id, attempt: Number(ev.details.attempt ?? 0), at: ev.at, rcpt: r.rcpt, reply: again.reply, from, to: { status: again.to.status, category: again.to.category } });
      }
    }
  }
}
