// Relay benchmark: end to end, from SMTP accept to an SMTP sink on loopback, with a 70% 1 KB /
// 30% 10 KB mix, in messages per second; side by side with Postfix relaying the same load to the
// same kind of sink in the same run (a private Postfix instance, bench/lib/postfix.ts: its own
// config and queue directories in a temp dir, its own loopback port, stopped afterwards; the
// system's Postfix setup and port 25 are never touched).
//
// The gateway side: SMTP ingress, replicated queue and relay in a child process of their own (as
// Postfix runs in processes of its own). The load and the sinks are Postfix's smtp-source and
// smtp-sink (bench/lib/postfixTools.ts: C programs that cost the two cores little, so the figures
// measure the systems, not the harness); BENCH_HARNESS=node puts them in this process instead
// (nodemailer clients that reconnect every 100 messages, smtp-server sinks), as the figures before
// were taken. After each measured run the CPU seconds of every process are printed. A third row
// gives the relay alone, draining a queue filled beforehand.
//
// The events path's share of the gateway's CPU at its top rate: the gateway run again with the
// lifecycle events published (an events Redis of its own) and archived into Cassandra (the event
// log, with the history trims), once with one job per event and once with events.batch; each
// run's CPU seconds per message (the whole gateway process, from the first message until every
// event is archived and published) beside the run without events. The events path's share is what
// it adds: 1 - CPU per message without / with it. The profile's share (samples with a frame of
// src/events, BullMQ or the Cassandra driver on the stack) is printed beside it: the CPU the
// events path's own code takes. The difference includes more than that: Cassandra and the events
// Redis run on the same cores, and the gateway's other code, the same in both runs, takes longer
// beside them. So each round also prints the rest of the gateway's CPU per message (outside the
// events path's frames) against the run without, which shows how much of the difference is that.
//
//   npm run bench:relay            BENCH_N=3000 (messages per side)  BENCH_CLIENTS=32 (SMTP clients)
//                                  BENCH_WARMUP=1000 (messages through each side first, not measured)
//                                  BENCH_CONNECTIONS=20 (the gateway's connections to the sink, as Postfix's default)
//                                  BENCH_EVENTS_BATCH=100 (events.batch of the batched run; 0 skips the events runs)
//                                  BENCH_EVENTS_SINGLE=1 (0 skips the run with one job per event: quicker rounds)
//                                  BENCH_PROFILE=dir (each gateway run's CPU profile written there)
//                                  BENCH_RUNS=1 (rounds of the gateway runs without and with the events path;
//                                  the events path's shares are printed per round and as medians)
//                                  BENCH_WORKERS=auto|N (a row more: the whole gateway as deployed, `streamgate
//                                  start` with gateway.workers, events published and archived into Cassandra)
//                                  BENCH_HARNESS=c|node (load and sinks: Postfix's smtp-source and smtp-sink, or
//                                  nodemailer and smtp-server in this process)
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { silentLogger } from '../src/log.ts';
import { SmtpIngress } from '../src/ingress/smtp/server.ts';
import { QueueManager } from '../src/queue/manager.ts';
import { Relay } from '../src/relay/relay.ts';
import { testConfig } from '../test/helpers/config.ts';
import { startRedisPool } from '../test/helpers/redis.ts';
import { startSmtpSink } from '../test/helpers/smtpSink.ts';
import { smtpSource, startCSink, type CountingSink } from './lib/postfixTools.ts';
import { freePort, waitFor } from '../test/helpers/waitFor.ts';
import { masterPid, postfixVersion, startPostfix, type PostfixInstance } from './lib/postfix.ts';
import { lowestCursor, newMessageId } from '../src/message/ids.ts';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { HistoryArchive } from '../src/events/archive.ts';
import { EventPublisher } from '../src/events/publisher.ts';
import { MailStore } from '../src/mailbox/store.ts';
import { HistoryBudget } from '../src/queue/historyBudget.ts';
import { cassandraForTests } from '../test/helpers/cassandra.ts';
import { startRedis } from '../test/helpers/redis.ts';
import { StageProfiler, stackShare } from './lib/stages.ts';
import { startGatewayProcess } from './lib/gatewayProcess.ts';
import { childrenOf, machineCpu, pidOnPort, procCpu, treeCpu } from './lib/cpu.ts';
import { median } from './lib/stats.ts';
import { tuneHeap } from '../src/heap.ts';
import { availableParallelism } from 'node:os';

