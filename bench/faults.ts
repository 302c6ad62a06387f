// npm run bench:faults — a fault checker: uniquely tagged messages through the gateway (SMTP) to
// an SMTP sink while a seeded nemesis kills, pauses and restarts what the gateway depends on; then
// everything is healed, the queues drain, and the outcome is checked the way Jepsen's total-queue
// checker does. Prints one table (a row per round) and exits 1 when any round failed a check.
//
// A round: three fresh redis-server processes (the pool: each queue on a pair, the third a spare),
// a fourth for lifecycle events (BullMQ; not under test), one SMTP sink on loopback that every
// test domain is routed to, and the gateway run as `node src/cli/main.ts start --config <yaml>`
// in a child process of its own (ops API on loopback, mailboxes pointed at a port nobody listens
// on: no Cassandra is used). Short heartbeats, rebuild grace and retry schedule make failover and
// retries happen within the round.
//
// The load: BENCH_N messages (plus one warm-up message per domain, which places the queues)
// spread evenly over BENCH_SECONDS by BENCH_CLIENTS SMTP sessions (PIPELINING, bench/lib/
// smtpSession.ts), each message to one recipient at one of the test domains and tagged with a
// header `X-Fault-Id: <seed>-<n>`. Each tag is sent once, never retried. Its outcome at the client:
//   acked    250 to the data;
//   refused  a 4xx/5xx reply, or no connection / connection lost before the data was written;
//   unknown  the data was written and no reply came (connection lost, or no reply in 10 s): may
//            or may not be delivered, never counted as lost.
//
// The nemesis (one schedule per round, run while the load runs; BENCH_ROUNDS picks rounds):
//   replica-kill           SIGKILL a Redis node, start it again (empty) after 2.5–4 s (past the
//                          rebuild grace: its queues move to the spare); twice, other nodes
//   replica-stop           SIGSTOP a node for 1–3 s, then SIGCONT; twice
//   replica-empty-restart  SIGKILL a node and start it again at once, empty, within the grace; twice
//   spare-kill             the queues are placed first (warm-up over 24 candidate domains); the load
//                          goes only to queues that do not live on one node, and that node, their
//                          spare, is SIGKILLed and started again, then SIGSTOPped for 1–3 s
//   gateway-kill           SIGKILL the gateway and start it again; twice
//   gateway-stall          SIGSTOP the gateway 1–2 s (its event loop stalls), SIGCONT; three times
//   sink-451               the sink answers the data with 451 for 2–3 s; twice
//   sink-refuse            the sink drops new connections, then answers them 421, 2–3 s each
//   mixed                  four faults drawn from all of the above
// One Redis or gateway fault at a time (each is healed before the next starts); sink faults may
// overlap them. Every wait is bounded.
//
// The check, after healing everything and waiting (at most BENCH_DRAIN seconds) for the ops API
// to show no live message and every queue whole:
//   lost        acked tags never delivered to the sink and not in a queue's live stream: 0
//   unexpected  deliveries whose tag was never sent or whose bytes differ from what was sent: 0
//   dup         tags delivered more than once, beside a bound: the most messages in flight (ops
//               API, sampled every 250 ms) around each fault, summed; dup must stay within it
//   refused→delivered  tags the client was refused (a 4xx/5xx) that were delivered anyway: 0
//   left        tags still in a queue (an in-sync replica's live stream) after the drain wait: 0
//   whole       every queue's status is `whole` in the ops API
//   identical   on both replicas of every queue, the live and history streams, the state hash and
//               the meta hash have the same content (XRANGE, HGETALL)
//   depth       on each in-sync replica XLEN(live) = HLEN(state) = ready+deferred+held+inflight
//               (meta), equal to the depth the ops API shows
// The drain wait ends early when nothing moves (no delivery, no change in depth or in which
// queues are whole) for BENCH_STALL seconds (default 15).
//
//   npm run bench:faults     BENCH_SEED (default: random, printed; the schedules derive from it)
//                            BENCH_ROUNDS=gateway-kill,mixed (default: all)  BENCH_N=1200 per round
//                            BENCH_SECONDS=10 (load)  BENCH_CLIENTS=16  BENCH_DRAIN=60 (s, at most)
//   Replay a failing round:  BENCH_SEED=<seed> BENCH_ROUNDS=<round> npm run bench:faults
// The schedule is replayed exactly; the timing of processes around it varies from run to run.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { stringify as toYaml } from 'yaml';
import { startRedis, startRedisPool, type TestRedis } from '../test/helpers/redis.ts';
import { startSmtpSink, type SmtpSink } from '../test/helpers/smtpSink.ts';
import { freePort, waitFor } from '../test/helpers/waitFor.ts';
import { SmtpSession } from './lib/smtpSession.ts';

