// Views are projections, written back: `streamgate queue rebuild-state DOMAIN` rewrites a queue's
// state hash and counters on both replicas from its events alone (the event log in Cassandra and
// the history still in Redis), through the owning gateway with the queue's writes held. A queue of
// 10,000 messages in every state loses its state hashes and counters; the rebuilt ones equal the
// ones before, field for field, and --check then finds no difference. A rebuild cut off half-way
// leaves what a second run repairs, even with appends going on meanwhile.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { rebuildCheck, rebuildState } from '../../src/events/projection.ts';
import { silentLogger } from '../../src/log.ts';
import { startOps } from '../../src/ops/http.ts';
import { runCli } from '../helpers/cli.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { EventPath, startEventLogServers, type EventLogServers } from '../helpers/eventPath.ts';
import type { TestRedis } from '../helpers/redis.ts';

const TOKEN = 'rebuild-test-token-0123456789';
const N = 10_000;
/** The meta hash fields the state rebuild writes (txn, epoch, members, lastEntry, lastHist are the replicas' records, not state). */
const COUNTERS = ['ready', 'deferred', 'held', 'inflight', 'bytes', 'oldest', 'appended', 'delivered', 'bounced', 'expired', 'purged', 'withdrawn'];

interface Snapshot {
  state: Record<string, unknown>;
  counters: Record<string, string>;
}

