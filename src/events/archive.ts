// The event log: every history event of every queue, archived whole into Cassandra (tables
// history, message_events and archive_cursors, described in src/mailbox/schema.ts) before Redis may
// trim it (DESIGN, invariant 12). Per queue a durable cursor (the last event archived, in
// archive_cursors) is read once, then the history stream is read after it in blocks, each block
// written (history rows in unlogged batches of one partition, the message index in unlogged
// batches of several messages' rows) and only then the cursor moved. A row's key is the event's position, so an event
// archived again after a crash overwrites its own row: every event is in the log exactly once.
// The history is trimmed (history budget, queue.historyMaxLength) only below cursorOf().
//
// Events written but not yet archived are kept in memory as the hot part of the message index
// (message id -> its events; at most HOT_MAX events), so one message's story is two lookups
// whatever its age: this map, then the message's partition of message_events. Events still in
// Redis from before a restart join the index as the archive reaches them, within a block or two.
//
// While Cassandra does not answer nothing is archived and nothing is trimmed: the history grows,
// the history budget says so (degraded), mail goes on; the lag (events and seconds behind) is a
// metric.
import { EventEmitter } from 'node:events';
import type cassandra from 'cassandra-driver';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { consistencyFrom, type Consistency } from '../mailbox/client.ts';
import type { MailStore } from '../mailbox/store.ts';
import { type LifecycleEvent, type LifecycleKind } from '../message/types.ts';
import type { HistoryEntry, QueueManager } from '../queue/manager.ts';
import { splitQueueName } from '../queue/placement.ts';
import { compareIds, eventId, histIdOf, parseEntryId } from '../message/ids.ts';

/** A history partition holds one hour of a queue's events. */
export const BUCKET_MS = 3_600_000;
/** Events read from a history stream per block. */
const BLOCK = 2000;
/** Rows per unlogged batch, and their bytes at most (Cassandra refuses batches over 50 KB by default). */
const BATCH_ROWS = 100;
const BATCH_BYTES = 24 * 1024;
/** Statements in flight at once. */
const PARALLEL = 64;
/**
 * A queue with new events is archived this soon (events gathered meanwhile go in one block: one
 * read, one cursor write and one history trim per block, not per event); every queue is looked at
 * every TICK_MS.
 */
const SOON_MS = 250;
const TICK_MS = 1000;
/** Events held in the hot index at most (while Cassandra lags, the newest beyond it are found once archived). */
const HOT_MAX = 500_000;

export interface ArchiveStatus {
  /** Events archived since start. */
  archived: number;
  /** Events written to the histories and not yet archived (as this process saw them). */
  lagEvents: number;
  /** Time between the newest event and the archive's cursor, seconds, the worst queue. */
  lagSeconds: number;
  /** Why the archive does not advance, while it does not. */
  failing: string | undefined;
}

const bucketOf = (ms: number) => ms - (ms % BUCKET_MS);

export class HistoryArchive extends EventEmitter {
  private readonly queues: QueueManager;
  private readonly store: MailStore;
  private readonly logger: Logger;
  /** Reads of the log this archive writes. */
  readonly log: EventLog;
  private readonly cl: Consistency;
  private readonly ks: string;
  private readonly gateway: string;
  /** The last event archived per queue, once read from archive_cursors. */
  private readonly cursors = new Map<string, string>();
  private readonly loaded = new Set<string>();
  /** The newest event seen per queue, and events seen but not archived. */
  private readonly newest = new Map<string, string>();
  private readonly pending = new Map<string, number>();
  private readonly hot = new Map<string, LifecycleEvent[]>();
  private hotSize = 0;
  private readonly dirty = new Set<string>();
  private soon: NodeJS.Timeout | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private failing: string | undefined;
  archived = 0;
  private readonly onEvent = (ev: LifecycleEvent) => this.seen(ev);

  constructor(queues: QueueManager, store: MailStore, config: Config, log: Logger) {
    super();
    this.queues = queues;
    this.store = store;
    this.logger = log.child({ component: 'archive' });
    this.cl = consistencyFrom(config);
    this.ks = store.keyspace;
    this.gateway = queues.gatewayId;
    this.log = new EventLog(store, config, queues.gatewayId);
  }

  start(): void {
    this.stopped = false;
    this.queues.on('event', this.onEvent);
    for (const d of this.queues.refs()) this.dirty.add(d);
    this.ticker = setInterval(() => {
      for (const d of this.queues.refs()) this.dirty.add(d);
      void this.kick();
    }, TICK_MS);
    this.ticker.unref();
    void this.kick();
  }