const ALL_ROUNDS = ['replica-kill', 'replica-stop', 'replica-empty-restart', 'spare-kill', 'gateway-kill', 'gateway-stall', 'sink-451', 'sink-refuse', 'mixed'] as const;
type RoundName = (typeof ALL_ROUNDS)[number];
type FaultKind = Exclude<RoundName, 'mixed'>;

const SEED = process.env.BENCH_SEED ? Number(process.env.BENCH_SEED) : randomInt(1, 1_000_000);
const ROUNDS = (process.env.BENCH_ROUNDS ? process.env.BENCH_ROUNDS.split(',').map((s) => s.trim()) : [...ALL_ROUNDS]) as RoundName[];
const N = Number(process.env.BENCH_N ?? 1200);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 16);
const DRAIN_SECONDS = Number(process.env.BENCH_DRAIN ?? 60);
/** The drain wait also ends when nothing has moved for this long. */
const STALL_SECONDS = Number(process.env.BENCH_STALL ?? 15);
/** The read token the checker uses on the gateway's ops API (made for each run). */
const OPS_TOKEN = randomBytes(16).toString('hex');
const DOMAINS = 8;
const SPARE_CANDIDATES = 24;
const GATEWAY_ID = 'faults';
const FROM = 'load@src.faults.test';
const ROOT = join(import.meta.dirname, '..');

for (const r of ROUNDS) if (!ALL_ROUNDS.includes(r)) throw new Error(`BENCH_ROUNDS: no round "${r}" (rounds: ${ALL_ROUNDS.join(', ')})`);
if (!Number.isSafeInteger(SEED)) throw new Error(`BENCH_SEED must be an integer, got "${process.env.BENCH_SEED}"`);

// ---- seeded randomness ---------------------------------------------------------------------------

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
function mulberry32(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A round's generator: from the seed and the round's name, so one round replays on its own. */
function rngFor(seed: number, round: string): Rng {
  let h = 0x811c9dc5 ^ seed;
  for (const c of round) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193);
  const next = mulberry32(h);
  return { next, between: (lo, hi) => lo + (hi - lo) * next(), pick: (xs) => xs[Math.floor(next() * xs.length)]! };
}
interface Rng {
  next(): number;
  between(lo: number, hi: number): number;
  pick<T>(xs: readonly T[]): T;
}

// ---- messages ------------------------------------------------------------------------------------

const tagOf = (n: number) => `${SEED}-${n}`;

/** Message n as sent (without the final "." line): 70% about 1 KB, 30% about 10 KB, no line starting with a dot. */
function messageText(n: number, rcpt: string): Buffer {
  const head = `From: <${FROM}>\r\nTo: <${rcpt}>\r\nSubject: fault check ${tagOf(n)}\r\nMessage-ID: <f${tagOf(n)}@src.faults.test>\r\nX-Fault-Id: ${tagOf(n)}\r\n\r\n`;
  const size = n % 10 < 7 ? 1024 : 10 * 1024;
  const line = `${tagOf(n)} the quick brown fox jumps over the lazy dog 0123456789`.slice(0, 70).padEnd(70, '-') + '\r\n';
  return Buffer.from(head + line.repeat(Math.max(1, Math.round((size - head.length) / line.length))));
}

/** The tag in a message's header section, if any. */
function tagIn(raw: Buffer): string | undefined {
  const end = raw.indexOf('\r\n\r\n');
  const head = raw.subarray(0, end < 0 ? raw.length : end).toString('latin1');
  return /^X-Fault-Id: *(\S+)/im.exec(head)?.[1];
}

// ---- the gateway and its surroundings -----------------------------------------------------------

interface QueueRow {
  queue: string;
  domain: string;
  status: string;
  txn: number;
  replicas: { node: string; sync: string; txn: number }[];
  depth: { ready: number; deferred: number; held: number; inflight: number };
}
interface QueuesAnswer {
  totals: { ready: number; deferred: number; held: number; inflight: number; queues: number };
  queues: QueueRow[];
}
const liveOf = (d: { ready: number; deferred: number; held: number; inflight: number }) => d.ready + d.deferred + d.held + d.inflight;

/** Everything one round runs: the Redis pool, the events node, the sink and the gateway process. */
class Rig {
  readonly dir = mkdtempSync(join(tmpdir(), 'sg-bench-faults-'));
  redis: TestRedis[] = [];
  events: TestRedis | undefined;
  sink!: SmtpSink;
  smtpPort = 0;
  opsPort = 0;
  gateway: ChildProcess | undefined;
  /** Processes this round has SIGSTOPped and not yet continued. */
  readonly paused = new Set<ChildProcess>();
  /** The gateway exited without being told to (code or signal), each time. */
  readonly crashes: string[] = [];
  private expectExit = false;
  private readonly log: string;

  constructor() {
    this.log = join(this.dir, 'gateway.log');
  }