describe('queue rebuild-state: the state written back from the events', () => {
  let servers: EventLogServers;
  let pool: TestRedis[];
  let path: EventPath;
  let ops: { port: number; stop(): Promise<void> };
  let file: string;
  const domain = 'rebuilt.test';

  before(async () => {
    servers = await startEventLogServers('rebuild');
    pool = servers.pool;
    const config = servers.config();
    path = new EventPath(config, servers.events, 'rebuild-events', { gatewayId: 'gw-rebuild' });
    await path.start();
    ops = await startOps({
      config: { ...config, ops: { ...config.ops, listen: { host: '127.0.0.1', port: 0 }, tokens: [{ token: TOKEN, role: 'admin', name: 'ops-alice' }] } },
      queues: path.qm,
      log: silentLogger,
      rebuildCheck: (d) => rebuildCheck(path.qm, path.archive, d),
      rebuildState: (d, who) => rebuildState(path.qm, path.archive, d, who),
    });
    file = join(mkdtempSync(join(tmpdir(), 'sg-rebuild-')), 'c.yaml');
    writeFileSync(file, `ops: { listen: "127.0.0.1:${ops.port}", tokens: ["${TOKEN}"] }\n`);
  });
  after(async () => {
    await ops?.stop();
    await path?.stop();
    await servers?.stop();
  });

  const keys = () => path.qm.queues.get(domain)!.keys;
  const snapshot = async (): Promise<Snapshot[]> =>
    Promise.all(
      pool.map(async (r) => {
        const c = r.client();
        const raw = await c.hgetall(keys()[3]);
        const state = Object.fromEntries(Object.entries(raw).map(([id, json]) => [id, JSON.parse(json) as unknown]));
        const meta = await c.hgetall(keys()[2]);
        // a counter never written reads as 0, as the scripts read it
        const counters = Object.fromEntries(COUNTERS.map((k) => [k, meta[k] ?? (k === 'oldest' ? '' : '0')]));
        return { state, counters };
      }),
    );
  const wipe = async () => {
    for (const r of pool) {
      const c = r.client();
      await c.del(keys()[3]);
      await c.hdel(keys()[2], ...COUNTERS);
    }
  };

  it(`rebuilds the state hashes and counters of a queue of ${N.toLocaleString('en')} messages in every state, field for field, on both replicas; --check then finds no difference`, async () => {
    const qm = path.qm;
    const now = Date.now();
    const id = (i: number) => `m${i}`;
    const range = (a: number, b: number) => Array.from({ length: b - a }, (_, k) => id(a + k));
    const raw = (i: number) => Buffer.from(`Subject: m${i}\r\n\r\n${'x'.repeat(100 + (i % 900))}\r\n`);
    for (let i = 0; i < N; i += 500) {
      await Promise.all(
        Array.from({ length: 500 }, (_, k) => i + k).map((j) =>
          // the first 300 are accepted with a later first attempt (a producer's delay)
          qm.append({ id: id(j), domain, envelope: { from: 's@src.test', to: [`a${j}@${domain}`, `b${j}@${domain}`] }, raw: raw(j), ...(j < 300 ? { notBefore: now + 3_600_000 + j } : {}) }),
        ),
      );
    }
    const q = qm.queues.get(domain)!;
    const take = async (ids: string[]) => {
      const want = new Set(ids);
      for (let got = 0; got < ids.length; ) {
        const n = (await q.take(500, (m) => want.has(m.id))).length;
        assert.ok(n > 0, `took ${got} of ${ids.length}`);
        got += n;
      }
    };
    const each = async (ids: string[], fn: (id: string, k: number) => Promise<unknown>) => {
      for (let i = 0; i < ids.length; i += 250) await Promise.all(ids.slice(i, i + 250).map((x, k) => fn(x, i + k)));
    };
    await take(range(300, 7000)); // in flight
    // deferred twice (attempts 2), some with only one recipient left; deferred once
    await each(range(300, 1300), (x, k) => qm.defer(domain, x, now - 1000, { reply: '451 first', nextAt: now - 1000 }, k % 2 ? [`a${x.slice(1)}@${domain}`] : undefined));
    await take(range(300, 1300));
    await each(range(300, 1300), (x, k) => qm.defer(domain, x, now + 600_000 + k, { reply: '451 again', nextAt: now + 600_000 + k }));
    await each(range(1300, 2300), (x, k) => qm.defer(domain, x, now + 900_000 + k, { reply: '451 later', nextAt: now + 900_000 + k }, k % 3 ? undefined : [`b${x.slice(1)}@${domain}`]));
    await each(range(2300, 2800), (x) => qm.requeue(domain, x, { reason: 'shutdown' }));
    await each(range(2800, 3800), (x) => qm.settle(domain, x, 'delivered', { reply: '250 ok' }));
    await each(range(3800, 4300), (x) => qm.settle(domain, x, 'bounced', { reply: '550 no' }));
    await each(range(4300, 4500), (x) => qm.settle(domain, x, 'expired', { reply: '451 still' }));
    // m4500..m6999 stay in flight
    await each(range(7000, 7500), (x) => qm.hold(domain, x, 'op', 'look'));
    await each(range(1300, 1400), (x) => qm.hold(domain, x, 'op', 'deferred, held'));
    await each(range(7000, 7100), (x) => qm.release(domain, x, 'op', 'fine'));
    await each(range(7500, 8000), (x) => qm.purge(domain, x, 'op', 'spam'));
    await path.archive.drain();
    await path.history.cap(domain);
    assert.ok((await pool[0]!.client().xlen(keys()[1])) <= 2000, 'most of the history is only in the event log');

    const before = await snapshot();
    assert.deepEqual(before[1], before[0], 'the replicas agree');
    const states = Object.values(before[0]!.state) as { s: string; a: number; r?: string[] }[];
    const count = (s: string) => states.filter((x) => x.s === s).length;
    assert.equal(states.length, N - 2200);
    assert.deepEqual([count('r'), count('d'), count('h'), count('f')], [2600, 2200, 500, 2500]);
    assert.ok(states.some((x) => x.a === 2) && states.some((x) => x.r?.length === 1), 'attempts and remaining recipients are there to rebuild');
    assert.equal(before[0]!.counters.delivered, '1000');

    await wipe();
    const lost = await runCli(['queue', 'rebuild-state', domain, '--check', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(lost.status, 1, 'the wiped state differs');

    const rebuilt = await runCli(['queue', 'rebuild-state', domain, '--reason', 'state hash lost', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(rebuilt.status, 0, rebuilt.stdout + rebuilt.stderr);
    assert.match(rebuilt.stdout, new RegExp(`^${domain.replace('.', '\\.')}: state rebuilt from \\d+ events: ${N - 2200} messages \\(2600 ready, 2200 deferred, 500 held, 2500 in flight\\)$`, 'm'));
    const after = await snapshot();
    assert.deepEqual(after[0], before[0], 'replica 1: the rebuilt state equals the state before the wipe, field for field');
    assert.deepEqual(after[1], before[1], 'replica 2 likewise');

    const check = await runCli(['queue', 'rebuild-state', domain, '--check', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    assert.match(check.stdout, /^-- identical$/m);
    // the rebuild is an operator's action in the history, with the token's name and the reason
    const story = await qm.history(domain, undefined, 5);
    const ev = story.findLast((e) => e.kind === 'rebuilt')!;
    assert.ok(ev, 'a rebuilt event');
    assert.equal((ev.details as { token: string }).token, 'ops-alice');
    assert.equal((ev.details as { reason: string }).reason, 'state hash lost');
    // and the queue goes on from the rebuilt state: a ready message is taken and delivered
    await take(['m9999']);
    await qm.settle(domain, 'm9999', 'delivered', { reply: '250 ok' });
    assert.equal(Number(await pool[1]!.client().hget(keys()[2], 'delivered')), 1001);
  });

  it('a rebuild cut off half-way leaves what a second run repairs, appends going on meanwhile; bad input changes nothing', async () => {
    const qm = path.qm;
    const before = await snapshot();
    await wipe();
    let blocks = 0;
    await assert.rejects(
      rebuildState(qm, path.archive, domain, { actor: 'op', reason: 'first try' }, {
        onBlock: () => {
          if (++blocks === 3) throw new Error('cut off');
        },
      }),
      /cut off/,
    );
    const partial = await snapshot();
    assert.ok(Object.keys(partial[0]!.state).length > 0 && Object.keys(partial[0]!.state).length < Object.keys(before[0]!.state).length, 'a partial state was left');
    assert.ok(await pool[0]!.client().hget(keys()[2], 'rebuilding'), 'marked unfinished');
    // meanwhile the gateway dispatches only what has a state record: nothing it could not settle
    assert.equal(qm.queues.get(domain)!.msgs.size, Object.keys(partial[0]!.state).length, 'the projection reloaded from the partial state');
    // appends while the second run goes on: they wait for the rebuild's last pass, then land on the rebuilt state
    const appends = Promise.all(Array.from({ length: 200 }, (_, i) => qm.append({ id: `late${i}`, domain, envelope: { from: 's@src.test', to: [`l${i}@${domain}`] }, raw: Buffer.from('Subject: l\r\n\r\nl\r\n') })));
    const second = await runCli(['queue', 'rebuild-state', domain, '--reason', 'again', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    await appends;
    assert.equal(second.status, 0, second.stdout + second.stderr);
    assert.equal(await pool[0]!.client().hget(keys()[2], 'rebuilding'), null);
    // a message in flight whose state record the cut-off run had not written yet went back to
    // ready with the second run, as after a crash (at least once: it may go out again)
    const requeued = new Set(Object.entries(before[0]!.state).filter(([id, st]) => (st as { s: string }).s === 'f' && !partial[0]!.state[id]).map(([id]) => id));
    assert.ok(requeued.size > 0);
    // (the requeues are written once the rebuild lets the queue's writes go)
    await waitFor(async () => (await snapshot()).every((snap) => [...requeued].every((id) => (snap.state[id] as { s: string } | undefined)?.s === 'r')), { timeout: 90_000, what: 'requeued' });
    const after = await snapshot();
    for (const [i, snap] of after.entries()) {
      const old = Object.fromEntries(Object.entries(snap.state).filter(([id]) => !id.startsWith('late')));
      const expected = Object.fromEntries(Object.entries(before[i]!.state).map(([id, st]) => [id, requeued.has(id) ? { ...(st as object), s: 'r', n: 0 } : st]));
      assert.deepEqual(old, expected, `replica ${i + 1}: every message as before, those requeued ready`);
      assert.equal(Object.keys(snap.state).length - Object.keys(old).length, 200, 'and the appends');
    }
    await path.archive.drain();
    const check = await runCli(['queue', 'rebuild-state', domain, '--check', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    // bad input: a precise error, nothing written
    const txn = await pool[0]!.client().hget(keys()[2], 'txn');
    const noReason = await runCli(['queue', 'rebuild-state', domain, '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(noReason.status, 2);
    assert.match(noReason.stderr, /rebuild-state: --reason TEXT is needed to write the state \(or --check to compare only\)/);
    const unknown = await runCli(['queue', 'rebuild-state', 'nowhere.test', '--reason', 'x', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /SG_ERR_NOT_FOUND: no queue for nowhere\.test/);
    assert.equal(await pool[0]!.client().hget(keys()[2], 'txn'), txn, 'nothing written');
  });
  it('events archived and trimmed from Redis while the rebuild reads the log are folded from the log, not skipped', async () => {
    const qm = path.qm;
    let expected: Snapshot[] = [];
    let trimmed = 0;
    await rebuildState(qm, path.archive, domain, { actor: 'op', reason: 'under traffic' }, {
      afterLog: async () => {
        // after the log was read: traffic, archived, and Redis's history cut to historyMaxLength
        const hist = await pool[0]!.client().xlen(keys()[1]);
        await path.traffic(domain, 1500, 'during');
        await Promise.all(Array.from({ length: 50 }, (_, i) => qm.append({ id: `stay${i}`, domain, envelope: { from: 's@src.test', to: [`s${i}@${domain}`] }, raw: Buffer.from('Subject: s\r\n\r\ns\r\n') })));
        await path.archive.drain();
        await path.history.cap(domain);
        trimmed = hist + 1500 * 3 + 50 - (await pool[0]!.client().xlen(keys()[1]));
        expected = await snapshot();
      },
    });
    assert.ok(trimmed > 1000, `${trimmed} events of the traffic trimmed from Redis before the rebuild read it`);
    const after = await snapshot();
    assert.deepEqual(after[0]!.counters, expected[0]!.counters, 'appended and delivered count every event of the traffic');
    assert.deepEqual(after, expected);
  });
});
