// The event log: every history event of every queue, archived whole into Cassandra (tables
// history, message_blocks, message_events and archive_cursors, described in
// src/mailbox/schema.ts) before Redis may trim it (DESIGN, invariant 12). Per queue a durable cursor
// (the last event archived, in archive_cursors) is read once, then the history stream is read after
// it in blocks, each block written as block rows (blockRows(): up to BLOCK_EVENTS consecutive events
// of one hour in one row of history, the events' bytes copied as the stream holds them; the ids of
// the messages with events in it in a few rows of message_blocks, the index) and only then the
// cursor moved. The rows are cut greedily
// from the cursor, so a block archived again after a crash rewrites its own rows: every event is in
// the log exactly once.
// The history is trimmed (history budget, queue.historyMaxLength) only below cursorOf().
//
// Events written but not yet archived are the hot part of the message index: message id -> the
// ids of its events, in memory (at most HOT_MAX events), each read back from the history stream
// by its id when a story is asked for. The index is kept in generations: the events seen before a
// pass of the archive begins are sealed with the newest event of each queue at that moment, and
// the generation is dropped whole once the cursors have passed those (no removal per event). So
// one message's story is a few lookups whatever its age: this map and those reads, then its index
// rows and the block rows they point to. Only the ids are held: the events themselves, kept for
// the quarter second or more until archived, outlived the young generation of the heap, and their
// copying and marking cost the gateway about a tenth of its CPU at its top rate (bench:relay).
// Events still in Redis from before a restart join the index as the archive reaches them, within
// a block or two.
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
import type { QueueManager, StoredHistoryEntry } from '../queue/manager.ts';
import { splitQueueName } from '../queue/placement.ts';
import { compareIds, domainOfEventId, eventId, histIdOf, msOfEntryId, parseEntryId, timeOfMessageId } from '../message/ids.ts';

/** A history partition holds one hour of a queue's events. */
export const BUCKET_MS = 3_600_000;
/**
 * Events archived per block: read from the history stream, then written as block rows, and the
 * cursor moved once (a quarter second of events at 8,000 a second).
 */
const BLOCK = 2000;
/**
 * Events read per script run on the node (about 3 µs an event there): a block is read in runs of
 * this many, so that the queue's writes on that node never wait long behind one.
 */
const READ = 250;
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
/** Sealed generations of the hot index at most; while Cassandra lags the newest events stay in the open one. */
const SEALED_MAX = 8;

/** A generation of the hot index: message id -> the event ids (eventId()) of its events. */
interface HotGeneration {
  ids: Map<string, string[]>;
  size: number;
  /** Sealed: the newest event per queue when it was; dropped once every cursor is at or past it. */
  upTo?: Map<string, string>;
}

export interface ArchiveStatus {
  /** Events archived since start. */
  archived: number;
  /** Events written to the histories and not yet archived (as this process saw them). */
  lagEvents: number;
  /** Time between the newest event and the archive's cursor, seconds, the worst queue. */
  lagSeconds: number;
  /** Why the archive does not advance, while it does not. */
  failing: string | undefined;
  /** Events held in memory for the stories until archived (the hot index; at most 500,000), dropped a pass of the archive at a time. */
  hot: number;
  /** Queues the archive keeps a cursor or a count for (a queue deleted as idle is forgotten). */
  queues: number;
}

const bucketOf = (ms: number) => ms - (ms % BUCKET_MS);

/** Events per block row at most, and its bytes at most. */
const BLOCK_EVENTS = 500;
const BLOCK_BYTES = 256 * 1024;

/** One row of the log: consecutive events of one queue and hour (see blockRows()). */
export interface BlockRow {
  /** The position of its first event: the row's key. */
  ms: number;
  seq: number;
  /** Its events (StoredEvent) in a JSON array, as bytes. */
  events: Buffer;
  /**
   * Its index rows: per index partition (indexKeyOf()) the ids of the messages of that partition
   * with events in the row, each once, 20 ASCII bytes after another.
   */
  index: { second: number; shard: number; ids: Buffer }[];
  /** Per message whose id has no index key, its events of the row encoded as `events`: its row of message_events. */
  unindexed: Map<string, Buffer>;
}

