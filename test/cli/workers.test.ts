// gateway.workers: one `streamgate start` (the installed command, in a subprocess) runs two
// gateway processes that share one SMTP port, each a member of the pool with its own queues; a
// worker killed is restarted and rejoins with its queues; SIGTERM to the primary drains both and
// leaves no process, and every message acknowledged, before or during the drain, is delivered
// once the gateway runs again.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { restartDelay } from '../../src/cli/workers.ts';
import { buildCli, install, runCommand, type Installed } from '../helpers/cli.ts';
import { gatewayCliConfig, startGatewayCli } from '../helpers/gatewayCli.ts';
import { startRedis, startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtpSink.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';

const TOKEN = 'workers-test-token-0123456789';
const DOMAIN = 'work.test';

interface Member {
  id: string;
  token: string;
  epoch: number;
  live: boolean;
  messages: number;
}

const pidOf = (m: Member) => Number(m.token.split(':')[1]);
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const testId = (raw: Buffer) => /X-Test-Id: (\S+)/.exec(raw.toString())?.[1] ?? '?';

describe('gateway.workers', { timeout: 300_000 }, () => {
  let bin: Installed;
  let pool: TestRedis[];
  let events: TestRedis;
  let sink: SmtpSink;
  let dir: string;
  let configFile: string;
  let smtpPort: number;
  let opsPort: number;
  const children = new Set<ChildProcess>();

  /** The configuration: two workers, work.test routed to the sink; closed: its delivery window is shut. */
  const writeConfig = async (closed: boolean) => {
    const hour = String((new Date().getUTCHours() + 12) % 24).padStart(2, '0');
    await gatewayCliConfig(configFile, { poolUrls: pool.map((r) => r.url), eventsUrl: events.url, dataDir: join(dir, 'data') }, {
      gateway: { id: 'gwk', workers: 2, lease: '3s', hostname: 'gw.workers.test' },
      smtp: { listen: `127.0.0.1:${smtpPort}` },
      ops: { tokens: [TOKEN], listen: `127.0.0.1:${opsPort}` },
      routes: { [DOMAIN]: `smtp://127.0.0.1:${sink.port}` },
      relay: { retry: { schedule: ['1s'], jitter: 0 }, ...(closed ? { windows: { [DOMAIN]: [`${hour}:00-${hour}:01`] } } : {}) },
    });
  };

  const start = async () => {
    const g = await startGatewayCli(bin.bin, configFile);
    children.add(g.child);
    g.child.once('exit', () => children.delete(g.child));
    return g;
  };

  const members = async (): Promise<Member[]> => {
    const r = await runCommand(bin.bin, ['gateways', '--json', '--config', configFile], { env: { STREAMGATE_OPS_TOKEN: TOKEN } });
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { members: Member[] }).members;
  };

  /** One message on a connection of its own; its id once it got its 250 ("queued as ID"). */
  const sendId = async (tag: string): Promise<string | undefined> => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: smtpPort, secure: false, ignoreTLS: true, connectionTimeout: 5000, greetingTimeout: 5000, socketTimeout: 10_000 });
    try {
      const info = await t.sendMail({ envelope: { from: 'a@src.test', to: [`b@${DOMAIN}`] }, raw: `From: a@src.test\r\nTo: b@${DOMAIN}\r\nSubject: ${tag}\r\nX-Test-Id: ${tag}\r\n\r\nbody ${tag}\r\n` });
      return /queued as (\S+)/.exec(info.response)?.[1] ?? '';
    } catch {
      return undefined;
    } finally {
      t.close();
    }
  };
  const send = async (tag: string) => (await sendId(tag)) !== undefined;
  const api = async (path: string, init: { method?: string; body?: unknown } = {}) => {
    const r = await fetch(`http://127.0.0.1:${opsPort}${path}`, { method: init.method ?? 'GET', headers: { authorization: `Bearer ${TOKEN}`, ...(init.body ? { 'content-type': 'application/json' } : {}) }, ...(init.body ? { body: JSON.stringify(init.body) } : {}) });
    return { status: r.status, text: await r.text() };
  };

  before(async () => {
    buildCli();
    bin = install('local');
    pool = await startRedisPool(3);
    events = await startRedis();
    sink = await startSmtpSink({ hideStartTls: true });
    dir = mkdtempSync(join(tmpdir(), 'sg-workers-'));
    configFile = join(dir, 'gateway.yaml');
    smtpPort = await freePort();
    opsPort = await freePort();
  });
  const cleanups: (() => Promise<unknown>)[] = [];
  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const f of cleanups) await f();
    await Promise.all([...pool, events].map((r) => r.stop()));
    await sink.close();
    bin.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  it('two workers share one SMTP port, a killed worker rejoins, SIGTERM drains both and loses nothing acknowledged', async () => {
    await writeConfig(true); // work.test's window is shut: what is accepted stays in the queues
    const { child, out, stop } = await start();
    assert.match(out.text, /^streamgate: starting 2 gateway workers, gwk-1 to gwk-2$/m);
    assert.match(out.text, /^ {2}workers {5}gwk-1 \(pid \d+\), gwk-2 \(pid \d+\)/m);

    // several connections to the one port: both workers take some, each into its own queue
    const acked: string[] = [];
    for (let i = 0; i < 16; i++) if (await send(`first-${i}`)) acked.push(`first-${i}`);
    assert.equal(acked.length, 16, 'every message of the first batch acknowledged');
    let listed = await waitFor(async () => {
      const m = await members();
      return m.length === 2 && m.every((x) => x.live && x.messages > 0) && m[0]!.messages + m[1]!.messages === 16 ? m : undefined;
    }, { timeout: 20_000, what: 'two live members holding the 16 messages between them' });
    assert.deepEqual(listed.map((m) => m.id), ['gwk-1', 'gwk-2']);
    const [one, two] = listed as [Member, Member];
    assert.notEqual(pidOf(one), pidOf(two), 'two processes');

    // a second start with the same ids: its first worker finds gwk-1 held by a live member, so the
    // start stops with that worker's line and exit 1; the running members are untouched
    const second = await runCommand(bin.bin, ['start', '--config', configFile]);
    assert.equal(second.code, 1, second.stderr);
    assert.match(second.stderr, /^streamgate: gateway id gwk-1 is held by a live member \(.+\); give this process another gateway\.id$/m);
    assert.match(second.stderr, /^streamgate: gateway worker 1 \(gwk-1\) exited with status 1 before it was ready$/m);
    assert.deepEqual((await members()).map((m) => [m.id, m.token, m.live]), [[one.id, one.token, true], [two.id, two.token, true]]);

    // SIGKILL one worker: the primary restarts it and it rejoins; its queue is recovered by it, or
    // adopted by gwk-1 if the lease (3 s) lapsed before the restart was up: either way the 16
    // messages are held by the live members
    process.kill(pidOf(two), 'SIGKILL');
    listed = await waitFor(async () => {
      const m = await members();
      const again = m.find((x) => x.id === 'gwk-2');
      const held = m.filter((x) => x.live).reduce((a, x) => a + x.messages, 0);
      return again?.live && pidOf(again) !== pidOf(two) && held === 16 ? m : undefined;
    }, { timeout: 30_000, what: 'gwk-2 back under a new process, the 16 messages held by live members' });
    const back = listed.find((x) => x.id === 'gwk-2')!;
    assert.ok(back.epoch > two.epoch, 'it rejoined as a new member (a higher epoch)');
    assert.equal(listed.find((x) => x.id === 'gwk-1')!.token, one.token, 'the other worker went on untouched');
    const died = out.text.split('\n').filter((l) => l.includes('worker died; restarting it'));
    assert.equal(died.length, 1, out.text.slice(-3000));
    assert.match(died[0]!, /"gateway":"gwk-2"/);
    assert.match(died[0]!, /"signal":"SIGKILL"/);
    assert.match(died[0]!, /"restartInMs":1000/);
    await waitFor(() => /"gateway":"gwk-2","workerPid":\d+,"msg":"worker restarted"/.test(out.text), { what: 'the line saying gwk-2 was restarted' });

    // SIGTERM to the primary while four clients send: all drain and exit, nothing acked is lost
    let sending = true;
    const clients = [0, 1, 2, 3].map(async (c) => {
      for (let i = 0; sending; i++) {
        const tag = `drain-${c}-${i}`;
        if (await send(tag)) acked.push(tag);
      }
    });
    await waitFor(() => acked.length >= 40, { timeout: 30_000, what: 'load under way' });
    const code = await stop();
    sending = false;
    await Promise.all(clients);
    assert.equal(code, 0, out.text.slice(-3000));
    assert.match(out.text, /^streamgate: stopping 2 gateway workers \(SIGTERM\)$/m);
    assert.match(out.text, /^streamgate: gwk-1: stopped$/m);
    assert.match(out.text, /^streamgate: gwk-2: stopped$/m);
    assert.match(out.text, /^streamgate: stopped$/m);
    for (const pid of [pidOf(one), pidOf(back), child.pid!]) assert.equal(alive(pid), false, `pid ${pid} gone`);

    // the same two members start again with the window open: every acked message arrives, once
    await writeConfig(false);
    const again = await start();
    try {
      await waitFor(() => {
        const got = new Set(sink.messages.map((m) => testId(m.raw)));
        return acked.every((t) => got.has(t));
      }, { timeout: 60_000, what: `${acked.length} acknowledged messages at the sink` });
      const got = sink.messages.map((m) => testId(m.raw));
      assert.deepEqual(acked.filter((t) => !got.includes(t)), [], 'no acknowledged message lost');
      assert.equal(new Set(got).size, got.length, 'each delivered once');
    } finally {
      await again.stop();
    }
  });

  it('the ops listener answers for every worker: /api/queues lists all their queues, /metrics sums them, an action reaches the worker holding the message', async () => {
    await writeConfig(true); // the window is shut: what is accepted stays queued
    const g = await start();
    try {
      const ids: string[] = [];
      for (let i = 0; i < 16; i++) {
        const id = await sendId(`ops-${i}`);
        assert.ok(id, `message ops-${i} acknowledged with its id`);
        ids.push(id);
      }
      const held = await waitFor(async () => {
        const m = await members();
        return m.length === 2 && m.every((x) => x.live && x.messages > 0) && m[0]!.messages + m[1]!.messages === 16 ? m : undefined;
      }, { timeout: 20_000, what: 'the 16 messages held by both workers' });
      // whichever worker takes the request, the listing is the machine's: both workers' queues, the
      // 16 messages. The test before left the same workers' queues empty in the pool: a worker that
      // starts before the other adopts the other's (its lease has run out) and the other opens a
      // queue of its own, so a worker may own an empty queue more; what each owns adds up alike
      for (let i = 0; i < 6; i++) {
        const r = await api('/api/queues');
        assert.equal(r.status, 200, r.text);
        const body = JSON.parse(r.text) as { totals: Record<string, number>; queues: { queue: string; owner: string; depth: Record<string, number> }[] };
        const mine = body.queues.filter((q) => q.queue.endsWith(`:${DOMAIN}`));
        assert.deepEqual([...new Set(mine.map((q) => q.owner))].sort(), ['gwk-1', 'gwk-2'], r.text);
        const live = (d: Record<string, number>) => d.ready! + d.deferred! + d.held! + d.inflight!;
        const owned = new Map<string, number>();
        for (const q of mine) owned.set(q.owner, (owned.get(q.owner) ?? 0) + live(q.depth));
        assert.deepEqual([...owned].sort(), held.map((m) => [m.id, m.messages]).sort(), 'what each worker\'s queues hold, as the registry counts it');
        assert.equal(live(body.totals), 16, 'the totals are the sum');
        assert.equal(body.totals.queues, body.queues.length);
      }
      // /metrics sums the workers' counters and the depths of their queues
      const metrics = (await api('/metrics')).text;
      const sum = (name: string, match: RegExp) => metrics.split('\n').filter((l) => l.startsWith(name) && match.test(l)).reduce((a, l) => a + Number(l.split(' ').at(-1)), 0);
      assert.equal(sum('streamgate_messages_total{', /listener="mx",outcome="accepted"/), 16, metrics.split('\n').filter((l) => l.startsWith('streamgate_messages_total')).join('\n'));
      assert.equal(sum('streamgate_queue_depth{', new RegExp(`queue="${DOMAIN.replace('.', '\\.')}"`)), 16);
      assert.match(metrics, /^streamgate_redis_node_up\{node="[^"]+"\} 1$/m, 'a shared node seen by both is 1, not 2');
      // an action on each message succeeds whichever worker takes the request: the one that does
      // not hold the message passes it on to the one that does
      for (const id of ids) {
        const r = await api(`/api/queues/${DOMAIN}/messages/${id}/hold`, { method: 'POST', body: { reason: 'ops test' } });
        assert.equal(r.status, 200, `${id}: ${r.text}`);
      }
      const after = JSON.parse((await api('/api/queues')).text) as { totals: Record<string, number> };
      assert.equal(after.totals.held, 16, 'every message held');
      const missing = await api(`/api/queues/${DOMAIN}/messages/01ZZZZZZZZZZZZZZZZZZ/hold`, { method: 'POST', body: { reason: 'ops test' } });
      assert.equal(missing.status, 404, 'a message no worker holds is still not found');
      for (const id of ids) assert.equal((await api(`/api/queues/${DOMAIN}/messages/${id}/release`, { method: 'POST', body: { reason: 'ops test' } })).status, 200);
    } finally {
      assert.equal(await g.stop(), 0, g.out.text.slice(-2000));
    }
  });

  it('a worker that keeps dying soon after its start waits longer each time: 1 s, doubling, at most 30 s', () => {
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 20].map(restartDelay), [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
  });

  it('gateway.workers takes a whole number from 1 to 64 or "auto", and says so otherwise', async () => {
    for (const [value, ok] of [['auto', true], ['3', true], ['0', false], ['65', false], ['1.5', false], ['many', false]] as const) {
      writeFileSync(configFile, `gateway:\n  workers: ${value}\n`);
      const r = await runCommand(bin.bin, ['config', 'check', '--config', configFile]);
      if (ok) {
        assert.equal(r.code, 0, r.stderr);
        assert.equal((JSON.parse(r.stdout) as { gateway: { workers: unknown } }).gateway.workers, value === 'auto' ? 'auto' : Number(value));
      } else {
        assert.equal(r.code, 2, value);
        assert.equal(r.stderr.trim(), `streamgate: ${configFile}: gateway.workers: expected a whole number from 1 to 64 or "auto", got ${value === 'many' ? '"many"' : value}`);
      }
    }
  });

  it('start --with-services (npm start) with workers: the primary starts the services, then the workers; SIGINT stops the workers, then the services, and leaves no process', async () => {
    const own = join(dir, 'services.yaml');
    const cql = await freePort();
    await gatewayCliConfig(own, { poolUrls: [await freePort(), await freePort(), await freePort()].map((p) => `redis://127.0.0.1:${p}`), eventsUrl: `redis://127.0.0.1:${await freePort()}`, dataDir: join(dir, 'services') }, {
      gateway: { id: 'gws', workers: 2 },
      redis: { maxmemory: '64MB' },
      cassandra: { contactPoints: [`127.0.0.1:${cql}`], heap: '256m' },
    });
    cleanups.push(() => runCommand(bin.bin, ['services', 'down', '--config', own])); // if the test fails half-way
    const g = await startGatewayCli(bin.bin, own, { args: ['--with-services'], timeout: 240_000 });
    children.add(g.child);
    const workerPids = [...(/^ {2}workers {5}(.*)$/m.exec(g.out.text)?.[1] ?? '').matchAll(/pid (\d+)/g)].map((m) => Number(m[1]));
    assert.equal(workerPids.length, 2, g.out.text.slice(-2000));
    const up = await runCommand(bin.bin, ['services', 'status', '--config', own]);
    assert.equal(up.code, 0, up.stdout);
    g.child.kill('SIGINT');
    // its own exit, not stop()'s SIGTERM, which could overtake the SIGINT
    await waitFor(() => g.child.exitCode !== null || g.child.signalCode !== null, { timeout: 120_000, what: 'start to exit after SIGINT' });
    assert.equal(await g.stop(), 0, g.out.text.slice(-2000));
    assert.match(g.out.text, /^streamgate: stopping 2 gateway workers \(SIGINT\)\n(?:.*\n)*streamgate: local services stopped: redis .*cassandra .*\nstreamgate: stopped\n$/m);
    for (const pid of workerPids) assert.equal(alive(pid), false, `worker ${pid} gone`);
    const down = await runCommand(bin.bin, ['services', 'status', '--config', own]);
    assert.equal(down.code, 1, 'nothing of the services left running');
    assert.doesNotMatch(down.stdout, /running/);
  });
});
