// Group commit: operations that arrive while earlier batches are on their way are gathered and
// sent as one scripted transaction. At most `maxInFlight` batches travel at once, each of at most
// `maxItems` items and about `maxBytes` bytes; the order of arrival is the order of sending.
export interface BatchOptions<I> {
  maxItems: number;
  maxBytes: number;
  maxInFlight: number;
  size: (item: I) => number;
}

interface Pending<I, O> {
  item: I;
  resolve: (o: O) => void;
  reject: (e: unknown) => void;
}

export class Batcher<I, O> {
  private readonly pending: Pending<I, O>[] = [];
  private inFlight = 0;
  private scheduled = false;
  private readonly opts: BatchOptions<I>;
  private readonly run: (items: I[]) => Promise<(O | Error)[]>;

  constructor(opts: BatchOptions<I>, run: (items: I[]) => Promise<(O | Error)[]>) {
    this.opts = opts;
    this.run = run;
  }

  /** Items waiting or being written. */
  get busy(): boolean {
    return this.pending.length > 0 || this.inFlight > 0;
  }

  add(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(() => {
          this.scheduled = false;
          this.pump();
        });
      }
    });
  }

  private take(): Pending<I, O>[] {
    let bytes = 0;
    let n = 0;
    while (n < this.pending.length && n < this.opts.maxItems) {
      bytes += this.opts.size(this.pending[n]!.item);
      n++;
      if (bytes >= this.opts.maxBytes) break;
    }
    return this.pending.splice(0, n);
  }

  private pump(): void {
    while (this.pending.length && this.inFlight < this.opts.maxInFlight) {
      const batch = this.take();
      this.inFlight++;
      this.run(batch.map((b) => b.item))
        .then(
          (results) => batch.forEach((b, i) => (results[i] instanceof Error ? b.reject(results[i]) : b.resolve(results[i] as O))),
          (err: unknown) => batch.forEach((b) => b.reject(err)),
        )
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }
}