/**
 * An event as the log stores it: [ms, seq, kind, message id, txn, at, details], encoded by the
 * Redis node that reads the history (lua/historyBlock-1.lua), the details as the history holds
 * them: the gateway copies bytes, decoding nothing, to archive it.
 */
type StoredEvent = [number, number, LifecycleKind, string, number, number, Record<string, unknown>];

const OPEN = Buffer.from('[');
const COMMA = Buffer.from(',');
const CLOSE = Buffer.from(']');

/** Stored events as one JSON array. */
function joinStored(stored: Buffer[]): Buffer {
  const pieces: Buffer[] = [];
  for (const b of stored) pieces.push(pieces.length ? COMMA : OPEN, b);
  pieces.push(CLOSE);
  return Buffer.concat(pieces);
}

/**
 * A block of history entries (history order) cut into block rows: consecutive events of one hour,
 * at most BLOCK_EVENTS of them and BLOCK_BYTES. The cut is greedy from the first event, so the
 * block read again from the same cursor after a crash (the same events, perhaps more after them)
 * gives the same rows again, only the last one longer: each rewrites its own row (and its
 * messages' index rows), and no event is in two rows.
 */
export function blockRows(entries: StoredHistoryEntry[]): BlockRow[] {
  const out: BlockRow[] = [];
  let i = 0;
  while (i < entries.length) {
    const [ms, seq] = parseEntryId(entries[i]!.histId);
    const bucket = bucketOf(ms);
    const end = bucket + BUCKET_MS;
    let size = 1;
    let j = i;
    for (; j < entries.length; j++) {
      const e = entries[j]!;
      const n = e.stored.length + 1; // with the "," or the final "]"
      if (j > i && (j - i >= BLOCK_EVENTS || size + n > BLOCK_BYTES || msOfEntryId(e.histId) >= end)) break;
      size += n;
    }
    const parts = entries.slice(i, j);
    i = j;
    // by second and shard, as one number (a second's ms are a multiple of 1,000: shard added)
    const byKey = new Map<number, { second: number; shard: number; ids: Set<string> }>();
    const byMessage = new Map<string, Buffer[]>();
    for (const e of parts) {
      if (!e.messageId) continue;
      const k = indexKeyOf(e.messageId);
      if (k) {
        const key = k.second + k.shard;
        const at = byKey.get(key);
        if (at) at.ids.add(e.messageId);
        else byKey.set(key, { ...k, ids: new Set([e.messageId]) });
        continue;
      }
      const list = byMessage.get(e.messageId);
      if (list) list.push(e.stored);
      else byMessage.set(e.messageId, [e.stored]);
    }
    const index = [...byKey.values()].map(({ second, shard, ids }) => ({ second, shard, ids: Buffer.from([...ids].join(''), 'latin1') }));
    const unindexed = new Map<string, Buffer>();
    for (const [id, stored] of byMessage) unindexed.set(id, joinStored(stored));
    out.push({ ms, seq, events: joinStored(parts.map((e) => e.stored)), index, unindexed });
  }
  return out;
}

/**
 * Shards of a second's index partitions (message_blocks): the partitions the index rows of one
 * block spread over, a few rows per block whatever the number of its messages (Cassandra's cost
 * goes by rows: a row per message and block cost it 2.5 times the block rows themselves). Part of
 * the stored layout: lookups compute the shard from the id, so a changed number would lose the
 * rows written before.
 */
const INDEX_SHARDS = 8;
/** Shards of a minute in message_index, the index of the log's second format (still read). */
const MINUTE_INDEX_SHARDS = 16;
/** Accept times a message id may tell (2000 to 2200): an id outside is not one of newMessageId()'s. */
const ID_TIMES: [number, number] = [946_684_800_000, 7_258_118_400_000];
/** The length of a message id that tells its time; the index stores such ids 20 bytes each. */
const ID_LENGTH = 20;

/** A message id's accept time and hash (FNV-1a), when it is one of newMessageId()'s form. */
function idKey(messageId: string): { t: number; h: number } | undefined {
  if (messageId.length !== ID_LENGTH) return undefined;
  const t = timeOfMessageId(messageId);
  if (t === undefined || t < ID_TIMES[0] || t >= ID_TIMES[1]) return undefined;
  let h = 0x811c9dc5;
  for (let i = 0; i < messageId.length; i++) h = Math.imul(h ^ messageId.charCodeAt(i), 0x01000193);
  return { t, h: h >>> 0 };
}

