// npm run bench:smtp — accepted messages per second and reply latency of the SMTP ingress, with
// both replicas written before every 250, beside Debian's Postfix on the same machine in the same
// run under the same load, with the gateway's own stalls (event-loop delay, GC pauses) printed
// beside each latency row, so that a percentile can be explained.
//
// The load: N sessions (BENCH_SESSIONS, default 32), each one connection reused for every message
// and PIPELINING the envelope (MAIL, RCPT and DATA in one write), messages of 1 KB (70%) and
// 10 KB (30%), as in the gateway paper. Reply latency is the time from the end of the message data
// (the final "." line) to the reply. Per target:
//   1. closed loop: every session sends its next message as soon as it has the reply, for
//      BENCH_SECONDS (default 10): the most the target accepts;
//   2. open loop at each rate of BENCH_RATES messages per second offered (default "1000,2000"),
//      BENCH_RATE_SECONDS each (default 10), spread over the same sessions; for streamgate also at
//      80% of its own closed-loop maximum. Also the latency from the moment a message was due (so
//      queueing in the generator counts too).
// BENCH_RUNS (default 1) repeats the whole and prints the median of each figure over the runs.
// In whole mode each phase (and the closed loop after the warm-up) starts once every message
// accepted before it is at the sink, for both targets: a closed loop accepts more than a relay
// delivers, and without the pause the next phase would measure the target still delivering that
// backlog on the same cores (the relay ran at twice the offered 1,000/s through that phase). The
// backlog as each phase ended and how long it took to drain are printed; the CPU seconds cover the
// phases only. BENCH_DRAIN_BETWEEN=0 runs the phases back to back.
//
// BENCH_MODE (default "both"):
//   ingress  streamgate: three redis-server processes (a replica pair and the spare) and a gateway
//            child process (the QueueManager and the SMTP ingress only; logging at info to a file,
//            as Postfix logs to its maillog). Postfix: each accepted message is put on its hold
//            queue (check_client_access static:HOLD), so that Postfix, like the gateway here,
//            stores it durably and replies but does not deliver it.
//   whole    the whole gateway (`streamgate start`: ingress, relay delivering to an SMTP sink,
//            events publisher on an events Redis of its own, Cassandra connected), and Postfix
//            relaying to the same sink; the sink is Postfix's smtp-sink. Every accepted message
//            is checked at the sink at the end.
//   both     ingress, then whole.
// The client is untrusted; relay.bench.test is a relay domain of both targets.
//
// BENCH_WORKERS (default 1): gateway.workers, a number or "auto" (one per core), or a list
// ("1,2,3"): one streamgate target per value, each measured in the same run as Postfix. In whole
// mode it is the gateway's own setting; in ingress mode the child becomes a node:cluster primary
// that forks that many queue + ingress processes (ids bench-1 … bench-N, each a member with its
// own queue) sharing one SMTP port, as `streamgate start` does. With more than one worker the
// loop-delay and GC columns are left empty (they are one process's figures). In ingress mode with
// one worker it also prints, per phase, the reply latency as the ingress timed it and how many of
// the replies over 5 ms had a GC pause near them, of which kind (bench/lib/replyGc.ts).
//
// BENCH_TARGETS (default "streamgate,postfix"): "streamgate" alone to compare a change of the
// gateway within one session faster (no ratio to Postfix is printed then).
//
// BENCH_WHOLE_CONFIG (whole mode): JSON merged into the gateway's configuration, section by
// section, to see what a part costs: '{"events":{"archive":false}}', for instance.
// BENCH_WHOLE_COMPARE (whole mode): JSON of the same kind for one more streamgate target in each
// run, measured beside the gateway as configured (the two in turn, the first one alternating from
// run to run), and the line "what it changes": the closed loop's accepted msg/s of each, medians
// over the runs, and the ratio. '{"events":{"archive":false}}' gives the cost the event log adds.
//
// Before the figures each target gets a closed-loop warm-up, not measured: BENCH_WARMUP seconds
// (default 1 in ingress mode; 15 in whole mode, where the Cassandra node is a JVM started for the
// run whose JIT compiler otherwise takes a core's share of the measured seconds: a gateway's
// Cassandra runs for days). The same for Postfix.
//
// After each target it prints the CPU seconds each process used while it was measured (the
// closed loop and the open loops): the gateway (with workers: the primary and each worker), each
// redis-server, Cassandra, the sink, the load generator (this process), Postfix (its master and
// every child, exited ones included), and the whole machine, so the reader sees where the cores go.
//
// Postfix runs as an instance of its own (bench/lib/postfix.ts: config_directory, queue_directory
// and data_directory in a temp dir, its own loopback port, nothing of the system's Postfix or
// port 25 touched), installed with apt-get when missing, stopped and removed at the end, also when
// the benchmark fails. BENCH_PROFILE=dir writes a CPU profile of the gateway (either mode);
// BENCH_TRACE_GC=1 passes --trace-gc to it, BENCH_GATEWAY_FLAGS other Node flags (V8's heap
// sizes, for instance); BENCH_ALLOC_PROFILE=dir writes a sampling allocation profile of it
// (garbage included: every allocation, also those collected since), BENCH_PROMOTED_PROFILE=dir one
// of the allocations that outlived the young generation only (bench/lib/heapProbe.ts; either
// mode), read in DevTools or with bench/lib/allocTop.ts.
import { spawn } from 'node:child_process';
import cluster from 'node:cluster';
import { once } from 'node:events';
import { chmodSync, closeSync, createWriteStream, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { stringify as toYaml } from 'yaml';
import type { LoopSnapshot } from '../src/ops/loopStats.ts';
import { ReplyGc, SLOW_MS, type ReplyInside } from './lib/replyGc.ts';
import { childrenOf, machineCpu, pidOnPort, procCpu, treeCpu } from './lib/cpu.ts';
import { startCSink, type CountingSink } from './lib/postfixTools.ts';
import { masterPid, postfixVersion, startPostfix, type PostfixInstance } from './lib/postfix.ts';
import { SmtpSession as Session } from './lib/smtpSession.ts';
import { median } from './lib/stats.ts';

const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 32);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const RATES = (process.env.BENCH_RATES ?? process.env.BENCH_RATE ?? '1000,2000').split(',').map(Number);
const MODE = process.env.BENCH_MODE ?? 'both';
const RUNS = Number(process.env.BENCH_RUNS ?? 1);
const RATE_SECONDS = Number(process.env.BENCH_RATE_SECONDS ?? 10);
const DRAIN_BETWEEN = process.env.BENCH_DRAIN_BETWEEN !== '0';
const TARGETS = (process.env.BENCH_TARGETS ?? 'streamgate,postfix').split(',');
const WARMUP = (mode: string) => Number(process.env.BENCH_WARMUP ?? (mode === 'whole' ? 15 : 1));
/** Configuration merged into a second streamgate target of whole mode (BENCH_WHOLE_COMPARE), or none. */
const COMPARE = process.env.BENCH_WHOLE_COMPARE ? (JSON.parse(process.env.BENCH_WHOLE_COMPARE) as Record<string, Record<string, unknown>>) : undefined;
const WORKERS = (process.env.BENCH_WORKERS ?? '1').split(',').map((w) => (w.trim() === 'auto' ? 'auto' : Number(w))) as (number | 'auto')[];
const DOMAIN = 'relay.bench.test';
const FROM = 'load@src.bench.test';
const NODE = process.execPath;
/** What the gateway measured inside itself over a phase; `inside` from the ingress child only. */
type PhaseStalls = LoopSnapshot & { inside?: ReplyInside };

