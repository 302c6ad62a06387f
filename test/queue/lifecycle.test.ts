// Queue lifecycle: an empty queue idle for queue.idleDelete is deleted (keys on both replicas,
// placement, owner record, memory) once nothing needs its history; senders cannot create more
// than queue.maxQueues queues (452 4.3.1 over SMTP); many queues recover side by side.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { SmtpIngress } from '../../src/ingress/smtp/server.ts';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { queueKeys } from '../../src/queue/records.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

const msg = (domain: string, id: string) => ({ id, domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw: Buffer.from(`Subject: ${id}\r\n\r\nx\r\n`) });

describe('queue lifecycle', () => {
  // a pool per test: a member that stops holding messages is adopted by the next one on its pool
  let pool: TestRedis[];
  beforeEach(async () => {
    pool = await startRedisPool(3);
  });
  afterEach(async () => {
    await Promise.all(pool.map((r) => r.stop()));
  });
  const config = (queue: Record<string, unknown>) => testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { heartbeat: { every: '100ms', missed: 3 }, ...queue } });

  /** How many of a queue's keys exist, over every node. */
  async function keysLeft(name: string): Promise<number> {
    let n = 0;
    for (const r of pool) {
      const c = r.client();
      n += await c.exists(...queueKeys(name));
      c.disconnect();
    }
    return n;
  }

  it('deletes an empty queue idle for queue.idleDelete once its history is no longer needed, keeps the others, and makes a new one on the next message', async () => {
    const qm = new QueueManager(config({ idleDelete: '400ms' }), silentLogger, { gatewayId: 'gw-idle' });
    let held = true;
    qm.holdHistory(() => held); // as the history budget does while events are not yet published
    await qm.start();
    try {
      await qm.append(msg('idle.test', 'i1'));
      await qm.append(msg('busy.test', 'b1'));
      const [t] = await qm.take('idle.test', 1);
      await qm.settle('idle.test', t!.id, 'delivered');
      const [b] = await qm.take('busy.test', 1);
      await qm.defer('busy.test', b!.id, Date.now() + 3_600_000);
      // idle long enough, but its events are not all published: kept
      await waitFor(async () => Date.now() - qm.queues.get('idle.test')!.lastActivity > 1000, { what: 'a second idle' });
      await qm.dropIdle();
      assert.ok(qm.view('idle.test'), 'kept while its history is needed');
      held = false;
      await waitFor(() => !qm.view('idle.test'), { what: 'the idle queue deleted' });
      assert.equal(await keysLeft('gw-idle:idle.test'), 0, 'no key of it left on any node');
      const c = pool[0]!.client();
      assert.equal(await c.hget('sg:placement:{gw-idle}', 'idle.test'), null, 'no placement record');
      c.disconnect();
      assert.ok(qm.view('busy.test'), 'a queue holding a (deferred) message stays');
      assert.equal(qm.domains().includes('idle.test'), false);
      // the next message makes a new queue, which works as any other
      await qm.append(msg('idle.test', 'i2'));
      assert.equal(qm.depth('idle.test').ready, 1);
    } finally {
      await qm.stop();
    }
    const again = new QueueManager(config({}), silentLogger, { gatewayId: 'gw-idle' });
    await again.start();
    try {
      assert.deepEqual(again.domains().sort(), ['busy.test', 'idle.test']);
      assert.equal(again.depth('idle.test').ready, 1, 'the new queue recovered with its message');
      assert.equal(again.depth('busy.test').deferred, 1);
    } finally {
      await again.stop();
    }
  });

  it('a sender that would make one queue more than queue.maxQueues gets 452 4.3.1, and nothing is stored', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'sg-maxq-'));
    const cfg = testConfig({
      redis: { nodes: pool.map((r) => r.url) },
      gateway: { id: 'gw-maxq', dataDir },
      queue: { maxQueues: 2 },
      domains: { local: [], relay: ['q1.test', 'q2.test', 'q3.test'] },
      networks: { trusted: [] },
      smtp: { listen: '127.0.0.1:0' },
      submission: { listen: '127.0.0.1:0' },
    });
    const qm = new QueueManager(cfg, silentLogger, { gatewayId: 'gw-maxq' });
    await qm.start();
    const ingress = new SmtpIngress({ config: cfg, queues: qm, log: silentLogger });
    await ingress.start();
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: ingress.address('mx').port, ignoreTLS: true });
    const send = (to: string[]) => transport.sendMail({ envelope: { from: 'a@src.test', to }, raw: 'Subject: t\r\n\r\nx\r\n' });
    try {
      await send(['a@q1.test']);
      await send(['a@q2.test']);
      await assert.rejects(send(['a@q3.test']), (err: { responseCode?: number; response?: string }) => {
        assert.equal(err.responseCode, 452);
        assert.match(err.response!, /^452 4\.3\.1 Too many destination queues on this gateway/);
        return true;
      });
      // a message for a queue that exists, with a copy for one that cannot be made: refused whole
      await assert.rejects(send(['b@q1.test', 'b@q3.test']), { responseCode: 452 });
      assert.deepEqual(qm.domains().sort(), ['q1.test', 'q2.test']);
      await waitFor(() => qm.depth('q1.test').ready === 1, { what: 'the withdrawn copy gone' });
      assert.equal(await keysLeft('gw-maxq:q3.test'), 0);
      await send(['c@q2.test']); // the existing queues take mail as before
      assert.equal(qm.depth('q2.test').ready, 2);
    } finally {
      transport.close();
      await ingress.stop();
      await qm.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('recovers many queues side by side, queue.recoveryParallel at a time, each whole', async () => {
    const N = 300;
    const qm = new QueueManager(config({}), silentLogger, { gatewayId: 'gw-many' });
    await qm.start();
    try {
      await Promise.all(Array.from({ length: N }, (_, i) => qm.append(msg(`m${i}.many.test`, `x${i}`))));
    } finally {
      await qm.stop();
    }
    const again = new QueueManager(config({ recoveryParallel: 16 }), silentLogger, { gatewayId: 'gw-many' });
    await again.start();
    try {
      assert.deepEqual([again.lastRecovery.queues, again.lastRecovery.messages], [N, N]);
      for (let i = 0; i < N; i++) assert.equal(again.depth(`m${i}.many.test`).ready, 1);
    } finally {
      await again.stop();
    }
  });
});
