// The retry policy: when a message is tried again after a failed attempt (growing delays, the last
// one repeating, with jitter), the maximum lifetime after which it expires, and the delay warning.
// Pure functions of the time given; the relay asks it when it settles an attempt.
import type { Config } from '../config/schema.ts';

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
