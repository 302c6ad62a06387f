import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { startOps } from '../../src/ops/http.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { Relay } from '../../src/relay/relay.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { startSmtpSink } from '../helpers/smtpSink.ts';
import { waitFor } from '../helpers/waitFor.ts';

const TOKEN = 'test-token-0123456789abcdef';
const READER = 'read-token-0123456789abcdef';
const auth = (token = TOKEN) => ({ headers: { authorization: `Bearer ${token}` } });

/** A request with a Host header of the test's choosing (fetch sets its own). */
function withHost(port: number, path: string, host: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { ...headers, host } }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The CLI as a child process; asynchronous, since the API it calls is served by this process. */
function cli(args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts'), ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

describe('ops HTTP API', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  let ops: { port: number; stop(): Promise<void> };
  let base: string;
  before(async () => {
    pool = await startRedisPool(2);
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) }, ops: { listen: '127.0.0.1:0', tokens: [TOKEN, { token: READER, role: 'read' }] } });
    qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-ops' });
    await qm.start();
    ops = await startOps({ config, queues: qm, log: silentLogger });
    base = `http://127.0.0.1:${ops.port}`;
    for (let i = 0; i < 3; i++) await qm.append({ id: `ops${i}`, domain: 'ops.test', envelope: { from: 'a@src.test', to: ['b@ops.test'] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') });
  });
  after(async () => {
    await ops.stop();
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('reports health, depth and the replica table', async () => {
    const h = await fetch(`${base}/health`);
    assert.equal(h.status, 200);
    const q = (await (await fetch(`${base}/api/queues/ops.test`, auth(READER))).json()) as { depth: { ready: number }; replicas: { sync: string; active: string }[]; status: string };
    assert.equal(q.depth.ready, 3);
    assert.equal(q.status, 'whole');
    assert.deepEqual(q.replicas.map((r) => [r.sync, r.active]), [['Sync', 'Run'], ['Sync', 'Run']]);
    const all = (await (await fetch(`${base}/api/queues`, auth(READER))).json()) as { totals: { ready: number; queues: number } };
    assert.equal(all.totals.ready, 3);
  });

  it('serves the live dashboard page', async () => {
    const res = await fetch(`${base}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/html/);
    const html = await res.text();
    assert.match(html, /<script src="\/assets\/uplot.js"><\/script>/);
    // its assets come from the npm package, without a token (the page itself asks for one)
    const js = await fetch(`${base}/assets/uplot.js`);
    assert.equal(js.status, 200);
    assert.match(await js.text(), /uPlot/);
    assert.equal((await fetch(`${base}/assets/uplot.css`)).status, 200);
    // the live stream is not open without a token (the page's behaviour is tested in a browser: dashboard.test.ts)
    assert.equal((await fetch(`${base}/api/live`)).status, 401);
  });

  it('exposes queue depth as a Prometheus gauge', async () => {
    assert.equal((await fetch(`${base}/metrics`)).status, 401, 'metrics need a token unless ops.open lists them');
    const text = await (await fetch(`${base}/metrics`, auth(READER))).text();
    assert.match(text, /streamgate_queue_depth\{queue="ops.test",state="ready"\} 3/);
    assert.match(text, /streamgate_queue_replica_in_sync\{queue="ops.test",node="127\.0\.0\.1:\d+"\} 1/);
  });

  it('reports a stall of the event loop and GC pauses since the previous scrape', async () => {
    const scrape = async () => await (await fetch(`${base}/metrics`, auth(READER))).text();
    const longest = (text: string) => Number(/^streamgate_eventloop_delay_seconds\{quantile="1"\} (\S+)$/m.exec(text)?.[1]);
    await scrape(); // a new interval begins
    const until = performance.now() + 200;
    while (performance.now() < until); // the loop blocked for 200 ms, as a synchronous stall would
    const stalled = await scrape();
    assert.ok(longest(stalled) >= 0.19, `longest delay ${longest(stalled)} s after a 200 ms stall`);
    assert.match(stalled, /^streamgate_gc_pause_seconds\{stat="max"\} \S+$/m);
    await new Promise((r) => setTimeout(r, 30));
    assert.ok(longest(await scrape()) < 0.19, 'the next interval no longer counts the stall');
  });

  it('holds, releases and purges with actor and reason, only with a token', async () => {
    const post = (path: string, body: unknown, token?: string) =>
      fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) });
    const denied = await post('/api/queues/ops.test/messages/ops0/hold', { reason: 'check' });
    assert.equal(denied.status, 401);
    assert.equal(((await denied.json()) as { error: { code: string } }).error.code, 'SG_ERR_UNAUTHORIZED');
    assert.equal(qm.depth('ops.test').held, 0);

    assert.equal((await post('/api/queues/ops.test/messages/ops0/hold', { reason: 'check', actor: 'anne' }, TOKEN)).status, 200);
    assert.equal(qm.depth('ops.test').held, 1);
    const again = await post('/api/queues/ops.test/messages/ops0/hold', { reason: 'check' }, TOKEN);
    assert.equal(again.status, 409);
    assert.equal(((await again.json()) as { error: { code: string } }).error.code, 'SG_ERR_WRONG_STATE');
    assert.equal((await post('/api/queues/ops.test/messages/ops0/release', { reason: 'ok' }, TOKEN)).status, 200);
    assert.equal((await post('/api/queues/ops.test/messages/ops1/purge', { reason: 'spam', actor: 'bob' }, TOKEN)).status, 200);
    assert.equal(qm.depth('ops.test').ready, 2);

    const bad = await post('/api/queues/ops.test/messages/ops2/hold', { why: 'x' }, TOKEN);
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { error: { code: string } }).error.code, 'SG_ERR_BAD_REQUEST');
    const extra = await post('/api/queues/ops.test/messages/ops2/hold', { reason: 'x', actr: 'typo' }, TOKEN);
    assert.equal(extra.status, 400, 'an unknown property is refused, not dropped');
    assert.match(((await extra.json()) as { error: { message: string } }).error.message, /additional properties/);
    const missing = await post('/api/queues/ops.test/messages/nope/hold', { reason: 'x' }, TOKEN);
    assert.equal(missing.status, 404);
    assert.equal(qm.depth('ops.test').held, 0);

    const trace = (await (await fetch(`${base}/api/queues/ops.test/messages/ops0`, auth())).json()) as { events: { kind: string; details: { actor?: string } }[] };
    assert.deepEqual(trace.events.map((e) => e.kind), ['accepted', 'held', 'released']);
    assert.equal(trace.events[1]!.details.actor, 'anne');
    const purged = (await (await fetch(`${base}/api/queues/ops.test/messages/ops1`, auth())).json()) as { live: unknown; events: { kind: string }[] };
    assert.equal(purged.live, null);
    assert.deepEqual(purged.events.map((e) => e.kind), ['accepted', 'purged']);
  });

  it('reads need a read or admin token, writes an admin token; /health is open', async () => {
    for (const path of ['/api/queues', '/api/queues/ops.test', '/api/queues/ops.test/messages/ops2', '/api/suspended', '/metrics']) {
      const res = await fetch(`${base}${path}`);
      assert.equal(res.status, 401, path);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'SG_ERR_UNAUTHORIZED');
      assert.equal((await fetch(`${base}${path}`, auth('wrong-token-0123456789abcdef'))).status, 401, path);
      assert.equal((await fetch(`${base}${path}`, auth(READER))).status, 200, path);
    }
    assert.equal((await fetch(`${base}/health`)).status, 200);
    const post = (token?: string, body = '{"reason":"x"}') =>
      fetch(`${base}/api/queues/ops.test/messages/ops2/hold`, { method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body });
    const reader = await post(READER);
    assert.equal(reader.status, 403);
    assert.equal(((await reader.json()) as { error: { code: string } }).error.code, 'SG_ERR_FORBIDDEN');
    assert.equal((await post(undefined, '{not json')).status, 401, 'authentication comes before the body is read');
    assert.equal(qm.depth('ops.test').held, 0);
  });

  it('answers only to its own names in the Host header (no DNS rebinding)', async () => {
    const bearer = { authorization: `Bearer ${READER}` };
    const rebound = await withHost(ops.port, '/api/queues', `evil.example:${ops.port}`, bearer);
    assert.equal(rebound.status, 403);
    assert.equal((JSON.parse(rebound.body) as { error: { code: string } }).error.code, 'SG_ERR_BAD_HOST');
    assert.equal((await withHost(ops.port, '/health', 'evil.example')).status, 403);
    for (const host of [`127.0.0.1:${ops.port}`, `localhost:${ops.port}`, 'localhost', `[::1]:${ops.port}`]) {
      assert.equal((await withHost(ops.port, '/api/queues', host, bearer)).status, 200, host);
    }
  });

  it('the queue CLI lists queues, shows a message, holds and flushes through the API', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'sg-ops-')), 'c.yaml');
    writeFileSync(file, `ops: { listen: "127.0.0.1:${ops.port}", tokens: ["${TOKEN}"] }\nredis: { nodes: [${pool.map((r) => `"${r.url}"`).join(', ')}] }\n`);
    assert.equal((await cli(['queue', 'list', '--config', file])).status, 1, 'reads need a token too');
    const list = await cli(['queue', 'list', '--config', file], { STREAMGATE_OPS_TOKEN: READER });
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /^ops\.test\s+\d+\s+0\s+0\s+0\s+\d+s\s+gw-ops\s+whole/m);
    const show = await cli(['queue', 'show', 'ops.test', 'ops2', '--config', file], { STREAMGATE_OPS_TOKEN: READER });
    assert.equal(show.status, 0, show.stderr);
    assert.equal(JSON.parse(show.stdout).live.state, 'ready');
    const noToken = await cli(['queue', 'hold', 'ops.test', 'ops2', '--reason', 'x', '--config', file]);
    assert.equal(noToken.status, 1);
    assert.match(noToken.stderr, /SG_ERR_UNAUTHORIZED/);
    const hold = await cli(['queue', 'hold', 'ops.test', 'ops2', '--reason', 'look', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(hold.status, 0, hold.stderr);
    assert.equal(qm.depth('ops.test').held, 1);
    const noReason = await cli(['queue', 'release', 'ops.test', 'ops2', '--config', file]);
    assert.equal(noReason.status, 2);
    assert.equal(qm.depth('ops.test').held, 1);
    const q = qm.queues.get('ops.test')!;
    const [t] = await q.take(1);
    await q.defer(t!.id, Date.now() + 3_600_000, { reply: '451 later' });
    const flush = await cli(['queue', 'flush', 'ops.test', '--config', file, '--token', TOKEN]);
    assert.equal(flush.status, 0, flush.stderr);
    assert.match(flush.stdout, /1 deferred messages due now/);
    assert.equal(q.readyCount >= 1, true);
    const down = await cli(['queue', 'list', '--config', file.replace('c.yaml', 'd.yaml')]);
    assert.equal(down.status, 2);
  });
});

describe('ops API: suspend and resume a destination', () => {
  it('takes nothing from a suspended queue until it is resumed', async () => {
    const pool = await startRedisPool(2);
    const sink = await startSmtpSink({ hideStartTls: true });
    const config = testConfig({
      redis: { nodes: pool.map((r) => r.url) },
      ops: { listen: '127.0.0.1:0', tokens: [TOKEN] },
      routes: { 'held-back.test': `smtp://127.0.0.1:${sink.port}`, 'flowing.test': `smtp://127.0.0.1:${sink.port}` },
    });
    const qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-suspend' });
    await qm.start();
    const relay = new Relay(qm, config, silentLogger);
    relay.start();
    const ops = await startOps({ config, queues: qm, relay, log: silentLogger });
    const post = (path: string, body: unknown) =>
      fetch(`http://127.0.0.1:${ops.port}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` }, body: JSON.stringify(body) });
    try {
      assert.equal((await post('/api/queues/held-back.test/suspend', { reason: 'their MX is migrating', actor: 'anne' })).status, 200);
      const listed = (await (await fetch(`http://127.0.0.1:${ops.port}/api/suspended`, auth())).json()) as { suspended: { domain: string; actor: string }[] };
      assert.deepEqual(listed.suspended.map((s) => [s.domain, s.actor]), [['held-back.test', 'anne']]);
      const raw = Buffer.from('Subject: s\r\n\r\nx\r\n');
      for (let i = 0; i < 3; i++) await qm.append({ id: `h${i}`, domain: 'held-back.test', envelope: { from: 'a@src.test', to: [`r${i}@held-back.test`] }, raw });
      await qm.append({ id: 'f0', domain: 'flowing.test', envelope: { from: 'a@src.test', to: ['r@flowing.test'] }, raw });
      await waitFor(() => sink.messages.length === 1, { what: 'the other destination delivered' });
      assert.deepEqual(sink.messages.map((m) => m.to[0]), ['r@flowing.test']);
      assert.equal(qm.depth('held-back.test').ready, 3, 'nothing taken while suspended');
      const notSuspended = await post('/api/queues/flowing.test/resume', { reason: 'x' });
      assert.equal(notSuspended.status, 409);
      assert.equal((await post('/api/queues/held-back.test/resume', { reason: 'done' })).status, 200);
      await waitFor(() => sink.messages.length === 4, { what: 'delivered after resume' });
      await waitFor(() => qm.depth('held-back.test').ready + qm.depth('held-back.test').inflight === 0, { what: 'settled' });
    } finally {
      await ops.stop();
      await relay.stop();
      await qm.stop();
      await sink.close();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });
});
