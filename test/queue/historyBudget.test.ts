// The history budget across queues: trimmed oldest-first on both replicas, never past the events
// cursor; a queue whose events were not sent keeps its history whole and the node says so, up to
// the ceiling past which mail would be refused: there unsent events go, counted as lost.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import type { LifecycleEvent } from '../../src/message/types.ts';
import { HistoryBudget } from '../../src/queue/historyBudget.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';

describe('history budget', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  before(async () => {
    pool = await startRedisPool(2, { maxmemory: '32mb' });
    qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { historyBudget: 0.01 } }), silentLogger, { gatewayId: 'gw-hist' });
    await qm.start();
  });
  after(async () => {
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('trims the oldest events across queues below the budget, on both replicas, never past the cursor', async () => {
    const last = new Map<string, string>();
    qm.on('event', (ev: LifecycleEvent) => last.set(ev.domain, ev.id.slice(ev.id.lastIndexOf('/') + 1)));
    const domains = Array.from({ length: 10 }, (_, i) => `h${i}.test`);
    for (let round = 0; round < 40; round++) {
      await Promise.all(domains.flatMap((d) => Array.from({ length: 10 }, (_, k) => qm.append({ id: `m-${round}-${k}-${d}`, domain: d, envelope: { from: 's@src.test', to: [`r@${d}`] }, raw: Buffer.from(`Subject: ${round}\r\n\r\nx\r\n`) }))));
    }
    const published = new Set(domains.slice(0, 5)); // the events of h5..h9 were never sent
    const cursors = new Map(domains.filter((d) => published.has(d)).map((d) => [d, last.get(d)!]));
    const budget = new HistoryBudget(qm, 0.01, (d) => cursors.get(d), silentLogger);
    const lenBefore = await Promise.all(domains.map((d) => pool[0]!.client().xlen(qm.queues.get(d)!.keys[1])));
    assert.ok(lenBefore.every((n) => n === 400));
    qm.tallyMemory();
    assert.ok(qm.nodes[0]!.historyBytes > 0.01 * 32 * 1024 * 1024, `history above its budget (${qm.nodes[0]!.historyBytes} bytes)`);
    const trimmed = await budget.tick();
    assert.ok(trimmed > 0, 'trimmed');
    assert.equal(budget.trimmed, trimmed);
    for (const [i, d] of domains.entries()) {
      const q = qm.queues.get(d)!;
      const [a, b] = await Promise.all(pool.map((r) => r.client().xrange(q.keys[1], '-', '+')));
      assert.deepEqual(a, b, `${d}: both replicas trimmed alike`);
      if (published.has(d)) assert.ok(a!.length < lenBefore[i]!, `${d} trimmed`);
      else assert.equal(a!.length, 400, `${d}: events not sent are kept`);
      assert.equal(q.histLen, a!.length);
    }
    // what is left over the budget is held by h5..h9: the node says so
    assert.equal(budget.status()[0]!.blocked, true);
    // once their events are sent, they give too
    for (const d of domains) cursors.set(d, last.get(d)!);
    await budget.tick();
    qm.tallyMemory();
    assert.ok(qm.nodes[0]!.historyBytes <= 0.01 * 32 * 1024 * 1024, `history within its budget (${qm.nodes[0]!.historyBytes} bytes)`);
    assert.equal(budget.status()[0]!.blocked, false);
    // appends go on after the trims (transaction numbers agree on both replicas)
    await qm.append({ id: 'after-trim', domain: 'h0.test', envelope: { from: 's@src.test', to: ['r@h0.test'] }, raw: Buffer.from('Subject: a\r\n\r\nx\r\n') });
  });

  it('trims unsent events too, counted as lost, once held history reaches its ceiling: events never turn mail away', async () => {
    const domains = Array.from({ length: 10 }, (_, i) => `held${i}.test`);
    for (let round = 0; round < 60; round++) {
      await Promise.all(domains.flatMap((d) => Array.from({ length: 10 }, (_, k) => qm.append({ id: `c-${round}-${k}-${d}`, domain: d, envelope: { from: 's@src.test', to: [`r@${d}`] }, raw: Buffer.from(`Subject: ${round}\r\n\r\nx\r\n`) }))));
    }
    const max = 32 * 1024 * 1024;
    // no events were ever sent (publishing stopped): without a ceiling the history would only grow
    const held = new HistoryBudget(qm, 0.01, () => undefined, silentLogger);
    qm.tallyMemory();
    assert.ok(qm.nodes[0]!.historyBytes > 0.015 * max, `history above the ceiling used below (${qm.nodes[0]!.historyBytes} bytes)`);
    assert.equal(await held.tick(), 0, 'without a ceiling nothing unsent is trimmed');
    assert.equal(held.status()[0]!.blocked, true);
    const budget = new HistoryBudget(qm, 0.01, () => undefined, silentLogger, { ceiling: 0.015 });
    const lenBefore = await Promise.all(domains.map((d) => pool[0]!.client().xlen(qm.queues.get(d)!.keys[1])));
    const trimmed = await budget.tick();
    assert.ok(trimmed > 0 && budget.lost === trimmed, `unsent events trimmed and counted as lost (${trimmed}, lost ${budget.lost})`);
    qm.tallyMemory();
    assert.ok(qm.nodes[0]!.historyBytes <= 0.01 * max, `history back within its budget (${qm.nodes[0]!.historyBytes} bytes)`);
    const lenAfter = await Promise.all(domains.map((d) => pool[0]!.client().xlen(qm.queues.get(d)!.keys[1])));
    assert.ok(lenAfter.some((n, i) => n < lenBefore[i]!), 'the held queues gave');
    for (const d of domains) {
      const q = qm.queues.get(d)!;
      const [a, b] = await Promise.all(pool.map((r) => r.client().xrange(q.keys[1], '-', '+')));
      assert.deepEqual(a, b, `${d}: both replicas trimmed alike`);
    }
    await qm.append({ id: 'after-lost', domain: 'held0.test', envelope: { from: 's@src.test', to: ['r@held0.test'] }, raw: Buffer.from('Subject: a\r\n\r\nx\r\n') });
  });
});
