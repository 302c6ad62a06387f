// The deadline of a DATA transfer, a limit smtp-server does not keep by itself. Failed AUTH
// attempts and error replies per client are counted by access/throttle.ts, connections in total
// and per client by net/clients.ts. Each limit has a configuration key under `smtp:` and a
// catalogue reply.

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
