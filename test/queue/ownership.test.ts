// One owner per queue, fenced (DESIGN, invariant 10): a gateway id is held by one live process;
// a process paused past its lease finds its queues taken over and writes nothing more to them.
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { assertQueueConsistent } from '../helpers/queueCheck.ts';
import { startRedisPool } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

type Reply = { n: number; ok: boolean; value?: unknown; code?: string; message?: string };

/** A queue manager in a child process, and a way to ask it things. */
function queueProcess(config: Record<string, unknown>, gateway: string) {
  const child: ChildProcess = fork(join(import.meta.dirname, '..', 'helpers', 'queueProcess.ts'), [], {
    env: { ...process.env, STREAMGATE_TEST_CONFIG: JSON.stringify(config), STREAMGATE_TEST_GATEWAY: gateway },
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const waiting = new Map<number, (r: Reply) => void>();
  child.on('message', (r: Reply) => waiting.get(r.n)?.(r));
  let n = 0;
  const ask = (req: Record<string, unknown>) =>
    new Promise<Reply>((resolve) => {
      const k = ++n;
      waiting.set(k, resolve);
      child.send({ ...req, n: k });
    });
  const started = new Promise<Reply>((resolve) => waiting.set(0, resolve));
  return { child, ask, started };
}

describe('ownership', () => {
  it('a second process with the same gateway id refuses to join while the first renews its lease', async () => {
    const pool = await startRedisPool(3);
    const cfg = testConfig({ redis: { nodes: pool.map((r) => r.url) }, gateway: { lease: '1s' } });
    const a = new QueueManager(cfg, silentLogger, { gatewayId: 'gw-same' });
    const others: QueueManager[] = [];
    try {
      await a.start();
      const b = new QueueManager(cfg, silentLogger, { gatewayId: 'gw-same' });
      await assert.rejects(b.start(), { code: 'MEMBER_CONFLICT', message: /gateway id gw-same is held by a live member \(.+:\d+:[0-9a-f]+\); give this process another gateway\.id/ });
      // another id joins alongside; the registry lists both, each with its own epoch
      await a.append({ id: 'x1', domain: 'same.test', envelope: { from: 'a@src.test', to: ['b@same.test'] }, raw: Buffer.from('Subject: x\r\n\r\nx\r\n') });
      const c = new QueueManager(cfg, silentLogger, { gatewayId: 'gw-other' });
      others.push(c);
      await c.start();
      // a renewal refreshes the registry's figures
      const members = await waitFor(async () => {
        const m = await c.members();
        const same = m.find((x) => x.id === 'gw-same');
        return same?.queues === 1 && same.messages === 1 ? m : undefined;
      }, { what: "gw-same's queue and message in the registry" });
      assert.deepEqual(members.map((m) => [m.id, m.live]), [['gw-other', true], ['gw-same', true]]);
      const [other, same] = members;
      assert.ok(other!.epoch > same!.epoch, 'a later join draws a higher epoch');
      assert.deepEqual([same!.queues, same!.messages], [1, 1]);
      assert.ok(same!.leaseMs > 0 && same!.leaseMs <= 1000);
      await c.stop();
      assert.deepEqual((await a.members()).map((m) => m.id), ['gw-same'], 'a clean stop leaves the registry');
      // a clean stop gives the id back at once
      await a.stop();
      // the lease is deleted on every node, not left to lapse: a new process takes the id at once
      assert.deepEqual(await Promise.all(pool.map((r) => r.client().exists('sg:member:{gw-same}'))), [0, 0, 0], 'no lease left for gw-same');
      const d = new QueueManager(cfg, silentLogger, { gatewayId: 'gw-same' });
      others.push(d);
      await d.start();
      await d.stop();
    } finally {
      await Promise.all(others.map((m) => m.stop()));
      await a.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });

  it("the id of a process of this host that is gone is taken over at once, not after waiting for its lease", async () => {
    const pool = await startRedisPool(3);
    const raw = { redis: { nodes: pool.map((r) => r.url) }, gateway: { lease: '30s' } };
    const a = queueProcess(raw, 'gw-crashed');
    let b: QueueManager | undefined;
    try {
      assert.equal((await a.started).ok, true);
      assert.equal((await a.ask({ op: 'append', domain: 'crash.test', id: 'c0' })).ok, true);
      a.child.kill('SIGKILL');
      await new Promise((resolve) => a.child.once('exit', resolve));
      b = new QueueManager(testConfig(raw), silentLogger, { gatewayId: 'gw-crashed' });
      const t0 = Date.now();
      await b.start();
      assert.ok(Date.now() - t0 < 5000, `took over in ${Date.now() - t0} ms, not after a third of the 30 s lease`);
      assert.equal(b.depth('crash.test').ready, 1);
    } finally {
      await b?.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });

  it('a process paused past its lease is taken over, and once it wakes it writes nothing to the queues it lost', async () => {
    const pool = await startRedisPool(3);
    const raw = { redis: { nodes: pool.map((r) => r.url) }, gateway: { lease: '1s' }, queue: { heartbeat: { every: '200ms', missed: 3 } } };
    const domain = 'owned.test';
    const a = queueProcess(raw, 'gw-paused');
    let b: QueueManager | undefined;
    try {
      assert.equal((await a.started).ok, true);
      for (let i = 0; i < 5; i++) assert.equal((await a.ask({ op: 'append', domain, id: `m${i}` })).ok, true);
      const taken = (await a.ask({ op: 'take', domain, max: 2 })).value as string[];
      assert.equal(taken.length, 2);
      a.child.kill('SIGSTOP'); // paused: no renewal, no write
      b = new QueueManager(testConfig(raw), silentLogger, { gatewayId: 'gw-paused' });
      await b.start(); // takes the id over once the lease is seen not renewed, claims the queue
      const q = b.queues.get(domain)!;
      assert.equal(q.msgs.size, 5);
      const mine = await b.take(domain, 10);
      assert.equal(mine.length, 5, 'the new owner has every message, those the old one had in flight included');
      const before = await Promise.all(q.replicas.map((r) => r.node.client.hgetall(q.keys[2])));
      a.child.kill('SIGCONT');
      await sleep(300);
      const settle = await a.ask({ op: 'settle', domain, id: taken[0] });
      const append = await a.ask({ op: 'append', domain, id: 'late' });
      const again = await a.ask({ op: 'take', domain, max: 5 });
      for (const r of [settle, append]) assert.deepEqual({ ok: r.ok, code: r.code }, { ok: false, code: 'FENCED' }, JSON.stringify(r));
      assert.ok(!again.ok || (again.value as string[]).length === 0, 'takes nothing more');
      assert.match(String((await a.ask({ op: 'fenced' })).value), /newer owner|took gateway id/);
      const after = await Promise.all(q.replicas.map((r) => r.node.client.hgetall(q.keys[2])));
      assert.deepEqual(after, before, 'the old owner changed nothing on either replica');
      for (const m of mine) await b.settle(domain, m.id, 'delivered');
      await assertQueueConsistent(q);
      assert.equal(q.msgs.size, 0);
    } finally {
      a.child.kill('SIGKILL');
      await b?.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });
});