  async start(domains: string[]): Promise<void> {
    [this.redis, this.events, this.sink] = await Promise.all([startRedisPool(3), startRedis(), startSmtpSink({ hideStartTls: true })]);
    // A free port may be taken by another process before the gateway binds it: fresh ones, a few times.
    for (let tries = 1; ; tries++) {
      try {
        await this.configureAndStart(domains);
        return;
      } catch (err) {
        if (tries >= 3 || !/EADDRINUSE/.test((err as Error).message)) throw err;
      }
    }
  }

  private async configureAndStart(domains: string[]): Promise<void> {
    [this.smtpPort, this.opsPort] = [await freePort(), await freePort()];
    const config = {
      gateway: { id: GATEWAY_ID, hostname: 'gw.faults.test', dataDir: join(this.dir, 'data') },
      log: { level: 'warn', pretty: 'never' },
      // the load comes from one address standing for many MTAs: no per-client error limits
      smtp: { listen: `127.0.0.1:${this.smtpPort}`, maxConnectionsPerClient: 1000, maxMessagesPerConnection: 1_000_000, errors: { hardLimit: 0, perClient: 0 } },
      submission: { listen: '127.0.0.1:0' },
      pop3: { listen: '127.0.0.1:0' },
      ops: { listen: `127.0.0.1:${this.opsPort}`, tokens: [{ token: OPS_TOKEN, role: 'read' }] },
      redis: { nodes: this.redis.map((r) => r.url) },
      cassandra: { contactPoints: [`127.0.0.1:${await freePort()}`] }, // nobody listens: no mailboxes
      domains: { local: [], relay: domains },
      routes: { '*.faults.test': `smtp://127.0.0.1:${this.sink.port}` },
      queue: { timeout: '1s', heartbeat: { every: '200ms', missed: 3 }, rebuildAfter: '2s' },
      relay: {
        retry: { schedule: ['1s', '2s', '3s'], jitter: 0.1, maxLifetime: '1h', warnAfter: '0s' },
        limits: { default: { connections: 10, messagesPerConnection: 50 } },
        deadDestination: { failures: 5, suspend: '1s' },
        connectTimeout: '2s',
        greetingTimeout: '2s',
        socketTimeout: '10s',
        idleTimeout: '500ms',
        connectionLease: '3s',
      },
      events: { redis: this.events!.url },
    };
    writeFileSync(join(this.dir, 'gateway.yaml'), toYaml(config));
    await this.startGateway();
  }

  get gatewayRunning(): boolean {
    return !!this.gateway && this.gateway.exitCode === null && this.gateway.signalCode === null;
  }

