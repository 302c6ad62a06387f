import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Queue as BullQueue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { EventPublisher } from '../../src/events/publisher.ts';
import { ProducerWorker } from '../../src/ingress/producers/worker.ts';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

describe('producers and lifecycle events (BullMQ)', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  let conn: Redis;
  let worker: ProducerWorker;
  let publisher: EventPublisher;
  let submit: BullQueue;
  let events: BullQueue;
  let qe: QueueEvents;
  let qeConn: Redis;
  const config = () => testConfig({ redis: { nodes: pool.map((r) => r.url) }, events: { queue: 'ev-test', producerQueue: 'submit-test' } });

  before(async () => {
    pool = await startRedisPool(3);
    qm = new QueueManager(config(), silentLogger, { gatewayId: 'gw-prod' });
    await qm.start();
    conn = new Redis(pool[2]!.url, { maxRetriesPerRequest: null });
    worker = new ProducerWorker({ config: config(), queues: qm, connection: conn, log: silentLogger });
    worker.start();
    publisher = new EventPublisher(qm, 'ev-test', conn, silentLogger);
    await publisher.start();
    submit = new BullQueue('submit-test', { connection: conn });
    events = new BullQueue('ev-test', { connection: conn });
    qeConn = new Redis(pool[2]!.url, { maxRetriesPerRequest: null });
    qe = new QueueEvents('submit-test', { connection: qeConn });
    await qe.waitUntilReady();
  });
  after(async () => {
    await qe.close();
    await worker.stop();
    await publisher.stop();
    await submit.close();
    await events.close();
    conn.disconnect();
    qeConn.disconnect();
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('turns a job into one message per destination domain, idempotent on the job id', async () => {
    const job = await submit.add('invoice', { from: 'billing@src.test', to: ['a@one.test', 'b@one.test', 'c@two.test'], message: { subject: 'Invoice 7', text: 'Total: 7' } }, { jobId: 'invoice-7' });
    const result = (await job.waitUntilFinished(qe, 10_000)) as { queued: { domain: string }[] };
    assert.deepEqual(result.queued.map((q) => q.domain).sort(), ['one.test', 'two.test']);
    const [m] = await qm.take('one.test', 10);
    assert.deepEqual(m!.envelope, { from: 'billing@src.test', to: ['a@one.test', 'b@one.test'] });
    assert.equal(m!.id, 'job-invoice-7');
    assert.match(m!.raw.toString(), /^Subject: Invoice 7\r$/m);
    assert.match(m!.raw.toString(), /^Message-ID: </im);
    // the same job id again (removed and re-added by the producer): no second message
    await job.remove();
    const again = await submit.add('invoice', { from: 'billing@src.test', to: ['c@two.test'], raw: 'Subject: x\n\nbody\n' }, { jobId: 'invoice-7' });
    await again.waitUntilFinished(qe, 10_000);
    assert.equal(qm.depth('two.test').ready, 1);
  });

  it('composes a message whose text and html have several lines with CRLF line ends', async () => {
    const job = await submit.add('lines', { from: 'billing@src.test', to: ['a@lines.test'], message: { subject: 'Lines', text: 'one\ntwo\n', html: '<p>one</p>\n<p>two</p>' } }, { jobId: 'lines-1' });
    await job.waitUntilFinished(qe, 10_000);
    const [m] = await qm.take('lines.test', 1);
    assert.doesNotMatch(m!.raw.toString('latin1'), /[^\r]\n/);
  });

  it('fails a bad job at once with a precise reason and appends nothing', async () => {
    const before = qm.totals();
    for (const [data, re] of [
      [{ from: 'x@src.test', to: [], raw: 'x' }, /to: expected at least one recipient/],
      [{ from: 'x@src.test', to: ['not-an-address'], raw: 'x' }, /to\.0: expected an e-mail address/],
      [{ from: 'x@src.test', to: ['a@bad.test'], raw: 'x', message: { subject: 's' } }, /expected exactly one of raw, rawBase64, message/],
      [{ from: 'x@src.test', to: ['a@bad.test'], raw: 'a\u0000b' }, /NUL byte/],
      [{ from: 'x@src.test', to: ['a@bad.test'], raw: 'x', extra: 1 }, /Unrecognized key/i],
    ] as const) {
      const job = await submit.add('bad', data, { attempts: 5 });
      await assert.rejects(job.waitUntilFinished(qe, 10_000), re);
      const state = await job.getState();
      assert.equal(state, 'failed');
      assert.equal((await submit.getJob(job.id!))!.attemptsMade, 1, 'not retried');
    }
    assert.deepEqual(qm.totals(), before);
    assert.equal(qm.queues.has('bad.test'), false);
  });

  it('refuses a job id that could reach a header (CRLF in the DSN Message-ID), appending nothing', async () => {
    // (BullMQ's own client refuses ":" in ids; other clients and direct writes do not)
    const before = qm.totals();
    const job = await submit.add('inject', { from: 'x@src.test', to: ['a@inject.test'], raw: 'Subject: x\n\nbody\n' }, { jobId: 'j1\r\nBcc victim@evil.test', attempts: 5 });
    await assert.rejects(job.waitUntilFinished(qe, 10_000), /job id: expected 1 to 190 letters, digits/);
    assert.equal((await submit.getJob(job.id!))!.attemptsMade, 1, 'not retried');
    assert.deepEqual(qm.totals(), before);
    assert.equal(qm.queues.has('inject.test'), false);
  });

  it('applies the SMTP DATA hygiene to producer messages: bare CR, bare LF, NUL, long lines, header limits', async () => {
    const before = qm.totals();
    const long = `Subject: x\r\n\r\n${'y'.repeat(1200)}\r\n`;
    const hops = `${'Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n'.repeat(60)}Subject: loop\r\n\r\nx\r\n`;
    const bigHeader = `Subject: x\r\n${'X-Filler: y\r\n'.repeat(10_000)}\r\nx\r\n`;
    for (const [data, re] of [
      [{ raw: 'Subject: a\r\rBcc: victim@evil.test\r\n\r\nbody\r\n' }, /bare CR/],
      [{ rawBase64: Buffer.from('Subject: a\r\nX: b\nBcc: victim@evil.test\r\n\r\nbody\r\n').toString('base64') }, /bare LF/],
      [{ rawBase64: Buffer.from('Subject: a\r\n\r\nbo\u0000dy\r\n').toString('base64') }, /NUL byte/],
      [{ raw: long }, /line longer than 1000 octets/],
      [{ raw: hops }, /too many hops/i],
      [{ raw: bigHeader }, /header exceeds/i],
    ] as const) {
      const job = await submit.add('hygiene', { from: 'x@src.test', to: ['a@hygiene.test'], ...data }, { attempts: 5 });
      await assert.rejects(job.waitUntilFinished(qe, 10_000), re);
      assert.equal((await submit.getJob(job.id!))!.attemptsMade, 1, 'not retried');
    }
    assert.deepEqual(qm.totals(), before);
    assert.equal(qm.queues.has('hygiene.test'), false);
  });

  it('publishes every lifecycle event once, and catches up from its cursor after a restart', async () => {
    const domain = 'events.test';
    await qm.append({ id: 'e1', domain, envelope: { from: 'a@src.test', to: ['x@events.test'] }, raw: Buffer.from('x') });
    const [t] = await qm.take(domain, 1);
    await qm.settle(domain, t!.id, 'delivered', { reply: '250 ok' });
    const kinds = async (id: string) => (await events.getJobs(['waiting'], 0, 10_000)).filter((j) => j.data.messageId === id).map((j) => j.name);
    await waitFor(async () => (await kinds('e1')).length >= 3, { what: 'events published' });
    assert.deepEqual((await kinds('e1')).sort(), ['accepted', 'attempted', 'delivered']);

    // while the publisher is stopped, events happen; the next one sends them from the history
    await publisher.stop();
    await qm.append({ id: 'e2', domain, envelope: { from: 'a@src.test', to: ['x@events.test'] }, raw: Buffer.from('x') });
    await qm.hold(domain, 'e2', 'ops', 'check');
    publisher = new EventPublisher(qm, 'ev-test', conn, silentLogger);
    await publisher.start();
    await waitFor(async () => (await kinds('e2')).length === 2, { what: 'caught up' });
    assert.deepEqual((await kinds('e2')).sort(), ['accepted', 'held']);
    assert.deepEqual((await kinds('e1')).sort(), ['accepted', 'attempted', 'delivered'], 'nothing sent twice');
    const job = (await events.getJobs(['waiting'], 0, 10_000)).find((j) => j.data.messageId === 'e2' && j.name === 'held')!;
    assert.equal(job.id, job.data.id);
    assert.equal(job.data.details.actor, 'ops');
  });
});
