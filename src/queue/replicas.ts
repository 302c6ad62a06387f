// The replica set of one queue: its ordered pair of nodes, each replica's sync state and last
// transaction number (the management table), and the write path. A write runs the same script
// with the same arguments on every in-sync replica and compares the transaction numbers they
// return; a replica that fails or disagrees leaves the write set (NG) and is copied again by the
// manager. One slow reply is not a node failure: it is checked on the node's other path, and only
// the queue's replica is resynced; node isolation is the heartbeat's call (node.ts).
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.ts';
import { DeadlineError, withDeadline } from './deadline.ts';
import { QueueError } from './errors.ts';
import type { Redis } from 'ioredis';
import type { RedisNode } from './node.ts';
import type { QueueKeys } from './records.ts';
import { runScript, type ScriptName } from './scripts.ts';

export type SyncState = 'Sync' | 'NG' | 'Rebuilding';

export interface Replica {
  node: RedisNode;
  sync: SyncState;
  /** Last transaction number this replica returned. */
  txn: number;
  /** When it left the write set (for the rebuild grace period). */
  outSince: number;
}

export type Arg = string | number | Buffer;

/** This process's ownership (DESIGN, invariant 10), shared by all its queues. */
export interface Owner {
  /** The epoch every write carries; the scripts refuse it on a queue claimed with a newer one. */
  epoch: number;
  /** Set once a write was refused for a newer owner (or the gateway id was taken): nothing is written after. */
  fenced: string | undefined;
}

export interface WriteResult {
  /** The reply of a replica that applied the write. */
  res: unknown[];
  /** True when `res` came from the first replica (the one asked for message bodies). */
  fromReader: boolean;
  /** The replica `res` came from. */
  from: Replica;
  /** Replicas that applied it, of `targets`. */
  ok: number;
  targets: number;
}

/** The write's outcome on the replicas is not known: it may have been applied. */
export class UnknownOutcomeError extends QueueError {
  constructor(message: string) {
    super('QUEUE_UNAVAILABLE', message);
  }
}

const APPLIED = Symbol('applied, reply lost');
const CONNECTION_LOST = /Connection is closed|isn.t writeable|max retries|ECONNRE|EPIPE|Stream isn't writeable/i;

export class ReplicaSet extends EventEmitter {
  replicas: Replica[];
  /** The queue's transaction number: the next write expects it. */
  txn = 0;
  /** Why no replica is in sync, when none is: shown in the management table. */
  closedReason: string | undefined;
  /**
   * A write's outcome is not known (no replica answered it): the projection may disagree with the
   * replicas until it is loaded again from them (the manager's repair does that first; a copy
   * under way is not taken as in sync).
   */
  stale = false;
  /** While raised, new writes wait on it (the short last pass of a copy). */
  private writeBarrier: { wait: Promise<void>; lower: () => void } | undefined;
  /** Message ids written while a copy runs: copied again in its last pass. */
  dirty: Set<string> | undefined;
  private pending = 0;
  private drained: (() => void) | undefined;
  private readonly name: string;
  private readonly keys: QueueKeys;
  private readonly writeConcern: 'all' | 'one';
  private readonly timeoutMs: number;
  private readonly now: () => number;
  private readonly owner: Owner;
  private readonly log: Logger;

  constructor(name: string, keys: QueueKeys, replicas: Replica[], opts: { writeConcern: 'all' | 'one'; timeoutMs: number; now: () => number; owner: Owner }, log: Logger) {
    super();
    this.name = name;
    this.keys = keys;
    this.replicas = replicas;
    this.writeConcern = opts.writeConcern;
    this.timeoutMs = opts.timeoutMs;
    this.now = opts.now;
    this.owner = opts.owner;
    this.log = log;
  }

  /** In-sync replicas on nodes that are up, the reader first. */
  inSync(): Replica[] {
    return this.replicas.filter((r) => r.sync === 'Sync' && r.node.up);
  }

  get whole(): boolean {
    return this.replicas.length >= 2 && this.replicas.every((r) => r.sync === 'Sync' && r.node.up);
  }

