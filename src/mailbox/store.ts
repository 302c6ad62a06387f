// The mailbox store over Cassandra (tables in ./schema.ts): users, mailboxes, messages in wide rows,
// bodies in chunks, usage counters and the POP3 mailbox lease.
//
// Writing a message: pick its bucket (the newest bucket that started at or before its accept
// time), skip it when its row is committed already (a redelivery), write its row marked pending,
// the body chunks, then the row again, committed (the commit point: a visible row has a complete
// body), then bump the counters. A pending row is invisible to readers; it records a body whose
// delivery was interrupted: the retry (same row id, same body id) writes the same chunks again
// and commits, deleting the user removes it with the rest, and a pending row older than the
// queue's maxLifetime (no retry can come any more) is removed with its body by the next reader of
// the mailbox. So no chunk is ever left without a row that leads to it.
// Buckets: when the bucket a message went into holds `bucketSize` messages and is the newest, a
// new bucket opens at now + BUCKET_OPEN_AHEAD_MS. Every message already written has an accept
// time before that, so it keeps mapping to the same bucket (redeliveries stay idempotent), and
// later messages go to the new partition. A partition therefore holds about `bucketSize` rows plus
// what arrives in those two seconds and messages accepted in its window but delivered late.
//
// Statements never bind null (null writes a tombstone); counters are never retried (not
// idempotent) and are advisory: a crash between the row and its counters leaves them a little off.
import cassandra from 'cassandra-driver';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { consistencyFrom, createClient, MailboxError, storeError, type ClientOptions, type Consistency } from './client.ts';
import { INBOX, messageUuid, OUTBOX } from './ids.ts';
import { applySchema, missingSchema } from './schema.ts';

type TimeUuid = cassandra.types.TimeUuid;
const { TimeUuid: TimeUuidType } = cassandra.types;
const ALL = cassandra.types.consistencies.all;

/** A new bucket starts this far ahead of the clock, more than the clock skew between gateways. */
export const BUCKET_OPEN_AHEAD_MS = 2000;
/**
 * Body bytes per query when the whole body is wanted (RETR): most messages in one read. A query
 * costs Cassandra about as much CPU as 100–200 KB of body does, so pages of one or a few 64 KB
 * chunks cost it two to three times what the bytes do (bench:mailbox's POP3 row).
 */
const READ_PAGE_BYTES = 1024 * 1024;
/**
 * Rows per body page, at most: well under the client's fetchSize (1000), which would otherwise cut
 * a page of small chunks short (read as a missing chunk).
 */
const MAX_PAGE_ROWS = 256;
/** Body pages in flight while one is being sent (RETR): at most 2 MB per reader. */
const READ_AHEAD = 2;
/** Body chunks per query for a reader that may stop early (TOP): pages grow to this from one chunk. */
const TOP_CHUNKS_PER_READ = 4;
/** Batches of body chunks written at once for one message. */
const CHUNK_WRITE_CONCURRENCY = 4;
/**
 * Body bytes per write: a message's chunks share one partition (the body id), so several go in
 * one unlogged batch, which Cassandra applies as one mutation (one request, one commit log
 * entry; single-partition batches are exempt from the batch size thresholds). Kept well under
 * the largest mutation a node accepts (half its commit log segment, 16 MiB by default).
 */
const CHUNK_BATCH_BYTES = 1024 * 1024;
/** Row deletions per unlogged single-partition batch (James: DEFAULT_EXPUNGE_BATCH_SIZE = 50). */
const DELETE_BATCH = 50;
/** A pending row this much older than the queue's maxLifetime belongs to a delivery that cannot be retried. */
const ABANDON_MARGIN_MS = 3600_000;
const EPOCH = new Date(0);

export interface UserRecord {
  address: string;
  passwordHash?: string;
  /** Bytes; 0 means no limit. */
  quota: number;
  created?: Date;
}

/** A message row as a POP3 session or a listing sees it. */
export interface MessageRef {
  /** The row's TimeUUID: POP3's UIDL. */
  id: string;
  bucket: Date;
  size: number;
  chunks: number;
}

/** A row as stored, committed or not. */
interface StoredRow extends MessageRef {
  pending: boolean;
  /** Accept time, ms. */
  received: number;
}

