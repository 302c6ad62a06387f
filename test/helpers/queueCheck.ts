// Checks a queue after a fault: every replica holds the same thing (live stream, state hash, meta
// hash, history), depth counters equal what the streams hold on each replica and in the
// projection, and no counter is negative.
import assert from 'node:assert/strict';
import type { Queue } from '../../src/queue/queue.ts';

async function snapshot(q: Queue, i: number) {
  const c = q.replicas[i]!.node.client;
  const [live, hist, meta, state] = q.keys;
  const [entries, history, metaHash, states, liveLen, stateLen] = await Promise.all([
    c.xrangeBuffer(live, '-', '+'),
    c.xrange(hist, '-', '+'),
    c.hgetall(meta),
    c.hgetall(state),
    c.xlen(live),
    c.hlen(state),
  ]);
  return { entries, history, metaHash, states, liveLen, stateLen };
}

export async function assertQueueConsistent(q: Queue): Promise<void> {
  assert.ok(q.whole, `queue ${q.name} is whole (${JSON.stringify(q.table())})`);
  const snaps = await Promise.all(q.replicas.map((_, i) => snapshot(q, i)));
  for (const s of snaps) {
    const m = s.metaHash;
    const counted = ['ready', 'deferred', 'held', 'inflight'].map((k) => Number(m[k] ?? 0));
    for (const n of counted) assert.ok(n >= 0, `no negative counter on a replica: ${JSON.stringify(m)}`);
    assert.equal(s.liveLen, s.stateLen, 'live stream and state hash hold the same messages');
    assert.equal(counted.reduce((a, b) => a + b, 0), s.liveLen, `meta counters ${JSON.stringify(m)} equal the live stream (${s.liveLen})`);
  }
  const [a, ...rest] = snaps;
  for (const b of rest) {
    assert.deepEqual(b.metaHash, a!.metaHash, 'meta hashes identical');
    assert.deepEqual(b.states, a!.states, 'state hashes identical');
    assert.deepEqual(b.entries, a!.entries, 'live streams identical');
    assert.deepEqual(b.history, a!.history, 'histories identical');
  }
  const d = q.depth;
  for (const k of ['ready', 'deferred', 'held', 'inflight'] as const) assert.ok(d[k] >= 0, `projection ${k} ${d[k]} is not negative`);
  assert.equal(d.ready + d.deferred + d.held + d.inflight, a!.liveLen, `projection depth ${JSON.stringify(d)} equals the live stream (${a!.liveLen})`);
  assert.equal(q.msgs.size, a!.liveLen);
  for (const k of ['ready', 'deferred', 'held', 'inflight'] as const) assert.equal(d[k], Number(a!.metaHash[k] ?? 0), `projection ${k} equals the replicas' counter`);
}