const N = Number(process.env.BENCH_N ?? 3000);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 32);
/** Connections to the sink: Postfix's default per destination (default_destination_concurrency_limit). */
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 20);
const DOMAIN = 'bench.test';
const EVENTS_BATCH = Number(process.env.BENCH_EVENTS_BATCH ?? 100);
/** Whether each round also runs the events path with one job per event (events.batch off). */
const EVENTS_SINGLE = process.env.BENCH_EVENTS_SINGLE !== '0';
/**
 * Messages sent through each target end to end before it is measured, not counted (as bench:smtp
 * warms each target up): a process just started runs its first thousands of messages through
 * code not yet compiled, which a gateway in service has long left behind. Postfix gets the same.
 */
const WARMUP = Number(process.env.BENCH_WARMUP ?? 1000);
/** Rounds of the gateway runs (without the events path, with it, batched): the shares' medians over them. */
const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 1));
/** gateway.workers of the whole gateway's row ("auto" or a number); unset: no such row. */
const WORKERS = process.env.BENCH_WORKERS;
/** The load and the sinks: Postfix's smtp-source and smtp-sink (C), or nodemailer and smtp-server in this process. */
const HARNESS: 'c' | 'node' = process.env.BENCH_HARNESS === 'node' ? 'node' : 'c';
/** Source paths of the events path, for the profile's share, and of its parts. */
const EVENTS_PATH = /\/src\/events\/|\/bullmq\/|\/cassandra-driver\/|\/src\/queue\/historyBudget/;
const EVENTS_PARTS: [string, RegExp][] = [
  ['archive', /\/src\/events\/archive|\/cassandra-driver\//],
  ['publisher', /\/src\/events\/publisher|\/bullmq\//],
  ['history trims', /\/src\/queue\/historyBudget/],
];

function message(i: number): Buffer {
  const size = i % 10 < 7 ? 1024 : 10 * 1024;
  const head = `From: <load@src.test>\r\nTo: <r${i}@${DOMAIN}>\r\nSubject: bench ${i}\r\nMessage-ID: <b${i}.${Date.now()}@src.test>\r\nX-Bench-Id: ${i}\r\n\r\n`;
  const line = 'The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuv\r\n'; // 80 bytes
  let body = '';
  while (head.length + body.length + line.length <= size) body += line;
  return Buffer.from(head + body + 'x'.repeat(Math.max(0, size - head.length - body.length - 2)) + '\r\n');
}

/** What a load run did: messages refused at SMTP, the CPU seconds of a load generator of its own (the C harness). */
interface Injected {
  failed: number;
  cpu?: number;
}

/**
 * Sends `count` messages over SMTP with CLIENTS sessions, resolves when all are accepted: with
 * smtp-source, 70% of the sessions send messages of 1 KB and 30% of 10 KB (each about that size
 * with its headers), each session one connection; or with nodemailer in this process.
 */
async function inject(port: number, count = N): Promise<Injected> {
  if (HARNESS === 'node') return { failed: await injectNode(port, count) };
  const small = Math.round(count * 0.7);
  const smallSessions = Math.max(1, Math.round(CLIENTS * 0.7));
  return {
    failed: 0,
    ...(await smtpSource(
      port,
      [
        { sessions: smallSessions, messages: small, payload: 900 },
        { sessions: Math.max(1, CLIENTS - smallSessions), messages: count - small, payload: 10_100 },
      ],
      { from: 'load@src.test', to: `r@${DOMAIN}`, helo: 'load.src.test' },
    )),
  };
}

/** The sinks of this run's harness (see HARNESS). */
async function startSink(): Promise<CountingSink> {
  if (HARNESS === 'c') return startCSink();
  const s = await startSmtpSink({ hideStartTls: true });
  return { port: s.port, received: () => s.messages.length, cpu: () => undefined, close: () => s.close() };
}

/** A reading of a process's (or a process tree's) CPU seconds, undefined when it has none of its own. */
type CpuReader = [name: string, read: () => number | undefined];
const pidCpu = (name: string, pid: number | undefined): CpuReader => [name, () => procCpu(pid)];

/**
 * CPU seconds per process from now until the returned function is called, with the load
 * generator's (the C harness: what its runs used; the node harness: this process, its load and
 * sinks) and the machine's (all cores).
 */
function cpuSpan(readers: CpuReader[]): (load: Injected) => string {
  const read = () => readers.map(([k, r]) => [k, r()] as const);
  const self = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  };
  const [p0, m0, s0, t0] = [read(), machineCpu(), self(), performance.now()];
  return (load) => {
    const secs = (performance.now() - t0) / 1000;
    const parts = read().flatMap(([k, v], i) => (v === undefined ? [] : [`${k} ${(v - (p0[i]![1] ?? 0)).toFixed(1)}`]));
    if (HARNESS === 'c') parts.push(`load generator ${(load.cpu ?? 0).toFixed(1)}`);
    else parts.push(`load generator and sinks (this process) ${(self() - s0).toFixed(1)}`);
    const cores = availableParallelism();
    return `cpu s: ${parts.join(', ')}; machine ${(machineCpu() - m0).toFixed(1)} of ${(secs * cores).toFixed(1)} (${cores} cores × ${secs.toFixed(1)} s)`;
  };
}

/** Sends `count` messages over SMTP with CLIENTS connections (nodemailer), resolves when all are accepted. */
async function injectNode(port: number, count: number): Promise<number> {
  let next = 0;
  let failed = 0;
  const client = async () => {
    let conn: SMTPConnection | undefined;
    let sent = 0;
    const open = async () => {
      conn = new SMTPConnection({ host: '127.0.0.1', port, ignoreTLS: true, name: 'load.src.test', socketTimeout: 60_000 });
      conn.on('error', () => {});
      await new Promise<void>((res, rej) => {
        conn!.once('error', rej);
        conn!.connect(() => res());
      });
      sent = 0;
    };
    await open();
    while (next < count) {
      const i = next++;
      if (sent >= 100) {
        conn!.quit();
        await open();
      }
      const ok = await new Promise<boolean>((res) => conn!.send({ from: 'load@src.test', to: [`r${i}@${DOMAIN}`] }, message(i), (err) => res(!err)));
      sent++;
      if (!ok) failed++;
    }
    conn!.quit();
  };
  await Promise.all(Array.from({ length: CLIENTS }, client));
  return failed;
}

interface Figure {
  name: string;
  msgs: number;
  seconds: number;
  injectSeconds: number;
  note: string;
  /** The gateway process's CPU ms per message, and the profile's share of the events path. */
  cpuPerMsg?: number;
  profileShare?: number;
  parts?: Record<string, number>;
  /** Queue script calls (EVALSHA) on one replica per message: the group commit's batches. */
  scriptsPerMsg?: number;
  /** CPU seconds per process while it was measured (cpuSpan()). */
  cpu?: string;
}

/** Calls per Redis command summed over the nodes at `urls` (INFO commandstats). */
async function commandCalls(urls: string[]): Promise<Map<string, number>> {
  const calls = new Map<string, number>();
  for (const url of urls) {
    const r = new Redis(url);
    try {
      for (const [, cmd, n] of (await r.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(cmd!, (calls.get(cmd!) ?? 0) + Number(n));
    } finally {
      r.disconnect();
    }
  }
  return calls;
}

/** Per message, what the pool's nodes served between two readings of commandCalls(): all commands, then the most called. */
function callsPerMessage(before: Map<string, number>, after: Map<string, number>, msgs: number): string {
  const d = [...after].map(([k, v]) => [k, (v - (before.get(k) ?? 0)) / msgs] as const).filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1]);
  const total = d.reduce((a, [, v]) => a + v, 0);
  return `${total.toFixed(2)} (${d.slice(0, 6).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')})`;
}

/** EVALSHA calls a Redis node has served. */
const scriptCalls = async (url: string) => (await commandCalls([url])).get('evalsha') ?? 0;

/** The events path of a gateway run: published to an events Redis, archived into Cassandra, batched or not. */
interface EventsSetting {
  redis: string;
  contactPoint: string;
  keyspace: string;
  batch: number | false;
}

interface ChildStatus {
  cpuMs: number;
  emitted: number;
  archived: number;
  sent: number;
  share: number;
  /** The profile's share per part of the events path. */
  parts: Record<string, number>;
}

/** The warm-up (WARMUP messages through the target, all of them at the sink), before a measured run. */
async function warmUp(port: number, sink: CountingSink, what: string): Promise<void> {
  if (!WARMUP) return;
  const before = sink.received();
  const { failed } = await inject(port, WARMUP);
  await waitFor(() => sink.received() - before >= WARMUP - failed, { timeout: 600_000, every: 20, what: `${what}: the warm-up at the sink` });
}

/**
 * The gateway runs in a child process of its own (QueueManager, relay, SMTP ingress), as Postfix
 * runs in processes of its own: the load generator and the sink stay in this process for both.
 */
async function runGateway(sink: CountingSink, name = 'streamgate', events?: Omit<EventsSetting, 'redis'> & { cassandraPid: number | undefined }): Promise<Figure> {
  const pool = await startRedisPool(2);
  const eventsRedis = events ? await startRedis({ maxmemory: '1gb' }) : undefined;
  const port = await freePort();
  const settings = { nodes: pool.map((r) => r.url), sinkPort: sink.port, port, ...(events ? { events: { ...events, redis: eventsRedis!.url } } : {}) };
  const child = spawn(process.execPath, [import.meta.filename, 'serve'], { env: { ...process.env, BENCH_GATEWAY: JSON.stringify(settings) }, stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const ask = (cmd: string) => new Promise<ChildStatus>((resolve) => {
    child.once('message', (m) => resolve(m as ChildStatus));
    child.send(cmd);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => (d.toString().includes('ready') ? resolve() : undefined));
      child.once('exit', (code) => reject(new Error(`gateway exited with ${code}`)));
    });
    // every event archived and published, so far
    const eventsDone = (what: string) => waitFor(async () => { const st = await ask('status'); return st.archived >= st.emitted && st.sent >= st.emitted; }, { timeout: 600_000, every: 100, what });
    await warmUp(port, sink, name);
    if (events) await eventsDone('the warm-up\'s events archived and published');
    const before = sink.received();
    const c0 = await scriptCalls(pool[0]!.url);
    const s0 = await ask('start');
    const span = cpuSpan([
      pidCpu('gateway', child.pid),
      ...pool.map((r) => pidCpu(`redis :${r.port}`, r.proc.pid)),
      ...(events ? [pidCpu('events redis', eventsRedis!.proc.pid), pidCpu('Cassandra', events.cassandraPid)] : []),
      ['sink', () => sink.cpu()],
    ]);
    const t0 = Date.now();
    const load = await inject(port);
    const { failed } = load;
    const injected = Date.now();
    await waitFor(() => sink.received() - before >= N - failed, { timeout: 600_000, every: 20, what: 'gateway: all at the sink' });
    const t1 = Date.now();
    // the CPU counted runs until the events path has caught up with every event of the run
    if (events) await eventsDone('events archived and published');
    const cpu = span(load);
    const s1 = await ask('stop');
    const c1 = await scriptCalls(pool[0]!.url);
    const how = events ? `, events published (${events.batch ? `events.batch ${events.batch}` : 'one job per event'}) and archived into Cassandra` : ', no events path';
    const note = `SMTP ingress → replicated queue (2 Redis nodes) → relay → sink, the gateway in its own process${how}${failed ? ` (${failed} refused at SMTP)` : ''}`;
    return { name, msgs: N, seconds: (t1 - t0) / 1000, injectSeconds: (injected - t0) / 1000, note, cpuPerMsg: (s1.cpuMs - s0.cpuMs) / N, profileShare: s1.share, parts: s1.parts, scriptsPerMsg: (c1 - c0) / N, cpu };
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode === null ? child.once('exit', r) : r(null)));
    await Promise.all([...pool, ...(eventsRedis ? [eventsRedis] : [])].map((r) => r.stop()));
  }
}

