// Draining a node of the pool (`streamgate node drain URL`): every queue with a replica on it is
// copied in blocks to another node while appends go on, switched between two writes, and its
// copy on the drained node deleted; nothing acknowledged is lost, and the node takes no new queue.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { startOps } from '../../src/ops/http.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { queueKeys } from '../../src/queue/records.ts';
import { runCli } from '../helpers/cli.ts';
import { testConfig } from '../helpers/config.ts';
import { assertQueueConsistent } from '../helpers/queueCheck.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';

const TOKEN = 'drain-token-0123456789abcdef';
const msg = (domain: string, id: string) => ({ id, domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw: Buffer.from(`Subject: ${id}\r\n\r\n${'x'.repeat(300)}\r\n`) });

describe('node drain', () => {
  let pool: TestRedis[];
  let dir: string;
  before(async () => {
    pool = await startRedisPool(4);
    dir = mkdtempSync(join(tmpdir(), 'sg-drain-'));
  });
  after(async () => {
    await Promise.all(pool.map((r) => r.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('moves every queue off the node while appends go on, loses nothing, and places no new queue there', async () => {
    const cfg = testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { heartbeat: { every: '100ms', missed: 3 }, blockSize: 50 }, ops: { listen: '127.0.0.1:0', tokens: [TOKEN] } });
    const domains = Array.from({ length: 12 }, (_, i) => `d${i}.drain.test`);
    let qm = new QueueManager(cfg, silentLogger, { gatewayId: 'gw-drain' });
    await qm.start();
    const ops = await startOps({ config: cfg, queues: qm, log: silentLogger });
    const acked = new Map<string, string>();
    try {
      let n = 0;
      for (const d of domains) for (let i = 0; i < 120; i++, n++) await qm.append(msg(d, `a${n}`)).then(() => acked.set(`a${n}`, d));
      // messages in every state: some deferred, some held, some in flight
      for (const d of domains) {
        const taken = await qm.take(d, 30);
        for (const t of taken.slice(0, 10)) await qm.defer(d, t.id, Date.now() + 3_600_000, { reply: '451 later' });
        for (const t of taken.slice(10, 20)) await qm.requeue(d, t.id);
        for (const t of taken.slice(10, 15)) await qm.hold(d, t.id, 'test', 'check');
      }
      // the node with the most replicas
      const count = (i: number) => [...qm.queues.values()].filter((q) => q.replicas.some((r) => r.node === qm.nodes[i])).length;
      const x = [0, 1, 2, 3].sort((a, b) => count(b) - count(a))[0]!;
      const xNode = qm.nodes[x]!;
      const before = count(x);
      assert.ok(before > 0, 'queues on the node to drain');
      // appends go on during the drain
      let appending = true;
      const appender = (async () => {
        let k = 0;
        while (appending) {
          const d = domains[k % domains.length]!;
          const id = `b${k++}`;
          await qm.append(msg(d, id)).then(
            () => acked.set(id, d),
            () => {},
          );
        }
      })();
      const file = join(dir, 'c.yaml');
      writeFileSync(file, `ops: { listen: "127.0.0.1:${ops.port}", tokens: ["${TOKEN}"] }\nredis: { nodes: [${pool.map((r) => `"${r.url}"`).join(', ')}] }\n`);
      const bad = await runCli(['node', 'drain', 'redis://127.0.0.1:1', '-r', 'test', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
      assert.equal(bad.status, 2, bad.stderr);
      assert.match(bad.stderr, /node: expected one of redis\.nodes .*got "redis:\/\/127\.0\.0\.1:1"/);
      const r = await runCli(['node', 'drain', pool[x]!.url, '-r', 'retiring the host', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
      appending = false;
      await appender;
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^drain: ${xNode.id.replace(/\./g, '\\.')}: ${before} queues of this gateway on it$`, 'm'));
      assert.match(r.stdout, /^drained: .*: no queue of this gateway on it$/m);
      assert.ok([...acked.keys()].some((id) => id.startsWith('b')), 'appends went on during the drain');
      // no queue left on the node, none of their keys there, every acknowledged message in its queue, the replicas identical
      const c = pool[x]!.client();
      for (const d of domains) {
        const q = qm.queues.get(d)!;
        assert.ok(!q.replicas.some((rep) => rep.node === xNode), `${d} is off the node`);
        assert.equal(q.replicas.length, 2);
        assert.equal(await c.exists(...queueKeys(q.name)), 0, `${d}: nothing left on the drained node`);
        await assertQueueConsistent(q);
      }
      for (const [id, d] of acked) assert.ok(qm.queues.get(d)!.msgs.has(id), `${id} in ${d}`);
      // no new queue goes there
      for (let i = 0; i < 20; i++) await qm.append(msg(`n${i}.drain.test`, `n${i}`));
      for (let i = 0; i < 20; i++) assert.ok(!qm.queues.get(`n${i}.drain.test`)!.replicas.some((rep) => rep.node === xNode), 'a new queue is placed on other nodes');
      c.disconnect();
    } finally {
      await ops.stop();
      await qm.stop();
    }
    // a restart finds every queue on its new pair, whole
    qm = new QueueManager(cfg, silentLogger, { gatewayId: 'gw-drain' });
    await qm.start();
    try {
      for (const [id, d] of acked) assert.ok(qm.queues.get(d)!.msgs.has(id), `${id} in ${d} after a restart`);
      for (const d of domains) assert.equal(qm.queues.get(d)!.whole, true);
    } finally {
      await qm.stop();
    }
  });
});
