// The queue layer's front: the node pool, placement of each destination queue on an ordered pair
// of nodes (rendezvous hashing, recorded on the nodes so a restart finds it), recovery at start,
// and repair: a replica out of sync is wiped and copied again whole; a replica on a dead node is
// rebuilt on the spare after a grace period. Other parts use only this class.
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { LifecycleEvent, NewMessage, QueuedMessage } from '../message/types.ts';
import { copyQueue, type CopyStats } from './copy.ts';
import { QueueError } from './errors.ts';
import { RedisNode } from './node.ts';
import { IdGen, Queue, type Depth, type MemMsg, type MsgState, type Replica } from './queue.ts';

export interface ManagerOptions {
  gatewayId?: string;
  now?: () => number;
}

interface PlacementRecord {
  nodes: string[];
  epoch: number;
}

export class QueueManager extends EventEmitter {
  readonly nodes: RedisNode[];
  readonly queues = new Map<string, Queue>();
  readonly gatewayId: string;
  readonly now: () => number;
  private readonly placementKey: string;
  private repairTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly log: Logger;
  /** Figures of the last recovery, for logs and benchmarks. */
  lastRecovery = { queues: 0, messages: 0, ms: 0 };

  private readonly config: Config;

  constructor(config: Config, log: Logger, opts: ManagerOptions = {}) {
    super();
    this.config = config;
    this.gatewayId = opts.gatewayId ?? config.gateway.id;
    this.now = opts.now ?? Date.now;
    this.log = log.child({ component: 'queue' });
    this.placementKey = `sg:placement:{${this.gatewayId}}`;
    const q = config.queue;
    this.nodes = config.redis.nodes.map(
      (n) => new RedisNode({ url: n.url, standby: n.standby, timeoutMs: q.timeout, heartbeatMs: q.heartbeat.every, missed: q.heartbeat.missed, log: this.log }),
    );
  }

  private settings() {
    const q = this.config.queue;
    return {
      gatewayId: this.gatewayId,
      writeConcern: q.writeConcern,
      timeoutMs: q.timeout,
      maxLength: q.maxLength,
      historyMaxLength: q.historyMaxLength,
      memoryHighWater: q.memoryHighWater,
      now: this.now,
    };
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  async start(): Promise<void> {
    const results = await Promise.allSettled(this.nodes.map((n) => n.start()));
    const policy = results.find((r) => r.status === 'rejected' && (r.reason as QueueError).code === 'NODE_POLICY');
    if (policy) {
      await Promise.all(this.nodes.map((n) => n.stop()));
      throw (policy as PromiseRejectedResult).reason;
    }
    for (const n of this.nodes) {
      n.on('down', () => this.onNodeDown(n));
      n.on('up', () => this.emit('health'));
      n.on('path', () => this.emit('health'));
    }
    const up = this.nodes.filter((n) => n.up);
    this.log.info({ nodes: this.nodes.map((n) => n.status()) }, 'nodes');
    if (up.length === 0) throw new QueueError('QUEUE_UNAVAILABLE', `no redis node answers (${this.nodes.map((n) => n.id).join(', ')})`);
    await this.recover();
    this.repairTimer = setInterval(() => this.repairAll(), this.config.queue.heartbeat.every);
    this.repairTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.repairTimer);
    for (const q of this.queues.values()) while (q.repairing) await sleep(20);
    await Promise.all(this.nodes.map((n) => n.stop()));
  }

  private onNodeDown(node: RedisNode): void {
    for (const q of this.queues.values()) {
      for (const r of q.replicas) if (r.node === node) q.markNG(r, 'node isolated');
    }
    this.emit('health');
  }

  // ---- placement ----------------------------------------------------------------------------

  private rank(queueName: string, candidates: RedisNode[]): RedisNode[] {
    const score = (n: RedisNode) => createHash('sha1').update(`${n.id}|${queueName}`).digest().readUInt32BE(0);
    return [...candidates].sort((a, b) => score(b) - score(a));
  }

  private async recordPlacement(q: Queue, epoch: number): Promise<void> {
    const rec: PlacementRecord = { nodes: q.replicas.map((r) => r.node.id), epoch };
    q.placementEpoch = epoch;
    await Promise.allSettled(this.nodes.filter((n) => n.up).map((n) => n.client.hset(this.placementKey, q.domain, JSON.stringify(rec))));
    this.log.info({ table: q.table() }, 'placement');
  }

