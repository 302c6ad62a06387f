// The dashboard's live data, pushed once a second over server-sent events (GET /api/live): rates
// per second for the last hour (accepted, delivered, deferred, bounced, expired), SMTP reply
// latency p50/p99 per second, depth over time of the busiest destinations, and the current state:
// every destination queue with its depth by state, oldest age, delivery rate against its limit,
// top deferral reasons and why the relay takes nothing from it (operator suspend, dead
// destination, delivery window), the replica management table, the nodes, the gateways, the
// memory budgets. It also keeps the recent messages accepted by this gateway for the page's
// search (by id, sender or recipient), until the event log has an index of its own.
//
// A frame is built once a second and shared by every open page, and only while a page is open;
// the series are kept whether or not anyone looks.
import type { Config } from '../config/schema.ts';
import type { LifecycleEvent } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';
import { limitsFor } from '../relay/limits.ts';
import type { Relay } from '../relay/relay.ts';
import type { MemoryReport } from './memory.ts';
import { notTaken, type ReplyObservation } from './metrics.ts';

/** An hour of one-second points. */
const POINTS = 3600;
/** Destinations whose depth is drawn over time (the busiest now); rings kept for at most RINGS of them. */
const BUSIEST = 6;
const RINGS = 24;
/** Messages remembered for search. */
const RECENT = 10_000;
/** The window of a destination's delivery rate, in seconds. */
const RATE_WINDOW = 60;
const GATEWAYS_EVERY = 5;

export const RATE_KINDS = ['accepted', 'delivered', 'deferred', 'bounced', 'expired'] as const;
type RateKind = (typeof RATE_KINDS)[number];

export interface RecentMessage {
  id: string;
  domain: string;
  from: string;
  to: string[];
  at: number;
}

export interface LiveSources {
  config: Config;
  queues: QueueManager;
  relay?: Pick<Relay, 'status' | 'suspended'> | undefined;
  memory?: (() => MemoryReport) | undefined;
  /** Told of every SMTP DATA reply (GatewayMetrics.onReply); without it, no latency series. */
  onReply?: ((fn: (r: ReplyObservation) => void) => void) | undefined;
}

interface DomainStats {
  /** Delivered per second over the last RATE_WINDOW seconds (a ring). */
  delivered: Uint32Array;
  /** Deferred recipients by classified reason, this hour and the last. */
  reasons: Map<string, number>;
  lastReasons: Map<string, number>;
}

/** A ring of numbers with one slot a second. */
class Ring {
  readonly values: (number | null)[] = [];
  push(v: number | null): void {
    this.values.push(v);
    if (this.values.length > POINTS) this.values.shift();
  }
}

export class LiveFeed {
  private readonly src: LiveSources;
  private readonly times = new Ring();
  private readonly rates = Object.fromEntries(RATE_KINDS.map((k) => [k, new Ring()])) as Record<RateKind, Ring>;
  private readonly p50 = new Ring();
  private readonly p99 = new Ring();
  private readonly depthRings = new Map<string, Ring>();
  private readonly counts: Record<RateKind, number> = { accepted: 0, delivered: 0, deferred: 0, bounced: 0, expired: 0 };
  private latencies: number[] = [];
  private readonly stats = new Map<string, DomainStats>();
  private readonly recent: RecentMessage[] = [];
  private recentAt = 0;
  private readonly subscribers = new Set<(frame: string) => void>();
  private timer: NodeJS.Timeout | undefined;
  private tickNo = 0;
  private hourAt = Date.now();
  private gateways: unknown[] = [];
  private readonly onEvent = (ev: LifecycleEvent) => this.count(ev);

  constructor(src: LiveSources) {
    this.src = src;
    src.onReply?.((r) => {
      if (this.latencies.length < 5000) this.latencies.push(r.seconds * 1000);
    });
  }

  start(): void {
    this.src.queues.on('event', this.onEvent);
    this.timer = setInterval(() => this.tick(), 1000);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.src.queues.off('event', this.onEvent);
    this.subscribers.clear();
  }

