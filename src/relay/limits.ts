// Limits per destination MTA that every gateway shares, kept in Redis: a message rate (the
// rateLimit script: each message reserves its send slot) and connection leases (the
// connectionLease script: a connection is opened only under a lease). With a pool (PoolState,
// as the relay runs) both run on every node, and a reservation or a lease holds when a majority
// of the nodes granted it (the longest wait of those that did), so the loss of any one node
// neither resets a destination's rate nor frees its connections; without one, on ONE node, the
// first node of redis.nodes that is up, which every gateway picks alike. They are not replicated
// queue writes, and they read the time from the node (TIME), not from the gateway, so one
// gateway's wrong clock cannot break them. With fewer than a majority of the nodes (or no node)
// up, each gateway falls back to the first node up, then to limiting on its own clock (logged).
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { RedisNode } from '../queue/node.ts';
import { matchDomain } from '../access/domains.ts';
import type { PoolState } from '../queue/poolState.ts';
import { runScript } from '../queue/scripts.ts';

export interface DestLimits {
  /** The key limits are kept under: the MX host or domain the configuration names, else the host. */
  key: string;
  connections: number;
  ratePerSecond: number;
  messagesPerConnection: number;
}

/** Limits for a destination MTA: the MX host's entry, else the domain's, else the default (field by field). */
export function limitsFor(cfg: Config['relay']['limits'], host: string, domain: string): DestLimits {
  const byHost = matchDomain(cfg.destinations, host);
  const byDomain = matchDomain(cfg.destinations, domain);
  const hit = byHost?.key === host.toLowerCase() ? byHost : (byDomain ?? byHost);
  const d = cfg.default;
  const v = hit?.value ?? {};
  return {
    key: hit?.key ?? host.toLowerCase(),
    connections: v.connections ?? d.connections,
    ratePerSecond: v.ratePerSecond ?? d.ratePerSecond,
    messagesPerConnection: v.messagesPerConnection ?? d.messagesPerConnection,
  };
}

type Reply = [number, number];

/** A script registered by src/queue/scripts.ts on the node's client. */
function script(node: RedisNode, name: 'rateLimit' | 'connectionLease') {
  return (...args: (string | number)[]) => runScript(node.client, name, args);
}
const RESERVE_AHEAD = 1000; // a message may reserve a send slot up to this far ahead
const LEASE_POLL = 50;
/** A destination's lease set and its set of gateway processes waiting for a lease (lua/connectionLease-2.lua). */
const leaseKeys = (key: string) => [`sg:conn:{${key}}`, `sg:conn:{${key}}:want`] as const;

export interface Lease {
  key: string;
  holder: string;
  /** False when it was granted without Redis (no node up). */
  shared: boolean;
}

export class SharedLimits {
  private readonly pick: () => RedisNode | undefined;
  private readonly log: Logger;
  private readonly leaseMs: number;
  private readonly instance = `${process.pid}.${randomBytes(3).toString('hex')}`;
  private seq = 0;
  private readonly localTat = new Map<string, number>();
  private warned = false;
  private readonly gatewayId: string;

  /** This process's clock (tests inject a wrong one): used only when no Redis node is up. */
  private readonly now: () => number;

  /** Where once() markers are kept: every node of the pool (without it, the picked node). */
  private readonly pool: PoolState | undefined;

  constructor(opts: { pick: () => RedisNode | undefined; gatewayId: string; leaseMs: number; log: Logger; now?: () => number; pool?: PoolState }) {
    this.pick = opts.pick;
    this.pool = opts.pool;
    this.now = opts.now ?? Date.now;
    this.gatewayId = opts.gatewayId;
    this.leaseMs = opts.leaseMs;
    this.log = opts.log;
  }

  private node(): RedisNode | undefined {
    const n = this.pick();
    if (!n && !this.warned) {
      this.warned = true;
      this.log.warn('no redis node up: rate and connection limits are kept per gateway until one is back');
    } else if (n) this.warned = false;
    return n;
  }