if (process.argv[2] === 'serve') {
  tuneHeap(); // as startGateway() does
  const settings = JSON.parse(process.env.BENCH_GATEWAY!) as { nodes: string[]; sinkPort: number; port: number; events?: EventsSetting };
  const ev = settings.events;
  const config = testConfig({
    gateway: { id: 'bench-gw', hostname: 'gw.bench.test', dataDir: mkdtempSync(join(tmpdir(), 'sg-bench-relay-')) },
    redis: { nodes: settings.nodes },
    routes: { [DOMAIN]: `smtp://127.0.0.1:${settings.sinkPort}` },
    relay: { limits: { destinations: { [DOMAIN]: { connections: CONNECTIONS } } } },
    domains: { local: [], relay: [DOMAIN] },
    // smtp-source sends all of a session's messages over one connection
    smtp: { listen: `127.0.0.1:${settings.port}`, maxMessagesPerConnection: 1_000_000_000 },
    submission: { listen: '127.0.0.1:0' },
    ...(ev ? { events: { redis: ev.redis, batch: ev.batch }, cassandra: { contactPoints: [ev.contactPoint], keyspace: ev.keyspace } } : {}),
  });
  const qm = new QueueManager(config, silentLogger, { archived: !!ev });
  await qm.start();
  const relay = new Relay(qm, config, silentLogger);
  relay.start();
  // the events path as src/app.ts wires it: publisher, event log, history trims
  let emitted = 0;
  qm.on('event', () => emitted++);
  const conn = ev ? new Redis(ev.redis, { maxRetriesPerRequest: null }) : undefined;
  const publisher = conn ? new EventPublisher(qm, config.events.queue, conn, silentLogger, { budget: config.events.budget, whenFull: config.events.whenFull, dedicated: true, batch: config.events.batch }) : undefined;
  await publisher?.start();
  const store = ev ? new MailStore(config, silentLogger) : undefined;
  await store?.connect();
  const archive = store ? new HistoryArchive(qm, store, config, silentLogger) : undefined;
  archive?.start();
  const history = archive && publisher ? new HistoryBudget(qm, config.queue.historyBudget, (d) => lowestCursor(publisher.cursorOf(d), archive.cursorOf(d)), silentLogger, { capTo: config.queue.historyMaxLength }) : undefined;
  if (history) archive!.on('archived', (d: string) => void history.cap(d));
  history?.start();
  const ingress = new SmtpIngress({ config, queues: qm, log: silentLogger });
  await ingress.start();
  const profiler = new StageProfiler();
  const cpuMs = () => {
    const c = process.cpuUsage();
    return (c.user + c.system) / 1000;
  };
  process.on('message', (cmd: string) => {
    void (async () => {
      let share = 0;
      const parts: Record<string, number> = {};
      if (cmd === 'start') await profiler.start();
      if (cmd === 'stop') {
        const profile = await profiler.stopProfile(process.env.BENCH_PROFILE ? join(process.env.BENCH_PROFILE, `relay-gateway-${ev ? (ev.batch ? `batch-${ev.batch}` : 'events') : 'no-events'}.cpuprofile`) : undefined);
        share = stackShare(profile, EVENTS_PATH);
        for (const [name, re] of EVENTS_PARTS) parts[name] = stackShare(profile, re);
      }
      process.send!({ cpuMs: cpuMs(), emitted, archived: archive?.status().archived ?? 0, sent: publisher?.sent ?? 0, share, parts } satisfies ChildStatus);
    })();
  });
  process.once('SIGTERM', () => {
    void (async () => {
      await ingress.stop();
      await relay.stop();
      history?.stop();
      await archive?.stop();
      await publisher?.stop();
      conn?.disconnect();
      await qm.stop();
      await store?.close();
      process.exit(0);
    })();
  });
  console.log('ready');
  await new Promise(() => {}); // serve until SIGTERM
}

