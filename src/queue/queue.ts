// One destination queue: its keys, its ordered replica pair, its transaction number, and the
// in-memory projection the gateway dispatches from (ready messages in FIFO order, deferred timers,
// in-flight set, counters). Every change goes through a Lua script run on every in-sync replica
// with the same ids; the transaction numbers they return are compared.
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.ts';
import type { LifecycleEvent, LifecycleKind, NewMessage, QueuedMessage } from '../message/types.ts';
import { QueueError, SCRIPT_CODES } from './errors.ts';
import { Batcher } from './batcher.ts';
import { MinHeap } from './heap.ts';
import type { RedisNode } from './node.ts';

export type SyncState = 'Sync' | 'NG' | 'Rebuilding';
export type MsgState = 'r' | 'd' | 'h' | 'f';

export interface Replica {
  node: RedisNode;
  sync: SyncState;
  /** Last transaction number this replica returned. */
  txn: number;
  /** When it left the write set (for the rebuild grace period). */
  outSince: number;
}

export interface MemMsg {
  id: string;
  entryId: string;
  ms: number;
  seq: number;
  state: MsgState;
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
  historyMaxLength: number;
  memoryHighWater: number;
  now: () => number;
}

type Arg = string | number | Buffer;
export type SettleOutcome = 'delivered' | 'bounced' | 'expired' | 'purged' | 'withdrawn';

/** Strictly increasing stream ids "ms-seq" chosen by the gateway, identical on both replicas. */
export class IdGen {
  private ms: number;
  private seq: number;
  constructor(ms = 0, seq = -1) {
    this.ms = ms;
    this.seq = seq;
  }

  static from(id: string | undefined): IdGen {
    if (!id) return new IdGen();
    const [ms, seq] = id.split('-').map(Number);
    return new IdGen(ms, seq);
  }

  /** Reserves `n` consecutive ids and returns the first. */
  next(now: number, n = 1): string {
    if (now > this.ms) {
      this.ms = now;
      this.seq = -1;
    }
    const first = this.seq + 1;
    this.seq += n;
    return `${this.ms}-${first}`;
  }
}

const parseEntryId = (id: string): [number, number] => {
  const dash = id.indexOf('-');
  return [Number(id.slice(0, dash)), Number(id.slice(dash + 1))];
};

type ReadyItem = [ms: number, seq: number, msg: MemMsg, gen: number];
type TimerItem = [nextAt: number, msg: MemMsg, gen: number];

const COUNTER: Record<MsgState, keyof Depth> = { r: 'ready', d: 'deferred', h: 'held', f: 'inflight' };

