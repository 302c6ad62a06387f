// The queue layer's front: the node pool, this process's membership and ownership epoch
// (membership.ts), placement of each destination queue on an ordered pair of nodes (rendezvous
// hashing, recorded on the nodes so a restart finds it), recovery at start from a replica proven
// current (proof.ts), and repair: a replica out of sync is wiped and copied again whole; a replica
// on a dead node is rebuilt on the spare after a grace period. Other parts use only this class
// (view(), views() and the message operations), never the queue map.
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { type LifecycleEvent, type NewMessage, type QueuedMessage } from '../message/types.ts';
import { copyQueue, type CopyStats } from './copy.ts';
import { withDeadline } from './deadline.ts';
import { QueueError } from './errors.ts';
import { MAIL_OVERHEAD, RedisNode } from './node.ts';
import { listMembers, Membership, type MemberRecord } from './membership.ts';
import { provenSource, type ReplicaView } from './proof.ts';
import { Queue, type Depth, type MemMsg, type QueueView, type Replica } from './queue.ts';
import type { Owner } from './replicas.ts';
import { runScript } from './scripts.ts';
import { decodeHistory, decodeMeta, decodeState, LIVE_MSG_ID_INDEX, META_FIELDS, type HistoryEntry, type MetaRecord, type StateRecord } from './records.ts';
import { eventId, parseEntryId } from '../message/ids.ts';

export type { HistoryEntry } from './records.ts';

/** A message's history lookup reads at most this many events, in blocks of HISTORY_BLOCK. */
const HISTORY_SCAN_LIMIT = 20_000;
const HISTORY_BLOCK = 1000;
/** A forced recovery moves the transaction number to the next multiple of this. */
const FORCED_TXN_STEP = 1e12;

export interface ManagerOptions {
  gatewayId?: string;
  now?: () => number;
  /**
   * The history is archived (events/archive.ts) before it is trimmed: the scripts do not cap it at
   * queue.historyMaxLength; the history budget trims it there, below what the archive and the
   * events publisher confirmed. Without it the scripts cap each stream exactly.
   */
  archived?: boolean;
}

interface PlacementRecord {
  nodes: string[];
  epoch: number;
}

export class QueueManager extends EventEmitter {
  readonly nodes: RedisNode[];
  /** The queues and their internals: for the queue layer and its tests. Other parts use view(), views() and the methods below. */
  readonly queues = new Map<string, Queue>();
  readonly gatewayId: string;
  readonly now: () => number;
  private readonly placementKey: string;
  private repairTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly log: Logger;
  /** Figures of the last recovery, for logs and benchmarks. */
  lastRecovery = { queues: 0, messages: 0, ms: 0 };
  /** This process's ownership epoch and whether it was fenced (see membership.ts). */
  readonly owner: Owner = { epoch: 0, fenced: undefined };
  private membership: Membership | undefined;
  private fenceReported = false;

  private readonly config: Config;
  /** See ManagerOptions.archived. */
  readonly archived: boolean;

  constructor(config: Config, log: Logger, opts: ManagerOptions = {}) {
    super();
    this.config = config;
    this.gatewayId = opts.gatewayId ?? config.gateway.id;
    this.now = opts.now ?? Date.now;
    this.archived = !!opts.archived;
    this.log = log.child({ component: 'queue' });
    this.placementKey = `sg:placement:{${this.gatewayId}}`;
    const q = config.queue;
    this.nodes = config.redis.nodes.map(
      (n) => new RedisNode({ url: n.url, standby: n.standby, name: n.name, timeoutMs: q.timeout, heartbeatMs: q.heartbeat.every, missed: q.heartbeat.missed, log: this.log }),
    );
  }

  private settings() {
    const q = this.config.queue;
    return {
      gatewayId: this.gatewayId,
      writeConcern: q.writeConcern,
      timeoutMs: q.timeout,
      maxLength: q.maxLength,
      historyMaxLength: this.archived ? 0 : q.historyMaxLength,
      mailBudget: q.mailBudget,
      now: this.now,
      owner: this.owner,
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
    try {
      this.membership = new Membership(this.nodes, this.gatewayId, { leaseMs: this.config.gateway.lease, timeoutMs: this.config.queue.timeout, load: () => this.load() }, this.log);
      await this.membership.join();
      this.owner.epoch = this.membership.epoch;
      this.membership.on('lost', (reason: string) => this.fence(reason));
      await this.recover();
      await this.membership.register();
    } catch (err) {
      await this.membership?.leave();
      await Promise.all(this.nodes.map((n) => n.stop()));
      throw err;
    }
    this.tallyMemory();
    this.repairTimer = setInterval(() => this.repairAll(), this.config.queue.heartbeat.every);
    this.repairTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.repairTimer);
    for (const q of this.queues.values()) {
      while (q.repairing) await sleep(20);
      q.stop();
    }
    if (!this.owner.fenced) await this.membership?.leave();
    await Promise.all(this.nodes.map((n) => n.stop()));
  }