async function runPostfix(sink: CountingSink): Promise<Figure | string> {
  let pf: PostfixInstance;
  const port = await freePort();
  try {
    pf = await startPostfix({
      dir: mkdtempSync(join(tmpdir(), 'sg-bench-postfix-')),
      port,
      mainCf: [
        `relay_domains = ${DOMAIN}`,
        'mynetworks = 127.0.0.0/8',
        `transport_maps = inline:{ ${DOMAIN}=smtp:[127.0.0.1]:${sink.port} }`,
        'smtpd_relay_restrictions = permit_mynetworks, reject',
        'smtpd_recipient_restrictions = permit_mynetworks, reject',
        'local_recipient_maps =',
      ],
    });
  } catch (err) {
    return (err as Error).message;
  }
  try {
    await warmUp(port, sink, 'postfix');
    const before = sink.received();
    const master = masterPid(pf);
    const span = cpuSpan([['Postfix', () => treeCpu(master)], ['sink', () => sink.cpu()]]);
    const t0 = Date.now();
    const load = await inject(port);
    const { failed } = load;
    const injected = Date.now();
    await waitFor(() => sink.received() - before >= N - failed, { timeout: 600_000, every: 20, what: 'postfix: all at the sink' });
    const t1 = Date.now();
    return { name: 'postfix', msgs: N, seconds: (t1 - t0) / 1000, injectSeconds: (injected - t0) / 1000, note: `Postfix ${postfixVersion()}, private instance, default limits (20 connections per destination), disk queue${failed ? `, ${failed} refused` : ''}`, cpu: span(load) };
  } catch (err) {
    return `postfix run failed: ${(err as Error).message.split('\n')[0]}`;
  } finally {
    pf.stop();
  }
}

