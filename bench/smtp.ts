// npm run bench:smtp — accepted messages per second and reply latency of the SMTP ingress, with
// both replicas written before every 250, beside Debian's Postfix on the same machine in the same
// run under the same load.
//
// The load: N sessions (BENCH_SESSIONS, default 32), each one connection reused for every message
// and PIPELINING the envelope (MAIL, RCPT and DATA in one write), messages of 1 KB (70%) and
// 10 KB (30%), as in the gateway paper. Reply latency is the time from the end of the message data
// (the final "." line) to the reply. Two runs per target:
//   1. closed loop: every session sends its next message as soon as it has the reply, for
//      BENCH_SECONDS (default 10): the most the target accepts;
//   2. open loop: BENCH_RATE messages per second offered (default 1000) for BENCH_RATE_SECONDS
//      (default 10), spread over the same sessions; also the latency from the moment a message was
//      due (so queueing in the generator counts too).
//
// streamgate: three redis-server processes (a replica pair and the spare) and a gateway child
// process (the QueueManager and the SMTP ingress; logging at info to a file, as Postfix logs to
// its maillog), relay domain relay.bench.test, the client untrusted.
// Postfix: an instance of its own (bench/lib/postfix.ts: config_directory, queue_directory and data_directory in a temp
// dir, its own loopback port, nothing of the system's Postfix or port 25 touched), installed with
// apt-get when missing, relaying for relay.bench.test with the client outside mynetworks; each
// accepted message is put on its hold queue (check_client_access static:HOLD), so that Postfix,
// like the gateway here, stores it durably and replies but does not try to deliver it. It is
// stopped and removed at the end, also when the benchmark fails.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { postfixVersion, startPostfix, type PostfixInstance } from './lib/postfix.ts';
import { SmtpSession as Session } from './lib/smtpSession.ts';

const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 32);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const RATE = Number(process.env.BENCH_RATE ?? 1000);
const RATE_SECONDS = Number(process.env.BENCH_RATE_SECONDS ?? 10);
const DOMAIN = 'relay.bench.test';
const FROM = 'load@src.bench.test';
const NODE = process.execPath;

// ---- the gateway child -------------------------------------------------------------------------

