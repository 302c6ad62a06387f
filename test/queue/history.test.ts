// A message's history is read on a connection of its own (never queued behind, or in front of,
// the queue's writes) and the lookup is bounded; a capped trim removes at most 1,000 events a call
// (a script run the queue's writes wait behind), never past the id it is given, and when what it
// must keep fits in the cap it finds the cut by count, reading no event. The archived history's
// cap (HistoryBudget.cap) cuts at an id the queue kept, reading nothing, and by count only for
// events from before the process started.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { compareIds, idAfter } from '../../src/message/ids.ts';
import { HistoryBudget } from '../../src/queue/historyBudget.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';

/** A queue manager on a replica pair of its own, started for `fn` and stopped after it. */
async function onPair(gatewayId: string, fn: (qm: QueueManager, pool: TestRedis[]) => Promise<void>): Promise<void> {
  const pool = await startRedisPool(2);
  const qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { historyMaxLength: 100_000 } }), silentLogger, { gatewayId });
  try {
    await qm.start();
    await fn(qm, pool);
  } finally {
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  }
}

describe('message history lookup', () => {
  it('reads on its own connection and stops after 20,000 events', async () => {
    await onPair('gw-hist', async (qm, pool) => {
      const domain = 'hist.test';
      const msg = (id: string) => ({ id, domain, envelope: { from: 'a@src.test', to: [`b@${domain}`] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') });
      await qm.append(msg('old'));
      await qm.append(msg('recent-0'));
      const events = await qm.history(domain, 'recent-0');
      assert.deepEqual(events.map((e) => e.kind), ['accepted']);
      const lists = await Promise.all(pool.map((r) => r.client().call('CLIENT', 'LIST') as Promise<string>));
      const reads = lists.join('\n').split('\n').find((l) => l.includes('name=streamgate-reads'));
      assert.ok(reads, 'a connection of its own for reads');
      assert.match(reads, /cmd=xrevrange/);
      // 25,000 events of other messages after the old one's: its lookup stops at the bound
      await Promise.all(Array.from({ length: 12_500 }, (_, i) => qm.append(msg(`m${i}`)).then(() => qm.purge(domain, `m${i}`, 'ops', 'fill'))));
      assert.deepEqual(await qm.history(domain, 'old'), [], 'not found within the last 20,000 events');
      assert.deepEqual((await qm.history(domain, 'm12499')).map((e) => e.kind), ['accepted', 'purged']);
    });
  });

  it('trims a history over its cap in calls of at most 1,000 events, never at or past the id given, alike on both replicas', async () => {
    await onPair('gw-trim', async (qm, pool) => {
      const domain = 'trim.test';
      await Promise.all(Array.from({ length: 2500 }, (_, i) => qm.append({ id: `m${i}`, domain, envelope: { from: 'a@src.test', to: [`b@${domain}`] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') })));
      const all = await qm.historySince(domain, undefined, 3000);
      assert.equal(all.length, 2500);
      const q = qm.queues.get(domain)!;
      const keep = all[2000]!.histId; // the events below it may go
      const trimmed: number[] = [];
      for (let n = -1; n !== 0; ) trimmed.push((n = await q.trimHistory(keep, 100)));
      assert.deepEqual(trimmed, [1000, 1000, 0], 'two calls of 1,000, then nothing below the id is left');
      const left = await qm.historySince(domain, undefined, 3000);
      assert.deepEqual(left.map((e) => e.histId), all.slice(2000).map((e) => e.histId));
      const key = (await pool[0]!.client().keys('*hist*')).find((k) => k.includes(domain))!;
      const firsts = await Promise.all(pool.map(async (r) => [await r.client().xlen(key), (await r.client().xrange(key, '-', '+', 'COUNT', 1))[0]![0]]));
      assert.deepEqual(firsts[0], [500, keep]);
      assert.deepEqual(firsts[1], firsts[0], 'the same history on both replicas');
    });
  });

  it('trims by count alone, reading no event, when every event from the id given on is within the cap', async () => {
    await onPair('gw-trim-count', async (qm, pool) => {
      const domain = 'count.test';
      await Promise.all(Array.from({ length: 2500 }, (_, i) => qm.append({ id: `m${i}`, domain, envelope: { from: 'a@src.test', to: [`b@${domain}`] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') })));
      const all = await qm.historySince(domain, undefined, 3000);
      const q = qm.queues.get(domain)!;
      const xranges = async () => Number(/^cmdstat_xrange:calls=(\d+)/m.exec((await pool[0]!.client().info('commandstats')) as string)?.[1] ?? 0);
      const before = await xranges();
      const trimmed: number[] = [];
      // 100 events from the id on, a cap of 1,000: the oldest 1,500 may go, 1,000 a call
      for (let n = -1; n !== 0; ) trimmed.push((n = await q.trimHistory(all[2400]!.histId, 1000)));
      assert.deepEqual(trimmed, [1000, 500, 0]);
      assert.equal(await xranges(), before, 'no XRANGE: the cut is found by count');
      assert.deepEqual((await qm.historySince(domain, undefined, 3000)).map((e) => e.histId), all.slice(1500).map((e) => e.histId));
      // 800 events from the id on, over a cap of 100: only the 200 below the id go, found by reading them
      const rest = await qm.historySince(domain, undefined, 3000);
      const bound = rest[200]!.histId;
      const more: number[] = [];
      for (let n = -1; n !== 0; ) more.push((n = await q.trimHistory(bound, 100)));
      assert.deepEqual(more, [200, 0]);
      assert.equal((await qm.historySince(domain, undefined, 3000))[0]!.histId, bound, 'never past the id given');
      const key = (await pool[0]!.client().keys('*hist*')).find((k) => k.includes(domain))!;
      const lens = await Promise.all(pool.map((r) => r.client().xlen(key)));
      assert.deepEqual(lens, [800, 800], 'alike on both replicas');
    });
  });
});

describe('the archived history\'s cap', () => {
  const reads = async (pool: TestRedis[]) =>
    Promise.all(pool.map(async (r) => {
      const stats = (await r.client().info('commandstats')) as string;
      const calls = (cmd: string) => Number(new RegExp(`^cmdstat_${cmd}:calls=(\\d+)`, 'm').exec(stats)?.[1] ?? 0);
      return calls('xrange') + calls('xrevrange');
    }));

  it('cuts at an id the queue kept, reading no event, never past the cursor, at most 10,000 events a call, alike on both replicas; by count after a restart', async () => {
    const pool = await startRedisPool(2);
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) } });
    const domain = 'cap.test';
    const msg = (i: number) => ({ id: `m${i}`, domain, envelope: { from: 'a@src.test', to: [`b@${domain}`] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') });
    let qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-cap', archived: true });
    try {
      await qm.start();
      for (let i = 0; i < 25_000; i += 500) await Promise.all(Array.from({ length: 500 }, (_, j) => qm.append(msg(i + j))));
      const all = await qm.historySince(domain, undefined, 30_000);
      assert.equal(all.length, 25_000);
      let cursor = all[24_499]!.histId; // what every consumer has: the events after it must stay
      const budget = () => new HistoryBudget(qm, 0.5, () => cursor, silentLogger, { capTo: 2_000 });
      const q = qm.queues.get(domain)!;
      const cuts: number[] = [];
      const trim = q.trimHistory.bind(q);
      q.trimHistory = async (minId, keep) => {
        const n = await trim(minId, keep);
        cuts.push(n);
        return n;
      };
      const before = await reads(pool);
      const trimmed = await budget().cap(domain);
      assert.deepEqual(await reads(pool), before, 'no XRANGE or XREVRANGE on either replica: nothing read');
      // the ids kept are every 1,000th event's: the cut keeps 2,001 (at least the cap), in calls of at most 10,000
      assert.equal(trimmed, 22_999);
      assert.deepEqual(cuts, [9_999, 10_000, 3_000]);
      const key = (await pool[0]!.client().keys('*hist*')).find((k) => k.includes(domain))!;
      const firsts = await Promise.all(pool.map(async (r) => [await r.client().xlen(key), (await r.client().xrange(key, '-', '+', 'COUNT', 1))[0]![0]]));
      assert.deepEqual(firsts[0], [2_001, all[22_999]!.histId]);
      assert.deepEqual(firsts[1], firsts[0], 'the same history on both replicas');
      assert.equal(q.histLen, 2_001);

      // a cursor behind the cut: nothing at or after the event following it goes
      for (let i = 25_000; i < 30_000; i += 500) await Promise.all(Array.from({ length: 500 }, (_, j) => qm.append(msg(i + j))));
      const now = await qm.historySince(domain, undefined, 10_000);
      cursor = now[1_499]!.histId;
      const before2 = await reads(pool);
      await budget().cap(domain);
      assert.deepEqual(await reads(pool), before2, 'still nothing read');
      assert.equal((await qm.historySince(domain, undefined, 10_000))[0]!.histId, now[1_500]!.histId, 'the first event left is the one after the cursor');
      assert.ok(compareIds(idAfter(cursor), now[1_500]!.histId) <= 0);

      // a restarted gateway has kept no ids: the exact way, by count, never past the cursor either
      await qm.stop();
      qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-cap', archived: true });
      await qm.start();
      cursor = now.at(-1)!.histId;
      const left = await qm.historySince(domain, undefined, 10_000);
      const before3 = await reads(pool);
      await budget().cap(domain);
      assert.ok((await reads(pool)).every((n, i) => n > before3[i]!), 'the cut found by reading, on both replicas');
      const after = await Promise.all(pool.map((r) => r.client().xlen(key)));
      assert.deepEqual(after, [2_000, 2_000], 'cut to the cap exactly, alike on both replicas');
      assert.equal((await qm.historySince(domain, undefined, 10_000))[0]!.histId, left.at(-2_000)!.histId);
    } finally {
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });
});
