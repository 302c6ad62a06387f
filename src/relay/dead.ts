// Dead destinations: after `failures` consecutive failures to reach a destination MTA (no SMTP
// session: refused, timed out, dropped) it is dead for `relay.deadDestination.suspend`. While it
// is dead no message is taken for it: messages wait in their queue without an attempt being
// counted, so the wait does not stack with their own retry schedule. When the wait ends, one
// probe message goes; success brings the destination back, failure makes it dead again for twice
// as long (at most 8 × `suspend`). (An operator's suspend of a queue is another thing:
// scheduler.ts.)
import type { Config } from '../config/schema.ts';

export type DestState = { state: 'up' } | { state: 'dead'; until: number } | { state: 'probe' } | { state: 'probing' };

interface Entry {
  failures: number;
  until: number;
  /** Times dead in a row without a success: the wait doubles with each. */
  rounds: number;
  probing: boolean;
}

export class DeadDestinations {
  private readonly entries = new Map<string, Entry>();
  private readonly cfg: Config['relay']['deadDestination'];
  private readonly now: () => number;

  constructor(cfg: Config['relay']['deadDestination'], now: () => number) {
    this.cfg = cfg;
    this.now = now;
  }

  /** up; dead until; probe (the wait is over and no probe is out); probing (one is out). */
  state(dest: string): DestState {
    const e = this.entries.get(dest);
    if (!e || e.until === 0) return { state: 'up' };
    if (e.probing) return { state: 'probing' };
    if (this.now() < e.until) return { state: 'dead', until: e.until };
    return { state: 'probe' };
  }

  /** True when the caller may send (up, or it has just claimed the single probe). */
  claim(dest: string): boolean {
    const e = this.entries.get(dest);
    if (!e || e.until === 0) return true;
    if (e.probing || this.now() < e.until) return false;
    e.probing = true;
    return true;
  }

  /** A session was established (whatever the replies): the destination is alive. */
  success(dest: string): boolean {
    const e = this.entries.get(dest);
    this.entries.delete(dest);
    return !!e && e.until !== 0;
  }

  /** A failure to reach it; returns true when this failure makes it dead. */
  failure(dest: string): boolean {
    const e = this.entries.get(dest) ?? { failures: 0, until: 0, rounds: 0, probing: false };
    this.entries.set(dest, e);
    e.failures++;
    if (e.probing || (e.until === 0 && e.failures >= this.cfg.failures)) {
      e.probing = false;
      e.until = this.now() + this.cfg.suspend * Math.min(8, 2 ** e.rounds);
      e.rounds++;
      return true;
    }
    return false;
  }

  /** A probe that ended without telling anything (the relay stopped): let another go. */
  unclaim(dest: string): void {
    const e = this.entries.get(dest);
    if (e) e.probing = false;
  }

  /** Dead destinations, for status pages. */
  list(): { dest: string; until: number; failures: number; probing: boolean }[] {
    return [...this.entries].filter(([, e]) => e.until !== 0).map(([dest, e]) => ({ dest, until: e.until, failures: e.failures, probing: e.probing }));
  }
}
