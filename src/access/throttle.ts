// The failed-login throttle, one for every listener: failures per connection and per client
// within a sliding window (smtp.auth, smtp.errors, pop3.auth). Failed logins (smtp.auth,
// pop3.auth) are counted on the pool, shared by every member (SharedFailureThrottle); error
// replies (smtp.errors) in each process.
import { randomBytes } from 'node:crypto';
import type { PoolState } from '../queue/poolState.ts';

const MAX_CLIENTS = 100_000;

export interface FailureLimits {
  perConnection: number;
  perClient: number;
  window: number;
  delay: number;
}

/**
 * Failures per connection and per client, for three limits:
 * - smtp.auth, failed AUTH attempts: a connection that fails `perConnection` times, or a client
 *   that fails `perClient` times within `window`, gets 421 4.7.0 and is disconnected; a client
 *   over its limit is refused at once on its next AUTH until the window passes. Once a client has
 *   failed, every AUTH reply to it waits `delay` first.
 * - smtp.errors, error replies (Postfix's smtpd_hard_error_limit, per client as well):
 *   perConnection is errors.hardLimit; a client over errors.perClient is refused at connect.
 * - pop3.auth, failed POP3 logins (Dovecot's auth penalty, per process): a client that fails
 *   `perClient` times within `window` is refused until the window passes (perConnection and delay 0).
 * Clients are keyed by net/clients.ts (IPv6 per /64). In memory per gateway process; at most
 * 100,000 clients are remembered (the oldest is forgotten first). perClient 0 turns the per-client
 * limit off. SharedFailureThrottle keeps the per-client counts on the pool instead.
 */
export class FailureThrottle {
  private readonly failures = new Map<string, number[]>();
  private readonly limits: FailureLimits;
  private readonly now: () => number;
  private sweeps = 0;

  constructor(limits: FailureLimits, now: () => number = Date.now) {
    this.limits = limits;
    this.now = now;
  }

  private recent(client: string): number[] {
    const list = this.failures.get(client);
    if (!list) return [];
    const since = this.now() - this.limits.window;
    while (list.length && list[0]! <= since) list.shift();
    if (!list.length) this.failures.delete(client);
    return list;
  }

  /** True while the address is over its limit. */
  blocked(client: string): boolean {
    return this.limits.perClient > 0 && this.recent(client).length >= this.limits.perClient;
  }

  /** How long to wait before answering this address. */
  delayFor(client: string): number {
    return this.recent(client).length > 0 ? this.limits.delay : 0;
  }

  /** Records a failure; true when the connection or the address is now over its limit. */
  fail(client: string, failuresOnConnection = 0): boolean {
    const list = this.recent(client);
    list.push(this.now());
    // only the last perClient failures count: older ones need not be kept
    if (list.length > Math.max(this.limits.perClient, 1)) list.splice(0, list.length - Math.max(this.limits.perClient, 1));
    if (!this.failures.has(client) && this.failures.size >= MAX_CLIENTS) this.failures.delete(this.failures.keys().next().value!);
    this.failures.set(client, list);
    if (++this.sweeps % 1000 === 0) for (const k of [...this.failures.keys()]) this.recent(k);
    return (this.limits.perConnection > 0 && failuresOnConnection >= this.limits.perConnection) || (this.limits.perClient > 0 && list.length >= this.limits.perClient);
  }
}

/**
 * The same limits with the per-client failures kept on the pool (lua/failureCount-1.lua, on
 * every node, on the nodes' clocks): every member sees a client's failed logins, whichever member
 * it failed on, through the loss of any one node, and a member whose clock is wrong cannot
 * shorten the window. While fewer than a majority of the nodes answer, this process counts on
 * its own (FailureThrottle).
 */
export class SharedFailureThrottle {
  private readonly local: FailureThrottle;
  private readonly limits: FailureLimits;
  private readonly pool: PoolState | undefined;
  private readonly kind: string;
  private readonly instance = randomBytes(4).toString('hex');
  private seq = 0;

  /** `kind` names the counts (smtp-auth, pop3-auth): each kind is counted apart. Without a pool: this process's counts only. */
  constructor(limits: FailureLimits, pool: PoolState | undefined, kind: string) {
    this.limits = limits;
    this.pool = pool;
    this.kind = kind;
    this.local = new FailureThrottle(limits);
  }

  private key(client: string): string {
    return `sg:fail:{${this.kind}:${client}}`;
  }

  private async shared(client: string, op: 'add' | 'count'): Promise<number | undefined> {
    const keep = Math.max(this.limits.perClient, 1);
    const args = op === 'add' ? [this.key(client), op, this.limits.window, keep, `${this.instance}.${++this.seq}`] : [this.key(client), op, this.limits.window, keep];
    const answers = await this.pool?.run<number>('failureCount', args);
    return answers && Math.max(...answers.map(Number));
  }

  /** Whether the client is over its limit now, and how long to wait before answering it. */
  async check(client: string): Promise<{ blocked: boolean; delay: number }> {
    const n = await this.shared(client, 'count');
    if (n === undefined) return { blocked: this.local.blocked(client), delay: this.local.delayFor(client) };
    return { blocked: this.limits.perClient > 0 && n >= this.limits.perClient, delay: n > 0 ? this.limits.delay : 0 };
  }

  /** Records a failure; true when the connection or the client is now over its limit. */
  async fail(client: string, failuresOnConnection = 0): Promise<boolean> {
    const n = await this.shared(client, 'add');
    if (n === undefined) return this.local.fail(client, failuresOnConnection);
    return (this.limits.perConnection > 0 && failuresOnConnection >= this.limits.perConnection) || (this.limits.perClient > 0 && n >= this.limits.perClient);
  }
}