/**
 * The whole gateway as it is deployed: `streamgate start` with gateway.workers (each worker a
 * process with its own queues, sharing the SMTP listener), three Redis nodes, the events Redis,
 * the event log in Cassandra; relaying to the sink over CONNECTIONS connections per worker. The
 * CPU is the gateway's process tree (the primary and its workers).
 */
async function runWholeGateway(sink: CountingSink, workers: string): Promise<Figure> {
  const pool = await startRedisPool(3);
  const eventsRedis = await startRedis({ maxmemory: '1gb' });
  const cassandra = await cassandraForTests();
  const keyspace = `sg_bench_relay_${randomBytes(3).toString('hex')}`;
  const n = workers === 'auto' ? 'auto' : Number(workers);
  const gp = await startGatewayProcess('bench-relay', {
    poolUrls: pool.map((r) => r.url),
    eventsUrl: eventsRedis.url,
    token: 'bench-relay-token-0123456789abcdef',
    config: {
      gateway: { workers: n },
      routes: { [DOMAIN]: `smtp://127.0.0.1:${sink.port}` },
      relay: { limits: { destinations: { [DOMAIN]: { connections: CONNECTIONS } } } },
      domains: { local: [], relay: [DOMAIN] },
      smtp: { maxConnectionsPerClient: 10_000, maxMessagesPerConnection: 1_000_000_000 },
      cassandra: { contactPoints: [cassandra.contactPoint], keyspace },
      events: { archive: true },
    },
  });
  const name = `workers ${n === 'auto' ? `auto (${availableParallelism()})` : n}`;
  try {
    await warmUp(gp.smtpPort, sink, name);
    const before = sink.received();
    // the CPU of each process: the primary, each worker (its children)
    const procs = () => new Map([[`primary`, gp.gw.pid!], ...childrenOf(gp.gw.pid!).map((pid, i) => [`worker ${i + 1}`, pid] as const)]);
    const per0 = new Map([...procs()].map(([k, pid]) => [k, procCpu(pid)]));
    const cpu0 = treeCpu(gp.gw.pid);
    const span = cpuSpan([
      ...[...procs()].map(([k, pid]) => pidCpu(k, pid)),
      ...pool.map((r) => pidCpu(`redis :${r.port}`, r.proc.pid)),
      pidCpu('events redis', eventsRedis.proc.pid),
      pidCpu('Cassandra', pidOnPort(cassandra.port)),
      ['sink', () => sink.cpu()],
    ]);
    const calls0 = await commandCalls(pool.map((r) => r.url));
    const t0 = Date.now();
    const load = await inject(gp.smtpPort);
    const { failed } = load;
    const injected = Date.now();
    await waitFor(() => sink.received() - before >= N - failed, { timeout: 600_000, every: 20, what: `${name}: all at the sink` });
    const t1 = Date.now();
    const cpu = span(load);
    const cpuPerMsg = ((treeCpu(gp.gw.pid) - cpu0) * 1000) / N;
    const per = [...procs()].map(([k, pid]) => `${k} ${((1e6 * (procCpu(pid) - (per0.get(k) ?? 0))) / N).toFixed(0)} µs`).join(', ');
    const calls = callsPerMessage(calls0, await commandCalls(pool.map((r) => r.url)), N);
    const note = `the whole gateway (streamgate start, gateway.workers ${n}): SMTP ingress → replicated queue (3 Redis nodes) → relay → sink, events published and archived into Cassandra; CPU per message: ${per}; Redis commands per message over the pool's three nodes: ${calls}${failed ? ` (${failed} refused at SMTP)` : ''}`;
    return { name, msgs: N, seconds: (t1 - t0) / 1000, injectSeconds: (injected - t0) / 1000, note, cpuPerMsg, cpu };
  } finally {
    await gp.stop();
    await Promise.all([...pool, eventsRedis].map((r) => r.stop()));
    await dropKeyspace(cassandra.contactPoint, keyspace);
  }
}

