// The history budget: the history streams of all queues on a node together may use
// queue.historyBudget × its maxmemory, however many queues there are. Every few seconds the
// manager's tally (events × their sampled size: no scan) is compared with it; above it, the oldest
// events across the node's queues are trimmed first, to 90% of the budget: one cut-off time for
// all queues (chosen from each queue's event count and time span), each queue trimmed below it
// with XTRIM MINID in a queue write on both replicas (lua/trimHistory-4.lua). Never past the
// lifecycle events cursor (DESIGN, invariant 12): a queue's events not yet sent stay. When that
// leaves the budget exceeded (the events publisher stopped for a full events queue, or failing),
// the history stays whole and the gateway says it is degraded. Held history may grow up to its
// ceiling: the share of the node that mail's budget (and the events budget, on a shared node)
// leaves below queue.memoryHighWater, the mark at which appends of mail are refused. Past the
// ceiling, mail wins: the oldest events are trimmed although they were not sent, counted as lost
// (streamgate_events_lost_total, an error in the log), so that events never turn mail away.
// Trimmed events are counted.
//
// Once the history is archived (events/archive.ts, QueueManager option `archived`), the scripts no
// longer cut each stream at queue.historyMaxLength: cap() does, below the lower of the archive's
// cursor and the events cursor (the `cursorOf` given), after each archived block and every tick.
// It cuts at the id of an event the queue wrote with about the cap's number of events from it on
// (Queue.historyCut(): the queue keeps every 1,000th id, so the cap holds up to 1,000 more), by
// XTRIM MINID, which frees whole stream nodes and reads no entry; the exact way by count (reading
// entries on the node's one thread, on both replicas at once) only for events written before the
// process started.
import type { Logger } from '../log.ts';
import type { QueueManager } from './manager.ts';
import type { RedisNode } from './node.ts';
import type { Queue } from './queue.ts';
import { compareIds, idAfter, lowestCursor, parseEntryId } from '../message/ids.ts';

const TICK_MS = 5000;
/** Trims take history down to this share of its budget. */
const TRIM_TO = 0.9;

export interface HistoryNodeStatus {
  node: string;
  bytes: number;
  limit: number;
  /** Over budget and nothing more may be trimmed: events not yet sent hold it. */
  blocked: boolean;
}

export class HistoryBudget {
  private readonly queues: QueueManager;
  private readonly share: number;
  private readonly cursorOf: (domain: string) => string | undefined;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private readonly ceiling: number;
  trimmed = 0;
  /** Events cut by cap() (queue.historyMaxLength once archived). */
  capped = 0;
  /** Events trimmed before they were sent (the ceiling was reached with publishing stopped). */
  lost = 0;
  private readonly blocked = new Set<string>();
  private readonly capTo: number;
  private readonly capping = new Set<string>();

  /**
   * `cursorOf`: the last event of a queue every consumer of the history has (the events publisher,
   * and the archive when there is one); `capTo`: queue.historyMaxLength when the history is
   * archived (the scripts do not cap it then), else 0; `ceiling`: the share of the node held
   * history may reach before unsent events are trimmed too (memoryHighWater − mailBudget
   * [− events.budget on a shared node]), at least `share`; none by default.
   */
  constructor(queues: QueueManager, share: number, cursorOf: (domain: string) => string | undefined, log: Logger, opts: { capTo?: number; ceiling?: number } = {}) {
    this.queues = queues;
    this.share = share;
    this.ceiling = Math.max(share, opts.ceiling ?? Infinity);
    this.cursorOf = cursorOf;
    this.log = log.child({ component: 'history' });
    this.capTo = opts.capTo ?? 0;
    // an idle queue is deleted only once every consumer of its history has all of it
    queues.holdHistory((ref, last) => {
      const cursor = cursorOf(ref);
      return !!last && (!cursor || compareIds(cursor, last) < 0);
    });
  }