  /** Resolves when one message may be sent to the destination (rate 0: at once). */
  async waitRate(key: string, ratePerSecond: number, signal?: AbortSignal): Promise<void> {
    if (ratePerSecond <= 0) return;
    const interval = 1000 / ratePerSecond;
    for (;;) {
      signal?.throwIfAborted();
      const now = this.now();
      let reply: Reply | undefined = await this.onPool('rateLimit', [`sg:rate:{${key}}`, interval, RESERVE_AHEAD, 60_000]).then((answers) => {
        if (!answers) return undefined;
        const granted = answers.filter((a) => Number(a[0]) === 1);
        if (granted.length >= this.pool!.majority) return [1, Math.max(...granted.map((a) => Number(a[1])))] as Reply;
        return [0, Math.max(...answers.filter((a) => Number(a[0]) === 0).map((a) => Number(a[1])), 5)] as Reply;
      });
      const node = reply ? undefined : this.node();
      if (node) {
        try {
          reply = (await script(node, 'rateLimit')(`sg:rate:{${key}}`, interval, RESERVE_AHEAD, 60_000)) as Reply;
        } catch (err) {
          this.log.warn({ err, key }, 'rate limiter unavailable');
        }
      }
      reply ??= this.localRate(key, now, interval);
      const [granted, ms] = [Number(reply[0]), Number(reply[1])];
      if (granted === 1) {
        if (ms > 0) await sleep(ms, undefined, { signal });
        return;
      }
      await sleep(Math.min(Math.max(ms, 5), RESERVE_AHEAD), undefined, { signal });
    }
  }

  private localRate(key: string, now: number, interval: number): Reply {
    const tat = Math.max(this.localTat.get(key) ?? 0, now);
    if (tat - now > RESERVE_AHEAD) return [0, Math.ceil(tat - now - RESERVE_AHEAD)];
    this.localTat.set(key, tat + interval);
    return [1, Math.floor(tat - now)];
  }

  /** A limit script on every node of the pool; undefined without a pool or a majority. */
  private async onPool(name: 'rateLimit' | 'connectionLease', args: (string | number)[]): Promise<Reply[] | undefined> {
    if (!this.pool) return undefined;
    return this.pool.run<Reply>(name, args).catch(() => undefined);
  }

  /**
   * Granted by a majority of the pool's nodes; undefined when the pool cannot tell. A refused
   * acquire gives back what a minority granted.
   */
  private async leaseOnPool(op: 'acquire' | 'renew', lease: { key: string; holder: string }, limit: number): Promise<boolean | undefined> {
    const answers = await this.onPool('connectionLease', [...leaseKeys(lease.key), op, lease.holder, this.leaseMs, limit]);
    if (!answers) return undefined;
    const granted = answers.filter((a) => Number(a[0]) === 1).length;
    // a node restarted empty lost the lease: held by the others, it is taken there again
    if (op === 'renew' && granted >= this.pool!.majority && granted < answers.length) await this.onPool('connectionLease', [...leaseKeys(lease.key), 'acquire', lease.holder, this.leaseMs, limit]);
    if (op === 'acquire' && granted > 0 && granted < this.pool!.majority) await this.onPool('connectionLease', [...leaseKeys(lease.key), 'release', lease.holder, 0, 0]);
    return granted >= this.pool!.majority;
  }

