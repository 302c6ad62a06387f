import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

const N = 100_000;

describe('gateway restart', () => {
  it(`recovers ${N.toLocaleString('en')} queued messages in FIFO order with their attempts and next-attempt times`, async () => {
    const pool = await startRedisPool(3);
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) } });
    const domains = ['a.test', 'b.test', 'c.test', 'd.test'];
    let qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-restart' });
    try {
      await qm.start();
      const raw = Buffer.from(`Subject: x\r\n\r\n${'y'.repeat(200)}\r\n`);
      let i = 0;
      const worker = async () => {
        while (i < N) {
          const n = i++;
          const domain = domains[n % domains.length]!;
          await qm.append({ id: `m${n}`, domain, envelope: { from: 's@src.test', to: [`r${n}@${domain}`] }, raw });
        }
      };
      await Promise.all(Array.from({ length: 64 }, worker));
      // a mix of states: deferred with attempt counts and times, held, in flight at the "crash"
      const base = Date.now() + 3_600_000;
      for (const domain of domains) {
        const taken = await qm.take(domain, 300);
        await Promise.all(taken.slice(0, 200).map((t, k) => qm.defer(domain, t.id, base + k * 1000, { reply: '451 busy' })));
        const again = await qm.take(domain, 50); // next ready ones: left in flight
        assert.equal(again.length, 50);
        const q = qm.queues.get(domain)!;
        await Promise.all(taken.slice(200, 250).map((t) => q.requeue(t.id)));
        await Promise.all(taken.slice(200, 250).map((t) => qm.hold(domain, t.id, 'ops', 'check')));
      }
      const before = new Map(domains.map((d) => [d, [...qm.queues.get(d)!.msgs.values()].map((m) => ({ id: m.id, entryId: m.entryId, state: m.state === 'inflight' ? 'ready' : m.state, attempts: m.attempts, nextAt: m.nextAt }))]));
      const depthBefore = new Map(domains.map((d) => [d, qm.depth(d)]));
      await qm.stop();

      qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-restart' });
      await qm.start();
      assert.equal(qm.lastRecovery.messages, N);
      assert.equal(qm.lastRecovery.queues, domains.length);
      for (const d of domains) {
        const q = qm.queues.get(d)!;
        const after = [...q.msgs.values()].map((m) => ({ id: m.id, entryId: m.entryId, state: m.state, attempts: m.attempts, nextAt: m.nextAt }));
        assert.deepEqual(after, before.get(d), `${d}: same messages, order, attempts and times`);
        const db = depthBefore.get(d)!;
        assert.deepEqual(qm.depth(d), { ...db, ready: db.ready + db.inflight, inflight: 0 }, `${d}: in-flight messages back to ready`);
        // ready messages come out in FIFO order (held and deferred skipped)
        const first = await qm.take(d, 5);
        const expected = before.get(d)!.filter((m) => m.state === 'ready').slice(0, 5).map((m) => m.id);
        assert.deepEqual(first.map((t) => t.id), expected);
        // the replicas agree after the in-flight requeues
        const [a, b] = q.replicas.map((r) => r.node.client);
        assert.equal(await a!.hget(q.keys[2], 'txn'), await b!.hget(q.keys[2], 'txn'));
        assert.deepEqual(await a!.hgetall(q.keys[2]), await b!.hgetall(q.keys[2]));
      }
    } finally {
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });

  it('resyncs a replica that is behind the other at start', async () => {
    const pool = await startRedisPool(3);
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { heartbeat: { every: '100ms' } } });
    let qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-behind' });
    try {
      await qm.start();
      for (let n = 0; n < 20; n++) await qm.append({ id: `b${n}`, domain: 'behind.test', envelope: { from: '', to: ['x@behind.test'] }, raw: Buffer.from('x') });
      const q = qm.queues.get('behind.test')!;
      const lagging = q.replicas[1]!.node.client;
      await qm.stop();
      // the second replica loses its last writes (as a node restarted from an old copy would)
      await lagging.connect().catch(() => {});
      const lag = pool.find((r) => q.replicas[1]!.node.id.endsWith(`:${r.port}`))!.client();
      await lag.hincrby(q.keys[2], 'txn', -3);
      qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-behind' });
      await qm.start();
      const q2 = qm.queues.get('behind.test')!;
      assert.equal(q2.depth.ready, 20);
      await waitFor(() => q2.whole, { what: 'resynced' });
      const [a, b] = q2.replicas.map((r) => r.node.client);
      assert.deepEqual(await a!.hgetall(q2.keys[2]), await b!.hgetall(q2.keys[2]));
    } finally {
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });
});