// ---- the gateway child -------------------------------------------------------------------------

if (process.argv[2] === 'serve') {
  (await import('../src/heap.ts')).tuneHeap(); // as startGateway() does
  const [{ SmtpIngress }, { QueueManager }, { createLogger }, { validateConfig }, { LoopStats }] = await Promise.all([
    import('../src/ingress/smtp/server.ts'),
    import('../src/queue/manager.ts'),
    import('../src/log.ts'),
    import('../src/config/load.ts'),
    import('../src/ops/loopStats.ts'),
  ]);
  const settings = JSON.parse(process.env.BENCH_GATEWAY!) as { nodes: string[]; dataDir: string; log: string; workers: number; port: number };
  if (settings.workers > 1 && cluster.isPrimary) {
    // as `streamgate start` with gateway.workers: node:cluster, one queue + ingress process per
    // worker (ids bench-1 … bench-N, each a member with its own queue), one SMTP port for all
    const workers = Array.from({ length: settings.workers }, (_, i) => cluster.fork({ BENCH_GATEWAY_ID: `bench-${i + 1}` }));
    await Promise.all(workers.map((w) => once(w, 'message')));
    process.stdout.write(`${JSON.stringify({ port: settings.port })}\n`);
    process.once('SIGTERM', () => {
      void Promise.all(workers.map(async (w) => {
        const exited = once(w, 'exit');
        w.process.kill('SIGTERM');
        await exited;
      })).finally(() => process.exit(0));
    });
    await new Promise(() => {});
  }
  const id = process.env.BENCH_GATEWAY_ID ?? 'bench';
  const config = validateConfig(
    {
      gateway: { id, hostname: 'streamgate.bench.test', dataDir: settings.dataDir },
      log: { level: 'info' },
      redis: { nodes: settings.nodes },
      smtp: { listen: `127.0.0.1:${settings.port}`, maxConnectionsPerClient: 10_000, maxMessagesPerConnection: 1_000_000_000 },
      submission: { listen: '127.0.0.1:0' },
      domains: { local: [], relay: [DOMAIN] },
      networks: { trusted: [] },
    },
    'bench',
  );
  const log = createLogger({ level: process.env.BENCH_LOG_LEVEL ?? 'info', destination: createWriteStream(cluster.isWorker ? `${settings.log}.${id}` : settings.log) });
  const queues = new QueueManager(config, log);
  await queues.start();
  const ingress = new SmtpIngress({ config, queues, log });
  await ingress.start();
  const loop = new LoopStats().start();
  const inside = new ReplyGc(ingress);
  if (!cluster.isWorker) process.on('message', () => process.send!({ ...loop.take(), inside: inside.take() } satisfies PhaseStalls));
  if (cluster.isWorker) process.send!({ ready: true });
  else process.stdout.write(`${JSON.stringify({ port: ingress.address('mx').port })}\n`);
  process.once('SIGTERM', () => {
    void ingress
      .stop()
      .then(() => queues.stop())
      .finally(() => process.exit(0));
  });
  await new Promise(() => {});
}

