import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import type { Queue } from '../../src/queue/queue.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedis, startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { newMessageId } from '../../src/message/ids.ts';

const fast = { timeout: '500ms', heartbeat: { every: '100ms', missed: 2 }, rebuildAfter: '1s', blockSize: 100 };

const msg = (domain: string, i: number) => ({
  id: newMessageId(),
  domain,
  envelope: { from: `s@src.test`, to: [`r${i}@${domain}`] },
  raw: Buffer.from(`Subject: ${i}\r\n\r\n${'x'.repeat(1000)}\r\n`),
});

/** Appends `total` messages, 16 at a time, calling `at` once `trigger` have been acknowledged. */
async function appendRun(qm: QueueManager, domain: string, total: number, trigger: number, at: () => void) {
  const acked: string[] = [];
  let refused = 0;
  let fired = false;
  let next = 0;
  const worker = async () => {
    while (next < total) {
      const m = msg(domain, next++);
      try {
        await qm.append(m);
        acked.push(m.id);
      } catch (err) {
        assert.equal((err as { code: string }).code, 'QUEUE_UNAVAILABLE', (err as Error).message);
        refused++;
        await new Promise((r) => setTimeout(r, 20));
      }
      if (!fired && acked.length >= trigger) {
        fired = true;
        at();
      }
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  return { acked, refused };
}

async function onReplica(r: TestRedis, q: Queue, ids: string[]): Promise<number> {
  const c = r.client();
  let present = 0;
  for (let i = 0; i < ids.length; i += 500) {
    const got = await c.hmget(q.keys[3], ...ids.slice(i, i + 500));
    present += got.filter(Boolean).length;
  }
  return present;
}

for (const signal of ['SIGKILL', 'SIGSTOP'] as const) {
  describe(`a replica lost to ${signal} during appends`, () => {
    it('loses no acknowledged message, rebuilds on the spare and accepts again by itself', async () => {
      const pool = await startRedisPool(3);
      const qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: fast }), silentLogger, { gatewayId: `gw-${signal}` });
      try {
        await qm.start();
        const domain = `${signal.toLowerCase()}.test`;
        const q = await qm.queueFor(domain);
        const victimId = q.replicas[1]!.node.id;
        const victim = pool.find((r) => victimId.endsWith(`:${r.port}`))!;
        const survivor = pool.find((r) => q.replicas[0]!.node.id.endsWith(`:${r.port}`))!;
        const spare = pool.find((r) => r !== victim && r !== survivor)!;
        const t0 = Date.now();
        const { acked, refused } = await appendRun(qm, domain, 3000, 500, () => victim.kill(signal));
        assert.ok(acked.length >= 500, `acked ${acked.length}`);
        assert.ok(refused > 0, 'appends were refused while the pair was broken');
        // every acknowledged message is on the survivor
        assert.equal(await onReplica(survivor, q, acked), acked.length);
        // the queue was rebuilt on the spare and took appends again by itself
        await waitFor(() => q.whole && q.replicas.some((r) => r.node.id.endsWith(`:${spare.port}`)), { timeout: 20_000, what: 'rebuilt on the spare' });
        assert.equal(await onReplica(spare, q, acked), acked.length);
        await qm.append(msg(domain, 99999));
        const [a, b] = [survivor.client(), spare.client()];
        assert.equal(await a.hget(q.keys[2], 'txn'), await b.hget(q.keys[2], 'txn'));
        assert.equal(await a.xlen(q.keys[0]), await b.xlen(q.keys[0]));
        assert.equal(await a.xlen(q.keys[1]), await b.xlen(q.keys[1]));
        const health = qm.health().queues.find((t) => t.domain === domain)!;
        assert.deepEqual(health.replicas.map((r) => r.sync), ['Sync', 'Sync']);
        if (signal === 'SIGSTOP') assert.ok(Date.now() - t0 < 30_000);
      } finally {
        pool.forEach((r) => r.kill('SIGCONT'));
        await qm.stop();
        await Promise.all(pool.map((r) => r.stop()));
      }
    });
  });
}

