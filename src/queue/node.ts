// One Redis node of the pool, reached over an active path and optionally a standby path (another
// address of the same server). Heartbeats watch both paths; the node switches to the standby when
// the active one fails, and is isolated (down) when the path it uses misses `missed` heartbeats or
// its connection closes: never because of one slow write, whose queue alone is resynced (a stall of
// this process is not a node failure: see deadline.ts). Memory figures from INFO (maxmemory,
// used_memory) and the budgets' estimates (mail, history: set by the manager) feed the storage
// check: appends are refused when the node's mail is at its budget, whatever history and events
// use. A node's identity is its `name`, or host:port: never a credential, and the same after a
// password change.
import { EventEmitter } from 'node:events';
import { Redis } from 'ioredis';
import { redisNodeId } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { withDeadline } from './deadline.ts';
import { QueueError } from './errors.ts';
import { defineScripts } from './scripts.ts';

export type PathState = 'Run' | 'Ready' | 'NG';

interface Path {
  url: string;
  client: Redis;
  state: PathState;
  misses: number;
}

export interface NodeOptions {
  url: string;
  /** The node's name in tables, logs and placement records; default host:port of the url. */
  name?: string | undefined;
  standby?: string | undefined;
  timeoutMs: number;
  heartbeatMs: number;
  missed: number;
  log: Logger;
}

export interface NodeStatus {
  id: string;
  up: boolean;
  path: 'active' | 'standby';
  active: PathState;
  standby: PathState | undefined;
  lastHeartbeat: number;
  usedMemory: number;
  maxmemory: number;
  /** Estimated bytes of queued mail and of history on the node (see the budgets). */
  mailBytes: number;
  historyBytes: number;
}

/**
 * Estimated memory a queued message takes on a replica beyond its raw bytes: the live stream
 * entry's fields (envelope, metadata), its state hash field, the stream's node overhead.
 */
export const MAIL_OVERHEAD = 512;