export class Queue extends EventEmitter {
  readonly name: string;
  readonly keys: [string, string, string, string];
  replicas: Replica[];
  txn = 0;
  entryIds = new IdGen();
  histIds = new IdGen();
  readonly msgs = new Map<string, MemMsg>();
  private readonly ready = new MinHeap<ReadyItem>((a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]));
  private readonly timers = new MinHeap<TimerItem>((a, b) => a[0] < b[0]);
  readonly depth: Depth = { ready: 0, deferred: 0, held: 0, inflight: 0, bytes: 0, oldest: null };
  /** Writes in progress; the rebuild's last pass waits for them to drain. */
  private pending = 0;
  private drained: (() => void) | undefined;
  /** While set, new writes wait on it (the short last pass of a rebuild). */
  gate: Promise<void> | undefined;
  /** Message ids written while a rebuild copies: re-copied in its last pass. */
  dirty: Set<string> | undefined;
  repairing = false;
  /** Epoch of the placement record on the nodes; bumped on every switch. */
  placementEpoch: number | undefined;
  private readonly log: Logger;

  readonly domain: string;
  private readonly settings: QueueSettings;

  constructor(domain: string, replicas: Replica[], settings: QueueSettings, log: Logger) {
    super();
    this.domain = domain;
    this.settings = settings;
    this.name = `${settings.gatewayId}:${domain}`;
    const tag = `sg:{${this.name}}`;
    this.keys = [`${tag}:live`, `${tag}:hist`, `${tag}:meta`, `${tag}:state`];
    this.replicas = replicas;
    this.log = log.child({ queue: this.name });
  }

  // ---- replica set --------------------------------------------------------------------------

  /** In-sync replicas on nodes that are up, the reader first. */
  private inSync(): Replica[] {
    return this.replicas.filter((r) => r.sync === 'Sync' && r.node.up);
  }

  get whole(): boolean {
    return this.replicas.length >= 2 && this.replicas.every((r) => r.sync === 'Sync' && r.node.up);
  }

  /** all: appends need both replicas; one: one is enough (the queue shows degraded). */
  get appendable(): boolean {
    const n = this.inSync().length;
    return this.settings.writeConcern === 'all' ? n >= 2 && n === this.replicas.length : n >= 1;
  }

  get status(): 'whole' | 'degraded' | 'unavailable' | 'rebuilding' {
    if (this.whole) return 'whole';
    if (this.inSync().length === 0) return 'unavailable';
    return this.replicas.some((r) => r.sync === 'Rebuilding') ? 'rebuilding' : 'degraded';
  }

  markNG(replica: Replica, reason: string): void {
    if (replica.sync === 'NG') return;
    replica.sync = 'NG';
    replica.outSince = this.settings.now();
    this.log.warn({ node: replica.node.id, reason, table: this.table() }, 'replica out of sync');
    this.emit('table');
  }

  table() {
    return {
      queue: this.name,
      domain: this.domain,
      status: this.status,
      txn: this.txn,
      replicas: this.replicas.map((r) => {
        const s = r.node.status();
        return { node: r.node.id, active: s.active, standby: s.standby ?? null, path: s.path, sync: r.sync, txn: r.txn, lastHeartbeat: s.lastHeartbeat };
      }),
    };
  }

  // ---- the write path -----------------------------------------------------------------------

  private async write(kind: 'append' | 'other', script: string, argsFor: (reader: boolean) => Arg[], msgIds: string[]): Promise<unknown[]> {
    while (this.gate) await this.gate;
    if (kind === 'append' && !this.appendable) {
      throw new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name} is not writable at write concern ${this.settings.writeConcern} (${this.status})`);
    }
    const targets = this.inSync();
    if (targets.length === 0) throw new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name} has no replica in sync`);
    const expected = this.txn++;
    if (this.dirty) for (const id of msgIds) this.dirty.add(id);
    this.pending++;
    try {
      const settled = await Promise.allSettled(
        targets.map((r, i) => {
          const fn = r.node.client[i === 0 ? `${script}Buffer` : script] as (...a: Arg[]) => Promise<unknown[]>;
          return fn.call(r.node.client, ...this.keys, expected, ...argsFor(i === 0));
        }),
      );
      let first: unknown[] | undefined;
      let ok = 0;
      let oom = false;
      settled.forEach((s, i) => {
        const r = targets[i]!;
        if (s.status === 'rejected') {
          const msg = (s.reason as Error).message ?? String(s.reason);
          if (/OOM/.test(msg)) oom = true;
          if (/timed out|Connection is closed|isn.t writeable|max retries|ECONNRE|EPIPE|OOM/i.test(msg)) r.node.isolate(`write failed: ${msg}`);
          this.markNG(r, `write failed: ${msg}`);
          return;
        }
        const res = s.value;
        const code = Number(res[0]);
        const txn = Number(res[1]);
        if (code === -1) {
          this.markNG(r, `transaction number ${txn} on the node, ${expected} expected`);
          return;
        }
        r.txn = txn;
        if (txn !== expected + 1) {
          this.markNG(r, `returned transaction number ${txn}, ${expected + 1} expected`);
          return;
        }
        ok++;
        first ??= res;
      });
      if (!first) {
        if (oom) throw new QueueError('STORAGE_FULL', `queue ${this.name}: redis is out of memory`);
        throw new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name}: no replica took the write`);
      }
      if (kind === 'append' && this.settings.writeConcern === 'all' && ok < targets.length) {
        // Stored on fewer replicas than the write concern asks: the caller is told to try again,
        // and the copies that were stored stay tracked so that it can withdraw them.
        throw Object.assign(new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name}: the write reached ${ok} of ${targets.length} replicas`), { partial: first });
      }
      return first;
    } finally {
      if (--this.pending === 0) this.drained?.();
    }
  }

  /** Resolves when no write is in progress (used under the gate). */
  async drain(): Promise<void> {
    if (this.pending === 0) return;
    await new Promise<void>((resolve) => (this.drained = resolve));
    this.drained = undefined;
  }

  private event(kind: LifecycleKind, msgId: string, histId: string, txn: number, details: Record<string, unknown>): void {
    const ev: LifecycleEvent = { id: `${this.settings.gatewayId}/${this.domain}/${histId}`, queue: this.name, domain: this.domain, kind, messageId: msgId, txn, at: this.settings.now(), details };
    this.emit('event', ev);
  }

  private common(): [now: number, histId: string] {
    const now = this.settings.now();
    return [now, this.histIds.next(now)];
  }

  // ---- operations ---------------------------------------------------------------------------

  private readonly appends = new Batcher<NewMessage, { entryId: string; duplicate: boolean }>(
    { maxItems: 500, maxBytes: 512 * 1024, maxInFlight: 4, size: (m) => m.raw.length },
    (batch) => this.appendBatch(batch),
  );

  /** Stores a message on the replicas (gathered with other appends into one transaction). */
  async append(msg: NewMessage): Promise<{ entryId: string; duplicate: boolean }> {
    if (!msg.envelope.to.length) throw new QueueError('BAD_INPUT', 'a message needs at least one recipient');
    if (!msg.id || msg.id.length > 200) throw new QueueError('BAD_INPUT', 'a message id of 1 to 200 characters is needed');
    for (const r of this.inSync()) {
      if (r.node.aboveHighWater(this.settings.memoryHighWater, msg.raw.length)) {
        throw new QueueError('STORAGE_FULL', `redis node ${r.node.id} is above ${Math.round(this.settings.memoryHighWater * 100)}% of its maxmemory`);
      }
    }
    const existing = this.msgs.get(msg.id);
    if (existing) return { entryId: existing.entryId, duplicate: true };
    return this.appends.add(msg);
  }

  private async appendBatch(batch: NewMessage[]): Promise<({ entryId: string; duplicate: boolean } | Error)[]> {
    const now = this.settings.now();
    const histId = this.histIds.next(now, batch.length);
    const args: Arg[] = [now, histId, this.settings.historyMaxLength, this.settings.maxLength, batch.length];
    const entryIds: string[] = [];
    const notBefore: number[] = [];
    for (const msg of batch) {
      const entryId = this.entryIds.next(now);
      const nb = msg.notBefore && msg.notBefore > now ? msg.notBefore : 0;
      entryIds.push(entryId);
      notBefore.push(nb);
      args.push(entryId, msg.id, msg.envelope.from, JSON.stringify(msg.envelope.to), JSON.stringify(msg.meta ?? {}), msg.raw, nb);
    }
    let res: unknown[];
    let failure: QueueError | undefined;
    try {
      res = await this.write('append', 'appendMessages', () => args, batch.map((m) => m.id));
    } catch (err) {
      if (!(err instanceof QueueError) || !err.partial) throw err;
      res = err.partial;
      failure = err;
    }
    const txn = Number(res[1]);
    const [hms, hseq] = parseEntryId(histId);
    let k = 0;
    let appended = 0;
    const out = batch.map((msg, i) => {
      const code = Number(res[2 + i * 2]);
      if (code === -4) return new QueueError('QUEUE_FULL', `queue ${this.name} holds its maximum of ${this.settings.maxLength} messages`);
      if (code === 1) return { entryId: String(res[3 + i * 2]), duplicate: true };
      const entryId = entryIds[i]!;
      const [ms, seq] = parseEntryId(entryId);
      const nb = notBefore[i]!;
      this.track({ id: msg.id, entryId, ms, seq, state: nb ? 'd' : 'r', attempts: 0, nextAt: nb, bytes: msg.raw.length, gen: 0 });
      this.event('accepted', msg.id, `${hms}-${hseq + k++}`, txn, { envelope: msg.envelope, size: msg.raw.length, ...(msg.meta ?? {}) });
      appended += msg.raw.length;
      return failure ?? { entryId, duplicate: false };
    });
    if (failure) {
      // The caller is told to try again: withdraw the copies that were stored, so that its retry
      // cannot lead to a second delivery.
      const stored = batch.filter((_, i) => Number(res[2 + i * 2]) === 0).map((m) => m.id);
      await Promise.allSettled(stored.map((id) => this.settle(id, 'withdrawn', { reason: 'stored on fewer replicas than the write concern' })));
    }
    for (const r of this.inSync()) r.node.pendingBytes += appended;
    if (appended) this.emit('ready');
    return out;
  }

  /** Adds a message to the projection (append and recovery). */
  track(m: MemMsg): void {
    this.msgs.set(m.id, m);
    this.depth[COUNTER[m.state]] = (this.depth[COUNTER[m.state]] as number) + 1;
    this.depth.bytes += m.bytes;
    if (this.depth.oldest === null || m.ms < this.depth.oldest) this.depth.oldest = m.ms;
    this.schedule(m);
  }

  private schedule(m: MemMsg): void {
    if (m.state === 'r') this.ready.push([m.ms, m.seq, m, m.gen]);
    else if (m.state === 'd') this.timers.push([m.nextAt, m, m.gen]);
  }

  private move(m: MemMsg, to: MsgState): void {
    (this.depth[COUNTER[m.state]] as number)--;
    (this.depth[COUNTER[to]] as number)++;
    m.state = to;
    m.gen++;
    this.schedule(m);
  }

  private forget(m: MemMsg): void {
    (this.depth[COUNTER[m.state]] as number)--;
    this.depth.bytes -= m.bytes;
    m.gen++;
    this.msgs.delete(m.id);
    if (this.msgs.size === 0) this.depth.oldest = null;
    else if (this.depth.oldest === m.ms) this.depth.oldest = this.oldestLive();
  }

  private oldestLive(): number | null {
    let min: number | null = null;
    for (const m of this.msgs.values()) {
      min = m.ms;
      break; // Map keeps insertion order: the first is the oldest appended (recovery inserts in FIFO order)
    }
    return min;
  }

  /** Deferred messages whose time has come become ready; returns how many. */
  promoteDue(now = this.settings.now()): number {
    let n = 0;
    for (let top = this.timers.peek(); top && top[0] <= now; top = this.timers.peek()) {
      this.timers.pop();
      const [, m, gen] = top;
      if (m.gen !== gen || m.state !== 'd') continue;
      // stays 'd' in Redis until taken: takeMessages accepts due deferred messages
      this.ready.push([m.ms, m.seq, m, m.gen]);
      n++;
    }
    return n;
  }

  /** Makes every deferred message due now (an operator's flush); returns how many. */
  flush(): number {
    let n = 0;
    for (const m of this.msgs.values()) {
      if (m.state !== 'd') continue;
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
    for (let top = this.timers.peek(); top; top = this.timers.peek()) {
      if (top[1].gen === top[2] && top[1].state === 'd') return top[0];
      this.timers.pop();
    }
    return undefined;
  }

  /** Count of messages that could be taken now. */
  get readyCount(): number {
    return this.ready.size;
  }

  /** Up to `max` messages in FIFO order, marked in flight; with their envelopes and bodies. */
  async take(max: number, filter?: (m: MemMsg) => boolean): Promise<QueuedMessage[]> {
    this.promoteDue();
    const picked: MemMsg[] = [];
    const skipped: ReadyItem[] = [];
    while (picked.length < max && this.ready.size) {
      const item = this.ready.pop()!;
      const m = item[2];
      if (m.gen !== item[3] || (m.state !== 'r' && m.state !== 'd') || !this.msgs.has(m.id)) continue;
      if (filter && !filter(m)) {
        skipped.push(item);
        continue;
      }
      picked.push(m);
    }
    for (const s of skipped) this.ready.push(s);
    if (!picked.length) return [];
    const prev = picked.map((m) => m.state);
    for (const m of picked) this.move(m, 'f');
    const [now] = this.common();
    const histId = this.histIds.next(now, picked.length);
    let res: unknown[];
    try {
      res = await this.write('other', 'takeMessages', (reader) => [now, histId, this.settings.historyMaxLength, reader ? 1 : 0, ...picked.map((m) => m.id)], picked.map((m) => m.id));
    } catch (err) {
      picked.forEach((m, i) => this.move(m, prev[i]!));
      throw err;
    }
    const txn = Number(res[1]);
    const out: QueuedMessage[] = [];
    const [hms, hseq] = parseEntryId(histId);
    let k = 0;
    const takenIds = new Set<string>();
    for (const row of res.slice(3) as [Buffer, number, Buffer, Buffer[]][]) {
      const id = row[0].toString();
      takenIds.add(id);
      const f = new Map<string, Buffer>();
      for (let i = 0; i + 1 < row[3].length; i += 2) f.set(row[3][i]!.toString(), row[3][i + 1]!);
      const remaining = row[2].length ? (JSON.parse(row[2].toString()) as string[]) : undefined;
      const m = this.msgs.get(id);
      if (m) m.attempts = Number(row[1]) - 1;
      out.push({
        queue: this.name,
        domain: this.domain,
        id,
        entryId: m?.entryId ?? '',
        attempt: Number(row[1]),
        envelope: { from: f.get('f')?.toString() ?? '', to: remaining ?? (JSON.parse(f.get('r')?.toString() ?? '[]') as string[]) },
        raw: f.get('raw') ?? Buffer.alloc(0),
        meta: JSON.parse(f.get('meta')?.toString() ?? '{}') as Record<string, unknown>,
        acceptedAt: Number(f.get('a')?.toString() ?? 0),
      });
      this.event('attempted', id, `${hms}-${hseq + k++}`, txn, { attempt: Number(row[1]) });
    }
    // Those the node did not take (held or settled meanwhile) go back to what they were.
    picked.forEach((m, i) => {
      if (!takenIds.has(m.id) && m.state === 'f') this.move(m, prev[i]!);
    });
    return out;
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
    const args: Arg[] = [now, histId, this.settings.historyMaxLength, batch.length];
    for (const b of batch) args.push(b.msgId, b.outcome, b.details);
    const res = await this.write('other', 'settleMessages', () => args, batch.map((b) => b.msgId));
    const txn = Number(res[1]);
    const [hms, hseq] = parseEntryId(histId);
    let k = 0;
    return batch.map((b, i) => {
      if (Number(res[2 + i]) !== 0) return new QueueError('NOT_FOUND', `no message ${b.msgId} in queue ${this.name}`);
      const m = this.msgs.get(b.msgId);
      if (m) this.forget(m);
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
    const [now, histId] = this.common();
    const args = [now, histId, this.settings.historyMaxLength, msgId, nextAt, JSON.stringify(details), remaining ? JSON.stringify(remaining) : '', kind];
    const res = await this.write('other', 'deferMessage', () => args, [msgId]);
    const txn = this.check(res, msgId);
    m.nextAt = nextAt;
    if (kind === 'deferred') m.attempts = Number(res[2]);
    this.move(m, kind === 'deferred' ? 'd' : 'r');
    this.event(kind, msgId, histId, txn, details);
    if (kind === 'requeued') this.emit('ready');
    return m.attempts;
  }

  async hold(msgId: string, actor: string, reason: string): Promise<void> {
    await this.setHold(msgId, 'held', actor, reason);
  }

  async release(msgId: string, actor: string, reason: string): Promise<void> {
    await this.setHold(msgId, 'released', actor, reason);
    this.emit('ready');
  }

  private async setHold(msgId: string, kind: 'held' | 'released', actor: string, reason: string): Promise<void> {
    const m = this.need(msgId);
    const [now, histId] = this.common();
    const details = { actor, reason };
    const res = await this.write('other', 'holdMessage', () => [now, histId, this.settings.historyMaxLength, msgId, kind, JSON.stringify(details)], [msgId]);
    const txn = this.check(res, msgId);
    if (kind === 'released') m.nextAt = 0;
    this.move(m, kind === 'held' ? 'h' : 'r');
    this.event(kind, msgId, histId, txn, details);
  }

  async purge(msgId: string, actor: string, reason: string): Promise<void> {
    await this.settle(msgId, 'purged', { actor, reason });
  }

  /** The projection's view of one message. */
  get(msgId: string): MemMsg | undefined {
    return this.msgs.get(msgId);
  }

  /** Drops the projection (before a reload from a replica). */
  resetProjection(): void {
    this.msgs.clear();
    this.ready.clear();
    this.timers.clear();
    Object.assign(this.depth, { ready: 0, deferred: 0, held: 0, inflight: 0, bytes: 0, oldest: null });
  }
}
