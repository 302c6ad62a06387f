// The queue's promise under the faults that used to break it (one test per sequence): nothing
// acknowledged lost, nothing delivered that the sender was told to retry, nothing stuck in
// flight, replicas identical and counters equal to the streams afterwards.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { storeMessage } from '../../src/ingress/smtp/store.ts';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import type { Queue } from '../../src/queue/queue.ts';
import { testConfig } from '../helpers/config.ts';
import { assertQueueConsistent } from '../helpers/queueCheck.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { IdGen, newMessageId } from '../../src/message/ids.ts';

const msg = (domain: string, i: number) => ({
  id: newMessageId(),
  domain,
  envelope: { from: `s${i}@src.test`, to: [`r${i}@${domain}`] },
  raw: Buffer.from(`Subject: ${i}\r\n\r\n${'x'.repeat(200)}\r\n`),
  meta: {},
});

const fast = { timeout: '300ms', heartbeat: { every: '100ms', missed: 3 }, rebuildAfter: '1s', blockSize: 100 };

/** A pool of three nodes and a gateway's queue manager on it; everything stopped afterwards. */
async function withPool(queue: Record<string, unknown>, fn: (ctx: { pool: TestRedis[]; start: (now?: () => number) => Promise<QueueManager>; procOf: (q: Queue, i: number) => TestRedis }) => Promise<void>) {
  const pool = await startRedisPool(3);
  const managers: QueueManager[] = [];
  const cfg = testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue });
  try {
    await fn({
      pool,
      start: async (now) => {
        const qm = new QueueManager(cfg, silentLogger, { gatewayId: 'gwF', ...(now ? { now } : {}) });
        managers.push(qm);
        await qm.start();
        return qm;
      },
      procOf: (q, i) => pool.find((r) => q.replicas[i]!.node.id === `127.0.0.1:${r.port}`)!,
    });
  } finally {
    for (const qm of managers) await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  }
}

