// The events budget on a small Redis: a queue of lifecycle events nobody takes never turns mail
// away. With events.whenFull stop the publisher stops, keeps its cursors and sends the events once
// the queue is drained; with drop it drops the oldest undelivered events and counts them. Both
// say so in /health (degraded, still 200), /api/memory and the metrics. The gateways publish as
// configured by default: up to events.batch (100) events of one queue per job.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Queue as BullQueue } from 'bullmq';
import { Redis } from 'ioredis';
import nodemailer from 'nodemailer';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { waitFor } from '../helpers/waitFor.ts';

const TOKEN = 'budget-test-token-0123456789';

async function ops(t: TestGateway, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${t.config.ops.listen.port}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return { status: res.status, body: await res.text() };
}

/** Adds jobs of about 1.5 KB to the events queue until the Redis holding it is above `share` of its maxmemory. */
async function fill(t: TestGateway, url: string, share: number): Promise<void> {
  const conn = new Redis(url, { maxRetriesPerRequest: null });
  const q = new BullQueue(t.config.events.queue, { connection: conn });
  try {
    const max = Number(/maxmemory:(\d+)/.exec(await conn.info('memory'))![1]);
    for (let i = 0; ; i++) {
      const used = Number(/used_memory:(\d+)/.exec(await conn.info('memory'))![1]);
      if (used > max * share) break;
      await q.addBulk(Array.from({ length: 200 }, (_, k) => ({ name: 'backlog', data: { pad: 'x'.repeat(1500) }, opts: { jobId: `backlog-${i}-${k}` } })));
    }
  } finally {
    await q.close();
    conn.disconnect();
  }
}

/** The events the waiting jobs carry, whether one per job or batched ("batch", data { events }). */
async function waitingEvents(q: BullQueue, count: number): Promise<{ kind: string; domain: string }[]> {
  const jobs = await q.getJobs(['wait'], 0, count);
  return jobs.flatMap((j) => (j.name === 'batch' ? (j.data as { events: { kind: string; domain: string }[] }).events : j.name === 'backlog' ? [] : [{ ...(j.data as { domain: string }), kind: j.name }]));
}

async function send(t: TestGateway, n: number, tag: string): Promise<number> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, ignoreTLS: true, pool: true, maxConnections: 4 });
  let ok = 0;
  try {
    await Promise.all(Array.from({ length: n }, async (_, i) => {
      const info = await transport.sendMail({ envelope: { from: 'a@src.test', to: [`r${i}@remote.test`] }, raw: `Subject: ${tag} ${i}\r\n\r\n${'m'.repeat(500)}\r\n${'m'.repeat(500)}\r\n` });
      if (/^250/.test(info.response)) ok++;
    }));
  } finally {
    transport.close();
  }
  return ok;
}