  /** Cuts a queue's history to capTo events, never past its cursor; returns how many went. */
  async cap(domain: string): Promise<number> {
    const q = this.queues.queues.get(domain);
    const cursor = this.cursorOf(domain);
    if (!this.capTo || !q || !cursor || q.histLen <= this.capTo || !q.appendable || this.capping.has(domain)) return 0;
    this.capping.add(domain);
    let total = 0;
    try {
      const bound = idAfter(cursor);
      for (let n = -1; n !== 0 && q.histLen > this.capTo; ) {
        // by an id the queue kept (XTRIM MINID: whole stream nodes, nothing read) when it can tell
        // one, else by count (the oldest events, at most 1,000 a call)
        const cut = q.historyCut(this.capTo);
        if (cut === null) break;
        n = cut === undefined ? await q.trimHistory(bound, this.capTo) : await q.trimHistory(lowestCursor(cut, bound)!);
        total += n;
      }
    } catch (err) {
      this.log.warn({ err, queue: q.name }, 'history trim failed');
    } finally {
      this.capping.delete(domain);
    }
    this.capped += total;
    return total;
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  status(): HistoryNodeStatus[] {
    return this.queues.nodes.map((n) => ({ node: n.id, bytes: n.historyBytes, limit: Math.floor(n.maxmemory * this.share), blocked: this.blocked.has(n.id) }));
  }

  /** One round: sample, tally, trim where a node is over its history budget. */
  async tick(): Promise<number> {
    if (this.running) return 0;
    this.running = true;
    let total = 0;
    try {
      for (const d of this.queues.refs()) await this.cap(d);
      await this.queues.sampleHistory(3).catch(() => {});
      this.queues.tallyMemory();
      for (const node of this.queues.nodes) {
        const limit = node.maxmemory * this.share;
        if (!node.up || !limit || node.historyBytes <= limit) {
          this.blocked.delete(node.id);
          continue;
        }
        total += await this.trimNode(node, node.historyBytes - limit * TRIM_TO, false);
        if (this.blocked.has(node.id)) {
          this.queues.tallyMemory();
          const ceiling = node.maxmemory * this.ceiling;
          if (node.historyBytes > ceiling) {
            const lost = await this.trimNode(node, node.historyBytes - limit * TRIM_TO, true);
            this.lost += lost;
            total += lost;
            this.log.error({ node: node.id, lost, lostTotal: this.lost, ceiling: Math.floor(ceiling) }, 'history held by unsent events reached its ceiling: the oldest unsent events trimmed so that mail is not refused (events lost)');
          }
        }
      }
      if (total) this.queues.tallyMemory();
    } finally {
      this.running = false;
    }
    return total;
  }

  /** Trims the node's oldest events across queues; past the events cursors only when `pastCursor`. */
  private async trimNode(node: RedisNode, excessBytes: number, pastCursor: boolean): Promise<number> {
    const now = this.queues.now();
    const perEvent = this.queues.historyEventBytes;
    const want = Math.ceil(excessBytes / perEvent);
    const cands: { q: Queue; first: number; len: number; upTo: number; cursor: string }[] = [];
    for (const q of this.queues.queues.values()) {
      if (!q.replicas.some((r) => r.node === node) || q.histLen === 0 || !q.appendable) continue;
      const cursor = pastCursor ? `${now + 1}-0` : this.cursorOf(q.ref);
      if (!cursor) continue;
      cands.push({ q, first: q.histFirstMs || now, len: q.histLen, upTo: parseEntryId(cursor)[0] + 1, cursor });
    }
    // events older than t in a queue, assuming they spread evenly over its span
    const older = (t: number) => {
      let n = 0;
      for (const c of cands) {
        const end = Math.min(t, c.upTo);
        if (end > c.first) n += c.len * Math.min(1, (end - c.first) / Math.max(1, now - c.first));
      }
      return n;
    };
    const possible = older(now + 1);
    let lo = Math.min(now, ...cands.map((c) => c.first));
    let hi = now + 1;
    for (let i = 0; i < 40 && hi - lo > 1; i++) {
      const mid = Math.floor((lo + hi) / 2);
      if (older(mid) >= want) hi = mid;
      else lo = mid;
    }
    let trimmed = 0;
    for (const c of cands) {
      if (c.first >= Math.min(hi, c.upTo)) continue;
      const [cm, cs] = parseEntryId(c.cursor);
      const minId = hi <= cm ? `${hi}-0` : `${cm}-${cs + 1}`; // never past the cursor
      trimmed += await c.q.trimHistory(minId).catch((err: unknown) => {
        this.log.warn({ err, queue: c.q.name }, 'history trim failed');
        return 0;
      });
    }
    this.trimmed += trimmed;
    if (pastCursor) return trimmed;
    const blocked = possible < want;
    if (blocked && !this.blocked.has(node.id)) {
      this.log.warn({ node: node.id, bytes: node.historyBytes, limit: Math.floor(node.maxmemory * this.share) }, 'history over its budget and held by events not yet sent (the events cursor): kept whole, mail still accepted');
    }
    if (blocked) this.blocked.add(node.id);
    else this.blocked.delete(node.id);
    if (trimmed) this.log.info({ node: node.id, trimmed, before: new Date(hi).toISOString(), queues: cands.length }, 'history trimmed oldest-first across queues (queue.historyBudget)');
    return trimmed;
  }
}
