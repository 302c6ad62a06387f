// One destination queue: its keys, its replica set (replicas.ts: the write path and the
// management table) and the in-memory projection the gateway dispatches from (ready messages in
// FIFO order, deferred messages by due time, in-flight set, counters). Every change goes through
// a Lua script run on every in-sync replica with the same ids; the projection changes only after
// the replicas answered.
//
// Three sets guard the promise around the relay:
//   owned   messages handed to the relay by take() and not yet settled, deferred or requeued: a
//           reload while the gateway runs keeps them in flight (they are being delivered);
//   staged  copies of a submission whose reply is not decided yet: stored, never dispatched,
//           until commit() (all copies stored) or withdraw() (the client is told to retry);
//   unknown appends whose outcome the replicas did not report: the client was told to retry, so
//           once the queue is reloaded they are withdrawn if they were stored after all.
import { isAscii } from 'node:buffer';
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.ts';
import { type LifecycleEvent, type LifecycleKind, type NewMessage, type QueuedMessage } from '../message/types.ts';
import { QueueError, SCRIPT_CODES } from './errors.ts';
import { Batcher } from './batcher.ts';
import { MinHeap } from './heap.ts';
import { decodeLiveEntry, decodeState, queueKeys, type MessageState, type QueueKeys } from './records.ts';
import type { ScriptName } from './scripts.ts';
import { MAIL_OVERHEAD } from './node.ts';
import { ReplicaSet, UnknownOutcomeError, type Arg, type Owner, type Replica, type WriteResult } from './replicas.ts';
import { eventId, IdGen, parseEntryId } from '../message/ids.ts';

export type { MessageState } from './records.ts';
export type { Replica, SyncState } from './replicas.ts';

export interface MemMsg {
  id: string;
  entryId: string;
  ms: number;
  seq: number;
  state: MessageState;
  attempts: number;
  nextAt: number;
  bytes: number;
  /** Bumped on every state change: heap items carrying an older value are stale. */
  gen: number;
}

export interface Depth {
  ready: number;
  deferred: number;
  held: number;
  inflight: number;
  bytes: number;
  /** Acceptance time (ms) of the oldest live message, or null when empty. */
  oldest: number | null;
}

export interface QueueSettings {
  gatewayId: string;
  writeConcern: 'all' | 'one';
  timeoutMs: number;
  maxLength: number;
  /** Events kept per history stream, cut by the scripts on every write; 0: no cap there (the history is archived, then trimmed). */
  historyMaxLength: number;
  mailBudget: number;
  now: () => number;
  owner: Owner;
}

/** The narrow view of a queue that other parts use (through QueueManager.view / views). */
export interface QueueView {
  readonly domain: string;
  readonly name: string;
  /** How the manager knows it: the destination domain for this gateway's own queue, the full name for one it adopted. */
  readonly ref: string;
  readonly depth: Readonly<Depth>;
  /** Messages that could be taken now. */
  readonly readyCount: number;
  promoteDue(now?: number): number;
  nextDueAt(): number | undefined;
  flush(): number;
  get(msgId: string): Readonly<MemMsg> | undefined;
  table(): ReturnType<Queue['table']>;
}

export type SettleOutcome = 'delivered' | 'bounced' | 'expired' | 'purged' | 'withdrawn';

type ReadyItem = [ms: number, seq: number, msg: MemMsg, gen: number];
type DueItem = [nextAt: number, msg: MemMsg, gen: number];

const WITHDRAW_RETRY_MS = 1000;

/**
 * A message body as a script argument. ioredis copies a Buffer argument into a new buffer for its
 * command, on each replica (and, while the clients auto-pipelined, again for the pipeline: the
 * four copies this was measured against): memory outside V8's heap, whose growth is
 * what starts V8's mark-compacts (one per 64 MB or so allocated), and their pauses are the reply
 * latency's tail. A body of 7-bit bytes (most mail) up to STRING_BODY_MAX goes as a string
 * instead, the same bytes on the wire, and its copies are young garbage that scavenges free. A
 * larger body stays a Buffer: for 50 KB–2 MB bodies the string's extra passes (conversion, UTF-8
 * length, flattening, encoding on write) cost more than the copies (bench:mailbox).
 */
const STRING_BODY_MAX = 64 * 1024;
/** Every HIST_MARK-th history event's id is kept (historyCut()); a cut removes at most MAX_CUT events. */
const HIST_MARK = 1000;
const MAX_CUT = 10_000;
function bodyArg(raw: Buffer): Arg {
  return raw.length <= STRING_BODY_MAX && isAscii(raw) ? raw.toString('latin1') : raw;
}