describe('recovery takes only a replica proven current', () => {
  it('never loads a replica restarted empty while its partner is unreachable, and recovers from the partner once it answers', async () => {
    await withPool({ ...fast, rebuildAfter: '1h' }, async ({ start, procOf }) => {
      const domain = 'empty.test';
      let qm = await start();
      for (let i = 0; i < 20; i++) await qm.append(msg(domain, i));
      let q = qm.queues.get(domain)!;
      const [A, B] = [procOf(q, 0), procOf(q, 1)];
      await qm.stop();
      await A.restart(); // back empty
      B.kill('SIGSTOP'); // unreachable while the gateway starts
      try {
        qm = await start();
        q = qm.queues.get(domain)!;
        assert.equal(q.status, 'unavailable');
        assert.match(q.table().closed ?? '', /cannot be proven current|no replica with a record/);
        assert.equal(q.msgs.size, 0, 'nothing loaded from the empty replica');
        await assert.rejects(qm.append(msg(domain, 99)), { code: 'QUEUE_UNAVAILABLE' });
        assert.equal(qm.writable, false);
      } finally {
        B.kill('SIGCONT');
      }
      await waitFor(() => q.whole, { what: 'recovered from the partner', timeout: 15_000 });
      assert.equal(q.msgs.size, 20, 'the 20 acknowledged messages are all there');
      await assertQueueConsistent(q);
      await qm.append(msg(domain, 100));
    });
  });

  it('never loads a stale replica over a fresher one: settled messages are not handed out again', async () => {
    await withPool({ ...fast, rebuildAfter: '1h' }, async ({ start, procOf }) => {
      const domain = 'stale.test';
      let qm = await start();
      for (let i = 0; i < 20; i++) await qm.append(msg(domain, i));
      let q = qm.queues.get(domain)!;
      const A = procOf(q, 1);
      const B = procOf(q, 0);
      A.kill('SIGSTOP'); // A falls behind
      const taken = await qm.take(domain, 10);
      assert.equal(taken.length, 10);
      await Promise.all(taken.map((t) => qm.settle(domain, t.id, 'delivered', { reply: '250 ok' })));
      await qm.stop();
      A.kill('SIGCONT');
      B.kill('SIGSTOP'); // the fresher replica is unreachable at start
      try {
        qm = await start();
        q = qm.queues.get(domain)!;
        assert.equal(q.status, 'unavailable', JSON.stringify(q.table()));
        assert.equal(q.msgs.size, 0);
      } finally {
        B.kill('SIGCONT');
      }
      await waitFor(() => q.whole, { what: 'recovered from the fresher replica', timeout: 15_000 });
      assert.equal(q.msgs.size, 10);
      const again = await qm.take(domain, 100);
      assert.equal(again.length, 10);
      assert.equal(again.filter((m) => taken.some((t) => t.id === m.id)).length, 0, 'no delivered message handed out again');
      await assertQueueConsistent(q);
    });
  });

  it('lets an operator open a closed queue from a named node, with the action in the history', async () => {
    await withPool({ ...fast, rebuildAfter: '500ms' }, async ({ start, procOf }) => {
      const domain = 'forced.test';
      let qm = await start();
      for (let i = 0; i < 5; i++) await qm.append(msg(domain, i));
      let q = qm.queues.get(domain)!;
      const [A, B] = [procOf(q, 0), procOf(q, 1)];
      await qm.stop();
      await A.restart();
      B.kill('SIGSTOP');
      try {
        qm = await start();
        q = qm.queues.get(domain)!;
        assert.equal(q.status, 'unavailable');
        await assert.rejects(qm.forceRecover(domain, '127.0.0.1:1', 'ops', 'x'), { code: 'BAD_INPUT' });
        const r = await qm.forceRecover(domain, q.replicas.find((x) => x.node.id.endsWith(`:${A.port}`))!.node.id, 'ops@example.test', 'B is lost for good');
        assert.equal(r.messages, 0);
        assert.ok(r.txn >= 1e12, 'the transaction number moved past anything the other replica holds');
        await waitFor(() => q.whole, { what: 'rebuilt on the spare', timeout: 15_000 });
        await qm.append(msg(domain, 9));
        const events = await qm.history(domain);
        const rec = events.find((e) => e.kind === 'recovered');
        assert.ok(rec, 'a recovered event');
        assert.deepEqual((rec.details as { actor: string; reason: string }).actor, 'ops@example.test');
        assert.equal((rec.details as { reason: string }).reason, 'B is lost for good');
        await assertQueueConsistent(q);
      } finally {
        B.kill('SIGCONT');
      }
    });
  });
});

describe('a rebuild under continuous writes', () => {
  it('ends with the replica in sync, and replicas identical, every time', async () => {
    await withPool({ timeout: '2s', heartbeat: { every: '100ms', missed: 2 }, blockSize: 100 }, async ({ start }) => {
      const qm = await start();
      const domain = 'load.test';
      await Promise.all(Array.from({ length: 1500 }, (_, i) => qm.append(msg(domain, i))));
      const q = qm.queues.get(domain)!;
      let stop = false;
      let ops = 0;
      const workers = Array.from({ length: 4 }, async (_, w) => {
        while (!stop) {
          const t = await q.take(5).catch(() => []);
          await Promise.all(
            t.map((m, i) => {
              ops++;
              const k = (i + w) % 3;
              const p = k === 0 ? q.requeue(m.id) : k === 1 ? q.defer(m.id, 0, { reply: '451' }) : q.settle(m.id, 'delivered');
              return p.catch(() => {});
            }),
          );
          await sleep(1);
        }
      });
      let diverged = 0;
      for (let i = 0; i < 5; i++) {
        q.markNG(q.replicas[1]!, 'test: copy again');
        await waitFor(() => q.whole, { what: `rebuild ${i + 1} done`, timeout: 15_000 });
        await sleep(100); // the load writes on both again
        if (!q.whole) diverged++;
      }
      stop = true;
      await Promise.all(workers);
      assert.equal(diverged, 0, 'no rebuild ended diverged');
      assert.ok(ops > 50, `the load went on (${ops} operations)`);
      await assertQueueConsistent(q);
    });
  });
});

