// The queue layer's front: the node pool, this process's membership and ownership epoch
// (membership.ts), placement of each destination queue on an ordered pair of nodes (rendezvous
// hashing, recorded on the nodes so a restart finds it: placement.ts), recovery at start from a
// replica proven current (proof.ts), adoption of the queues of a member whose lease lapsed
// (takeover.ts), and repair: a replica out of sync is wiped and copied again whole; a replica
// on a dead node is rebuilt on the spare after a grace period. Other parts use only this class
// (view(), views() and the message operations), never the queue map.
//
// A queue is known here by its ref: the destination domain for the queue this gateway writes new
// mail to, the full queue name for one it adopted (which takes no new mail and is delivered from
// until it is empty). Every operation takes a ref or a full queue name.
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { redisNodeId, type Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { type LifecycleEvent, type NewMessage, type QueuedMessage } from '../message/types.ts';
import { copyQueue, type CopyStats } from './copy.ts';
import { withDeadline } from './deadline.ts';
import { QueueError } from './errors.ts';
import { MAIL_OVERHEAD, RedisNode } from './node.ts';
import { listMembers, Membership, type MemberRecord } from './membership.ts';
import { dropPlacement, queueNameOf, readPlacement, splitQueueName, writePlacement, type PlacementRecord } from './placement.ts';
import { claimQueueName, dropQueueName, Takeover, type PoolMember } from './takeover.ts';
import { provenSource, type ReplicaView } from './proof.ts';
import { Queue, type Depth, type MemMsg, type QueueView, type Replica } from './queue.ts';
import type { Owner } from './replicas.ts';
import { runScript } from './scripts.ts';
import { decodeHistory, decodeMeta, decodeState, LIVE_MSG_ID_INDEX, META_FIELDS, type HistoryEntry, type MetaRecord, type StateRecord } from './records.ts';
import { compareIds, eventId, parseEntryId } from '../message/ids.ts';

export type { HistoryEntry } from './records.ts';
/** A history entry as the event log stores it (historyBlock()): `stored` is the JSON array [ms, seq, kind, message id, txn, at, details]. */
export interface StoredHistoryEntry {
  histId: string;
  messageId: string;
  stored: Buffer;
}

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

export class QueueManager extends EventEmitter {
  readonly nodes: RedisNode[];
  /** The queues by ref, and their internals: for the queue layer and its tests. Other parts use view(), views() and the methods below. */
  readonly queues = new Map<string, Queue>();
  /** The same queues by full name. */
  private readonly byName = new Map<string, Queue>();
  /** Destination domains whose queue name `<gateway id>:<domain>` another member adopted: a new queue for one gets a name of its own. */
  private readonly taken = new Set<string>();
  private takeover: Takeover | undefined;
  /** Queues being deleted (by ref): a new queue for the ref waits until the old one is gone. */
  private readonly dropping = new Map<string, Promise<void>>();
  /** Whether something still needs a queue's history (events not yet published or archived): it is not deleted then. */
  private historyHeld: (ref: string, lastHistId: string | undefined) => boolean = () => false;
  private lastIdleSweep = 0;
  /** Nodes being drained (their ids, as the pool records them): no new placement, every queue on them moves away. */
  private readonly draining = new Set<string>();
  /** Queues moving off a drained node now. */
  private moving = 0;
  readonly gatewayId: string;
  readonly now: () => number;
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
    this.on('health', () => (this.queuesWritable = undefined));
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
    const a = this.config.gateway.adoption;
    this.takeover = new Takeover(this, { every: a.every, grace: a.grace, timeoutMs: this.config.queue.timeout, parallel: this.config.queue.recoveryParallel }, this.log);
    this.takeover.start();
  }

  /** True while this process may adopt queues: running, and not fenced. */
  get adopting(): boolean {
    return !this.stopped && !this.owner.fenced;
  }

  /** Looks for members whose lease lapsed now and adopts what falls to this one (also run every gateway.adoption.every). */
  adoptNow(): Promise<number> {
    return this.takeover?.sweep() ?? Promise.resolve(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.repairTimer);
    await this.takeover?.stop();
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
    const rec: PlacementRecord = { nodes: q.replicas.map((r) => r.node.id), epoch, ...(q.origin !== this.gatewayId ? { name: q.name } : {}) };
    q.placementEpoch = epoch;
    await writePlacement(this.nodes, this.gatewayId, q.adopted ? q.name : q.domain, rec);
    this.log.info({ table: q.table() }, 'placement');
  }

  private newQueue(domain: string, replicas: Replica[], from: { origin?: string; adopted?: boolean } = {}): Queue {
    const q = new Queue(domain, replicas, this.settings(), this.log, from);
    q.on('event', (ev: LifecycleEvent) => this.emit('event', ev));
    q.on('ready', () => this.emit('ready', q.ref));
    q.on('settled', (outcome: string, seconds: number) => this.emit('settled', q.domain, outcome, seconds));
    q.on('table', () => this.emit('health'));
    q.on('fenced', (reason: string) => this.fence(reason));
    return q;
  }

  /** Makes a queue known by its ref and name. */
  private register(q: Queue): Queue {
    this.queues.set(q.ref, q);
    this.byName.set(q.name, q);
    this.queuesWritable = undefined;
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
        await this.dropping.get(d); // the idle queue of this domain is being deleted: the new one comes after
        const mine = [...this.queues.values()].filter((q) => !q.adopted).length;
        if (this.queues.size >= this.config.queue.maxQueues) {
          throw new QueueError('TOO_MANY_QUEUES', `this gateway holds ${this.queues.size} queues (${mine} of its own), queue.maxQueues is ${this.config.queue.maxQueues}: no queue for ${d} now`);
        }
        const pair = this.rank(`${this.gatewayId}:${d}`, this.nodes.filter((n) => n.up && !this.isDraining(n))).slice(0, 2);
        if (pair.length === 0 || (pair.length < 2 && this.config.queue.writeConcern === 'all')) {
          throw new QueueError('QUEUE_UNAVAILABLE', `not enough redis nodes up to place queue ${d}`);
        }
        // the name <gateway id>:<domain> went to another member with an earlier process's queue: this one's is named apart
        const origin = this.taken.has(d) ? `${this.gatewayId}~${this.owner.epoch}` : this.gatewayId;
        const q = this.newQueue(d, pair.map((node) => ({ node, sync: 'Sync' as const, txn: 0, outSince: 0 })), { origin });
        await this.recordPlacement(q, 1);
        return this.register(q); // after the placement is recorded: appends wait for it, in order
      })();
      this.creating.set(d, p);
      p.then(() => this.creating.delete(d), () => this.creating.delete(d));
    }
    return p;
  }
  private readonly creating = new Map<string, Promise<Queue>>();

  // ---- recovery -----------------------------------------------------------------------------

  /**
   * Finds this gateway's queues on the nodes and rebuilds their projections from a replica proven
   * current, at most queue.recoveryParallel at once. Each queue's name is claimed first on a
   * majority of the nodes: one another member adopted while this id was gone stays with it (its
   * domain then gets a queue of a new name here when mail comes).
   */
  private async recover(): Promise<void> {
    const t0 = Date.now();
    const records = await readPlacement(this.nodes.filter((n) => n.up), this.gatewayId, this.config.queue.timeout);
    let messages = 0;
    let queues = 0;
    const mine = { id: this.gatewayId, epoch: this.owner.epoch };
    const one = async ([field, rec]: [string, PlacementRecord]) => {
      const name = queueNameOf(this.gatewayId, field, rec);
      const adoptedHere = field.includes(':');
      if (rec.adoptedBy) {
        if (!adoptedHere) this.taken.add(field);
        return;
      }
      const claim = await claimQueueName(this.nodes, name, mine, mine, this.config.queue.timeout);
      if (!claim.ok) {
        if (!adoptedHere) this.taken.add(field);
        this.log.info({ queue: name, holder: claim.holder }, 'queue left to the member that adopted it');
        return;
      }
      const { origin, domain } = splitQueueName(name);
      const q = this.register(this.newQueue(domain, this.replicasOf(name, rec, this.now()), { origin, adopted: adoptedHere }));
      q.placementEpoch = rec.epoch;
      await this.claim(q);
      const loaded = await this.loadQueue(q, false); // not `messages += await …`: the queues load side by side
      messages += loaded;
      queues++;
    };
    const all = [...records];
    const parallel = this.config.queue.recoveryParallel;
    for (let i = 0; i < all.length; i += parallel) {
      const got = await Promise.allSettled(all.slice(i, i + parallel).map(one));
      const failed = got.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    }
    this.lastRecovery = { queues, messages, ms: Date.now() - t0 };
    if (queues) this.log.info(this.lastRecovery, 'recovered');
  }

  private replicasOf(name: string, rec: PlacementRecord, since: number): Replica[] {
    return rec.nodes.map((id) => {
      const node = this.nodes.find((n) => n.is(id));
      if (!node) throw new QueueError('BAD_INPUT', `queue ${name} is placed on ${id}, which is not in redis.nodes`);
      return { node, sync: 'NG' as const, txn: -1, outSince: since };
    });
  }

  /**
   * Adopts one queue of a member whose lease lapsed (takeover.ts): claims its name on a majority of
   * the nodes with an epoch above that member's, records it in this gateway's placement, claims it
   * on its replicas (the old owner's writes are refused from then on), loads it from a replica
   * proven current (in-flight messages go back to ready; FIFO order, attempts, retry times and
   * acceptance times are the replicas'), leaves a tombstone in the old member's placement, and
   * writes an `adopted` event. False when another member holds the name.
   */
  async adopt(from: PoolMember, field: string, rec: PlacementRecord): Promise<boolean> {
    const name = queueNameOf(from.id, field, rec);
    if (this.byName.has(name) || this.adoptingNow.has(name) || !this.adopting) return false;
    this.adoptingNow.add(name);
    try {
      return await this.adoptOne(from, field, rec, name);
    } finally {
      this.adoptingNow.delete(name);
    }
  }
  private readonly adoptingNow = new Set<string>();

  private async adoptOne(from: PoolMember, field: string, rec: PlacementRecord, name: string): Promise<boolean> {
    const t0 = Date.now();
    if (this.owner.epoch <= from.epoch) this.owner.epoch = await this.membership!.redraw();
    const claim = await claimQueueName(this.nodes, name, { id: this.gatewayId, epoch: this.owner.epoch }, from, this.config.queue.timeout);
    if (!claim.ok) return false;
    const { origin, domain } = splitQueueName(name);
    const q = this.register(this.newQueue(domain, this.replicasOf(name, rec, this.now()), { origin, adopted: true }));
    // registered before it is loaded: the heartbeat's repair pass must not load it meanwhile
    q.repairing = true;
    let messages: number;
    try {
      await this.recordPlacement(q, rec.epoch + 1);
      await this.claim(q);
      messages = await this.loadQueue(q, false);
    } catch (err) {
      // the name's claim and this placement record stay: the next sweep (or, should this process
      // die, whoever adopts from it) takes the queue up again
      this.queues.delete(q.ref);
      this.byName.delete(q.name);
      this.emit('health');
      throw err;
    } finally {
      q.repairing = false;
    }
    await writePlacement(this.nodes, from.id, field, { nodes: [], epoch: rec.epoch + 1, name, adoptedBy: this.gatewayId });
    const details = { from: from.id, fromEpoch: from.epoch, by: this.gatewayId, epoch: this.owner.epoch, messages, ms: Date.now() - t0 };
    await q.mark('adopted', details).catch((err: unknown) => this.log.warn({ err, queue: name }, 'adopted event not written'));
    this.log.warn({ queue: name, ...details }, 'queue adopted');
    this.emit('adopted', q.ref, details);
    this.emit('health');
    if (q.readyCount) this.emit('ready', q.ref);
    return true;
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

  /** Tells the manager what still needs a queue's history: a queue is not deleted while `held` says so (the history budget sets it). */
  holdHistory(held: (ref: string, lastHistId: string | undefined) => boolean): void {
    this.historyHeld = held;
  }

  /**
   * Deletes the queues that are empty and had no event for queue.idleDelete, whose replicas are
   * both in sync and whose history nothing still needs (events published and archived): their
   * keys on both replicas, their placement record, their name's owner record and their memory.
   * Looks at most every queue.idleDelete / 4 (and every minute at least). Returns the refs deleted.
   */
  async dropIdle(): Promise<string[]> {
    const now = this.now();
    const idle = this.config.queue.idleDelete;
    const out: string[] = [];
    for (const q of [...this.queues.values()]) {
      if (now - q.lastActivity < idle || !q.empty || !q.whole || q.repairing) continue;
      const last = ((await q.replicas[0]!.node.reads.xrevrange(q.keys[1], '+', '-', 'COUNT', 1)) as [string, string[]][])[0]?.[0];
      if (this.historyHeld(q.ref, last)) continue;
      if (await this.drop(q)) out.push(q.ref);
    }
    return out;
  }

  private async drop(q: Queue): Promise<boolean> {
    if (this.stopped || this.owner.fenced || this.queues.get(q.ref) !== q) return false;
    this.queues.delete(q.ref);
    this.byName.delete(q.name);
    // nothing can reach the queue now (appends go through the map, or wait in queueFor for the deletion); was anything on its way in?
    if (!q.empty) {
      this.register(q);
      return false;
    }
    let done = () => {};
    this.dropping.set(q.ref, new Promise<void>((resolve) => (done = resolve)));
    try {
      q.stop();
      await Promise.all(q.replicas.map((r) => withDeadline(r.node.client.del(...q.keys), this.config.queue.timeout, `delete of ${q.name}`)));
      await dropPlacement(this.nodes, this.gatewayId, q.adopted ? q.name : q.domain);
      await dropQueueName(this.nodes, q.name, this.gatewayId);
      this.log.info({ queue: q.name, idleMs: this.now() - q.lastActivity }, 'queue deleted: empty and idle');
      this.emit('dropped', q.ref);
      this.emit('health');
      return true;
    } catch (err) {
      // a replica did not answer: the queue stays (empty); the next look tries again
      this.register(q);
      this.log.warn({ err, queue: q.name }, 'idle queue not deleted');
      return false;
    } finally {
      this.dropping.delete(q.ref);
      done();
    }
  }

  // ---- draining a node -----------------------------------------------------------------------

  private isDraining(n: RedisNode): boolean {
    return this.draining.has(n.id);
  }

  /**
   * Drains a node of the pool (`streamgate node drain URL`): recorded on every node, so that
   * every member moves its queues off it; it takes no new placement and is no spare. Returns the
   * node's id and how many of this gateway's queues are on it now.
   */
  async drain(node: string): Promise<{ node: string; queues: number }> {
    const byUrl = URL.canParse(node) && /^rediss?:\/\/[^/]/.test(node) ? redisNodeId(node) : undefined;
    const n = this.nodes.find((x) => x.is(node) || (byUrl !== undefined && x.is(byUrl)));
    if (!n) throw new QueueError('BAD_INPUT', `node: expected one of redis.nodes (${this.nodes.map((x) => x.id).join(', ')}), got ${JSON.stringify(node)}`);
    const others = this.nodes.filter((x) => x !== n && x.up && !this.isDraining(x));
    if (others.length < 2) throw new QueueError('QUEUE_UNAVAILABLE', `cannot drain ${n.id}: ${others.length} other node${others.length === 1 ? '' : 's'} up and not drained, a replica pair needs 2`);
    const res = await Promise.allSettled(this.nodes.filter((x) => x.up).map((x) => withDeadline(x.client.sadd('sg:drain', n.id), this.config.queue.timeout, `drain record on ${x.id}`)));
    if (res.filter((r) => r.status === 'fulfilled').length < Math.floor(this.nodes.length / 2) + 1) throw new QueueError('QUEUE_UNAVAILABLE', `the drain of ${n.id} could not be recorded on a majority of the nodes`);
    this.draining.add(n.id);
    this.log.warn({ node: n.id }, 'node drained: its queues move away');
    this.emit('health');
    return { node: n.id, queues: this.onNode(n) };
  }

  /** How many of this gateway's queues have a replica on a node. */
  onNode(n: RedisNode): number {
    let k = 0;
    for (const q of this.queues.values()) if (q.replicas.some((r) => r.node === n)) k++;
    return k;
  }

  /** The drained nodes as the pool records them (any node that answers). */
  private async refreshDraining(): Promise<void> {
    const sets = await Promise.allSettled(this.nodes.filter((n) => n.up).map((n) => withDeadline(n.client.smembers('sg:drain'), this.config.queue.timeout, `drain records on ${n.id}`)));
    for (const r of sets) if (r.status === 'fulfilled') for (const id of r.value) this.draining.add(id);
  }

  /**
   * Moves one queue off a drained node: a third replica on another node is copied in blocks while
   * the pair takes writes (copy.ts), joins the write set, and then, between two writes, the
   * drained replica leaves it and placement switches to the new pair; the drained node's copy is
   * deleted last.
   */
  private async moveOff(q: Queue, leaving: Replica): Promise<void> {
    const source = q.replicas.find((r) => r !== leaving && r.sync === 'Sync' && r.node.up);
    const used = new Set(q.replicas.map((r) => r.node));
    const spare = this.rank(q.name, this.nodes.filter((n) => n.up && !used.has(n) && !this.isDraining(n)))[0];
    if (!source || !spare) return;
    const target: Replica = { node: spare, sync: 'Rebuilding', txn: -1, outSince: this.now() };
    q.replicas.push(target);
    this.emit('health');
    try {
      await copyQueue(q, source, target, this.config.queue.blockSize, this.log);
      q.set.raiseWriteBarrier();
      try {
        await q.set.drain();
        q.replicas.splice(q.replicas.indexOf(leaving), 1);
        const members = q.replicas.map((r) => r.node.id).join(',');
        await Promise.all(q.replicas.map((r) => r.node.client.hset(q.keys[2], 'members', members)));
        await this.recordPlacement(q, (q.placementEpoch ?? 1) + 1);
      } finally {
        q.set.lowerWriteBarrier();
      }
      await leaving.node.client.del(...q.keys).catch((err: unknown) => this.log.warn({ err, queue: q.name, node: leaving.node.id }, 'copy on the drained node not deleted'));
      this.log.info({ queue: q.name, from: leaving.node.id, to: spare.id }, 'queue moved off a drained node');
    } finally {
      const i = q.replicas.indexOf(target);
      if (i >= 0 && target.sync !== 'Sync') q.replicas.splice(i, 1);
      this.emit('health');
    }
  }

  private moveAll(): void {
    const room = this.config.queue.recoveryParallel - this.moving;
    if (!this.draining.size || room <= 0) return;
    let started = 0;
    for (const q of this.queues.values()) {
      if (started >= room) break;
      const leaving = q.replicas.find((r) => this.draining.has(r.node.id));
      if (!leaving || q.repairing || !q.whole) continue;
      q.repairing = true;
      this.moving++;
      started++;
      void this.moveOff(q, leaving)
        .catch((err: unknown) => this.log.warn({ err, queue: q.name }, 'move off a drained node failed'))
        .finally(() => {
          q.repairing = false;
          this.moving--;
        });
    }
  }

  private repairAll(): void {
    if (this.stopped || this.owner.fenced) return;
    void this.refreshDraining()
      .then(() => this.moveAll())
      .catch((err: unknown) => this.log.warn({ err }, 'drained nodes not read'));
    const now = this.now();
    if (now - this.lastIdleSweep >= Math.min(this.config.queue.idleDelete / 4, 60_000)) {
      this.lastIdleSweep = now;
      void this.dropIdle().catch((err: unknown) => this.log.warn({ err }, 'idle queues not deleted'));
    }
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
      const spare = this.rank(q.name, this.nodes.filter((n) => n.up && !used.has(n) && !this.isDraining(n)))[0];
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
    this.find(domain)?.withdraw(msgId, details);
  }

  /** The queue of a ref (a destination domain, or an adopted queue's name) or of a full queue name. */
  private find(ref: string): Queue | undefined {
    return this.queues.get(ref.toLowerCase()) ?? this.byName.get(ref);
  }

  private must(ref: string): Queue {
    const q = this.find(ref);
    if (!q) throw new QueueError('NOT_FOUND', `no queue for ${ref}`);
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

  /** What the relay, ops and events see of one queue (by ref or full name); undefined when there is none. */
  view(ref: string): QueueView | undefined {
    return this.find(ref);
  }

  /** Every queue, as the relay, ops and events see it. */
  views(): IterableIterator<QueueView> {
    return this.queues.values();
  }

  /** The refs of every queue: the destination domain of each own queue, the full name of each adopted one. */
  refs(): string[] {
    return [...this.queues.keys()];
  }

  /** The ref of a queue known by its full name (the name itself when there is no such queue here). */
  refOf(name: string): string {
    return this.byName.get(name)?.ref ?? name;
  }

  /** The full name of a queue known by its ref. */
  nameOf(ref: string): string {
    return this.find(ref)?.name ?? (ref.includes(':') ? ref : `${this.gatewayId}:${ref}`);
  }

  /** The destination domains that have a queue here (own or adopted), each once. */
  domains(): string[] {
    return [...new Set([...this.queues.values()].map((q) => q.domain))];
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
    return { nodes: this.nodes.map((n) => ({ ...n.status(), draining: this.isDraining(n), queues: this.onNode(n) })), queues: [...this.queues.values()].map((q) => q.table()) };
  }

  /**
   * True when every queue this gateway has can take appends at the configured write concern.
   * Asked every second by the door, by /health and by metrics: the queues are looked at again
   * only after something changed (a replica's state, a node, a queue made or deleted: every such
   * change emits 'health'), not on every call.
   */
  get writable(): boolean {
    const up = this.nodes.filter((n) => n.up).length;
    if (up < (this.config.queue.writeConcern === 'all' ? 2 : 1)) return false;
    if (this.queuesWritable === undefined) {
      this.queuesWritable = true;
      for (const q of this.queues.values()) if (!q.appendable) this.queuesWritable = false;
    }
    return this.queuesWritable;
  }
  /** Whether every queue was appendable when last looked at; undefined after a change. */
  private queuesWritable: boolean | undefined;

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
    return { id: eventId(q.origin, q.domain, h.histId), queue: q.name, domain: q.domain, kind: h.kind as LifecycleEvent['kind'], messageId: h.messageId, txn: h.txn, at: h.at, details: h.details };
  }

  /** Events of a queue's history after `afterId` (exclusive), oldest first, at most `count`. */
  async historySince(domain: string, afterId: string | undefined, count: number): Promise<HistoryEntry[]> {
    // on the read connection: a block of events never waits behind the queue's writes, nor they behind it
    const rows = (await this.readerNode(domain).reads.xrange(this.must(domain).keys[1], afterId ? `(${afterId}` : '-', '+', 'COUNT', count)) as [string, string[]][];
    return rows.map(decodeHistory);
  }

  /**
   * historySince(), and whether nothing after `afterId` had been trimmed when it read (`whole`):
   * the stream's first entry is read with it, in one transaction. Without `whole`, entries after
   * `afterId` may have been trimmed before the read (they were archived first).
   */
  async historyAfter(domain: string, afterId: string | undefined, count: number): Promise<{ rows: HistoryEntry[]; whole: boolean }> {
    const key = this.must(domain).keys[1];
    const res = await this.readerNode(domain).reads.multi().xrange(key, '-', '+', 'COUNT', 1).xrange(key, afterId ? `(${afterId}` : '-', '+', 'COUNT', count).exec();
    const failed = res?.find(([err]) => err);
    if (!res || failed) throw failed?.[0] ?? new Error('the history read was discarded');
    const first = (res[0]![1] as [string, string[]][])[0]?.[0];
    const rows = (res[1]![1] as [string, string[]][]).map(decodeHistory);
    return { rows, whole: !afterId || (first !== undefined && compareIds(first, afterId) <= 0) };
  }

  /**
   * A block of the history after `afterId` as the event log stores it (lua/historyBlock-1.lua):
   * per entry its id, its message id and the stored event's bytes, encoded by the node.
   */
  async historyBlock(domain: string, afterId: string | undefined, count: number): Promise<StoredHistoryEntry[]> {
    // on the read connection: a block of events never waits behind the queue's writes, nor they behind it
    const flat = await runScript<Buffer[]>(this.readerNode(domain).reads, 'historyBlock', [this.must(domain).keys[1], afterId ? `(${afterId}` : '-', count], { buffers: true });
    const out: StoredHistoryEntry[] = [];
    for (let i = 0; i + 2 < flat.length; i += 3) out.push({ histId: flat[i]!.toString('latin1'), messageId: flat[i + 1]!.toString('utf8'), stored: flat[i + 2]! });
    return out;
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
    return found.reverse().map((h) => ({ id: eventId(q.origin, q.domain, h.histId), kind: h.kind, messageId: h.messageId, txn: h.txn, at: h.at, details: h.details }));
  }

  /**
   * Entries of `domain`'s history by their ids, in the order given (eventOf() makes them events);
   * an id no longer in the stream (trimmed once archived) is left out. One pipelined exact XRANGE
   * per id on an in-sync replica's read connection: a lookup, never a scan.
   */
  async historyByIds(domain: string, histIds: readonly string[]): Promise<HistoryEntry[]> {
    const key = this.must(domain).keys[1];
    if (!histIds.length) return [];
    const p = this.readerNode(domain).reads.pipeline();
    for (const h of histIds) p.xrange(key, h, h);
    const out: HistoryEntry[] = [];
    for (const [err, rows] of (await p.exec()) ?? []) {
      if (err) throw err;
      for (const row of rows as [string, string[]][]) out.push(decodeHistory(row));
    }
    return out;
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
