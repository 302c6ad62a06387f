// The mailbox store's CQL schema: CassMail's shape (a user's mailbox is a wide row of messages
// ordered by TimeUUID) with Apache James's fixes against fat partitions and tombstones:
//
//   users            one row per user: scrypt password hash, quota
//   mailboxes        one small partition per user listing its mailboxes
//   mailbox_buckets  per (user, mailbox): the start time of each bucket and a counter of the
//                    messages written into it. A bucket is a time window of accept times; a new one
//                    opens once the newest holds `cassandra.bucketSize` messages, so partitions stay
//                    bounded whatever the rate.
//   messages         the wide rows: one partition per (user, mailbox, bucket), one narrow row per
//                    message clustered by its TimeUUID (oldest first). Metadata only, no bytes.
//                    `pending` is true from before a message's first body chunk is written until
//                    the row is committed after its last: such a row is invisible to readers and
//                    records the body to remove should the delivery never finish.
//   bodies           the message bytes in their own partition per message, split into chunks of
//                    `cassandra.chunkSize` (a body up to that size is one chunk). Not compressed:
//                    mail is mostly base64 of already compressed attachments, where LZ4 saves
//                    little and costs the CPU that bounds ingest (a third more MB/s without it here);
//                    `ALTER TABLE bodies WITH compression = ...` turns it on where disk matters more.
//   usage            counters per user (messages, bytes) for quotas and listings
//   pop3_locks       one lease row per (user, mailbox) while a POP3 session holds it: the one
//                    lightweight transaction of the store (INSERT ... IF NOT EXISTS USING TTL)
//
// The event log (src/events/archive.ts) lives in the same keyspace:
//   history          every lifecycle event of every queue, kept whole: one partition per (gateway,
//                    domain, hour), one row per block of consecutive events (up to 500), keyed by
//                    its first event's history position (ms, seq), the same time-then-sequence
//                    order as the event id and as the mailboxes' TimeUUIDs; `events` holds them
//                    (JSON). A block archived again after a crash rewrites its own row, so an
//                    event is never in the log twice. Rows of one event each (kind .. details,
//                    `events` null) are the log's first format, still read.
//   message_blocks   the index of the messages' stories: per block row of history and partition
//                    of the index, a row of the ids of the messages with events in it (`ids`, 20
//                    bytes each), in a partition per second of the message's id and shard of 8 (the
//                    id's hash); a lookup reads that partition (a few KB at 1,000 messages a
//                    second) and then the block rows holding the id, by key, whatever its age. A
//                    block's index is a few rows, not one per message: Cassandra's cost goes by rows
//   message_events   per message whose id does not tell its time (a producer's `job-…`) a row per
//                    block of the log it has events in, holding them: a partition per message id;
//                    and the log's first format, a row per event
//   message_index    the index of the log's second format, still read: per message a row per block
//                    holding its events, in a partition per minute of its id and shard of 16
//   archive_cursors  per (gateway, domain): the last event archived (the archive's durable cursor)
//   purged           a purged message kept for queue.purgeGrace (written with that TTL), so that
//                    `queue unpurge` can put it back: per (gateway, message id) and queue, its
//                    envelope and metadata, its body in chunks of cassandra.chunkSize
//
// `streamgate schema apply` creates what is missing and sets the keyspace's replication from the
// configuration; the gateway applies the schema at start when a table is missing.
import type cassandra from 'cassandra-driver';
import type { Config } from '../config/schema.ts';

export const TABLES = ['users', 'mailboxes', 'mailbox_buckets', 'messages', 'bodies', 'usage', 'pop3_locks', 'history', 'message_events', 'message_index', 'message_blocks', 'archive_cursors', 'purged'] as const;

/** The replication map for CREATE/ALTER KEYSPACE, from `cassandra.replicationStrategy` and `replicationFactor`. */
export function replicationCql(config: Config): string {
  const c = config.cassandra;
  if (c.replicationStrategy === 'NetworkTopologyStrategy') {
    return `{'class': 'NetworkTopologyStrategy', '${c.localDataCenter.replace(/'/g, "''")}': ${c.replicationFactor}}`;
  }
  return `{'class': 'SimpleStrategy', 'replication_factor': ${c.replicationFactor}}`;
}

