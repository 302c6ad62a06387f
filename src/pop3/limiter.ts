// Failed logins per client address within a sliding window (config.pop3.auth.perClient, window).
// In memory per gateway, as Dovecot's auth penalty is per process; 0 turns the limit off.

const MAX_ADDRESSES = 100_000;

export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();
  private readonly perClient: number;
  private readonly windowMs: number;
  private readonly now: () => number;

  constructor(opts: { perClient: number; windowMs: number; now?: () => number }) {
    this.perClient = opts.perClient;
    this.windowMs = opts.windowMs;
    this.now = opts.now ?? Date.now;
  }

  private recent(ip: string): number[] {
    const since = this.now() - this.windowMs;
    const list = (this.failures.get(ip) ?? []).filter((t) => t > since);
    if (list.length === 0) this.failures.delete(ip);
    else this.failures.set(ip, list);
    return list;
  }

  /** True when `ip` has used up its failed attempts for the window. */
  blocked(ip: string): boolean {
    return this.perClient > 0 && this.recent(ip).length >= this.perClient;
  }

  fail(ip: string): void {
    const list = this.recent(ip);
    list.push(this.now());
    if (list.length > Math.max(this.perClient, 1)) list.splice(0, list.length - Math.max(this.perClient, 1));
    this.failures.delete(ip);
    if (this.failures.size >= MAX_ADDRESSES) this.failures.delete(this.failures.keys().next().value!);
    this.failures.set(ip, list);
  }
}
