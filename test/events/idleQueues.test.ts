// The event log and queues that come and go: a queue deleted as idle (queue.idleDelete, only once
// its history is archived and published) is forgotten by the archive (its cursor and counts) and
// by the events publisher (its cursor, in memory and in the events Redis); the same domain again
// makes a new queue archived on from the cursor in Cassandra and published from its start, and
// the deleted queue's stories stay in the log.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EventPath, startEventLogServers, type EventLogServers } from '../helpers/eventPath.ts';
import { waitFor } from '../helpers/waitFor.ts';

describe('the event log with queues deleted as idle', () => {
  let servers: EventLogServers;
  before(async () => {
    servers = await startEventLogServers('idleq');
  });
  after(async () => await servers?.stop());

  it('forgets a queue deleted as idle once its events are archived and published: queues that come and go leave nothing behind', async () => {
    const path = new EventPath(servers.config({ queue: { historyMaxLength: 1000, idleDelete: '300ms' } }), servers.events, 'idleq-events');
    await path.start();
    try {
      await path.traffic('gone.test', 20, 'g');
      // kept.test keeps a message in flight: never empty, never deleted
      await path.qm.append({ id: 'k-held', domain: 'kept.test', envelope: { from: 's@src.test', to: ['r@kept.test'] }, raw: Buffer.from('Subject: k\r\n\r\nk\r\n') });
      assert.equal((await path.qm.take('kept.test', 1)).length, 1);
      await path.archive.drain();
      assert.equal(path.archive.status().queues, 2);
      await waitFor(() => path.pub.cursorOf('gone.test') === path.archive.cursorOf('gone.test'), { what: 'gone.test published' });
      await waitFor(async () => (await path.qm.dropIdle(), !path.qm.view('gone.test')), { timeout: 15_000, what: 'gone.test deleted as idle' });
      assert.ok(path.qm.view('kept.test'), 'a queue with a message in flight stays');
      assert.equal(path.archive.status().queues, 1, 'the deleted queue forgotten, the other kept');
      assert.equal(path.archive.cursorOf('gone.test'), undefined);
      assert.equal(path.pub.cursorOf('gone.test'), undefined);
      const cursorKey = 'sg:events:cursor:{gw-arch}:gone.test';
      await waitFor(async () => (await path.conn.exists(cursorKey)) === 0, { what: "the publisher's cursor key removed" });
      assert.equal(await path.conn.exists('sg:events:cursor:{gw-arch}:kept.test'), 1, "the kept queue's cursor stays");
      // the same domain again: a new queue, archived on from the cursor kept in Cassandra
      await path.traffic('gone.test', 2, 'h');
      await path.archive.drain();
      assert.equal(path.archive.status().queues, 2);
      const last = path.emitted.filter((e) => e.domain === 'gone.test').at(-1)!.id.split('/').pop();
      await waitFor(async () => (await path.conn.get(cursorKey)) === last, { what: 'the new queue published' });
      assert.equal(path.archive.cursorOf('gone.test'), path.emitted.filter((e) => e.domain === 'gone.test').at(-1)!.id.split('/').pop());
      assert.deepEqual((await path.archive.story('g-0')).map((e) => e.kind), ['accepted', 'attempted', 'delivered'], "the deleted queue's stories stay in the log");
      assert.deepEqual((await path.archive.story('h-1')).map((e) => e.kind), ['accepted', 'attempted', 'delivered']);
    } finally {
      await path.stop();
    }
  });
});
