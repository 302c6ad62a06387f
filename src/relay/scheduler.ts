// When a message goes: the retry schedule (growing delays, the last one repeating, with jitter),
// the maximum lifetime after which a message expires, the delay warning, and delivery windows per
// destination. Pure functions of an injected clock; the dispatcher asks, this answers.
import type { Config } from '../config/schema.ts';
import { matchDomain } from './routes.ts';

export type RetryConfig = Config['relay']['retry'];

export class RetryPolicy {
  private readonly cfg: RetryConfig;
  private readonly random: () => number;

  constructor(cfg: RetryConfig, random: () => number = Math.random) {
    this.cfg = cfg;
    this.random = random;
  }

  /** Delay after the `attempts`-th failed attempt (1 = the first): schedule[attempts-1], then the last entry, ± jitter. */
  delay(attempts: number): number {
    const s = this.cfg.schedule;
    const base = s[Math.min(Math.max(attempts, 1), s.length) - 1]!;
    const j = this.cfg.jitter;
    return Math.max(0, Math.round(base * (1 + j * (2 * this.random() - 1))));
  }

  expiresAt(acceptedAt: number): number {
    return acceptedAt + this.cfg.maxLifetime;
  }

  expired(acceptedAt: number, now: number): boolean {
    return now >= this.expiresAt(acceptedAt);
  }

  /**
   * After a failed attempt: when to try again, or expired when the next try would fall after the
   * maximum lifetime (the message is returned now rather than held for one last try).
   */
  next(attempts: number, acceptedAt: number, now: number): { at: number } | { expired: true } {
    const at = now + this.delay(attempts);
    return at >= this.expiresAt(acceptedAt) ? { expired: true } : { at };
  }

  /**
   * Whether a deferral at `now` is late enough for the delay warning (warnAfter after acceptance;
   * 0 turns warnings off). The relay sends it once per message (a marker in Redis).
   */
  warnDue(acceptedAt: number, now: number): boolean {
    const w = this.cfg.warnAfter;
    return w > 0 && now >= acceptedAt + w;
  }
}

type Range = [start: number, end: number]; // minutes of the day, end exclusive, end < start wraps

/** Delivery windows per destination domain ("06:00-24:00"), read in one IANA time zone. */
export class Windows {
  private readonly table = new Map<string, Range[]>();
  private readonly fmt: Intl.DateTimeFormat;

  constructor(windows: Record<string, string[]>, timeZone: string) {
    try {
      this.fmt = new Intl.DateTimeFormat('en-GB', { timeZone, hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
    } catch {
      throw new RangeError(`relay.timezone: expected an IANA time zone like "UTC" or "Europe/Berlin", got ${JSON.stringify(timeZone)}`);
    }
    for (const [domain, list] of Object.entries(windows)) {
      this.table.set(
        domain.toLowerCase(),
        list.map((w) => {
          const [a, b] = w.split('-') as [string, string];
          return [minutes(a), minutes(b)] as Range;
        }),
      );
    }
  }

  /** Open, or closed until when (ms on the same clock as `now`). Domains without windows are always open. */
  check(domain: string, now: number): { open: true } | { open: false; opensAt: number } {
    const ranges = matchDomain(this.table, domain)?.value;
    if (!ranges) return { open: true };
    const parts = Object.fromEntries(this.fmt.formatToParts(new Date(now)).map((p) => [p.type, p.value]));
    const minute = Number(parts.hour) * 60 + Number(parts.minute);
    const intoMinute = Number(parts.second) * 1000 + (((now % 1000) + 1000) % 1000);
    let soonest = Infinity;
    for (const [start, end] of ranges) {
      const inside = start < end ? minute >= start && minute < end : minute >= start || minute < end;
      if (inside || start === end) return { open: true };
      soonest = Math.min(soonest, (start - minute + 1440) % 1440);
    }
    return { open: false, opensAt: now + soonest * 60_000 - intoMinute };
  }
}

function minutes(hhmm: string): number {
  const [h, m] = hhmm.split(':').map(Number) as [number, number];
  return h * 60 + m;
}