export class Queue extends EventEmitter implements QueueView {
  readonly name: string;
  readonly domain: string;
  /** The gateway id its name starts with (its events' ids and cursors use it): this process's, or, adopted, the one it came from. */
  readonly origin: string;
  /** See QueueView.ref. */
  readonly ref: string;
  /** Adopted from a gateway whose lease lapsed (takeover.ts): no new mail comes to it. */
  readonly adopted: boolean;
  readonly keys: QueueKeys;
  readonly set: ReplicaSet;
  entryIds = new IdGen();
  histIds = new IdGen();
  readonly msgs = new Map<string, MemMsg>();
  private readonly ready = new MinHeap<ReadyItem>((a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]));
  /** Deferred messages by the time they fall due (the relay's scheduler keeps the timer that wakes it). */
  private readonly due = new MinHeap<DueItem>((a, b) => a[0] < b[0]);
  readonly depth: Depth = { ready: 0, deferred: 0, held: 0, inflight: 0, bytes: 0, oldest: null };
  private readonly owned = new Set<string>();
  private readonly staged = new Set<string>();
  private readonly unknown = new Set<string>();
  /** Withdrawals not written yet (the queue was not writable): message id -> details. */
  private readonly withdrawals = new Map<string, Record<string, unknown>>();
  private withdrawTimer: NodeJS.Timeout | undefined;
  repairing = false;
  /** Events in the history stream (estimate: XLEN at load, one more per event, less what is trimmed). */
  histLen = 0;
  /** Time (ms) of the oldest history event (estimate: at load, then the trim cutoffs). */
  histFirstMs = 0;
  /** Events this process wrote to the history stream, and the id of every HIST_MARK-th with its number (see historyCut()). */
  private histWritten = 0;
  private readonly histMarks: { id: string; n: number }[] = [];
  /** Epoch of the placement record on the nodes; bumped on every switch. */
  placementEpoch: number | undefined;
  private readonly log: Logger;
  private readonly settings: QueueSettings;

  /** `origin`: the gateway id of its name (default this process's); `adopted`: taken over from another member. */
  constructor(domain: string, replicas: Replica[], settings: QueueSettings, log: Logger, from: { origin?: string; adopted?: boolean } = {}) {
    super();
    this.domain = domain;
    this.settings = settings;
    this.origin = from.origin ?? settings.gatewayId;
    this.adopted = !!from.adopted;
    this.name = `${this.origin}:${domain}`;
    this.ref = this.adopted ? this.name : domain;
    this.lastActivity = settings.now();
    this.keys = queueKeys(this.name);
    this.log = log.child({ queue: this.name });
    this.set = new ReplicaSet(this.name, this.keys, replicas, settings, this.log);
    this.set.on('table', () => this.emit('table'));
    this.set.on('fenced', (reason: string) => this.emit('fenced', reason));
  }

  // ---- the replica set, as others see it ----------------------------------------------------

  get replicas(): Replica[] {
    return this.set.replicas;
  }

  get txn(): number {
    return this.set.txn;
  }

  get whole(): boolean {
    return this.set.whole;
  }

  get appendable(): boolean {
    return this.set.appendable;
  }

  get status() {
    return this.set.status;
  }

  markNG(replica: Replica, reason: string): void {
    this.set.markNG(replica, reason);
  }

  table() {
    return { queue: this.name, domain: this.domain, owner: this.settings.gatewayId, adoptedFrom: this.adopted ? this.origin : null, ...this.set.table() };
  }

  private write(kind: 'append' | 'other' | 'held', script: ScriptName, now: number, histId: string, specific: (reader: boolean) => Arg[], msgIds: string[]): Promise<WriteResult> {
    return this.set.write(kind, script, now, histId, this.settings.historyMaxLength, specific, msgIds).then((w) => {
      if (Number(w.res[0]) === -5) {
        // An id behind the queue's highest (a clock gone back, ids taken from an old record):
        // nothing but the transaction number changed; continue after the node's ids and retry.
        this.entryIds.advance(String(w.res[2] || '0-0'));
        this.histIds.advance(String(w.res[3] || '0-0'));
        throw new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name}: ids behind the queue's highest; try again`);
      }
      return w;
    });
  }

  /** When the queue last changed (an event), or was loaded (ms): see idle. */
  lastActivity = 0;

  /** No message, nothing being appended, withdrawn or held by the relay: the queue may be deleted. */
  get empty(): boolean {
    return this.msgs.size === 0 && !this.appends.busy && !this.owned.size && !this.staged.size && !this.unknown.size && !this.withdrawals.size;
  }

  private event(kind: LifecycleKind, msgId: string, histId: string, txn: number, details: Record<string, unknown>): void {
    this.lastActivity = this.settings.now();
    if (!this.settings.historyMaxLength || this.histLen < this.settings.historyMaxLength) this.histLen++;
    if (++this.histWritten % HIST_MARK === 0) {
      this.histMarks.push({ id: histId, n: this.histWritten });
      this.dropTrimmedMarks();
    }
    if (!this.histFirstMs) this.histFirstMs = this.settings.now();
    const ev: LifecycleEvent = { id: eventId(this.origin, this.domain, histId), queue: this.name, domain: this.domain, kind, messageId: msgId, txn, at: this.settings.now(), details };
    this.emit('event', ev);
  }

  // ---- appends ------------------------------------------------------------------------------

  private readonly appends = new Batcher<{ msg: NewMessage; staged: boolean }, { entryId: string; duplicate: boolean }>(
    { maxItems: 500, maxBytes: 512 * 1024, maxInFlight: 4, size: (a) => a.msg.raw.length },
    (batch) => this.appendBatch(batch),
  );

  /**
   * Stores a message on the replicas (gathered with other appends into one transaction). A
   * staged copy is not dispatched until commit(); see the header.
   */
  async append(msg: NewMessage, opts: { staged?: boolean } = {}): Promise<{ entryId: string; duplicate: boolean }> {
    if (!msg.envelope.to.length) throw new QueueError('BAD_INPUT', 'a message needs at least one recipient');
    if (!msg.id || msg.id.length > 200) throw new QueueError('BAD_INPUT', 'a message id of 1 to 200 characters is needed');
    for (const r of this.set.inSync()) {
      if (r.node.mailAboveBudget(this.settings.mailBudget, msg.raw.length)) {
        throw new QueueError('STORAGE_FULL', `redis node ${r.node.id}: queued mail is at its budget (queue.mailBudget, ${Math.round(this.settings.mailBudget * 100)}% of maxmemory)`);
      }
    }
    const existing = this.msgs.get(msg.id);
    if (existing) {
      // A copy being withdrawn is no copy: the sender must try again once it is gone, or its retry would be lost with it.
      if (this.withdrawals.has(msg.id)) throw new QueueError('QUEUE_UNAVAILABLE', `message ${msg.id} is being withdrawn from queue ${this.name}; try again`);
      return { entryId: existing.entryId, duplicate: true };
    }
    return this.appends.add({ msg, staged: !!opts.staged });
  }

  private async appendBatch(batch: { msg: NewMessage; staged: boolean }[]): Promise<({ entryId: string; duplicate: boolean } | Error)[]> {
    const now = this.settings.now();
    const histId = this.histIds.next(now, batch.length);
    const entryIds: string[] = [];
    const notBefore: number[] = [];
    const args: Arg[] = [this.settings.maxLength, batch.length];
    const details: Record<string, unknown>[] = [];
    for (const { msg } of batch) {
      const entryId = this.entryIds.next(now);
      const nb = msg.notBefore && msg.notBefore > now ? msg.notBefore : 0;
      entryIds.push(entryId);
      notBefore.push(nb);
      // a later first attempt is in the event too: the state is rebuilt from the events alone
      const d = { envelope: msg.envelope, size: msg.raw.length, ...(msg.meta ?? {}), ...(nb ? { notBefore: nb } : {}) };
      details.push(d);
      args.push(entryId, msg.id, msg.envelope.from, JSON.stringify(msg.envelope.to), JSON.stringify(msg.meta ?? {}), bodyArg(msg.raw), nb, JSON.stringify(d));
    }
    const ids = batch.map((b) => b.msg.id);
    let res: unknown[];
    let failure: QueueError | undefined;
    try {
      res = (await this.write('append', 'appendMessages', now, histId, () => args, ids)).res;
    } catch (err) {
      if (err instanceof UnknownOutcomeError) for (const id of ids) this.unknown.add(id);
      if (!(err instanceof QueueError) || !err.partial) throw err;
      res = err.partial;
      failure = err;
    }
    const txn = Number(res[1]);
    const [hms, hseq] = parseEntryId(histId);
    let k = 0;
    let appended = 0;
    const out = batch.map(({ msg, staged }, i) => {
      const code = Number(res[2 + i * 2]);
      if (code === -4) return new QueueError('QUEUE_FULL', `queue ${this.name} holds its maximum of ${this.settings.maxLength} messages`);
      if (code === 1) return { entryId: String(res[3 + i * 2]), duplicate: true };
      const entryId = entryIds[i]!;
      const [ms, seq] = parseEntryId(entryId);
      const nb = notBefore[i]!;
      // A copy the caller will be told to retry is never dispatched: staged until withdrawn.
      if (staged || failure) this.staged.add(msg.id);
      this.track({ id: msg.id, entryId, ms, seq, state: nb ? 'deferred' : 'ready', attempts: 0, nextAt: nb, bytes: msg.raw.length, gen: 0 });
      this.event('accepted', msg.id, `${hms}-${hseq + k++}`, txn, details[i]!);
      appended += msg.raw.length;
      if (failure) this.withdraw(msg.id, { reason: 'stored on fewer replicas than the write concern' });
      return failure ?? { entryId, duplicate: false };
    });
    for (const r of this.set.inSync()) r.node.pendingBytes += appended + k * MAIL_OVERHEAD;
    if (appended && !failure) this.emit('ready');
    return out;
  }

  /** A staged copy may be dispatched: its submission is stored whole. */
  commit(msgId: string): void {
    if (!this.staged.delete(msgId)) return;
    const m = this.msgs.get(msgId);
    if (!m) return;
    this.schedule(m);
    this.emit('ready');
  }

  /**
   * Withdraws a stored copy whose sender is told to retry: settled as `withdrawn`, never
   * dispatched meanwhile; tried again every second while the queue is not writable.
   */
  withdraw(msgId: string, details: Record<string, unknown>): void {
    if (this.msgs.has(msgId)) this.staged.add(msgId);
    this.withdrawals.set(msgId, details);
    void this.flushWithdrawals();
  }

  private withdrawing = false;

  private async flushWithdrawals(): Promise<void> {
    if (this.withdrawing) return;
    this.withdrawing = true;
    try {
      for (const [id, details] of [...this.withdrawals]) {
        if (!this.msgs.has(id)) {
          this.withdrawals.delete(id);
          this.staged.delete(id);
          continue;
        }
        try {
          await this.settle(id, 'withdrawn', details);
          this.withdrawals.delete(id);
        } catch (err) {
          if (err instanceof QueueError && err.code === 'NOT_FOUND') this.withdrawals.delete(id);
          else this.log.warn({ err, messageId: id }, 'withdraw failed, will retry');
        }
      }
    } finally {
      this.withdrawing = false;
      clearTimeout(this.withdrawTimer);
      this.withdrawTimer = this.withdrawals.size ? setTimeout(() => void this.flushWithdrawals(), WITHDRAW_RETRY_MS).unref() : undefined;
    }
  }

  /** Withdrawals still to write. */
  get pendingWithdrawals(): number {
    return this.withdrawals.size;
  }

  // ---- the projection -----------------------------------------------------------------------

  /** Adds a message to the projection (append and reload); one already there is replaced, never counted twice. */
  track(m: MemMsg): void {
    const old = this.msgs.get(m.id);
    if (old) {
      this.depth[old.state]--;
      this.depth.bytes -= old.bytes;
    }
    this.msgs.set(m.id, m);
    this.depth[m.state]++;
    this.depth.bytes += m.bytes;
    if (this.depth.oldest === null || m.ms < this.depth.oldest) this.depth.oldest = m.ms;
    this.schedule(m);
  }

  private schedule(m: MemMsg): void {
    if (this.staged.has(m.id)) return;
    if (m.state === 'ready') this.ready.push([m.ms, m.seq, m, m.gen]);
    else if (m.state === 'deferred') this.due.push([m.nextAt, m, m.gen]);
  }

  /** True while `m` is the projection's live record of its message (not settled meanwhile). */
  private live(m: MemMsg): boolean {
    return this.msgs.get(m.id) === m;
  }

  private move(m: MemMsg, to: MessageState): void {
    if (!this.live(m)) return;
    this.depth[m.state]--;
    this.depth[to]++;
    m.state = to;
    m.gen++;
    if (to !== 'inflight') this.owned.delete(m.id);
    this.schedule(m);
  }

  private forget(m: MemMsg): void {
    if (!this.live(m)) return;
    this.depth[m.state]--;
    this.depth.bytes -= m.bytes;
    m.gen++;
    this.msgs.delete(m.id);
    this.owned.delete(m.id);
    this.staged.delete(m.id);
    if (this.msgs.size === 0) this.depth.oldest = null;
    else if (this.depth.oldest === m.ms) this.depth.oldest = this.oldestLive();
  }

  private oldestLive(): number | null {
    for (const m of this.msgs.values()) return m.ms; // Map keeps insertion order: the first is the oldest appended (reload inserts in FIFO order)
    return null;
  }

  /** Deferred messages whose time has come become ready; returns how many. */
  promoteDue(now = this.settings.now()): number {
    let n = 0;
    for (let top = this.due.peek(); top && top[0] <= now; top = this.due.peek()) {
      this.due.pop();
      const [, m, gen] = top;
      if (m.gen !== gen || m.state !== 'deferred') continue;
      // stays deferred in Redis until taken: takeMessages accepts due deferred messages
      this.ready.push([m.ms, m.seq, m, m.gen]);
      n++;
    }
    return n;
  }

  /** Makes every deferred message due now (an operator's flush); returns how many. */
  flush(): number {
    let n = 0;
    for (const m of this.msgs.values()) {
      if (m.state !== 'deferred' || this.staged.has(m.id)) continue;
      m.nextAt = 0;
      m.gen++;
      this.ready.push([m.ms, m.seq, m, m.gen]);
      n++;
    }
    if (n) this.emit('ready');
    return n;
  }

  /** When the next deferred message falls due, or undefined. */
  nextDueAt(): number | undefined {
    for (let top = this.due.peek(); top; top = this.due.peek()) {
      if (top[1].gen === top[2] && top[1].state === 'deferred') return top[0];
      this.due.pop();
    }
    return undefined;
  }

  /** Count of messages that could be taken now. */
  get readyCount(): number {
    return this.ready.size;
  }

  // ---- take, settle, defer, hold ------------------------------------------------------------

  /** Up to `max` messages in FIFO order, marked in flight; with their envelopes and bodies. */
  async take(max: number, filter?: (m: MemMsg) => boolean): Promise<QueuedMessage[]> {
    this.promoteDue();
    const picked: MemMsg[] = [];
    const skipped: ReadyItem[] = [];
    while (picked.length < max && this.ready.size) {
      const item = this.ready.pop()!;
      const m = item[2];
      if (m.gen !== item[3] || (m.state !== 'ready' && m.state !== 'deferred') || !this.live(m) || this.staged.has(m.id)) continue;
      if (filter && !filter(m)) {
        skipped.push(item);
        continue;
      }
      picked.push(m);
    }
    for (const s of skipped) this.ready.push(s);
    if (!picked.length) return [];
    const prev = picked.map((m) => m.state);
    for (const m of picked) this.move(m, 'inflight');
    const now = this.settings.now();
    const histId = this.histIds.next(now, picked.length);
    const ids = picked.map((m) => m.id);
    let w: WriteResult;
    try {
      w = await this.write('other', 'takeMessages', now, histId, (reader) => [reader ? 1 : 0, ...ids], ids);
    } catch (err) {
      picked.forEach((m, i) => this.move(m, prev[i]!));
      throw err;
    }
    const txn = Number(w.res[1]);
    const rows = (w.res.slice(3) as [Buffer | string, number, Buffer | string, Buffer[]][]).map(([id, attempt, remaining, fields]) => ({ id: id.toString(), attempt: Number(attempt), remaining: remaining.toString(), fields }));
    if (!w.fromReader && rows.length) await this.readBodies(w.from, rows);
    const out: QueuedMessage[] = [];
    const [hms, hseq] = parseEntryId(histId);
    let k = 0;
    const takenIds = new Set<string>();
    const lost: string[] = [];
    for (const row of rows) {
      const m = this.msgs.get(row.id);
      this.event('attempted', row.id, `${hms}-${hseq + k++}`, txn, { attempt: row.attempt });
      if (!m) continue; // settled while the take was on its way (a purge): nothing to deliver
      takenIds.add(row.id);
      if (!row.fields.length) {
        lost.push(row.id);
        continue;
      }
      m.attempts = row.attempt - 1;
      const e = decodeLiveEntry(row.fields);
      this.owned.add(row.id);
      out.push({
        queue: this.name,
        domain: this.domain,
        id: row.id,
        entryId: m.entryId,
        attempt: row.attempt,
        envelope: { from: e.from, to: row.remaining ? (JSON.parse(row.remaining) as string[]) : e.to },
        raw: e.raw,
        meta: e.meta,
        acceptedAt: e.acceptedAt,
      });
    }
    // Those the node did not take (held or settled meanwhile) go back to what they were.
    picked.forEach((m, i) => {
      if (!takenIds.has(m.id) && m.state === 'inflight') this.move(m, prev[i]!);
    });
    // Taken but unreadable: put back on every replica, so that nothing stays in flight without an owner.
    for (const id of lost) void this.requeue(id, { reason: 'message body could not be read after the take' }).catch((err: unknown) => this.log.warn({ err, messageId: id }, 'requeue after a lost take failed; the next reload puts it back'));
    return out;
  }

  /** The reader's reply was lost but another replica applied the take: read the bodies from that one. */
  private async readBodies(from: Replica, rows: { id: string; fields: Buffer[] }[]): Promise<void> {
    try {
      const c = from.node.client;
      const states = await c.hmgetBuffer(this.keys[3], ...rows.map((r) => r.id));
      const pipe = c.pipeline();
      const asked: number[] = [];
      states.forEach((s, i) => {
        if (!s) return;
        const e = decodeState(s).entryId;
        pipe.xrangeBuffer(this.keys[0], e, e);
        asked.push(i);
      });
      const res = (await pipe.exec()) ?? [];
      res.forEach(([err, entries], j) => {
        const entry = (entries as [Buffer, Buffer[]][] | undefined)?.[0];
        if (!err && entry) rows[asked[j]!]!.fields = entry[1];
      });
    } catch (err) {
      this.log.warn({ err, node: from.node.id }, 'could not read the bodies of a take');
    }
  }

  private need(msgId: string): MemMsg {
    const m = this.msgs.get(msgId);
    if (!m) throw new QueueError('NOT_FOUND', `no message ${msgId} in queue ${this.name}`);
    return m;
  }

  private check(res: unknown[], msgId: string): number {
    const code = Number(res[0]);
    if (code < 0) {
      const c = SCRIPT_CODES[code] ?? 'BAD_INPUT';
      throw new QueueError(c, c === 'WRONG_STATE' ? `message ${msgId} is not in a state that allows this` : `no message ${msgId} in queue ${this.name}`);
    }
    return Number(res[1]);
  }

  private readonly settles = new Batcher<{ msgId: string; outcome: SettleOutcome; details: string }, number>(
    { maxItems: 500, maxBytes: 1024 * 1024, maxInFlight: 2, size: (s) => s.details.length + 64 },
    (batch) => this.settleBatch(batch),
  );

  /** delivered | bounced | expired | purged | withdrawn: the live entry goes, the event stays. */
  async settle(msgId: string, outcome: SettleOutcome, details: Record<string, unknown> = {}): Promise<void> {
    this.need(msgId);
    await this.settles.add({ msgId, outcome, details: JSON.stringify(details) });
  }

  private async settleBatch(batch: { msgId: string; outcome: SettleOutcome; details: string }[]): Promise<(number | Error)[]> {
    const now = this.settings.now();
    const histId = this.histIds.next(now, batch.length);
    const args: Arg[] = [batch.length];
    for (const b of batch) args.push(b.msgId, b.outcome, b.details);
    const { res } = await this.write('other', 'settleMessages', now, histId, () => args, batch.map((b) => b.msgId));
    const txn = Number(res[1]);
    const [hms, hseq] = parseEntryId(histId);
    let k = 0;
    return batch.map((b, i) => {
      if (Number(res[2 + i]) !== 0) return new QueueError('NOT_FOUND', `no message ${b.msgId} in queue ${this.name}`);
      const m = this.msgs.get(b.msgId);
      if (m) {
        this.forget(m);
        // how long it was queued (its entry id's time is its acceptance): for the metrics
        this.emit('settled', b.outcome, Math.max(0, (now - m.ms) / 1000));
      }
      this.event(b.outcome, b.msgId, `${hms}-${hseq + k++}`, txn, JSON.parse(b.details) as Record<string, unknown>);
      return txn;
    });
  }

  /** After a failed attempt: next attempt time, last reply, and the recipients still to do. */
  async defer(msgId: string, nextAt: number, details: Record<string, unknown> = {}, remaining?: string[]): Promise<number> {
    return this.reschedule('deferred', msgId, nextAt, details, remaining);
  }

  /** An in-flight message goes back to ready without counting an attempt (shutdown, recovery). */
  async requeue(msgId: string, details: Record<string, unknown> = {}): Promise<void> {
    await this.reschedule('requeued', msgId, 0, details);
  }

  private async reschedule(kind: 'deferred' | 'requeued', msgId: string, nextAt: number, details: Record<string, unknown>, remaining?: string[]): Promise<number> {
    const m = this.need(msgId);
    const now = this.settings.now();
    const histId = this.histIds.next(now);
    // the recipients still to do are in the event too: the state is rebuilt from the events alone
    if (remaining) details = { ...details, remaining };
    const { res } = await this.write('other', 'deferMessage', now, histId, () => [msgId, nextAt, JSON.stringify(details), remaining ? JSON.stringify(remaining) : '', kind], [msgId]);
    const txn = this.check(res, msgId);
    m.nextAt = nextAt;
    if (kind === 'deferred') m.attempts = Number(res[2]);
    this.move(m, kind === 'deferred' ? 'deferred' : 'ready');
    this.event(kind, msgId, histId, txn, details);
    if (kind === 'requeued') this.emit('ready');
    return m.attempts;
  }

  async hold(msgId: string, actor: string, reason: string, extra: Record<string, unknown> = {}): Promise<void> {
    await this.setHold(msgId, 'held', { actor, reason, ...extra });
  }

  async release(msgId: string, actor: string, reason: string, extra: Record<string, unknown> = {}): Promise<void> {
    await this.setHold(msgId, 'released', { actor, reason, ...extra });
    this.emit('ready');
  }

  /** An operator's action on one message, in its event: actor, reason, and its state before and after. */
  private async setHold(msgId: string, kind: 'held' | 'released', who: Record<string, unknown>): Promise<void> {
    const m = this.need(msgId);
    const now = this.settings.now();
    const histId = this.histIds.next(now);
    const details = { ...who, before: m.state, after: kind === 'held' ? 'held' : 'ready' };
    const { res } = await this.write('other', 'holdMessage', now, histId, () => [msgId, kind, JSON.stringify(details)], [msgId]);
    const txn = this.check(res, msgId);
    if (kind === 'released') m.nextAt = 0;
    this.move(m, kind === 'held' ? 'held' : 'ready');
    this.event(kind, msgId, histId, txn, details);
  }

  async purge(msgId: string, actor: string, reason: string, extra: Record<string, unknown> = {}): Promise<void> {
    const m = this.need(msgId);
    await this.settle(msgId, 'purged', { actor, reason, ...extra, before: m.state, after: 'purged' });
  }

  /** An operator's flush: every deferred message due now, recorded as a queue-level `flushed` event. */
  async flushBy(actor: string, reason: string, extra: Record<string, unknown> = {}): Promise<number> {
    const before = { ready: this.depth.ready, deferred: this.depth.deferred };
    const flushed = this.flush();
    // deferred messages made due stay deferred in Redis until taken: "after" counts them as ready
    await this.mark('flushed', { actor, reason, ...extra, flushed, before, after: { ready: before.ready + flushed, deferred: before.deferred - flushed } });
    return flushed;
  }

  /** A queue-level event (a forced recovery), with its actor and reason, in the history. */
  async mark(kind: LifecycleKind, details: Record<string, unknown>, msgId = ''): Promise<void> {
    const now = this.settings.now();
    const histId = this.histIds.next(now);
    const { res } = await this.write('other', 'markQueue', now, histId, () => [kind, JSON.stringify(details), ...(msgId ? [msgId] : [])], []);
    this.event(kind, msgId, histId, Number(res[1]), details);
  }

  /**
   * One step of a state rebuild (lua/rebuildState-4.lua: begin, put, commit), written by the holder
   * of the write barrier (QueueManager.withWritesHeld). The commit's details (args[0]) make its
   * `rebuilt` event, which goes out as every event does.
   */
  async writeState(step: 'begin' | 'put' | 'commit', args: Arg[]): Promise<void> {
    const now = this.settings.now();
    const histId = this.histIds.next(now);
    const { res } = await this.write('held', 'rebuildState', now, histId, () => [step, ...args], []);
    if (step === 'commit') this.event('rebuilt', '', histId, Number(res[1]), JSON.parse(String(args[0])) as Record<string, unknown>);
  }

  /** A live message as stored: envelope, body, metadata and accept time (from an in-sync replica). */
  async peek(msgId: string): Promise<{ envelope: { from: string; to: string[] }; raw: Buffer; meta: Record<string, unknown>; acceptedAt: number } | undefined> {
    const m = this.msgs.get(msgId);
    const r = this.set.inSync().find((x) => x.node.up);
    if (!m || !r) return undefined;
    const [entry] = (await r.node.reads.xrangeBuffer(this.keys[0], m.entryId, m.entryId)) as [Buffer, Buffer[]][];
    if (!entry) return undefined;
    const e = decodeLiveEntry(entry[1]);
    const state = await r.node.reads.hget(this.keys[3], msgId);
    const remaining = state ? decodeState(state).remaining : undefined;
    return {
      envelope: { from: e.from, to: remaining ?? e.to },
      raw: e.raw,
      meta: e.meta,
      acceptedAt: e.acceptedAt,
    };
  }

  /**
   * Where a cap of `keep` events may cut this queue's history without reading it: the id of an
   * event this process wrote with at least `keep` events from it on (within HIST_MARK more), and at
   * most MAX_CUT events before it, for an XTRIM MINID that removes whole stream nodes and reads no
   * entry (lua/trimHistory-4.lua), the same id on both replicas. Undefined when the ids this process
   * kept cannot tell (events from before it started, or more than MAX_CUT before the first it
   * kept): the caller cuts the exact way, by count. Null: nothing to cut this way. The caller takes
   * the lower of it and its own bound (never past the events cursor: DESIGN, invariant 12).
   */
  historyCut(keep: number): string | null | undefined {
    const first = this.dropTrimmedMarks();
    const oldest = this.histMarks[0];
    if (!oldest || oldest.n - first > MAX_CUT) return undefined;
    let cut: { id: string; n: number } | undefined;
    for (const m of this.histMarks) {
      if (this.histWritten - m.n + 1 < keep || m.n - first > MAX_CUT) break;
      cut = m;
    }
    return cut && cut.n > first ? cut.id : null;
  }

  /** Drops the marks of events trimmed since; returns the number (as this process counts) of the stream's first event. */
  private dropTrimmedMarks(): number {
    const first = this.histWritten - this.histLen + 1;
    while (this.histMarks.length && this.histMarks[0]!.n < first) this.histMarks.shift();
    return first;
  }

  /**
   * Trims the history stream below `minId` (exclusive: XTRIM MINID) on every replica, as one
   * transaction; with `keep`, only the oldest events beyond `keep` (and below `minId`). The caller
   * never passes an id beyond the events cursor or the archive's (DESIGN, invariant 12).
   * Returns the number of events trimmed.
   */
  async trimHistory(minId: string, keep = 0): Promise<number> {
    const now = this.settings.now();
    const histId = this.histIds.next(now);
    const { res } = await this.write('other', 'trimHistory', now, histId, () => [minId, keep], []);
    const trimmed = Number(res[2] ?? 0);
    this.histLen = res[3] === undefined ? Math.max(0, this.histLen - trimmed) : Number(res[3]);
    if (!keep) this.histFirstMs = Math.max(this.histFirstMs, parseEntryId(minId)[0]);
    return trimmed;
  }

  /** The projection's view of one message. */
  get(msgId: string): MemMsg | undefined {
    return this.msgs.get(msgId);
  }

  // ---- reload -------------------------------------------------------------------------------

  /**
   * Starts a reload of the projection from a replica proven current, whose transaction number
   * is `txn`. Returns the ids this process holds in flight (they stay in flight).
   */
  beginReload(txn: number, lastEntry: string | undefined, lastHist: string | undefined): ReadonlySet<string> {
    this.set.txn = txn;
    this.set.stale = false;
    this.entryIds.advance(lastEntry ?? '0-0');
    this.histIds.advance(lastHist ?? '0-0');
    this.msgs.clear();
    this.ready.clear();
    this.due.clear();
    Object.assign(this.depth, { ready: 0, deferred: 0, held: 0, inflight: 0, bytes: 0, oldest: null });
    return this.owned;
  }

  /**
   * Ends a reload: what is in flight without an owner goes back to ready; unknown appends are
   * withdrawn. `later`: the requeues are sent without waiting for them (the caller holds the write
   * barrier, behind which they wait).
   */
  async endReload(orphans: string[], reason: string, later = false): Promise<void> {
    for (const id of [...this.owned]) if (this.msgs.get(id)?.state !== 'inflight') this.owned.delete(id);
    for (const id of [...this.staged]) if (!this.msgs.has(id)) this.staged.delete(id);
    for (const id of this.unknown) if (this.msgs.has(id)) this.withdraw(id, { reason: 'the sender was told to retry: the replicas did not answer the append' });
    this.unknown.clear();
    const requeue = async () => {
      for (const id of orphans) await this.requeue(id, { reason }).catch((err: unknown) => this.log.warn({ err, messageId: id }, 'requeue failed'));
    };
    if (later) void requeue();
    else await requeue();
    if (this.depth.ready) this.emit('ready');
  }

  stop(): void {
    clearTimeout(this.withdrawTimer);
    for (const id of this.withdrawals.keys()) this.log.error({ messageId: id }, 'withdraw pending at shutdown');
  }
}