export interface PutMessage {
  /** Owner, as userKey() gives it. */
  address: string;
  mailbox: string;
  /** The queue message id: with address and mailbox it makes the row id. */
  queueId: string;
  /** Accept time, ms. */
  acceptedAt: number;
  sender: string;
  /**
   * The whole message as POP3 will serve it (CRLF line ends), in parts that are stored one after
   * the other (the lines a delivery prepends, then the message as queued): chunks are cut across
   * them, so the message is never copied whole.
   */
  body: readonly Buffer[];
}

export interface MailboxSummary {
  name: string;
  messages: number;
  bytes: number;
}

export interface StoreOptions extends ClientOptions {
  /** The clock (ms), for bucket opening; default Date.now. */
  now?: () => number;
  /** Apply the schema on connect when something is missing; default true. */
  autoSchema?: boolean;
  /**
   * Called once a message's body chunks are written, before its row is committed: the point where
   * a crash leaves a body without a visible message (tests interrupt a delivery there).
   */
  afterBody?: (id: string) => void | Promise<void>;
}

const num = (v: unknown): number => (v === null || v === undefined ? 0 : typeof v === 'number' ? v : Number(String(v)));

async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

export class MailStore {
  readonly client: cassandra.Client;
  readonly keyspace: string;
  private readonly config: Config;
  private readonly log: Logger;
  private readonly cl: Consistency;
  private readonly now: () => number;
  private readonly chunkSize: number;
  private readonly bucketSize: number;
  private readonly autoSchema: boolean;
  private readonly afterBody: StoreOptions['afterBody'];
  private readonly abandonAfterMs: number;
  private readyPromise: Promise<void> | undefined;
  private isReady = false;
  private closed = false;
  private readonly knownMailboxes = new Set<string>();
  private readonly opening = new Set<string>();
  private readonly pendingReleases = new Set<NodeJS.Timeout>();
  private readonly q: Record<string, string>;

