import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
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
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) }, ops: { listen: '127.0.0.1:0', tokens: [TOKEN] } });
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
    const q = (await (await fetch(`${base}/api/queues/ops.test`)).json()) as { depth: { ready: number }; replicas: { sync: string; active: string }[]; status: string };
    assert.equal(q.depth.ready, 3);
    assert.equal(q.status, 'whole');
    assert.deepEqual(q.replicas.map((r) => [r.sync, r.active]), [['Sync', 'Run'], ['Sync', 'Run']]);
    const all = (await (await fetch(`${base}/api/queues`)).json()) as { totals: { ready: number; queues: number } };
    assert.equal(all.totals.ready, 3);
  });

  it('serves the live dashboard page', async () => {
    const res = await fetch(`${base}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/html/);
    const html = await res.text();
    assert.match(html, /fetch\('\/api\/queues'\)/);
    assert.match(html, /setInterval\(refresh, 1000\)/);
  });

  it('exposes queue depth as a Prometheus gauge', async () => {
    const text = await (await fetch(`${base}/metrics`)).text();
    assert.match(text, /streamgate_queue_depth\{queue="ops.test",state="ready"\} 3/);
    assert.match(text, /streamgate_queue_replica_in_sync\{queue="ops.test",node="127\.0\.0\.1:\d+"\} 1/);
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
    const missing = await post('/api/queues/ops.test/messages/nope/hold', { reason: 'x' }, TOKEN);
    assert.equal(missing.status, 404);
    assert.equal(qm.depth('ops.test').held, 0);

    const trace = (await (await fetch(`${base}/api/queues/ops.test/messages/ops0`)).json()) as { events: { kind: string; details: { actor?: string } }[] };
    assert.deepEqual(trace.events.map((e) => e.kind), ['accepted', 'held', 'released']);
    assert.equal(trace.events[1]!.details.actor, 'anne');
    const purged = (await (await fetch(`${base}/api/queues/ops.test/messages/ops1`)).json()) as { live: unknown; events: { kind: string }[] };
    assert.equal(purged.live, null);
    assert.deepEqual(purged.events.map((e) => e.kind), ['accepted', 'purged']);
  });

  it('the queue CLI lists queues, shows a message, holds and flushes through the API', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'sg-ops-')), 'c.yaml');
    writeFileSync(file, `ops: { listen: "127.0.0.1:${ops.port}", tokens: ["${TOKEN}"] }\nredis: { nodes: [${pool.map((r) => `"${r.url}"`).join(', ')}] }\n`);
    const list = await cli(['queue', 'list', '--config', file]);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /^ops\.test\s+\d+\s+0\s+0\s+0\s+\d+s\s+whole/m);
    const show = await cli(['queue', 'show', 'ops.test', 'ops2', '--config', file]);
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
      const listed = (await (await fetch(`http://127.0.0.1:${ops.port}/api/suspended`)).json()) as { suspended: { domain: string; actor: string }[] };
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
