// Each Lua script's header names exactly the keys and arguments its callers pass. The headers are
// read as the scripts' contract (KEYS: 1 …, 2 …; ARGV: 1 …, 2 …, "N-M as in includes/…", "(… only)"
// for an argument some calls leave out, "count n, then n groups of K", "N.. …" for a tail of any
// length); every script is then called the way the gateway calls it, on real Redis nodes, and each
// call seen by MONITOR is held against its script's header.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { LUA_DIR, loadScripts } from '../../src/queue/scripts.ts';
import { SharedLimits } from '../../src/relay/limits.ts';
import { SharedFailureThrottle } from '../../src/access/throttle.ts';
import { PoolState } from '../../src/queue/poolState.ts';
import { DeadDestinations } from '../../src/relay/dead.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';

/** A script's arguments as its header states them. */
interface ArgvSpec {
  /** The numbered arguments, 1..fixed. */
  fixed: number;
  /** Numbered arguments some calls leave out ("(acquire only)"): always the last ones. */
  optional: number;
  /** "N count n, then n groups of K": ARGV[N] says how many groups of K follow the numbered ones. */
  groups?: { countArg: number; size: number };
  /** "N.. …": any number of arguments from N on. */
  tailFrom?: number;
}

interface Header {
  keys: number;
  argv: ArgvSpec;
}

/** Reads the KEYS and ARGV lines of a script's header. */
function parseHeader(file: string, lua: string): Header {
  const head = /--\[\[([\s\S]*?)\]\]/.exec(lua)?.[1] ?? '';
  const flat = head.replace(/\s+/g, ' ');
  const keysText = /KEYS: (.*?) ARGV:/.exec(flat)?.[1];
  const argvText = /ARGV: (.*?) Returns:/.exec(flat)?.[1];
  assert.ok(keysText !== undefined && argvText !== undefined, `${file}: a header with KEYS:, ARGV: and Returns:`);
  const keyNumbers = [...keysText.matchAll(/(?:^|, )(\d+) /g)].map((m) => Number(m[1]));
  assert.deepEqual(keyNumbers, keyNumbers.map((_, i) => i + 1), `${file}: KEYS numbered 1, 2, …`);
  const argv: ArgvSpec = { fixed: 0, optional: 0 };
  // the numbered items, in order: "N text", "N-M text" or "N.. text", each after the start, a comma or a colon
  for (const m of argvText.matchAll(/(?:^|[,:] )(\d+)(?:-(\d+)|(\.\.))? ([^,]*)/g)) {
    const n = Number(m[1]);
    if (m[3]) {
      assert.equal(n, argv.fixed + 1, `${file}: "${n}.." follows argument ${argv.fixed}`);
      argv.tailFrom = n;
      continue;
    }
    if (n !== argv.fixed + 1) continue; // a number inside an item's text
    argv.fixed = m[2] ? Number(m[2]) : n;
    const text = m[4]!;
    if (/ only\)/.test(text)) argv.optional++;
    else assert.equal(argv.optional, 0, `${file}: an optional argument before ARGV[${n}]`);
    if (/count n/.test(text)) {
      const size = /then n groups of (\d+)/.exec(argvText)?.[1];
      assert.ok(size, `${file}: "count n" without "then n groups of K"`);
      argv.groups = { countArg: n, size: Number(size) };
    }
  }
  return { keys: keyNumbers.length, argv };
}

/** Whether a call's ARGV fits the header; else what is wrong. */
function argvProblem(spec: ArgvSpec, argv: string[]): string | undefined {
  if (spec.tailFrom !== undefined) return argv.length >= spec.tailFrom - 1 ? undefined : `at least ${spec.tailFrom - 1} arguments, got ${argv.length}`;
  if (spec.groups) {
    const n = Number(argv[spec.groups.countArg - 1]);
    const want = spec.fixed + n * spec.groups.size;
    return argv.length === want ? undefined : `${spec.fixed} + ${n} × ${spec.groups.size} = ${want} arguments, got ${argv.length}`;
  }
  const least = spec.fixed - spec.optional;
  return argv.length >= least && argv.length <= spec.fixed ? undefined : `${least === spec.fixed ? spec.fixed : `${least} to ${spec.fixed}`} arguments, got ${argv.length}`;
}

const SCRIPT_FILES = readdirSync(LUA_DIR).filter((f) => f.endsWith('.lua'));