  /** Starts the gateway and waits until its ops API answers (it starts last). */
  async startGateway(): Promise<void> {
    const out = openSync(this.log, 'a');
    const child = spawn(process.execPath, [join(ROOT, 'src/cli/main.ts'), 'start', '--config', join(this.dir, 'gateway.yaml')], { cwd: ROOT, stdio: ['ignore', out, out] });
    closeSync(out);
    this.gateway = child;
    this.expectExit = false;
    child.once('exit', (code, signal) => {
      if (!this.expectExit && this.gateway === child) this.crashes.push(signal ?? `exit ${code}`);
    });
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`the gateway exited with ${child.exitCode}: ${this.logTail()}`);
        return (await fetch(`http://127.0.0.1:${this.opsPort}/health`, { signal: AbortSignal.timeout(1000) })).status > 0;
      },
      { timeout: 30_000, every: 50, what: 'the gateway to start' },
    ).catch((err: unknown) => {
      if (child.exitCode !== null) throw new Error(`the gateway exited with ${child.exitCode}: ${this.logTail()}`);
      throw err;
    });
  }

  logTail(): string {
    try {
      return readFileSync(this.log, 'utf8').trim().split('\n').slice(-3).join(' | ');
    } catch {
      return '(no log)';
    }
  }

  async killGateway(): Promise<void> {
    const child = this.gateway;
    if (!child || !this.gatewayRunning) return;
    this.expectExit = true;
    this.paused.delete(child);
    child.kill('SIGKILL');
    await new Promise((resolve) => (child.exitCode === null && child.signalCode === null ? child.once('exit', resolve) : resolve(null)));
  }

  pause(p: ChildProcess): void {
    p.kill('SIGSTOP');
    this.paused.add(p);
  }

  resume(p: ChildProcess): void {
    p.kill('SIGCONT');
    this.paused.delete(p);
  }

  async api(timeoutMs = 1000): Promise<QueuesAnswer> {
    const res = await fetch(`http://127.0.0.1:${this.opsPort}/api/queues`, { headers: { authorization: `Bearer ${OPS_TOKEN}` }, signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) throw new Error(`/api/queues: ${res.status}`);
    return (await res.json()) as QueuesAnswer;
  }

  /** The test Redis behind a node id of the ops API ("127.0.0.1:port"). */
  redisFor(nodeId: string): TestRedis | undefined {
    return this.redis.find((r) => nodeId === `${r.host}:${r.port}`);
  }

  /** Every fault undone: processes continued, dead nodes started again (empty), the sink answering, the gateway running. */
  async heal(): Promise<void> {
    for (const p of [...this.paused]) this.resume(p);
    for (const r of this.redis) if (r.proc.exitCode !== null || r.proc.signalCode !== null) await r.restart();
    this.sink.dataAnswer = undefined;
    this.sink.failConnections(0);
    if (!this.gatewayRunning) await this.startGateway();
  }

  async stop(keep: boolean): Promise<void> {
    await this.killGateway();
    await Promise.all([...this.redis, ...(this.events ? [this.events] : [])].map((r) => r.stop()));
    await this.sink?.close();
    if (!keep) rmSync(this.dir, { recursive: true, force: true });
  }

  /** For the process 'exit' hook: synchronous. */
  kill(): void {
    if (this.gatewayRunning) this.gateway!.kill('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---- the load ------------------------------------------------------------------------------------

type Outcome = 'acked' | 'refused' | 'unknown';
interface Sent {
  rcpt: string;
  text: Buffer;
  outcome: Outcome;
  reply: string;
}

/**
 * Sends messages `first`..`first+count-1` (message n to domains[n % domains.length]) with `clients`
 * sessions, spread evenly over `seconds`. A session that fails is dropped and opened again for
 * the next message; a message for which no session opens counts as refused.
 */
async function load(rig: Rig, sent: Sent[], first: number, count: number, domains: string[], seconds: number, clients: number): Promise<void> {
  const t0 = performance.now();
  const every = (seconds * 1000) / count;
  let next = 0;
  const client = async () => {
    let s: SmtpSession | undefined;
    for (let k = next++; k < count; k = next++) {
      const n = first + k;
      const wait = t0 + k * every - performance.now();
      if (wait > 0) await sleep(wait);
      const rcpt = `r${n}@${domains[n % domains.length]}`;
      const text = messageText(n, rcpt);
      const m: Sent = { rcpt, text, outcome: 'refused', reply: '' };
      sent[n] = m;
      if (!s || s.closed) {
        s = await SmtpSession.open(rig.smtpPort, { name: 'load.faults.test', openTimeoutMs: 3000, replyTimeoutMs: 10_000 }).catch((err: unknown) => {
          m.reply = `no session: ${(err as Error).message}`;
          return undefined;
        });
        if (!s) continue;
      }
      const r = await s.send(FROM, rcpt, Buffer.concat([text, Buffer.from('.\r\n')]));
      m.reply = r.reply.text;
      if (r.reply.code === 250 && r.dataSent) m.outcome = 'acked';
      else if (r.reply.code === 0 && r.dataSent) m.outcome = 'unknown';
      if (r.reply.code === 0 || r.reply.code === 421) {
        s.close();
        s = undefined;
      }
    }
    s?.close();
  };
  await Promise.all(Array.from({ length: clients }, client));
}

// ---- the nemesis ---------------------------------------------------------------------------------

interface Step {
  at: number;
  kind: FaultKind;
  /** Runs the fault and undoes it; logs what it did. */
  run(): Promise<void>;
  /** May run while the next step starts (sink faults). */
  overlap?: boolean;
  /** The Redis node it acts on, if one. */
  node?: number;
}

interface RoundCtx {
  rig: Rig;
  rng: Rng;
  /** For spare-kill: the node no queue under load lives on. */
  spare?: number;
  say(line: string): void;
  /** Marks a fault's window (for the duplicate bound). */
  window(from: number, to: number): void;
  t0: number;
}

/** One fault of a kind, its parameters drawn now (so the schedule depends on the seed alone). */
function fault(kind: FaultKind, at: number, c: RoundCtx, avoid?: number): Step {
  const { rig, rng } = c;
  const nodes = [0, 1, 2].filter((i) => i !== avoid);
  const node = kind === 'spare-kill' && c.spare !== undefined ? c.spare : rng.pick(nodes);
  const d1 = rng.between(1000, 3000);
  const d2 = rng.between(2500, 4000);
  const now = () => performance.now() - c.t0;
  const timed = async (what: string, fn: () => Promise<void>) => {
    const from = now();
    c.say(`${(from / 1000).toFixed(1)} s ${what}`);
    await fn();
    c.window(from, now());
  };
  const port = () => rig.redis[node]!.port;
  switch (kind) {
    case 'replica-kill':
      return { at, kind, node, run: () => timed(`SIGKILL redis :${port()}, start it again empty after ${(d2 / 1000).toFixed(1)} s`, async () => {
        rig.redis[node]!.kill('SIGKILL');
        await sleep(d2);
        await rig.redis[node]!.restart();
      }) };
    case 'replica-stop':
      return { at, kind, node, run: () => timed(`SIGSTOP redis :${port()} for ${(d1 / 1000).toFixed(1)} s`, async () => {
        rig.pause(rig.redis[node]!.proc);
        await sleep(d1);
        rig.resume(rig.redis[node]!.proc);
      }) };
    case 'replica-empty-restart':
      return { at, kind, node, run: () => timed(`SIGKILL redis :${port()} and start it again empty at once`, () => rig.redis[node]!.restart()) };
    case 'spare-kill': {
      const pause = rng.next() < 0.5;
      return { at, kind, run: async () => {
        const spare = c.spare ?? (await spareNow(rig));
        const r = rig.redis[spare]!;
        await timed(pause ? `SIGSTOP the spare redis :${r.port} for ${(d1 / 1000).toFixed(1)} s` : `SIGKILL the spare redis :${r.port}, start it again empty after ${(d1 / 1000).toFixed(1)} s`, async () => {
          if (pause) rig.pause(r.proc);
          else r.kill('SIGKILL');
          await sleep(d1);
          if (pause) rig.resume(r.proc);
          else await r.restart();
        });
      } };
    }
    case 'gateway-kill':
      return { at, kind, run: () => timed('SIGKILL the gateway, start it again', async () => {
        await rig.killGateway();
        await rig.startGateway();
      }) };
    case 'gateway-stall': {
      const ms = rng.between(1000, 2000);
      return { at, kind, run: () => timed(`SIGSTOP the gateway for ${(ms / 1000).toFixed(1)} s`, async () => {
        const g = rig.gateway!;
        rig.pause(g);
        await sleep(ms);
        rig.resume(g);
      }) };
    }
    case 'sink-451': {
      const ms = rng.between(2000, 3000);
      return { at, kind, overlap: true, run: () => timed(`the sink answers 451 for ${(ms / 1000).toFixed(1)} s`, async () => {
        rig.sink.dataAnswer = { code: 451, text: '4.3.0 Try again later (fault check)' };
        await sleep(ms);
        rig.sink.dataAnswer = undefined;
      }) };
    }
    case 'sink-refuse': {
      const ms = rng.between(2000, 3000);
      const mode = rng.next() < 0.5 ? 'drop' : '421';
      return { at, kind, overlap: true, run: () => timed(`the sink refuses connections (${mode}) for ${(ms / 1000).toFixed(1)} s`, async () => {
        rig.sink.failConnections(Infinity, mode);
        await sleep(ms);
        rig.sink.failConnections(0);
      }) };
    }
  }
}

/** The node that holds the fewest queues now (the spare of the most), from the ops API. */
async function spareNow(rig: Rig): Promise<number> {
  const held = [0, 0, 0];
  const a = await rig.api().catch(() => undefined);
  for (const q of a?.queues ?? []) for (const r of q.replicas) {
    const i = rig.redis.findIndex((x) => r.node === `${x.host}:${x.port}`);
    if (i >= 0) held[i]!++;
  }
  return held.indexOf(Math.min(...held));
}

/** A round's schedule: times in ms from the start of the load. */
function schedule(round: RoundName, c: RoundCtx): Step[] {
  const W = SECONDS * 1000;
  const { rng } = c;
  const jitter = () => rng.between(-0.05, 0.05) * W;
  switch (round) {
    case 'replica-kill':
    case 'replica-stop':
    case 'replica-empty-restart': {
      const a = fault(round, 0.15 * W + jitter(), c);
      return [a, fault(round, 0.55 * W + jitter(), c, a.node)];
    }
    case 'spare-kill':
      return [fault(round, 0.2 * W + jitter(), c), fault(round, 0.6 * W + jitter(), c)];
    case 'gateway-kill':
      return [fault(round, 0.25 * W + jitter(), c), fault(round, 0.65 * W + jitter(), c)];
    case 'gateway-stall':
      return [0.2, 0.5, 0.8].map((f) => fault(round, f * W + jitter(), c));
    case 'sink-451':
    case 'sink-refuse':
      return [fault(round, 0.15 * W + jitter(), c), fault(round, 0.55 * W + jitter(), c)];
    case 'mixed': {
      const kinds = ALL_ROUNDS.filter((k): k is FaultKind => k !== 'mixed');
      return [0.1, 0.3, 0.5, 0.7].map((f) => fault(rng.pick(kinds), f * W + jitter(), c));
    }
  }
}

async function runSchedule(steps: Step[], t0: number): Promise<void> {
  const overlapping: Promise<void>[] = [];
  for (const s of [...steps].sort((a, b) => a.at - b.at)) {
    const wait = t0 + s.at - performance.now();
    if (wait > 0) await sleep(wait);
    if (s.overlap) overlapping.push(s.run());
    else await s.run();
  }
  await Promise.all(overlapping);
}

// ---- the check -----------------------------------------------------------------------------------

interface Row {
  round: RoundName;
  sent: number;
  acked: number;
  refused: number;
  unknown: number;
  delivered: number;
  lost: number;
  unexpected: number;
  dup: number;
  dupBound: number;
  refusedDelivered: number;
  left: number;
  whole: string;
  identical: string;
  depth: string;
  seconds: number;
  failed: string[];
  log: string[];
  crashes: string[];
  keptDir?: string;
}

const keysOf = (queue: string) => ['live', 'hist', 'meta', 'state'].map((k) => `sg:{${queue}}:${k}`) as [string, string, string, string];

/** A replica's content in a comparable form: streams as entries, hashes with sorted fields. */
async function content(c: Redis, queue: string): Promise<{ text: string; xlen: number; hlen: number; meta: Record<string, string> }> {
  const [live, hist, meta, state] = keysOf(queue);
  const sorted = (h: Record<string, string>) => Object.fromEntries(Object.entries(h).sort(([a], [b]) => (a < b ? -1 : 1)));
  const [l, h, m, s] = await Promise.all([c.xrange(live, '-', '+'), c.xrange(hist, '-', '+'), c.hgetall(meta), c.hgetall(state)]);
  return { text: JSON.stringify([l, h, sorted(m), sorted(s)]), xlen: l.length, hlen: Object.keys(s).length, meta: m };
}

/** Tags of the messages in a queue's live stream on a node. */
async function liveTags(c: Redis, queue: string): Promise<string[]> {
  const entries = await c.xrangeBuffer(keysOf(queue)[0], '-', '+');
  const tags: string[] = [];
  for (const [, fields] of entries) {
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i]!.toString() === 'raw') {
        const t = tagIn(fields[i + 1]!);
        if (t) tags.push(t);
      }
    }
  }
  return tags;
}

