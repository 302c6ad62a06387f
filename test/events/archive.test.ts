// The event log: every history event archived into Cassandra exactly once, through a durable
// cursor, before Redis trims it. queue.historyMaxLength is kept in Redis only below what the
// archive and the events publisher both confirmed; while Cassandra does not answer, nothing is
// trimmed and the history grows; afterwards every event is in the log once, and one message's
// story is found by its id whatever its age.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Queue as BullQueue } from 'bullmq';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HistoryArchive } from '../../src/events/archive.ts';
import { rebuildCheck } from '../../src/events/projection.ts';
import { startOps } from '../../src/ops/http.ts';
import { runCli } from '../helpers/cli.ts';
import { silentLogger } from '../../src/log.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import type { LifecycleEvent } from '../../src/message/types.ts';
import type { Config } from '../../src/config/schema.ts';
import { cassandraForTests } from '../helpers/cassandra.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedis, startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor, freePort } from '../helpers/waitFor.ts';
import { TcpProxy } from '../mailbox/proxy.ts';
import { EventPath } from '../helpers/eventPath.ts';

const MAX = 1000;
/** The archived history's cap cuts at every 1,000th event's id (Queue.historyCut()): up to this many more stay. */
const CAP_ROUNDING = 1000;
/** Both replicas hold the same history, of at least `min` and under the cap plus its rounding. */
const capped = (lens: number[], min = MAX) => lens.length === 2 && lens[0] === lens[1] && lens[0]! >= min && lens[0]! < MAX + CAP_ROUNDING;
const TOKEN = 'archive-test-token-0123456789';
/**
 * Messages of the judging run, three events each: 20,000 (60,000 events) by default, to stay near
 * a minute on a busy 2-core machine; ARCHIVE_TEST_MESSAGES=66667 runs 200,000 events.
 */
const JUDGE_MESSAGES = Number(process.env.ARCHIVE_TEST_MESSAGES ?? 20_000);

