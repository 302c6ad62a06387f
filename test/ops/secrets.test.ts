// Redis credentials stay in the configuration: a node's identity is host:port, so no password
// reaches ids, logs, placement records, /health, /metrics or the API, and a password change
// leaves every queue where it was.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger } from '../../src/log.ts';
import { startOps } from '../../src/ops/http.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool } from '../helpers/redis.ts';

const OLD = 's3cret-pass-old';
const NEW = 's3cret-pass-new';
const TOKEN = 'test-token-0123456789abcdef';

describe('redis credentials', () => {
  it('never appear outside the configuration, and a password change moves no queue', async () => {
    const pool = await startRedisPool(3, { password: OLD });
    let logged = '';
    const log = createLogger({ level: 'debug', pretty: 'never', destination: new Writable({ write: (c, _e, cb) => ((logged += String(c)), cb()) }) });
    const cfg = (password: string) =>
      testConfig({ redis: { nodes: pool.map((r) => `redis://default:${password}@127.0.0.1:${r.port}/0`) }, ops: { listen: '127.0.0.1:0', tokens: [TOKEN], open: ['health', 'metrics'] } });
    let qm = new QueueManager(cfg(OLD), log, { gatewayId: 'gw-secret' });
    let ops: { port: number; stop(): Promise<void> } | undefined;
    try {
      await qm.start();
      for (let i = 0; i < 3; i++) await qm.append({ id: `s${i}`, domain: 'secret.test', envelope: { from: 'a@src.test', to: ['b@secret.test'] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') });
      ops = await startOps({ config: cfg(OLD), queues: qm, log });
      const base = `http://127.0.0.1:${ops.port}`;
      const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
      const pages = await Promise.all(['/health', '/metrics', '/api/queues', '/api/queues/secret.test', '/api/queues/secret.test/messages/s0'].map(async (p) => (await fetch(base + p, auth)).text()));
      for (const n of qm.nodes) assert.match(n.id, /^127\.0\.0\.1:\d+$/);
      const placement = await pool[0]!.client().hgetall('sg:placement:{gw-secret}');
      for (const text of [...pages, logged, JSON.stringify(placement)]) {
        assert.equal(text.includes(OLD), false, `no password in: ${text.slice(0, 200)}`);
        assert.equal(text.includes('default:'), false);
      }
      assert.match(pages[2]!, /127\.0\.0\.1:\d+/, 'the API names the nodes by host:port');
      await ops.stop();
      ops = undefined;
      await qm.stop();

      // the password changes on every node and in the configuration: the queue is found where it was
      await Promise.all(pool.map((r) => r.client().call('CONFIG', 'SET', 'requirepass', NEW)));
      qm = new QueueManager(cfg(NEW), log, { gatewayId: 'gw-secret' });
      await qm.start();
      assert.equal(qm.depth('secret.test').ready, 3);
      assert.equal(qm.queues.get('secret.test')!.whole, true);
      assert.equal(logged.includes(NEW), false);
    } finally {
      await ops?.stop();
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });
});
