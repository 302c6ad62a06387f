// The gateway's metrics as a scraper reads them from /metrics: outcomes per destination and
// listener, the latency histograms, door, replicas, publisher lag, and label sets that stay
// bounded however many destination queues there are.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { Gauge } from 'prom-client';
import { silentLogger } from '../../src/log.ts';
import { startOps } from '../../src/ops/http.ts';
import { GatewayMetrics } from '../../src/ops/metrics.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { alertRules, grafanaExprs, sample } from '../helpers/prom.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';

const TOKEN = 'metrics-token-0123456789';

const scrapeOf = async (t: TestGateway) => (await fetch(`http://127.0.0.1:${t.config.ops.listen.port}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();

/** `n` messages over SMTP to remote.test (routed to the gateway's sink). */
async function sendTo(t: TestGateway, n: number, tag: string): Promise<void> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, secure: false, ignoreTLS: true });
  try {
    for (let i = 0; i < n; i++) await transport.sendMail({ envelope: { from: 'a@src.test', to: [`r${i}@remote.test`] }, raw: `Subject: ${tag} ${i}\r\n\r\nhello\r\n` });
  } finally {
    transport.close();
  }
}

describe('metrics of a whole gateway', () => {
  let t: TestGateway;
  const scrape = () => scrapeOf(t);
  const send = (n: number, tag: string) => sendTo(t, n, tag);
  before(async () => {
    t = await startTestGateway('metrics', { domain: 'metrics.test', hostname: 'mx.metrics.test', overrides: { ops: { listen: `127.0.0.1:${await freePort()}`, tokens: [TOKEN] } } });
  });
  after(async () => await t?.stop());

  it('counts accepted and delivered per destination and listener, with reply, attempt, accept-to-delivery and residence histograms', async () => {
    await send(3, 'ok');
    await waitFor(() => t.sink.messages.length >= 3, { what: 'deliveries' });
    const text = await waitFor(async () => {
      const s = await scrape();
      return sample(s, 'streamgate_messages_total', { queue: 'remote.test', outcome: 'delivered' }) === 3 ? s : undefined;
    }, { what: 'delivered counted' });
    assert.equal(sample(text, 'streamgate_messages_total', { queue: 'remote.test', listener: 'mx', outcome: 'accepted' }), 3);
    assert.equal(sample(text, 'streamgate_smtp_reply_seconds_count', { listener: 'mx', class: '2xx' }), 3);
    assert.equal(sample(text, 'streamgate_delivery_attempt_seconds_count', { queue: 'remote.test' }), 3);
    assert.equal(sample(text, 'streamgate_accept_to_delivery_seconds_count', { queue: 'remote.test' }), 3);
    assert.equal(sample(text, 'streamgate_queue_residence_seconds_count', { queue: 'remote.test', outcome: 'delivered' }), 3);
    assert.equal(sample(text, 'streamgate_door_open'), 1);
    assert.equal(sample(text, 'streamgate_redis_node_memory_high_water_ratio'), 0.9);
    for (const r of t.pool) assert.equal(sample(text, 'streamgate_replicas_not_in_sync', { node: `127.0.0.1:${r.port}` }), 0);
    // every metric the alert rules and the Grafana dashboard use is exported
    for (const [where, expr] of [...alertRules().map((r) => [r.alert, r.expr]), ...grafanaExprs().map((e) => ['grafana', e])] as [string, string][]) {
      for (const [name] of expr.matchAll(/streamgate_[a-z_]+/g)) {
        const declared = name.replace(/_bucket$/, '');
        assert.ok(text.includes(`\n# TYPE ${declared} `), `${where} uses ${name}, not exported`);
      }
    }
    // every event handed to the events queue: no lag left
    await waitFor(async () => sample(await scrape(), 'streamgate_events_publisher_lag_seconds') === 0, { what: 'publisher caught up' });
  });

  it('counts a deferral with its classified reason, and a refused message as a 5xx reply', async () => {
    t.sink.dataAnswer = { code: 451, text: '4.3.0 try later' };
    await send(1, 'deferred');
    const text = await waitFor(async () => {
      const s = await scrape();
      return (sample(s, 'streamgate_messages_total', { queue: 'remote.test', outcome: 'deferred' }) ?? 0) >= 1 ? s : undefined;
    }, { what: 'deferral counted' });
    const reasons = text.split('\n').filter((l) => l.startsWith('streamgate_deferrals_total{queue="remote.test"'));
    assert.ok(reasons.length >= 1 && reasons.every((l) => /category="[a-z_-]+"/.test(l)), reasons.join('\n'));
    t.sink.dataAnswer = undefined;
    await waitFor(() => t.sink.messages.length >= 4, { timeout: 20_000, what: 'delivered after the retry' });

    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, secure: false, ignoreTLS: true });
    await assert.rejects(transport.sendMail({ envelope: { from: 'a@src.test', to: ['x@remote.test'] }, raw: 'Subject: nul\r\n\r\nbad\0line\r\n' }));
    transport.close();
    await waitFor(async () => (sample(await scrape(), 'streamgate_smtp_reply_seconds_count', { listener: 'mx', class: '5xx' }) ?? 0) >= 1, { what: '5xx reply observed' });
  });


  it('shows the publisher lag grow while the events Redis does not answer, and fall to 0 once it does', async () => {
    t.eventsRedis.kill('SIGSTOP');
    try {
      await send(1, 'lag');
      await waitFor(async () => (sample(await scrape(), 'streamgate_events_publisher_lag_seconds') ?? 0) >= 2, { timeout: 20_000, what: 'a lag of 2 s' });
    } finally {
      t.eventsRedis.kill('SIGCONT');
    }
    await waitFor(async () => sample(await scrape(), 'streamgate_events_publisher_lag_seconds') === 0, { timeout: 30_000, what: 'caught up' });
  });
});

