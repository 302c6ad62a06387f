// Delivery windows per destination domain: the hours of the day in which a queue may be taken
// from. A pure function of the time given; the scheduler (scheduler.ts) asks it.
import { matchDomain } from '../access/domains.ts';

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