/** A run's keyspace in the shared test Cassandra, gone once the run is measured. */
async function dropKeyspace(contactPoint: string, keyspace: string): Promise<void> {
  const s = new MailStore(testConfig({ cassandra: { contactPoints: [contactPoint], keyspace } }), silentLogger);
  await s.client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`).catch(() => {});
  await s.close();
}

/** The relay alone: N messages already queued, then the relay started; time until all are at the sink. */
async function runRelayOnly(sink: CountingSink): Promise<Figure> {
  const pool = await startRedisPool(2);
  const config = testConfig({
    gateway: { id: 'bench-drain' },
    redis: { nodes: pool.map((r) => r.url) },
    routes: { [DOMAIN]: `smtp://127.0.0.1:${sink.port}` },
    relay: { limits: { destinations: { [DOMAIN]: { connections: CONNECTIONS } } } },
  });
  const qm = new QueueManager(config, silentLogger);
  await qm.start();
  let next = 0;
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (next < N) {
        const i = next++;
        await qm.append({ id: newMessageId(), domain: DOMAIN, envelope: { from: 'load@src.test', to: [`r${i}@${DOMAIN}`] }, raw: message(i) });
      }
    }),
  );
  const t0 = Date.now();
  const relay = new Relay(qm, config, silentLogger);
  relay.start();
  await waitFor(() => sink.received() >= N && qm.depth(DOMAIN).inflight === 0, { timeout: 600_000, every: 10, what: 'drain' });
  const t1 = Date.now();
  await relay.stop();
  await qm.stop();
  await Promise.all(pool.map((r) => r.stop()));
  return { name: 'relay only', msgs: N, seconds: (t1 - t0) / 1000, injectSeconds: 0, note: `queue already full → relay (take, deliver, settle on 2 replicas) → sink, ${CONNECTIONS} connections` };
}