// ---- the load generator ------------------------------------------------------------------------

function message(size: number, tag: string): Buffer {
  const head = `From: load@src.bench.test\r\nTo: someone@${DOMAIN}\r\nSubject: bench ${tag}\r\nMessage-ID: <${tag}@src.bench.test>\r\n\r\n`;
  const line = `${'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2).slice(0, 76)}\r\n`;
  const lines = Math.max(1, Math.round((size - head.length) / line.length));
  return Buffer.from(`${head}${line.repeat(lines)}.\r\n`);
}
const SMALL = message(1024, 'small');
const LARGE = message(10 * 1024, 'large');
const bodyFor = (seq: number) => (seq % 10 < 7 ? SMALL : LARGE);

interface Result {
  /** What load this was. */
  load: string;
  /** The target's own stalls during the phase (streamgate only). */
  loop?: PhaseStalls;
  accepted: number;
  refused: number;
  seconds: number;
  latencies: number[];
  /** Open loop: latency from the moment the message was due. */
  dueLatencies?: number[];
  firstRefusal?: string;
}

const pct = (xs: number[], p: number) => {
  if (!xs.length) return NaN;
  const s = Float64Array.from(xs).sort();
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

let seqBase = 0;

async function closedLoop(port: number, sessions: Session[], seconds: number): Promise<Result> {
  const res: Result = { load: `closed loop, ${seconds} s`, accepted: 0, refused: 0, seconds, latencies: [] };
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  await Promise.all(
    sessions.map(async (s) => {
      while (performance.now() < end) {
        const seq = seqBase++;
        const { reply, ms } = await s.send(FROM, `r${seq}@${DOMAIN}`, bodyFor(seq));
        if (reply.code === 250) {
          res.accepted++;
          res.latencies.push(ms);
        } else {
          res.refused++;
          res.firstRefusal ??= reply.text;
        }
      }
    }),
  );
  res.seconds = (performance.now() - t0) / 1000;
  return res;
}

async function openLoop(sessions: Session[], rate: number, seconds: number): Promise<Result> {
  const res: Result = { load: `${rate.toLocaleString('en')}/s offered, ${seconds} s`, accepted: 0, refused: 0, seconds, latencies: [], dueLatencies: [] };
  const total = Math.round(rate * seconds);
  const idle = [...sessions];
  const backlog: { seq: number; due: number }[] = [];
  const t0 = performance.now();
  let inflight = 0;
  let finished!: () => void;
  const allDone = new Promise<void>((resolve) => (finished = resolve));
  let dispatched = 0;
  const run = (s: Session, job: { seq: number; due: number }) => {
    inflight++;
    void s.send(FROM, `r${job.seq}@${DOMAIN}`, bodyFor(job.seq)).then(({ reply, ms }) => {
      inflight--;
      if (reply.code === 250) {
        res.accepted++;
        res.latencies.push(ms);
        res.dueLatencies!.push(performance.now() - job.due);
      } else {
        res.refused++;
        res.firstRefusal ??= reply.text;
      }
      const next = backlog.shift();
      if (next) run(s, next);
      else idle.push(s);
      if (dispatched === total && inflight === 0 && !backlog.length) finished();
    });
  };
  while (dispatched < total) {
    const now = performance.now();
    const dueCount = Math.min(total, Math.floor(((now - t0) / 1000) * rate) + 1);
    while (dispatched < dueCount) {
      const job = { seq: seqBase++, due: t0 + (dispatched / rate) * 1000 };
      dispatched++;
      const s = idle.pop();
      if (s) run(s, job);
      else backlog.push(job);
    }
    await sleep(1);
  }
  if (inflight === 0 && !backlog.length) finished();
  await allDone;
  res.seconds = (performance.now() - t0) / 1000;
  return res;
}

// ---- the targets -------------------------------------------------------------------------------

interface Target {
  name: string;
  port: number;
  /** The target's stalls since the previous call (streamgate only). */
  loop?: () => Promise<PhaseStalls>;
  /** After the load: where every 250 went, in one line. */
  check(accepted: number): Promise<string>;
  /** Messages at the sink since the target started (whole mode): what the relay has delivered so far. */
  delivered?: () => Promise<number>;
  /** CPU seconds used so far by each process of the target and what it depends on, by name. */
  cpu(): Map<string, number>;
  stop(): Promise<void>;
}

const TOKEN = 'bench-smtp-token-0123456789abcdef';

/** Node flags for the gateway's process, in both modes: profiles, GC trace, BENCH_GATEWAY_FLAGS. */
function gatewayFlags(): string[] {
  const flags = process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : [];
  if (process.env.BENCH_TRACE_GC) flags.push('--trace-gc');
  if (process.env.BENCH_ALLOC_PROFILE || process.env.BENCH_PROMOTED_PROFILE) flags.push('--import', join(import.meta.dirname, 'lib', 'heapProbe.ts'));
  if (process.env.BENCH_GATEWAY_FLAGS) flags.push(...process.env.BENCH_GATEWAY_FLAGS.split(/\s+/).filter(Boolean));
  return flags;
}

/** The QueueManager and the SMTP ingress alone, in a child process. */
async function startIngressGateway(dir: string, workers: number | 'auto'): Promise<Target> {
  const [{ startRedisPool }, { freePort }] = await Promise.all([import('../test/helpers/redis.ts'), import('../test/helpers/waitFor.ts')]);
  const count = workers === 'auto' ? availableParallelism() : workers;
  const ids = count > 1 ? Array.from({ length: count }, (_, i) => `bench-${i + 1}`) : ['bench'];
  const pool = await startRedisPool(3, { maxmemory: '2gb' });
  const child = spawn(NODE, [...gatewayFlags(), import.meta.filename, 'serve'], {
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    env: { ...process.env, BENCH_GATEWAY: JSON.stringify({ nodes: pool.map((r) => r.url), dataDir: join(dir, 'gateway'), log: join(dir, 'gateway.log'), workers: count, port: count > 1 ? await freePort() : 0 }) },
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (process.env.BENCH_TRACE_GC) process.stderr.write(d);
      const m = /^\{"port":(\d+)\}$/m.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`gateway exited with ${code}`)));
  });
  const nodes = pool.map((r) => new Redis({ port: r.port, host: r.host }));
  return {
    name: count > 1 ? `streamgate, ${workers === 'auto' ? `auto (${count})` : count} workers` : 'streamgate',
    port,
    cpu: () => new Map([...(count > 1 ? [['primary', procCpu(child.pid)] as const, ...childrenOf(child.pid!).map((pid, i) => [`worker ${i + 1}`, procCpu(pid)] as const)] : [['gateway', procCpu(child.pid)] as const]), ...redisCpu(pool)]),
    loop:
      count > 1
        ? undefined
        : () =>
            new Promise((resolve) => {
              child.once('message', (m) => resolve(m as PhaseStalls));
              child.send('loop');
            }),
    async check(accepted) {
      // each member's queue on its replica pair: both replicas hold every message it acknowledged
      const pairs = await Promise.all(ids.map(async (id) => (await Promise.all(nodes.map((n) => n.xlen(`sg:{${id}:${DOMAIN}}:live`)))).filter((n) => n > 0)));
      const total = pairs.reduce((a, p) => a + (p[0] ?? 0), 0);
      const ok = pairs.every((p) => p.length === 0 || (p.length === 2 && p[0] === p[1])) && total === accepted;
      return `streamgate 250s ${accepted}, live entries on the replica pair${ids.length > 1 ? ' of each member' : ''} ${pairs.map((p) => p.join(' / ')).join(', ')}: ${ok ? 'every 250 on both replicas' : 'MISMATCH'}`;
    },
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => (child.exitCode === null ? child.once('exit', resolve) : resolve(null)));
      for (const n of nodes) n.disconnect();
      await Promise.all(pool.map((r) => r.stop()));
    },
  };
}

