// How fast mail goes to each destination MTA: per destination a p-queue holding this gateway's
// concurrency (its connection limit), the shared message rate and connection leases (limits.ts),
// the SMTP connection pools (deliver.ts), MX fallback in preference order, and dead destinations
// (dead.ts). The dispatcher alone owns dead destinations: it skips them when it
// delivers, and tells the scheduler whether a queue's destination hosts can be sent to
// (readiness) and when that changes.
import PQueue from 'p-queue';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { Classifier } from './classify.ts';
import { DeadDestinations } from './dead.ts';
import type { PoolState } from '../queue/poolState.ts';
import { SmtpPool, type AttemptResult, type TlsMode } from './deliver.ts';
import { limitsFor, type DestLimits, type SharedLimits } from './limits.ts';
import { matchDomain } from '../access/domains.ts';

export interface Target {
  host: string;
  addresses: string[];
  port: number;
  secure: boolean;
}

export type DispatchOutcome =
  | { kind: 'attempted'; result: AttemptResult }
  /** Every host is a dead destination (or its one probe is out): nothing was tried. */
  | { kind: 'dead'; until: number };

/** Whether a queue's destination hosts can be sent to: any host up, one probe due, or none until when. */
export type Readiness = { open: true; probe: boolean } | { open: false; until: number };

const POOL_IDLE_DROP = 10 * 60_000;
/** While another queue's probe is out, a queue waiting on the same destination looks again after this long. */
const PROBE_RECHECK_MS = 1000;

export class Dispatcher {
  private readonly dead: DeadDestinations;
  private refreshing = false;
  /** Per destination domain, the dead-destination keys of the hosts last tried for it. */
  private readonly hostsOf = new Map<string, string[]>();
  private readonly queues = new Map<string, PQueue>();
  private readonly pools = new Map<string, { pool: SmtpPool; used: number }>();
  private readonly config: Config;
  private readonly limits: SharedLimits;
  private readonly classifier: Classifier;
  private readonly log: Logger;
  /** Told, per destination domain that uses it, when a destination resumed or its probe failed: its queue looks again. */
  private readonly onChange: (domain: string) => void;

  /** `pool`: where dead destinations are shared with the other members (dead.ts); without it they are this process's. */
  constructor(opts: { config: Config; limits: SharedLimits; classifier: Classifier; now: () => number; log: Logger; onChange?: (domain: string) => void; pool?: PoolState }) {
    this.onChange = opts.onChange ?? (() => {});
    this.config = opts.config;
    this.limits = opts.limits;
    this.classifier = opts.classifier;
    this.log = opts.log;
    this.dead = new DeadDestinations(opts.config.relay.deadDestination, opts.now, opts.pool);
  }

  /** The dead-destination key of a host. */
  static destKey(t: { host: string; port: number }): string {
    return `${t.host}:${t.port}`;
  }

  /**
   * Whether a destination domain's queue may be taken from as far as its hosts go (those last
   * tried for it; a domain not tried yet is open): open when one host is up, open for one probe
   * when a dead destination's wait is over and no probe is out, otherwise closed until the earliest end.
   */
  readiness(domain: string, now: number): Readiness {
    const hosts = this.hostsOf.get(domain);
    if (!hosts?.length) return { open: true, probe: false };
    let probe = false;
    let until = Infinity;
    for (const k of hosts) {
      const s = this.dead.state(k);
      if (s.state === 'up') return { open: true, probe: false };
      if (s.state === 'probe') probe = true;
      if (s.state === 'dead') until = Math.min(until, s.until);
      // a probe is out: its outcome wakes the queue (onChange); look again in a while all the same
      if (s.state === 'probing') until = Math.min(until, now + PROBE_RECHECK_MS);
    }
    return probe ? { open: true, probe: true } : { open: false, until };
  }

  /** The dead destinations, for status pages. */
  deadDestinations(): ReturnType<DeadDestinations['list']> {
    return this.dead.list();
  }

  /** A dead destination is back, or dead again after its probe: every domain that uses it looks again. */
  private changed(dest: string): void {
    for (const [domain, hosts] of this.hostsOf) if (hosts.includes(dest)) this.onChange(domain);
  }

  limitsFor(host: string, domain: string): DestLimits {
    return limitsFor(this.config.relay.limits, host, domain);
  }

  private tlsFor(host: string, domain: string): TlsMode {
    const p = this.config.relay.tlsPolicy;
    return matchDomain(p, host)?.value ?? matchDomain(p, domain)?.value ?? 'opportunistic';
  }

