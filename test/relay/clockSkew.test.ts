// Limits shared by every gateway keep their word when one gateway's clock is wrong: the rate
// limiter and the connection leases read the time from the Redis node that holds them (TIME in the
// script), never from the caller, so a member 60 s ahead cannot expire others' leases or jump the
// send slots, and a member 60 s behind is not starved.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { SharedLimits } from '../../src/relay/limits.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';

describe('shared limits under clock skew (one member ±60 s)', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  before(async () => {
    pool = await startRedisPool(2);
    qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) } }), silentLogger, { gatewayId: 'gw-skew' });
    await qm.start();
  });
  after(async () => {
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });
  const member = (id: string, skewMs: number, leaseMs = 60_000) =>
    new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: id, leaseMs, log: silentLogger, now: () => Date.now() + skewMs });

  it('a member 60 s ahead cannot take a connection beyond the limit by expiring the others\' leases', async () => {
    const honest = member('honest', 0, 30_000);
    const ahead = member('ahead', 60_000, 30_000);
    const l1 = await honest.acquireLease('skew-conn', 2);
    const l2 = await honest.acquireLease('skew-conn', 2);
    const ac = new AbortController();
    let got = false;
    const third = ahead.acquireLease('skew-conn', 2, ac.signal).then((l) => ((got = true), l), () => undefined);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(got, false, 'the member whose clock is ahead waits for a lease like anyone');
    assert.equal(await pool[0]!.client().zcard('sg:conn:{skew-conn}'), 2, 'both honest leases are still held');
    await honest.releaseLease(l1);
    const l3 = await third;
    assert.ok(l3?.shared, 'it gets the lease given back');
    await Promise.all([honest.releaseLease(l2), ahead.releaseLease(l3!)]);
    ac.abort();
  });

  it('a member 60 s ahead or behind reserves send slots one interval after the others', async () => {
    const members = [member('a', 0), member('ahead', 60_000), member('behind', -60_000)];
    const t0 = Date.now();
    // 5 messages each at 50/s: 15 slots 20 ms apart, whoever asks; none waits a minute
    await Promise.all(members.flatMap((m) => Array.from({ length: 5 }, () => m.waitRate('skew-rate', 50))));
    const took = Date.now() - t0;
    assert.ok(took >= 260, `15 messages at 50/s take at least 280 ms whatever the members' clocks (took ${took} ms)`);
    assert.ok(took < 10_000, `the member behind is not starved (took ${took} ms)`);
  });
});