/** The id an older record may hold for a node: its url without the scheme (credentials included). */
export function legacyNodeId(url: string): string {
  return url.replace(/^rediss?:\/\//, '').replace(/\/$/, '');
}

function makeClient(url: string, timeoutMs: number): Redis {
  const client = new Redis(url, {
    lazyConnect: true,
    // No auto-pipelining: each command is written as it is issued (the socket's own queue gathers
    // what is issued while a write is pending). With it, ioredis keeps each tick's commands, their
    // arguments (message bodies) and their promises in a pipeline object that outlived the young
    // generation: at 1,000 messages a second every scavenge promoted about 7 MB of them and took
    // 5-10 ms, the reply's p99 (bench:smtp, README "Reply latency"). Without it the same load
    // promotes almost nothing and the scavenges take about 2 ms.
    enableAutoPipelining: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    // A backstop only: writes and heartbeats have their own stall-proof limit (deadline.ts).
    commandTimeout: Math.max(4 * timeoutMs, 2000),
    connectTimeout: Math.max(timeoutMs, 1000),
    retryStrategy: (times) => Math.min(times * 100, 1000),
  });
  defineScripts(client);
  return client;
}

export class RedisNode extends EventEmitter {
  readonly id: string;
  /** The id records written before node names existed may hold for this node. */
  readonly legacyId: string;
  private readonly paths: { active: Path; standby?: Path };
  private current: 'active' | 'standby' = 'active';
  up = false;
  lastHeartbeat = 0;
  usedMemory = 0;
  maxmemory = 0;
  /** Bytes appended since the last mail tally: added to mailBytes for the budget check. */
  pendingBytes = 0;
  /** Estimated memory of the queued mail on this node (the manager's tally of its replicas). */
  mailBytes = 0;
  /** Estimated memory of the history streams on this node. */
  historyBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly log: Logger;

  private readonly opts: NodeOptions;

  constructor(opts: NodeOptions) {
    super();
    this.opts = opts;
    this.id = opts.name ?? redisNodeId(opts.url);
    this.legacyId = legacyNodeId(opts.url);
    this.log = opts.log.child({ node: this.id });
    this.paths = {
      active: { url: opts.url, client: makeClient(opts.url, opts.timeoutMs), state: 'NG', misses: 0 },
      ...(opts.standby ? { standby: { url: opts.standby, client: makeClient(opts.standby, opts.timeoutMs), state: 'NG' as PathState, misses: 0 } } : {}),
    };
    for (const p of this.allPaths()) p.client.on('error', () => {}); // reported through heartbeats
  }

  private allPaths(): Path[] {
    return this.paths.standby ? [this.paths.active, this.paths.standby] : [this.paths.active];
  }

  /** The client on the path in use. */
  get client(): Redis {
    return this.current === 'standby' && this.paths.standby ? this.paths.standby.client : this.paths.active.client;
  }

  /** Connects, refuses a node whose maxmemory-policy is not noeviction, starts heartbeats. */
  async start(): Promise<void> {
    await Promise.allSettled(this.allPaths().map((p) => p.client.connect()));
    await this.beat();
    if (this.up) {
      const [, policy] = (await this.client.config('GET', 'maxmemory-policy')) as [string, string];
      if (policy !== 'noeviction') {
        await this.stop();
        throw new QueueError('NODE_POLICY', `redis node ${this.id} has maxmemory-policy ${policy}; streamgate needs noeviction (Redis is a store, not a cache)`);
      }
    }
    this.timer = setInterval(() => void this.beat(), this.opts.heartbeatMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    for (const p of this.allPaths()) p.client.disconnect();
    this.readConn?.disconnect();
  }

  /** One heartbeat on every path; switches path or isolates the node as the answers say. */
  async beat(): Promise<void> {
    await Promise.all(
      this.allPaths().map(async (p) => {
        try {
          const info = await withDeadline(p.client.info('memory'), this.opts.timeoutMs, `heartbeat of ${this.id}`);
          p.misses = 0;
          if (p.state === 'NG') p.state = 'Ready';
          if (p === this.pathInUse()) {
            this.usedMemory = Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0);
            this.maxmemory = Number(/maxmemory:(\d+)/.exec(info)?.[1] ?? 0);
          }
        } catch {
          p.misses++;
          if (p.misses >= this.opts.missed) p.state = 'NG';
        }
      }),
    );
    const inUse = this.pathInUse();
    const other = this.current === 'active' ? this.paths.standby : this.paths.active;
    if (inUse.state === 'NG' && other && other.state !== 'NG') {
      this.current = this.current === 'active' ? 'standby' : 'active';
      this.log.warn({ path: this.current, url: other.url }, 'switched path');
      this.emit('path', this.current);
    }
    const nowInUse = this.pathInUse();
    if (nowInUse.state !== 'NG' && nowInUse.misses === 0) {
      nowInUse.state = 'Run';
      for (const p of this.allPaths()) if (p !== nowInUse && p.state === 'Run') p.state = 'Ready';
      this.lastHeartbeat = Date.now();
      if (!this.up) {
        this.up = true;
        this.log.info('node up');
        this.emit('up');
      }
    } else if (nowInUse.state === 'NG' && this.up) {
      this.isolate('missed heartbeats');
    }
  }

  private readConn: Redis | undefined;

  /** A connection of its own for operators' reads (history lookups): they never wait behind writes, nor writes behind them. */
  get reads(): Redis {
    if (!this.readConn) {
      this.readConn = new Redis(this.pathInUse().url, { connectionName: 'streamgate-reads', maxRetriesPerRequest: 1, commandTimeout: Math.max(4 * this.opts.timeoutMs, 2000) });
      this.readConn.on('error', () => {});
      defineScripts(this.readConn); // the read-only ones (historyBlock) run here
    }
    return this.readConn;
  }

  /** The client of the path not in use, when its heartbeats answer: where a timed-out write is checked. */
  get otherClient(): Redis | undefined {
    const other = this.current === 'active' ? this.paths.standby : this.paths.active;
    return other && other.state !== 'NG' ? other.client : undefined;
  }

  /** True when `id` names this node (its id, or the id an older record used). */
  is(id: string): boolean {
    return id === this.id || id === this.legacyId || (id.includes('@') && id.slice(id.lastIndexOf('@') + 1).replace(/\/\d+$/, '') === this.id);
  }

  private pathInUse(): Path {
    return this.current === 'standby' && this.paths.standby ? this.paths.standby : this.paths.active;
  }

  /** Takes the node out of every write set until heartbeats answer again. */
  isolate(reason: string): void {
    if (!this.up) return;
    this.up = false;
    const p = this.pathInUse();
    p.state = 'NG';
    p.misses = this.opts.missed;
    this.log.warn({ reason }, 'node isolated');
    this.emit('down', reason);
  }

  /**
   * True when appending `bytes` would take the node's mail above budget × maxmemory. Only mail
   * counts: history and events have budgets of their own and never turn mail away. A node
   * without maxmemory has no budget (Redis's maxmemory with noeviction is the hard wall).
   */
  mailAboveBudget(budget: number, bytes: number): boolean {
    if (!this.maxmemory) return false;
    return this.mailBytes + this.pendingBytes + bytes + MAIL_OVERHEAD > this.maxmemory * budget;
  }

  /** Sets the mail tally (the manager's, from the queues' counters); appends since are in it. */
  setMail(bytes: number): void {
    this.mailBytes = bytes;
    this.pendingBytes = 0;
  }

  status(): NodeStatus {
    return {
      id: this.id,
      up: this.up,
      path: this.current,
      active: this.paths.active.state,
      standby: this.paths.standby?.state,
      lastHeartbeat: this.lastHeartbeat,
      usedMemory: this.usedMemory,
      maxmemory: this.maxmemory,
      mailBytes: this.mailBytes + this.pendingBytes,
      historyBytes: this.historyBytes,
    };
  }
}