  /** Waits for one of the destination's `limit` connection leases. */
  async acquireLease(key: string, limit: number, signal?: AbortSignal): Promise<Lease> {
    const holder = `${this.gatewayId}:${this.instance}:${++this.seq}`;
    for (;;) {
      signal?.throwIfAborted();
      const onPool = await this.leaseOnPool('acquire', { key, holder }, limit);
      if (onPool) return { key, holder, shared: true };
      if (onPool === false) {
        // refused by a majority (what the others granted is given back): wait for a lease to free
        await sleep(LEASE_POLL + Math.floor(Math.random() * LEASE_POLL), undefined, { signal });
        continue;
      }
      const node = this.node();
      if (!node) return { key, holder, shared: false };
      try {
        const [ok] = (await script(node, 'connectionLease')(...leaseKeys(key), 'acquire', holder, this.leaseMs, limit)) as Reply;
        if (Number(ok) === 1) return { key, holder, shared: true };
      } catch (err) {
        this.log.warn({ err, key }, 'connection lease unavailable');
        return { key, holder, shared: false };
      }
      await sleep(LEASE_POLL + Math.floor(Math.random() * LEASE_POLL), undefined, { signal });
    }
  }

  /** Extends a lease; false when it had lapsed and could not be taken again. */
  async renewLease(lease: Lease, limit: number): Promise<boolean> {
    if (!lease.shared) return true;
    const onPool = await this.leaseOnPool('renew', lease, limit);
    if (onPool || (onPool === false && (await this.leaseOnPool('acquire', lease, limit)))) return true;
    if (onPool === false) return false;
    const node = this.node();
    if (!node) return true;
    try {
      const [ok] = (await script(node, 'connectionLease')(...leaseKeys(lease.key), 'renew', lease.holder, this.leaseMs, limit)) as Reply;
      if (Number(ok) === 1) return true;
      const [again] = (await script(node, 'connectionLease')(...leaseKeys(lease.key), 'acquire', lease.holder, this.leaseMs, limit)) as Reply;
      return Number(again) === 1;
    } catch {
      return true; // Redis trouble: keep the connection rather than drop mail in flight
    }
  }

  /**
   * How many of the destination's leases this process holds beyond its fair share: while other
   * gateway processes wait for one, each may hold ceil(limit / processes holding or waiting)
   * (lua/connectionLease-2.lua). 0 when none wait, or when Redis cannot tell.
   */
  async excessLeases(key: string, limit: number): Promise<number> {
    const args = [...leaseKeys(key), 'share', `${this.gatewayId}:${this.instance}`, 0, limit];
    let answers = await this.onPool('connectionLease', args);
    if (!answers) {
      const node = this.node();
      if (!node) return 0;
      try {
        answers = [(await script(node, 'connectionLease')(...args)) as Reply];
      } catch {
        return 0;
      }
    }
    return Math.max(0, ...answers.map(([mine, share]) => Number(mine) - Number(share)));
  }

  async releaseLease(lease: Lease): Promise<void> {
    if (!lease.shared) return;
    if (await this.onPool('connectionLease', [...leaseKeys(lease.key), 'release', lease.holder, 0, 0])) return;
    const node = this.node();
    if (!node) return;
    await script(node, 'connectionLease')(...leaseKeys(lease.key), 'release', lease.holder, 0, 0).catch(() => undefined);
  }

  /**
   * True the first time it is called for `key` within `ttlMs` across every gateway (SET NX on
   * every node of the pool, true when a majority set it: the loss of any one node does not send a
   * second warning); used so a delay warning goes out once per message.
   */
  async once(key: string, ttlMs: number): Promise<boolean> {
    const ms = Math.max(1, Math.ceil(ttlMs));
    const answers = await this.pool?.run<number>('markOnce', [key, ms]);
    if (answers) return answers.filter((a) => Number(a) === 1).length >= this.pool!.majority;
    const node = this.pool ? undefined : this.node();
    if (node) {
      try {
        return (await node.client.set(key, '1', 'PX', ms, 'NX')) === 'OK';
      } catch {
        /* fall through to the local record */
      }
    }
    if (this.onceLocal.has(key)) return false;
    this.onceLocal.add(key);
    return true;
  }
  private readonly onceLocal = new Set<string>();

  get leaseMsValue(): number {
    return this.leaseMs;
  }
}