  private newQueue(domain: string, replicas: Replica[]): Queue {
    const q = new Queue(domain, replicas, this.settings(), this.log);
    q.on('event', (ev: LifecycleEvent) => this.emit('event', ev));
    q.on('ready', () => this.emit('ready', q.domain));
    q.on('table', () => this.emit('health'));
    return q;
  }

  /** The queue for a destination domain, placed on a pair of healthy nodes when new. */
  queueFor(domain: string): Promise<Queue> {
    const d = domain.toLowerCase();
    const existing = this.queues.get(d);
    if (existing) return Promise.resolve(existing);
    let p = this.creating.get(d);
    if (!p) {
      p = (async () => {
        const pair = this.rank(`${this.gatewayId}:${d}`, this.nodes.filter((n) => n.up)).slice(0, 2);
        if (pair.length === 0 || (pair.length < 2 && this.config.queue.writeConcern === 'all')) {
          throw new QueueError('QUEUE_UNAVAILABLE', `not enough redis nodes up to place queue ${d}`);
        }
        const q = this.newQueue(d, pair.map((node) => ({ node, sync: 'Sync' as const, txn: 0, outSince: 0 })));
        await this.recordPlacement(q, 1);
        this.queues.set(d, q);
        return q;
      })();
      this.creating.set(d, p);
      p.then(() => this.creating.delete(d), () => this.creating.delete(d));
    }
    return p;
  }
  private readonly creating = new Map<string, Promise<Queue>>();

  // ---- recovery -----------------------------------------------------------------------------

  /** Finds this gateway's queues on the nodes and rebuilds their projections from an in-sync replica. */
  private async recover(): Promise<void> {
    const t0 = Date.now();
    const records = new Map<string, PlacementRecord>();
    for (const n of this.nodes.filter((x) => x.up)) {
      const all = await n.client.hgetall(this.placementKey);
      for (const [domain, json] of Object.entries(all)) {
        const rec = JSON.parse(json) as PlacementRecord;
        const cur = records.get(domain);
        if (!cur || rec.epoch > cur.epoch) records.set(domain, rec);
      }
    }
    let messages = 0;
    for (const [domain, rec] of records) {
      const replicas: Replica[] = rec.nodes.map((id) => {
        const node = this.nodes.find((n) => n.id === id);
        if (!node) throw new QueueError('BAD_INPUT', `queue ${domain} is placed on ${id}, which is not in redis.nodes`);
        return { node, sync: 'NG' as const, txn: -1, outSince: this.now() };
      });
      const q = this.newQueue(domain, replicas);
      this.queues.set(domain, q);
      q.placementEpoch = rec.epoch;
      messages += await this.loadQueue(q);
    }
    this.lastRecovery = { queues: records.size, messages, ms: Date.now() - t0 };
    if (records.size) this.log.info(this.lastRecovery, 'recovered');
  }

  /**
   * Reads every replica's transaction number, takes the highest as the source (the others are NG
   * and get resynced), and rebuilds the projection from the source's live stream and state hash in
   * blocks. In-flight messages go back to ready.
   */
  async loadQueue(q: Queue): Promise<number> {
    for (const r of q.replicas) {
      if (!r.node.up) continue;
      try {
        r.txn = Number((await r.node.client.hget(q.keys[2], 'txn')) ?? 0);
      } catch {
        r.txn = -1;
      }
    }
    const best = Math.max(...q.replicas.map((r) => r.txn));
    if (best < 0) return 0;
    for (const r of q.replicas) {
      if (r.txn === best && r.node.up) r.sync = 'Sync';
      else q.markNG(r, r.node.up ? `behind: transaction ${r.txn}, ${best} on the other` : 'node down at start');
    }
    q.replicas.sort((a, b) => (a.sync === 'Sync' ? 0 : 1) - (b.sync === 'Sync' ? 0 : 1));
    const src = q.replicas[0]!.node.client;
    q.txn = best;
    q.resetProjection();
    const block = this.config.queue.blockSize;
    const inflight: string[] = [];
    let cursor = '-';
    let count = 0;
    let last: string | undefined;
    for (;;) {
      const entries = (await src.xrange(q.keys[0], cursor, '+', 'COUNT', block)) as [string, string[]][];
      if (!entries.length) break;
      const ids = entries.map((e) => e[1][1]!); // field 'm' is written first
      const states = await src.hmget(q.keys[3], ...ids);
      entries.forEach(([entryId], i) => {
        const s = states[i];
        if (!s) return;
        const st = JSON.parse(s) as { e: string; s: MsgState; a: number; n: number; b: number };
        const dash = entryId.indexOf('-');
        const m: MemMsg = { id: ids[i]!, entryId, ms: Number(entryId.slice(0, dash)), seq: Number(entryId.slice(dash + 1)), state: st.s, attempts: st.a, nextAt: st.n, bytes: st.b, gen: 0 };
        q.track(m);
        if (st.s === 'f') inflight.push(m.id);
        count++;
      });
      last = entries[entries.length - 1]![0];
      cursor = `(${last}`;
      if (entries.length < block) break;
    }
    q.entryIds = IdGen.from(last ?? (await src.xinfo('STREAM', q.keys[0]).then(lastGenerated, () => undefined)));
    const lastHist = (await src.xrevrange(q.keys[1], '+', '-', 'COUNT', 1)) as [string, string[]][];
    q.histIds = IdGen.from(lastHist[0]?.[0]);
    const liveLen = await src.xlen(q.keys[0]);
    if (liveLen !== count) this.log.warn({ queue: q.name, stream: liveLen, state: count }, 'live stream and state disagree');
    for (const id of inflight) {
      await q.requeue(id, { reason: 'gateway restart' }).catch((err: unknown) => this.log.warn({ err, messageId: id }, 'requeue failed'));
    }
    if (q.depth.ready) q.emit('ready');
    return count;
  }

