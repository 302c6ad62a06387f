// The reply latency as the gateway itself sees it (end of DATA to the reply, from the ingress's
// 'reply' events) and, for the slow replies, whether garbage collection ran while they waited:
// a reply over SLOW_MS counts as behind a GC when a GC pause ended within NEAR_MS before it began
// or fell inside it; "major" when that pause was a mark-compact or a step of its incremental
// marking, else a scavenge. bench:smtp's ingress child keeps one and sends take() with each phase.
import { PerformanceObserver, constants } from 'node:perf_hooks';

export interface ReplyInside {
  /** Replies in the interval. */
  n: number;
  /** Percentiles of the gateway's own reply latency, milliseconds. */
  p50: number;
  p99: number;
  p999: number;
  /** Replies slower than SLOW_MS. */
  slow: number;
  /** Of those, behind a mark-compact (or its incremental marking) / behind scavenges only. */
  behindMajor: number;
  behindMinor: number;
}

export const SLOW_MS = 5;
const NEAR_MS = 20;

export class ReplyGc {
  private replies: { start: number; ms: number }[] = [];
  private pauses: { start: number; end: number; major: boolean }[] = [];
  private readonly observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind ?? 0;
      this.pauses.push({ start: e.startTime, end: e.startTime + e.duration, major: kind !== constants.NODE_PERFORMANCE_GC_MINOR });
    }
  });

  constructor(ingress: { on(event: 'reply', fn: (r: { seconds: number }) => void): unknown }) {
    ingress.on('reply', (r) => this.replies.push({ start: performance.now() - r.seconds * 1000, ms: r.seconds * 1000 }));
    this.observer.observe({ entryTypes: ['gc'] });
  }

  /** The figures since the last take(). */
  take(): ReplyInside {
    const replies = this.replies;
    const pauses = this.pauses;
    this.replies = [];
    this.pauses = [];
    const ms = replies.map((r) => r.ms).sort((a, b) => a - b);
    const q = (f: number) => ms[Math.min(ms.length - 1, Math.floor(f * ms.length))] ?? NaN;
    let slow = 0;
    let behindMajor = 0;
    let behindMinor = 0;
    for (const r of replies) {
      if (r.ms <= SLOW_MS) continue;
      slow++;
      const near = pauses.filter((p) => p.end > r.start - NEAR_MS && p.start < r.start + r.ms);
      if (near.some((p) => p.major)) behindMajor++;
      else if (near.length) behindMinor++;
    }
    return { n: ms.length, p50: q(0.5), p99: q(0.99), p999: q(0.999), slow, behindMajor, behindMinor };
  }
}