async function check(rig: Rig, row: Row, sent: Sent[]): Promise<void> {
  // the final answer of the ops API, then the replicas read directly
  const a = await rig.api(5000).catch(() => undefined);
  const clients = new Map<TestRedis, Redis>();
  const clientFor = (r: TestRedis) => clients.get(r) ?? clients.set(r, r.client()).get(r)!;
  const stillQueued = new Set<string>();
  let wholeBad = 0;
  let differ = 0;
  let depthBad = 0;
  const notes: string[] = [];
  if (!a) {
    row.whole = row.identical = row.depth = 'no API';
    row.failed.push('the ops API did not answer after the drain');
  } else {
    for (const q of a.queues) {
      const d = q.depth;
      if (liveOf(d)) notes.push(`${q.domain} still holds ${liveOf(d)}: ready ${d.ready}, deferred ${d.deferred}, held ${d.held}, in flight ${d.inflight}`);
      if (q.status !== 'whole') {
        wholeBad++;
        notes.push(`${q.domain} is ${q.status}: ${q.replicas.map((r) => `${r.node} ${r.sync} txn ${r.txn}`).join(', ')}`);
      }
      const seen: string[] = [];
      // a replica that is not in sync (being rebuilt, or out) is expected to differ: the queue is
      // then counted as not whole, and only its in-sync replica is checked
      for (const rep of q.replicas.filter((x) => x.sync === 'Sync')) {
        const r = rig.redisFor(rep.node);
        if (!r) {
          notes.push(`${q.domain}: replica ${rep.node} is not one of the round's nodes`);
          depthBad++;
          continue;
        }
        try {
          const c = clientFor(r);
          const got = await content(c, q.queue);
          seen.push(got.text);
          const metaLive = ['ready', 'deferred', 'held', 'inflight'].reduce((n, k) => n + Number(got.meta[k] ?? 0), 0);
          if (got.xlen !== got.hlen || got.xlen !== metaLive || got.xlen !== liveOf(q.depth)) {
            depthBad++;
            notes.push(`${q.domain} on ${rep.node}: XLEN ${got.xlen}, HLEN ${got.hlen}, meta ${metaLive}, API ${liveOf(q.depth)}`);
          }
          for (const t of await liveTags(c, q.queue)) stillQueued.add(t);
        } catch (err) {
          depthBad++;
          notes.push(`${q.domain} on ${rep.node}: ${(err as Error).message}`);
        }
      }
      if (seen.length === 2 && seen[0] !== seen[1]) {
        differ++;
        notes.push(`${q.domain}: the replicas' contents differ`);
      }
    }
    row.whole = wholeBad ? `${wholeBad} of ${a.queues.length} not` : `${a.queues.length}/${a.queues.length}`;
    row.identical = differ ? `${differ} differ` : 'yes';
    row.depth = depthBad ? `${depthBad} off` : 'yes';
    if (wholeBad) row.failed.push('queues not whole');
    if (differ) row.failed.push('replicas differ');
    if (depthBad) row.failed.push('depth differs from the streams');
  }
  for (const c of clients.values()) c.disconnect();

  // the deliveries
  const byTag = new Map<string, number>();
  for (let n = 0; n < sent.length; n++) byTag.set(tagOf(n), n);
  const times = new Map<string, number>();
  for (const m of rig.sink.messages) {
    const tag = tagIn(m.raw);
    const n = tag === undefined ? undefined : byTag.get(tag);
    const s = n === undefined ? undefined : sent[n];
    if (!tag || !s || !m.raw.subarray(m.raw.length - s.text.length).equals(s.text) || m.to.join(',') !== s.rcpt) {
      row.unexpected++;
      if (row.unexpected <= 3) notes.push(`unexpected delivery: tag ${tag ?? '(none)'} to ${m.to.join(',')}`);
      continue;
    }
    times.set(tag, (times.get(tag) ?? 0) + 1);
  }
  for (let n = 0; n < sent.length; n++) {
    const s = sent[n]!;
    const tag = tagOf(n);
    const k = times.get(tag) ?? 0;
    row[s.outcome]++;
    if (k > 0) row.delivered++;
    if (k > 1) row.dup++;
    if (s.outcome === 'refused' && k > 0) {
      row.refusedDelivered++;
      if (row.refusedDelivered <= 3) notes.push(`refused yet delivered: ${tag} (${s.reply})`);
    }
    if (stillQueued.has(tag) && k === 0) row.left++;
    else if (s.outcome === 'acked' && k === 0) {
      row.lost++;
      if (row.lost <= 5) notes.push(`lost: ${tag} to ${s.rcpt}`);
    }
  }
  row.sent = sent.length;
  // why mail was refused, most frequent first: the refusals are the availability price of the faults
  const why = new Map<string, number>();
  for (const m of sent) if (m?.outcome === 'refused') why.set(m.reply.slice(0, 60), (why.get(m.reply.slice(0, 60)) ?? 0) + 1);
  const top = [...why].sort((a, b) => b[1] - a[1]).slice(0, 3);
  if (top.length) console.error(`faults: ${row.round}: refused: ${top.map(([r, n]) => `${n} × ${r || '(no reply)'}`).join('; ')}`);
  if (row.lost) row.failed.push('acknowledged mail lost');
  if (row.unexpected) row.failed.push('unexpected deliveries');
  if (row.refusedDelivered) row.failed.push('refused mail delivered');
  if (row.dup > row.dupBound) row.failed.push('more duplicates than were in flight');
  if (row.left) row.failed.push('mail left in the queues after the drain wait');
  row.log.push(...notes);
}

