// A queue closed because no replica can be proven current, seen and opened by an operator through
// the queue CLI and the ops API.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { startOps } from '../../src/ops/http.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { runCli } from '../helpers/cli.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

const TOKEN = 'test-token-0123456789abcdef';

describe('queue recover', () => {
  it('shows why a queue is closed and opens it from the node an operator names, audited', async () => {
    const pool = await startRedisPool(3);
    const config = testConfig({
      redis: { nodes: pool.map((r) => r.url) },
      ops: { listen: '127.0.0.1:0', tokens: [TOKEN] },
      queue: { timeout: '300ms', heartbeat: { every: '100ms', missed: 3 }, rebuildAfter: '500ms' },
    });
    const domain = 'closed.test';
    let qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-rec' });
    await qm.start();
    for (let i = 0; i < 3; i++) await qm.append({ id: `m${i}`, domain, envelope: { from: 'a@src.test', to: [`b@${domain}`] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') });
    const q0 = qm.queues.get(domain)!;
    const [A, B] = [0, 1].map((i) => pool.find((r) => q0.replicas[i]!.node.id === `127.0.0.1:${r.port}`)!);
    await qm.stop();
    await A!.restart(); // empty
    B!.kill('SIGSTOP');
    qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-rec' });
    let ops: { port: number; stop(): Promise<void> } | undefined;
    try {
      await qm.start();
      ops = await startOps({ config, queues: qm, log: silentLogger });
      const file = join(mkdtempSync(join(tmpdir(), 'sg-rec-')), 'c.yaml');
      writeFileSync(file, `ops: { listen: "127.0.0.1:${ops.port}", tokens: ["${TOKEN}"] }\nredis: { nodes: [${pool.map((r) => `"${r.url}"`).join(', ')}] }\n`);
      const list = await runCli(['queue', 'list', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
      assert.equal(list.status, 0, list.stderr);
      assert.match(list.stdout, /^closed\.test\s.*unavailable/m);
      assert.match(list.stdout, /closed: no replica with a record answers \(unreachable: 127\.0\.0\.1:\d+; empty: 127\.0\.0\.1:\d+\).*queue recover closed\.test --from NODE/);

      const gws = await runCli(['gateways', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
      assert.equal(gws.status, 0, gws.stderr);
      assert.match(gws.stdout, /^gw-rec\*\s+live\s+\d+\.\ds\s+\d+\s+1\s+0 /m, `this gateway: live, its one queue, no message:\n${gws.stdout}`);

      const wrong = await runCli(['queue', 'recover', domain, '--from', '127.0.0.1:1', '--reason', 'x', '--config', file, '--token', TOKEN]);
      assert.equal(wrong.status, 2, 'a node the queue has no replica on is a usage error');
      assert.match(wrong.stderr, /SG_ERR_BAD_INPUT: queue closed\.test has no replica on 127\.0\.0\.1:1/);
      const noToken = await runCli(['queue', 'recover', domain, '--from', `127.0.0.1:${A!.port}`, '--reason', 'x', '--config', file]);
      assert.equal(noToken.status, 1);
      assert.equal(qm.queues.get(domain)!.status, 'unavailable', 'nothing changed without a token');

      const ok = await runCli(['queue', 'recover', domain, '--from', `127.0.0.1:${A!.port}`, '--reason', 'B is lost', '--actor', 'alice', '--config', file, '--token', TOKEN]);
      assert.equal(ok.status, 0, ok.stderr);
      assert.match(ok.stdout, /recover: closed\.test from 127\.0\.0\.1:\d+: 0 messages/);
      const q = qm.queues.get(domain)!;
      await waitFor(() => q.whole, { what: 'rebuilt on the spare', timeout: 15_000 });
      const events = await qm.history(domain);
      const rec = events.find((e) => e.kind === 'recovered')!;
      assert.deepEqual({ actor: (rec.details as { actor: string }).actor, reason: (rec.details as { reason: string }).reason }, { actor: 'alice', reason: 'B is lost' });
      const api = (await (await fetch(`http://127.0.0.1:${ops.port}/api/queues/${domain}`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { status: string; closed?: string };
      assert.equal(api.status, 'whole');
      assert.equal(api.closed, undefined);
    } finally {
      B!.kill('SIGCONT');
      await ops?.stop();
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });
});