describe('a write of unknown outcome during a copy', () => {
  it('is not followed by taking the copy as in sync: the queue is loaded again and nothing stays in flight', async () => {
    await withPool({ timeout: '300ms', heartbeat: { every: '100ms', missed: 50 }, rebuildAfter: '1h', blockSize: 100 }, async ({ start, procOf }) => {
      const qm = await start();
      const domain = 'unknown.test';
      for (let i = 0; i < 20; i++) await qm.append(msg(domain, i));
      const q = qm.queues.get(domain)!;
      const source = procOf(q, 0);
      source.kill('SIGSTOP'); // the copy about to start hangs on its source, and so does the take
      try {
        q.markNG(q.replicas[1]!, 'test: copy again');
        await waitFor(() => q.replicas[1]!.sync === 'Rebuilding', { what: 'the copy under way' });
        await assert.rejects(qm.take(domain, 5), { code: 'QUEUE_UNAVAILABLE', message: /may have been applied/ });
      } finally {
        source.kill('SIGCONT'); // the take is applied now, the copy goes on
      }
      await waitFor(() => q.whole && !q.set.stale, { what: 'loaded again and whole', timeout: 15_000 });
      await assertQueueConsistent(q);
      assert.equal(q.depth.inflight, 0, 'what the unknown take marked in flight went back to ready');
      assert.equal((await qm.take(domain, 50)).length, 20);
    });
  });
});

describe('a take whose reading replica fails', () => {
  it('hands out the messages read from the replica that applied it; nothing stays in flight without an owner', async () => {
    await withPool(fast, async ({ start, procOf }) => {
      const qm = await start();
      const domain = 'take.test';
      const sent = Array.from({ length: 5 }, (_, i) => msg(domain, i));
      for (const m of sent) await qm.append(m);
      const q = qm.queues.get(domain)!;
      const reader = procOf(q, 0);
      reader.kill('SIGKILL'); // the reader
      await waitFor(() => reader.proc.signalCode === 'SIGKILL', { what: 'the reading node gone' });
      const got = await qm.take(domain, 5);
      assert.deepEqual(got.map((m) => m.id).sort(), sent.map((m) => m.id).sort());
      for (const m of got) assert.deepEqual(m.raw, sent.find((s) => s.id === m.id)!.raw);
      await waitFor(() => q.whole, { what: 'rebuilt on the spare', timeout: 15_000 });
      await Promise.all(got.map((m) => qm.settle(domain, m.id, 'delivered')));
      await assertQueueConsistent(q);
      assert.equal(q.msgs.size, 0);
    });
  });
});

describe('a stall of the gateway itself', () => {
  it('longer than queue.timeout is not a node failure: the write succeeds and nothing in flight is handed out again', async () => {
    await withPool(fast, async ({ start }) => {
      const qm = await start();
      const domain = 'stall.test';
      for (let i = 0; i < 3; i++) await qm.append(msg(domain, i));
      const q = qm.queues.get(domain)!;
      const [inflight] = await qm.take(domain, 1);
      const appended = qm.append(msg(domain, 99));
      await new Promise<void>((resolve) =>
        setImmediate(() => {
          const t0 = Date.now();
          while (Date.now() - t0 < 900) {
            /* the event loop blocked: a long GC or a synchronous burst */
          }
          resolve();
        }),
      );
      await appended;
      assert.ok(qm.nodes.every((n) => n.up), 'no node isolated');
      assert.ok(q.whole, JSON.stringify(q.table()));
      await sleep(300);
      const again = await qm.take(domain, 10);
      assert.equal(again.some((m) => m.id === inflight!.id), false, 'the message in flight is not handed out again');
      assert.equal(q.depth.inflight, 1 + again.length);
      await assertQueueConsistent(q);
    });
  });

  it('an append whose replicas answer only after the time limit is refused and then withdrawn, never delivered', async () => {
    await withPool({ ...fast, rebuildAfter: '1h' }, async ({ start, procOf }) => {
      const qm = await start();
      const domain = 'late.test';
      await qm.append(msg(domain, 0));
      const q = qm.queues.get(domain)!;
      const late = msg(domain, 1);
      await Promise.all([0, 1].map((i) => procOf(q, i).client().call('CLIENT', 'PAUSE', '1200', 'WRITE')));
      await assert.rejects(qm.append(late), { code: 'QUEUE_UNAVAILABLE' });
      assert.ok(qm.nodes.every((n) => n.up), 'slow writes isolate no node');
      // the append's outcome is unknown: the queue is reloaded, finds the copy and withdraws it
      const events = await waitFor(async () => {
        const h = await qm.history(domain, late.id);
        return q.whole && q.pendingWithdrawals === 0 && !q.get(late.id) && h.some((e) => e.kind === 'withdrawn') ? h : undefined;
      }, { what: 'reloaded and withdrawn', timeout: 15_000 });
      assert.deepEqual(events.map((e) => e.kind), ['accepted', 'withdrawn']);
      const taken = await qm.take(domain, 10);
      assert.equal(taken.some((m) => m.id === late.id), false);
      await qm.settle(domain, taken[0]!.id, 'delivered');
      await assertQueueConsistent(q);
    });
  });
});