  private queueFor(l: DestLimits): PQueue {
    let q = this.queues.get(l.key);
    if (!q) {
      q = new PQueue({ concurrency: l.connections });
      this.queues.set(l.key, q);
    }
    return q;
  }

  private poolFor(t: Target, domain: string, l: DestLimits): SmtpPool {
    const tls = this.tlsFor(t.host, domain);
    const key = `${l.key}|${tls}|${t.secure ? 's' : 'p'}|${t.host}:${t.port}`;
    let p = this.pools.get(key);
    if (!p) {
      const r = this.config.relay;
      const pool = new SmtpPool(
        { host: t.host, addresses: t.addresses, port: t.port, secure: t.secure, tls },
        {
          name: this.config.gateway.hostname,
          limits: l,
          leases: this.limits,
          classifier: this.classifier,
          connectTimeout: r.connectTimeout,
          greetingTimeout: r.greetingTimeout,
          socketTimeout: r.socketTimeout,
          idleTimeout: r.idleTimeout,
          log: this.log,
        },
      );
      p = { pool, used: Date.now() };
      this.pools.set(key, p);
    } else p.pool.setAddresses(t.addresses);
    p.used = Date.now();
    return p.pool;
  }

  /**
   * One delivery attempt of a message: its hosts in preference order, skipping dead ones;
   * a host that cannot be reached counts a failure and the next one is tried.
   */
  async deliver(domain: string, targets: Target[], envelope: { from: string; to: string[] }, raw: Buffer, signal?: AbortSignal): Promise<DispatchOutcome> {
    this.hostsOf.set(domain, targets.map((t) => Dispatcher.destKey(t)));
    let last: AttemptResult | undefined;
    let until = Infinity;
    for (const t of targets) {
      const key = Dispatcher.destKey(t);
      if (!(await this.dead.claim(key))) {
        const s = this.dead.state(key);
        until = Math.min(until, s.state === 'dead' ? s.until : 0);
        continue;
      }
      const probe = this.dead.state(key).state === 'probing';
      const l = this.limitsFor(t.host, domain);
      const pool = this.poolFor(t, domain, l);
      const res = await this.queueFor(l).add(
        async () => {
          // It may have become dead while this message waited for its turn.
          if (!probe && this.dead.state(key).state !== 'up') return undefined;
          await this.limits.waitRate(l.key, l.ratePerSecond, signal);
          const r = await pool.send(envelope, raw, signal);
          // Recorded before the next task of this destination starts.
          if (!r.reached) {
            if (await this.dead.failure(key)) {
              const s = this.dead.state(key);
              this.log.warn({ dest: key, until: s.state === 'dead' ? s.until : undefined, reply: r.reply }, 'destination dead');
              if (probe) this.changed(key);
            }
          } else if (await this.dead.success(key)) {
            this.log.info({ dest: key }, 'destination back');
            this.changed(key);
          }
          return r;
        },
        { signal },
      ).catch((err: unknown) => {
        if (probe) this.dead.unclaim(key);
        throw err;
      });
      if (!res) {
        const s = this.dead.state(key);
        until = Math.min(until, s.state === 'dead' ? s.until : 0);
        continue;
      }
      if (!res.reached) {
        last = res;
        continue;
      }
      return { kind: 'attempted', result: res };
    }
    if (last) return { kind: 'attempted', result: last };
    return { kind: 'dead', until: Number.isFinite(until) ? until : 0 };
  }

  /** Open connections per destination host (for status and tests). */
  connections(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const { pool } of this.pools.values()) {
      const k = Dispatcher.destKey(pool.target);
      out[k] = (out[k] ?? 0) + pool.connections;
    }
    return out;
  }

  /** Forgets pools unused for a while (their connections have long been closed). */
  sweep(): void {
    if (!this.refreshing) {
      this.refreshing = true;
      void this.dead
        .refresh()
        .then((changed) => changed.forEach((d) => this.changed(d)))
        .finally(() => (this.refreshing = false));
    }
    // idle pools go after POOL_IDLE_DROP: looked for once a minute, in one pass over pools and destinations
    const now = Date.now();
    if (now - this.lastIdleSweep < 60_000) return;
    this.lastIdleSweep = now;
    const cutoff = now - POOL_IDLE_DROP;
    for (const [k, p] of this.pools) if (p.used < cutoff && p.pool.connections === 0) this.pools.delete(k);
    const pooled = new Set([...this.pools.keys()].map((pk) => pk.slice(0, pk.indexOf('|'))));
    for (const [k, q] of this.queues) if (q.size === 0 && q.pending === 0 && !pooled.has(k)) this.queues.delete(k);
  }
  private lastIdleSweep = 0;

  async close(waitMs: number): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.pool.close(waitMs)));
  }
}