  /** A newer owner has this process's queues: it writes nothing more ('fenced' tells the gateway to stop). */
  private fence(reason: string): void {
    this.owner.fenced ??= reason;
    if (this.fenceReported) return;
    this.fenceReported = true;
    clearInterval(this.repairTimer);
    this.log.error({ gateway: this.gatewayId, reason }, 'fenced: this process no longer owns its queues');
    this.emit('fenced', this.owner.fenced);
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
    q.on('settled', (outcome: string, seconds: number) => this.emit('settled', q.domain, outcome, seconds));
    q.on('table', () => this.emit('health'));
    q.on('fenced', (reason: string) => this.fence(reason));
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

  /** Finds this gateway's queues on the nodes and rebuilds their projections from a replica proven current. */
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
        const node = this.nodes.find((n) => n.is(id));
        if (!node) throw new QueueError('BAD_INPUT', `queue ${domain} is placed on ${id}, which is not in redis.nodes`);
        return { node, sync: 'NG' as const, txn: -1, outSince: this.now() };
      });
      const q = this.newQueue(domain, replicas);
      this.queues.set(domain, q);
      q.placementEpoch = rec.epoch;
      await this.claim(q);
      messages += await this.loadQueue(q, false);
    }
    this.lastRecovery = { queues: records.size, messages, ms: Date.now() - t0 };
    if (records.size) this.log.info(this.lastRecovery, 'recovered');
  }

  /** Puts this process's epoch on every replica that answers: an older owner's writes are refused from now on. */
  private async claim(q: Queue): Promise<void> {
    await Promise.all(
      q.replicas.map(async (r) => {
        if (!r.node.up) return;
        const res = (await withDeadline(runScript<[number, number]>(r.node.client, 'claimQueue', [...q.keys, this.owner.epoch]), this.config.queue.timeout, `claim of ${q.name}`).catch(() => undefined));
        if (res && Number(res[0]) === -6) throw new QueueError('MEMBER_CONFLICT', `queue ${q.name} is held by a newer owner (epoch ${res[1]}, this process ${this.owner.epoch})`);
      }),
    );
  }

  /** What each replica of a queue (and each node its records name) says about it. */
  private async replicaViews(q: Queue): Promise<ReplicaView[]> {
    const nodes = new Set(q.replicas.map((r) => r.node));
    const read = async (node: RedisNode): Promise<ReplicaView> => {
      if (!node.up) return { node, reachable: false, meta: undefined };
      try {
        const meta = decodeMeta(await withDeadline(node.client.hmget(q.keys[2], ...META_FIELDS), this.config.queue.timeout, `meta of ${q.name}`));
        return { node, reachable: true, meta };
      } catch {
        return { node, reachable: false, meta: undefined };
      }
    };
    const views = await Promise.all([...nodes].map(read));
    // a node named in a write set that is no longer in the placement must be heard from too
    const named = new Set(views.flatMap((v) => v.meta?.members ?? []));
    for (const id of named) {
      const node = this.nodes.find((n) => n.is(id));
      if (node && !nodes.has(node)) views.push(await read(node));
    }
    return views;
  }

  /**
   * Reloads a queue's projection from the replica proven current (provenSource); the others are
   * NG and get copied again. When none can be proven, the queue stays closed and says why. In
   * flight messages go back to ready, except, while the gateway runs (`running`), those this
   * process holds in flight.
   */
  async loadQueue(q: Queue, running = true): Promise<number> {
    const views = await this.replicaViews(q);
    const verdict = provenSource(views, q.replicas.map((r) => r.node));
    if (verdict.reason) {
      q.set.close(verdict.reason);
      return 0;
    }
    const best = verdict.source?.meta?.txn ?? 0;
    for (const r of q.replicas) {
      const v = views.find((x) => x.node === r.node)!;
      if (verdict.current.includes(r.node)) q.set.markSync(r, best);
      else q.markNG(r, !v.reachable ? 'unreachable at load' : v.meta ? `behind: transaction ${v.meta.txn}, ${best} on the source` : 'empty');
    }
    q.replicas.sort((a, b) => (a.sync === 'Sync' ? 0 : 1) - (b.sync === 'Sync' ? 0 : 1));
    if (!verdict.source) {
      // every replica answers and none ever held the queue: it starts empty
      q.beginReload(0, undefined, undefined);
      await q.endReload([], '');
      return 0;
    }
    return this.loadFrom(q, verdict.source.node, verdict.source.meta!, running);
  }

  private async loadFrom(q: Queue, node: RedisNode, meta: MetaRecord, running: boolean, held = false): Promise<number> {
    const src = node.client;
    const [live, hist, metaKey, state] = q.keys;
    if (await src.hget(metaKey, 'rebuilding')) this.log.error({ queue: q.name }, `a state rebuild of the queue did not finish: its messages without a state record are not dispatched until \`streamgate queue rebuild-state ${q.domain} --reason …\` runs again`);
    const lastGen = await src.xinfo('STREAM', live).then(lastGenerated, () => undefined);
    const lastHist = ((await src.xrevrange(hist, '+', '-', 'COUNT', 1)) as [string, string[]][])[0]?.[0];
    const firstHist = ((await src.xrange(hist, '-', '+', 'COUNT', 1)) as [string, string[]][])[0]?.[0];
    q.histLen = await src.xlen(hist);
    q.histFirstMs = firstHist ? parseEntryId(firstHist)[0] : 0;
    const owned = q.beginReload(meta.txn, maxId(meta.lastEntry, lastGen), maxId(meta.lastHist, lastHist));
    const block = this.config.queue.blockSize;
    const orphans: string[] = [];
    let cursor = '-';
    let count = 0;
    for (;;) {
      const entries = (await src.xrange(live, cursor, '+', 'COUNT', block)) as [string, string[]][];
      if (!entries.length) break;
      const ids = entries.map((e) => e[1][LIVE_MSG_ID_INDEX]!);
      const states = await src.hmget(state, ...ids);
      entries.forEach(([entryId], i) => {
        const s = states[i];
        if (!s) return;
        const st = decodeState(s);
        const [ms, seq] = parseEntryId(entryId);
        const m: MemMsg = { id: ids[i]!, entryId, ms, seq, state: st.state, attempts: st.attempts, nextAt: st.nextAt, bytes: st.bytes, gen: 0 };
        q.track(m);
        if (st.state === 'inflight' && !(running && owned.has(m.id))) orphans.push(m.id);
        count++;
      });
      cursor = `(${entries[entries.length - 1]![0]}`;
      if (entries.length < block) break;
    }
    const liveLen = await src.xlen(live);
    if (liveLen !== count) this.log.warn({ queue: q.name, stream: liveLen, state: count }, 'live stream and state disagree');
    await q.endReload(orphans, running ? 'in flight without an owner after a reload' : 'gateway restart', held);
    return count;
  }

  /**
   * Runs `fn` with the queue's writes held: new writes wait, those under way finish first, and
   * only `fn`'s own (Queue.writeState) go through. Then, whether it succeeded or not, the
   * projection is loaded again from a replica in sync (the messages this process holds in flight
   * stay in flight): after a state rebuild cut off half-way, only the messages with a state record
   * are dispatched until the next rebuild. Repairs and copies of the queue wait meanwhile, and it
   * waits for theirs.
   */
  async withWritesHeld<T>(domain: string, fn: (q: Queue, reader: RedisNode) => Promise<T>): Promise<T> {
    const q = this.must(domain);
    while (q.repairing) await sleep(20);
    q.repairing = true;
    q.set.raiseWriteBarrier();
    const reload = async () => {
      const node = this.readerNode(domain);
      const meta = decodeMeta(await node.client.hmget(q.keys[2], ...META_FIELDS));
      if (meta) await this.loadFrom(q, node, meta, true, true);
    };
    try {
      await q.set.drain();
      let out: T;
      try {
        out = await fn(q, this.readerNode(domain));
      } catch (err) {
        await reload().catch((e: unknown) => this.log.error({ err: e, queue: q.name }, 'queue not reloaded after a failed state rebuild'));
        throw err;
      }
      await reload();
      return out;
    } finally {
      q.set.lowerWriteBarrier();
      q.repairing = false;
    }
  }

  /** A block of a queue's live stream without the bodies (lua/liveIndex-1.lua): entry id, message id, body size; after `afterId`. */
  async liveIndex(node: RedisNode, domain: string, afterId: string | undefined, count: number): Promise<[entryId: string, msgId: string, bytes: number][]> {
    const flat = await runScript<(string | number)[]>(node.client, 'liveIndex', [this.must(domain).keys[0], afterId ? `(${afterId}` : '-', count]);
    const out: [string, string, number][] = [];
    for (let i = 0; i + 2 < flat.length; i += 3) out.push([String(flat[i]), String(flat[i + 1]), Number(flat[i + 2])]);
    return out;
  }

  /**
   * An operator's way out of a closed queue: reload it from `nodeId` whatever its records say,
   * as the queue's truth from now on (its transaction number jumps past anything the other
   * replica can hold, so a later copy goes from it and never the other way), audited in the
   * history as a `recovered` event with actor and reason.
   */
  async forceRecover(domain: string, nodeId: string, actor: string, reason: string): Promise<{ messages: number; txn: number }> {
    const q = this.must(domain);
    const r = q.replicas.find((x) => x.node.is(nodeId));
    if (!r) throw new QueueError('BAD_INPUT', `queue ${q.domain} has no replica on ${nodeId} (replicas: ${q.replicas.map((x) => x.node.id).join(', ')})`);
    if (!r.node.up) throw new QueueError('QUEUE_UNAVAILABLE', `node ${r.node.id} does not answer`);
    while (q.repairing) await sleep(20);
    q.repairing = true;
    try {
      const meta = decodeMeta(await r.node.client.hmget(q.keys[2], ...META_FIELDS));
      const txn = (Math.floor((meta?.txn ?? 0) / FORCED_TXN_STEP) + 1) * FORCED_TXN_STEP;
      await r.node.client.hset(q.keys[2], 'txn', txn);
      for (const x of q.replicas) if (x !== r) q.markNG(x, `operator recovered the queue from ${r.node.id}`);
      q.set.markSync(r, txn);
      q.replicas.sort((a, b) => (a === r ? -1 : b === r ? 1 : 0));
      const messages = await this.loadFrom(q, r.node, { txn, members: [r.node.id], lastEntry: meta?.lastEntry, lastHist: meta?.lastHist }, true);
      await q.mark('recovered', { actor, reason, from: r.node.id, previousTxn: meta?.txn ?? null, messages });
      this.log.warn({ queue: q.name, node: r.node.id, actor, reason, messages }, 'queue recovered by an operator');
      this.emit('health');
      return { messages, txn: q.txn };
    } finally {
      q.repairing = false;
    }
  }

  // ---- repair -------------------------------------------------------------------------------

  /** Estimated bytes of one history event: sampled with MEMORY USAGE (see sampleHistory). */
  historyEventBytes = 250;

  /**
   * The budgets' tally per node, from the queues' counters (no Redis call): mail = bytes +
   * MAIL_OVERHEAD per live message of every queue with a replica on the node; history = events ×
   * historyEventBytes. Runs every heartbeat; appends in between add to the node's pendingBytes.
   */
  tallyMemory(): void {
    const mail = new Map<RedisNode, number>();
    const hist = new Map<RedisNode, number>();
    for (const q of this.queues.values()) {
      const d = q.depth;
      const m = d.bytes + (d.ready + d.deferred + d.held + d.inflight) * MAIL_OVERHEAD;
      const h = q.histLen * this.historyEventBytes;
      for (const r of q.replicas) {
        mail.set(r.node, (mail.get(r.node) ?? 0) + m);
        hist.set(r.node, (hist.get(r.node) ?? 0) + h);
      }
    }
    for (const n of this.nodes) {
      n.setMail(mail.get(n) ?? 0);
      n.historyBytes = hist.get(n) ?? 0;
    }
  }

  /**
   * Samples the memory of a few history streams (MEMORY USAGE … SAMPLES 8, a bounded cost) to
   * keep historyEventBytes near the truth. Periodic, never on the write path.
   */
  async sampleHistory(samples = 5): Promise<void> {
    const qs = [...this.queues.values()].filter((q) => q.histLen >= 100);
    let bytes = 0;
    let events = 0;
    for (let i = 0; i < Math.min(samples, qs.length); i++) {
      const q = qs[Math.floor(Math.random() * qs.length)]!;
      const r = q.replicas.find((x) => x.sync === 'Sync' && x.node.up);
      if (!r) continue;
      const [used, len] = await Promise.all([r.node.reads.call('MEMORY', 'USAGE', q.keys[1], 'SAMPLES', '8'), r.node.reads.xlen(q.keys[1])]);
      if (Number(used) > 0 && len > 0) {
        bytes += Number(used);
        events += len;
      }
    }
    if (events) this.historyEventBytes = Math.round(0.5 * this.historyEventBytes + 0.5 * (bytes / events));
  }

  private repairAll(): void {
    if (this.stopped || this.owner.fenced) return;
    this.tallyMemory();
    for (const q of this.queues.values()) {
      if (!q.repairing && (q.set.stale || q.replicas.some((r) => r.sync !== 'Sync' || !r.node.up))) {
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
    if (!source || q.set.stale) {
      // Nothing in sync: once a replica answers, reload from the one proven current, if any.
      if (q.replicas.some((r) => r.node.up)) await this.loadQueue(q, true);
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
      // the target joins the write set inside the copy's last pass, before writes resume
      const stats = await copyQueue(q, source, target, this.config.queue.blockSize, this.log);
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

  async append(msg: NewMessage, opts: { staged?: boolean } = {}): Promise<{ queue: string; entryId: string; duplicate: boolean }> {
    const q = this.queues.get(msg.domain.toLowerCase()) ?? (await this.queueFor(msg.domain));
    const r = await q.append(msg, opts);
    return { queue: q.name, ...r };
  }

  /**
   * Stores the copies of one submission (one per destination queue), all or none: the copies are
   * staged (never dispatched) until every one is stored; if any append fails, the stored ones
   * are withdrawn (retried until written) and the first failure is thrown, so that the sender's
   * retry cannot lead to a second delivery. SMTP and producer jobs both store through here.
   */
  async store(copies: NewMessage[], why: Record<string, unknown>): Promise<{ queue: string; entryId: string; duplicate: boolean }[]> {
    const staged = copies.length > 1;
    const results = await Promise.allSettled(copies.map((c) => this.append(c, { staged })));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (!failed) {
      if (staged) for (const c of copies) this.queues.get(c.domain.toLowerCase())?.commit(c.id);
      return results.map((r) => (r as PromiseFulfilledResult<{ queue: string; entryId: string; duplicate: boolean }>).value);
    }
    const details = { ...why, reason: `not stored on every destination queue: ${(failed.reason as Error)?.message ?? String(failed.reason)}` };
    results.forEach((r, i) => {
      if (r.status === 'fulfilled' && !r.value.duplicate) this.withdraw(copies[i]!.domain, copies[i]!.id, details);
    });
    throw failed.reason;
  }

  /** Withdraws a stored copy whose sender was told to retry; see Queue.withdraw. */
  withdraw(domain: string, msgId: string, details: Record<string, unknown>): void {
    this.queues.get(domain.toLowerCase())?.withdraw(msgId, details);
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
  // Operators' actions: each one an event with actor, reason (and `extra`, such as the token's name) and the state before and after.
  hold(domain: string, msgId: string, actor: string, reason: string, extra?: Record<string, unknown>): Promise<void> {
    return this.must(domain).hold(msgId, actor, reason, extra);
  }
  release(domain: string, msgId: string, actor: string, reason: string, extra?: Record<string, unknown>): Promise<void> {
    return this.must(domain).release(msgId, actor, reason, extra);
  }
  purge(domain: string, msgId: string, actor: string, reason: string, extra?: Record<string, unknown>): Promise<void> {
    return this.must(domain).purge(msgId, actor, reason, extra);
  }
  flush(domain: string, actor: string, reason: string, extra?: Record<string, unknown>): Promise<number> {
    return this.must(domain).flushBy(actor, reason, extra);
  }
  /** A queue-level event (suspended, resumed, ...), or one about `msgId` that changes nothing (unpurged), in the queue's history. */
  mark(domain: string, kind: LifecycleEvent['kind'], details: Record<string, unknown>, msgId = ''): Promise<void> {
    return this.must(domain).mark(kind, details, msgId);
  }

  /** What the relay, ops and events see of one queue; undefined when there is none. */
  view(domain: string): QueueView | undefined {
    return this.queues.get(domain.toLowerCase());
  }

  /** Every queue, as the relay, ops and events see it. */
  views(): IterableIterator<QueueView> {
    return this.queues.values();
  }

  /** The destination domains that have a queue. */
  domains(): string[] {
    return [...this.queues.keys()];
  }

  requeue(domain: string, msgId: string, details?: Record<string, unknown>): Promise<void> {
    return this.must(domain).requeue(msgId, details);
  }

  /** The gateways of the pool: their leases, queues and messages (this one included). */
  members(): Promise<MemberRecord[]> {
    return listMembers(this.nodes, this.config.queue.timeout);
  }

  private load(): { queues: number; messages: number } {
    const t = this.totals();
    return { queues: t.queues, messages: t.ready + t.deferred + t.held + t.inflight };
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

  /** Every live message's state record of a queue, from an in-sync replica's state hash (HSCAN, in blocks). */
  async *liveStates(domain: string): AsyncGenerator<[string, StateRecord]> {
    const c = this.readerNode(domain).reads;
    const key = this.must(domain).keys[3];
    let cursor = '0';
    do {
      const [next, flat] = await c.hscan(key, cursor, 'COUNT', 1000);
      for (let i = 0; i + 1 < flat.length; i += 2) yield [flat[i]!, decodeState(flat[i + 1]!)];
      cursor = next;
    } while (cursor !== '0');
  }

  /** The counters the queue scripts keep (meta hash): live messages per state. */
  async counters(domain: string): Promise<Record<string, number>> {
    const v = await this.readerNode(domain).reads.hmget(this.must(domain).keys[2], 'ready', 'deferred', 'held', 'inflight');
    return { ready: Number(v[0] ?? 0), deferred: Number(v[1] ?? 0), held: Number(v[2] ?? 0), inflight: Number(v[3] ?? 0) };
  }

  /** A history entry of `domain`'s queue as the lifecycle event it is. */
  eventOf(domain: string, h: HistoryEntry): LifecycleEvent {
    const q = this.must(domain);
    return { id: eventId(this.gatewayId, q.domain, h.histId), queue: q.name, domain: q.domain, kind: h.kind as LifecycleEvent['kind'], messageId: h.messageId, txn: h.txn, at: h.at, details: h.details };
  }

  /** Events of a queue's history after `afterId` (exclusive), oldest first, at most `count`. */
  async historySince(domain: string, afterId: string | undefined, count: number): Promise<HistoryEntry[]> {
    // on the read connection: a block of events never waits behind the queue's writes, nor they behind it
    const rows = (await this.readerNode(domain).reads.xrange(this.must(domain).keys[1], afterId ? `(${afterId}` : '-', '+', 'COUNT', count)) as [string, string[]][];
    return rows.map(decodeHistory);
  }

  /**
   * A message's history (or the queue's latest `count` events), oldest first, from an in-sync
   * replica over its read connection. A message's events are looked for from the newest back,
   * in blocks, until its `accepted` event, and never past HISTORY_SCAN_LIMIT events.
   */
  async history(domain: string, msgId?: string, count = 1000): Promise<{ id: string; kind: string; messageId: string; txn: number; at: number; details: unknown }[]> {
    const q = this.must(domain);
    const c = this.readerNode(domain).reads;
    const found: HistoryEntry[] = [];
    let end = '+';
    let scanned = 0;
    const limit = msgId ? Math.min(this.config.queue.historyMaxLength, HISTORY_SCAN_LIMIT) : count;
    while (scanned < limit) {
      const rows = (await c.xrevrange(q.keys[1], end, '-', 'COUNT', Math.min(HISTORY_BLOCK, limit - scanned))) as [string, string[]][];
      scanned += rows.length;
      const events = rows.map(decodeHistory);
      found.push(...(msgId ? events.filter((h) => h.messageId === msgId) : events));
      if (rows.length < HISTORY_BLOCK || (msgId && found.some((h) => h.kind === 'accepted'))) break;
      end = `(${rows[rows.length - 1]![0]}`;
    }
    return found.reverse().map((h) => ({ id: eventId(this.gatewayId, q.domain, h.histId), kind: h.kind, messageId: h.messageId, txn: h.txn, at: h.at, details: h.details }));
  }

  /** The node of an in-sync replica, for reads. */
  private readerNode(domain: string): RedisNode {
    const q = this.must(domain);
    const r = q.replicas.find((x) => x.sync === 'Sync' && x.node.up);
    if (!r) throw new QueueError('QUEUE_UNAVAILABLE', `queue ${q.name} has no replica in sync`);
    return r.node;
  }
}

function lastGenerated(info: unknown): string | undefined {
  const a = info as unknown[];
  const i = a.indexOf('last-generated-id');
  return i >= 0 ? String(a[i + 1]) : undefined;
}

function maxId(a: string | undefined, b: string | undefined): string | undefined {
  if (!a || !b) return a ?? b;
  const [am, as] = parseEntryId(a);
  const [bm, bs] = parseEntryId(b);
  return am > bm || (am === bm && as > bs) ? a : b;
}