  /**
   * all: appends need both replicas; one: one is enough (the queue shows degraded). A third
   * replica being copied while its pair stays whole (a node drained) does not count.
   */
  get appendable(): boolean {
    const n = this.inSync().length;
    const counted = this.replicas.filter((r) => r.sync !== 'Rebuilding' || this.replicas.length <= 2).length;
    return this.writeConcern === 'all' ? n >= 2 && n === counted : n >= 1;
  }

  get status(): 'whole' | 'degraded' | 'unavailable' | 'rebuilding' {
    if (this.whole) return 'whole';
    if (this.inSync().length === 0) return 'unavailable';
    return this.replicas.some((r) => r.sync === 'Rebuilding') ? 'rebuilding' : 'degraded';
  }

  markNG(replica: Replica, reason: string): void {
    if (replica.sync === 'NG') return;
    replica.sync = 'NG';
    replica.outSince = this.now();
    this.log.warn({ node: replica.node.id, reason, table: this.table() }, 'replica out of sync');
    this.emit('table');
  }

  /** The replica takes part in writes again (after a copy or a proven recovery). */
  markSync(replica: Replica, txn: number): void {
    replica.sync = 'Sync';
    replica.txn = txn;
    this.closedReason = undefined;
    this.emit('table');
  }

  /** No replica can be proven current: the queue takes no write until one can. */
  close(reason: string): void {
    for (const r of this.replicas) {
      if (r.sync !== 'NG') r.outSince = this.now();
      r.sync = 'NG';
    }
    if (this.closedReason !== reason) this.log.error({ queue: this.name, reason }, 'queue closed: no replica is provably current');
    this.closedReason = reason;
    this.emit('table');
  }

  table() {
    return {
      status: this.status,
      txn: this.txn,
      ...(this.closedReason ? { closed: this.closedReason } : {}),
      replicas: this.replicas.map((r) => {
        const s = r.node.status();
        return { node: r.node.id, up: s.up, active: s.active, standby: s.standby ?? null, path: s.path, sync: r.sync, txn: r.txn, lastHeartbeat: s.lastHeartbeat };
      }),
    };
  }

