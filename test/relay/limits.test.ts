// Limits per destination: matching a destination to its limits, and the shared rate limiter and
// connection leases on a real Redis.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { limitsFor, SharedLimits } from '../../src/relay/limits.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

describe('relay limits', () => {
  it('matches per-destination limits: of the domain, else of the MX host, else the defaults', () => {
    const limits = testConfig({ relay: { limits: { destinations: { 'dest.test': { connections: 2, ratePerSecond: 50 }, 'mx1.big.test': { connections: 7 } } } } }).relay.limits;
    assert.deepEqual(limitsFor(limits, 'mx.dest.test', 'dest.test'), { key: 'dest.test', connections: 2, ratePerSecond: 50, messagesPerConnection: 100 });
    assert.deepEqual(limitsFor(limits, 'mx1.big.test', 'big.test'), { key: 'mx1.big.test', connections: 7, ratePerSecond: 0, messagesPerConnection: 100 });
    assert.deepEqual(limitsFor(limits, 'mx.other.test', 'other.test'), { key: 'mx.other.test', connections: 10, ratePerSecond: 0, messagesPerConnection: 100 });
  });

  let pool: TestRedis[];
  let qm: QueueManager;
  before(async () => {
    pool = await startRedisPool(2);
    qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) } }), silentLogger, { gatewayId: 'gw-units' });
    await qm.start();
  });
  after(async () => {
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('reserves send slots one interval apart across limiters, on the first node only', async () => {
    const mk = (id: string) => new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: id, leaseMs: 1000, log: silentLogger });
    const [a, b] = [mk('a'), mk('b')];
    const t0 = Date.now();
    await Promise.all([...Array.from({ length: 10 }, () => a.waitRate('units-rate', 100)), ...Array.from({ length: 10 }, () => b.waitRate('units-rate', 100))]);
    const took = Date.now() - t0;
    assert.ok(took >= 180, `20 messages at 100/s take at least 190 ms, took ${took}`);
    assert.equal(await pool[0]!.client().exists('sg:rate:{units-rate}'), 1);
    assert.equal(await pool[1]!.client().exists('sg:rate:{units-rate}'), 0);
  });

  it('grants at most `limit` connection leases across gateways, and gives them back', async () => {
    const mk = (id: string) => new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: id, leaseMs: 60_000, log: silentLogger });
    const [a, b] = [mk('a'), mk('b')];
    const l1 = await a.acquireLease('units-conn', 2);
    const l2 = await b.acquireLease('units-conn', 2);
    const ac = new AbortController();
    const third = b.acquireLease('units-conn', 2, ac.signal);
    let got = false;
    void third.then(() => (got = true), () => undefined);
    // both leases are in the shared set: the third, asked meanwhile, is still waiting
    await waitFor(async () => (await pool[0]!.client().zcard('sg:conn:{units-conn}')) === 2, { what: 'two leases held' });
    assert.equal(got, false, 'the third waits');
    await a.releaseLease(l1);
    const l3 = await third;
    assert.ok(l3.shared && l2.shared);
    assert.equal(await a.renewLease(l2, 2), true);
    await Promise.all([b.releaseLease(l2), b.releaseLease(l3)]);
    assert.equal(await pool[0]!.client().zcard('sg:conn:{units-conn}'), 0);
    ac.abort();
  });
});
