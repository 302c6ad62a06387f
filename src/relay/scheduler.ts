// When a destination queue may be taken from, and how many of its messages at once. The scheduler
// looks at a queue when the queue says it has ready messages ('ready'), when the earliest time it
// was told to wait for comes (one timer for all queues), and on a periodic sweep. A queue is
// blocked (nothing is taken from it) for one of three reasons: an operator suspended it
// (suspend/resume), its delivery window is closed (windows.ts), or all its destination hosts are
// dead destinations (the dispatcher's readiness).
// What it takes it hands to `run`, one message at a time; the relay delivers and settles it.
//
// The queue keeps which deferred messages are due when (QueueView.promoteDue/nextDueAt, part of
// its projection); the scheduler keeps the one timer that wakes it for the next of them.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.ts';
import type { QueuedMessage } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';
import type { Dispatcher } from './dispatcher.ts';
import type { Windows } from './windows.ts';

/** Why a queue is blocked: nothing is taken from it now. */
export type BlockReason = 'suspended' | 'window-closed' | 'dead-destination';

/** One queue's dispatch state, by the queue's ref (QueueView.ref): its domain's, or an adopted queue's of the same domain. */
interface DomainState {
  ref: string;
  domain: string;
  inflight: number;
  pumping: boolean;
  again: boolean;
  /** When to look at the queue again without being told (due time, window opening, dead destination's wait over). */
  wakeAt: number;
  /** Why nothing is taken now, and until when, if so. */
  blocked: { reason: BlockReason; until: number } | undefined;
}

export interface SchedulerOptions {
  queues: QueueManager;
  windows: Windows;
  dispatcher: Pick<Dispatcher, 'readiness' | 'sweep'>;
  /** How many messages of a destination domain may be in flight at once (at most 100 are taken at once). */
  capFor: (domain: string) => number;
  /** Delivers and settles one taken message. */
  run: (msg: QueuedMessage) => Promise<void>;
  now: () => number;
  /** How often every queue is looked at (ms). */
  sweepMs: number;
  log: Logger;
}

const TAKE_MAX = 100;

export class Scheduler {
  private readonly opts: SchedulerOptions;
  private readonly log: Logger;
  private readonly domains = new Map<string, DomainState>();
  /** Operator suspends: domain → who, why, since when. */
  private readonly suspends = new Map<string, { actor: string; reason: string; since: number }>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private wakeTimer: NodeJS.Timeout | undefined;
  private wakeTarget = Infinity;
  private stopping = false;
  private started = false;
  private readonly onReady = (ref: string) => {
    const q = this.opts.queues.view(ref);
    if (q) this.pump(this.state(q.ref, q.domain));
  };

  constructor(opts: SchedulerOptions) {
    this.opts = opts;
    this.log = opts.log;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.opts.queues.on('ready', this.onReady);
    this.sweepTimer = setInterval(() => this.sweep(), this.opts.sweepMs);
    this.sweepTimer.unref();
    this.sweep();
  }

  /** Takes nothing more (what was taken goes on: drained() waits for it). */
  stop(): void {
    this.stopping = true;
    this.opts.queues.off('ready', this.onReady);
    clearInterval(this.sweepTimer);
    clearTimeout(this.wakeTimer);
  }

  /** Resolves once no take is under way and nothing taken is unfinished, or at `deadline` (ms, Date.now()). */
  async drained(deadline: number): Promise<void> {
    const busy = () => [...this.domains.values()].some((d) => d.inflight > 0 || d.pumping);
    while (busy() && Date.now() < deadline) await sleep(20);
  }

  /** Messages taken and not finished yet. */
  get inflight(): number {
    return [...this.domains.values()].reduce((n, d) => n + d.inflight, 0);
  }

  /**
   * An operator's suspend: nothing more is taken from the destination's queue (messages stay
   * queued, their retry times and lifetimes run on) until resume(). Kept by this gateway for as
   * long as it runs.
   */
  suspend(domain: string, actor: string, reason: string): void {
    const d = domain.toLowerCase();
    this.suspends.set(d, { actor, reason, since: this.opts.now() });
    this.log.info({ domain: d, actor, reason }, 'queue suspended');
  }

  /** Ends an operator's suspend; returns false when the destination was not suspended. */
  resume(domain: string, actor: string, reason: string): boolean {
    const d = domain.toLowerCase();
    if (!this.suspends.delete(d)) return false;
    this.log.info({ domain: d, actor, reason }, 'queue resumed');
    for (const q of this.opts.queues.views()) if (q.domain === d) this.pump(this.state(q.ref, q.domain));
    return true;
  }