describe('the event log (events.archive)', () => {
  let pool: TestRedis[];
  let events: TestRedis;
  let proxy: TcpProxy;
  let keyspace: string;
  let config: Config;
  before(async () => {
    const node = await cassandraForTests();
    [pool, events] = await Promise.all([startRedisPool(2), startRedis()]);
    proxy = new TcpProxy(await freePort(), { host: node.host, port: node.port });
    await proxy.open();
    keyspace = `sg_arch_${randomBytes(3).toString('hex')}`;
    config = testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { historyMaxLength: MAX }, cassandra: { contactPoints: [proxy.address], keyspace } });
  });
  after(async () => {
    const s = new MailStore(testConfig({ cassandra: { contactPoints: [(await cassandraForTests()).contactPoint], keyspace } }), silentLogger);
    await s.client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`).catch(() => {});
    await s.close();
    await proxy.close();
    await Promise.all([...pool, events].map((r) => r.stop()));
  });

  it('archives every event once through a Cassandra outage and an archive restart; Redis trims only what is archived and published', async () => {
    const path = new EventPath(config, events, 'arch-events-1');
    await path.start();
    try {
      const domain = 'outage.test';
      await path.traffic(domain, 600, 'a'); // 1,800 events
      await path.archive.drain();
      // 1,800 events: the first cut the cap may make (at the 1,000th event) would leave 801, under the cap
      await waitFor(async () => capped(await path.histLens(domain, pool)), { what: `history within the cap of ${MAX} once archived` });
      // Cassandra goes away: events go on, nothing more is trimmed
      await proxy.close();
      await path.traffic(domain, 600, 'b');
      await assert.rejects(path.archive.drain(), /does not advance/);
      await path.history.cap(domain);
      // what was archived may go; the 1,800 events not archived all stay, above historyMaxLength
      assert.deepEqual(await path.histLens(domain, pool), [1800, 1800], 'nothing trimmed that is not archived');
      assert.match(path.archive.status().failing ?? '', /.+/);
      assert.ok(path.archive.status().lagEvents >= 1800, `lag ${path.archive.status().lagEvents}`);
      assert.ok(path.archive.status().hot >= 1800, `the events not archived held for the stories: ${path.archive.status().hot}`);
      // the archive process restarts while Cassandra is still away, then Cassandra returns
      await path.archive.stop();
      path.archive = new HistoryArchive(path.qm, path.store, config, silentLogger);
      path.archive.on('archived', (d: string) => void path.history.cap(d));
      path.archive.start();
      await proxy.open();
      await waitFor(() => path.archive.status().failing === undefined && path.archive.cursorOf(domain) === path.emitted.at(-1)!.id.split('/').pop(), { timeout: 30_000, what: 'archive caught up' });
      await waitFor(() => path.pub.cursorOf(domain) === path.archive.cursorOf(domain), { what: 'publisher caught up' });
      await path.history.cap(domain);
      const lens = await path.histLens(domain, pool);
      assert.ok(capped(lens), `cut to the cap once archived and published: ${lens.join(', ')}`);
      assert.ok(lens[0]! < 1800, 'the archived events below the cut went');
      const archived = await path.archivedIds(domain);
      assert.equal(archived.length, 3600, 'every event archived');
      assert.equal(new Set(archived).size, 3600, 'once');
      assert.deepEqual(archived, path.emitted.filter((e) => e.domain === domain).map((e) => e.id), 'the same events, in history order');
      // the oldest message's story, long trimmed from Redis
      const story = await path.archive.story('a-0');
      assert.deepEqual(story.map((e) => e.kind), ['accepted', 'attempted', 'delivered']);
      assert.equal(story[2]!.details.reply, '250 ok');
      // the log has each event as consumers got it live (the accepted one with its envelope and size)
      const live = path.emitted.filter((e) => e.messageId === 'a-0');
      assert.deepEqual(story, live.map((e) => ({ ...e, at: story.find((x) => x.id === e.id)!.at })));
      assert.deepEqual(story[0]!.details.envelope, { from: 's@src.test', to: ['r@outage.test'] });
    } finally {
      await path.stop();
    }
  });

  it(`${(JUDGE_MESSAGES * 3).toLocaleString('en')} events through a queue with historyMaxLength 1,000: each archived exactly once, the first message's story found, the publisher loses none, replay from a time re-publishes exactly the events after it`, async () => {
    const path = new EventPath(config, events, 'arch-events-2');
    await path.start();
    try {
      const domain = 'judge.test';
      const t0 = Date.now();
      const ids = await path.traffic(domain, JUDGE_MESSAGES, 'j');
      const total = JUDGE_MESSAGES * 3;
      await waitFor(() => path.pub.cursorOf(domain) === path.emitted.at(-1)!.id.split('/').pop(), { timeout: 60_000, what: 'every event published' });
      await path.archive.drain();
      const ms = Date.now() - t0;
      await path.history.cap(domain);
      const lens = await path.histLens(domain, pool);
      assert.ok(capped(lens), `Redis keeps historyMaxLength (up to ${CAP_ROUNDING} more): ${lens.join(', ')}`);
      const mine = path.emitted.filter((e) => e.domain === domain).map((e) => e.id);
      assert.equal(mine.length, total);
      const archived = await path.archivedIds(domain);
      assert.equal(archived.length, total, 'every event archived');
      assert.deepEqual(archived, mine, 'exactly once, in history order');
      const story = await path.archive.story(ids[0]!);
      assert.deepEqual(story.map((e) => [e.kind, e.messageId]), [['accepted', ids[0]], ['attempted', ids[0]], ['delivered', ids[0]]]);
      const counts = await path.bull.getJobCounts('wait');
      assert.equal(counts.wait, total, 'every event published as a job');
      for (const id of [mine[0]!, mine[Math.floor(total / 2)]!, mine.at(-1)!]) assert.ok(await path.bull.getJob(id), `job ${id}`);
      console.log(`# ${total} events through the queue, published and archived in ${ms} ms (${Math.round((total * 1000) / ms)} events/s)`);
      // replay from a time: exactly the events from it on, with their ids, into a queue of the operator's choosing
      const from = mine[Math.floor(total * 0.7)]!.split('/').pop()!.split('-')[0]!;
      const expected = mine.filter((id) => Number(id.split('/').pop()!.split('-')[0]) >= Number(from));
      const file = join(mkdtempSync(join(tmpdir(), 'sg-replay-')), 'c.yaml');
      writeFileSync(file, `gateway: { id: gw-arch }\nevents: { redis: "${events.url}", batch: false }\ncassandra: { contactPoints: ["${proxy.address}"], keyspace: ${keyspace} }\n`);
      const replayed = await runCli(['events', 'replay', '--since', new Date(Number(from)).toISOString(), '--domain', domain, '--queue', 'replayed', '--config', file]);
      assert.equal(replayed.status, 0, replayed.stderr);
      assert.match(replayed.stdout, new RegExp(`^judge\\.test: ${expected.length} events re-published$`, 'm'));
      const rq = new BullQueue('replayed', { connection: path.conn });
      try {
        const jobs = await rq.getJobs(['wait'], 0, -1, true);
        assert.deepEqual(jobs.map((j) => j.id), expected, 'exactly the events after the time, in order, with their ids');
        const first = jobs[0]!.data as LifecycleEvent;
        assert.deepEqual(first, (await path.archive.story(first.messageId)).find((e) => e.id === expected[0]), 'the archived event as it was');
      } finally {
        await rq.close();
      }
      const badSince = await runCli(['events', 'replay', '--since', 'yesterday', '--config', file]);
      assert.equal(badSince.status, 2);
      assert.match(badSince.stderr, /--since: expected a time like "2026-11-29T10:00Z" or a duration ago like "24h", got "yesterday"/);
    } finally {
      await path.stop();
    }
  });

  it('rebuilds the state of a queue with messages in every state from its events alone, the same as the live one; a wrong state record is named (queue rebuild-state --check)', async () => {
    const path = new EventPath(config, events, 'arch-events-3');
    await path.start();
    const ops = await startOps({ config: { ...config, ops: { ...config.ops, listen: { host: '127.0.0.1', port: 0 }, tokens: [{ token: TOKEN, role: 'admin', name: undefined }] } }, queues: path.qm, log: silentLogger, rebuildCheck: (d) => rebuildCheck(path.qm, path.archive, d) });
    try {
      const domain = 'states.test';
      const qm = path.qm;
      await path.traffic(domain, 1500, 'old'); // 4,500 events, most of them trimmed from Redis
      const raw = Buffer.from('Subject: s\r\n\r\nx\r\n');
      await Promise.all(Array.from({ length: 400 }, (_, i) => qm.append({ id: `s${i}`, domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw })));
      const taken = await qm.take(domain, 200); // in flight
      const later = Date.now() + 60_000; // one clock reading: the defer time and the event's nextAt are the same
      await Promise.all(taken.slice(0, 80).map((m, i) => qm.defer(domain, m.id, later + i, { reply: '451 later', nextAt: later + i })));
      await Promise.all(taken.slice(80, 100).map((m) => qm.requeue(domain, m.id, { reason: 'test' })));
      await Promise.all(taken.slice(100, 130).map((m) => qm.settle(domain, m.id, 'bounced', { reply: '550 no' })));
      await Promise.all(['s300', 's301', 's302', 's303'].map((id) => qm.hold(domain, id, 'op', 'look')));
      await qm.release(domain, 's303', 'op', 'ok');
      await path.archive.drain();
      const file = join(mkdtempSync(join(tmpdir(), 'sg-arch-')), 'c.yaml');
      writeFileSync(file, `ops: { listen: "127.0.0.1:${ops.port}", tokens: ["${TOKEN}"] }\n`);
      const ok = await runCli(['queue', 'rebuild-state', domain, '--check', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
      assert.equal(ok.status, 0, ok.stdout + ok.stderr);
      assert.match(ok.stdout, /^states\.test: \d+ events folded, 370 messages rebuilt, 370 live$/m);
      assert.match(ok.stdout, /^-- identical$/m);
      // one state record made wrong on both replicas: named, with what the events say
      const q = qm.queues.get(domain)!;
      for (const r of pool) {
        const c = r.client();
        const st = JSON.parse((await c.hget(q.keys[3], 's350'))!) as Record<string, unknown>;
        await c.hset(q.keys[3], 's350', JSON.stringify({ ...st, s: 'h' }));
      }
      const bad = await runCli(['queue', 'rebuild-state', domain, '--check', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
      assert.equal(bad.status, 1);
      assert.match(bad.stdout, /^s350: rebuilt \{"s":"ready","a":0,"n":0\}, live \{"s":"held","a":0,"n":0\}$/m);
      assert.match(bad.stdout, /^-- 1 differences$/m);
      const usage = await runCli(['queue', 'rebuild-state', domain, '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
      assert.equal(usage.status, 2);
    } finally {
      await ops.stop();
      await path.stop();
    }
  });
});