describe('a submission for two destinations', () => {
  it('dispatches no copy until every copy is stored; a failed one withdraws the others', async () => {
    await withPool({ timeout: '400ms', heartbeat: { every: '5s', missed: 3 } }, async ({ start, pool }) => {
      const qm = await start();
      const warm = (d: string) => qm.append(msg(d, 0));
      await warm('fast.test');
      const qf = qm.queues.get('fast.test')!;
      await qm.take('fast.test', 10); // the warm-up message stays in flight
      let slow = '';
      for (let i = 0; i < 50 && !slow; i++) {
        const d = `slow${i}.test`;
        await warm(d);
        if (qm.queues.get(d)!.replicas.some((r) => !qf.replicas.some((f) => f.node === r.node))) slow = d;
      }
      const qs = qm.queues.get(slow)!;
      const victimId = qs.replicas.map((r) => r.node.id).find((id) => !qf.replicas.some((f) => f.node.id === id))!;
      const victim = pool.find((r) => victimId === `127.0.0.1:${r.port}`)!;
      const handed: string[] = [];
      qm.on('ready', (d: string) => {
        if (d === 'fast.test') void qm.take(d, 10).then((t) => handed.push(...t.map((m) => m.id)));
      });
      victim.kill('SIGSTOP');
      const sub = { submissionId: newMessageId(), from: 'a@s.test', to: ['u@fast.test', `v@${slow}`], raw: Buffer.from('Subject: t\r\n\r\nhi\r\n'), meta: {} };
      try {
        const reply = await storeMessage(qm, sub, silentLogger).then(() => '250', (e: unknown) => String(e));
        assert.match(reply, /^451/);
        await waitFor(() => !qf.get(sub.submissionId), { what: 'the fast copy withdrawn' });
        await sleep(50);
        assert.equal(handed.includes(sub.submissionId), false, 'the fast copy was never handed to the relay');
        const events = await qm.history('fast.test', sub.submissionId);
        assert.deepEqual(events.map((e) => e.kind), ['accepted', 'withdrawn']);
      } finally {
        victim.kill('SIGCONT');
      }
      // and when every copy is stored, each is dispatched
      await waitFor(() => qs.whole, { what: 'slow queue whole', timeout: 15_000 });
      const ok = { ...sub, submissionId: newMessageId() };
      const stored = await storeMessage(qm, ok, silentLogger);
      assert.equal(stored.copies.length, 2);
      await waitFor(() => handed.includes(ok.submissionId), { what: 'the stored copy dispatched' });
    });
  });
});