  // ---- repair -------------------------------------------------------------------------------

  private repairAll(): void {
    if (this.stopped) return;
    for (const q of this.queues.values()) {
      if (!q.repairing && q.replicas.some((r) => r.sync !== 'Sync' || !r.node.up)) {
        q.repairing = true;
        void this.repair(q)
          .catch((err: unknown) => this.log.warn({ err, queue: q.name }, 'repair failed'))
          .finally(() => (q.repairing = false));
      }
    }
  }

  /** One repair step for a queue whose pair is not whole. */
  async repair(q: Queue): Promise<CopyStats | undefined> {
    const source = q.replicas.find((r) => r.sync === 'Sync' && r.node.up);
    if (!source) {
      // Nothing in sync: when a replica is back, the one with the highest transaction number wins.
      if (q.replicas.some((r) => r.node.up)) await this.loadQueue(q);
      return undefined;
    }
    for (const r of q.replicas) if (r.sync === 'Sync' && !r.node.up) q.markNG(r, 'node down');
    const bad = q.replicas.find((r) => r !== source && r.sync !== 'Sync');
    if (!bad) return undefined;
    let target = bad;
    let moved = false;
    if (!bad.node.up) {
      if (this.now() - bad.outSince < this.config.queue.rebuildAfter) return undefined;
      const used = new Set(q.replicas.map((r) => r.node));
      const spare = this.rank(q.name, this.nodes.filter((n) => n.up && !used.has(n)))[0];
      if (!spare) return undefined;
      target = { node: spare, sync: 'NG', txn: -1, outSince: bad.outSince };
      moved = true;
      this.log.warn({ queue: q.name, from: bad.node.id, to: spare.id }, 'rebuilding on spare');
    }
    target.sync = 'Rebuilding';
    if (moved) q.replicas[q.replicas.indexOf(bad)] = target;
    this.emit('health');
    try {
      const stats = await copyQueue(q, source, target, this.config.queue.blockSize, this.log);
      target.sync = 'Sync';
      target.txn = q.txn;
      await this.recordPlacement(q, (q.placementEpoch ?? 1) + 1);
      this.log.info({ queue: q.name, node: target.node.id, ...stats }, 'replica in sync');
      this.emit('health');
      this.emit('ready', q.domain);
      return stats;
    } catch (err) {
      target.sync = 'NG';
      if (moved) q.replicas[q.replicas.indexOf(target)] = bad;
      throw err;
    }
  }

  // ---- the interface for the other parts ----------------------------------------------------

  async append(msg: NewMessage): Promise<{ queue: string; entryId: string; duplicate: boolean }> {
    const q = this.queues.get(msg.domain.toLowerCase()) ?? (await this.queueFor(msg.domain));
    const r = await q.append(msg);
    return { queue: q.name, ...r };
  }

  private must(domain: string): Queue {
    const q = this.queues.get(domain.toLowerCase());
    if (!q) throw new QueueError('NOT_FOUND', `no queue for ${domain}`);
    return q;
  }

