// Takeover (DESIGN, "Scale beyond one machine"): when a member's lease lapses, each of its queues is
// adopted by exactly one live member, loaded from a replica proven current and continued; the old
// owner is fenced out. Real gateway processes (test/helpers/poolGatewayProcess.ts: queue manager,
// relay, SMTP ingress) on four real Redis nodes, mail over SMTP, a real SMTP sink.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTransport } from 'nodemailer';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { readPlacement } from '../../src/queue/placement.ts';
import { decodeHistory, decodeLiveEntry, decodeState, queueKeys } from '../../src/queue/records.ts';
import { poolMembers } from '../../src/queue/takeover.ts';
import { runCli } from '../helpers/cli.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtpSink.ts';
import { waitFor } from '../helpers/waitFor.ts';

const FIXTURE = join(import.meta.dirname, '..', 'helpers', 'poolGatewayProcess.ts');
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

interface Member {
  id: string;
  child: ChildProcess;
  port: number;
  /** Its ops API's port. */
  opsPort: number;
  /** Its log lines (pino JSON). */
  log: { msg: string; [k: string]: unknown }[];
  exit: Promise<number | null>;
}

const dirs: string[] = [];
const TOKEN = 'takeover-token-0123456789abcdef';

async function member(id: string, config: Record<string, unknown>): Promise<Member> {
  const dataDir = mkdtempSync(join(tmpdir(), `sg-${id}-`));
  dirs.push(dataDir);
  const cfg = { ...config, gateway: { ...(config.gateway as object), id, dataDir } };
  const child = spawn(process.execPath, [FIXTURE], { env: { ...process.env, SG_TEST_CONFIG: JSON.stringify(cfg) }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => (children.delete(child), resolve(code))));
  const log: Member['log'] = [];
  let rest = '';
  child.stderr!.on('data', (c: Buffer) => {
    rest += c.toString();
    const lines = rest.split('\n');
    rest = lines.pop()!;
    for (const l of lines) {
      try {
        log.push(JSON.parse(l) as Member['log'][number]);
      } catch {
        log.push({ msg: l });
      }
    }
  });
  const [port, opsPort] = await new Promise<[number, number]>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /ready (\d+) (\d+)\n/.exec(out);
      if (m) resolve([Number(m[1]), Number(m[2])]);
    });
    void exit.then((code) => reject(new Error(`${id} exited with ${code} before it was ready: ${log.map((l) => l.msg).join(' | ')}`)));
  });
  return { id, child, port, opsPort, log, exit };
}

const stopMember = async (m: Member) => {
  if (m.child.exitCode !== null || m.child.signalCode !== null) return;
  m.child.kill('SIGCONT');
  m.child.kill('SIGTERM');
  await m.exit;
};

const testId = (raw: Buffer) => /X-Test-Id: (\S+)/.exec(raw.toString())?.[1] ?? '?';

