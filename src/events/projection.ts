// Views are projections of the log: the state of every live message of a queue (state, attempts,
// next attempt time) and its counters, folded from its events alone (the event log in Cassandra up
// to the archive's cursor, then the history stream in Redis after it), compared with what the
// queue scripts keep in the state and meta hashes (`streamgate queue rebuild-state DOMAIN --check`).
// The fold follows the scripts: accepted -> ready; attempted -> in flight; deferred -> deferred,
// one more attempt, next attempt at details.nextAt; requeued and released -> ready, no next time;
// held -> held; delivered, bounced, expired, purged, withdrawn -> gone. A message accepted with a
// later first attempt (a producer's delay) is not told apart from a ready one by its event.
// On a queue taking traffic, messages that change while the check reads show as differences.
import { type LifecycleEvent } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';
import { type MessageState, type StateRecord } from '../queue/records.ts';
import type { HistoryArchive } from './archive.ts';
import { compareIds, histIdOf, parseEntryId } from '../message/ids.ts';

export interface Projected {
  s: MessageState;
  a: number;
  n: number;
}

const FINAL = new Set(['delivered', 'bounced', 'expired', 'purged', 'withdrawn']);

/** Applies one event to the projection. */
export function apply(view: Map<string, Projected>, ev: Pick<LifecycleEvent, 'kind' | 'messageId' | 'details'>): void {
  if (!ev.messageId) return;
  const m = view.get(ev.messageId);
  if (ev.kind === 'accepted') view.set(ev.messageId, { s: 'ready', a: 0, n: 0 });
  else if (!m) return;
  else if (FINAL.has(ev.kind)) view.delete(ev.messageId);
  else if (ev.kind === 'attempted') m.s = 'inflight';
  else if (ev.kind === 'deferred') Object.assign(m, { s: 'deferred', a: m.a + 1, n: Number(ev.details.nextAt ?? 0) });
  else if (ev.kind === 'requeued' || ev.kind === 'released') Object.assign(m, { s: 'ready', n: 0 });
  else if (ev.kind === 'held') m.s = 'held';
}

export interface RebuildCheck {
  domain: string;
  /** Events folded, and messages live in the rebuilt projection and in the queue. */
  events: number;
  rebuilt: number;
  live: number;
  counters: { rebuilt: Record<string, number>; live: Record<string, number> };
  /** Messages whose rebuilt state differs from the live one (null: absent on that side). */
  differences: { id: string; rebuilt: Projected | null; live: Projected | null }[];
}

/** Rebuilds `domain`'s projection from its events and compares it with the live one. */
export async function rebuildCheck(queues: QueueManager, archive: HistoryArchive, domain: string): Promise<RebuildCheck> {
  const d = domain.toLowerCase();
  await archive.drain();
  const view = new Map<string, Projected>();
  let events = 0;
  const cursor = archive.cursorOf(d);
  if (cursor) {
    // what the archive confirmed comes from the log (a row past the cursor, written before a crash, comes from Redis below)
    for await (const ev of archive.eventsOf(d, 0, parseEntryId(cursor)[0] + 1)) {
      if (compareIds(histIdOf(ev.id), cursor) > 0) continue;
      apply(view, ev);
      events++;
    }
  }
  for (let after = cursor; ; ) {
    const rows = await queues.historySince(d, after, 2000);
    if (!rows.length) break;
    for (const r of rows) apply(view, { kind: r.kind as LifecycleEvent['kind'], messageId: r.messageId, details: r.details });
    events += rows.length;
    after = rows[rows.length - 1]!.histId;
  }
  const live = new Map<string, Projected>();
  for await (const [id, st] of queues.liveStates(d)) live.set(id, pick(st));
  const differences: RebuildCheck['differences'] = [];
  for (const [id, p] of view) {
    const l = live.get(id);
    if (!l || l.s !== p.s || l.a !== p.a || l.n !== p.n) differences.push({ id, rebuilt: p, live: l ?? null });
  }
  for (const [id, l] of live) if (!view.has(id)) differences.push({ id, rebuilt: null, live: l });
  const count = (m: Map<string, Projected>) => {
    const c: Record<string, number> = { ready: 0, deferred: 0, held: 0, inflight: 0 };
    for (const p of m.values()) c[p.s]!++;
    return c;
  };
  return { domain: d, events, rebuilt: view.size, live: live.size, counters: { rebuilt: count(view), live: await queues.counters(d) }, differences };
}

const pick = (st: StateRecord): Projected => ({ s: st.state, a: st.attempts, n: st.nextAt });

/** One message as it stood at a moment: its state then, and the event that put it there. */
export interface MessageAt extends Projected {
  id: string;
  /** The last event of the message up to the moment: its kind, time and reason (when it has one). */
  last: { kind: string; at: number; reason?: string };
}

export interface QueueAt {
  domain: string;
  depth: Record<'ready' | 'deferred' | 'held' | 'inflight', number>;
  messages: MessageAt[];
}

/**
 * Time travel: what was waiting where at `at` (ms), and why, folded from the log (the event log,
 * then the history in Redis after the archive cursor), for every queue of the gateway or one.
 * Reads each queue's log from its first event up to the moment.
 */
export async function queuesAt(queues: QueueManager, archive: HistoryArchive, at: number, only?: string): Promise<QueueAt[]> {
  const domains = new Set([...(await archive.log.archivedQueues()), ...queues.refs()]);
  const out: QueueAt[] = [];
  for (const d of [...domains].sort()) {
    if (only && d !== only.toLowerCase()) continue;
    const view = new Map<string, Projected>();
    const last = new Map<string, MessageAt['last']>();
    const take = (ev: Pick<LifecycleEvent, 'kind' | 'messageId' | 'details' | 'at'>) => {
      apply(view, ev);
      if (view.has(ev.messageId)) last.set(ev.messageId, { kind: ev.kind, at: ev.at, ...(typeof ev.details.reason === 'string' ? { reason: ev.details.reason } : typeof ev.details.reply === 'string' ? { reason: ev.details.reply } : {}) });
      else last.delete(ev.messageId);
    };
    const cursor = archive.cursorOf(d);
    for await (const ev of archive.eventsOf(d, 0, at + 1)) if (!cursor || compareIds(histIdOf(ev.id), cursor) <= 0) take(ev);
    if (queues.view(d)) {
      for (let after = cursor; ; ) {
        const rows = await queues.historySince(d, after, 2000);
        const upTo = rows.filter((r) => parseEntryId(r.histId)[0] <= at);
        for (const r of upTo) take({ kind: r.kind as LifecycleEvent['kind'], messageId: r.messageId, details: r.details, at: r.at });
        if (upTo.length < rows.length || !rows.length) break;
        after = rows[rows.length - 1]!.histId;
      }
    }
    const depth = { ready: 0, deferred: 0, held: 0, inflight: 0 };
    const messages: MessageAt[] = [];
    for (const [id, p] of view) {
      depth[p.s]++;
      messages.push({ id, ...p, last: last.get(id)! });
    }
    if (messages.length) out.push({ domain: d, depth, messages });
  }
  return out;
}