describe('a retry while its earlier copy is being withdrawn', () => {
  it('is refused until the withdrawal is written, then stored afresh: never taken for a duplicate and lost with it', async () => {
    await withPool({ ...fast, rebuildAfter: '1h' }, async ({ start, procOf }) => {
      const qm = await start();
      const domain = 'retry.test';
      await qm.append(msg(domain, 0));
      const q = qm.queues.get(domain)!;
      const m = { ...msg(domain, 1), id: 'job-42' };
      await qm.append(m, { staged: true });
      const [A, B] = [procOf(q, 0), procOf(q, 1)];
      A.kill('SIGSTOP');
      B.kill('SIGSTOP');
      try {
        qm.withdraw(domain, m.id, { reason: 'test: the other copy failed' });
        await sleep(100);
        assert.equal(q.pendingWithdrawals, 1, 'the withdrawal waits for a replica');
        await assert.rejects(qm.append(m), { code: 'QUEUE_UNAVAILABLE', message: /being withdrawn/ });
      } finally {
        A.kill('SIGCONT');
        B.kill('SIGCONT');
      }
      await waitFor(() => q.whole && q.pendingWithdrawals === 0, { what: 'withdrawn', timeout: 15_000 });
      const again = await qm.append(m);
      assert.equal(again.duplicate, false, 'stored afresh');
      const taken = await qm.take(domain, 10);
      assert.ok(taken.some((t) => t.id === m.id), 'and delivered');
      await assertQueueConsistent(q);
    });
  });
});

describe('one slow write', () => {
  it('resyncs that queue alone: the node is not isolated and other queues on it stay whole', async () => {
    await withPool({ ...fast, timeout: '500ms', heartbeat: { every: '200ms', missed: 5 } }, async ({ start, procOf }) => {
      const qm = await start();
      const a = await qm.queueFor('one.test');
      // another queue on the same node
      let other: Queue | undefined;
      for (let i = 0; i < 50 && !other; i++) {
        const q = await qm.queueFor(`other${i}.test`);
        if (q.replicas.some((r) => r.node === a.replicas[1]!.node)) other = q;
      }
      await qm.append(msg(other!.domain, 0));
      await qm.append(msg('one.test', 0));
      const slowNode = a.replicas[1]!.node;
      await procOf(a, 1).client().call('CLIENT', 'PAUSE', '1200', 'WRITE');
      await assert.rejects(qm.append(msg('one.test', 1)), { code: 'QUEUE_UNAVAILABLE' });
      assert.equal(slowNode.up, true, 'the node is not isolated by one slow write');
      assert.equal(other!.whole, true, 'the other queue on that node stays whole');
      await waitFor(() => a.whole && a.pendingWithdrawals === 0, { what: 'the queue copied again', timeout: 15_000 });
      assert.equal(slowNode.up, true);
      await assertQueueConsistent(a);
      await assertQueueConsistent(other!);
      assert.equal(a.msgs.size, 1, 'the refused append was withdrawn');
    });
  });
});

describe('ids', () => {
  it('continue from the highest ever generated: a clock gone back after a settle changes nothing but time', async () => {
    await withPool(fast, async ({ start }) => {
      let clock = 1_800_000_000_000;
      const now = () => clock;
      let qm = await start(now);
      const domain = 'clock.test';
      const first = msg(domain, 0);
      await qm.append(first);
      clock += 60_000;
      const second = msg(domain, 1);
      await qm.append(second);
      await qm.purge(domain, second.id, 'ops', 'test');
      await qm.stop();
      clock -= 30_000; // restart with a clock behind the last entry ever generated
      qm = await start(now);
      const q = qm.queues.get(domain)!;
      const third = msg(domain, 2);
      const r = await qm.append(third);
      assert.ok(r.entryId > q.get(first.id)!.entryId);
      assert.ok(Number(r.entryId.split('-')[0]) >= 1_800_000_060_000, `entry id ${r.entryId} continues after the highest`);
      await assertQueueConsistent(q);
    });
  });

  it('a script given ids behind the highest changes nothing but the transaction number', async () => {
    await withPool(fast, async ({ start }) => {
      let clock = 1_800_000_000_000;
      const qm = await start(() => clock);
      const domain = 'ids.test';
      for (let i = 0; i < 3; i++) await qm.append(msg(domain, i));
      const q = qm.queues.get(domain)!;
      const before = await q.replicas[0]!.node.client.xlen(q.keys[0]);
      clock -= 60_000; // ids from a record older than the queue's highest, under a clock gone back
      q.entryIds = IdGen.after('1-0');
      q.histIds = IdGen.after('1-0');
      await assert.rejects(qm.append(msg(domain, 3)), { code: 'QUEUE_UNAVAILABLE' });
      assert.ok(q.whole, 'both replicas refused alike and stay in sync');
      assert.equal(await q.replicas[0]!.node.client.xlen(q.keys[0]), before);
      await qm.append(msg(domain, 4)); // the ids moved past the queue's highest
      await assertQueueConsistent(q);
      assert.equal(q.msgs.size, 4);
    });
  });
});