describe('standby path', () => {
  it('switches to the standby address when the active path fails, and the table says so', async () => {
    const r0 = await startRedis({ bind: ['127.0.0.1', '127.0.0.2'] });
    const others = await startRedisPool(2);
    // the active path goes through a TCP proxy we can cut; the standby is the server's second address
    const { createServer, connect } = await import('node:net');
    const sockets = new Set<import('node:net').Socket>();
    const proxy = createServer((c) => {
      const up = connect(r0.port, '127.0.0.1');
      sockets.add(c).add(up);
      c.pipe(up).pipe(c);
      c.on('error', () => up.destroy());
      up.on('error', () => c.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const pport = (proxy.address() as { port: number }).port;
    const nodes = [{ url: `redis://127.0.0.1:${pport}`, standby: `redis://127.0.0.2:${r0.port}` }, ...others.map((r) => r.url)];
    const qm = new QueueManager(testConfig({ redis: { nodes }, queue: fast }), silentLogger, { gatewayId: 'gw-standby' });
    try {
      await qm.start();
      const node = qm.nodes[0]!;
      await waitFor(() => node.status().standby === 'Ready', { what: 'standby ready' });
      assert.equal(node.status().active, 'Run');
      proxy.close();
      for (const s of sockets) s.destroy();
      await waitFor(() => node.status().path === 'standby' && node.status().standby === 'Run', { timeout: 5000, what: 'switched to standby' });
      assert.equal(node.status().active, 'NG');
      assert.equal(node.up, true);
      // the node still takes writes through the standby path
      const domain = 'standby.test';
      for (let i = 0; i < 50; i++) await qm.append(msg(domain, i));
      assert.equal(qm.depth(domain).ready, 50);
    } finally {
      await qm.stop();
      await Promise.all([r0.stop(), ...others.map((r) => r.stop())]);
    }
  });
});

describe('capacity', () => {
  it('refuses a node whose maxmemory-policy is not noeviction', async () => {
    const good = await startRedis();
    const bad = await startRedis({ policy: 'allkeys-lru' });
    const qm = new QueueManager(testConfig({ redis: { nodes: [good.url, bad.url] } }), silentLogger, { gatewayId: 'gw-policy' });
    try {
      await assert.rejects(qm.start(), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'NODE_POLICY');
        assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${bad.port} has maxmemory-policy allkeys-lru; streamgate needs noeviction`));
        return true;
      });
    } finally {
      await good.stop();
      await bad.stop();
    }
  });

  it('gives a typed error and writes nothing when mail is at its budget or the queue is full; other memory never refuses mail', async () => {
    const pool = await startRedisPool(2, { maxmemory: '20mb' });
    const qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { maxLength: 5, mailBudget: 0.5, historyBudget: 0.1 } }), silentLogger, { gatewayId: 'gw-full' });
    try {
      await qm.start();
      // queue length limit
      for (let i = 0; i < 5; i++) await qm.append(msg('len.test', i));
      await assert.rejects(qm.append(msg('len.test', 5)), { code: 'QUEUE_FULL' });
      const lq = qm.queues.get('len.test')!;
      for (const r of pool) assert.equal(await r.client().xlen(lq.keys[0]), 5);
      // memory that is not mail (history, events, anything else) up to 92% of maxmemory: mail
      // below its budget is still accepted
      await qm.queueFor('mem.test');
      const c0 = pool[0]!.client();
      for (let i = 0; ; i++) {
        const used = Number(/used_memory:(\d+)/.exec(await c0.info('memory'))![1]);
        if (used > 20 * 1024 * 1024 * 0.92) break;
        await c0.set(`ballast:${i}`, 'x'.repeat(256 * 1024));
      }
      await qm.nodes[0]!.beat();
      await qm.append(msg('mem.test', 0));
      assert.equal(qm.depth('mem.test').ready, 1);
    } finally {
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
    // mail's own budget: 50% of 20 MB; 1 MB messages are refused (STORAGE_FULL) once it is
    // reached, and nothing of the refused one is written
    const pool2 = await startRedisPool(2, { maxmemory: '20mb' });
    const qm2 = new QueueManager(testConfig({ redis: { nodes: pool2.map((r) => r.url) }, queue: { mailBudget: 0.5, historyBudget: 0.1 } }), silentLogger, { gatewayId: 'gw-full2' });
    const big = (i: number) => ({ ...msg('big.test', i), raw: Buffer.alloc(1024 * 1024, 'y') });
    try {
      await qm2.start();
      let accepted = 0;
      let refused: { id: string } | undefined;
      for (let i = 0; i < 20 && !refused; i++) {
        const m = big(i);
        try {
          await qm2.append(m);
          accepted++;
        } catch (err) {
          assert.equal((err as { code?: string }).code, 'STORAGE_FULL');
          assert.match((err as Error).message, /queued mail is at its budget \(queue\.mailBudget, 50% of maxmemory\)/);
          refused = m;
        }
      }
      assert.ok(refused, 'refused at the budget');
      assert.ok(accepted >= 8 && accepted <= 10, `about 10 MB accepted (${accepted} × 1 MB)`);
      const q2 = qm2.queues.get('big.test')!;
      for (const r of pool2) {
        assert.equal(await r.client().xlen(q2.keys[0]), accepted);
        assert.equal(await r.client().hget(q2.keys[3], refused.id), null);
      }
      // once a message is delivered, the next tally makes room
      const [t] = await qm2.take('big.test', 1);
      await qm2.settle('big.test', t!.id, 'delivered');
      qm2.tallyMemory();
      await qm2.append(big(99));
    } finally {
      await qm2.stop();
      await Promise.all(pool2.map((r) => r.stop()));
    }
  });
});

describe('rebuild while writes go on', () => {
  it('copies a queue to the spare while messages are settled, deferred and held, and both copies agree', async () => {
    const pool = await startRedisPool(3);
    const qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { ...fast, blockSize: 50 } }), silentLogger, { gatewayId: 'gw-busy-rebuild' });
    try {
      await qm.start();
      const domain = 'busy.test';
      for (let i = 0; i < 3000; i++) await qm.append(msg(domain, i));
      const q = qm.queues.get(domain)!;
      const victimId = q.replicas[1]!.node.id;
      const victim = pool.find((r) => victimId.endsWith(`:${r.port}`))!;
      // writes that are not appends keep going while the pair is broken and while it is copied
      let stop = false;
      let writes = 0;
      const busy = (async () => {
        while (!stop) {
          const taken = await qm.take(domain, 20).catch(() => []);
          await Promise.all(
            taken.map((t, k) => {
              const op = k % 3 === 0 ? qm.settle(domain, t.id, 'delivered') : k % 3 === 1 ? qm.defer(domain, t.id, Date.now() + 60_000, { reply: '451' }) : q.requeue(t.id);
              return op.then(() => writes++, () => {});
            }),
          );
          await new Promise((r) => setTimeout(r, 2));
        }
      })();
      victim.kill('SIGKILL');
      await waitFor(() => !q.whole, { timeout: 5_000, what: 'the lost replica noticed' });
      await waitFor(() => q.whole && !q.replicas.some((r) => r.node.id === victimId), { timeout: 30_000, what: 'rebuilt on the spare' });
      stop = true;
      await busy;
      assert.ok(writes > 100, `writes during the failure and the copy: ${writes}`);
      const [a, b] = q.replicas.map((r) => r.node.client);
      assert.deepEqual(await a!.hgetall(q.keys[3]), await b!.hgetall(q.keys[3]), 'state hashes agree');
      assert.deepEqual(await a!.hgetall(q.keys[2]), await b!.hgetall(q.keys[2]), 'counters and transaction numbers agree');
      const ids = async (c: typeof a, key: string) => ((await c!.xrange(key, '-', '+')) as [string, string[]][]).map((e) => e[0]);
      assert.deepEqual(await ids(a, q.keys[0]), await ids(b, q.keys[0]), 'live streams agree');
      assert.deepEqual(await ids(a, q.keys[1]), await ids(b, q.keys[1]), 'history streams agree');
      const meta = await a!.hgetall(q.keys[2]);
      assert.equal(['ready', 'deferred', 'held', 'inflight'].reduce((n, k) => n + Number(meta[k] ?? 0), 0), await a!.xlen(q.keys[0]), 'counters add up to the live stream');
      // and the pair takes writes as one again
      await qm.append(msg(domain, 5000));
      assert.equal(await a!.hget(q.keys[2], 'txn'), await b!.hget(q.keys[2], 'txn'));
    } finally {
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });
});