  take(domain: string, max: number): Promise<QueuedMessage[]> {
    return this.must(domain).take(max);
  }
  settle(domain: string, msgId: string, outcome: 'delivered' | 'bounced' | 'expired' | 'purged' | 'withdrawn', details?: Record<string, unknown>): Promise<void> {
    return this.must(domain).settle(msgId, outcome, details);
  }
  defer(domain: string, msgId: string, nextAt: number, details?: Record<string, unknown>, remaining?: string[]): Promise<number> {
    return this.must(domain).defer(msgId, nextAt, details, remaining);
  }
  hold(domain: string, msgId: string, actor: string, reason: string): Promise<void> {
    return this.must(domain).hold(msgId, actor, reason);
  }
  release(domain: string, msgId: string, actor: string, reason: string): Promise<void> {
    return this.must(domain).release(msgId, actor, reason);
  }
  purge(domain: string, msgId: string, actor: string, reason: string): Promise<void> {
    return this.must(domain).purge(msgId, actor, reason);
  }

  depth(domain: string): Depth {
    return { ...this.must(domain).depth };
  }

  totals(): Depth & { queues: number } {
    const t = { ready: 0, deferred: 0, held: 0, inflight: 0, bytes: 0, oldest: null as number | null, queues: this.queues.size };
    for (const q of this.queues.values()) {
      t.ready += q.depth.ready;
      t.deferred += q.depth.deferred;
      t.held += q.depth.held;
      t.inflight += q.depth.inflight;
      t.bytes += q.depth.bytes;
      if (q.depth.oldest !== null && (t.oldest === null || q.depth.oldest < t.oldest)) t.oldest = q.depth.oldest;
    }
    return t;
  }

  /** The management table of every queue, and the nodes. */
  health() {
    return { nodes: this.nodes.map((n) => n.status()), queues: [...this.queues.values()].map((q) => q.table()) };
  }

  /** True when every queue this gateway has can take appends at the configured write concern. */
  get writable(): boolean {
    const up = this.nodes.filter((n) => n.up).length;
    if (up < (this.config.queue.writeConcern === 'all' ? 2 : 1)) return false;
    for (const q of this.queues.values()) if (!q.appendable) return false;
    return true;
  }

  /** Events of a queue's history after `afterId` (exclusive), oldest first, at most `count`. */
  async historySince(domain: string, afterId: string | undefined, count: number): Promise<HistoryEntry[]> {
    const q = this.must(domain);
    const r = q.replicas.find((x) => x.sync === 'Sync' && x.node.up);
    if (!r) throw new QueueError('QUEUE_UNAVAILABLE', `queue ${q.name} has no replica in sync`);
    const rows = (await r.node.client.xrange(q.keys[1], afterId ? `(${afterId}` : '-', '+', 'COUNT', count)) as [string, string[]][];
    return rows.map(([histId, f]) => {
      const get = (k: string) => f[f.indexOf(k) + 1]!;
      return { histId, kind: get('t'), messageId: get('m'), txn: Number(get('x')), at: Number(get('at')), details: JSON.parse(get('d')) as Record<string, unknown> };
    });
  }

  /** A message's history, newest last, from an in-sync replica. */
  async history(domain: string, msgId?: string, count = 1000): Promise<{ id: string; kind: string; messageId: string; txn: number; at: number; details: unknown }[]> {
    const q = this.must(domain);
    const r = q.replicas.find((x) => x.sync === 'Sync' && x.node.up);
    if (!r) throw new QueueError('QUEUE_UNAVAILABLE', `queue ${q.name} has no replica in sync`);
    const rows = (await r.node.client.xrevrange(q.keys[1], '+', '-', 'COUNT', msgId ? this.config.queue.historyMaxLength : count)) as [string, string[]][];
    const out = [];
    for (const [id, f] of rows.reverse()) {
      const get = (k: string) => f[f.indexOf(k) + 1]!;
      if (msgId && get('m') !== msgId) continue;
      out.push({ id: `${this.gatewayId}/${q.domain}/${id}`, kind: get('t'), messageId: get('m'), txn: Number(get('x')), at: Number(get('at')), details: JSON.parse(get('d')) as unknown });
    }
    return out;
  }
}

export interface HistoryEntry {
  histId: string;
  kind: string;
  messageId: string;
  txn: number;
  at: number;
  details: Record<string, unknown>;
}

function lastGenerated(info: unknown): string | undefined {
  const a = info as unknown[];
  const i = a.indexOf('last-generated-id');
  return i >= 0 ? String(a[i + 1]) : undefined;
}
