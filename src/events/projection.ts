// Views are projections of the log: the state of every live message of a queue (state, attempts,
// next attempt time, recipients still to do) and its counters, folded from its events alone (the
// event log in Cassandra up to the archive's cursor, then the history stream in Redis after it),
// compared with what the queue scripts keep in the state and meta hashes (`streamgate queue
// rebuild-state DOMAIN --check`), or written back over them (`rebuild-state DOMAIN`).
// The fold follows the scripts: accepted -> ready (deferred to details.notBefore when it has one);
// attempted -> in flight; deferred -> deferred, one more attempt, next attempt at details.nextAt,
// details.remaining the recipients still to do; requeued and released -> ready, no next time;
// held -> held; delivered, bounced, expired, purged, withdrawn -> gone.
// On a queue taking traffic, messages that change while the check reads show as differences; the
// rebuild holds the queue's writes for its last pass, so it has none.
import { type LifecycleEvent } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';
import { type MessageState, type StateRecord } from '../queue/records.ts';
import type { HistoryArchive } from './archive.ts';
import { QueueError } from '../queue/errors.ts';
import { compareIds, histIdOf, parseEntryId } from '../message/ids.ts';

export interface Projected {
  s: MessageState;
  a: number;
  n: number;
  /** The recipients still to do, when an attempt settled the others. */
  r?: string[];
}

const FINAL = new Set(['delivered', 'bounced', 'expired', 'purged', 'withdrawn']);

/** Applies one event to the projection. */
export function apply(view: Map<string, Projected>, ev: Pick<LifecycleEvent, 'kind' | 'messageId' | 'details'>): void {
  if (!ev.messageId) return;
  const m = view.get(ev.messageId);
  if (ev.kind === 'accepted') {
    const nb = Number(ev.details.notBefore ?? 0);
    view.set(ev.messageId, { s: nb ? 'deferred' : 'ready', a: 0, n: nb });
  } else if (!m) return;
  else if (FINAL.has(ev.kind)) view.delete(ev.messageId);
  else if (ev.kind === 'attempted') m.s = 'inflight';
  else if (ev.kind === 'deferred' || ev.kind === 'requeued') {
    Object.assign(m, ev.kind === 'deferred' ? { s: 'deferred', a: m.a + 1, n: Number(ev.details.nextAt ?? 0) } : { s: 'ready', n: 0 });
    if (Array.isArray(ev.details.remaining)) m.r = ev.details.remaining as string[];
  } else if (ev.kind === 'released') Object.assign(m, { s: 'ready', n: 0 });
  else if (ev.kind === 'held') m.s = 'held';
}

/**
 * The archived events of `domain` after `after` (exclusive; from its first when undefined) up to
 * `upTo` (inclusive; no bound when undefined), of the milliseconds before `until` (by default up to
 * `upTo`'s), each with its history id: the log between two cursors.
 */
async function* logBetween(archive: HistoryArchive, domain: string, after: string | undefined, upTo: string | undefined, until = parseEntryId(upTo!)[0] + 1): AsyncGenerator<[LifecycleEvent, string]> {
  for await (const ev of archive.eventsOf(domain, after ? parseEntryId(after)[0] : 0, until)) {
    const histId = histIdOf(ev.id);
    if ((!after || compareIds(histId, after) > 0) && (!upTo || compareIds(histId, upTo) <= 0)) yield [ev, histId];
  }
}

/** A queue's events folded: each live message's state, and the counts the scripts keep of appends and settles. */
export class Fold {
  readonly view = new Map<string, Projected>();
  /** accepted events, and settles per outcome. */
  appended = 0;
  readonly settled: Record<string, number> = { delivered: 0, bounced: 0, expired: 0, purged: 0, withdrawn: 0 };
  events = 0;
  /** The history id of the last event folded. */
  last: string | undefined;

  add(ev: Pick<LifecycleEvent, 'kind' | 'messageId' | 'details'>, histId: string): void {
    if (ev.kind === 'accepted' && ev.messageId) this.appended++;
    else if (FINAL.has(ev.kind) && this.view.has(ev.messageId)) this.settled[ev.kind]!++;
    apply(this.view, ev);
    this.events++;
    this.last = histId;
  }

  depth(): Record<MessageState, number> {
    const c: Record<MessageState, number> = { ready: 0, deferred: 0, held: 0, inflight: 0 };
    for (const p of this.view.values()) c[p.s]++;
    return c;
  }

  /** What the archive confirmed of `domain`: the event log up to its cursor (a row past it, written before a crash, is read from Redis by more()). */
  static async archived(archive: HistoryArchive, domain: string): Promise<Fold> {
    const fold = new Fold();
    const cursor = archive.cursorOf(domain);
    if (!cursor) return fold;
    for await (const [ev, histId] of logBetween(archive, domain, undefined, cursor)) fold.add(ev, histId);
    fold.last = cursor;
    return fold;
  }

