import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { newMessageId } from '../../src/message/ids.ts';

const msg = (domain: string, i: number, size = 400) => ({
  id: newMessageId(),
  domain,
  envelope: { from: `s${i}@src.test`, to: [`r${i}@${domain}`] },
  raw: Buffer.concat([Buffer.from(`Subject: ${i}\r\n\r\n`), Buffer.alloc(size, 0xe9)]), // 8-bit bytes survive
  meta: { client: '127.0.0.1' },
});

describe('replicated queue', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  before(async () => {
    pool = await startRedisPool(3);
    qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) } }), silentLogger, { gatewayId: 'gwA' });
    await qm.start();
  });
  after(async () => {
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('keeps both replicas byte-identical after a mixed workload', async () => {
    const domain = 'mixed.test';
    const ids: string[] = [];
    const appends = [];
    for (let i = 0; i < 200; i++) {
      const m = msg(domain, i);
      ids.push(m.id);
      appends.push(qm.append(m));
    }
    await Promise.all(appends);
    const taken = await qm.take(domain, 120);
    assert.equal(taken.length, 120);
    assert.deepEqual(taken.map((t) => t.id), ids.slice(0, 120), 'FIFO order');
    assert.equal(taken[0]!.raw.at(-1), 0xe9);
    await Promise.all([
      ...taken.slice(0, 50).map((t) => qm.settle(domain, t.id, 'delivered', { reply: '250 ok' })),
      ...taken.slice(50, 100).map((t) => qm.defer(domain, t.id, Date.now() + 60_000, { reply: '451 later' })),
      ...taken.slice(100, 110).map((t) => qm.settle(domain, t.id, 'bounced', { reply: '550 no' })),
      ...ids.slice(150, 160).map((id) => qm.hold(domain, id, 'test', 'inspect')),
    ]);
    await Promise.all(ids.slice(150, 155).map((id) => qm.release(domain, id, 'test', 'ok')));
    await qm.purge(domain, ids[199]!, 'test', 'spam');
    await assert.rejects(qm.hold(domain, taken[110]!.id, 'test', 'x'), { code: 'WRONG_STATE' });
    await assert.rejects(qm.settle(domain, 'nope', 'delivered'), { code: 'NOT_FOUND' });

    const q = qm.queues.get(domain)!;
    const [a, b] = q.replicas.map((r) => r.node.client);
    for (const key of q.keys) {
      const [da, db] = await Promise.all([a!.dumpBuffer(key), b!.dumpBuffer(key)]);
      assert.ok(da && db, `${key} exists on both`);
      if (key.endsWith(':state')) {
        assert.deepEqual(await a!.hgetall(key), await b!.hgetall(key), `${key} equal`);
      } else {
        assert.ok(da.equals(db), `${key} byte-identical`);
      }
    }
    const meta = await a!.hgetall(q.keys[2]);
    assert.equal(Number(meta.ready), q.depth.ready);
    assert.equal(Number(meta.deferred), 50);
    assert.equal(Number(meta.held), 5);
    assert.equal(Number(meta.inflight), 10);
    assert.equal(Number(meta.txn), q.txn);
    assert.deepEqual(qm.depth(domain), { ...q.depth });
    assert.equal(q.depth.ready + q.depth.deferred + q.depth.held + q.depth.inflight, 200 - 50 - 10 - 1);
    const hist = await qm.history(domain, ids[0]);
    assert.deepEqual(hist.map((h) => h.kind), ['accepted', 'attempted', 'delivered']);
  });

  it('is idempotent on the message id', async () => {
    const m = msg('idem.test', 1);
    const r1 = await qm.append(m);
    const r2 = await qm.append(m);
    assert.equal(r2.duplicate, true);
    assert.equal(r2.entryId, r1.entryId);
    assert.equal(qm.depth('idem.test').ready, 1);
  });

  it('detects a replica changed behind its back and copies it again', async () => {
    const domain = 'tamper.test';
    for (let i = 0; i < 30; i++) await qm.append(msg(domain, i));
    const q = qm.queues.get(domain)!;
    const victim = q.replicas[1]!;
    await victim.node.client.hincrby(q.keys[2], 'txn', 5); // someone else wrote here
    await assert.doesNotReject(qm.append(msg(domain, 99)).catch((e: { code: string }) => assert.equal(e.code, 'QUEUE_UNAVAILABLE')));
    assert.equal(victim.sync === 'Sync', false);
    const { waitFor } = await import('../helpers/waitFor.ts');
    await waitFor(() => q.whole, { what: 'queue whole again' });
    const [a, b] = q.replicas.map((r) => r.node.client);
    assert.equal(await a!.hget(q.keys[2], 'txn'), await b!.hget(q.keys[2], 'txn'));
    assert.equal(await a!.xlen(q.keys[0]), await b!.xlen(q.keys[0]));
    await qm.append(msg(domain, 100));
  });

  it('stores every body byte for byte on both replicas, 7-bit (sent as a string up to 64 KB), 8-bit and mixed', async () => {
    const domain = 'bytes.test';
    const every7 = Buffer.from(Array.from({ length: 128 }, (_, i) => i)); // NUL, bare CR and LF included
    const bodies = [
      Buffer.concat([Buffer.from('Subject: ascii\r\n\r\n'), every7, every7]),
      Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
      Buffer.concat([Buffer.from('Subject: one high byte at the end\r\n\r\n'), every7, Buffer.from([0xff])]),
      Buffer.concat([Buffer.from('Subject: multibyte\r\n\r\n'), Buffer.from('caf\u00e9 \u2713 \ud83d\udce8\r\n', 'utf8')]),
      Buffer.concat([Buffer.from('Subject: large, 7-bit (sent as a Buffer)\r\n\r\n'), Buffer.alloc(100 * 1024, 'line of text\r\n')]),
    ];
    const ids = bodies.map(() => newMessageId());
    await Promise.all(bodies.map((raw, i) => qm.append({ id: ids[i]!, domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw, meta: {} })));
    const taken = await qm.take(domain, bodies.length);
    assert.deepEqual(taken.map((t) => t.id), ids);
    taken.forEach((t, i) => assert.ok(t.raw.equals(bodies[i]!), `body ${i} taken as appended`));
    const q = qm.queues.get(domain)!;
    for (const r of q.replicas) {
      const entries = (await r.node.client.xrangeBuffer(q.keys[0], '-', '+')) as [Buffer, Buffer[]][];
      assert.equal(entries.length, bodies.length);
      entries.forEach(([, fields], i) => assert.ok(fields.some((f) => f.equals(bodies[i]!)), `body ${i} stored as appended on ${r.node.id}`));
    }
  });
});