const drainSink = await startSink();
const drain = await runRelayOnly(drainSink);
await drainSink.close();
const gwSink = await startSink();
const pfSink = await startSink();
const harness = HARNESS === 'c' ? `Postfix's smtp-source (${CLIENTS} sessions, one connection each, 70% of them sending 1 KB messages, 30% 10 KB) and smtp-sink` : `${CLIENTS} nodemailer clients (70% 1 KB / 30% 10 KB, reconnecting every 100 messages) and smtp-server sinks, in this process`;
console.log(`relay benchmark: ${N} messages per side; load and sinks: ${harness}, on loopback; each side measured after ${WARMUP} messages through it end to end (BENCH_WARMUP)`);
// each round: the gateway without the events path, then with it, one job per event and batched
const rounds: { gw: Figure; withEvents: Figure[] }[] = [];
const cassandra = EVENTS_BATCH ? await cassandraForTests() : undefined;
const withEventsRun = async (batch: number | false): Promise<Figure> => {
  const keyspace = `sg_bench_relay_${randomBytes(3).toString('hex')}`;
  const f = await runGateway(gwSink, batch ? `+ events, batch ${batch}` : '+ events', { contactPoint: cassandra!.contactPoint, keyspace, batch, cassandraPid: pidOnPort(cassandra!.port) });
  await dropKeyspace(cassandra!.contactPoint, keyspace);
  return f;
};
const batches: (number | false)[] = cassandra ? (EVENTS_SINGLE ? [false, EVENTS_BATCH] : [EVENTS_BATCH]) : [];
for (let r = 0; r < RUNS; r++) {
  // every other round runs the events path first: a drift of the machine over a round (Cassandra's
  // compactions of the run before, another tenant) weighs on either side alike over the rounds
  const eventsFirst = r % 2 === 1;
  const withEvents: Figure[] = [];
  if (eventsFirst) for (const b of batches) withEvents.push(await withEventsRun(b));
  const gw = await runGateway(gwSink);
  if (!eventsFirst) for (const b of batches) withEvents.push(await withEventsRun(b));
  rounds.push({ gw, withEvents });
}
const { gw, withEvents } = rounds[0]!;
const whole = WORKERS ? await runWholeGateway(gwSink, WORKERS) : undefined;
const pf = await runPostfix(pfSink);
await Promise.all([gwSink.close(), pfSink.close()]);

const row = (f: Figure) =>
  `${f.name.padEnd(11)} ${String(f.msgs).padStart(6)}  ${f.seconds.toFixed(2).padStart(7)} s  ${(f.msgs / f.seconds).toFixed(0).padStart(7)} msg/s  (accepted in ${f.injectSeconds.toFixed(2)} s)  ${f.note}`;