// ---- a round -------------------------------------------------------------------------------------

async function runRound(round: RoundName): Promise<Row> {
  const started = performance.now();
  const row: Row = { round, sent: 0, acked: 0, refused: 0, unknown: 0, delivered: 0, lost: 0, unexpected: 0, dup: 0, dupBound: 0, refusedDelivered: 0, left: 0, whole: '', identical: '', depth: '', seconds: 0, failed: [], log: [], crashes: [] };
  const rng = rngFor(SEED, round);
  const candidates = Array.from({ length: round === 'spare-kill' ? SPARE_CANDIDATES : DOMAINS }, (_, i) => `d${i}.faults.test`);
  const rig = new Rig();
  rigs.add(rig);
  const say = (line: string) => {
    row.log.push(line);
    console.error(`faults: ${round}: ${line}`);
  };
  const sent: Sent[] = [];
  try {
    await rig.start(candidates);
    // warm-up: one message per candidate domain places every queue before the faults begin
    await load(rig, sent, 0, candidates.length, candidates, 0.5, Math.min(CLIENTS, candidates.length));
    let domains = candidates;
    const ctx: RoundCtx = { rig, rng, say, t0: 0, window: () => {} };
    if (round === 'spare-kill') {
      const a = await rig.api();
      const spare = await spareNow(rig);
      const id = `${rig.redis[spare]!.host}:${rig.redis[spare]!.port}`;
      domains = a.queues.filter((q) => !q.replicas.some((r) => r.node === id)).map((q) => q.domain).sort();
      if (domains.length === 0) throw new Error('spare-kill: every queue has a replica on every node');
      ctx.spare = spare;
      say(`spare: redis :${rig.redis[spare]!.port}; load to the ${domains.length} queues on the other two nodes`);
    }
    // the in-flight sampler: what the ops API shows, every 250 ms
    const samples: { t: number; inflight: number }[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const a = await rig.api(500).catch(() => undefined);
        if (a) samples.push({ t: performance.now() - ctx.t0, inflight: a.totals.inflight });
        await sleep(250);
      }
    })();
    const windows: [number, number][] = [];
    ctx.window = (from, to) => windows.push([from, to]);
    const steps = schedule(round, ctx);
    ctx.t0 = performance.now();
    await Promise.all([load(rig, sent, candidates.length, N, domains, SECONDS, CLIENTS), runSchedule(steps, ctx.t0)]);
    say(`${((performance.now() - ctx.t0) / 1000).toFixed(1)} s load done; healing`);
    await rig.heal();
    // the drain: no live message and every queue whole; or the time is up; or nothing moved
    // (no delivery, no change in what is live or whole) for STALL_SECONDS
    const deadline = Date.now() + DRAIN_SECONDS * 1000;
    let drained = '';
    let last = '';
    let moved = Date.now();
    while (!drained) {
      const a = await rig.api().catch(() => undefined);
      const whole = a ? a.queues.filter((q) => q.status === 'whole').length : -1;
      if (a && liveOf(a.totals) === 0 && whole === a.queues.length) drained = 'drained';
      const now = `${a ? liveOf(a.totals) : '-'}/${whole}/${rig.sink.messages.length}`;
      if (now !== last) [last, moved] = [now, Date.now()];
      if (!drained && Date.now() > deadline) drained = `not drained after ${DRAIN_SECONDS} s`;
      if (!drained && Date.now() - moved > STALL_SECONDS * 1000) drained = `not drained: nothing moved for ${STALL_SECONDS} s`;
      if (!drained) await sleep(250);
    }
    say(`${((performance.now() - ctx.t0) / 1000).toFixed(1)} s ${drained}`);
    sampling = false;
    await sampler;
    // the bound on duplicates: the most in flight within a second around each fault, summed
    for (const [from, to] of windows) {
      const near = samples.filter((s) => s.t >= from - 1000 && s.t <= to + 1000).map((s) => s.inflight);
      row.dupBound += near.length ? Math.max(...near) : Math.max(0, ...samples.map((s) => s.inflight));
    }
    await check(rig, row, sent);
  } catch (err) {
    row.failed.push(`round failed: ${(err as Error).message}`);
    row.log.push((err as Error).stack ?? String(err));
  } finally {
    row.crashes = rig.crashes;
    if (rig.crashes.length) row.log.push(`the gateway exited by itself: ${rig.crashes.join(', ')}`);
    row.seconds = (performance.now() - started) / 1000;
    if (row.failed.length) row.keptDir = rig.dir;
    await rig.stop(row.failed.length > 0).catch(() => {});
    rigs.delete(rig);
  }
  return row;
}