describe('events budget, events.whenFull stop, events on a pool node (32 MB)', () => {
  let t: TestGateway;
  before(async () => {
    t = await startTestGateway('evstop', {
      domain: 'evstop.test', hostname: 'mx.evstop.test', poolMaxmemory: '32mb', eventsOnPool: true,
      overrides: { ops: { tokens: [TOKEN] }, queue: { mailBudget: 0.5, historyBudget: 0.1 }, events: { budget: 0.3, whenFull: 'stop' } },
    });
  });
  after(async () => await t?.stop());

  it('fills the node to 92% with undelivered events: mail is still accepted, publishing stops with its cursor, and resumes once the queue is drained', async () => {
    assert.equal(await send(t, 5, 'before'), 5);
    await waitFor(() => t.sink.messages.length >= 5, { what: 'first deliveries' });
    const node = t.pool[0]!;
    await fill(t, node.url, 0.92);
    // the node is above the old 90% high-water mark: before the budgets this refused all mail
    await waitFor(async () => JSON.parse((await ops(t, '/health')).body).status === 'degraded', { timeout: 15_000, what: 'health degraded' });
    const health = await ops(t, '/health');
    assert.equal(health.status, 200);
    assert.match(JSON.parse(health.body).degraded.join(' '), /events budget full .*events\.whenFull: stop/);
    const cursorKey = `sg:events:cursor:{${t.config.gateway.id}}:remote.test`;
    const c = node.client();
    const cursorBefore = await c.get(cursorKey);
    assert.equal(await send(t, 20, 'during'), 20, 'every message accepted while the events budget is full');
    await waitFor(() => t.sink.messages.length >= 25, { what: 'deliveries while full' });
    const memory = JSON.parse((await ops(t, '/api/memory')).body) as { events: { paused: boolean; full: boolean; bytes: number; limit: number } };
    assert.equal(memory.events.paused, true);
    assert.equal(await c.get(cursorKey), cursorBefore, 'the cursor stays while publishing is stopped');
    const metrics = (await ops(t, '/metrics')).body;
    assert.match(metrics, /^streamgate_events_publishing_paused 1$/m);
    assert.match(metrics, /^streamgate_memory_budget_used_bytes\{node="[^"]+",budget="mail"\} \d+/m);
    assert.match(metrics, /^streamgate_memory_budget_limit_bytes\{node="[^"]+",budget="events"\} \d+/m);
    assert.match(metrics, /^streamgate_memory_budget_used_bytes\{node="[^"]+",budget="history"\} \d+/m);
    assert.match(metrics, /^streamgate_degraded 1$/m);
    // a consumer drains the queue: the events of the 20 messages follow from the cursor
    const conn = new Redis(node.url, { maxRetriesPerRequest: null });
    const q = new BullQueue(t.config.events.queue, { connection: conn });
    try {
      await q.drain(true);
      await waitFor(async () => JSON.parse((await ops(t, '/health')).body).status === 'ok', { timeout: 20_000, what: 'health ok again' });
      await waitFor(async () => (await waitingEvents(q, 1000)).filter((e) => e.kind === 'delivered' && e.domain === 'remote.test').length >= 20, { timeout: 20_000, what: 'the events sent after the drain' });
      assert.ok((await q.getJobs(['wait'], 0, 1000)).some((j) => j.name === 'batch'), 'sent in batches, as by default');
      assert.notEqual(await c.get(cursorKey), cursorBefore, 'the cursor moved on');
    } finally {
      await q.close();
      conn.disconnect();
    }
  });
});

describe('events budget, events.whenFull drop, events on a Redis of its own (16 MB)', () => {
  let t: TestGateway;
  before(async () => {
    t = await startTestGateway('evdrop', {
      domain: 'evdrop.test', hostname: 'mx.evdrop.test', eventsMaxmemory: '16mb',
      overrides: { ops: { tokens: [TOKEN] }, events: { budget: 0.3, whenFull: 'drop' } },
    });
  });
  after(async () => await t?.stop());

  it('drops the oldest undelivered events, counts them, and accepts every message', async () => {
    await fill(t, t.eventsRedis.url, 0.6);
    await waitFor(async () => (JSON.parse((await ops(t, '/api/memory')).body) as { events: { dropped: number } }).events.dropped > 0, { timeout: 15_000, what: 'events dropped' });
    assert.equal(await send(t, 20, 'drop'), 20);
    await waitFor(() => t.sink.messages.length >= 20, { what: 'deliveries' });
    const metrics = (await ops(t, '/metrics')).body;
    const dropped = Number(/^streamgate_events_dropped_total (\d+)/m.exec(metrics)![1]);
    assert.ok(dropped > 0, 'dropped events are counted');
    const memory = JSON.parse((await ops(t, '/api/memory')).body) as { events: { bytes: number; limit: number; jobs: number } };
    assert.ok(memory.events.bytes <= memory.events.limit * 1.1, `events within their budget (${memory.events.bytes} of ${memory.events.limit})`);
    // the newest events (of the messages just sent) are kept: the oldest went
    const conn = new Redis(t.eventsRedis.url, { maxRetriesPerRequest: null });
    const q = new BullQueue(t.config.events.queue, { connection: conn });
    try {
      await waitFor(async () => (await waitingEvents(q, 200)).filter((e) => e.kind === 'accepted').length >= 20, { what: 'the new events kept' });
    } finally {
      await q.close();
      conn.disconnect();
    }
  });
});
