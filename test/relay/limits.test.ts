// Limits per destination: matching a destination to its limits, and the shared rate limiter and
// connection leases on a real Redis.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { limitsFor, SharedLimits } from '../../src/relay/limits.ts';
import { Classifier } from '../../src/relay/classify.ts';
import { SmtpPool } from '../../src/relay/deliver.ts';
import { startSmtpSink } from '../helpers/smtpSink.ts';
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

  it('shares a destination\'s leases fairly once a second gateway waits: the first is told its excess and cannot grow past its share', async () => {
    const mk = (id: string) => new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: id, leaseMs: 60_000, log: silentLogger });
    const [a, b] = [mk('fair-a'), mk('fair-b')];
    // alone, A may take every lease and has no excess
    const held = await Promise.all(Array.from({ length: 4 }, () => a.acquireLease('units-fair', 4)));
    assert.equal(await a.excessLeases('units-fair', 4), 0);
    // B asks: refused (all 4 are held), and now waiting
    const ac = new AbortController();
    let bGot = 0;
    const bLeases = Array.from({ length: 3 }, () => b.acquireLease('units-fair', 4, ac.signal).then((l) => (bGot++, l)));
    await waitFor(async () => (await pool[0]!.client().zcard('sg:conn:{units-fair}:want')) === 1, { what: 'B recorded as waiting' });
    assert.equal(await a.excessLeases('units-fair', 4), 2, 'two processes: a share of 2 each, A holds 4');
    assert.equal(await b.excessLeases('units-fair', 4), 0);
    // A gives back two: B takes them, and A cannot take one again while B waits for a third
    await a.releaseLease(held.pop()!);
    await a.releaseLease(held.pop()!);
    await waitFor(() => bGot === 2, { what: 'B holds its share of 2' });
    const aAgain = a.acquireLease('units-fair', 4, ac.signal);
    let aGot = false;
    void aAgain.then(() => (aGot = true), () => undefined);
    // refused at least once: A is among the waiting too
    await waitFor(async () => (await pool[0]!.client().zcard('sg:conn:{units-fair}:want')) === 2, { what: 'A refused past its share' });
    assert.equal(aGot, false, 'A is at its share while B waits');
    assert.equal(bGot, 2, 'B is at its share too');
    assert.equal(await pool[0]!.client().zcard('sg:conn:{units-fair}'), 4, 'two leases each, four in all');
    assert.equal(await a.excessLeases('units-fair', 4), 0);
    ac.abort();
    await Promise.allSettled([...bLeases, aAgain]);
  });

  it('gives a message waiting for a lease the connection of its own pool that goes idle, not a second connection after the idle timeout', async () => {
    const sink = await startSmtpSink({ hideStartTls: true, dataDelayMs: 30 });
    const mk = (id: string) => new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: id, leaseMs: 60_000, log: silentLogger });
    const other = mk('pool-other');
    const held = await other.acquireLease('units-pool', 2); // another gateway holds one of the two leases
    const smtp = new SmtpPool(
      { host: '127.0.0.1', addresses: ['127.0.0.1'], port: sink.port, secure: false, tls: 'none' },
      { name: 'gw.units.test', limits: { key: 'units-pool', connections: 2, ratePerSecond: 0, messagesPerConnection: 100 }, leases: mk('pool-ours'), classifier: new Classifier(), connectTimeout: 5000, greetingTimeout: 5000, socketTimeout: 10_000, idleTimeout: 20_000, log: silentLogger },
    );
    try {
      // five at once: one connection (the one lease left), one send waits for a second lease
      // that never comes while the other gateway holds it, three wait for a connection
      const results = await Promise.all(Array.from({ length: 5 }, (_, i) => smtp.send({ from: 'a@units.test', to: [`r${i}@units.test`] }, Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`))));
      assert.deepEqual(results.map((r) => r.results[0]!.status), Array(5).fill('delivered'));
      assert.equal(sink.messages.length, 5);
      assert.equal(sink.totalConnections, 1, 'every message over the one connection: none waited for the idle timeout to open another');
    } finally {
      await smtp.close();
      await other.releaseLease(held);
      await sink.close();
    }
  });
});