/** Sends `X-Test-Id`-tagged messages to one gateway, `parallel` at a time, until stopped; keeps the acknowledged ids. */
function load(port: number, prefix: string, domain: string, parallel = 3) {
  const transport = createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, pool: true, maxConnections: parallel, connectionTimeout: 2000, greetingTimeout: 2000, socketTimeout: 3000 });
  const acked: string[] = [];
  let stopped = false;
  let n = 0;
  const worker = async () => {
    while (!stopped) {
      const id = `${prefix}${n++}`;
      try {
        await transport.sendMail({ envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw: `From: <s@src.test>\r\nTo: <r@${domain}>\r\nSubject: ${id}\r\nX-Test-Id: ${id}\r\n\r\nbody ${id}\r\n` });
        acked.push(id);
      } catch {
        if (!stopped) await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  const running = Promise.all(Array.from({ length: parallel }, worker));
  return {
    acked,
    async stop() {
      stopped = true;
      await running;
      transport.close();
    },
  };
}

/** The live states of a queue, from whichever replica has them. */
async function states(pool: TestRedis[], queue: string): Promise<Map<string, ReturnType<typeof decodeState>>> {
  const out = new Map<string, ReturnType<typeof decodeState>>();
  for (const r of pool) {
    const c = r.client();
    const all = await c.hgetall(queueKeys(queue)[3]);
    c.disconnect();
    if (Object.keys(all).length > out.size) {
      out.clear();
      for (const [id, v] of Object.entries(all)) out.set(id, decodeState(v));
    }
  }
  return out;
}

/** The X-Test-Id of the live entries `entryIds` of a queue, from the replica that has them. */
async function testIds(pool: TestRedis[], queue: string, entryIds: string[]): Promise<Set<string>> {
  const out = new Set<string>();
  for (const r of pool) {
    const c = r.client();
    for (const e of entryIds) {
      const [row] = (await c.xrangeBuffer(queueKeys(queue)[0], e, e)) as [Buffer, Buffer[]][];
      if (row) out.add(testId(decodeLiveEntry(row[1]).raw));
    }
    c.disconnect();
  }
  return out;
}

/** The `adopted` events of a queue's history, from every node. */
async function adoptedEvents(pool: TestRedis[], queue: string) {
  const out = [];
  for (const r of pool) {
    const c = r.client();
    const rows = (await c.xrange(queueKeys(queue)[1], '-', '+')) as [string, string[]][];
    c.disconnect();
    out.push(...rows.map(decodeHistory).filter((h) => h.kind === 'adopted'));
  }
  return out;
}

describe('takeover of a dead member’s queues', () => {
  let pool: TestRedis[];
  const sinks: SmtpSink[] = [];
  before(async () => {
    pool = await startRedisPool(4);
  });
  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await Promise.all(sinks.map((s) => s.close()));
    await Promise.all(pool.map((r) => r.stop()));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const base = (domain: string, sink: SmtpSink, extra: Record<string, unknown> = {}) => ({
    // a lease long enough that a survivor's own renewals survive a loaded machine's stalls
    gateway: { hostname: 'mx.pool.test', lease: '2s', adoption: { every: '200ms' } },
    ops: { listen: '127.0.0.1:0', tokens: [TOKEN] },
    redis: { nodes: pool.map((r) => r.url) },
    queue: { heartbeat: { every: '200ms', missed: 3 } },
    domains: { local: [], relay: [domain] },
    smtp: { listen: '127.0.0.1:0' },
    submission: { listen: '127.0.0.1:0' },
    routes: { [domain]: `smtp://127.0.0.1:${sink.port}` },
    relay: { retry: { schedule: ['1s'], jitter: 0 }, limits: { destinations: { [domain]: { connections: 2 } } }, connectionLease: '1s' },
    ...extra,
  });

  it('SIGKILL of one of three gateways under SMTP load: its queue is adopted within the bound, every acknowledged message delivered, duplicates only among those in flight', async () => {
    const domain = 'kill.take.test';
    const sink = await startSmtpSink({ hideStartTls: true, dataDelayMs: 20 });
    sinks.push(sink);
    const cfg = base(domain, sink);
    const [a, b, c] = await Promise.all(['tk-a', 'tk-b', 'tk-c'].map((id) => member(id, cfg)));
    const loads = [a!, b!, c!].map((m) => load(m.port, `${m.id}-`, domain));
    try {
      // A holds a backlog (the sink takes its time) when it is killed
      await waitFor(() => loads[0]!.acked.length >= 150, { timeout: 60_000, what: '150 messages acknowledged by tk-a' });
      a!.child.kill('SIGKILL');
      await a!.exit;
      const killedAt = Date.now();
      const atKill = await states(pool, `tk-a:${domain}`);
      const inflight = await testIds(pool, `tk-a:${domain}`, [...atKill].filter(([, s]) => s.state === 'inflight').map(([, s]) => s.entryId));
      const left = (await states(pool, `tk-a:${domain}`)).size;
      assert.ok(left > 0, 'tk-a had mail queued at the kill');
      // the load goes on at the survivors
      const more = loads.slice(1).map((l) => l.acked.length + 100);
      await waitFor(() => loads[1]!.acked.length >= more[0]! && loads[2]!.acked.length >= more[1]!, { timeout: 60_000, what: '100 more acknowledged by each survivor' });
      await Promise.all(loads.map((l) => l.stop()));
      const acked = loads.flatMap((l) => l.acked);
      // adopted once, by a survivor, within lease + adoption.every + the load (bounded here at 5 s more)
      const events = await waitFor(async () => {
        const e = await adoptedEvents(pool, `tk-a:${domain}`);
        return e.length ? e : undefined;
      }, { timeout: 30_000, what: 'the adopted event' });
      const ev = events[0]!;
      assert.ok(events.every((e) => e.histId === ev.histId), 'one adoption (the same event on both replicas)');
      assert.ok(['tk-b', 'tk-c'].includes(String(ev.details.by)), `adopted by a survivor, not ${String(ev.details.by)}`);
      assert.equal(ev.details.from, 'tk-a');
      assert.ok(ev.at - killedAt <= 2000 + 200 + 5000, `adopted ${ev.at - killedAt} ms after the kill (lease 2 s, every 200 ms)`);
      // every acknowledged message reaches the sink
      await waitFor(() => {
        const got = new Set(sink.messages.map((m) => testId(m.raw)));
        return acked.every((id) => got.has(id));
      }, { timeout: 120_000, what: `all ${acked.length} acknowledged messages at the sink` });
      const seen = new Map<string, number>();
      for (const m of sink.messages) seen.set(testId(m.raw), (seen.get(testId(m.raw)) ?? 0) + 1);
      for (const [id, n] of seen) {
        if (n > 1) assert.ok(inflight.has(id), `${id} delivered ${n} times but not in flight at the kill (${[...inflight].join(' ')})`);
        assert.ok(n <= 2, `${id} arrived ${n} times`);
      }
      // the dead member's queue is no longer in its placement, and the adopter's log says so
      const adopter = ev.details.by === 'tk-b' ? b! : c!;
      assert.ok(adopter.log.some((l) => l.msg === 'queue adopted' && l.queue === `tk-a:${domain}`), 'the adopter logged the adoption');
    } finally {
      await Promise.all(loads.map((l) => l.stop()));
      await Promise.all([a!, b!, c!].map(stopMember));
    }
  });

  it('SIGSTOP past its lease, then SIGCONT: the paused gateway writes nothing to the queues it lost, is fenced, and a restart with its id does not take them back', async () => {
    const domains = ['p1.take.test', 'p2.take.test', 'p3.take.test', 'p4.take.test'];
    const sink = await startSmtpSink({ hideStartTls: true });
    sinks.push(sink);
    for (const d of domains) sink.answer(`r@${d}`, { code: 451, text: '4.3.0 try later' });
    const cfg = {
      ...base(domains[0]!, sink),
      domains: { local: [], relay: domains },
      routes: Object.fromEntries(domains.map((d) => [d, `smtp://127.0.0.1:${sink.port}`])),
      // one attempt, then an hour's wait: nobody writes to the queues while the paused one sleeps
      relay: { retry: { schedule: ['1h'], jitter: 0 } },
    };
    const a = await member('ps-a', cfg);
    const others: Member[] = [];
    try {
      for (const d of domains) {
        const l = load(a.port, `${d}-`, d, 1);
        await waitFor(() => l.acked.length >= 5, { what: `5 messages for ${d}` });
        await l.stop();
      }
      const names = domains.map((d) => `ps-a:${d}`);
      // each message tried once and deferred for an hour
      await waitFor(async () => {
        for (const q of names) for (const s of (await states(pool, q)).values()) if (s.state !== 'deferred') return false;
        return true;
      }, { what: 'every message deferred' });
      const before = new Map<string, Map<string, ReturnType<typeof decodeState>>>();
      for (const q of names) before.set(q, await states(pool, q));
      others.push(...(await Promise.all(['ps-b', 'ps-c'].map((id) => member(id, cfg)))));
      a.child.kill('SIGSTOP');
      // adopted, spread over both survivors
      const by = await waitFor(async () => {
        const got = await Promise.all(names.map(async (q) => (await adoptedEvents(pool, q))[0]?.details.by));
        return got.every(Boolean) ? got : undefined;
      }, { timeout: 30_000, what: 'every queue of ps-a adopted' });
      assert.ok(by.every((x) => x === 'ps-b' || x === 'ps-c'));
      // the management table shows each adopter as the owner, and where the queue came from
      for (const m of others) {
        const file = join(mkdtempSync(join(tmpdir(), 'sg-cli-')), 'c.yaml');
        dirs.push(dirname(file));
        writeFileSync(file, `ops: { listen: "127.0.0.1:${m.opsPort}", tokens: ["${TOKEN}"] }\nredis: { nodes: [${pool.map((r) => `"${r.url}"`).join(', ')}] }\n`);
        const list = await runCli(['queue', 'list', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
        assert.equal(list.status, 0, list.stderr);
        names.forEach((q, i) => {
          if (by[i] === m.id) assert.match(list.stdout, new RegExp(`^${q.replace(/\./g, '\\.')}\\s+0\\s+${before.get(q)!.size}\\s+0\\s+0\\s+\\d+s\\s+${m.id} \\(from ps-a\\)\\s+whole`, 'm'));
        });
      }
      // the same order, attempt counts, retry times and acceptance on the replicas
      for (const q of names) assert.deepEqual(await states(pool, q), before.get(q), `${q} as it was`);
      const snapshot = async () => {
        const out: unknown[] = [];
        for (const r of pool) {
          const cl = r.client();
          for (const q of names) {
            const [live, hist, meta] = queueKeys(q);
            out.push([r.port, q, await cl.xlen(live), await cl.xlen(hist), await cl.hgetall(meta)]);
          }
          cl.disconnect();
        }
        return out;
      };
      // the adopters' last writes (the adopted events on both replicas) are in
      let last: unknown = undefined;
      const frozen = await waitFor(async () => {
        const now = await snapshot();
        const same = JSON.stringify(now) === JSON.stringify(last);
        last = now;
        return same ? now : undefined;
      }, { every: 300, what: 'the replicas at rest' });
      a.child.kill('SIGCONT');
      assert.equal(await a.exit, 1, 'the paused gateway stops with status 1 once it wakes');
      assert.ok(a.log.some((l) => /fenced/.test(l.msg)), `fenced in its log: ${a.log.map((l) => l.msg).join(' | ')}`);
      assert.deepEqual(await snapshot(), frozen, 'nothing written to the queues it lost, on any node');
      // a new process with its id starts as a member with none of them, and mail for one of the
      // domains goes to a queue of a new name
      const again = await member('ps-a', cfg);
      others.push(again);
      const l = load(again.port, 'again-', domains[0]!, 1);
      await waitFor(() => l.acked.length >= 1, { what: 'a message through the restarted ps-a' });
      await l.stop();
      assert.deepEqual(await snapshot(), frozen, 'the restarted process leaves the adopted queues alone');
      const placement = pool[0]!.client();
      const rec = await placement.hgetall('sg:placement:{ps-a}');
      placement.disconnect();
      assert.match(JSON.parse(rec[domains[0]!]!).name as string, /^ps-a~\d+:p1\.take\.test$/);
    } finally {
      await Promise.all([a, ...others].map(stopMember));
    }
  });
});

describe('takeover: one adopter per queue', () => {
  it('two members adopting the same queue at once: exactly one gets it, with every message; the other holds nothing of it', async () => {
    const pool = await startRedisPool(3);
    const cfg = testConfig({ redis: { nodes: pool.map((r) => r.url) }, gateway: { lease: '1s', adoption: { every: '1h' } } });
    const a = new QueueManager(cfg, silentLogger, { gatewayId: 'race-a' });
    const others: QueueManager[] = [];
    try {
      await a.start();
      for (let i = 0; i < 20; i++) await a.append({ id: `r${i}`, domain: 'race.test', envelope: { from: 's@src.test', to: ['r@race.test'] }, raw: Buffer.from(`Subject: ${i}\r\n\r\nx\r\n`) });
      await a.stop(); // holding messages: its queues are left for adoption
      const b = new QueueManager(cfg, silentLogger, { gatewayId: 'race-b' });
      const c = new QueueManager(cfg, silentLogger, { gatewayId: 'race-c' });
      others.push(b, c);
      await Promise.all([b.start(), c.start()]);
      const dead = (await poolMembers(b.nodes, 1000))!.find((m) => m.id === 'race-a')!;
      assert.equal(dead.live, false);
      const rec = (await readPlacement(b.nodes, 'race-a', 1000)).get('race.test')!;
      for (let round = 0; round < 5; round++) {
        const got = await Promise.all([b.adopt(dead, 'race.test', rec), c.adopt(dead, 'race.test', rec)]);
        assert.ok(!(got[0] && got[1]), 'never both');
      }
      const holders = [b, c].filter((m) => m.view('race-a:race.test'));
      assert.equal(holders.length, 1, 'exactly one holds it');
      assert.equal(holders[0]!.depth('race-a:race.test').ready, 20);
    } finally {
      await Promise.all(others.map((m) => m.stop()));
      await Promise.all(pool.map((r) => r.stop()));
    }
  });

  it('an adoption whose load is slow is not loaded a second time by the heartbeat\'s repair pass: every message is counted once', async () => {
    const pool = await startRedisPool(3);
    const cfg = testConfig({ redis: { nodes: pool.map((r) => r.url) }, gateway: { lease: '1s', adoption: { every: '1h' } }, queue: { heartbeat: { every: '20ms' } } });
    const a = new QueueManager(cfg, silentLogger, { gatewayId: 'slow-a' });
    let b: QueueManager | undefined;
    try {
      await a.start();
      for (let i = 0; i < 400; i++) await a.append({ id: `s${i}`, domain: 'slow.test', envelope: { from: 's@src.test', to: ['r@slow.test'] }, raw: Buffer.from(`Subject: ${i}\r\n\r\nx\r\n`) });
      await a.stop();
      b = new QueueManager(cfg, silentLogger, { gatewayId: 'slow-b' });
      await b.start();
      const dead = (await poolMembers(b.nodes, 1000))!.find((m) => m.id === 'slow-a')!;
      const rec = (await readPlacement(b.nodes, 'slow-a', 1000)).get('slow.test')!;
      // the nodes hold writes back for a while (reads and heartbeats go on): the adoption's claims
      // wait, and its queue, registered but not loaded yet, is seen by several heartbeats
      await Promise.all(pool.map(async (r) => {
        const c = r.client();
        await c.call('CLIENT', 'PAUSE', '300', 'WRITE');
        c.disconnect();
      }));
      assert.equal(await b.adopt(dead, 'slow.test', rec), true);
      // and a few heartbeats after it
      await new Promise((r) => setTimeout(r, 300));
      const depth = b.depth('slow-a:slow.test');
      assert.equal(depth.ready + depth.deferred + depth.held + depth.inflight, 400, `every message counted once: ${JSON.stringify(depth)}`);
    } finally {
      await b?.stop();
      await Promise.all(pool.map((r) => r.stop()));
    }
  });
});