  /** The destinations an operator suspended. */
  suspended(): { domain: string; actor: string; reason: string; since: number }[] {
    return [...this.suspends].map(([domain, p]) => ({ domain, ...p }));
  }

  /** Looks at every queue now. */
  sweep(): void {
    if (this.stopping) return;
    const now = this.opts.now();
    for (const q of this.opts.queues.views()) {
      const d = this.state(q.ref, q.domain);
      if (!this.suspends.has(d.domain) && (d.wakeAt <= now || (q.readyCount > 0 && !d.blocked))) this.pump(d);
    }
    this.opts.dispatcher.sweep();
  }

  /** A blocked queue looks again now (one of its dead destinations is back, or its probe failed). */
  recheck(domain: string): void {
    for (const d of this.domains.values()) {
      if (d.domain !== domain || !d.blocked) continue;
      d.wakeAt = 0;
      this.pump(d);
    }
  }

  /** Per queue: messages in flight, why nothing is taken (if so) and when it is looked at next. */
  status(): { domain: string; queue: string; inflight: number; blocked: { reason: BlockReason; until: number } | null; wakeAt: number | null }[] {
    return [...this.domains.values()].map((d) => ({ domain: d.domain, queue: d.ref, inflight: d.inflight, blocked: d.blocked ?? null, wakeAt: Number.isFinite(d.wakeAt) ? d.wakeAt : null }));
  }

  private state(ref: string, domain: string): DomainState {
    let d = this.domains.get(ref);
    if (!d) {
      d = { ref, domain, inflight: 0, pumping: false, again: false, wakeAt: 0, blocked: undefined };
      this.domains.set(ref, d);
    }
    return d;
  }

  /** One timer for all queues, set for the earliest time one of them waits for. */
  private arm(at: number): void {
    if (this.stopping || !Number.isFinite(at) || at >= this.wakeTarget) return;
    clearTimeout(this.wakeTimer);
    this.wakeTarget = at;
    const delay = Math.min(Math.max(at - this.opts.now(), 5), 60_000);
    this.wakeTimer = setTimeout(() => {
      this.wakeTarget = Infinity;
      this.sweep();
    }, delay);
    this.wakeTimer.unref();
  }

  /** Whether the queue may be taken from now: open (for one probe only, or not), or closed with why and until when. */
  private blockFor(d: DomainState, now: number): { open: true; probe: boolean } | { open: false; reason: BlockReason; until: number } {
    if (this.suspends.has(d.domain)) return { open: false, reason: 'suspended', until: Infinity };
    const w = this.opts.windows.check(d.domain, now);
    if (!w.open) return { open: false, reason: 'window-closed', until: w.opensAt };
    const r = this.opts.dispatcher.readiness(d.domain, now);
    return r.open ? r : { open: false, reason: 'dead-destination', until: r.until };
  }

  private pump(d: DomainState): void {
    if (this.stopping) return;
    if (d.pumping) {
      d.again = true;
      return;
    }
    d.pumping = true;
    void this.pumpLoop(d)
      .catch((err: unknown) => {
        this.log.warn({ err, domain: d.domain }, 'take failed');
        d.wakeAt = this.opts.now() + 1000;
      })
      .finally(() => {
        d.pumping = false;
        this.arm(d.wakeAt);
        if (d.again && !this.stopping) this.pump(d);
      });
  }

  private async pumpLoop(d: DomainState): Promise<void> {
    const q = this.opts.queues.view(d.ref);
    if (!q) {
      this.domains.delete(d.ref); // an adopted queue deleted once empty
      return;
    }
    do {
      d.again = false;
      const now = this.opts.now();
      q.promoteDue(now);
      const b = this.blockFor(d, now);
      if (!b.open) {
        if (d.blocked?.reason !== b.reason) this.log.info({ domain: d.domain, reason: b.reason, until: b.until }, 'queue blocked');
        d.blocked = { reason: b.reason, until: b.until };
        d.wakeAt = b.until;
        return;
      }
      if (d.blocked) this.log.info({ domain: d.domain }, 'queue unblocked');
      d.blocked = undefined;
      const cap = b.probe ? (d.inflight === 0 ? 1 : 0) : Math.min(TAKE_MAX, this.opts.capFor(d.domain));
      while (d.inflight < cap && q.readyCount > 0 && !this.stopping) {
        const batch = await this.opts.queues.take(d.ref, Math.min(cap - d.inflight, TAKE_MAX));
        if (!batch.length) break;
        for (const m of batch) {
          d.inflight++;
          void this.opts.run(m).finally(() => {
            d.inflight--;
            this.pump(d);
          });
        }
      }
    } while (d.again && !this.stopping);
    d.wakeAt = q.nextDueAt() ?? Infinity;
  }
}
