// Replay with workers: each worker of `streamgate start` is a member of its own (`<id>-1` …
// `<id>-N`) and its queues' events are archived under that id, so `events replay` run with the
// workers' configuration reads every worker's queues, not only the configuration's `gateway.id`.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Queue as BullQueue } from 'bullmq';
import { Redis } from 'ioredis';
import { runCli } from '../helpers/cli.ts';
import { EventPath, startEventLogServers, type EventLogServers } from '../helpers/eventPath.ts';

describe('events replay with gateway.workers', () => {
  let servers: EventLogServers;
  const paths: EventPath[] = [];
  before(async () => {
    servers = await startEventLogServers('wreplay');
  });
  after(async () => {
    for (const p of paths) await p.stop().catch(() => {});
    await servers?.stop();
  });

  it('re-publishes the events of every worker\'s queues, and only those the --gateway option names when given', async () => {
    const config = servers.config();
    const since = Date.now();
    const sent: Record<string, string[]> = {};
    for (const id of ['rw-1', 'rw-2']) {
      const p = new EventPath(config, servers.events, 'wreplay-events', { gatewayId: id });
      paths.push(p);
      await p.start();
      await p.traffic(`${id}.test`, 5, id);
      await p.archive.drain();
      sent[id] = (await p.archive.log.story(`${id}-0`)).map((e) => e.id);
      assert.ok(sent[id]!.length >= 3, `${id}: its first message's events archived`);
    }
    const file = join(mkdtempSync(join(tmpdir(), 'sg-wreplay-')), 'c.yaml');
    writeFileSync(file, `gateway: { id: rw, workers: 2 }\nevents: { redis: "${servers.events.url}" }\ncassandra: { contactPoints: ["${servers.contactPoint}"], keyspace: ${servers.keyspace} }\n`);
    const r = await runCli(['events', 'replay', '--since', new Date(since).toISOString(), '--queue', 'wreplay-out', '--config', file]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^rw-1:rw-1\.test: 15 events re-published$/m);
    assert.match(r.stdout, /^rw-2:rw-2\.test: 15 events re-published$/m);
    const conn = new Redis(servers.events.url, { maxRetriesPerRequest: null });
    const out = new BullQueue('wreplay-out', { connection: conn });
    try {
      const ids = new Set((await out.getJobs(['wait'], 0, 1000)).map((j) => j.id));
      for (const id of [...sent['rw-1']!, ...sent['rw-2']!]) assert.ok(ids.has(id), `${id} re-published`);
      // one worker's only
      const one = await runCli(['events', 'replay', '--since', new Date(since).toISOString(), '--queue', 'wreplay-one', '--gateway', 'rw-2', '--config', file]);
      assert.equal(one.status, 0, one.stderr);
      assert.doesNotMatch(one.stdout, /rw-1\.test/);
      assert.match(one.stdout, /^rw-2:rw-2\.test: 15 events re-published$/m);
    } finally {
      await out.close();
      conn.disconnect();
    }
  });
});