describe('counters', () => {
  it('equal what the streams hold when a purge races a take, in either order', async () => {
    await withPool(fast, async ({ start }) => {
      const qm = await start();
      const domain = 'race.test';
      const ms = Array.from({ length: 10 }, (_, i) => msg(domain, i));
      for (const m of ms) await qm.append(m);
      const q = qm.queues.get(domain)!;
      // purge first on the wire, then the take that had already picked the message
      const purge = qm.purge(domain, ms[0]!.id, 'ops', 'race');
      await Promise.resolve();
      const take = qm.take(domain, 5);
      const [, taken] = await Promise.all([purge, take]);
      assert.equal(taken.some((m) => m.id === ms[0]!.id), false);
      await assertQueueConsistent(q);
      // take first, then a purge of a message in flight
      const t2 = qm.take(domain, 3);
      const p2 = qm.purge(domain, ms[6]!.id, 'ops', 'race');
      await Promise.allSettled([t2, p2]);
      await assertQueueConsistent(q);
      for (const m of [...taken, ...(await t2)]) if (q.get(m.id)) await qm.settle(domain, m.id, 'delivered');
      await assertQueueConsistent(q);
      assert.equal(q.depth.inflight, 0);
    });
  });
});

describe('a write lost on the path in use', () => {
  for (const lost of ['reply', 'request'] as const) {
    it(`(the ${lost} lost) is settled on the node's standby path: the write succeeds and nothing is copied again`, async () => {
      const { startRedis } = await import('../helpers/redis.ts');
      const { createServer, connect } = await import('node:net');
      const r0 = await startRedis({ bind: ['127.0.0.1', '127.0.0.2'] });
      const others = await startRedisPool(2);
      let drop = false;
      const sockets = new Set<import('node:net').Socket>();
      // the active path goes through a proxy that can stall one way (then the connection breaks)
      const proxy = createServer((c) => {
        const up = connect(r0.port, '127.0.0.1');
        sockets.add(c).add(up);
        c.on('data', (d) => drop && lost === 'request' ? undefined : up.write(d));
        up.on('data', (d) => drop && lost === 'reply' ? undefined : c.write(d));
        c.on('error', () => up.destroy());
        up.on('error', () => c.destroy());
        c.on('close', () => up.destroy());
      });
      await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
      const pport = (proxy.address() as { port: number }).port;
      const nodes = [{ url: `redis://127.0.0.1:${pport}`, standby: `redis://127.0.0.2:${r0.port}` }, ...others.map((r) => r.url)];
      const qm = new QueueManager(testConfig({ redis: { nodes }, queue: { ...fast, heartbeat: { every: '200ms', missed: 5 } } }), silentLogger, { gatewayId: 'gw-lost' });
      try {
        await qm.start();
        const node = qm.nodes[0]!;
        await waitFor(() => node.status().standby === 'Ready', { what: 'standby ready' });
        let q: Queue | undefined;
        for (let i = 0; i < 50 && !q; i++) {
          const c = await qm.queueFor(`lost${i}.test`);
          if (c.replicas.some((r) => r.node === node)) q = c;
        }
        await qm.append(msg(q!.domain, 0));
        drop = true;
        const r = await qm.append(msg(q!.domain, 1));
        assert.equal(r.duplicate, false);
        assert.ok(q!.replicas.every((x) => x.sync === 'Sync'), JSON.stringify(q!.table()));
        for (const s of sockets) s.destroy(); // the stalled connection ends as a broken one does
        drop = false;
        await waitFor(async () => (await node.client.ping()) === 'PONG', { what: 'the node answers again' });
        await assertQueueConsistent(q!);
        assert.equal(q!.msgs.size, 2);
      } finally {
        proxy.close();
        await qm.stop();
        await Promise.all([r0.stop(), ...others.map((r) => r.stop())]);
      }
    });
  }
});
