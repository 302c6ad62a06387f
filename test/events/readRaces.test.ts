// Reads of the event log while the queue goes on. Time travel (`queue list --at T`) folds the log
// up to the archive's cursor, then the history in Redis after it. If the archive advances and Redis trims past that
// cursor between the two reads (the queue's writes are not held for a read), the events in between
// are in neither read; the fold must notice and read them from the log. A story reads the events
// still in memory, then the log: an archive pass between the two must not lose them.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { HistoryArchive } from '../../src/events/archive.ts';
import { queuesAt } from '../../src/events/projection.ts';
import { silentLogger } from '../../src/log.ts';
import { EventPath, startEventLogServers, type EventLogServers } from '../helpers/eventPath.ts';
import { waitFor } from '../helpers/waitFor.ts';

describe('reads of the event log while the archive and the trims go on', () => {
  let servers: EventLogServers;
  before(async () => {
    servers = await startEventLogServers('travel');
  });
  after(async () => await servers.stop());

  it('answers from the log when Redis trimmed past the archive cursor between the two reads', async () => {
    const config = servers.config({ queue: { historyMaxLength: 100 } });
    const path = new EventPath(config, servers.events, 'travel-1', { max: 100 });
    await path.start();
    await path.archive.stop(); // archived below only when drained
    try {
      const domain = 'travel.test';
      const qm = path.qm;
      const archive = new HistoryArchive(qm, path.store, config, silentLogger);
      path.archive = archive; // the trims follow its cursor
      const raw = Buffer.from('Subject: t\r\n\r\nx\r\n');
      const append = (ids: string[]) => Promise.all(ids.map((id) => qm.append({ id, domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw })));
      await append(Array.from({ length: 50 }, (_, i) => `w${i}`));
      await archive.drain(); // the log has the 50 accepted
      const taken = await qm.take(domain, 20);
      await Promise.all(taken.slice(0, 10).map((m) => qm.settle(domain, m.id, 'delivered', { reply: '250 ok' })));
      // 30 events in Redis only: 20 attempted, 10 delivered
      await sleep(5);
      const at = Date.now();
      await sleep(5);
      // once the log has been read, the queue goes on: the archive advances and Redis trims past its old cursor
      const read = archive.eventsOf.bind(archive);
      let raced = false;
      archive.eventsOf = async function* (d: string, since: number, until: number) {
        yield* read(d, since, until);
        if (raced || d !== domain) return;
        raced = true;
        await path.traffic(domain, 100, 'later'); // 300 events after `at`
        await archive.drain();
        await waitFor(() => path.pub.cursorOf(domain) === archive.cursorOf(domain), { what: 'every event published' });
        await path.history.cap(domain);
      };
      const [q] = await queuesAt(qm, archive, at, domain);
      assert.ok(raced, 'the trim came between the reads');
      const hist = (await qm.history(domain, undefined, 1000)).map((e) => e.messageId);
      assert.ok(!hist.includes('w0'), 'Redis no longer has the events of the moment');
      assert.deepEqual(q!.depth, { ready: 30, deferred: 0, held: 0, inflight: 10 });
      assert.equal(q!.messages.length, 40);
      assert.ok(!q!.messages.some((m) => taken.slice(0, 10).some((t) => t.id === m.id)), 'the delivered ones are gone');
    } finally {
      await path.stop();
    }
  });

  it('a story read while the archive moves its events from memory into the log has each event once', async () => {
    const config = servers.config();
    const path = new EventPath(config, servers.events, 'travel-2');
    await path.start();
    await path.archive.stop();
    try {
      const domain = 'story.test';
      const archive = new HistoryArchive(path.qm, path.store, config, silentLogger);
      archive.start(); // its hot index follows the events
      const [id] = await path.traffic(domain, 1, 'hot');
      // the log answers before the events reach it; the archive moves them out of memory before the answer is used
      const read = archive.log.story.bind(archive.log);
      archive.log.story = async (m: string) => {
        const cold = await read(m);
        await archive.drain();
        return cold;
      };
      const story = await archive.story(id!);
      assert.deepEqual(story.map((e) => e.kind), ['accepted', 'attempted', 'delivered']);
    } finally {
      await path.stop();
    }
  });
});