describe('metrics of the relay: dead destinations and suspended queues', () => {
  let t: TestGateway;
  const scrape = () => scrapeOf(t);
  const send = (n: number, tag: string) => sendTo(t, n, tag);
  before(async () => {
    t = await startTestGateway('metricsdead', {
      domain: 'metricsdead.test', hostname: 'mx.metricsdead.test',
      overrides: { ops: { listen: `127.0.0.1:${await freePort()}`, tokens: [TOKEN] }, relay: { retry: { schedule: ['1s'], jitter: 0 }, deadDestination: { failures: 2, suspend: '2s' } } },
    });
  });
  after(async () => await t?.stop());

  it('shows a dead destination while it is suspended, and an operator suspend, then neither', async () => {
    t.sink.failConnections(1000, '421');
    await send(2, 'dead');
    await waitFor(async () => sample(await scrape(), 'streamgate_dead_destinations') === 1, { timeout: 20_000, what: 'a dead destination' });
    const text = await scrape();
    assert.equal(sample(text, 'streamgate_queues_not_taken', { reason: 'dead' }), 1);
    t.sink.failConnections(0);
    await waitFor(async () => sample(await scrape(), 'streamgate_dead_destinations') === 0, { timeout: 20_000, what: 'the destination up again after its probe' });
    await fetch(`http://127.0.0.1:${t.config.ops.listen.port}/api/queues/remote.test/suspend`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'test' }) });
    assert.equal(sample(await scrape(), 'streamgate_queues_not_taken', { reason: 'operator' }), 1);
    await fetch(`http://127.0.0.1:${t.config.ops.listen.port}/api/queues/remote.test/resume`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'test' }) });
    await waitFor(async () => sample(await scrape(), 'streamgate_queues_not_taken', { reason: 'operator' }) === 0, { what: 'resumed' });
  });
});

describe('metrics label sets at many destinations', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  let metrics: GatewayMetrics;
  let ops: { port: number; stop(): Promise<void> };
  before(async () => {
    pool = await startRedisPool(2);
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) }, ops: { listen: '127.0.0.1:0', tokens: [TOKEN], topDestinations: 3 } });
    qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-labels' });
    await qm.start();
    metrics = new GatewayMetrics({ topDestinations: 3, rankEveryMs: 0, processMetrics: false });
    metrics.watchQueues(qm, config.queue.memoryHighWater);
    ops = await startOps({ config, queues: qm, log: silentLogger, metrics });
  });
  after(async () => {
    await ops.stop();
    metrics.stop();
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('names the busiest destinations and counts the rest as "other", with the same totals', async () => {
    // d0 gets 8 messages, d1 7 ... d7 1: 36 in all over 8 queues
    let n = 0;
    for (let d = 0; d < 8; d++) {
      for (let i = 0; i < 8 - d; i++) await qm.append({ id: `m${n++}`, domain: `d${d}.labels.test`, envelope: { from: 'a@src.test', to: [`b@d${d}.labels.test`] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') });
    }
    const text = await (await fetch(`http://127.0.0.1:${ops.port}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
    const queuesIn = (name: string) => new Set([...text.matchAll(new RegExp(`^${name}\\{[^}]*queue="([^"]+)"`, 'gm'))].map((m) => m[1]));
    assert.deepEqual([...queuesIn('streamgate_queue_depth')].sort(), ['d0.labels.test', 'd1.labels.test', 'd2.labels.test', 'other']);
    assert.deepEqual([...queuesIn('streamgate_messages_total')].sort(), ['d0.labels.test', 'd1.labels.test', 'd2.labels.test', 'other']);
    const depth = (q: string) => sample(text, 'streamgate_queue_depth', { queue: q, state: 'ready' });
    assert.equal(depth('d0.labels.test'), 8);
    assert.equal(depth('other'), 5 + 4 + 3 + 2 + 1);
    const accepted = (q: string) => sample(text, 'streamgate_messages_total', { queue: q, outcome: 'accepted' });
    assert.equal(['d0.labels.test', 'd1.labels.test', 'd2.labels.test', 'other'].reduce((s, q) => s + (accepted(q) ?? 0), 0), 36);
  });

  it('lets another part register its metrics in the same registry', async () => {
    metrics.extend((registry) => {
      const g = new Gauge({ name: 'streamgate_test_extra', help: 'an extra metric', registers: [registry] });
      return () => g.set(42);
    });
    const text = await (await fetch(`http://127.0.0.1:${ops.port}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
    assert.equal(sample(text, 'streamgate_test_extra'), 42);
  });

  it('shows the door closed and the replicas not in sync when both nodes are gone', async () => {
    const scrape = async () => (await fetch(`http://127.0.0.1:${ops.port}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
    assert.equal(sample(await scrape(), 'streamgate_door_open'), 1);
    for (const r of pool) r.kill('SIGKILL');
    // the door closes as soon as one node is isolated; the other's close may be read in a later
    // turn (under load, after a scrape): the scrape looked at is one that shows both down, and in it
    // each node's replicas must count as not in sync
    const text = await waitFor(async () => {
      const s = await scrape();
      return sample(s, 'streamgate_door_open') === 0 && qm.nodes.every((n) => sample(s, 'streamgate_redis_node_up', { node: n.id }) === 0) ? s : undefined;
    }, { timeout: 30_000, what: 'door closed, both nodes seen gone' });
    for (const n of qm.nodes) assert.ok((sample(text, 'streamgate_replicas_not_in_sync', { node: n.id }) ?? 0) > 0, n.id);
    for (const n of qm.nodes) assert.equal(sample(text, 'streamgate_redis_node_up', { node: n.id }), 0);
  });
});
