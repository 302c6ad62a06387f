import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { startOps } from '../../src/ops/http.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';

const TOKEN = 'test-token-0123456789abcdef';

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
});