describe('Lua script headers', () => {
  let pool: TestRedis[];
  const monitors: Redis[] = [];
  /** Every script call the nodes saw: script name, numkeys, ARGV. */
  const calls: { name: string; numKeys: number; argv: string[] }[] = [];

  before(async () => {
    pool = await startRedisPool(3);
    const bySha = new Map(loadScripts().map((s) => [createHash('sha1').update(s.lua).digest('hex'), s.name]));
    // MONITOR shows an EVAL's body escaped ("\\n" for a line end): bodies are compared without white space and escapes
    const bare = (lua: string) => lua.replace(/\\[nrt]|\s+/g, '').replace(/\\(.)/g, '$1');
    const byBody = new Map(loadScripts().map((s) => [bare(s.lua), s.name]));
    for (const r of pool) {
      // MONITOR from a client whose own connection is done (its ready check's INFO answered): a
      // command seen while ioredis switches the new connection to monitor mode breaks its queue
      const base = r.client();
      await base.ping();
      const m = await base.monitor();
      monitors.push(m);
      m.on('monitor', (_time: string, args: string[]) => {
        const cmd = args[0]?.toLowerCase();
        if (cmd !== 'evalsha' && cmd !== 'eval') return;
        const name = cmd === 'evalsha' ? bySha.get(args[1]!) : byBody.get(bare(args[1]!));
        if (!name) return;
        const numKeys = Number(args[2]);
        calls.push({ name, numKeys, argv: args.slice(3 + numKeys) });
      });
    }
  });

  after(async () => {
    for (const m of monitors) m.disconnect();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('every header states its keys and arguments in order, as many keys as the file name says', () => {
    for (const file of SCRIPT_FILES) {
      const { keys } = parseHeader(file, readFileSync(join(LUA_DIR, file), 'utf8'));
      assert.equal(keys, Number(/-(\d+)\.lua$/.exec(file)![1]), `${file}: KEYS in the header`);
    }
  });

  it('every script, called as the gateway calls it, gets exactly the keys and arguments its header names', async () => {
    const config = testConfig({ redis: { nodes: pool.map((r) => r.url) } });
    const domain = 'lua-headers.test';
    let qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-lua' });
    await qm.start();
    const raw = Buffer.from('Subject: x\r\n\r\nbody\r\n');
    for (let i = 0; i < 6; i++) await qm.append({ id: `m${i}`, domain, envelope: { from: 's@src.test', to: [`r${i}@${domain}`] }, raw });
    const taken = await qm.take(domain, 6);
    assert.equal(taken.length, 6);
    await qm.settle(domain, 'm0', 'delivered', { mx: 'mx.test' });
    await qm.defer(domain, 'm1', Date.now() + 60_000, { reply: '451 later' }, ['r1@lua-headers.test']);
    await qm.requeue(domain, 'm2', { reason: 'test' });
    await qm.requeue(domain, 'm3', { reason: 'test' });
    await qm.hold(domain, 'm3', 'ops', 'look');
    await qm.release(domain, 'm3', 'ops', 'done');
    await qm.purge(domain, 'm4', 'ops', 'gone');
    const q = qm.queues.get(domain)!;
    await q.mark('recovered', { actor: 'ops', reason: 'test' });
    const hist = await qm.historySince(domain, undefined, 2);
    // the event log's read of a block (the archive)
    assert.deepEqual((await qm.historyBlock(domain, undefined, 2)).map((e) => e.histId), hist.map((h) => h.histId));
    await q.trimHistory(hist[1]!.histId);
    // a state rebuild's steps (streamgate queue rebuild-state), here writing back the state as it
    // is, and the live index it reads
    await qm.withWritesHeld(domain, async (held, reader) => {
      assert.ok((await qm.liveIndex(reader, domain, undefined, 100)).length > 0);
      const states = await reader.client.hgetall(held.keys[3]);
      const meta = await reader.client.hgetall(held.keys[2]);
      await held.writeState('begin', [Date.now()]);
      await held.writeState('put', Object.entries(states).flat());
      await held.writeState('commit', [JSON.stringify({ actor: 'ops', reason: 'headers' }), ...['ready', 'deferred', 'held', 'inflight', 'bytes', 'appended'].flatMap((k) => [k, meta[k] ?? ''])]);
    });
    await qm.stop();
    // a restart claims the queue (claimQueue) under a new epoch
    qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-lua' });
    await qm.start();
    const limits = new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: 'gw-lua', leaseMs: 5000, log: silentLogger });
    await limits.waitRate('lua-headers-dest', 1000);
    const lease = await limits.acquireLease('lua-headers-dest', 2);
    await limits.renewLease(lease, 2);
    await limits.releaseLease(lease);
    // the state shared on the pool: failed logins, dead destinations, delay-warning markers
    const shared = PoolState.of(qm.nodes, 1000, silentLogger);
    await new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: 'gw-lua', leaseMs: 5000, log: silentLogger, pool: shared }).once('sg:warned:{gw-lua:lua-headers.test}:m1', 60_000);
    const guard = new SharedFailureThrottle({ perConnection: 0, perClient: 3, window: 60_000, delay: 0 }, shared, 'smtp-auth');
    await guard.fail('192.0.2.1');
    await guard.check('192.0.2.1');
    const dead = new DeadDestinations({ failures: 1, suspend: 1000 }, Date.now, shared);
    await dead.failure('mx.lua-headers.test:25');
    await dead.refresh();
    await new Promise((resolve) => setTimeout(resolve, 1100));
    await dead.claim('mx.lua-headers.test:25');
    dead.unclaim('mx.lua-headers.test:25');
    await dead.success('mx.lua-headers.test:25');
    await qm.stop();

    const headers = new Map(SCRIPT_FILES.map((f) => [/^([A-Za-z]+)-/.exec(f)![1]!, parseHeader(f, readFileSync(join(LUA_DIR, f), 'utf8'))]));
    await waitFor(() => [...headers.keys()].every((name) => calls.some((c) => c.name === name)), { what: `a call of every script; seen: ${[...new Set(calls.map((c) => c.name))].join(', ')}` });
    for (const c of calls) {
      const h = headers.get(c.name)!;
      assert.equal(c.numKeys, h.keys, `${c.name}: keys passed`);
      const problem = argvProblem(h.argv, c.argv);
      assert.equal(problem, undefined, `${c.name}: the header says ${problem}; ARGV ${JSON.stringify(c.argv.map((a) => a.slice(0, 40)))}`);
    }
  });
});
