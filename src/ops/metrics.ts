// Every Prometheus metric of the gateway, in one registry: what the queues, the ingress, the relay,
// the events publisher and the memory budgets report, with bounded label sets. A destination
// queue has a `queue` label of its own only while it is among the `ops.metrics.topDestinations`
// busiest (messages accepted in the last ranking period, plus its depth); every other destination
// counts under `queue="other"`. Ranks are taken again every `rankEveryMs` (60 s); a destination
// that falls out of the top loses its series (a counter of it starts again from 0 when it comes
// back, which rate() takes as a reset). So at 1,000 or 100,000 queues a scrape stays the size of
// the top. Other parts register metrics of their own through extend() (event-loop and GC, the
// events archive), so that one registry serves /metrics.
import type { EventEmitter } from 'node:events';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { LifecycleEvent } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';
import type { Relay } from '../relay/relay.ts';
import type { BlockReason } from '../relay/scheduler.ts';
import { registerLoopMetrics } from './loopStats.ts';
import type { MemoryReport } from './memory.ts';
import { compareIds, parseEntryId } from '../message/ids.ts';

/** The label of destinations outside the top. */
export const OTHER = 'other';
const STATES = ['ready', 'deferred', 'held', 'inflight'] as const;


/** What the SMTP ingress tells of each DATA reply (SmtpIngress 'reply'). */
export interface ReplyObservation {
  listener: string;
  /** From the end of DATA to the reply, in seconds. */
  seconds: number;
  code: number;
}

export interface MetricsOptions {
  /** How many destinations get a label of their own (ops.metrics.topDestinations). */
  topDestinations: number;
  /** How often the top is taken again (ms); default 60000. */
  rankEveryMs?: number;
  now?: () => number;
  /** The process metrics of prom-client (CPU, heap, handles); default on. */
  processMetrics?: boolean;
}

/** Which destinations are named in labels: the busiest by recent volume and depth, the rest `other`. */
export class DestinationLabels {
  private named = new Set<string>();
  private volume = new Map<string, number>();
  private rankedAt = -Infinity;
  private readonly top: number;
  private readonly every: number;
  /** Told of the destinations that lost their label at a ranking (their series are removed). */
  onDrop: (domain: string) => void = () => {};

  constructor(top: number, everyMs: number) {
    this.top = top;
    this.every = everyMs;
  }

  /** Counts a message toward the destination's volume; returns its label. */
  count(domain: string): string {
    this.volume.set(domain, (this.volume.get(domain) ?? 0) + 1);
    // a destination seen before the first ranking is named while there is room
    if (!this.named.has(domain) && this.named.size < this.top) this.named.add(domain);
    return this.label(domain);
  }

  label(domain: string): string {
    return this.named.has(domain) ? domain : OTHER;
  }

  /** Ranks again when the period is over: by volume since the last ranking plus `depth`. */
  rank(now: number, depth: (domain: string) => number, domains: Iterable<string>): void {
    if (now - this.rankedAt < this.every) return;
    this.rankedAt = now;
    const score = new Map(this.volume);
    for (const d of domains) score.set(d, (score.get(d) ?? 0) + depth(d));
    const next = new Set([...score].filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, this.top).map(([d]) => d));
    // keep those still named when there is room (no churn among equals)
    for (const d of this.named) if (next.size < this.top && !next.has(d)) next.add(d);
    for (const d of this.named) if (!next.has(d)) this.onDrop(d);
    this.named = next;
    this.volume = new Map();
  }

  list(): string[] {
    return [...this.named];
  }
}

/**
 * Why the relay takes nothing from a queue, in the words of the metrics, the dashboard and
 * `streamgate top`, from the relay's own word for its gate (the one place that maps them):
 * dead (every MTA of the destination suspended as dead), operator (suspended by an operator),
 * window (its delivery window is closed).
 */
