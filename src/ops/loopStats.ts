// The gateway's own stalls: how late the event loop ran a timer due every few milliseconds, and how
// long garbage collection stopped it (PerformanceObserver 'gc'), over the interval since the last
// read. The timer is our own rather than monitorEventLoopDelay's: resetting that histogram drops
// the first sample after the reset, so a stall right after a read would go unseen. A reply to a
// sending MTA can be no faster than the loop that writes it, so these figures are what explains a
// reply-latency percentile: the metrics export them, and `npm run bench:smtp` prints them beside
// its percentiles.
import { PerformanceObserver, createHistogram } from 'node:perf_hooks';
import { Gauge, type Registry } from 'prom-client';

export interface LoopSnapshot {
  /** Event-loop delay percentiles over the interval, milliseconds: how late a timer ran. */
  delay: { p50: number; p99: number; p999: number; max: number };
  /** GC pauses over the interval: how many, their sum and the longest, milliseconds. */
  gc: { count: number; totalMs: number; maxMs: number };
  /** Length of the interval, milliseconds. */
  intervalMs: number;
}

/** Period of the probe timer (ms): a stall of this length or more is always seen. */
const RESOLUTION_MS = 5;

export class LoopStats {
  /** How late each probe ran, nanoseconds (at least 1: the histogram records positive integers). */
  private readonly delay = createHistogram();
  private probe: NodeJS.Timeout | undefined;
  private last = 0;
  private readonly observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      this.gcCount++;
      this.gcTotal += e.duration;
      if (e.duration > this.gcMax) this.gcMax = e.duration;
    }
  });
  private gcCount = 0;
  private gcTotal = 0;
  private gcMax = 0;
  private since = performance.now();

  start(): this {
    this.last = performance.now();
    this.probe = setInterval(() => {
      const now = performance.now();
      this.delay.record(Math.max(1, Math.round((now - this.last - RESOLUTION_MS) * 1e6)));
      this.last = now;
    }, RESOLUTION_MS);
    this.probe.unref();
    this.observer.observe({ entryTypes: ['gc'] });
    return this;
  }

  stop(): void {
    clearInterval(this.probe);
    this.observer.disconnect();
  }

  /** The figures since the previous take (or start), and a new interval begins. */
  take(): LoopSnapshot {
    const ms = (ns: number) => (Number.isFinite(ns) ? ns / 1e6 : 0);
    const d = this.delay;
    const none = d.count === 0;
    const snap: LoopSnapshot = {
      delay: {
        p50: none ? 0 : ms(d.percentile(50)),
        p99: none ? 0 : ms(d.percentile(99)),
        p999: none ? 0 : ms(d.percentile(99.9)),
        max: none ? 0 : ms(d.max),
      },
      gc: { count: this.gcCount, totalMs: this.gcTotal, maxMs: this.gcMax },
      intervalMs: performance.now() - this.since,
    };
    d.reset();
    this.gcCount = this.gcTotal = this.gcMax = 0;
    this.since = performance.now();
    return snap;
  }
}

/**
 * Exports a LoopStats on a registry: each scrape reports the interval since the previous scrape
 * (as prom-client's own event-loop lag gauges do), so a scrape every 15 s shows the worst stall of
 * each 15 s.
 */
export function registerLoopMetrics(registry: Registry, stats: LoopStats = new LoopStats().start()): LoopStats {
  // one take per scrape: the first gauge takes the interval's figures, the second (collected
  // right after it in the same scrape, in registration order) reads the same snapshot
  let last: LoopSnapshot = stats.take();
  new Gauge({
    name: 'streamgate_eventloop_delay_seconds',
    help: 'Event-loop delay since the previous scrape, by quantile (1 = the longest)',
    labelNames: ['quantile'],
    registers: [registry],
    collect() {
      last = stats.take();
      const d = last.delay;
      this.set({ quantile: '0.5' }, d.p50 / 1000);
      this.set({ quantile: '0.99' }, d.p99 / 1000);
      this.set({ quantile: '0.999' }, d.p999 / 1000);
      this.set({ quantile: '1' }, d.max / 1000);
    },
  });
  new Gauge({
    name: 'streamgate_gc_pause_seconds',
    help: 'Garbage-collection pauses since the previous scrape: the sum and the longest',
    labelNames: ['stat'],
    registers: [registry],
    collect() {
      const g = last.gc;
      this.set({ stat: 'sum' }, g.totalMs / 1000);
      this.set({ stat: 'max' }, g.maxMs / 1000);
      this.set({ stat: 'count' }, g.count);
    },
  });
  return stats;
}
