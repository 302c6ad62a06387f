// Every operator action is an event in the queue's history, with the actor (the person the caller
// names, else the ops token's name), the token's name, the reason, and the state before and after:
// hold, release, purge, flush, suspend, resume.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { startOps } from '../../src/ops/http.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { Relay } from '../../src/relay/relay.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';

const TOKEN = 'actions-admin-token-0123456789';
const D = 'actions.test';

describe('operator actions as events', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  let ops: { port: number; stop(): Promise<void> };
  before(async () => {
    pool = await startRedisPool(2);
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) }, ops: { listen: '127.0.0.1:0', tokens: [{ token: TOKEN, role: 'admin', name: 'night-shift' }] } });
    qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-actions' });
    await qm.start();
    ops = await startOps({ config, queues: qm, relay: new Relay(qm, config, silentLogger), log: silentLogger });
    for (let i = 0; i < 3; i++) await qm.append({ id: `a${i}`, domain: D, envelope: { from: 's@src.test', to: [`r@${D}`] }, raw: Buffer.from('Subject: x\r\n\r\nhi\r\n') });
    const [taken] = await qm.take(D, 1);
    await qm.defer(D, taken!.id, Date.now() + 3_600_000, { reply: '451 later' });
  });
  after(async () => {
    await ops?.stop();
    await qm?.stop();
    await Promise.all((pool ?? []).map((r) => r.stop()));
  });

  const post = async (path: string, body?: unknown) => {
    const res = await fetch(`http://127.0.0.1:${ops.port}${path}`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
    assert.equal(res.status, 200, await res.clone().text());
    return res.json();
  };

  it('records hold, release, purge, flush, suspend and resume with actor, token, reason, before and after', async () => {
    await post(`/api/queues/${D}/messages/a1/hold`, { reason: 'customer asked', actor: 'alice' });
    await post(`/api/queues/${D}/messages/a1/release`, { reason: 'cleared' });
    await post(`/api/queues/${D}/messages/a2/purge`, { reason: 'spam', actor: 'bob' });
    assert.deepEqual(await post(`/api/queues/${D}/flush`), { ok: true, verb: 'flush', flushed: 1 });
    await post(`/api/queues/${D}/suspend`, { reason: 'their MX is down' });
    await post(`/api/queues/${D}/resume`, { reason: 'back' });
    const events = await qm.history(D);
    const pick = (kind: string, messageId: string) => {
      const ev = events.find((e) => e.kind === kind && e.messageId === messageId);
      assert.ok(ev, `${kind} of ${messageId || 'the queue'}`);
      return ev.details as Record<string, unknown>;
    };
    assert.deepEqual(pick('held', 'a1'), { actor: 'alice', token: 'night-shift', reason: 'customer asked', before: 'ready', after: 'held' });
    assert.deepEqual(pick('released', 'a1'), { actor: 'night-shift', token: 'night-shift', reason: 'cleared', before: 'held', after: 'ready' });
    assert.deepEqual(pick('purged', 'a2'), { actor: 'bob', token: 'night-shift', reason: 'spam', before: 'ready', after: 'purged' });
    assert.deepEqual(pick('flushed', ''), { actor: 'night-shift', token: 'night-shift', reason: 'flush', flushed: 1, before: { ready: 1, deferred: 1 }, after: { ready: 2, deferred: 0 } });
    assert.deepEqual(pick('suspended', ''), { actor: 'night-shift', token: 'night-shift', reason: 'their MX is down', before: { suspended: false }, after: { suspended: true } });
    assert.deepEqual(pick('resumed', ''), { actor: 'night-shift', token: 'night-shift', reason: 'back', before: { suspended: true }, after: { suspended: false } });
    // the token itself is in none of them
    assert.doesNotMatch(JSON.stringify(events), new RegExp(TOKEN));
  });
});