  /** Calls `fn` with each frame (JSON) until the returned function is called. */
  subscribe(fn: (frame: string) => void): () => void {
    this.subscribers.add(fn);
    if (this.subscribers.size === 1) void this.refreshGateways();
    return () => this.subscribers.delete(fn);
  }

  private count(ev: LifecycleEvent): void {
    const k = ev.kind as RateKind;
    if (k in this.counts) this.counts[k]++;
    if (ev.kind === 'accepted') {
      const env = (ev.details as { envelope?: { from: string; to: string[] } }).envelope;
      const m: RecentMessage = { id: ev.messageId, domain: ev.domain, from: env?.from ?? '', to: env?.to ?? [], at: ev.at };
      if (this.recent.length < RECENT) this.recent.push(m);
      else this.recent[this.recentAt] = m;
      this.recentAt = (this.recentAt + 1) % RECENT;
      return;
    }
    if (ev.kind === 'delivered') {
      const ring = this.domain(ev.domain).delivered;
      const i = Math.floor(ev.at / 1000) % RATE_WINDOW;
      ring[i] = ring[i]! + 1;
    }
    if (ev.kind === 'deferred') {
      const s = this.domain(ev.domain);
      for (const r of (ev.details as { recipients?: { status: string; category?: string }[] }).recipients ?? []) {
        if (r.status === 'deferred') s.reasons.set(r.category ?? 'unknown', (s.reasons.get(r.category ?? 'unknown') ?? 0) + 1);
      }
    }
  }

  private domain(d: string): DomainStats {
    let s = this.stats.get(d);
    if (!s) {
      s = { delivered: new Uint32Array(RATE_WINDOW), reasons: new Map(), lastReasons: new Map() };
      this.stats.set(d, s);
    }
    return s;
  }

  private tick(): void {
    const now = this.src.queues.now();
    this.tickNo++;
    this.times.push(Math.floor(now / 1000));
    for (const k of RATE_KINDS) {
      this.rates[k].push(this.counts[k]);
      this.counts[k] = 0;
    }
    const lat = this.latencies.sort((a, b) => a - b);
    this.p50.push(lat.length ? lat[Math.floor(lat.length * 0.5)]! : null);
    this.p99.push(lat.length ? lat[Math.min(lat.length - 1, Math.floor(lat.length * 0.99))]! : null);
    this.latencies = [];
    // this second's slot of every destination's rate ring starts again
    const slot = (Math.floor(now / 1000) + 1) % RATE_WINDOW;
    for (const s of this.stats.values()) s.delivered[slot] = 0;
    if (now - this.hourAt >= 3_600_000) {
      this.hourAt = now;
      for (const s of this.stats.values()) {
        s.lastReasons = s.reasons;
        s.reasons = new Map();
      }
    }
    const busiest = this.busiest();
    for (const [d, ring] of this.depthRings) {
      const v = this.src.queues.view(d);
      ring.push(v ? total(v.depth) : 0);
    }
    for (const d of busiest) {
      if (this.depthRings.has(d)) continue;
      const ring = new Ring();
      for (let i = 1; i < this.times.values.length; i++) ring.push(null);
      ring.push(total(this.src.queues.view(d)!.depth));
      this.depthRings.set(d, ring);
    }
    // forget the rings of destinations no longer among the busiest, the oldest first
    for (const d of this.depthRings.keys()) {
      if (this.depthRings.size <= RINGS) break;
      if (!busiest.includes(d)) this.depthRings.delete(d);
    }
    if (!this.subscribers.size) return;
    if (this.tickNo % GATEWAYS_EVERY === 0) void this.refreshGateways();
    const frame = JSON.stringify(this.frame(now, busiest));
    for (const fn of this.subscribers) fn(frame);
  }

