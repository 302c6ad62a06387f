// The queue's scripts issued in one turn of the event loop reach a node in one write: counted on
// the client's real socket (countSends()), against a real redis-server.
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { defineScripts, runScript } from '../../src/queue/scripts.ts';
import { newMessageId } from '../../src/message/ids.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedis, startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { countSends } from '../helpers/sends.ts';

const nextTurn = () => new Promise((r) => setImmediate(r));

describe('queue writes gathered per turn of the event loop', () => {
  let redis: TestRedis;
  let client: Redis;
  before(async () => {
    redis = await startRedis();
    client = redis.client();
    defineScripts(client);
    await client.ping();
  });
  after(async () => {
    await redis.stop();
  });

  it('sends the scripts of one turn in one write, in order, and those of later turns apart', async () => {
    const sends = countSends(client.stream as Socket);
    // ten keys, then the same ten again in the same turn: the second ten answered 0, so the order held
    const first = Array.from({ length: 20 }, (_, i) => runScript<number>(client, 'markOnce', [`once:${i % 10}`, 60_000]));
    await nextTurn();
    assert.deepEqual(sends, { writes: 1, chunks: 20 });
    assert.deepEqual(await Promise.all(first), [...Array(10).fill(1), ...Array(10).fill(0)]);

    const apart = { writes: sends.writes, chunks: sends.chunks };
    for (let i = 0; i < 3; i++) {
      assert.equal(await runScript<number>(client, 'markOnce', [`apart:${i}`, 60_000]), 1);
      await nextTurn();
    }
    assert.deepEqual({ writes: sends.writes - apart.writes, chunks: sends.chunks - apart.chunks }, { writes: 3, chunks: 3 });
  });

  it('answers a script issued alone within the turn, without waiting for another', async () => {
    const t0 = performance.now();
    assert.equal(await runScript<number>(client, 'markOnce', ['alone', 60_000]), 1);
    assert.ok(performance.now() - t0 < 1000);
  });
});

describe('a queue manager writes one turn of appends to many queues in one write per node', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  before(async () => {
    pool = await startRedisPool(2);
    qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) } }), silentLogger, { gatewayId: 'gwA' });
    await qm.start();
  });
  after(async () => {
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('appends to 12 queues in one turn with one write to each replica, every message stored', async () => {
    const domains = Array.from({ length: 12 }, (_, i) => `gather${i}.test`);
    const msg = (domain: string) => ({ id: newMessageId(), domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw: Buffer.from('Subject: x\r\n\r\nbody\r\n'), meta: { client: '127.0.0.1' } });
    // each queue made (placed on both nodes) first, so that the turn below holds the appends only
    await Promise.all(domains.map((d) => qm.append(msg(d))));
    await nextTurn();
    const sends = qm.nodes.map((n) => countSends(n.client.stream as Socket));
    await Promise.all(domains.map((d) => qm.append(msg(d))));
    // each node received the twelve appends in one write (its heartbeat may add one of its own)
    for (const s of sends) {
      assert.ok(s.chunks >= 12, `chunks: ${s.chunks}`);
      assert.ok(s.writes <= s.chunks - 11, `${s.writes} writes for ${s.chunks} scripts`);
    }
    for (const d of domains) assert.equal((await qm.take(d, 10)).length, 2);
  });
});