  constructor(config: Config, log: Logger, opts: StoreOptions = {}) {
    this.config = config;
    this.log = log.child({ component: 'mailbox-store' });
    this.client = createClient(config, this.log, opts);
    this.keyspace = config.cassandra.keyspace;
    this.cl = consistencyFrom(config);
    this.now = opts.now ?? Date.now;
    this.chunkSize = Math.max(1024, config.cassandra.chunkSize);
    this.bucketSize = config.cassandra.bucketSize;
    this.autoSchema = opts.autoSchema ?? true;
    this.afterBody = opts.afterBody;
    this.abandonAfterMs = config.relay.retry.maxLifetime + ABANDON_MARGIN_MS;
    const ks = this.keyspace;
    this.q = {
      getUser: `SELECT address, password_hash, quota, created FROM ${ks}.users WHERE address = ?`,
      listUsers: `SELECT address, quota, created FROM ${ks}.users`,
      putUser: `INSERT INTO ${ks}.users (address, password_hash, quota, created) VALUES (?, ?, ?, ?)`,
      setPassword: `UPDATE ${ks}.users SET password_hash = ? WHERE address = ?`,
      delUser: `DELETE FROM ${ks}.users WHERE address = ?`,
      getMailbox: `SELECT name FROM ${ks}.mailboxes WHERE address = ? AND name = ?`,
      listMailboxes: `SELECT name FROM ${ks}.mailboxes WHERE address = ?`,
      putMailbox: `INSERT INTO ${ks}.mailboxes (address, name, created) VALUES (?, ?, ?)`,
      delMailboxes: `DELETE FROM ${ks}.mailboxes WHERE address = ?`,
      bucketAt: `SELECT bucket, messages FROM ${ks}.mailbox_buckets WHERE address = ? AND mailbox = ? AND bucket <= ? ORDER BY bucket DESC LIMIT 1`,
      newestBucket: `SELECT bucket FROM ${ks}.mailbox_buckets WHERE address = ? AND mailbox = ? ORDER BY bucket DESC LIMIT 1`,
      buckets: `SELECT bucket FROM ${ks}.mailbox_buckets WHERE address = ? AND mailbox = ?`,
      countBucket: `UPDATE ${ks}.mailbox_buckets SET messages = messages + ? WHERE address = ? AND mailbox = ? AND bucket = ?`,
      getRow: `SELECT id, pending FROM ${ks}.messages WHERE address = ? AND mailbox = ? AND bucket = ? AND id = ?`,
      putRow: `INSERT INTO ${ks}.messages (address, mailbox, bucket, id, size, chunks, queue_id, sender, received, pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      firstPage: `SELECT id, size, chunks, received, pending FROM ${ks}.messages WHERE address = ? AND mailbox = ? AND bucket = ? LIMIT ?`,
      nextPage: `SELECT id, size, chunks, received, pending FROM ${ks}.messages WHERE address = ? AND mailbox = ? AND bucket = ? AND id > ? LIMIT ?`,
      delRow: `DELETE FROM ${ks}.messages WHERE address = ? AND mailbox = ? AND bucket = ? AND id = ?`,
      delPartition: `DELETE FROM ${ks}.messages WHERE address = ? AND mailbox = ? AND bucket = ?`,
      putChunk: `INSERT INTO ${ks}.bodies (id, chunk, data) VALUES (?, ?, ?)`,
      getChunks: `SELECT chunk, data FROM ${ks}.bodies WHERE id = ? AND chunk >= ? AND chunk < ?`,
      delBody: `DELETE FROM ${ks}.bodies WHERE id = ?`,
      getUsage: `SELECT messages, bytes FROM ${ks}.usage WHERE address = ?`,
      addUsage: `UPDATE ${ks}.usage SET messages = messages + ?, bytes = bytes + ? WHERE address = ?`,
      lock: `INSERT INTO ${ks}.pop3_locks (address, mailbox, session, since) VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?`,
      renewLock: `UPDATE ${ks}.pop3_locks USING TTL ? SET session = ?, since = ? WHERE address = ? AND mailbox = ? IF session = ?`,
      unlock: `DELETE FROM ${ks}.pop3_locks WHERE address = ? AND mailbox = ? IF session = ?`,
    };
  }

  // ---- lifecycle ------------------------------------------------------------------------------

  get ready(): boolean {
    return this.isReady;
  }

  /**
   * Connects and (unless autoSchema is false) applies the schema when something is missing; resolves at once when done before.
   * Throws STORE_UNAVAILABLE while Cassandra does not answer (a later call tries again).
   */
  async connect(): Promise<void> {
    if (this.isReady) return;
    if (this.closed) throw new MailboxError('STORE_UNAVAILABLE', 'the mailbox store is closed');
    this.readyPromise ??= (async () => {
      await this.client.connect();
      const missing = this.autoSchema ? await missingSchema(this.client, this.config) : [];
      if (missing.length > 0) {
        const r = await applySchema(this.client, this.config);
        this.log.info({ keyspace: this.keyspace, created: r.created }, 'mailbox schema applied');
      }
      this.isReady = true;
    })().catch((err: unknown) => {
      this.readyPromise = undefined;
      throw storeError(`cassandra at ${this.config.cassandra.contactPoints.join(', ')} unavailable`, err);
    });
    return this.readyPromise;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.pendingReleases) clearTimeout(t);
    this.pendingReleases.clear();
    await this.client.shutdown().catch(() => {});
  }

  private read(query: string, params: unknown[], consistency = this.cl.read) {
    return this.client.execute(query, params, { prepare: true, consistency, isIdempotent: true });
  }

  private write(query: string, params: unknown[]) {
    return this.client.execute(query, params, { prepare: true, consistency: this.cl.write, isIdempotent: true });
  }

  private count(query: string, params: unknown[]) {
    return this.client.execute(query, params, { prepare: true, consistency: this.cl.write, isIdempotent: false });
  }

  /** Every row of a query, `fetchSize` rows per page (the driver's page state). */
  private async *allRows(query: string, params: unknown[], fetchSize: number): AsyncGenerator<cassandra.types.Row> {
    let pageState: string | undefined;
    do {
      const rs: cassandra.types.ResultSet = await this.client.execute(query, params, { prepare: true, consistency: this.cl.read, isIdempotent: true, fetchSize, ...(pageState ? { pageState } : {}) });
      yield* rs.rows;
      pageState = rs.pageState ?? undefined;
    } while (pageState);
  }

  private lwt(query: string, params: unknown[]) {
    return this.client.execute(query, params, { prepare: true, consistency: this.cl.write, serialConsistency: this.cl.serial, isIdempotent: false });
  }

  private async guard<T>(what: string, fn: () => Promise<T>): Promise<T> {
    await this.connect();
    try {
      return await fn();
    } catch (err) {
      throw storeError(what, err);
    }
  }

  // ---- users ----------------------------------------------------------------------------------

  async getUser(address: string): Promise<UserRecord | undefined> {
    return this.guard('reading a user', async () => {
      const row = (await this.read(this.q.getUser!, [address])).first();
      if (!row) return undefined;
      const hash = row.get('password_hash') as string | null;
      const created = row.get('created') as Date | null;
      return { address, quota: num(row.get('quota')), ...(hash ? { passwordHash: hash } : {}), ...(created ? { created } : {}) };
    });
  }

  /** Every user, a page at a time (an admin listing: it reads the whole users table). */
  async *listUsers(): AsyncGenerator<UserRecord> {
    await this.connect();
    try {
      for await (const r of this.allRows(this.q.listUsers!, [], 500)) {
        const created = r.get('created') as Date | null;
        yield { address: r.get('address') as string, quota: num(r.get('quota')), ...(created ? { created } : {}) };
      }
    } catch (err) {
      throw storeError('listing users', err);
    }
  }

  /** Creates a user with its inbox and outbox. EXISTS when the address is taken. */
  async createUser(address: string, passwordHash: string, quota = 0): Promise<void> {
    await this.guard('creating a user', async () => {
      if ((await this.read(this.q.getUser!, [address])).rowLength > 0) throw new MailboxError('EXISTS', `user ${address} exists already`);
      const now = new Date(this.now());
      await this.write(this.q.putUser!, [address, passwordHash, quota, now]);
      await Promise.all([INBOX, OUTBOX].map((name) => this.write(this.q.putMailbox!, [address, name, now])));
    });
  }

  async setPassword(address: string, passwordHash: string): Promise<void> {
    await this.guard('changing a password', async () => {
      if ((await this.read(this.q.getUser!, [address])).rowLength === 0) throw new MailboxError('NOT_FOUND', `no user ${address}`);
      await this.write(this.q.setPassword!, [passwordHash, address]);
    });
  }

  /**
   * Deletes the user and all its mail: the user row first (new mail then bounces), then each
   * mailbox's bodies and message partitions. Bucket counters stay (a user added again under the
   * same address reuses the bucket layout); usage counters are brought back to zero.
   */
  async deleteUser(address: string): Promise<{ messages: number }> {
    return this.guard('deleting a user', async () => {
      if ((await this.read(this.q.getUser!, [address])).rowLength === 0) throw new MailboxError('NOT_FOUND', `no user ${address}`);
      await this.write(this.q.delUser!, [address]);
      let messages = 0;
      for (const mailbox of await this.mailboxNames(address)) {
        for (const bucket of await this.buckets(address, mailbox)) {
          const ids: TimeUuid[] = [];
          for await (const ref of this.bucketRows(address, mailbox, bucket, 1000)) ids.push(TimeUuidType.fromString(ref.id));
          await eachLimited(ids, 16, async (id) => void (await this.write(this.q.delBody!, [id])));
          await this.write(this.q.delPartition!, [address, mailbox, bucket]);
          messages += ids.length;
        }
      }
      await this.write(this.q.delMailboxes!, [address]);
      const u = await this.usageOf(address);
      if (u.messages !== 0 || u.bytes !== 0) await this.count(this.q.addUsage!, [-u.messages, -u.bytes, address]).catch(() => {});
      this.forgetMailboxes(address);
      return { messages };
    });
  }

  // ---- mailboxes ------------------------------------------------------------------------------

  private async mailboxNames(address: string): Promise<string[]> {
    const rs = await this.read(this.q.listMailboxes!, [address]);
    const names = new Set<string>([INBOX, OUTBOX]);
    for (const r of rs.rows) names.add(r.get('name') as string);
    return [...names].sort();
  }

  /** True for inbox and outbox, and for any mailbox that has received mail. */
  async mailboxExists(address: string, mailbox: string): Promise<boolean> {
    if (mailbox === INBOX || mailbox === OUTBOX) return true;
    return this.guard('reading a mailbox', async () => (await this.read(this.q.getMailbox!, [address, mailbox])).rowLength > 0);
  }

  /** The user's mailboxes with message counts and sizes (reads the metadata rows). */
  async listMailboxes(address: string): Promise<MailboxSummary[]> {
    return this.guard('listing mailboxes', async () => {
      const out: MailboxSummary[] = [];
      for (const name of await this.mailboxNames(address)) {
        let messages = 0;
        let bytes = 0;
        for await (const ref of this.listMessagesInner(address, name, 1000)) {
          messages++;
          bytes += ref.size;
        }
        out.push({ name, messages, bytes });
      }
      return out;
    });
  }

  private async ensureMailbox(address: string, mailbox: string): Promise<void> {
    const key = `${address}\0${mailbox}`;
    if (this.knownMailboxes.has(key)) return;
    if ((await this.read(this.q.getMailbox!, [address, mailbox])).rowLength === 0) {
      await this.write(this.q.putMailbox!, [address, mailbox, new Date(this.now())]);
    }
    if (this.knownMailboxes.size > 100_000) this.knownMailboxes.clear();
    this.knownMailboxes.add(key);
  }

  private forgetMailboxes(address: string): void {
    for (const key of this.knownMailboxes) if (key.startsWith(`${address}\0`)) this.knownMailboxes.delete(key);
  }

  // ---- buckets --------------------------------------------------------------------------------

  /** The bucket a message accepted at `at` belongs to, and how many messages it has received. */
  private async bucketFor(address: string, mailbox: string, at: number): Promise<{ bucket: Date; count: number }> {
    const row = (await this.read(this.q.bucketAt!, [address, mailbox, new Date(at)])).first();
    if (!row) return { bucket: EPOCH, count: 0 };
    return { bucket: row.get('bucket') as Date, count: num(row.get('messages')) };
  }

  /** Every bucket of a mailbox, oldest first; the first bucket (the epoch) is always there. */
  async buckets(address: string, mailbox: string): Promise<Date[]> {
    const seen = new Map<number, Date>([[0, EPOCH]]);
    for await (const row of this.allRows(this.q.buckets!, [address, mailbox], 1000)) {
      const b = row.get('bucket') as Date;
      seen.set(b.getTime(), b);
    }
    return [...seen.values()].sort((a, b) => a.getTime() - b.getTime());
  }

  private async openNextBucket(address: string, mailbox: string, full: Date): Promise<void> {
    const key = `${address}\0${mailbox}`;
    if (this.opening.has(key)) return;
    this.opening.add(key);
    try {
      const newest = (await this.read(this.q.newestBucket!, [address, mailbox])).first()?.get('bucket') as Date | undefined;
      if ((newest?.getTime() ?? 0) > full.getTime()) return; // someone opened one already
      const start = new Date(this.now() + BUCKET_OPEN_AHEAD_MS);
      await this.count(this.q.countBucket!, [0, address, mailbox, start]);
      this.log.debug({ address, mailbox, bucket: start.toISOString() }, 'mailbox bucket opened');
    } finally {
      this.opening.delete(key);
    }
  }

  // ---- messages -------------------------------------------------------------------------------

  /**
   * Stores one message in `address`'s `mailbox`. `stored: false` when that row exists already
   * (a redelivery). Throws STORE_UNAVAILABLE when Cassandra fails before the row is written.
   */
  async putMessage(m: PutMessage): Promise<{ id: string; stored: boolean }> {
    const id = messageUuid(m.queueId, m.acceptedAt, m.address, m.mailbox);
    const size = m.body.reduce((n, b) => n + b.length, 0);
    const placed = await this.guard('storing a message', async () => {
      await this.ensureMailbox(m.address, m.mailbox);
      const b = await this.bucketFor(m.address, m.mailbox, m.acceptedAt);
      const existing = (await this.read(this.q.getRow!, [m.address, m.mailbox, b.bucket, id])).first();
      if (existing && existing.get('pending') !== true) return undefined; // committed: a redelivery
      const chunks = Math.max(1, Math.ceil(size / this.chunkSize));
      const row = [m.address, m.mailbox, b.bucket, id, size, chunks, m.queueId, m.sender, new Date(m.acceptedAt)];
      if (!existing) await this.write(this.q.putRow!, [...row, true]); // pending, before any chunk
      await this.writeBody(id, m.body, chunks);
      await this.afterBody?.(id.toString());
      await this.write(this.q.putRow!, [...row, false]);
      return b;
    });
    if (!placed) return { id: id.toString(), stored: false };
    const { bucket, count } = placed;
    // counters: advisory, never retried; the message is stored whatever happens here
    try {
      await Promise.all([
        this.count(this.q.countBucket!, [1, m.address, m.mailbox, bucket]),
        this.count(this.q.addUsage!, [1, size, m.address]),
      ]);
      if (count + 1 >= this.bucketSize) await this.openNextBucket(m.address, m.mailbox, bucket);
    } catch (err) {
      this.log.warn({ err, address: m.address, mailbox: m.mailbox }, 'mailbox counters not updated');
    }
    return { id: id.toString(), stored: true };
  }

  /**
   * Writes chunks 0..n-1 of the parts: CHUNK_BATCH_BYTES of them per unlogged single-partition
   * batch (one chunk alone as a plain insert), CHUNK_WRITE_CONCURRENCY batches at a time.
   */
  private async writeBody(id: TimeUuid, parts: readonly Buffer[], n: number): Promise<void> {
    const perBatch = Math.max(1, Math.floor(CHUNK_BATCH_BYTES / this.chunkSize));
    const batches = Array.from({ length: Math.ceil(n / perBatch) }, (_, b) => b * perBatch);
    await eachLimited(batches, CHUNK_WRITE_CONCURRENCY, async (first) => {
      const last = Math.min(n, first + perBatch);
      const chunk = (i: number) => [id, i, slice(parts, i * this.chunkSize, (i + 1) * this.chunkSize)];
      if (last - first === 1) {
        await this.write(this.q.putChunk!, chunk(first));
        return;
      }
      const queries = Array.from({ length: last - first }, (_, k) => ({ query: this.q.putChunk!, params: chunk(first + k) }));
      await this.client.batch(queries, { prepare: true, logged: false, consistency: this.cl.write, isIdempotent: true });
    });
  }

  /** The messages of a mailbox, oldest first, read `pageSize` rows per query. */
  async *listMessages(address: string, mailbox: string, pageSize: number): AsyncGenerator<MessageRef> {
    await this.connect();
    try {
      yield* this.listMessagesInner(address, mailbox, pageSize);
    } catch (err) {
      throw storeError('listing messages', err);
    }
  }

  /**
   * The committed messages of a mailbox; after the last, removes the pending rows whose delivery
   * can no longer be retried, with their bodies.
   */
  private async *listMessagesInner(address: string, mailbox: string, pageSize: number): AsyncGenerator<MessageRef> {
    const abandoned: StoredRow[] = [];
    const cutoff = this.now() - this.abandonAfterMs;
    for (const bucket of await this.buckets(address, mailbox)) {
      for await (const r of this.bucketRows(address, mailbox, bucket, pageSize)) {
        if (!r.pending) yield { id: r.id, bucket: r.bucket, size: r.size, chunks: r.chunks };
        else if (r.received < cutoff) abandoned.push(r);
      }
    }
    if (abandoned.length > 0) await this.removeAbandoned(address, mailbox, abandoned);
  }

  /** Bodies first, then the pending rows that lead to them: a failure in between leaves a row for the next reader. */
  private async removeAbandoned(address: string, mailbox: string, rows: readonly StoredRow[]): Promise<void> {
    try {
      await eachLimited(rows, 16, async (r) => void (await this.write(this.q.delBody!, [TimeUuidType.fromString(r.id)])));
      await eachLimited(rows, 16, async (r) => void (await this.write(this.q.delRow!, [address, mailbox, r.bucket, TimeUuidType.fromString(r.id)])));
      this.log.info({ address, mailbox, messages: rows.length }, 'interrupted deliveries removed');
    } catch (err) {
      this.log.warn({ err, address, mailbox }, 'interrupted deliveries not removed yet');
    }
  }

  /** Every row of one bucket, committed or pending. */
  private async *bucketRows(address: string, mailbox: string, bucket: Date, pageSize: number): AsyncGenerator<StoredRow> {
    let after: TimeUuid | undefined;
    for (;;) {
      const rs = after
        ? await this.read(this.q.nextPage!, [address, mailbox, bucket, after, pageSize])
        : await this.read(this.q.firstPage!, [address, mailbox, bucket, pageSize]);
      for (const row of rs.rows) {
        after = row.get('id') as TimeUuid;
        const received = row.get('received') as Date | null;
        yield { id: after.toString(), bucket, size: num(row.get('size')), chunks: num(row.get('chunks')), pending: row.get('pending') === true, received: received?.getTime() ?? 0 };
      }
      if (rs.rowLength < pageSize) return;
    }
  }

  /** The body of a message, chunk by chunk (readPages, one page's chunks after the other). */
  async *readBody(ref: MessageRef, opts: { readAhead?: boolean } = {}): AsyncGenerator<Buffer> {
    for await (const page of this.readPages(ref, opts)) yield* page;
  }

  /**
   * The body of a message, page by page: each page the chunks one query read, in order, so that a
   * reader can send a page in one gathered write. BODY_INCOMPLETE when a chunk is missing.
   *
   * With `readAhead` (default, RETR) pages are READ_PAGE_BYTES from the first, READ_AHEAD of
   * them in flight while one is being sent: a big body streams at the store's throughput instead
   * of one round trip per page, in as few queries as its size allows. Without it (TOP), pages
   * grow from one chunk to TOP_CHUNKS_PER_READ (1, 2, 4) and a page is read only once the one
   * before is used up, so a reader that stops early has read little more than what it used.
   */
  async *readPages(ref: MessageRef, opts: { readAhead?: boolean } = {}): AsyncGenerator<Buffer[]> {
    await this.connect();
    const id = TimeUuidType.fromString(ref.id);
    const whole = opts.readAhead !== false;
    const ahead = whole ? READ_AHEAD : 1;
    const most = whole ? Math.max(1, Math.min(MAX_PAGE_ROWS, Math.floor(READ_PAGE_BYTES / this.chunkSize))) : TOP_CHUNKS_PER_READ;
    const page = (from: number, to: number) => {
      const p = this.read(this.q.getChunks!, [id, from, to]);
      p.catch(() => {}); // awaited below, in order; an early failure must not be unhandled
      return p;
    };
    const pending: { from: number; to: number; rows: Promise<cassandra.types.ResultSet> }[] = [];
    let nextFrom = 0;
    let size = whole ? most : 1;
    const fill = (upTo: number) => {
      while (pending.length < upTo && nextFrom < ref.chunks) {
        const to = Math.min(ref.chunks, nextFrom + size);
        pending.push({ from: nextFrom, to, rows: page(nextFrom, to) });
        nextFrom = to;
        size = Math.min(size * 2, most);
      }
    };
    fill(ahead);
    while (pending.length > 0) {
      const { from, to, rows: wait } = pending.shift()!;
      let rows: cassandra.types.Row[];
      try {
        rows = (await wait).rows;
      } catch (err) {
        throw storeError('reading a message body', err);
      }
      if (ahead > 1) fill(ahead);
      if (rows.length < to - from && this.cl.read !== ALL) {
        // A committed row promises the whole body at the write consistency, but a read below ALL
        // may ask a replica that missed chunks (it was down when they were written, and hints or
        // repair have not reached it yet): ask every replica, which also repairs the one behind.
        try {
          rows = (await this.read(this.q.getChunks!, [id, from, to], ALL)).rows;
        } catch (err) {
          throw storeError('reading a message body from every replica', err);
        }
      }
      const page: Buffer[] = [];
      for (let i = from; i < to; i++) {
        const row = rows[i - from];
        if (!row || row.get('chunk') !== i) throw new MailboxError('BODY_INCOMPLETE', `message ${ref.id}: body chunk ${i} of ${ref.chunks} is missing`);
        page.push(row.get('data') as Buffer);
      }
      yield page;
      if (ahead === 1) fill(1);
    }
  }

  /** Reads a whole body into memory (tests, TOP on small messages). */
  async readWholeBody(ref: MessageRef): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const b of this.readBody(ref)) parts.push(b);
    return Buffer.concat(parts);
  }

  /** Deletes messages of one mailbox: rows first (they vanish from listings), then bodies, then usage. */
  async deleteMessages(address: string, mailbox: string, refs: readonly MessageRef[]): Promise<void> {
    if (refs.length === 0) return;
    await this.guard('deleting messages', async () => {
      const byBucket = new Map<number, MessageRef[]>();
      for (const r of refs) {
        const list = byBucket.get(r.bucket.getTime()) ?? [];
        list.push(r);
        byBucket.set(r.bucket.getTime(), list);
      }
      for (const list of byBucket.values()) {
        for (let i = 0; i < list.length; i += DELETE_BATCH) {
          const queries = list.slice(i, i + DELETE_BATCH).map((r) => ({ query: this.q.delRow!, params: [address, mailbox, r.bucket, TimeUuidType.fromString(r.id)] }));
          await this.client.batch(queries, { prepare: true, logged: false, consistency: this.cl.write, isIdempotent: true });
        }
      }
    });
    try {
      await eachLimited(refs, 16, async (r) => void (await this.write(this.q.delBody!, [TimeUuidType.fromString(r.id)])));
    } catch (err) {
      this.log.warn({ err, address, mailbox }, 'message bodies left behind');
    }
    const bytes = refs.reduce((s, r) => s + r.size, 0);
    await this.count(this.q.addUsage!, [-refs.length, -bytes, address]).catch((err: unknown) => this.log.warn({ err, address }, 'usage counter not updated'));
  }

  private async usageOf(address: string): Promise<{ messages: number; bytes: number }> {
    const row = (await this.read(this.q.getUsage!, [address])).first();
    return { messages: num(row?.get('messages')), bytes: num(row?.get('bytes')) };
  }

  /** Messages and bytes a user holds (counters: advisory). */
  async usage(address: string): Promise<{ messages: number; bytes: number }> {
    return this.guard('reading usage', () => this.usageOf(address));
  }

  // ---- the POP3 lease -------------------------------------------------------------------------

  /** Takes the lease on (address, mailbox) for `ttlMs` unless another session holds it. */
  async acquireLock(address: string, mailbox: string, session: string, ttlMs: number): Promise<boolean> {
    let rs: cassandra.types.ResultSet;
    try {
      rs = await this.guard('locking a mailbox', () => this.lwt(this.q.lock!, [address, mailbox, session, new Date(this.now()), ttl(ttlMs)]));
    } catch (err) {
      // a lightweight transaction that timed out may have been applied all the same: the mailbox
      // would stay locked for the whole lease by a session that believes it failed
      this.releaseLater(address, mailbox, session);
      throw err;
    }
    // not applied: the row shows the holder, which may be this session (an earlier attempt of its own)
    return rs.wasApplied() || rs.first()?.get('session') === session;
  }

  /** Extends the lease; false when this session no longer holds it. */
  async renewLock(address: string, mailbox: string, session: string, ttlMs: number): Promise<boolean> {
    return this.guard('renewing a mailbox lock', async () => (await this.lwt(this.q.renewLock!, [ttl(ttlMs), session, new Date(this.now()), address, mailbox, session])).wasApplied());
  }

  /** Gives the lock back; when Cassandra does not answer, it is tried again in the background (releaseLater) and this throws. */
  async releaseLock(address: string, mailbox: string, session: string): Promise<void> {
    try {
      await this.guard('unlocking a mailbox', () => this.lwt(this.q.unlock!, [address, mailbox, session]));
    } catch (err) {
      this.releaseLater(address, mailbox, session);
      throw err;
    }
  }

  /**
   * Deletes the session's lock row (if it is still the holder) after 1, 5 and 30 s, until a delete
   * applies: the outcome of a timed-out lock or unlock is unknown, and a write that timed out can
   * still be applied after the first retry. The lease ends it in any case.
   */
  private releaseLater(address: string, mailbox: string, session: string): void {
    const attempt = (left: readonly number[]) => {
      const [delay, ...rest] = left;
      if (delay === undefined || this.closed) return;
      const t = setTimeout(() => {
        this.pendingReleases.delete(t);
        if (this.closed) return;
        this.lwt(this.q.unlock!, [address, mailbox, session]).then(
          (rs) => {
            if (rs.wasApplied()) this.log.info({ user: address, mailbox, session }, 'mailbox lock given back after an unanswered request');
            else attempt(rest);
          },
          (err: unknown) => {
            this.log.warn({ err, user: address, mailbox, session }, 'mailbox lock not given back yet');
            attempt(rest);
          },
        );
      }, delay);
      t.unref();
      this.pendingReleases.add(t);
    };
    attempt(RELEASE_RETRIES_MS);
  }
}

/** When a lock or unlock went unanswered: the delays of the deletes that give the lock back. */
const RELEASE_RETRIES_MS = [1000, 5000, 30_000];

const ttl = (ms: number) => Math.max(1, Math.ceil(ms / 1000));

/** Bytes [from, to) of the parts laid end to end: a view into one part, or a copy of the few bytes where it spans two. */
export function slice(parts: readonly Buffer[], from: number, to: number): Buffer {
  const pieces: Buffer[] = [];
  let at = 0;
  for (const p of parts) {
    const end = at + p.length;
    if (end > from && at < to) pieces.push(p.subarray(Math.max(0, from - at), Math.min(p.length, to - at)));
    if (end >= to) break;
    at = end;
  }
  return pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
}
