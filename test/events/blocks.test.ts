// The event log's rows: blocks of consecutive events (history), their index (message_blocks: per
// block and index partition the ids of its messages) and, for an id that does not tell its time,
// per message its events of a block (message_events). A block archived again from the same cursor
// after a crash between its rows and the cursor write rewrites its own rows, so every event stays
// in exactly one row; rows written one per event (the log's first format) and per message and
// block in message_index (its second) are still read, and a keyspace made before block rows gets
// their column and the index tables at connect.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { HistoryArchive, indexKeyOf, minuteIndexKeyOf } from '../../src/events/archive.ts';
import { silentLogger } from '../../src/log.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import { eventId, histIdOf, newMessageId } from '../../src/message/ids.ts';
import { EventPath, startEventLogServers, type EventLogServers } from '../helpers/eventPath.ts';

const HOUR = 3_600_000;

describe('the event log in block rows', () => {
  let servers: EventLogServers;
  before(async () => {
    servers = await startEventLogServers('blocks');
  });
  after(async () => await servers.stop());

  /** Every event id in the queue's rows of history, row by row, read without the readers' de-duplication. */
  async function rowEvents(store: MailStore, gateway: string, domain: string): Promise<string[]> {
    const ks = servers.keyspace;
    const now = Date.now();
    const ids: string[] = [];
    for (const bucket of [now - (now % HOUR) - HOUR, now - (now % HOUR)]) {
      const rs = await store.client.execute(`SELECT ms, seq, events FROM ${ks}.history WHERE gateway = ? AND domain = ? AND bucket = ?`, [gateway, domain, new Date(bucket)], { prepare: true, fetchSize: 10_000 });
      for (const r of rs.rows) {
        const block = r.get('events') as Buffer | null;
        if (block) for (const [ms, seq] of JSON.parse(block.toString('utf8')) as [number, number][]) ids.push(eventId(gateway, domain, `${ms}-${seq}`));
        else ids.push(eventId(gateway, domain, `${String(r.get('ms'))}-${String(r.get('seq'))}`));
      }
    }
    return ids;
  }

  it('a block archived again from a cursor whose write was lost rewrites its own rows: each event in one row, each story once', async () => {
    const config = servers.config({ queue: { historyMaxLength: 100_000 } });
    const path = new EventPath(config, servers.events, 'blocks-1', { max: 100_000 });
    await path.start();
    await path.archive.stop(); // archived below only when drained, one pass at a time
    try {
      const domain = 'again.test';
      const ks = servers.keyspace;
      let archive = new HistoryArchive(path.qm, path.store, config, silentLogger);
      await path.traffic(domain, 100, 'a'); // 300 events
      await archive.drain();
      const c1 = archive.cursorOf(domain)!;
      await path.traffic(domain, 300, 'b'); // 900 events: one pass, two rows (500 and 400 events)
      // and messages with ids as the gateway makes them (indexed in message_blocks)
      const made = Array.from({ length: 50 }, () => newMessageId());
      await Promise.all(made.map((id) => path.qm.append({ id, domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw: Buffer.from('Subject: m\r\n\r\nx\r\n') })));
      await Promise.all((await path.qm.take(domain, 50)).map((m) => path.qm.settle(domain, m.id, 'delivered', { reply: '250 ok' })));
      await archive.drain();
      assert.equal(archive.status().archived, 1350);
      // the cursor write of that pass lost (the process died between the rows and the cursor)
      await path.store.client.execute(`UPDATE ${ks}.archive_cursors SET hist = ? WHERE gateway = ? AND domain = ?`, [c1, 'gw-arch', domain], { prepare: true });
      await path.traffic(domain, 300, 'c'); // 900 more: the pass again from c1 reads 1,800 events
      archive = new HistoryArchive(path.qm, path.store, config, silentLogger);
      await archive.drain();
      assert.equal(archive.status().archived, 1950, 'the pass read again from the cursor that was kept');
      const mine = path.emitted.filter((e) => e.domain === domain).map((e) => e.id);
      assert.equal(mine.length, 2250);
      const rows = await rowEvents(path.store, 'gw-arch', domain);
      assert.equal(rows.length, 2250, 'every event in one row, none in two');
      assert.deepEqual(rows, mine, 'in history order');
      assert.deepEqual(await path.archivedIds(domain), mine);
      // a message of the pass archived twice (its events in both of the pass's rows): its index
      // rows were rewritten, not added to
      const idx = await path.store.client.execute(`SELECT events FROM ${ks}.message_events WHERE message_id = ?`, ['b-299'], { prepare: true });
      const indexed = idx.rows.flatMap((r) => JSON.parse((r.get('events') as Buffer).toString('utf8')) as [number, number][]).map(([ms, seq]) => `${ms}-${seq}`);
      assert.equal(idx.rowLength, 2);
      assert.deepEqual(indexed, path.emitted.filter((e) => e.messageId === 'b-299').map((e) => histIdOf(e.id)), 'each of its events in one index row');
      const story = await archive.story('b-299');
      assert.deepEqual(story.map((e) => e.kind), ['accepted', 'attempted', 'delivered']);
      assert.deepEqual(story.map((e) => e.id), path.emitted.filter((e) => e.messageId === 'b-299').map((e) => e.id));
      // the index: a row per block row and index partition, each of its messages' ids once in it,
      // pointing at exactly the block rows that hold the message's events
      const indexRows = new Set<string>();
      const blocks = new Set<string>();
      for (const id of made) {
        const k = indexKeyOf(id)!;
        const rs = await path.store.client.execute(`SELECT ms, seq, ids FROM ${ks}.message_blocks WHERE second = ? AND shard = ? AND gateway = ? AND domain = ?`, [new Date(k.second), k.shard, 'gw-arch', domain], { prepare: true });
        const holding = rs.rows.filter((r) => {
          const ids = (r.get('ids') as Buffer).toString('latin1');
          assert.equal(ids.length % 20, 0);
          const all = ids.match(/.{20}/g)!;
          assert.equal(new Set(all).size, all.length, 'each id once in a row');
          for (const other of all) assert.equal(`${k.second}/${k.shard}`, `${indexKeyOf(other)!.second}/${indexKeyOf(other)!.shard}`, 'ids of its partition only');
          return all.includes(id);
        });
        const mine = path.emitted.filter((e) => e.messageId === id).map((e) => histIdOf(e.id));
        const inRows: string[] = [];
        for (const r of holding) {
          const ms = Number(r.get('ms'));
          blocks.add(`${ms}-${String(r.get('seq'))}`);
          indexRows.add(`${k.second}/${k.shard}/${ms}-${String(r.get('seq'))}`);
          const h = await path.store.client.execute(`SELECT events FROM ${ks}.history WHERE gateway = ? AND domain = ? AND bucket = ? AND ms = ? AND seq = ?`, ['gw-arch', domain, new Date(ms - (ms % HOUR)), ms, r.get('seq')], { prepare: true });
          const evs = JSON.parse((h.first().get('events') as Buffer).toString('utf8')) as [number, number, string, string][];
          assert.ok(evs.some((e) => e[3] === id), `${id}: an index row points at a block row holding its events`);
          for (const e of evs) if (e[3] === id) inRows.push(`${e[0]}-${e[1]}`);
        }
        assert.deepEqual(inRows, mine, `${id}: its events in the block rows its index rows point at, each once`);
      }
      const partitions = new Set(made.map((id) => `${indexKeyOf(id)!.second}/${indexKeyOf(id)!.shard}`));
      assert.ok(indexRows.size <= partitions.size * blocks.size && indexRows.size < made.length, `a row per block row and partition, not per message (${indexRows.size} rows for ${made.length} messages in ${partitions.size} partitions and ${blocks.size} block rows)`);
      for (const id of [made[0]!, made[49]!]) assert.deepEqual((await archive.story(id)).map((e) => e.kind), ['accepted', 'attempted', 'delivered']);
      // read by time from inside a row: exactly the events from that millisecond on
      const from = Number(histIdOf(mine[1000]!).split('-')[0]);
      const since: string[] = [];
      for await (const ev of archive.eventsOf(domain, from, Date.now() + 60_000)) since.push(ev.id);
      assert.deepEqual(since, mine.filter((id) => Number(histIdOf(id).split('-')[0]) >= from));
    } finally {
      await path.stop();
    }
  });

  it('reads rows written one per event beside block rows; a keyspace made before block rows gets their column at connect', async () => {
    const config = servers.config();
    const ks = servers.keyspace;
    const domain = 'legacy.test';
    // the keyspace as the log's first format left it: no events columns, a row per event, a cursor
    const setup = new MailStore(config, silentLogger);
    await setup.connect();
    for (const table of ['history', 'message_events']) await setup.client.execute(`ALTER TABLE ${ks}.${table} DROP events`);
    await setup.client.execute(`DROP TABLE ${ks}.message_index`);
    await setup.client.execute(`DROP TABLE ${ks}.message_blocks`);
    const t0 = Date.now() - 2 * HOUR;
    const bucket = new Date(t0 - (t0 % HOUR));
    const old = [
      { seq: 0, kind: 'accepted', details: { size: 10 } },
      { seq: 1, kind: 'attempted', details: { attempt: 1 } },
      { seq: 2, kind: 'delivered', details: { reply: '250 then' } },
    ];
    for (const e of old) {
      const at = new Date(t0);
      await setup.client.execute(`INSERT INTO ${ks}.history (gateway, domain, bucket, ms, seq, kind, message_id, txn, at, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, ['gw-arch', domain, bucket, t0, e.seq, e.kind, 'old-1', 7, at, JSON.stringify(e.details)], { prepare: true });
      await setup.client.execute(`INSERT INTO ${ks}.message_events (message_id, gateway, domain, ms, seq, kind, txn, at, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, ['old-1', 'gw-arch', domain, t0, e.seq, e.kind, 7, at, JSON.stringify(e.details)], { prepare: true });
    }
    await setup.client.execute(`INSERT INTO ${ks}.archive_cursors (gateway, domain, hist, first_bucket, updated) VALUES (?, ?, ?, ?, ?)`, ['gw-arch', domain, `${t0}-2`, bucket, new Date()], { prepare: true });
    await setup.close();

    const path = new EventPath(config, servers.events, 'blocks-2');
    await path.start();
    try {
      await path.store.connect();
      const cols = await path.store.client.execute('SELECT table_name, column_name FROM system_schema.columns WHERE keyspace_name = ?', [ks], { prepare: true });
      assert.deepEqual(cols.rows.filter((r) => r.get('column_name') === 'events').map((r) => r.get('table_name') as string).sort(), ['history', 'message_events', 'message_index'], 'the column added and the table made at connect');
      assert.ok(cols.rows.some((r) => r.get('table_name') === 'message_blocks' && r.get('column_name') === 'ids'), 'the index table made at connect');
      // a message indexed in the log's second format: its events in its rows of message_index
      const second = newMessageId();
      const m = minuteIndexKeyOf(second)!;
      const stored = [
        [t0, 3, 'accepted', second, 8, t0, { size: 20 }],
        [t0, 4, 'delivered', second, 8, t0, { reply: '250 second' }],
      ];
      await path.store.client.execute(`INSERT INTO ${ks}.message_index (minute, shard, message_id, gateway, domain, ms, seq, events) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, [new Date(m.minute), m.shard, second, 'gw-arch', domain, t0, 3, Buffer.from(JSON.stringify(stored))], { prepare: true });
      assert.deepEqual((await path.archive.story(second)).map((e) => [e.id, e.kind, e.details]), stored.map((e) => [eventId('gw-arch', domain, `${t0}-${String(e[1])}`), e[2], e[6]]));
      await path.traffic(domain, 10, 'new');
      await path.archive.drain();
      const ids = await path.archivedIds(domain);
      const legacy = old.map((e) => eventId('gw-arch', domain, `${t0}-${e.seq}`));
      assert.deepEqual(ids, [...legacy, ...path.emitted.filter((e) => e.domain === domain).map((e) => e.id)], 'the old rows first, then the block rows');
      const story = await path.archive.story('old-1');
      assert.deepEqual(story.map((e) => [e.id, e.kind, e.txn, e.details]), old.map((e, i) => [legacy[i], e.kind, 7, e.details]));
      assert.deepEqual((await path.archive.story('new-3')).map((e) => e.kind), ['accepted', 'attempted', 'delivered']);
    } finally {
      await path.stop();
    }
  });
});