export function notTaken(blockReason: BlockReason): 'dead' | 'operator' | 'window' {
  return ({ 'dead-destination': 'dead', suspended: 'operator', 'window-closed': 'window' } as const)[blockReason];
}

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly labels: DestinationLabels;
  private readonly now: () => number;
  private readonly collectors: (() => void)[] = [];
  private readonly stops: (() => void)[] = [];
  private readonly replyListeners: ((r: ReplyObservation) => void)[] = [];

  readonly messages: Counter<'queue' | 'listener' | 'outcome'>;
  readonly replyLatency: Histogram<'listener' | 'class'>;
  readonly attemptDuration: Histogram<'queue'>;
  readonly acceptToDelivery: Histogram<'queue'>;
  readonly residence: Histogram<'queue' | 'outcome'>;
  readonly deferralReasons: Counter<'queue' | 'category'>;

  constructor(opts: MetricsOptions) {
    const r = this.registry;
    this.now = opts.now ?? Date.now;
    this.labels = new DestinationLabels(opts.topDestinations, opts.rankEveryMs ?? 60_000);
    if (opts.processMetrics !== false) {
      collectDefaultMetrics({ register: r, prefix: 'streamgate_process_' });
      const loop = registerLoopMetrics(r);
      this.stops.push(() => loop.stop());
    }
    this.messages = new Counter({ name: 'streamgate_messages_total', help: 'Messages per destination (top destinations, the rest "other"), listener (mx, submission, producer, dsn; "" after acceptance) and outcome', labelNames: ['queue', 'listener', 'outcome'], registers: [r] });
    this.replyLatency = new Histogram({ name: 'streamgate_smtp_reply_seconds', help: 'From the end of DATA to the reply, per listener and reply class (2xx, 4xx, 5xx)', labelNames: ['listener', 'class'], buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [r] });
    this.attemptDuration = new Histogram({ name: 'streamgate_delivery_attempt_seconds', help: 'Duration of a delivery attempt (connect, send, reply) per destination', labelNames: ['queue'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers: [r] });
    this.acceptToDelivery = new Histogram({ name: 'streamgate_accept_to_delivery_seconds', help: 'From acceptance into the queue to delivery, per destination', labelNames: ['queue'], buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 900, 3600, 14_400, 86_400], registers: [r] });
    this.residence = new Histogram({ name: 'streamgate_queue_residence_seconds', help: 'Time a message spent queued, whatever its end (delivered, bounced, expired, purged, withdrawn)', labelNames: ['queue', 'outcome'], buckets: [0.01, 0.1, 1, 10, 60, 300, 900, 3600, 14_400, 86_400, 432_000], registers: [r] });
    this.deferralReasons = new Counter({ name: 'streamgate_deferrals_total', help: 'Deferred recipients per destination and classified reason (config/bounces.txt categories)', labelNames: ['queue', 'category'], registers: [r] });
    this.labels.onDrop = (domain) => {
      for (const m of [this.messages, this.attemptDuration, this.acceptToDelivery, this.residence, this.deferralReasons]) removeMatching(m, domain).catch(() => {}); // a series left behind is harmless
    };
  }

  /** Registers metrics of another part in this registry; `collect`, if returned, runs before each scrape. */
  extend(setup: (registry: Registry) => (() => void) | void): void {
    const collect = setup(this.registry);
    if (collect) this.collectors.push(collect);
  }

  /** Told of every SMTP DATA reply (the dashboard's latency series). */
  onReply(fn: (r: ReplyObservation) => void): void {
    this.replyListeners.push(fn);
  }

  /** The queues' lifecycle events become counters and histograms; depth, replicas and nodes are read at each scrape. */
  watchQueues(queues: QueueManager, memoryHighWater: number): void {
    const onEvent = (ev: LifecycleEvent) => this.countEvent(ev);
    const onSettled = (domain: string, outcome: string, seconds: number) => {
      const l = this.labels.label(domain);
      this.residence.observe({ queue: l, outcome }, seconds);
      if (outcome === 'delivered') this.acceptToDelivery.observe({ queue: l }, seconds);
    };
    queues.on('event', onEvent);
    queues.on('settled', onSettled);
    this.stops.push(() => {
      queues.off('event', onEvent);
      queues.off('settled', onSettled);
    });
    const r = this.registry;
    const depth = new Gauge({ name: 'streamgate_queue_depth', help: 'Live messages per destination queue (top destinations, the rest "other") and state', labelNames: ['queue', 'state'], registers: [r] });
    const bytes = new Gauge({ name: 'streamgate_queue_bytes', help: 'Bytes of live messages per destination queue', labelNames: ['queue'], registers: [r] });
    const oldest = new Gauge({ name: 'streamgate_queue_oldest_age_seconds', help: 'Age of the oldest live message per destination queue ("other": the oldest of the rest)', labelNames: ['queue'], registers: [r] });
    const oldestAll = new Gauge({ name: 'streamgate_oldest_message_age_seconds', help: 'Age of the oldest live message of any queue of this gateway', registers: [r] });
    const queuesN = new Gauge({ name: 'streamgate_queues', help: 'Destination queues of this gateway, by status (whole, degraded, closed)', labelNames: ['status'], registers: [r] });
    const replica = new Gauge({ name: 'streamgate_queue_replica_in_sync', help: '1 when the replica is in sync (top destinations only)', labelNames: ['queue', 'node'], registers: [r] });
    const notInSync = new Gauge({ name: 'streamgate_replicas_not_in_sync', help: 'Queue replicas on the node that are not in sync (NG, rebuilding, or the node down)', labelNames: ['node'], registers: [r] });
    const node = new Gauge({ name: 'streamgate_redis_node_up', help: '1 when the Redis node answers heartbeats', labelNames: ['node'], registers: [r] });
    const mem = new Gauge({ name: 'streamgate_redis_node_memory_ratio', help: 'used_memory / maxmemory of the node', labelNames: ['node'], registers: [r] });
    const highWater = new Gauge({ name: 'streamgate_redis_node_memory_high_water_ratio', help: 'queue.memoryHighWater: above it appends are refused', registers: [r] });
    const door = new Gauge({ name: 'streamgate_door_open', help: '1 while the queues take appends (the SMTP door is open); 0: connections turned away', registers: [r] });
    highWater.set(memoryHighWater);
    this.collectors.push(() => {
      const now = queues.now();
      depth.reset();
      bytes.reset();
      oldest.reset();
      replica.reset();
      notInSync.reset();
      queuesN.reset();
      const domains: string[] = [];
      const views = [...queues.views()];
      for (const q of views) domains.push(q.domain);
      const byDomain = new Map(views.map((q) => [q.domain, q]));
      this.labels.rank(now, (d) => {
        const v = byDomain.get(d);
        return v ? v.depth.ready + v.depth.deferred + v.depth.held + v.depth.inflight : 0;
      }, domains);
      let oldestAny = Infinity;
      const ages = new Map<string, number>();
      for (const n of queues.nodes) notInSync.set({ node: n.id }, 0);
      for (const q of views) {
        const l = this.labels.label(q.domain);
        for (const s of STATES) depth.inc({ queue: l, state: s }, q.depth[s]);
        bytes.inc({ queue: l }, q.depth.bytes);
        if (q.depth.oldest !== null) {
          oldestAny = Math.min(oldestAny, q.depth.oldest);
          ages.set(l, Math.min(ages.get(l) ?? Infinity, q.depth.oldest));
        } else if (!ages.has(l)) ages.set(l, Infinity);
        const table = q.table();
        queuesN.inc({ status: table.status });
        for (const rep of table.replicas) {
          const ok = rep.sync === 'Sync' && rep.up;
          if (l !== OTHER) replica.set({ queue: l, node: rep.node }, ok ? 1 : 0);
          if (!ok) notInSync.inc({ node: rep.node });
        }
      }
      for (const [l, t] of ages) oldest.set({ queue: l }, Number.isFinite(t) ? Math.max(0, (now - t) / 1000) : 0);
      oldestAll.set(Number.isFinite(oldestAny) ? Math.max(0, (now - oldestAny) / 1000) : 0);
      for (const n of queues.nodes) {
        const s = n.status();
        node.set({ node: s.id }, s.up ? 1 : 0);
        mem.set({ node: s.id }, s.maxmemory ? s.usedMemory / s.maxmemory : 0);
      }
      door.set(queues.writable ? 1 : 0);
    });
  }

  private countEvent(ev: LifecycleEvent): void {
    const kind = ev.kind;
    if (kind === 'accepted') {
      const d = ev.details as { listener?: string; source?: string; submission?: string };
      const listener = d.listener ?? (d.source === 'producer' ? 'producer' : 'dsn');
      const l = this.labels.count(ev.domain);
      this.messages.inc({ queue: l, listener, outcome: 'accepted' });
      return;
    }
    if (kind !== 'delivered' && kind !== 'deferred' && kind !== 'bounced' && kind !== 'expired') return;
    const l = this.labels.label(ev.domain);
    this.messages.inc({ queue: l, listener: '', outcome: kind });
    const d = ev.details as { durationMs?: number; recipients?: { status: string; category?: string }[] };
    if (typeof d.durationMs === 'number' && kind !== 'expired') this.attemptDuration.observe({ queue: l }, d.durationMs / 1000);
    if (kind === 'deferred') {
      for (const rc of d.recipients ?? []) if (rc.status === 'deferred') this.deferralReasons.inc({ queue: l, category: rc.category ?? 'unknown' });
    }
  }

  /** Why the relay takes nothing from a queue: dead destination MTAs, operator suspends, closed delivery windows. */
  watchRelay(relay: Pick<Relay, 'status' | 'suspended'>): void {
    const dead = new Gauge({ name: 'streamgate_dead_destinations', help: 'Destination MTAs suspended as dead (consecutive connection failures; relay.deadDestination)', registers: [this.registry] });
    const gated = new Gauge({ name: 'streamgate_queues_not_taken', help: 'Destination queues the relay takes nothing from, by reason: dead (all their MTAs dead), operator (suspended), window (delivery window closed)', labelNames: ['reason'], registers: [this.registry] });
    this.collectors.push(() => {
      const st = relay.status();
      dead.set(st.dead.length);
      const n: Record<string, number> = { dead: 0, operator: 0, window: 0 };
      for (const d of st.domains) {
        if (!d.blocked) continue;
        const why = notTaken(d.blocked.reason);
        n[why] = (n[why] ?? 0) + 1;
      }
      // an operator's suspend counts before the relay has looked at the queue again
      const gatedOp = new Set(st.domains.filter((d) => d.blocked?.reason === 'suspended').map((d) => d.domain));
      for (const s of relay.suspended()) if (!gatedOp.has(s.domain)) n.operator = (n.operator ?? 0) + 1;
      for (const [reason, v] of Object.entries(n)) gated.set({ reason }, v);
    });
  }

  /** The SMTP ingress's DATA replies. */
  watchIngress(ingress: EventEmitter): void {
    const onReply = (r: ReplyObservation) => {
      this.replyLatency.observe({ listener: r.listener, class: `${Math.floor(r.code / 100)}xx` }, r.seconds);
      for (const fn of this.replyListeners) fn(r);
    };
    ingress.on('reply', onReply);
    this.stops.push(() => ingress.off('reply', onReply));
  }

  /** The memory budgets (mail, history, events) and what the events publisher dropped or trimmed. */
  watchMemory(memory: () => MemoryReport): void {
    const r = this.registry;
    const budget = new Gauge({ name: 'streamgate_memory_budget_used_bytes', help: 'Estimated memory per budget (mail, history on each pool node; events on the events Redis)', labelNames: ['node', 'budget'], registers: [r] });
    const budgetLimit = new Gauge({ name: 'streamgate_memory_budget_limit_bytes', help: 'Limit of each budget (share of the node maxmemory)', labelNames: ['node', 'budget'], registers: [r] });
    const used = new Gauge({ name: 'streamgate_redis_node_used_memory_bytes', help: 'used_memory of each node (pool and events)', labelNames: ['node'], registers: [r] });
    const histBlocked = new Gauge({ name: 'streamgate_history_over_budget', help: '1 when history is above its budget and held by events not yet sent', labelNames: ['node'], registers: [r] });
    const trimmed = new Counter({ name: 'streamgate_history_trimmed_total', help: 'History events trimmed for the history budget', registers: [r] });
    const lost = new Counter({ name: 'streamgate_events_lost_total', help: 'Unsent (or unarchived) events trimmed from the history because history held by them reached its ceiling (mail is never refused for events)', registers: [r] });
    const archLag = new Gauge({ name: 'streamgate_archive_lag_events', help: 'History events written and not yet archived into Cassandra', registers: [r] });
    const archLagSec = new Gauge({ name: 'streamgate_events_archive_lag_seconds', help: 'Time between the newest history event and the archive cursor (the worst queue)', registers: [r] });
    const archived = new Counter({ name: 'streamgate_archived_events_total', help: 'History events archived into Cassandra', registers: [r] });
    const dropped = new Counter({ name: 'streamgate_events_dropped_total', help: 'Undelivered event jobs dropped for the events budget (events.whenFull: drop)', registers: [r] });
    const paused = new Gauge({ name: 'streamgate_events_publishing_paused', help: '1 while events are not published (budget full with events.whenFull: stop, or the events Redis failing)', registers: [r] });
    const evJobs = new Gauge({ name: 'streamgate_events_jobs', help: 'Jobs in the events queue (waiting, active, finished)', registers: [r] });
    const degraded = new Gauge({ name: 'streamgate_degraded', help: '1 when /health says degraded (budgets; mail still accepted)', registers: [r] });
    let seenTrimmed = 0;
    let seenDropped = 0;
    let seenLost = 0;
    let seenArchived = 0;
    this.collectors.push(() => {
      const m = memory();
      for (const n of m.nodes) {
        budget.set({ node: n.node, budget: 'mail' }, n.mail.bytes);
        budgetLimit.set({ node: n.node, budget: 'mail' }, n.mail.limit);
        budget.set({ node: n.node, budget: 'history' }, n.history.bytes);
        budgetLimit.set({ node: n.node, budget: 'history' }, n.history.limit);
        histBlocked.set({ node: n.node }, n.history.blocked ? 1 : 0);
        used.set({ node: n.node }, n.usedMemory);
      }
      budget.set({ node: m.events.redis, budget: 'events' }, m.events.bytes);
      budgetLimit.set({ node: m.events.redis, budget: 'events' }, m.events.limit);
      used.set({ node: m.events.redis }, m.events.usedMemory);
      if (m.historyTrimmed > seenTrimmed) trimmed.inc(m.historyTrimmed - seenTrimmed);
      seenTrimmed = m.historyTrimmed;
      if (m.events.dropped > seenDropped) dropped.inc(m.events.dropped - seenDropped);
      seenDropped = m.events.dropped;
      if (m.eventsLost > seenLost) lost.inc(m.eventsLost - seenLost);
      seenLost = m.eventsLost;
      if (m.archive) {
        archLag.set(m.archive.lagEvents);
        archLagSec.set(m.archive.lagSeconds);
        if (m.archive.archived > seenArchived) archived.inc(m.archive.archived - seenArchived);
        seenArchived = m.archive.archived;
      }
      paused.set(m.events.paused ? 1 : 0);
      evJobs.set(m.events.jobs);
      degraded.set(m.degraded.length ? 1 : 0);
    });
  }

  /**
   * The events publisher's lag: how long the oldest event not yet published has waited (0 when
   * none waits). Per queue, the time of the first event seen after its cursor; once the cursor
   * moves past it, the cursor's own time stands for the next one (an upper bound).
   */
  watchPublisher(queues: QueueManager, cursorOf: (domain: string) => string | undefined): void {
    const waiting = new Map<string, { since: number; last: string }>();
    const onEvent = (ev: LifecycleEvent) => {
      const hist = ev.id.slice(ev.id.lastIndexOf('/') + 1);
      const w = waiting.get(ev.domain);
      if (w) w.last = hist;
      else waiting.set(ev.domain, { since: ev.at, last: hist });
    };
    queues.on('event', onEvent);
    this.stops.push(() => queues.off('event', onEvent));
    const lag = new Gauge({ name: 'streamgate_events_publisher_lag_seconds', help: 'Age of the oldest lifecycle event not yet handed to the events queue', registers: [this.registry] });
    this.collectors.push(() => {
      const now = this.now();
      let oldest = Infinity;
      for (const [domain, w] of waiting) {
        const cur = cursorOf(domain);
        if (cur && compareIds(w.last, cur) <= 0) {
          waiting.delete(domain);
          continue;
        }
        if (cur) w.since = Math.max(w.since, parseEntryId(cur)[0]);
        oldest = Math.min(oldest, w.since);
      }
      lag.set(Number.isFinite(oldest) ? Math.max(0, (now - oldest) / 1000) : 0);
    });
  }

  /** Brings every gauge up to date (the collectors), then the text for /metrics. */
  async text(): Promise<string> {
    this.collect();
    return this.registry.metrics();
  }

  collect(): void {
    for (const c of this.collectors) c();
  }

  stop(): void {
    for (const s of this.stops.splice(0)) s();
  }
}

/** Removes a destination's series from a metric, whatever its other labels. */
async function removeMatching(metric: Counter<string> | Histogram<string>, domain: string): Promise<void> {
  const { values } = await metric.get();
  for (const v of values) {
    if (v.labels.queue !== domain) continue;
    const labels = Object.fromEntries(Object.entries(v.labels).filter(([k]) => k !== 'le').map(([k, x]) => [k, String(x)]));
    metric.remove(labels);
  }
}
