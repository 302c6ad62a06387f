// Batched event jobs (events.batch N): the publisher puts up to N consecutive events of one queue
// in one BullMQ job, each keeping its own id. A consumer (streamgate/client's onEvent) gets every
// event exactly once with its id, in each queue's order; `streamgate events replay` sends the
// archived events again as batches of the same events with the same ids.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Queue as BullQueue } from 'bullmq';
import { connect, EVENT_BATCH_JOB, type StreamgateEvent } from '../../src/client/index.ts';
import type { Config } from '../../src/config/schema.ts';
import { compareIds, histIdOf } from '../../src/message/ids.ts';
import type { LifecycleEvent } from '../../src/message/types.ts';
import { runCli } from '../helpers/cli.ts';
import { EventPath, startEventLogServers, type EventLogServers } from '../helpers/eventPath.ts';
import { waitFor } from '../helpers/waitFor.ts';

const BATCH = 50;

describe('events.batch: several events per job, each with its id', () => {
  let servers: EventLogServers;
  let config: Config;
  before(async () => {
    servers = await startEventLogServers('batch');
    config = servers.config({ events: { batch: BATCH } });
  });
  after(async () => await servers?.stop());

  it('a consumer of batched jobs receives every event exactly once, ids intact and in order; a replay re-publishes them with the same ids', async () => {
    const path = new EventPath(config, servers.events, 'batch-events', { gatewayId: 'gw-batch', batch: BATCH });
    await path.start();
    const client = connect({ connection: servers.events.url, eventsQueue: 'batch-events' });
    const got: StreamgateEvent[] = [];
    try {
      const consumer = client.onEvent((ev) => void got.push(ev), { concurrency: 1 });
      // two queues at once, so their events interleave in the publisher's buffer
      // delivered as the relay records it, so that the client's schema takes every event
      const delivered = (d: string) => ({ attempt: 1, mx: 'mx.sink.test', tls: false, code: 250, reply: '250 2.0.0 ok', durationMs: 3, recipients: [{ rcpt: `r@${d}`, status: 'delivered', code: 250, enhanced: '2.0.0', text: 'ok', category: 'ok' }] });
      await Promise.all([path.traffic('one.test', 1500, 'a', delivered('one.test')), path.traffic('two.test', 1000, 'b', delivered('two.test'))]);
      const emitted = path.emitted;
      const total = emitted.length;
      assert.equal(total, 2500 * 3);
      await waitFor(() => got.length >= total, { timeout: 60_000, what: `${total} events consumed` });
      await path.archive.drain();
      await consumer.close();
      assert.equal((await path.bull.getJobCounts('failed')).failed, 0, 'no job failed');
      assert.equal(got.length, total, 'none twice');
      assert.deepEqual(new Set(got.map((e) => e.id)), new Set(emitted.map((e) => e.id)), 'every event, by its id');
      const byId = new Map(emitted.map((e) => [e.id, e]));
      for (const e of got) assert.deepEqual(e, JSON.parse(JSON.stringify(byId.get(e.id))), `event ${e.id} as written`);
      for (const d of ['one.test', 'two.test']) {
        const ids = got.filter((e) => e.domain === d).map((e) => histIdOf(e.id));
        assert.deepEqual(ids, [...ids].sort(compareIds), `${d}: in the queue's order`);
      }
      // the jobs: batches of at most BATCH events of one queue, named and identified by their run
      const jobs = await path.bull.getJobs(['completed'], 0, -1, true);
      assert.ok(jobs.length >= total / BATCH && jobs.length < total / 5, `${jobs.length} jobs for ${total} events`);
      for (const j of jobs) {
        const evs = (j.data as { events: LifecycleEvent[] }).events;
        assert.equal(j.name, EVENT_BATCH_JOB);
        assert.ok(evs.length >= 1 && evs.length <= BATCH);
        assert.equal(new Set(evs.map((e) => e.domain)).size, 1, 'one queue per job');
        assert.equal(j.id, `${evs[0]!.id}..${histIdOf(evs.at(-1)!.id)}`);
      }

      // replay from a time: the events after it, batched, with their ids
      const mine = emitted.filter((e) => e.domain === 'one.test');
      const from = Number(histIdOf(mine[Math.floor(mine.length / 2)]!.id).split('-')[0]);
      const expected = mine.filter((e) => Number(histIdOf(e.id).split('-')[0]) >= from).map((e) => e.id);
      const file = join(mkdtempSync(join(tmpdir(), 'sg-batch-')), 'c.yaml');
      writeFileSync(file, `gateway: { id: gw-batch }\nevents: { redis: "${servers.events.url}", batch: ${BATCH} }\ncassandra: { contactPoints: ["${servers.contactPoint}"], keyspace: ${servers.keyspace} }\n`);
      const r = await runCli(['events', 'replay', '--since', new Date(from).toISOString(), '--domain', 'one.test', '--queue', 'batch-replayed', '--config', file]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^one\\.test: ${expected.length} events re-published$`, 'm'));
      const rq = new BullQueue('batch-replayed', { connection: path.conn });
      try {
        const replayed = (await rq.getJobs(['wait'], 0, -1, true)).flatMap((j) => {
          assert.equal(j.name, EVENT_BATCH_JOB);
          return (j.data as { events: LifecycleEvent[] }).events;
        });
        assert.deepEqual(replayed.map((e) => e.id), expected, 'the same ids, in order, each once');
        assert.deepEqual(replayed[0], (await path.archive.story(replayed[0]!.messageId)).find((e) => e.id === expected[0]), 'the archived event as it was');
      } finally {
        await rq.close();
      }
    } finally {
      await client.close();
      await path.stop();
    }
  });
});
