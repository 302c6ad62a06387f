// Replay and re-classification with workers: each worker of `streamgate start` is a member of its
// own (`<id>-1` … `<id>-N`) and its queues' events are archived under that id, so `events replay`
// and `bounces reclassify` run with the workers' configuration read every worker's queues, not
// only the configuration's `gateway.id`.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Queue as BullQueue } from 'bullmq';
import { Redis } from 'ioredis';
import { runCli } from '../helpers/cli.ts';
import { EventPath, startEventLogServers, type EventLogServers } from '../helpers/eventPath.ts';

describe('events replay and bounces reclassify with gateway.workers', () => {
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
    writeFileSync(file, `gateway: { id: rw, workers: 2 }\nevents: { redis: "${servers.events.url}", batch: false }\ncassandra: { contactPoints: ["${servers.contactPoint}"], keyspace: ${servers.keyspace} }\n`);
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

  it("bounces reclassify reads every worker's event log, and only those --gateway names when given", async () => {
    const config = servers.config();
    const refused = (rcpt: string) => ({ mx: '127.0.0.1', recipients: [{ rcpt, status: 'bounced', code: 550, enhanced: '5.7.1', text: 'Not accepted here', category: 'permanent' }] });
    for (const id of ['rc-1', 'rc-2']) {
      const p = new EventPath(config, servers.events, 'wreclass-events', { gatewayId: id });
      paths.push(p);
      await p.start();
      await p.traffic(`${id}.test`, 2, id, refused(`x@${id}.test`));
      await p.archive.drain();
    }
    const dir = mkdtempSync(join(tmpdir(), 'sg-wreclass-'));
    const file = join(dir, 'c.yaml');
    writeFileSync(file, `gateway: { id: rc, workers: 2 }\ncassandra: { contactPoints: ["${servers.contactPoint}"], keyspace: ${servers.keyspace} }\n`);
    const rules = join(dir, 'rules.txt');
    writeFileSync(rules, 'bounced   policy        ^550 5\\.7\\.1\\b\n');
    const r = await runCli(['bounces', 'reclassify', '--since', '1h', '--rules', rules, '--config', file]);
    assert.equal(r.status, 0, r.stderr);
    for (const id of ['rc-1', 'rc-2']) assert.match(r.stdout, new RegExp(`^${id}-0 x@${id}\\.test \\(${id}:${id}\\.test, attempt 0, [^)]+\\): bounced/permanent → bounced/policy  "550 5\\.7\\.1 Not accepted here"$`, 'm'));
    assert.match(r.stdout, /^-- 4 of 4 replies in 4 attempts since .* would change class/m);
    const one = await runCli(['bounces', 'reclassify', '--since', '1h', '--rules', rules, '--gateway', 'rc-2', '--config', file]);
    assert.equal(one.status, 0, one.stderr);
    assert.doesNotMatch(one.stdout, /rc-1/);
    assert.match(one.stdout, /^-- 2 of 2 replies in 2 attempts since .* would change class/m);
  });
});
