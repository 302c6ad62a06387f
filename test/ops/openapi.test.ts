// The ops API's OpenAPI document (/api/openapi.json, made by @fastify/swagger from the route
// schemas): it validates as OpenAPI, it names every route the server has, and every error code it
// documents for a route is one that route really answers with (each is produced here).
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import { randomBytes } from 'node:crypto';
import { PurgeVault } from '../../src/events/purgeVault.ts';
import { silentLogger } from '../../src/log.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import { startOps } from '../../src/ops/http.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { Relay } from '../../src/relay/relay.ts';
import { cassandraForTests } from '../helpers/cassandra.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

const ADMIN = 'admin-token-0123456789abcdef';
const READER = 'read-token-0123456789abcdef';
const D = 'oa.test';

interface Doc {
  openapi: string;
  paths: Record<string, Record<string, { security?: unknown[]; responses: Record<string, { content?: Record<string, { schema?: { properties?: { error?: { properties?: { code?: { enum?: string[] } } } } } }> }> }>>;
}

/** A request with the Host header and token of the test's choosing; fetch would set its own Host. */
function call(port: number, method: string, path: string, opts: { token?: string | null; host?: string; body?: unknown } = {}): Promise<{ status: number; body: string }> {
  const token = opts.token === undefined ? ADMIN : opts.token;
  const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
  const headers: Record<string, string> = { host: opts.host ?? '127.0.0.1' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (payload !== undefined) headers['content-type'] = 'application/json';
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

describe('ops API: the OpenAPI document', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  let withRelay: { port: number; stop(): Promise<void> };
  let noRelay: { port: number; stop(): Promise<void> };
  const routes: { method: string; url: string }[] = [];
  let doc: Doc;
  let store: MailStore;
  const keyspace = `sg_openapi_${randomBytes(3).toString('hex')}`;

  before(async () => {
    pool = await startRedisPool(2);
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) }, ops: { listen: '127.0.0.1:0', tokens: [ADMIN, { token: READER, role: 'read' }] } });
    qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-openapi' });
    await qm.start();
    store = new MailStore(testConfig({ cassandra: { contactPoints: [(await cassandraForTests()).contactPoint], keyspace } }), silentLogger);
    const vault = new PurgeVault(qm, store, config);
    withRelay = await startOps({ config, queues: qm, relay: new Relay(qm, config, silentLogger), log: silentLogger, onRoute: (r) => routes.push(r), vault, story: async (id) => (await qm.history(D, id)).map((e) => ({ ...e, queue: `gw-openapi:${D}`, domain: D, kind: e.kind as 'accepted', details: e.details as Record<string, unknown> })) });
    noRelay = await startOps({ config, queues: qm, log: silentLogger });
    for (let i = 0; i < 6; i++) await qm.append({ id: `oa${i}`, domain: D, envelope: { from: 'a@src.test', to: [`b${i}@${D}`] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') });
  });
  after(async () => {
    await withRelay?.stop();
    await noRelay?.stop();
    await qm?.stop();
    await store?.client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`).catch(() => {});
    await store?.close();
    await Promise.all((pool ?? []).map((r) => r.stop()));
  });

  it('is served at /api/openapi.json to a read token, and is a valid OpenAPI document', async () => {
    assert.equal((await call(withRelay.port, 'GET', '/api/openapi.json', { token: null })).status, 401);
    const res = await call(withRelay.port, 'GET', '/api/openapi.json', { token: READER });
    assert.equal(res.status, 200);
    doc = JSON.parse(res.body) as Doc;
    assert.match(doc.openapi, /^3\.1\./);
    const v = await new Validator().validate(doc as unknown as Parameters<Validator['validate']>[0]);
    assert.equal(v.valid, true, JSON.stringify(v.errors, null, 2));
  });

  it('names every route the server has, and nothing else', () => {
    const served = routes.filter((r) => r.method !== 'HEAD').map((r) => `${r.method} ${r.url.replace(/:(\w+)/g, '{$1}')}`).sort();
    const documented = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)).sort();
    assert.deepEqual(documented, served);
    assert.ok(served.length >= 15, served.join(', '));
    assert.deepEqual(doc.paths['/health']!.get!.security, [], '/health is open');
  });

  it('every documented error code of every route is answered by that route', async () => {
    const P = withRelay.port;
    const msg = (id: string, verb: string) => `/api/queues/${D}/messages/${id}/${verb}`;
    // `path` with {domain} and {id} filled in, and a request that gives each code there
    const bodyFor = (m: string, p: string) => (m !== 'POST' ? undefined : p.endsWith('/recover') ? { reason: 'r', from: qm.nodes[0]!.id } : p.endsWith('/drain') ? { reason: 'r', node: qm.nodes[0]!.id } : { reason: 'r' });
    const fill = (path: string) => path.replace('{domain}', D).replace('{id}', 'oa0');
    const produce: Record<string, (method: string, path: string) => Promise<{ status: number; body: string }>> = {
      SG_ERR_BAD_HOST: (m, p) => call(P, m, fill(p), { host: 'evil.example', body: bodyFor(m, p) }),
      SG_ERR_UNAUTHORIZED: (m, p) => call(P, m, fill(p), { token: null, body: bodyFor(m, p) }),
      SG_ERR_FORBIDDEN: (m, p) => call(P, m, fill(p), { token: READER, body: bodyFor(m, p) }),
      SG_ERR_BAD_REQUEST: (m, p) => call(P, m, p.includes('{domain}') ? p.replace('{domain}', 'bad_domain!').replace('{id}', 'oa0') : p.includes('{id}') ? p.replace('{id}', 'bad%20id!') : `${p}?at=soon`, { body: p.endsWith('/drain') ? { reason: 'r' } : bodyFor(m, p) }),
      SG_ERR_NOT_FOUND: (m, p) => call(P, m, p.replace('{domain}', 'nowhere.test').replace('{id}', 'none'), { body: bodyFor(m, p) }),
      SG_ERR_BAD_INPUT: (m, p) => call(P, m, fill(p), { body: p.endsWith('/drain') ? { reason: 'r', node: 'no-such-node' } : { reason: 'r', from: 'no-such-node' } }),
      SG_ERR_NO_RELAY: (m, p) => call(noRelay.port, m, fill(p), { body: { reason: 'r' } }),
      SG_ERR_NO_BUDGETS: (m, p) => call(noRelay.port, m, fill(p)), // an ops listener given no memory figures
      SG_ERR_NO_EVENT_LOG: (m, p) => call(noRelay.port, m, p === '/api/queues' ? `${p}?at=2026-11-29T10:00Z` : fill(p), { body: bodyFor(m, p) }), // an ops listener given no event log
      SG_ERR_WRONG_STATE: async (m, p) => {
        if (p.endsWith('/resume')) return call(P, m, fill(p), { body: { reason: 'not suspended' } });
        if (p.endsWith('/hold')) {
          await call(P, 'POST', msg('oa1', 'hold'), { body: { reason: 'first' } });
          return call(P, m, msg('oa1', 'hold'), { body: { reason: 'again' } });
        }
        return call(P, m, msg('oa2', 'release'), { body: { reason: 'never held' } });
      },
    };
    const unavailable: [string, string][] = [];
    let checked = 0;
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        for (const [status, response] of Object.entries(op.responses)) {
          if (Number(status) < 400) continue;
          const schema = response.content?.['application/json']?.schema;
          if (path === '/health' && status === '503') continue; // not an error body: { status: 'unavailable' }, below
          const codes = schema?.properties?.error?.properties?.code?.enum;
          assert.ok(codes?.length, `${method} ${path} ${status}: documents its codes`);
          for (const code of codes) {
            if (code === 'SG_ERR_QUEUE_UNAVAILABLE') {
              unavailable.push([method.toUpperCase(), path]);
              continue;
            }
            assert.ok(produce[code], `a way to produce ${code}`);
            const res = await produce[code](method.toUpperCase(), path);
            assert.equal(res.status, Number(status), `${method} ${path} ${code}: ${res.body}`);
            assert.equal((JSON.parse(res.body) as { error: { code: string } }).error.code, code, `${method} ${path}`);
            checked++;
          }
        }
      }
    }
    assert.ok(checked > 30, String(checked));

    // with both replicas gone (one alone still takes all but appends): 503 where documented
    assert.ok(unavailable.length >= 4, JSON.stringify(unavailable));
    const gone = qm.nodes[1]!.id;
    for (const r of pool) r.kill('SIGKILL');
    await waitFor(() => qm.nodes.every((n) => !n.up), { timeout: 30_000, what: 'both nodes down' });
    assert.equal((await call(P, 'GET', '/health', { token: null })).status, 503);
    for (const [method, path] of unavailable) {
      const body = path.endsWith('/recover') ? { reason: 'r', from: gone } : path.endsWith('/drain') ? { reason: 'r', node: gone } : { reason: 'r' };
      const target = path.endsWith('/recover') ? fill(path) : path.replace('{domain}', D).replace('{id}', 'oa3');
      const res = await call(P, method, target, { body });
      assert.equal(res.status, 503, `${method} ${path}: ${res.body}`);
      assert.equal((JSON.parse(res.body) as { error: { code: string } }).error.code, 'SG_ERR_QUEUE_UNAVAILABLE');
    }
  });
});