/**
 * The index partition in message_blocks of a message's story: the second its id was made in (a
 * newMessageId(): 20 characters, its time first) and a shard of it by a hash of the id; undefined
 * for any other id (a producer's `job-…`), whose events go to message_events. Only the id decides,
 * so the partition is found again from the id alone. At 1,000 messages a second a partition holds
 * about 6 KB of ids.
 */
export function indexKeyOf(messageId: string): { second: number; shard: number } | undefined {
  // stored as one byte a character: ASCII only
  const k = /^[0-9A-Za-z]+$/.test(messageId) ? idKey(messageId) : undefined;
  return k && { second: k.t - (k.t % 1000), shard: k.h % INDEX_SHARDS };
}

/** Where the log's second format put a message's index rows in message_index (still read). */
export function minuteIndexKeyOf(messageId: string): { minute: number; shard: number } | undefined {
  const k = idKey(messageId);
  return k && { minute: k.t - (k.t % 60_000), shard: k.h % MINUTE_INDEX_SHARDS };
}

/** Whether `ids` (message ids of ID_LENGTH, one after another) holds `id`. */
function holdsId(ids: Buffer, id: string): boolean {
  for (let i = ids.indexOf(id, 0, 'latin1'); i >= 0; i = ids.indexOf(id, i + 1, 'latin1')) if (i % ID_LENGTH === 0) return true;
  return false;
}

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
  /** Per queue (by ref) the newest event seen, and the events seen but not archived. */
  private readonly seenOf = new Map<string, { newest: string; pending: number }>();
  /** The hot index: the open generation (events seen since the last pass began), and the sealed ones, oldest first. */
  private hot: HotGeneration = { ids: new Map(), size: 0 };
  private readonly sealed: HotGeneration[] = [];
  private hotSize = 0;
  private readonly dirty = new Set<string>();
  private soon: NodeJS.Timeout | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private failing: string | undefined;
  archived = 0;
  private readonly onEvent = (ev: LifecycleEvent) => this.seen(ev);
  private readonly onDropped = (ref: string) => this.forget(ref);

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
    this.queues.on('dropped', this.onDropped);
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
    this.queues.off('dropped', this.onDropped);
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
    for (const [d, { newest: n, pending }] of this.seenOf) {
      const c = this.cursors.get(d);
      if (c && compareIds(n, c) <= 0) continue;
      lagEvents += pending;
      lagMs = Math.max(lagMs, parseEntryId(n)[0] - (c ? parseEntryId(c)[0] : parseEntryId(n)[0]));
    }
    return { archived: this.archived, lagEvents, lagSeconds: lagMs / 1000, failing: this.failing, hot: this.hotSize, queues: new Set([...this.seenOf.keys(), ...this.cursors.keys()]).size };
  }

  /**
   * A queue deleted as idle (QueueManager 'dropped': only once its history was archived and
   * published): its cursor and counts go, so that queues that come and go leave nothing here. A
   * queue made again under the same ref reads its cursor again from archive_cursors.
   */
  private forget(ref: string): void {
    this.seenOf.delete(ref);
    this.cursors.delete(ref);
    this.loaded.delete(ref);
    this.dirty.delete(ref);
  }

  private seen(ev: LifecycleEvent): void {
    // by the queue's ref, as its cursor (an adopted queue's domain alone may also be an own queue's)
    const ref = this.queues.refOf(ev.queue);
    const histId = histIdOf(ev.id);
    const q = this.seenOf.get(ref);
    if (!q) this.seenOf.set(ref, { newest: histId, pending: 1 });
    else {
      if (compareIds(histId, q.newest) > 0) q.newest = histId;
      q.pending++;
    }
    if (ev.messageId && this.hotSize < HOT_MAX) {
      const list = this.hot.ids.get(ev.messageId);
      if (list) list.push(ev.id);
      else this.hot.ids.set(ev.messageId, [ev.id]);
      this.hot.size++;
      this.hotSize++;
    }
    this.dirty.add(ref);
    this.later();
  }

  /** The open generation of the hot index is sealed: held until the cursors pass the newest events seen now. */
  private seal(): void {
    if (!this.hot.size || this.sealed.length >= SEALED_MAX) return;
    this.hot.upTo = new Map([...this.seenOf].map(([ref, q]) => [ref, q.newest]));
    this.sealed.push(this.hot);
    this.hot = { ids: new Map(), size: 0 };
  }

  /** Drops the sealed generations whose events are all archived (a queue gone since: its events were archived first). */
  private retire(): void {
    while (this.sealed.length) {
      const g = this.sealed[0]!;
      for (const [ref, newest] of g.upTo!) {
        const c = this.cursors.get(ref);
        if ((!c || compareIds(c, newest) < 0) && this.queues.view(ref)) return;
      }
      this.sealed.shift();
      this.hotSize -= g.size;
    }
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
    this.seal();
    try {
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
    } finally {
      this.retire();
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
      const entries: StoredHistoryEntry[] = [];
      for (let after = cursor; entries.length < BLOCK; ) {
        const part = await this.queues.historyBlock(domain, after, READ);
        entries.push(...part);
        if (part.length < READ) break;
        after = part.at(-1)!.histId;
      }
      if (!entries.length) return;
      const rows = blockRows(entries);
      await this.write(at, rows);
      const last = entries.at(-1)!.histId;
      // the first block also records the hour of the queue's first event: where reads by time start
      const [q, params] = cursor
        ? [`INSERT INTO ${this.ks}.archive_cursors (gateway, domain, hist, updated) VALUES (?, ?, ?, ?)`, [at.origin, at.domain, last, new Date()]]
        : [`INSERT INTO ${this.ks}.archive_cursors (gateway, domain, hist, first_bucket, updated) VALUES (?, ?, ?, ?, ?)`, [at.origin, at.domain, last, new Date(bucketOf(rows[0]!.ms)), new Date()]];
      await this.store.client.execute(q, params, { prepare: true, consistency: this.cl.write, isIdempotent: true });
      this.cursors.set(domain, last);
      this.archived += entries.length;
      const seen = this.seenOf.get(domain);
      if (seen) seen.pending = Math.max(0, seen.pending - entries.length);
      this.emit('archived', domain);
      if (entries.length < BLOCK) return;
    }
  }

  /**
   * Writes a block of one queue's history as block rows (blockRows(): consecutive events of one
   * hour, one row each in history) and the message index: per block row and index partition a row
   * of the ids of its messages there (message_blocks, indexKeyOf()), else per message whose id has
   * no index key a row of its events in message_events (a partition per message). The index rows
   * go in unlogged batches of several partitions (fewer requests to encode; each row stands alone).
   * The details go as stored, never parsed here.
   */
  private async write(at: { origin: string; domain: string }, rows: BlockRow[]): Promise<void> {
    const histQ = `INSERT INTO ${this.ks}.history (gateway, domain, bucket, ms, seq, events) VALUES (?, ?, ?, ?, ?, ?)`;
    const idxQ = `INSERT INTO ${this.ks}.message_blocks (second, shard, gateway, domain, ms, seq, ids) VALUES (?, ?, ?, ?, ?, ?, ?)`;
    const perMessageQ = `INSERT INTO ${this.ks}.message_events (message_id, gateway, domain, ms, seq, events) VALUES (?, ?, ?, ?, ?, ?)`;
    type Stmt = { query: string; params: unknown[] };
    const work: Stmt[][] = [];
    let open: { stmts: Stmt[]; bytes: number } = { stmts: [], bytes: 0 };
    const add = (st: Stmt, size: number) => {
      if (open.stmts.length >= BATCH_ROWS || open.bytes + size > BATCH_BYTES) {
        work.push(open.stmts);
        open = { stmts: [], bytes: 0 };
      }
      open.stmts.push(st);
      open.bytes += size + 100;
    };
    for (const b of rows) {
      work.push([{ query: histQ, params: [at.origin, at.domain, new Date(bucketOf(b.ms)), b.ms, b.seq, b.events] }]);
      for (const k of b.index) add({ query: idxQ, params: [new Date(k.second), k.shard, at.origin, at.domain, b.ms, b.seq, k.ids] }, k.ids.length);
      for (const [messageId, events] of b.unindexed) add({ query: perMessageQ, params: [messageId, at.origin, at.domain, b.ms, b.seq, events] }, events.length);
    }
    if (open.stmts.length) work.push(open.stmts);
    const opts = { prepare: true, consistency: this.cl.write, isIdempotent: true, logged: false };
    let next = 0;
    const worker = async () => {
      while (next < work.length) {
        const b = work[next++]!;
        await (b.length === 1 ? this.store.client.execute(b[0]!.query, b[0]!.params, opts) : this.store.client.batch(b, opts));
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, work.length) }, worker));
  }

  // ---- reading the log ------------------------------------------------------------------------

  /**
   * One message's story, oldest first per queue: the events not yet archived (the hot index),
   * then its rows in the log (EventLog.story()). No scan, whatever its age.
   */
  async story(messageId: string): Promise<LifecycleEvent[]> {
    // the hot events first: one the archive moves into the log (and a trim then removes from the
    // stream) meanwhile is in the log when it is read after them
    const hot = await this.hotEvents([...this.sealed, this.hot].flatMap((g) => g.ids.get(messageId) ?? []));
    const cold = await this.log.story(messageId);
    const seen = new Set(cold.map((e) => e.id));
    return [...cold, ...hot.filter((e) => !seen.has(e.id))].sort((a, b) => (a.domain < b.domain ? -1 : a.domain > b.domain ? 1 : compareIds(histIdOf(a.id), histIdOf(b.id))));
  }

  /** The events of these ids read back from their queues' history streams (those trimmed meanwhile left out). */
  private async hotEvents(ids: readonly string[]): Promise<LifecycleEvent[]> {
    const byDomain = new Map<string, string[]>();
    for (const id of ids) {
      const domain = domainOfEventId(id);
      const list = byDomain.get(domain);
      if (list) list.push(histIdOf(id));
      else byDomain.set(domain, [histIdOf(id)]);
    }
    const parts = await Promise.all(
      [...byDomain].map(async ([domain, histIds]) => {
        if (!this.queues.view(domain)) return []; // deleted since: its events are archived
        return (await this.queues.historyByIds(domain, histIds)).map((h) => this.queues.eventOf(domain, h));
      }),
    );
    return parts.flat();
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
   * A message's archived events, whichever gateway's queue they were archived under (a queue
   * adopted from a gateway that died keeps that gateway's id): its index partition in
   * message_blocks (from its id's second and shard), then the block rows of history whose index
   * rows hold its id, each read by its key; beside them its partition of message_events (an id
   * that does not tell its time, or rows of the log's first format) and its rows in message_index
   * (the log's second format). Lookups by key, never a scan.
   */
  async story(messageId: string): Promise<LifecycleEvent[]> {
    await this.store.connect();
    const opts = { prepare: true, consistency: this.cl.read, fetchSize: 5000 };
    const k = indexKeyOf(messageId);
    const m = minuteIndexKeyOf(messageId);
    const blocks = async (): Promise<cassandra.types.Row[]> => {
      if (!k) return [];
      const found: { gateway: string; domain: string; ms: unknown; seq: unknown }[] = [];
      let pageState: string | undefined;
      do {
        const page: cassandra.types.ResultSet = await this.store.client.execute(`SELECT gateway, domain, ms, seq, ids FROM ${this.ks}.message_blocks WHERE second = ? AND shard = ?`, [new Date(k.second), k.shard], { ...opts, pageState });
        for (const r of page.rows) if (holdsId(r.get('ids') as Buffer, messageId)) found.push({ gateway: r.get('gateway') as string, domain: r.get('domain') as string, ms: r.get('ms'), seq: r.get('seq') });
        pageState = page.pageState ?? undefined;
      } while (pageState);
      const rows = await Promise.all(
        found.map(async (f) => {
          const ms = Number(f.ms);
          const rs = await this.store.client.execute(`SELECT gateway, domain, events FROM ${this.ks}.history WHERE gateway = ? AND domain = ? AND bucket = ? AND ms = ? AND seq = ?`, [f.gateway, f.domain, new Date(bucketOf(ms)), f.ms, f.seq], opts);
          return rs.rows;
        }),
      );
      return rows.flat();
    };
    const [fromBlocks, indexed, perMessage] = await Promise.all([
      blocks(),
      m ? this.store.client.execute(`SELECT * FROM ${this.ks}.message_index WHERE minute = ? AND shard = ? AND message_id = ?`, [new Date(m.minute), m.shard, messageId], opts) : undefined,
      this.store.client.execute(`SELECT * FROM ${this.ks}.message_events WHERE message_id = ?`, [messageId], opts),
    ]);
    const out: LifecycleEvent[] = [];
    const seen = new Set<string>();
    for (const r of [...fromBlocks, ...(indexed?.rows ?? []), ...perMessage.rows]) {
      for (const ev of this.rowEvents(r, r.get('gateway') as string, messageId)) {
        if (ev.messageId !== messageId || seen.has(ev.id)) continue;
        seen.add(ev.id);
        out.push(ev);
      }
    }
    return out;
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
   * A block row holding `since` starts before it: in the hour of `since` the row just before it
   * is read first.
   */
  async *eventsOf(ref: string, since: number, until: number): AsyncGenerator<LifecycleEvent> {
    // a queue of this gateway by its domain, an adopted one by its full name (`gw1:example.com`)
    const { origin, domain } = ref.includes(':') ? splitQueueName(ref) : { origin: this.gateway, domain: ref };
    await this.store.connect();
    const rs = await this.store.client.execute(`SELECT first_bucket FROM ${this.ks}.archive_cursors WHERE gateway = ? AND domain = ?`, [origin, domain], { prepare: true, consistency: this.cl.read });
    const first = (rs.first()?.get('first_bucket') as Date | null | undefined)?.getTime();
    if (first === undefined) return;
    // the newest position given: an event in two rows (one written before a crash) is given once
    let last: [number, number] = [-1, -1];
    const fresh = (ev: LifecycleEvent) => {
      const [ms, seq] = parseEntryId(histIdOf(ev.id));
      if (ms < since || ms >= until || ms < last[0] || (ms === last[0] && seq <= last[1])) return false;
      last = [ms, seq];
      return true;
    };
    const key = `gateway = ? AND domain = ? AND bucket = ?`;
    for (let b = bucketOf(Math.max(since, first)); b < until; b += BUCKET_MS) {
      if (since > b) {
        const before = await this.store.client.execute(`SELECT * FROM ${this.ks}.history WHERE ${key} AND ms < ? ORDER BY ms DESC, seq DESC LIMIT 1`, [origin, domain, new Date(b), since], { prepare: true, consistency: this.cl.read });
        for (const r of before.rows) for (const ev of this.rowEvents(r, origin)) if (fresh(ev)) yield ev;
      }
      let pageState: string | undefined;
      do {
        const page: cassandra.types.ResultSet = await this.store.client.execute(`SELECT * FROM ${this.ks}.history WHERE ${key} AND ms >= ? AND ms < ?`, [origin, domain, new Date(b), since, until], {
          prepare: true,
          consistency: this.cl.read,
          fetchSize: 20, // block rows of up to 256 KB
          pageState,
        });
        for (const r of page.rows) for (const ev of this.rowEvents(r, origin)) if (fresh(ev)) yield ev;
        pageState = page.pageState ?? undefined;
      } while (pageState);
    }
  }

  /**
   * The events of one row of history or message_events: a block row's (its `events`), or the one
   * event of a row written one per event (the log's first format, still read).
   */
  private rowEvents(r: cassandra.types.Row, gateway: string, messageId?: string): LifecycleEvent[] {
    const domain = r.get('domain') as string;
    const block = r.get('events') as Buffer | null | undefined;
    if (block) {
      return (JSON.parse(block.toString('utf8')) as StoredEvent[]).map(([ms, seq, kind, mid, txn, at, details]) => ({
        id: eventId(gateway, domain, `${ms}-${seq}`),
        queue: `${gateway}:${domain}`,
        domain,
        kind,
        messageId: mid,
        txn,
        at,
        details,
      }));
    }
    const histId = `${String(r.get('ms'))}-${String(r.get('seq'))}`;
    return [
      {
        id: eventId(gateway, domain, histId),
        queue: `${gateway}:${domain}`,
        domain,
        kind: r.get('kind') as LifecycleKind,
        messageId: messageId ?? (r.get('message_id') as string),
        txn: Number(r.get('txn')),
        at: (r.get('at') as Date).getTime(),
        details: JSON.parse(r.get('details') as string) as Record<string, unknown>,
      },
    ];
  }
}
