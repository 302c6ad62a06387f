// State the members share outside the queues (PoolState): failed logins per client (AUTH, POP3),
// dead destinations and delay-warning markers are kept on every node of the pool, on the nodes'
// clocks. Losing any one node keeps them; a member whose clock is 60 s ahead does not expire what
// the others wrote. Real redis-server nodes; each member a queue manager of its own.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SharedFailureThrottle } from '../../src/access/throttle.ts';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { PoolState } from '../../src/queue/poolState.ts';
import { DeadDestinations } from '../../src/relay/dead.ts';
import { SharedLimits } from '../../src/relay/limits.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

const AHEAD = 60_000;

describe('shared state on the pool', () => {
  let pool: TestRedis[];
  const members: QueueManager[] = [];
  before(async () => {
    pool = await startRedisPool(3);
    for (const id of ['ps-1', 'ps-2', 'ps-3']) {
      const qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { heartbeat: { every: '100ms', missed: 2 } } }), silentLogger, { gatewayId: id });
      await qm.start();
      members.push(qm);
    }
  });
  after(async () => {
    await Promise.all(members.map((m) => m.stop()));
    await Promise.all(pool.map((r) => r.stop()));
  });

  const stateOf = (i: number) => PoolState.of(members[i]!.nodes, 500, silentLogger);

  /**
   * For each node of the pool: `write` state, lose that node (SIGKILL), `check` the state, start
   * the node again (empty) and `check` again.
   */
  async function withEachNodeLost(write: (lost: number) => Promise<void>, check: (lost: number) => Promise<void>): Promise<void> {
    for (let i = 0; i < pool.length; i++) {
      await write(i);
      pool[i]!.kill('SIGKILL');
      await waitFor(() => members.every((m) => !m.nodes[i]!.up), { what: `node ${i} seen down` });
      await check(i);
      await pool[i]!.restart();
      await waitFor(() => members.every((m) => m.nodes.every((n) => n.up)), { what: `node ${i} back` });
      await check(i); // back, empty: the others' answers still hold
    }
  }

  it('failed logins of a client count for every member, through the loss of any one node', async () => {
    const limits = { perConnection: 0, perClient: 3, window: 600_000, delay: 0 };
    const [a, b] = [new SharedFailureThrottle(limits, stateOf(0), 'pop3-auth'), new SharedFailureThrottle(limits, stateOf(1), 'pop3-auth')];
    assert.equal(await a.fail('192.0.2.7'), false);
    assert.equal(await a.fail('192.0.2.7'), false);
    assert.equal((await b.check('192.0.2.7')).blocked, false, 'two failures: not yet');
    assert.equal(await b.fail('192.0.2.7'), true, 'the third failure, on another member, reaches the limit');
    assert.equal((await a.check('192.0.2.7')).blocked, true);
    assert.equal((await b.check('192.0.2.8')).blocked, false, 'another client is not blocked');
    assert.equal((await new SharedFailureThrottle(limits, stateOf(1), 'smtp-auth').check('192.0.2.7')).blocked, false, 'another kind counts apart');
    await withEachNodeLost(
      async (lost) => {
        for (let k = 0; k < 3; k++) await a.fail(`192.0.2.${20 + lost}`);
      },
      async (lost) => {
        assert.equal((await b.check(`192.0.2.${20 + lost}`)).blocked, true, `still blocked with node ${lost} lost`);
      },
    );
  });

  it('a dead destination is dead for every member, through the loss of any one node, and a member 60 s ahead does not end it early', async () => {
    const cfg = { failures: 2, suspend: 30_000 };
    const dest = '198.51.100.9:25';
    const a = new DeadDestinations(cfg, Date.now, stateOf(0));
    assert.equal(await a.failure(dest), false);
    assert.equal(await a.failure(dest), true, 'two failures make it dead');
    const b = new DeadDestinations(cfg, Date.now, stateOf(1));
    assert.equal(b.state(dest).state, 'up', 'not yet refreshed');
    assert.deepEqual(await b.refresh(), [dest], 'another member finds it dead on the pool');
    assert.equal(b.state(dest).state, 'dead');
    assert.equal(await b.claim(dest), false, 'no probe before the wait is over');
    // a member whose clock runs 60 s ahead: the dead time is longer than its wait on its own clock would be
    const ahead = new DeadDestinations(cfg, () => Date.now() + AHEAD, stateOf(2));
    await ahead.refresh();
    const s = ahead.state(dest);
    assert.equal(s.state, 'dead', 'dead for the member ahead too');
    assert.ok(s.state === 'dead' && s.until > Date.now() + AHEAD + 20_000, 'its wait is the time left on the nodes, on its own clock');
    assert.equal(await ahead.claim(dest), false, 'the member ahead cannot take the probe early');
    await withEachNodeLost(
      async (lost) => {
        await a.failure(`198.51.100.${20 + lost}:25`);
        await a.failure(`198.51.100.${20 + lost}:25`);
      },
      async (lost) => {
        const fresh = new DeadDestinations(cfg, Date.now, stateOf(1));
        await fresh.refresh();
        assert.equal(fresh.state(`198.51.100.${20 + lost}:25`).state, 'dead', `still dead with node ${lost} lost`);
      },
    );
    // reached again by one member: back for all
    assert.equal(await b.success(dest), true);
    assert.ok((await a.refresh()).includes(dest), 'the first member learns it is back');
    assert.equal(a.state(dest).state, 'up');
  });

  it("a destination's connection leases hold for every member through the loss of any one node, and a member 60 s ahead cannot take one more", async () => {
    const limits = (i: number) => new SharedLimits({ pick: () => members[i]!.nodes.find((n) => n.up), gatewayId: `ps-${i}`, leaseMs: 60_000, log: silentLogger, pool: stateOf(i), now: () => Date.now() + (i === 2 ? AHEAD : 0) });
    /** True when a lease is granted within 300 ms. */
    const canTake = async (i: number, key: string) => {
      try {
        await limits(i).acquireLease(key, 2, AbortSignal.timeout(300));
        return true;
      } catch {
        return false;
      }
    };
    await limits(0).acquireLease('mx.full.test', 2);
    await limits(1).acquireLease('mx.full.test', 2);
    assert.equal(await canTake(0, 'mx.full.test'), false, 'two held: no third');
    assert.equal(await canTake(2, 'mx.full.test'), false, 'nor for a member whose clock is 60 s ahead');
    await withEachNodeLost(
      async (lost) => {
        await limits(0).acquireLease(`mx.full${lost}.test`, 2);
        await limits(1).acquireLease(`mx.full${lost}.test`, 2);
      },
      async (lost) => {
        assert.equal(await canTake(2, `mx.full${lost}.test`), false, `still two held with node ${lost} lost`);
      },
    );
  });

  it('a delay warning goes out once per message across members, through the loss of any one node', async () => {
    const limits = (i: number) => new SharedLimits({ pick: () => members[i]!.nodes.find((n) => n.up), gatewayId: `ps-${i}`, leaseMs: 5000, log: silentLogger, pool: stateOf(i), now: () => Date.now() + (i === 2 ? AHEAD : 0) });
    const key = 'sg:warned:{ps-1:warn.test}:m1';
    assert.equal(await limits(0).once(key, 600_000), true, 'the first member sends it');
    assert.equal(await limits(1).once(key, 600_000), false, 'another does not');
    assert.equal(await limits(2).once(key, 600_000), false, 'nor one whose clock is ahead');
    await withEachNodeLost(
      async (lost) => {
        assert.equal(await limits(0).once(`${key}.${lost}`, 600_000), true);
      },
      async (lost) => {
        assert.equal(await limits(1).once(`${key}.${lost}`, 600_000), false, `not again with node ${lost} lost`);
      },
    );
  });
});