  /**
   * The rest of the queue's events: what the archive confirmed since this fold read the log (the
   * history in Redis may have been trimmed up to its cursor meanwhile), then the history in Redis
   * after it. With the queue's writes held, nothing is trimmed while it reads.
   */
  async more(queues: QueueManager, archive: HistoryArchive, domain: string): Promise<void> {
    const cursor = archive.cursorOf(domain);
    if (cursor && (!this.last || compareIds(cursor, this.last) > 0)) {
      for await (const [ev, histId] of logBetween(archive, domain, this.last, cursor)) this.add(ev, histId);
      this.last = cursor;
    }
    for (;;) {
      const rows = await queues.historySince(domain, this.last, 2000);
      if (!rows.length) return;
      for (const r of rows) this.add({ kind: r.kind as LifecycleEvent['kind'], messageId: r.messageId, details: r.details }, r.histId);
    }
  }
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

const same = (a: Projected, b: Projected) => a.s === b.s && a.a === b.a && a.n === b.n && JSON.stringify(a.r ?? null) === JSON.stringify(b.r ?? null);

/** Rebuilds `domain`'s projection from its events and compares it with the live one. */
export async function rebuildCheck(queues: QueueManager, archive: HistoryArchive, domain: string): Promise<RebuildCheck> {
  const d = domain.toLowerCase();
  await archive.drain();
  const fold = await Fold.archived(archive, d);
  await fold.more(queues, archive, d);
  const live = new Map<string, Projected>();
  for await (const [id, st] of queues.liveStates(d)) live.set(id, pick(st));
  const differences: RebuildCheck['differences'] = [];
  for (const [id, p] of fold.view) {
    const l = live.get(id);
    if (!l || !same(l, p)) differences.push({ id, rebuilt: p, live: l ?? null });
  }
  for (const [id, l] of live) if (!fold.view.has(id)) differences.push({ id, rebuilt: null, live: l });
  return { domain: d, events: fold.events, rebuilt: fold.view.size, live: live.size, counters: { rebuilt: fold.depth(), live: await queues.counters(d) }, differences };
}

export interface RebuildResult {
  domain: string;
  events: number;
  messages: number;
  depth: Record<MessageState, number>;
  /** Messages the events say are queued whose live entry (and body) is gone: no state is written for them. */
  withoutBody: string[];
}

/** Message states as the state records code them. */
const CODES: Record<MessageState, string> = { ready: 'r', deferred: 'd', held: 'h', inflight: 'f' };
/** State records per put step. */
const PUT_BLOCK = 1000;

/**
 * Writes `domain`'s state (every live message's state record, the counters) back from its events
 * alone, on every replica in sync, in the owning gateway: the event log up to the archive's
 * cursor is folded first, then, with the queue's writes held, the history after it, and the
 * live stream gives each message's entry id and size (lua/rebuildState-4.lua writes the steps).
 * A live message the events do not know refuses the rebuild before anything is written.
 * `onBlock` is told of every block of state records written, `afterLog` when the log is folded
 * and the queue's writes are not held yet.
 */
export async function rebuildState(queues: QueueManager, archive: HistoryArchive, domain: string, who: { actor: string; reason: string; token?: string }, opts: { onBlock?: (n: number) => void; afterLog?: () => Promise<void> } = {}): Promise<RebuildResult> {
  const d = domain.toLowerCase();
  if (!queues.view(d)) throw new QueueError('NOT_FOUND', `no queue for ${domain}`);
  await archive.drain();
  const fold = await Fold.archived(archive, d);
  await opts.afterLog?.();
  return queues.withWritesHeld(d, async (q, reader) => {
    await fold.more(queues, archive, d);
    const records: string[] = [];
    const unknown: string[] = [];
    const seen = new Set<string>();
    let bytes = 0;
    for (let after: string | undefined; ; ) {
      const rows = await queues.liveIndex(reader, d, after, 2000);
      for (const [entryId, id, b] of rows) {
        const p = fold.view.get(id);
        if (!p) {
          unknown.push(id);
          continue;
        }
        seen.add(id);
        bytes += b;
        records.push(id, JSON.stringify({ e: entryId, s: CODES[p.s], a: p.a, n: p.n, b, ...(p.r ? { r: p.r } : {}) }));
      }
      if (rows.length < 2000) break;
      after = rows[rows.length - 1]![0];
    }
    if (unknown.length) throw new QueueError('WRONG_STATE', `the events of ${d} do not know ${unknown.length} of its live messages (${unknown.slice(0, 3).join(', ')}${unknown.length > 3 ? ', …' : ''}): its state cannot be rebuilt from them; nothing was written`);
    const withoutBody = [...fold.view.keys()].filter((id) => !seen.has(id));
    for (const id of withoutBody) fold.view.delete(id);
    const depth = fold.depth();
    const before = await queues.counters(d);
    await q.writeState('begin', [queues.now()]);
    for (let i = 0, n = 0; i < records.length; i += 2 * PUT_BLOCK) {
      await q.writeState('put', records.slice(i, i + 2 * PUT_BLOCK));
      opts.onBlock?.(++n);
    }
    const counters: [string, string][] = [...Object.entries(depth).map(([k, v]): [string, string] => [k, String(v)]), ['bytes', String(bytes)], ['appended', String(fold.appended)], ...Object.entries(fold.settled).map(([k, v]): [string, string] => [k, v ? String(v) : ''])];
    const details = { ...who, events: fold.events, messages: seen.size, before, after: depth };
    await q.writeState('commit', [JSON.stringify(details), ...counters.flat()]);
    return { domain: d, events: fold.events, messages: seen.size, depth, withoutBody };
  });
}

const pick = (st: StateRecord): Projected => ({ s: st.state, a: st.attempts, n: st.nextAt, ...(st.remaining ? { r: st.remaining } : {}) });

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
 * Reads each queue's log from its first event up to the moment. The queue's writes go on
 * meanwhile: a history read that finds Redis trimmed past where the log was read reads the gap
 * from the log first.
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
    for await (const [ev] of logBetween(archive, d, undefined, cursor, at + 1)) take(ev);
    if (queues.view(d)) {
      for (let after = cursor; ; ) {
        const { rows, whole } = await queues.historyAfter(d, after, 2000);
        const now = archive.cursorOf(d);
        if (!whole && now && (!after || compareIds(now, after) > 0)) {
          // Redis trimmed past `after` since the log was read (the queue goes on while this reads):
          // what it trimmed was archived first, so the log has it now
          for await (const [ev] of logBetween(archive, d, after, now, at + 1)) take(ev);
          after = now;
          continue;
        }
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