/** The whole gateway (`streamgate start`), relaying to the sink, events on a Redis of its own, Cassandra connected. */
async function startWholeGateway(dir: string, sink: CountingSink, workers: number | 'auto', compare?: Record<string, Record<string, unknown>>): Promise<Target> {
  const [{ startRedisPool, startRedis }, { cassandraForTests }, { freePort, waitFor }] = await Promise.all([
    import('../test/helpers/redis.ts'),
    import('../test/helpers/cassandra.ts'),
    import('../test/helpers/waitFor.ts'),
  ]);
  const [pool, events, cassandra] = await Promise.all([startRedisPool(3, { maxmemory: '2gb' }), startRedis({ maxmemory: '1gb' }), cassandraForTests()]);
  const [smtpPort, opsPort] = [await freePort(), await freePort()];
  const config = {
    gateway: { id: 'bench', hostname: 'streamgate.bench.test', dataDir: join(dir, 'whole'), workers },
    log: { level: 'info', pretty: 'never' },
    smtp: { listen: `127.0.0.1:${smtpPort}`, maxConnectionsPerClient: 10_000, maxMessagesPerConnection: 1_000_000_000 },
    submission: { listen: `127.0.0.1:${await freePort()}` },
    pop3: { listen: `127.0.0.1:${await freePort()}` },
    ops: { listen: `127.0.0.1:${opsPort}`, tokens: [TOKEN] },
    redis: { nodes: pool.map((r) => r.url) },
    cassandra: { contactPoints: [cassandra.contactPoint] },
    domains: { local: ['local.bench.test'], relay: [DOMAIN] },
    networks: { trusted: [] },
    routes: { [DOMAIN]: `smtp://127.0.0.1:${sink.port}` },
    relay: { limits: { destinations: { [DOMAIN]: { connections: 20 } } } },
    events: { redis: events.url },
  };
  const extra = JSON.parse(process.env.BENCH_WHOLE_CONFIG ?? '{}') as Record<string, Record<string, unknown>>;
  for (const more of [extra, compare ?? {}]) for (const [section, value] of Object.entries(more)) Object.assign(((config as Record<string, unknown>)[section] ??= {}) as object, value);
  writeFileSync(join(dir, 'whole.yaml'), toYaml(config));
  const logFile = join(dir, 'whole.log');
  const out = openSync(logFile, 'a');
  const child = spawn(NODE, [...gatewayFlags(), join(import.meta.dirname, '..', 'src', 'cli', 'main.ts'), 'start', '--config', join(dir, 'whole.yaml')], { stdio: ['ignore', out, out] });
  closeSync(out);
  const metrics = async () => (await fetch(`http://127.0.0.1:${opsPort}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`the gateway exited: ${readFileSync(logFile, 'utf8').slice(-500)}`);
      // the summary comes once every worker is up (/health alone could be the first worker's answer)
      return /^streamgate: Ctrl-C stops/m.test(readFileSync(logFile, 'utf8')) && (await fetch(`http://127.0.0.1:${opsPort}/health`, { signal: AbortSignal.timeout(1000) }).catch(() => undefined))?.status === 200;
    },
    { timeout: 180_000, what: 'the whole gateway' },
  );
  const before = sink.received();
  const several = workers === 'auto' ? availableParallelism() > 1 : workers > 1;
  const cassandraPid = pidOnPort(cassandra.port);
  return {
    name: `${several ? `streamgate, ${workers === 'auto' ? `auto (${availableParallelism()})` : workers} workers` : 'streamgate'}${compare ? `, ${JSON.stringify(compare)}` : ''}`,
    port: smtpPort,
    cpu: () =>
      new Map([
        ...(several ? [['primary', procCpu(child.pid)] as const, ...childrenOf(child.pid!).map((pid, i) => [`worker ${i + 1}`, procCpu(pid)] as const)] : [['gateway', procCpu(child.pid)] as const]),
        ...redisCpu(pool),
        ['events redis', procCpu(events.proc.pid)],
        ['Cassandra', procCpu(cassandraPid)],
        ['sink', sink.cpu() ?? 0],
      ]),
    loop: several ? undefined : async () => {
      const text = await metrics();
      const g = (name: string, label: string) => Number(new RegExp(`^${name}\\{${label}\\} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN) * 1000;
      return {
        delay: { p50: g('streamgate_eventloop_delay_seconds', 'quantile="0.5"'), p99: g('streamgate_eventloop_delay_seconds', 'quantile="0.99"'), p999: g('streamgate_eventloop_delay_seconds', 'quantile="0.999"'), max: g('streamgate_eventloop_delay_seconds', 'quantile="1"') },
        gc: { count: g('streamgate_gc_pause_seconds', 'stat="count"') / 1000, totalMs: g('streamgate_gc_pause_seconds', 'stat="sum"'), maxMs: g('streamgate_gc_pause_seconds', 'stat="max"') },
        intervalMs: NaN,
      };
    },
    check: (accepted) => checkSink(sink, before, accepted, 'streamgate'),
    delivered: async () => sink.received() - before,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => (child.exitCode === null ? child.once('exit', resolve) : resolve(null)));
      await Promise.all([...pool, events].map((r) => r.stop()));
    },
  };
}

/** Waits (up to two minutes) for every accepted message at the sink. */
async function checkSink(sink: CountingSink, before: number, accepted: number, who: string): Promise<string> {
  const t0 = Date.now();
  let got = sink.received() - before;
  while (got < accepted && Date.now() - t0 < 120_000) {
    await sleep(250);
    got = sink.received() - before;
  }
  return `${who} 250s ${accepted}, at the sink ${got} after ${((Date.now() - t0) / 1000).toFixed(1)} s: ${got === accepted ? 'every 250 delivered' : got > accepted ? 'MORE than accepted' : 'MISSING'}`;
}

async function startPostfixTarget(dir: string, sink?: CountingSink): Promise<Target> {
  const { freePort } = await import('../test/helpers/waitFor.ts');
  const port = await freePort();
  chmodSync(dir, 0o755); // Postfix's daemons run as the postfix user
  const instance = await startPostfix({
    dir: join(dir, sink ? 'postfix-relay' : 'postfix'),
    port,
    processLimit: Math.max(100, SESSIONS * 2 + 20),
    mainCf: [
      'mynetworks = 127.0.0.255/32', // the load generator is not trusted: relaying is decided by relay_domains
      `relay_domains = ${DOMAIN}`,
      sink
        ? 'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination'
        : 'smtpd_relay_restrictions = check_client_access static:HOLD, permit_mynetworks, reject_unauth_destination',
      ...(sink ? [`transport_maps = inline:{ ${DOMAIN}=smtp:[127.0.0.1]:${sink.port} }`, 'default_destination_concurrency_limit = 20'] : []),
      `message_size_limit = ${25 * 1024 * 1024}`,
    ],
  });
  postfixes.add(instance);
  const before = sink ? sink.received() : 0;
  const master = masterPid(instance);
  return {
    name: `Postfix ${postfixVersion()}`,
    port,
    cpu: () => new Map([['Postfix', treeCpu(master)], ...(sink ? [['sink', sink.cpu() ?? 0] as const] : [])]),
    check: async (accepted) => (sink ? checkSink(sink, before, accepted, 'Postfix') : `Postfix 250s ${accepted}, hold queue ${instance.queued('hold')} files`),
    ...(sink ? { delivered: async () => sink.received() - before } : {}),
    async stop() {
      instance.stop();
      postfixes.delete(instance);
    },
  };
}

interface Measured {
  phases: Result[];
  check: string;
  /** CPU seconds per process over the measured phases, in one line. */
  cpu: string;
}

/** The pool's redis-server processes by port, for the CPU breakdown. */
const redisCpu = (pool: { port: number; proc: { pid?: number | undefined } }[]) => pool.map((r) => [`redis :${r.port}`, procCpu(r.proc.pid)] as const);

/** One reading of the CPU seconds used so far: the target's processes, this process, the machine. */
interface CpuReading {
  at: number;
  procs: Map<string, number>;
  self: number;
  machine: number;
}

function cpuReading(t: Target): CpuReading {
  const u = process.cpuUsage();
  return { at: performance.now(), procs: t.cpu(), self: (u.user + u.system) / 1e6, machine: machineCpu() };
}

/**
 * CPU seconds per process over the measured phases (each a pair of readings: the pauses between
 * them, while a backlog drains, left out), the load generator (this process) and the machine.
 */
function cpuLine(t: Target, spans: [CpuReading, CpuReading][]): string {
  const sum = (g: (r: CpuReading) => number) => spans.reduce((a, [from, to]) => a + g(to) - g(from), 0);
  const secs = sum((r) => r.at) / 1000;
  const parts = [...spans[0]![1].procs.keys()].map((name) => `${name} ${sum((r) => r.procs.get(name) ?? 0).toFixed(1)}`);
  parts.push(`load generator ${sum((r) => r.self).toFixed(1)}`);
  return `${t.name}: ${parts.join(', ')}; machine ${sum((r) => r.machine).toFixed(1)} of ${(secs * availableParallelism()).toFixed(1)} (${availableParallelism()} cores × ${secs.toFixed(1)} s)`;
}

async function measure(t: Target, warmup: number, ownMaxShare?: number): Promise<Measured> {
  // one after the other: node:cluster's primary hands each connection to the next worker free to
  // take it, so a burst of connects can land mostly on one worker (one still busy starting takes
  // few), and these sessions stay open for the whole measurement
  const sessions: Session[] = [];
  for (let i = 0; i < SESSIONS; i++) sessions.push(await Session.open(t.port));
  let accepted = 0;
  try {
    accepted += (await closedLoop(t.port, sessions, warmup)).accepted; // warm-up, not in the figures
    // Whole mode: each phase starts once everything accepted before it is at the sink (both
    // targets alike), so that a phase measures the target at its own rate, not while it still
    // delivers the backlog a closed loop left (a relay delivers less than its door accepts); the
    // backlog is printed as each phase ends. BENCH_DRAIN_BETWEEN=0: phases back to back.
    const settle = async (label: string) => {
      if (!t.delivered) return;
      const t0 = performance.now();
      let left = accepted - (await t.delivered());
      const was = left;
      while (DRAIN_BETWEEN && left > 0 && performance.now() - t0 < 180_000) {
        await sleep(200);
        left = accepted - (await t.delivered());
      }
      console.error(`bench: ${t.name}: ${label}: ${was.toLocaleString('en')} accepted not yet at the sink${DRAIN_BETWEEN ? `, ${left.toLocaleString('en')} after ${((performance.now() - t0) / 1000).toFixed(1)} s` : ''}`);
    };
    await settle('after the warm-up');
    await t.loop?.();
    const spans: [CpuReading, CpuReading][] = [];
    let from = cpuReading(t);
    const closed = await closedLoop(t.port, sessions, SECONDS);
    spans.push([from, cpuReading(t)]);
    closed.loop = await t.loop?.();
    const max = closed.accepted / closed.seconds;
    console.error(`bench: ${t.name}: closed loop ${Math.round(max)} msg/s`);
    accepted += closed.accepted;
    await settle('after the closed loop');
    const phases = [closed];
    const rates: [number, string?][] = RATES.map((r) => [r]);
    if (ownMaxShare) rates.push([Math.round(max * ownMaxShare), `${ownMaxShare * 100}% of its maximum`]);
    for (const [rate, label] of rates) {
      await t.loop?.();
      from = cpuReading(t);
      const open = await openLoop(sessions, rate, RATE_SECONDS);
      spans.push([from, cpuReading(t)]);
      open.loop = await t.loop?.();
      if (label) open.load = `${label} (${rate.toLocaleString('en')}/s), ${RATE_SECONDS} s`;
      console.error(`bench: ${t.name}: ${rate}/s offered, ${Math.round(open.accepted / open.seconds)} msg/s accepted, p99 ${pct(open.latencies, 99).toFixed(1)} ms`);
      phases.push(open);
      accepted += open.accepted;
      await settle(`after ${rate}/s`);
    }
    const cpu = cpuLine(t, spans);
    return { phases, check: await t.check(accepted), cpu };
  } finally {
    for (const s of sessions) s.close();
  }
}

// ---- the run -----------------------------------------------------------------------------------

const dir = mkdtempSync(join(tmpdir(), 'sg-bench-smtp-'));
const postfixes = new Set<PostfixInstance>();
const stops: (() => Promise<void>)[] = [];
let sink: CountingSink | undefined;
process.once('exit', () => {
  for (const p of postfixes) p.stop();
  void sink?.close(); // its SIGTERM is sent at once
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

try {
  const modes = MODE === 'both' ? ['ingress', 'whole'] : [MODE];
  if (!modes.every((m) => m === 'ingress' || m === 'whole')) throw new Error(`BENCH_MODE must be ingress, whole or both, not "${MODE}"`);
  if (!TARGETS.length || !TARGETS.every((t) => t === 'streamgate' || t === 'postfix')) throw new Error(`BENCH_TARGETS must name streamgate, postfix or both, not "${TARGETS.join(',')}"`);
  console.error(`bench: ${SESSIONS} sessions, 70% 1 KB / 30% 10 KB, ${modes.map((m) => `${WARMUP(m)} s warm-up${modes.length > 1 ? ` (${m})` : ''}`).join(', ')}, closed loop ${SECONDS} s, then ${RATES.join(', ')}/s offered for ${RATE_SECONDS} s each; ${RUNS} run(s); ${modes.join(' and ')}`);
  // results[mode][target] = one Measured per run
  const results = new Map<string, Map<string, Measured[]>>();
  for (let run = 0; run < RUNS; run++) {
    for (const mode of modes) {
      if (mode === 'whole') sink ??= await startCSink();
      const byTarget = results.get(mode) ?? new Map<string, Measured[]>();
      results.set(mode, byTarget);
      // with BENCH_WHOLE_COMPARE each streamgate target is measured twice, as configured and so changed, in turn
      const variants = mode === 'whole' && COMPARE ? (run % 2 ? [COMPARE, undefined] : [undefined, COMPARE]) : [undefined];
      const targets = [...WORKERS.flatMap((w) => variants.map((v) => ['streamgate', w, v] as const)), ['postfix', 1, undefined] as const].filter(([which]) => TARGETS.includes(which));
      for (const [which, workers, compare] of targets) {
        const t = which === 'streamgate' ? (mode === 'whole' ? await startWholeGateway(dir, sink!, workers, compare) : await startIngressGateway(dir, workers)) : await startPostfixTarget(dir, mode === 'whole' ? sink : undefined);
        stops.push(() => t.stop());
        try {
          const m = await measure(t, WARMUP(mode), which === 'streamgate' ? 0.8 : undefined);
          console.error(`bench: cpu s: ${m.cpu}`);
          byTarget.set(t.name, [...(byTarget.get(t.name) ?? []), m]);
        } finally {
          stops.pop();
          await t.stop();
        }
      }
    }
  }

  const f = (x: number) => (Number.isNaN(x) ? '-' : x.toFixed(1));
  /** A run's closed-loop rate (accepted msg/s), and the median over runs. */
  const closedRate = (r: Measured) => r.phases[0]!.accepted / r.phases[0]!.seconds;
  const rate = (ms: Measured[]) => median(ms.map(closedRate));
  for (const [mode, byTarget] of results) {
    console.log('');
    console.log(
      mode === 'ingress'
        ? `SMTP ingress alone (streamgate: queue + ingress, both replicas before 250; Postfix: queue file fsync'd, held): ${SESSIONS} sessions with PIPELINING, 70% 1 KB / 30% 10 KB`
        : `Whole gateway (streamgate start: relay to a sink, events publisher, Cassandra; Postfix relaying to the same sink): ${SESSIONS} sessions with PIPELINING, 70% 1 KB / 30% 10 KB`,
    );
    console.log(RUNS > 1 ? `median of ${RUNS} runs for each figure` : 'one run');
    console.log('');
    console.log('| target | load | accepted msg/s | p50 ms | p95 ms | p99 ms | p99.9 ms | p99 from due ms | loop delay p99 / max ms | GC pauses: n, total, longest ms | refused |');
    console.log('|---|---|---|---|---|---|---|---|---|---|---|');
    for (const [name, runs] of byTarget) {
      runs[0]!.phases.forEach((first, i) => {
        const all = runs.map((r) => r.phases[i]!);
        const m = (g: (r: Result) => number) => median(all.map(g));
        const loop = first.loop
          ? `${f(m((r) => r.loop!.delay.p99))} / ${f(m((r) => r.loop!.delay.max))}`
          : '-';
        const gc = first.loop ? `${m((r) => r.loop!.gc.count)}, ${f(m((r) => r.loop!.gc.totalMs))}, ${f(m((r) => r.loop!.gc.maxMs))}` : '-';
        const load = first.load.includes('of its maximum') ? first.load.replace(/\(\d[\d,]*\/s\)/, `(${Math.round(m((r) => Number(/\(([\d,]+)\/s\)/.exec(r.load)![1]!.replace(/,/g, '')))).toLocaleString('en')}/s)`) : first.load;
        console.log(
          `| ${name} | ${load} | ${Math.round(m((r) => r.accepted / r.seconds)).toLocaleString('en')} | ${f(m((r) => pct(r.latencies, 50)))} | ${f(m((r) => pct(r.latencies, 95)))} | ${f(m((r) => pct(r.latencies, 99)))} | ${f(m((r) => pct(r.latencies, 99.9)))} | ${first.dueLatencies ? f(m((r) => pct(r.dueLatencies!, 99))) : '-'} | ${loop} | ${gc} | ${all.reduce((a, r) => a + r.refused, 0)} |`,
        );
      });
    }
    const pf = [...byTarget].find(([name]) => name.startsWith('Postfix'))?.[1];
    for (const [name, sg] of byTarget) {
      if (!pf || name.startsWith('Postfix')) continue;
      console.log('');
      console.log(`${name} / Postfix accepted msg/s (closed loop): ${(rate(sg) / rate(pf)).toFixed(2)}x`);
      for (const i of RATES.keys()) {
        const p99 = (ms: Measured[]) => median(ms.map((r) => pct(r.phases[i + 1]!.latencies, 99)));
        console.log(`p99 at ${RATES[i]!.toLocaleString('en')}/s offered: ${name} ${f(p99(sg))} ms, Postfix ${f(p99(pf))} ms (${(p99(sg) / p99(pf)).toFixed(2)}x)`);
      }
    }
    if (mode === 'whole' && COMPARE) {
      const suffix = `, ${JSON.stringify(COMPARE)}`;
      for (const [name, changed] of byTarget) {
        const base = name.endsWith(suffix) ? byTarget.get(name.slice(0, -suffix.length)) : undefined;
        if (!base) continue;
        const pairs = base.map((b, i) => changed[i] && closedRate(b) / closedRate(changed[i]));
        console.log('');
        console.log(`what ${JSON.stringify(COMPARE)} changes (closed loop, accepted msg/s, medians of ${base.length} run(s)): ${Math.round(rate(base)).toLocaleString('en')} as configured against ${Math.round(rate(changed)).toLocaleString('en')} so changed: ${(rate(base) / rate(changed)).toFixed(2)}x (run by run: ${pairs.map((x) => (x ? x.toFixed(2) : '-')).join(', ')})`);
      }
    }
    for (const [name, runs] of byTarget) {
      if (!runs[0]!.phases.some((p) => p.loop?.inside)) continue;
      console.log('');
      console.log(`${name}, inside the gateway (end of DATA to the reply, as the ingress timed it; replies over ${SLOW_MS} ms and whether a GC pause ended within 20 ms before them or fell inside them):`);
      runs[0]!.phases.forEach((first, i) => {
        const all = runs.map((r) => r.phases[i]!.loop?.inside).filter((x): x is ReplyInside => !!x);
        if (!all.length) return;
        const m = (g: (x: ReplyInside) => number) => median(all.map(g));
        console.log(`- ${first.load}: p50 ${f(m((x) => x.p50))}, p99 ${f(m((x) => x.p99))}, p99.9 ${f(m((x) => x.p999))} ms; over ${SLOW_MS} ms ${m((x) => x.slow)} of ${m((x) => x.n)}, behind a mark-compact or its incremental marking ${m((x) => x.behindMajor)}, behind scavenges only ${m((x) => x.behindMinor)}, with no GC near ${m((x) => x.slow - x.behindMajor - x.behindMinor)}`);
      });
    }
    for (const runs of byTarget.values()) for (const r of runs) console.log(`check: ${r.check}`);
    console.log('');
    console.log('CPU seconds per process while each target was measured:');
    for (const runs of byTarget.values()) for (const r of runs) console.log(`cpu s: ${r.cpu}`);
    const refusals = [...byTarget.values()].flatMap((runs) => runs.flatMap((r) => r.phases.map((p) => p.firstRefusal))).filter(Boolean);
    if (refusals.length) console.log(`first refusals: ${[...new Set(refusals)].slice(0, 4).join(' | ')}`);
  }
  console.log('');
  console.log('latency: from the end of the message data (".") to the reply; "from due": from the moment the open loop had the message due; loop delay and GC: the gateway\'s own, measured inside it over the same phase');
} finally {
  for (const stop of stops) await stop().catch(() => {});
  for (const p of postfixes) p.stop();
  await sink?.close();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