  /** The queues (refs: a destination domain, or an adopted queue's name) with the most live messages now. */
  private busiest(): string[] {
    const top: [string, number][] = [];
    for (const q of this.src.queues.views()) {
      const n = total(q.depth);
      if (!n) continue;
      if (top.length < BUSIEST) top.push([q.ref, n]);
      else if (n > top[top.length - 1]![1]) top[top.length - 1] = [q.ref, n];
      else continue;
      top.sort((a, b) => b[1] - a[1]);
    }
    return top.map(([d]) => d);
  }

  private async refreshGateways(): Promise<void> {
    this.gateways = await this.src.queues.members().catch(() => this.gateways);
  }

  /** The last hour of every series (sent to a page when it connects). */
  history(): { times: (number | null)[]; rates: Record<RateKind, (number | null)[]>; latency: { p50: (number | null)[]; p99: (number | null)[] }; depth: Record<string, (number | null)[]> } {
    return {
      times: this.times.values,
      rates: Object.fromEntries(RATE_KINDS.map((k) => [k, this.rates[k].values])) as Record<RateKind, (number | null)[]>,
      latency: { p50: this.p50.values, p99: this.p99.values },
      depth: Object.fromEntries(this.busiest().filter((d) => this.depthRings.has(d)).map((d) => [d, this.depthRings.get(d)!.values])),
    };
  }

  /** The current state and this second's points (one frame of /api/live). */
  frame(now = this.src.queues.now(), busiest = this.busiest()) {
    const { config, queues, relay } = this.src;
    const last = <T>(r: { values: T[] }) => r.values[r.values.length - 1] ?? null;
    const status = relay?.status();
    const blocks = new Map((status?.domains ?? []).map((d) => [d.domain, d.blocked]));
    const operator = new Map((relay?.suspended() ?? []).map((s) => [s.domain, s]));
    const health = queues.health();
    return {
      at: now,
      gateway: queues.gatewayId,
      point: {
        t: last(this.times),
        rates: Object.fromEntries(RATE_KINDS.map((k) => [k, last(this.rates[k])])),
        latency: { p50: last(this.p50), p99: last(this.p99) },
        depth: Object.fromEntries(busiest.map((d) => [d, total(queues.view(d)!.depth)])),
      },
      writable: queues.writable,
      totals: queues.totals(),
      nodes: health.nodes,
      queues: [...queues.views()].map((q) => {
        const s = this.stats.get(q.domain);
        const reasons = new Map(s?.lastReasons ?? []);
        for (const [k, v] of s?.reasons ?? []) reasons.set(k, (reasons.get(k) ?? 0) + v);
        const t = q.table();
        const blocked = blocks.get(q.domain);
        return {
          ...t,
          depth: q.depth,
          rate: s ? s.delivered.reduce((a, b) => a + b, 0) / RATE_WINDOW : 0,
          limit: limitsFor(config.relay.limits, q.domain, q.domain).ratePerSecond,
          reasons: [...reasons].sort((a, b) => b[1] - a[1]).slice(0, 3),
          // why the relay takes nothing from it (dead, operator, window; null: it does), and until when
          notTaken: operator.has(q.domain) ? 'operator' : blocked ? notTaken(blocked.reason) : null,
          until: blocked && Number.isFinite(blocked.until) ? blocked.until : null,
          suspendedBy: operator.get(q.domain) ?? null,
        };
      }),
      dead: status?.dead ?? [],
      gateways: this.gateways,
      memory: this.src.memory?.() ?? null,
    };
  }

  /** Recent messages (newest first) whose id is `q`, or whose sender or a recipient contains it. */
  search(q: string, limit = 50): RecentMessage[] {
    const needle = q.toLowerCase();
    const out: RecentMessage[] = [];
    const n = this.recent.length;
    for (let i = 0; i < n && out.length < limit; i++) {
      const m = this.recent[(this.recentAt - 1 - i + n) % n]!;
      if (m.id === q || m.from.toLowerCase().includes(needle) || m.to.some((t) => t.toLowerCase().includes(needle))) out.push(m);
    }
    return out;
  }
}

function total(d: { ready: number; deferred: number; held: number; inflight: number }): number {
  return d.ready + d.deferred + d.held + d.inflight;
}