// ---- the run -------------------------------------------------------------------------------------

const rigs = new Set<Rig>();
process.once('exit', () => {
  for (const r of rigs) r.kill(); // the Redis helper kills its own processes on exit
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

console.error(`faults: seed ${SEED}; rounds ${ROUNDS.join(', ')}; ${N} messages per round over ${SECONDS} s, ${CLIENTS} SMTP clients, ${DOMAINS} domains`);
const t0 = performance.now();
const rows: Row[] = [];
for (const round of ROUNDS) {
  const row = await runRound(round);
  rows.push(row);
  console.error(`faults: ${round}: ${row.failed.length ? `FAILED: ${row.failed.join('; ')}` : 'ok'} (${row.seconds.toFixed(1)} s)`);
}

const header = ['round', 'seed', 'sent', 'acked', 'refused', 'unknown', 'delivered', 'lost', 'unexpected', 'dup (bound)', 'refused→delivered', 'left', 'queues whole', 'replicas identical', 'depth ok', 's'];
const cells = (r: Row) => [r.round, String(SEED), r.sent, r.acked, r.refused, r.unknown, r.delivered, r.lost, r.unexpected, `${r.dup} (${r.dupBound})`, r.refusedDelivered, r.left, r.whole, r.identical, r.depth, r.seconds.toFixed(1)].map(String);
console.log('');
console.log(`fault check: seed ${SEED}, ${N} messages per round over ${SECONDS} s (${CLIENTS} SMTP clients, ${DOMAINS} domains), ${((performance.now() - t0) / 1000).toFixed(0)} s in all`);
console.log('');
console.log(`| ${header.join(' | ')} |`);
console.log(`|${header.map(() => '---').join('|')}|`);
for (const r of rows) console.log(`| ${cells(r).join(' | ')} |`);
const failed = rows.filter((r) => r.failed.length);
for (const r of failed) {
  console.log('');
  console.log(`${r.round} FAILED: ${r.failed.join('; ')}`);
  for (const line of r.log) console.log(`  ${line}`);
  if (r.keptDir) console.log(`  gateway log and config kept in ${r.keptDir}`);
  console.log(`  replay: BENCH_SEED=${SEED} BENCH_ROUNDS=${r.round} npm run bench:faults`);
}
process.exit(failed.length ? 1 : 0);
