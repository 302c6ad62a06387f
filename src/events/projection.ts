// Views are projections of the log: the state of every live message of a queue (state, attempts,
// next attempt time) and its counters, folded from its events alone (the event log in Cassandra up
// to the archive's cursor, then the history stream in Redis after it), compared with what the
// queue scripts keep in the state and meta hashes (`streamgate queue rebuild-state DOMAIN --check`).
// The fold follows the scripts: accepted -> ready; attempted -> in flight; deferred -> deferred,
// one more attempt, next attempt at details.nextAt; requeued and released -> ready, no next time;
// held -> held; delivered, bounced, expired, purged, withdrawn -> gone. A message accepted with a
// later first attempt (a producer's delay) is not told apart from a ready one by its event.
// On a queue taking traffic, messages that change while the check reads show as differences.
import { histIdOf, type LifecycleEvent } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';
import { compareIds, parseEntryId, type MsgState, type StateRecord } from '../queue/records.ts';
import type { HistoryArchive } from './archive.ts';

export interface Projected {
  s: MsgState;
  a: number;
  n: number;
}

const FINAL = new Set(['delivered', 'bounced', 'expired', 'purged', 'withdrawn']);
const COUNTER: Record<MsgState, 'ready' | 'deferred' | 'held' | 'inflight'> = { r: 'ready', d: 'deferred', h: 'held', f: 'inflight' };

/** Applies one event to the projection. */
export function apply(view: Map<string, Projected>, ev: Pick<LifecycleEvent, 'kind' | 'messageId' | 'details'>): void {
  if (!ev.messageId) return;
  const m = view.get(ev.messageId);
  if (ev.kind === 'accepted') view.set(ev.messageId, { s: 'r', a: 0, n: 0 });
  else if (!m) return;
  else if (FINAL.has(ev.kind)) view.delete(ev.messageId);
  else if (ev.kind === 'attempted') m.s = 'f';
  else if (ev.kind === 'deferred') Object.assign(m, { s: 'd', a: m.a + 1, n: Number(ev.details.nextAt ?? 0) });
  else if (ev.kind === 'requeued' || ev.kind === 'released') Object.assign(m, { s: 'r', n: 0 });
  else if (ev.kind === 'held') m.s = 'h';
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
    for (const p of m.values()) c[COUNTER[p.s]]!++;
    return c;
  };
  return { domain: d, events, rebuilt: view.size, live: live.size, counters: { rebuilt: count(view), live: await queues.counters(d) }, differences };
}

const pick = (st: StateRecord): Projected => ({ s: st.s, a: st.a, n: st.n });