  /**
   * Runs `script` on every in-sync replica with the common arguments (lua/includes/queueWrite.lua)
   * and `specific(reader)`; resolves with a reply of a replica that applied it. Throws QueueError:
   * QUEUE_UNAVAILABLE when none took it (UnknownOutcomeError when it may have been applied),
   * STORAGE_FULL on OOM, or, for appends at write concern `all` that reached fewer replicas, an
   * error whose `partial` is the reply of those that took it. `held`: a write of the one who
   * raised the write barrier, which does not wait on it.
   */
  async write(kind: 'append' | 'other' | 'held', script: ScriptName, now: number, histId: string, histMax: number, specific: (reader: boolean) => Arg[], msgIds: string[]): Promise<WriteResult> {
    while (this.writeBarrier && kind !== 'held') await this.writeBarrier.wait;
    if (this.owner.fenced) throw new QueueError('FENCED', `queue ${this.name}: ${this.owner.fenced}`);
    if (kind === 'append' && !this.appendable) {
      throw new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name} is not writable at write concern ${this.writeConcern} (${this.status})`);
    }
    const targets = this.inSync();
    if (targets.length === 0) throw new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name} has no replica in sync${this.closedReason ? ` (${this.closedReason})` : ''}`);
    const expected = this.txn++;
    const members = targets.map((r) => r.node.id).join(',');
    if (this.dirty) for (const id of msgIds) this.dirty.add(id);
    this.pending++;
    try {
      const settled = await Promise.allSettled(targets.map((r, i) => this.send(r, script, [...this.keys, expected, now, histId, histMax, members, this.owner.epoch, ...specific(i === 0)], i === 0, expected)));
      let first: WriteResult | undefined;
      let ok = 0;
      let oom = false;
      let unknown = false;
      let newer: number | undefined;
      settled.forEach((s, i) => {
        const r = targets[i]!;
        if (s.status === 'rejected') {
          const err = s.reason as Error;
          const msg = err.message ?? String(err);
          if (/OOM/.test(msg)) oom = true;
          if (err instanceof DeadlineError || /timed out/i.test(msg)) unknown = true;
          else if (CONNECTION_LOST.test(msg) || /OOM/.test(msg)) r.node.isolate(`write failed: ${msg}`);
          this.markNG(r, `write failed: ${msg}`);
          return;
        }
        if (s.value === APPLIED) {
          r.txn = expected + 1;
          ok++;
          return;
        }
        const res = s.value;
        const code = Number(res[0]);
        const txn = Number(res[1]);
        if (code === -6) {
          newer = txn;
          return;
        }
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
        first ??= { res, fromReader: i === 0, from: r, ok: 0, targets: targets.length };
      });
      if (newer !== undefined) {
        // A newer owner claimed the queue: this process writes nothing more, anywhere.
        this.owner.fenced ??= `claimed by a newer owner (epoch ${newer}, this process ${this.owner.epoch})`;
        this.emit('fenced', this.owner.fenced);
        throw new QueueError('FENCED', `queue ${this.name}: ${this.owner.fenced}`);
      }
      if (!first) {
        if (oom) throw new QueueError('STORAGE_FULL', `queue ${this.name}: redis is out of memory`);
        if (unknown || ok > 0) {
          this.stale = true;
          throw new UnknownOutcomeError(`queue ${this.name}: no reply from the replicas; the write may have been applied`);
        }
        throw new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name}: no replica took the write`);
      }
      first.ok = ok;
      if (kind === 'append' && this.writeConcern === 'all' && ok < targets.length) {
        // Stored on fewer replicas than the write concern asks: the caller is told to try again,
        // and the copies that were stored stay tracked so that they can be withdrawn.
        throw Object.assign(new QueueError('QUEUE_UNAVAILABLE', `queue ${this.name}: the write reached ${ok} of ${targets.length} replicas`), { partial: first.res });
      }
      return first;
    } finally {
      if (--this.pending === 0) this.drained?.();
    }
  }

  /**
   * One replica's reply within the time limit. When it does not come, the node's other path says
   * whether the write was applied (its transaction number moved past it: the reply would have been
   * the other replica's, both being identical) or not (then it is sent once more on that path).
   */
  private async send(r: Replica, script: ScriptName, args: Arg[], reader: boolean, expected: number): Promise<unknown[] | typeof APPLIED> {
    const call = (c: Redis) => runScript(c, script, args, { buffers: reader });
    try {
      return await withDeadline(call(r.node.client), this.timeoutMs, `${script} on ${r.node.id}`);
    } catch (err) {
      const other = r.node.otherClient;
      if (!(err instanceof DeadlineError) || !other) throw err;
      const nodeTxn = Number(await withDeadline(other.hget(this.keys[2], 'txn'), this.timeoutMs, `txn of ${this.name} on ${r.node.id}`));
      this.log.warn({ node: r.node.id, expected, nodeTxn }, 'write timed out on the path in use; checked on the other path');
      if (nodeTxn > expected) return APPLIED;
      if (nodeTxn === expected) return withDeadline(call(other), this.timeoutMs, `${script} on ${r.node.id} (other path)`);
      throw err;
    }
  }

  /** New writes wait until lowerWriteBarrier() (the short last pass of a copy). */
  raiseWriteBarrier(): void {
    let lower = () => {};
    const wait = new Promise<void>((resolve) => (lower = resolve));
    this.writeBarrier = { wait, lower };
  }

  lowerWriteBarrier(): void {
    const b = this.writeBarrier;
    this.writeBarrier = undefined;
    b?.lower();
  }

  /** Resolves when no write is in progress (used under the write barrier). */
  async drain(): Promise<void> {
    if (this.pending === 0) return;
    await new Promise<void>((resolve) => (this.drained = resolve));
    this.drained = undefined;
  }
}