if (process.argv[2] === 'serve') {
  const [{ SmtpIngress }, { QueueManager }, { createLogger }, { validateConfig }] = await Promise.all([
    import('../src/ingress/smtp/server.ts'),
    import('../src/queue/manager.ts'),
    import('../src/log.ts'),
    import('../src/config/load.ts'),
  ]);
  const settings = JSON.parse(process.env.BENCH_GATEWAY!) as { nodes: string[]; dataDir: string; log: string };
  const config = validateConfig(
    {
      gateway: { id: 'bench', hostname: 'streamgate.bench.test', dataDir: settings.dataDir },
      log: { level: 'info' },
      redis: { nodes: settings.nodes },
      smtp: { listen: '127.0.0.1:0', maxConnectionsPerClient: 10_000, maxMessagesPerConnection: 1_000_000_000 },
      submission: { listen: '127.0.0.1:0' },
      domains: { local: [], relay: [DOMAIN] },
      networks: { trusted: [] },
    },
    'bench',
  );
  const log = createLogger({ level: process.env.BENCH_LOG_LEVEL ?? 'info', destination: createWriteStream(settings.log) });
  const queues = new QueueManager(config, log);
  await queues.start();
  const ingress = new SmtpIngress({ config, queues, log });
  await ingress.start();
  process.stdout.write(`${JSON.stringify({ port: ingress.address('mx').port })}\n`);
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
  const res: Result = { accepted: 0, refused: 0, seconds, latencies: [] };
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
  const res: Result = { accepted: 0, refused: 0, seconds, latencies: [], dueLatencies: [] };
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

async function measure(name: string, port: number): Promise<{ closed: Result; open: Result; warmup: Result }> {
  const sessions = await Promise.all(Array.from({ length: SESSIONS }, () => Session.open(port)));
  // warm up: a second of load, not in the figures
  const warmup = await closedLoop(port, sessions, 1);
  const closed = await closedLoop(port, sessions, SECONDS);
  console.error(`bench: ${name}: closed loop ${Math.round(closed.accepted / closed.seconds)} msg/s`);
  const open = await openLoop(sessions, RATE, RATE_SECONDS);
  console.error(`bench: ${name}: ${RATE}/s offered, ${Math.round(open.accepted / open.seconds)} msg/s accepted`);
  for (const s of sessions) s.close();
  return { closed, open, warmup };
}

// ---- the targets -------------------------------------------------------------------------------

async function startStreamgate(dir: string): Promise<{ port: number; child: ChildProcess; nodes: Redis[]; pool: { stop(): Promise<void> }[] }> {
  const { startRedisPool } = await import('../test/helpers/redis.ts');
  const pool = await startRedisPool(3, { maxmemory: '2gb' });
  const profile = process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : [];
  if (process.env.BENCH_TRACE_GC) profile.push('--trace-gc');
  const child = spawn(NODE, [...profile, import.meta.filename, 'serve'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, BENCH_GATEWAY: JSON.stringify({ nodes: pool.map((r) => r.url), dataDir: join(dir, 'gateway'), log: join(dir, 'gateway.log') }) },
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
  const nodes = pool.map((r) => new Redis({ port: r.port, host: r.host, lazyConnect: false }));
  return { port, child, nodes, pool };
}

// ---- the run -----------------------------------------------------------------------------------

const dir = mkdtempSync(join(tmpdir(), 'sg-bench-smtp-'));
let gateway: Awaited<ReturnType<typeof startStreamgate>> | undefined;
let postfix: PostfixInstance | undefined;
const cleanup = () => {
  postfix?.stop();
  gateway?.child.kill('SIGKILL');
};
process.once('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

try {
  const { freePort } = await import('../test/helpers/waitFor.ts');
  console.error(`bench: ${SESSIONS} sessions, 70% 1 KB / 30% 10 KB, closed loop ${SECONDS} s, then ${RATE}/s offered for ${RATE_SECONDS} s`);

  gateway = await startStreamgate(dir);
  const sg = await measure('streamgate', gateway.port);
  const key = `sg:{bench:${DOMAIN}}:live`;
  const lens = await Promise.all(gateway.nodes.map((n) => n.xlen(key)));
  const acceptedSg = sg.warmup.accepted + sg.closed.accepted + sg.open.accepted;
  gateway.child.kill('SIGTERM');
  await new Promise((resolve) => gateway!.child.once('exit', resolve));
  for (const n of gateway.nodes) n.disconnect();
  await Promise.all(gateway.pool.map((r) => r.stop()));

  const pfPort = await freePort();
  chmodSync(dir, 0o755); // Postfix's daemons run as the postfix user
  postfix = await startPostfix({
    dir: join(dir, 'postfix'),
    port: pfPort,
    processLimit: Math.max(100, SESSIONS * 2 + 20),
    mainCf: [
      'mynetworks = 127.0.0.255/32', // the load generator is not trusted: relaying is decided by relay_domains
      `relay_domains = ${DOMAIN}`,
      'smtpd_relay_restrictions = check_client_access static:HOLD, permit_mynetworks, reject_unauth_destination',
      `message_size_limit = ${25 * 1024 * 1024}`,
    ],
  });
  const pf = await measure('postfix', pfPort);
  const pfQueued = postfix.queued('hold');
  postfix.stop();

  const row = (target: string, load: string, r: Result) => {
    const rate = r.accepted / r.seconds;
    const f = (x: number) => (Number.isNaN(x) ? '-' : x.toFixed(1));
    const due = r.dueLatencies ? ` ${f(pct(r.dueLatencies, 99))} |` : ' - |';
    return `| ${target} | ${load} | ${Math.round(rate).toLocaleString('en')} | ${f(pct(r.latencies, 50))} | ${f(pct(r.latencies, 95))} | ${f(pct(r.latencies, 99))} |${due} ${r.refused} |`;
  };
  console.log('');
  console.log(`SMTP ingress benchmark: ${SESSIONS} sessions reusing connections with PIPELINING, 70% 1 KB / 30% 10 KB`);
  console.log('');
  console.log('| target | load | accepted msg/s | p50 ms | p95 ms | p99 ms | p99 from due ms | refused |');
  console.log('|---|---|---|---|---|---|---|---|');
  console.log(row('streamgate (both replicas before 250)', `closed loop, ${SECONDS} s`, sg.closed));
  console.log(row(`Postfix ${postfixVersion()} (fsync'd queue file before 250)`, `closed loop, ${SECONDS} s`, pf.closed));
  console.log(row('streamgate', `${RATE}/s offered, ${RATE_SECONDS} s`, sg.open));
  console.log(row(`Postfix ${postfixVersion()}`, `${RATE}/s offered, ${RATE_SECONDS} s`, pf.open));
  console.log('');
  const ratio = sg.closed.accepted / sg.closed.seconds / (pf.closed.accepted / pf.closed.seconds);
  console.log(`streamgate / Postfix accepted msg/s (closed loop): ${ratio.toFixed(2)}x`);
  console.log(`latency: from the end of the message data (".") to the reply; "from due": from the moment the open loop had the message due`);
  const acceptedPf = pf.warmup.accepted + pf.closed.accepted + pf.open.accepted;
  const pair = lens.filter((n) => n > 0);
  const ok = pair.length === 2 && pair.every((n) => n === acceptedSg);
  console.log(`check: streamgate 250s (warm-up included) ${acceptedSg}, live entries on the replica pair ${pair.join(' / ')}: ${ok ? 'every 250 on both replicas' : 'MISMATCH'}; Postfix 250s ${acceptedPf}, hold queue ${pfQueued} files`);
  const refusals = [sg.closed.firstRefusal, sg.open.firstRefusal, pf.closed.firstRefusal, pf.open.firstRefusal].filter(Boolean);
  if (refusals.length) console.log(`first refusals: ${refusals.join(' | ')}`);
} finally {
  cleanup();
  rmSync(dir, { recursive: true, force: true });
}