  /** Archives what is left (while Cassandra answers), then stops. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.queues.off('event', this.onEvent);
    clearInterval(this.ticker);
    clearTimeout(this.soon);
    await this.running;
    for (const d of this.queues.refs()) this.dirty.add(d);
    await this.pump();
  }

  /** Archives every queue up to its newest event now (tests, replay); throws while the archive cannot write. */
  async drain(): Promise<void> {
    while (this.running) await this.running;
    for (const d of this.queues.refs()) this.dirty.add(d);
    await this.kick();
    if (this.failing) throw new Error(`the archive does not advance: ${this.failing}`);
  }

  /** The last event of `domain` the archive confirmed: history up to it may be trimmed. */
  cursorOf(domain: string): string | undefined {
    return this.cursors.get(domain);
  }

  status(): ArchiveStatus {
    let lagEvents = 0;
    let lagMs = 0;
    for (const [d, n] of this.newest) {
      const c = this.cursors.get(d);
      if (c && compareIds(n, c) <= 0) continue;
      lagEvents += this.pending.get(d) ?? 0;
      lagMs = Math.max(lagMs, parseEntryId(n)[0] - (c ? parseEntryId(c)[0] : parseEntryId(n)[0]));
    }
    return { archived: this.archived, lagEvents, lagSeconds: lagMs / 1000, failing: this.failing };
  }

  private seen(ev: LifecycleEvent): void {
    const histId = histIdOf(ev.id);
    const cur = this.newest.get(ev.domain);
    if (!cur || compareIds(histId, cur) > 0) this.newest.set(ev.domain, histId);
    this.pending.set(ev.domain, (this.pending.get(ev.domain) ?? 0) + 1);
    if (ev.messageId && this.hotSize < HOT_MAX) {
      const list = this.hot.get(ev.messageId);
      if (list) list.push(ev);
      else this.hot.set(ev.messageId, [ev]);
      this.hotSize++;
    }
    this.dirty.add(ev.domain);
    this.later();
  }

  private kick(): Promise<void> {
    if (this.running) return this.running;
    if (this.stopped) return Promise.resolve();
    this.running = this.pump().finally(() => {
      this.running = undefined;
      if (this.dirty.size && !this.stopped) this.later();
    });
    return this.running;
  }

  private later(): void {
    this.soon ??= setTimeout(() => {
      this.soon = undefined;
      void this.kick();
    }, SOON_MS).unref();
  }

  private async pump(): Promise<void> {
    const domains = [...this.dirty];
    this.dirty.clear();
    for (const d of domains) {
      try {
        await this.archiveQueue(d);
        if (this.failing) this.logger.info({ queue: d }, 'archive advancing again');
        this.failing = undefined;
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        if (!this.failing) this.logger.warn({ err, queue: d }, 'history not archived: the history is kept whole in Redis until the archive answers');
        this.failing = reason;
        return; // every queue is tried again on the next tick
      }
    }
  }

  private async archiveQueue(domain: string): Promise<void> {
    if (!this.queues.view(domain)) return;
    // rows and cursors by the queue's name: an adopted queue's events go on in the partitions and
    // from the cursor of the gateway it came from (its event ids and history ids are that queue's)
    const at = splitQueueName(this.queues.nameOf(domain));
    await this.store.connect();
    if (!this.loaded.has(domain)) {
      const rs = await this.store.client.execute(`SELECT hist FROM ${this.ks}.archive_cursors WHERE gateway = ? AND domain = ?`, [at.origin, at.domain], { prepare: true, consistency: this.cl.read });
      const hist = rs.first()?.get('hist') as string | undefined;
      if (hist) this.cursors.set(domain, hist);
      this.loaded.add(domain);
    }
    for (;;) {
      const cursor = this.cursors.get(domain);
      const rows = await this.queues.historySince(domain, cursor, BLOCK);
      if (!rows.length) return;
      await this.write(at, rows);
      const last = rows[rows.length - 1]!.histId;
      // the first block also records the hour of the queue's first event: where reads by time start
      const [q, params] = cursor
        ? [`INSERT INTO ${this.ks}.archive_cursors (gateway, domain, hist, updated) VALUES (?, ?, ?, ?)`, [at.origin, at.domain, last, new Date()]]
        : [`INSERT INTO ${this.ks}.archive_cursors (gateway, domain, hist, first_bucket, updated) VALUES (?, ?, ?, ?, ?)`, [at.origin, at.domain, last, new Date(bucketOf(parseEntryId(rows[0]!.histId)[0])), new Date()]];
      await this.store.client.execute(q, params, { prepare: true, consistency: this.cl.write, isIdempotent: true });
      this.cursors.set(domain, last);
      this.archived += rows.length;
      this.pending.set(domain, Math.max(0, (this.pending.get(domain) ?? 0) - rows.length));
      this.cool(domain, rows);
      this.emit('archived', domain);
      if (rows.length < BLOCK) return;
    }
  }