export function keyspaceCql(config: Config): string {
  return `CREATE KEYSPACE IF NOT EXISTS ${config.cassandra.keyspace} WITH replication = ${replicationCql(config)}`;
}

/** CREATE TABLE statements, in dependency-free order; `ks` is the keyspace. */
export function tableCql(ks: string): Record<(typeof TABLES)[number], string> {
  return {
    users: `CREATE TABLE IF NOT EXISTS ${ks}.users (
      address text PRIMARY KEY,
      password_hash text,
      quota bigint,
      created timestamp)`,
    mailboxes: `CREATE TABLE IF NOT EXISTS ${ks}.mailboxes (
      address text,
      name text,
      created timestamp,
      PRIMARY KEY (address, name))`,
    mailbox_buckets: `CREATE TABLE IF NOT EXISTS ${ks}.mailbox_buckets (
      address text,
      mailbox text,
      bucket timestamp,
      messages counter,
      PRIMARY KEY ((address, mailbox), bucket))
      WITH CLUSTERING ORDER BY (bucket ASC)`,
    messages: `CREATE TABLE IF NOT EXISTS ${ks}.messages (
      address text,
      mailbox text,
      bucket timestamp,
      id timeuuid,
      size bigint,
      chunks int,
      queue_id text,
      sender text,
      received timestamp,
      pending boolean,
      PRIMARY KEY ((address, mailbox, bucket), id))
      WITH CLUSTERING ORDER BY (id ASC)
      AND compaction = {'class': 'LeveledCompactionStrategy'}`,
    bodies: `CREATE TABLE IF NOT EXISTS ${ks}.bodies (
      id timeuuid,
      chunk int,
      data blob,
      PRIMARY KEY (id, chunk))
      WITH compression = {'enabled': 'false'}`,
    usage: `CREATE TABLE IF NOT EXISTS ${ks}.usage (
      address text PRIMARY KEY,
      messages counter,
      bytes counter)`,
    pop3_locks: `CREATE TABLE IF NOT EXISTS ${ks}.pop3_locks (
      address text,
      mailbox text,
      session text,
      since timestamp,
      PRIMARY KEY ((address, mailbox)))
      WITH gc_grace_seconds = 3600`,
    history: `CREATE TABLE IF NOT EXISTS ${ks}.history (
      gateway text,
      domain text,
      bucket timestamp,
      ms bigint,
      seq int,
      kind text,
      message_id text,
      txn bigint,
      at timestamp,
      details text,
      events blob,
      PRIMARY KEY ((gateway, domain, bucket), ms, seq))
      WITH CLUSTERING ORDER BY (ms ASC, seq ASC)`,
    message_events: `CREATE TABLE IF NOT EXISTS ${ks}.message_events (
      message_id text,
      gateway text,
      domain text,
      ms bigint,
      seq int,
      kind text,
      txn bigint,
      at timestamp,
      details text,
      events blob,
      PRIMARY KEY (message_id, gateway, domain, ms, seq))`,
    message_index: `CREATE TABLE IF NOT EXISTS ${ks}.message_index (
      minute timestamp,
      shard int,
      message_id text,
      gateway text,
      domain text,
      ms bigint,
      seq int,
      events blob,
      PRIMARY KEY ((minute, shard), message_id, gateway, domain, ms, seq))`,
    message_blocks: `CREATE TABLE IF NOT EXISTS ${ks}.message_blocks (
      second timestamp,
      shard int,
      gateway text,
      domain text,
      ms bigint,
      seq int,
      ids blob,
      PRIMARY KEY ((second, shard), gateway, domain, ms, seq))`,
    archive_cursors: `CREATE TABLE IF NOT EXISTS ${ks}.archive_cursors (
      gateway text,
      domain text,
      hist text,
      first_bucket timestamp,
      updated timestamp,
      PRIMARY KEY (gateway, domain))`,
    purged: `CREATE TABLE IF NOT EXISTS ${ks}.purged (
      gateway text,
      message_id text,
      domain text,
      chunk int,
      envelope text,
      meta text,
      accepted_at timestamp,
      purged_at timestamp,
      chunks int,
      data blob,
      PRIMARY KEY ((gateway, message_id), domain, chunk))`,
  };
}

