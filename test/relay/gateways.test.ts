// The relay across gateway processes: real redis-server nodes, a real SMTP sink, gateway processes
// (test/helpers/relayProcess.ts) that share one destination's limits through Redis, and a
// gateway killed with SIGKILL in the middle of delivering.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { decodeState } from '../../src/queue/records.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtpSink.ts';
import { waitFor } from '../helpers/waitFor.ts';

const FIXTURE = join(import.meta.dirname, '..', 'helpers', 'relayProcess.ts');
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

async function gateway(config: Record<string, unknown>, env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(process.execPath, [FIXTURE], { env: { ...process.env, SG_TEST_CONFIG: JSON.stringify(config), ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('ready\n')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`gateway exited with ${code} before it was ready`)));
  });
  return child;
}

const stopChild = async (c: ChildProcess, signal: NodeJS.Signals = 'SIGTERM') => {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const gone = new Promise((r) => c.once('exit', r));
  c.kill(signal);
  await gone;
};

const testId = (raw: Buffer) => /X-Test-Id: (\S+)/.exec(raw.toString())?.[1] ?? '?';

describe('relay across gateway processes', () => {
  let pool: TestRedis[];
  const sinks: SmtpSink[] = [];
  before(async () => {
    pool = await startRedisPool(2);
  });
  after(async () => {
    for (const c of children) await stopChild(c, 'SIGKILL');
    await Promise.all(sinks.map((s) => s.close()));
    await Promise.all(pool.map((r) => r.stop()));
  });

  /** A gateway's configuration: `domain` routed to the sink with these limits. */
  const relayConfig = (id: string, domain: string, sink: SmtpSink, limits: Record<string, unknown>, relay: Record<string, unknown> = {}) => ({
    gateway: { id },
    redis: { nodes: pool.map((r) => r.url) },
    routes: { [domain]: `smtp://127.0.0.1:${sink.port}` },
    relay: { limits: { destinations: { [domain]: limits } }, ...relay },
  });

  it('two gateways sending to one destination share its rate limit and its connection limit', async () => {
    const sink = await startSmtpSink({ hideStartTls: true });
    sinks.push(sink);
    const RATE = 50;
    const config = (id: string) => relayConfig(id, 'rate.test', sink, { connections: 2, ratePerSecond: RATE, messagesPerConnection: 40 }, { connectionLease: '5s' });
    const [a, b] = await Promise.all([
      gateway(config('gw-rate-a'), { SG_APPEND: '160', SG_DOMAIN: 'rate.test', SG_PREFIX: 'A' }),
      gateway(config('gw-rate-b'), { SG_APPEND: '160', SG_DOMAIN: 'rate.test', SG_PREFIX: 'B' }),
    ]);
    try {
      await waitFor(() => sink.messages.length >= 320, { timeout: 30_000, what: '320 messages at the sink' });
      const ids = sink.messages.map((m) => testId(m.raw));
      assert.equal(new Set(ids).size, 320, 'each message once');
      assert.ok(sink.maxConcurrent <= 2, `at most 2 connections at once, saw ${sink.maxConcurrent}`);
      const secs = [...sink.perSecond().entries()].sort((x, y) => x[0] - y[0]);
      const full = secs.slice(1, -1); // the first and last seconds are partial
      assert.ok(full.length >= 4, `at least 4 full seconds, got ${full.length}`);
      const all = secs.map((x) => x[1]).join(' ');
      // Never above the shared budget in any second (two separate budgets would give 2 × RATE)...
      for (const [s, n] of full) assert.ok(n <= RATE * 1.1, `second ${s}: ${n} messages, limit ${RATE}/s (+10%); all: ${all}`);
      // ...and the budget is used: the typical second is within 10% of it (a second or two may
      // fall short when the shared machine starves the processes).
      const median = full.map((x) => x[1]).sort((x, y) => x - y)[Math.floor(full.length / 2)]!;
      assert.ok(median >= RATE * 0.9, `median second ${median} messages, limit ${RATE}/s (-10%); all: ${all}`);
      const first = sink.messages[0]!.at;
      const last = sink.messages.at(-1)!.at;
      const overall = ((320 - 1) * 1000) / (last - first);
      assert.ok(overall <= RATE * 1.1, `overall ${overall.toFixed(1)}/s`);
    } finally {
      await Promise.all([stopChild(a), stopChild(b)]);
    }
  });

  it('a gateway that holds every connection of a destination gives up its excess when a second gateway has mail for it', async () => {
    // Gateway A starts alone with a long backlog and takes all 4 connections, each kept for up to
    // 10,000 messages (it never closes one on its own). B then gets 20 messages for the same
    // destination: they must go out over B's share of the connections while A still has most of
    // its backlog, not after A has emptied its queue and its connections have gone idle.
    const sink = await startSmtpSink({ hideStartTls: true, dataDelayMs: 10 });
    sinks.push(sink);
    const A = 3000;
    const config = (id: string) => relayConfig(id, 'fair.test', sink, { connections: 4, messagesPerConnection: 10_000 });
    const a = await gateway(config('gw-fair-a'), { SG_APPEND: String(A), SG_DOMAIN: 'fair.test', SG_PREFIX: 'A' });
    let b: ChildProcess | undefined;
    try {
      await waitFor(() => sink.maxConcurrent >= 4 && sink.messages.length >= 20, { timeout: 30_000, what: 'A delivering over all 4 connections' });
      b = await gateway(config('gw-fair-b'), { SG_APPEND: '20', SG_DOMAIN: 'fair.test', SG_PREFIX: 'B' });
      await waitFor(() => sink.messages.filter((m) => testId(m.raw).startsWith('B')).length >= 20, { timeout: 60_000, what: "B's 20 messages at the sink" });
      const fromA = sink.messages.filter((m) => testId(m.raw).startsWith('A')).length;
      assert.ok(fromA < A * 0.8, `B's messages went out while A still had a backlog: A had delivered ${fromA} of ${A}`);
      assert.ok(sink.maxConcurrent <= 4, `at most 4 connections at once, saw ${sink.maxConcurrent}`);
      await waitFor(() => sink.messages.length >= A + 20, { timeout: 60_000, what: 'every message at the sink' });
      assert.equal(new Set(sink.messages.map((m) => testId(m.raw))).size, A + 20, 'each message once');
      assert.ok(sink.maxConcurrent <= 4, `at most 4 connections at once, saw ${sink.maxConcurrent}`);
    } finally {
      await Promise.all([stopChild(a), ...(b ? [stopChild(b)] : [])]);
    }
  });

  it('after SIGKILL during delivery and a restart, every message is delivered; duplicates only among those in flight', async () => {
    const sink = await startSmtpSink({ hideStartTls: true, dataDelayMs: 15 });
    sinks.push(sink);
    const N = 200;
    const config = {
      gateway: { id: 'gw-kill' },
      redis: { nodes: pool.map((r) => r.url) },
      routes: { 'kill.test': `smtp://127.0.0.1:${sink.port}` },
      relay: { limits: { destinations: { 'kill.test': { connections: 4 } } }, connectionLease: '1s' },
    };
    const first = await gateway(config, { SG_APPEND: String(N), SG_DOMAIN: 'kill.test', SG_PREFIX: 'K' });
    await waitFor(() => sink.messages.length >= 40, { timeout: 20_000, what: '40 delivered before the kill' });
    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    const atKill = sink.messages.length;
    assert.ok(atKill < N, 'killed in the middle');
    // What the replicas say was in flight at the kill.
    const c = pool[0]!.client();
    const [rA, rB] = await Promise.all(pool.map((r) => r.client().hgetall('sg:{gw-kill:kill.test}:state')));
    const state = Object.keys(rA!).length ? rA! : rB!;
    const inflight = new Set(Object.entries(state).filter(([, v]) => decodeState(v).state === 'inflight').map(([k]) => k));
    c.disconnect();
    assert.ok(inflight.size > 0, 'some were in flight');

    const second = await gateway(config, {});
    try {
      await waitFor(() => new Set(sink.messages.map((m) => testId(m.raw))).size === N, { timeout: 30_000, what: 'every message delivered after the restart' });
      const seen = new Map<string, number>();
      for (const m of sink.messages) seen.set(testId(m.raw), (seen.get(testId(m.raw)) ?? 0) + 1);
      const dups = [...seen].filter(([, n]) => n > 1).map(([id]) => id);
      for (const id of dups) assert.ok(inflight.has(id), `${id} was delivered twice but was not in flight at the kill`);
      for (const [id, n] of seen) assert.ok(n <= 2, `${id} arrived ${n} times`);
    } finally {
      await stopChild(second);
    }
  });
});