  /** Archived events leave the hot index. */
  private cool(domain: string, rows: HistoryEntry[]): void {
    for (const r of rows) {
      const list = this.hot.get(r.messageId);
      if (!list) continue;
      const id = eventId(this.gateway, domain, r.histId);
      const i = list.findIndex((x) => x.id === id);
      if (i < 0) continue;
      list.splice(i, 1);
      this.hotSize--;
      if (!list.length) this.hot.delete(r.messageId);
    }
  }

  /**
   * Writes a block of one queue's history: the history rows in unlogged batches of one partition
   * (an hour), the index rows in unlogged batches of several messages' partitions (fewer requests
   * for the gateway to encode; each row stands alone, a batch only carries them together). The
   * details go as stored, never parsed here.
   */
  private async write(at: { origin: string; domain: string }, rows: HistoryEntry[]): Promise<void> {
    const histQ = `INSERT INTO ${this.ks}.history (gateway, domain, bucket, ms, seq, kind, message_id, txn, at, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;
    const idxQ = `INSERT INTO ${this.ks}.message_events (message_id, gateway, domain, ms, seq, kind, txn, at, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`;
    type Stmt = { query: string; params: unknown[] };
    const batches: Stmt[][] = [];
    // one batcher per kind of batch: history rows of one bucket at a time; index rows of any message
    const batcher = () => {
      let cur: Stmt[] = [];
      let bytes = 0;
      let key: number | undefined;
      return {
        add(stmt: Stmt, size: number, k?: number) {
          if (cur.length && (k !== key || cur.length >= BATCH_ROWS || bytes + size > BATCH_BYTES)) this.close();
          key = k;
          bytes += size;
          cur.push(stmt);
        },
        close() {
          if (cur.length) batches.push(cur);
          cur = [];
          bytes = 0;
        },
      };
    };
    const hist = batcher();
    const idx = batcher();
    for (const r of rows) {
      const [ms, seq] = parseEntryId(r.histId);
      const details = r.detailsJson;
      const b = bucketOf(ms);
      const when = new Date(r.at);
      hist.add({ query: histQ, params: [at.origin, at.domain, new Date(b), ms, seq, r.kind, r.messageId, r.txn, when, details] }, details.length + 100, b);
      if (r.messageId) idx.add({ query: idxQ, params: [r.messageId, at.origin, at.domain, ms, seq, r.kind, r.txn, when, details] }, details.length + 100);
    }
    hist.close();
    idx.close();
    const opts = { prepare: true, consistency: this.cl.write, isIdempotent: true, logged: false };
    let next = 0;
    const worker = async () => {
      while (next < batches.length) {
        const b = batches[next++]!;
        await (b.length === 1 ? this.store.client.execute(b[0]!.query, b[0]!.params, opts) : this.store.client.batch(b, opts));
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, batches.length) }, worker));
  }

  // ---- reading the log ------------------------------------------------------------------------

  /**
   * One message's story, oldest first per queue: the events not yet archived (the hot index),
   * then its partition of message_events. Two lookups, no scan, whatever its age.
   */
  async story(messageId: string): Promise<LifecycleEvent[]> {
    const hot = this.hot.get(messageId) ?? [];
    const cold = await this.log.story(messageId);
    const seen = new Set(cold.map((e) => e.id));
    return [...cold, ...hot.filter((e) => !seen.has(e.id))].sort((a, b) => (a.domain < b.domain ? -1 : a.domain > b.domain ? 1 : compareIds(histIdOf(a.id), histIdOf(b.id))));
  }

  /** See EventLog.eventsOf. */
  eventsOf(domain: string, since: number, until: number): AsyncGenerator<LifecycleEvent> {
    return this.log.eventsOf(domain, since, until);
  }
}

/**
 * The gateway ids whose event logs a command run with `config` reads: `only` when given; else the
 * configuration's `gateway.id`, and with `gateway.workers` above 1 the workers' ids
 * (`<id>-1` … `<id>-N`, each a member of its own) that have archived queues.
 */
export async function logGateways(store: MailStore, config: Config, only?: string[]): Promise<string[]> {
  if (only?.length) return only;
  const id = config.gateway.id;
  if (config.gateway.workers === 1) return [id];
  await store.connect();
  const rs = await store.client.execute(`SELECT DISTINCT gateway FROM ${store.keyspace}.archive_cursors`, [], { consistency: consistencyFrom(config).read });
  const worker = new RegExp(`^${id.replace(/[.]/g, '\\.')}-\\d+$`);
  const ids = rs.rows.map((r) => r.get('gateway') as string).filter((g) => g === id || worker.test(g));
  return ids.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}

/** Reads the event log of one gateway: by message (the index), by queue and time. */
export class EventLog {
  private readonly store: MailStore;
  private readonly cl: Consistency;
  private readonly ks: string;
  readonly gateway: string;

  constructor(store: MailStore, config: Config, gateway: string) {
    this.store = store;
    this.cl = consistencyFrom(config);
    this.ks = store.keyspace;
    this.gateway = gateway;
  }

  /**
   * A message's archived events (its partition of message_events), whichever gateway's queue
   * they were archived under: a queue adopted from a gateway that died keeps that gateway's id.
   */
  async story(messageId: string): Promise<LifecycleEvent[]> {
    await this.store.connect();
    const rs = await this.store.client.execute(`SELECT gateway, domain, ms, seq, kind, txn, at, details FROM ${this.ks}.message_events WHERE message_id = ?`, [messageId], { prepare: true, consistency: this.cl.read, fetchSize: 5000 });
    return rs.rows.map((r) => this.rowEvent(r, messageId, r.get('gateway') as string));
  }

  /** The queues (domains) of this gateway with archived events. */
  async archivedQueues(): Promise<string[]> {
    await this.store.connect();
    const rs = await this.store.client.execute(`SELECT domain FROM ${this.ks}.archive_cursors WHERE gateway = ?`, [this.gateway], { prepare: true, consistency: this.cl.read });
    return rs.rows.map((r) => r.get('domain') as string);
  }

  /**
   * The archived events of one queue from `since` (ms, inclusive) up to `until` (exclusive),
   * oldest first, read partition by partition (one per hour, from the queue's first) in pages.
   */
  async *eventsOf(ref: string, since: number, until: number): AsyncGenerator<LifecycleEvent> {
    // a queue of this gateway by its domain, an adopted one by its full name (`gw1:example.com`)
    const { origin, domain } = ref.includes(':') ? splitQueueName(ref) : { origin: this.gateway, domain: ref };
    await this.store.connect();
    const rs = await this.store.client.execute(`SELECT first_bucket FROM ${this.ks}.archive_cursors WHERE gateway = ? AND domain = ?`, [origin, domain], { prepare: true, consistency: this.cl.read });
    const first = (rs.first()?.get('first_bucket') as Date | null | undefined)?.getTime();
    if (first === undefined) return;
    for (let b = bucketOf(Math.max(since, first)); b < until; b += BUCKET_MS) {
      let pageState: string | undefined;
      do {
        const page: cassandra.types.ResultSet = await this.store.client.execute(
          `SELECT domain, ms, seq, kind, message_id, txn, at, details FROM ${this.ks}.history WHERE gateway = ? AND domain = ? AND bucket = ? AND ms >= ? AND ms < ?`,
          [origin, domain, new Date(b), since, until],
          { prepare: true, consistency: this.cl.read, fetchSize: 2000, pageState },
        );
        for (const r of page.rows) yield this.rowEvent(r, r.get('message_id') as string, origin);
        pageState = page.pageState ?? undefined;
      } while (pageState);
    }
  }

  private rowEvent(r: cassandra.types.Row, messageId: string, gateway: string): LifecycleEvent {
    const domain = r.get('domain') as string;
    const histId = `${String(r.get('ms'))}-${String(r.get('seq'))}`;
    return {
      id: eventId(gateway, domain, histId),
      queue: `${gateway}:${domain}`,
      domain,
      kind: r.get('kind') as LifecycleKind,
      messageId,
      txn: Number(r.get('txn')),
      at: (r.get('at') as Date).getTime(),
      details: JSON.parse(r.get('details') as string) as Record<string, unknown>,
    };
  }
}