/** Columns added after their table was first released: "table.column" → CQL type. */
export const ADDED_COLUMNS: Record<string, string> = {
  'messages.pending': 'boolean',
  'history.events': 'blob',
  'message_events.events': 'blob',
};

/**
 * What is missing: "keyspace", table names and "table.column" for columns added since a table
 * was created. Empty when the schema is complete.
 */
export async function missingSchema(client: cassandra.Client, config: Config): Promise<string[]> {
  const ks = config.cassandra.keyspace;
  const k = await client.execute('SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?', [ks], { prepare: true });
  if (k.rowLength === 0) return ['keyspace', ...TABLES];
  const t = await client.execute('SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?', [ks], { prepare: true });
  const have = new Set(t.rows.map((r) => r.get('table_name') as string));
  const missing: string[] = TABLES.filter((name) => !have.has(name));
  const c = await client.execute('SELECT table_name, column_name FROM system_schema.columns WHERE keyspace_name = ?', [ks], { prepare: true });
  const columns = new Set(c.rows.map((r) => `${r.get('table_name') as string}.${r.get('column_name') as string}`));
  for (const col of Object.keys(ADDED_COLUMNS)) {
    if (have.has(col.split('.')[0]!) && !columns.has(col)) missing.push(col);
  }
  return missing;
}

export interface ApplyResult {
  created: string[];
  /** True when the keyspace's replication was changed to what the configuration says. */
  replicationChanged: boolean;
}

/**
 * Creates the keyspace and every missing table. With `alterReplication`, also sets the keyspace's
 * replication to the configured one when it differs (run a repair afterwards when raising it).
 */
export async function applySchema(client: cassandra.Client, config: Config, opts: { alterReplication?: boolean } = {}): Promise<ApplyResult> {
  const ks = config.cassandra.keyspace;
  const missing = await missingSchema(client, config);
  const created: string[] = [];
  if (missing.includes('keyspace')) {
    await client.execute(keyspaceCql(config));
    created.push('keyspace');
  }
  const ddl = tableCql(ks);
  // the driver waits for schema agreement after each DDL statement (maxSchemaAgreementWaitSeconds)
  for (const name of TABLES) {
    if (!missing.includes(name)) continue;
    await client.execute(ddl[name]);
    created.push(name);
  }
  for (const col of missing.filter((m) => m.includes('.'))) {
    const [table, column] = col.split('.') as [string, string];
    await client.execute(`ALTER TABLE ${ks}.${table} ADD ${column} ${ADDED_COLUMNS[col]!}`);
    created.push(col);
  }
  let replicationChanged = false;
  if (opts.alterReplication && !missing.includes('keyspace')) {
    const rs = await client.execute('SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?', [ks], { prepare: true });
    const current = (rs.first()?.get('replication') ?? {}) as Record<string, string>;
    if (!sameReplication(current, config)) {
      await client.execute(`ALTER KEYSPACE ${ks} WITH replication = ${replicationCql(config)}`);
      replicationChanged = true;
    }
  }
  return { created, replicationChanged };
}

function sameReplication(current: Record<string, string>, config: Config): boolean {
  const c = config.cassandra;
  const cls = current.class ?? '';
  if (c.replicationStrategy === 'SimpleStrategy') {
    return cls.endsWith('SimpleStrategy') && Number(current.replication_factor) === c.replicationFactor;
  }
  const dcs = Object.keys(current).filter((k) => k !== 'class');
  return cls.endsWith('NetworkTopologyStrategy') && dcs.length === 1 && Number(current[c.localDataCenter]) === c.replicationFactor;
}