console.log(`${'system'.padEnd(11)} ${'msgs'.padStart(6)}  ${'time'.padStart(9)}  ${'rate'.padStart(13)}`);
console.log(row(gw));
for (const f of withEvents) console.log(row(f));
if (whole) console.log(row(whole));
console.log(row(drain));
if (typeof pf === 'string') console.log(`postfix     ${pf}`);
else {
  console.log(row(pf));
  console.log(`streamgate / postfix: ${(pf.seconds / gw.seconds).toFixed(2)}×`);
  if (whole) console.log(`streamgate, ${whole.name} (the whole gateway) / postfix: ${(pf.seconds / whole.seconds).toFixed(2)}×; the gateway's processes ${(whole.cpuPerMsg! * 1000).toFixed(0)} µs of CPU per message`);
}
console.log('CPU seconds per process while each was measured:');
for (const f of [gw, ...withEvents, ...(whole ? [whole] : []), ...(typeof pf === 'string' ? [] : [pf])]) if (f.cpu) console.log(`  ${f.name}: ${f.cpu}`);
const rate = (f: Figure) => f.msgs / f.seconds;
/** CPU ms per message outside the events path's frames (the profile's share of the run taken off). */
const restPerMsg = (f: Figure) => f.cpuPerMsg! * (1 - (f.profileShare ?? 0));
const signed = (x: number) => `${x >= 0 ? '+' : '−'}${Math.abs(100 * x).toFixed(1)}%`;
if (withEvents.length) {
  console.log(`events path, the gateway's CPU at its top rate (${CLIENTS} clients, closed loop; CPU of the whole gateway process per message, until every event was archived and published):`);
  rounds.forEach(({ gw: g, withEvents: we }, r) => {
    if (RUNS > 1) console.log(` round ${r + 1}:`);
    console.log(`  no events path: ${(g.cpuPerMsg! * 1000).toFixed(0)} µs per message, ${rate(g).toFixed(0)} msg/s, ${g.scriptsPerMsg!.toFixed(2)} queue scripts per message on a replica`);
    for (const f of we) {
      const share = 1 - g.cpuPerMsg! / f.cpuPerMsg!;
      console.log(`  ${f.name.replace(/^\+ /, '')}: ${(f.cpuPerMsg! * 1000).toFixed(0)} µs per message; the events path ${(100 * share).toFixed(1)}% of the gateway's CPU (profile, on the stack: ${(100 * f.profileShare!).toFixed(1)}%: ${Object.entries(f.parts!).map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`).join(', ')}); ${rate(f).toFixed(0)} msg/s against ${rate(g).toFixed(0)} without, ${f.scriptsPerMsg!.toFixed(2)} queue scripts per message (aim: under 10%)`);
      console.log(`    the rest of the gateway (outside the events path's frames): ${(restPerMsg(f) * 1000).toFixed(0)} µs per message against ${(restPerMsg(g) * 1000).toFixed(0)} without (${signed(restPerMsg(f) / restPerMsg(g) - 1)}: the same code, beside Cassandra and the events Redis on the same cores)`);
    }
  });
  if (RUNS > 1) {
    console.log(` medians of ${RUNS} rounds:`);
    console.log(`  no events path: ${(median(rounds.map((x) => x.gw.cpuPerMsg!)) * 1000).toFixed(0)} µs per message, ${median(rounds.map((x) => rate(x.gw))).toFixed(0)} msg/s`);
    withEvents.forEach((f, i) => {
      const runs = rounds.map((x) => ({ g: x.gw, f: x.withEvents[i]! }));
      const share = median(runs.map((x) => 1 - x.g.cpuPerMsg! / x.f.cpuPerMsg!));
      const own = median(runs.map((x) => x.f.profileShare!));
      const rest = median(runs.map((x) => restPerMsg(x.f) / restPerMsg(x.g) - 1));
      console.log(`  ${f.name.replace(/^\+ /, '')}: ${(median(runs.map((x) => x.f.cpuPerMsg!)) * 1000).toFixed(0)} µs per message; the events path ${(100 * share).toFixed(1)}% of the gateway's CPU (the median of the rounds' shares), its own code ${(100 * own).toFixed(1)}% (the median of the profiles' shares), the rest of the gateway ${signed(rest)} against the run without; ${median(runs.map((x) => rate(x.f))).toFixed(0)} msg/s (aim: under 10%)`);
    });
  }
}
process.exit(0);
