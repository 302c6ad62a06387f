// The ingress's limits that smtp-server does not keep by itself: failed AUTH attempts and error
// replies per connection and per client (FailureGuard), and the deadline of a DATA transfer.
// Connections in total and per client are counted by net/clients.ts. Each limit has a
// configuration key under `smtp:` and a catalogue reply.

export interface FailureLimits {
  perConnection: number;
  perClient: number;
  window: number;
  delay: number;
}

/**
 * Failures per connection and per client, for two limits:
 * - smtp.auth, failed AUTH attempts: a connection that fails `perConnection` times, or a client
 *   that fails `perClient` times within `window`, gets 421 4.7.0 and is disconnected; a client
 *   over its limit is refused at once on its next AUTH until the window passes. Once a client has
 *   failed, every AUTH reply to it waits `delay` first.
 * - smtp.errors, error replies (Postfix's smtpd_hard_error_limit, per client as well):
 *   perConnection is errors.hardLimit; a client over errors.perClient is refused at connect.
 * Clients are keyed by net/clients.ts (IPv6 per /64).
 */
export class FailureGuard {
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
  fail(client: string, failuresOnConnection: number): boolean {
    const list = this.recent(client);
    list.push(this.now());
    this.failures.set(client, list);
    if (++this.sweeps % 1000 === 0) for (const k of [...this.failures.keys()]) this.recent(k);
    return (this.limits.perConnection > 0 && failuresOnConnection >= this.limits.perConnection) || (this.limits.perClient > 0 && list.length >= this.limits.perClient);
  }
}

export interface Transfer {
  started: number;
  /** Bytes received so far. */
  bytes(): number;
  /** Called once when the deadline passes. */
  cut(): void;
}

/**
 * The deadline of a DATA transfer, Postfix's smtpd_per_request_deadline with
 * smtpd_min_data_rate: the client has `dataTimeout` plus one second for every `minDataRate`
 * bytes it has sent. A client that trickles slower than minDataRate falls behind that budget
 * and is cut off (421 4.4.2); one that keeps up is never cut, however large its message.
 * With minDataRate 0 the budget is dataTimeout for the whole transfer.
 * One timer for all transfers, ticking while there are any.
 */
export class DataDeadlines {
  private readonly transfers = new Set<Transfer>();
  private timer: NodeJS.Timeout | undefined;
  private readonly dataTimeout: number;
  private readonly minDataRate: number;
  private readonly tick: number;
  private readonly now: () => number;

  constructor(dataTimeout: number, minDataRate: number, now: () => number = Date.now) {
    this.dataTimeout = dataTimeout;
    this.minDataRate = minDataRate;
    this.tick = Math.max(50, Math.min(1000, Math.floor(dataTimeout / 4)));
    this.now = now;
  }

  /** The budget in ms after `bytes` bytes. */
  budget(bytes: number): number {
    return this.dataTimeout + (this.minDataRate > 0 ? (bytes / this.minDataRate) * 1000 : 0);
  }

  add(t: Transfer): () => void {
    this.transfers.add(t);
    this.timer ??= setInterval(() => this.check(), this.tick).unref();
    return () => {
      this.transfers.delete(t);
      if (!this.transfers.size && this.timer) {
        clearInterval(this.timer);
        this.timer = undefined;
      }
    };
  }

  private check(): void {
    const now = this.now();
    for (const t of [...this.transfers]) {
      if (now - t.started > this.budget(t.bytes())) {
        this.transfers.delete(t);
        t.cut();
      }
    }
    if (!this.transfers.size && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.transfers.clear();
  }
}
