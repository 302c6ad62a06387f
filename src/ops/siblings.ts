// The other workers of one `streamgate start` (gateway.workers above 1), as the ops listener of
// the worker that takes a request sees them: it asks, the primary passes the question to every
// other worker that is up and gathers their answers (src/cli/workers.ts, askRouter), so that
// /api/queues lists every worker's queues, /metrics sums them, and an action on a message or a
// queue that the answering worker does not hold reaches the one that does.
//
// The messages, over node:cluster's IPC channel (JSON):
//   worker -> primary   { streamgate: 'ask', id, what, args }
//   primary -> worker   { streamgate: 'query', id, what, args }
//   worker -> primary   { streamgate: 'answer', id, value } or { ..., error }
//   primary -> worker   { streamgate: 'answers', id, answers: [{ gateway, value } | { gateway, error }] }
import cluster from 'node:cluster';

/** How long the primary waits for the other workers' answers; one that has not answered by then is listed with an error. */
export const ASK_TIMEOUT_MS = 3000;

export interface SiblingAnswer {
  gateway: string;
  value?: unknown;
  error?: string;
}

export interface SiblingMessage {
  streamgate: 'ask' | 'query' | 'answer' | 'answers';
  id: number;
  what?: string;
  args?: unknown;
  value?: unknown;
  error?: string;
  answers?: SiblingAnswer[];
}

export const isSiblingMessage = (m: unknown): m is SiblingMessage => {
  const s = (m as SiblingMessage | undefined)?.streamgate;
  return s === 'ask' || s === 'query' || s === 'answer' || s === 'answers';
};

export class Siblings {
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (a: SiblingAnswer[]) => void; timer: NodeJS.Timeout }>();
  private readonly handlers = new Map<string, (args: unknown) => unknown>();
  private readonly onMessage = (m: unknown) => {
    if (!isSiblingMessage(m)) return;
    if (m.streamgate === 'answers') {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      p.resolve(m.answers ?? []);
    } else if (m.streamgate === 'query') void this.answer(m);
  };

  constructor() {
    if (this.active) process.on('message', this.onMessage);
  }

  /** True in a worker of several: there are others to ask. */
  get active(): boolean {
    return cluster.isWorker && typeof process.send === 'function';
  }

  /** What this worker answers to `what` when another asks. */
  handle(what: string, fn: (args: unknown) => unknown): void {
    this.handlers.set(what, fn);
  }

  /** Every other worker's answer to `what` (none when this process is not one of several workers). */
  ask(what: string, args?: unknown): Promise<SiblingAnswer[]> {
    if (!this.active || !process.connected) return Promise.resolve([]); // no primary to ask (it is gone)
    const id = ++this.seq;
    return new Promise((resolve) => {
      // the primary answers within ASK_TIMEOUT_MS; this bound only covers a primary that is gone
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve([]);
      }, ASK_TIMEOUT_MS * 2);
      timer.unref();
      this.pending.set(id, { resolve, timer });
      process.send!({ streamgate: 'ask', id, what, args } satisfies SiblingMessage);
    });
  }

  private async answer(m: SiblingMessage): Promise<void> {
    const fn = this.handlers.get(m.what ?? '');
    let reply: SiblingMessage;
    try {
      if (!fn) throw new Error(`no answer to ${JSON.stringify(m.what)}`);
      reply = { streamgate: 'answer', id: m.id, value: await fn(m.args) };
    } catch (err) {
      reply = { streamgate: 'answer', id: m.id, error: err instanceof Error ? err.message : String(err) };
    }
    if (process.connected) process.send!(reply);
  }

  stop(): void {
    process.off('message', this.onMessage);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.resolve([]);
      this.pending.delete(id);
    }
  }
}
