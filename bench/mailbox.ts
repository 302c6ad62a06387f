// Mailbox benchmark, each figure beside a Debian baseline in the same run:
//   1. CassMail's workloads, messages of 200 KB–2 MB and of 50 KB–500 KB, accepted over SMTP and
//      delivered into Cassandra mailboxes (SMTP ingress → replicated queue on 2 Redis nodes →
//      relay → local delivery), in MB/s; beside Postfix accepting the same messages over SMTP and
//      delivering them to Maildirs (virtual(8)) — a private instance (bench/lib/postfix.ts) with its
//      own config and queue directories in a temp dir and its own loopback port, stopped
//      afterwards. Also the local delivery alone (the Cassandra write path without SMTP and queue).
//   2. POP3 download of a 1,000-message mailbox (50 KB–500 KB each), USER/PASS, LIST, then RETR
//      one message after the other, QUIT; beside Debian's Dovecot POP3 serving the same bytes from
//      a Maildir — a private instance (config, base dir and port of its own), stopped afterwards.
//
// When the SMTP ingress cannot be started, the gateway side is fed through LocalDelivery and the
// output says so. Cassandra: the node STREAMGATE_TEST_CASSANDRA names, else one started for the run.
//
//   npm run bench:mailbox   BENCH_A=100 (200 KB–2 MB messages)  BENCH_B=300 (50–500 KB)
//                           BENCH_POP3=1000  BENCH_CLIENTS=8 (SMTP clients)  BENCH_USERS=20  BENCH_RUNS=3
//                           BENCH_WARMUP=80 (MB sent through each path before anything is measured)
//                           BENCH_POP3_WARMUP=4 (downloads of the POP3 mailbox before those measured)
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { Config } from '../src/config/schema.ts';
import { silentLogger } from '../src/log.ts';
import { startMailbox, type MailboxService } from '../src/mailbox/service.ts';
import { hashPassword } from '../src/message/password.ts';
import { type LifecycleEvent, type QueuedMessage } from '../src/message/types.ts';
import { QueueManager } from '../src/queue/manager.ts';
import { cassandraForTests } from '../test/helpers/cassandra.ts';
import { testConfig } from '../test/helpers/config.ts';
import { startRedisPool } from '../test/helpers/redis.ts';
import { freePort, waitFor } from '../test/helpers/waitFor.ts';
import { machineCpu, pidOnPort, procCpu, threadCpu, threadCpuSince, treeCpu } from './lib/cpu.ts';
import { portOpen, postfixVersion, startPostfix, type PostfixInstance } from './lib/postfix.ts';
import { formatStages, StageProfiler } from './lib/stages.ts';
import { totalBytes, workload, type Msg } from './lib/workload.ts';
import { median } from './lib/stats.ts';
import { newMessageId } from '../src/message/ids.ts';
import { tuneHeap } from '../src/heap.ts';

const A = Number(process.env.BENCH_A ?? 100);
const B = Number(process.env.BENCH_B ?? 300);
const POP3_N = Number(process.env.BENCH_POP3 ?? 1000);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 8);
const USERS = Number(process.env.BENCH_USERS ?? 20);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const WARMUP_MB = Number(process.env.BENCH_WARMUP ?? 80);
const POP3_WARMUP = Math.max(1, Number(process.env.BENCH_POP3_WARMUP ?? 4));
const DOMAIN = 'bench.test';
const PASSWORD = 'bench-password';
const VMAIL_UID = 5000;

const MB = 1024 * 1024;

// ---- messages ----------------------------------------------------------------------------------



const cpuPids: { cassandra?: number | undefined; redis: number[]; postfix?: number | undefined } = { redis: [] };

interface CpuMark {
  machine: number;
  self: number;
  cassandra: number;
  redis: number;
  postfix: number;
}

/** CPU seconds used so far: the whole machine (/proc/stat), this process, Cassandra, the Redis nodes, the Postfix instance. */
function cpuNow(): CpuMark {
  const u = process.cpuUsage();
  return { machine: machineCpu(), self: (u.user + u.system) / 1e6, cassandra: procCpu(cpuPids.cassandra), redis: cpuPids.redis.reduce((a, p) => a + procCpu(p), 0), postfix: treeCpu(cpuPids.postfix) };
}

/**
 * CPU seconds since `t`: the text for a row, and `server`, the CPU of the side under test (the
 * gateway less its load generator thread, Redis and Cassandra; or Postfix's processes).
 */
function cpuSince(t: CpuMark, who: 'gateway' | 'postfix', load = 0): { text: string; server: number } {
  const n = cpuNow();
  const d = (k: keyof CpuMark) => n[k] - t[k];
  const f = (v: number) => v.toFixed(1);
  if (who === 'postfix') return { text: `CPU s: Postfix ${f(d('postfix'))}, load generator ${f(load)}, machine ${f(d('machine'))}`, server: d('postfix') };
  const gateway = d('self') - load;
  return {
    text: `CPU s: gateway ${f(gateway)}${load ? `, load generator ${f(load)}` : ''}, Cassandra ${f(d('cassandra'))}, Redis ${f(d('redis'))}, machine ${f(d('machine'))}`,
    server: gateway + d('cassandra') + d('redis'),
  };
}

// ---- SMTP load ---------------------------------------------------------------------------------

/** Sends every message over SMTP with CLIENTS connections; resolves with the number refused. */
async function inject(port: number, msgs: Msg[]): Promise<number> {
  let next = 0;
  let failed = 0;
  const client = async () => {
    const conn = new SMTPConnection({ host: '127.0.0.1', port, ignoreTLS: true, name: 'load.src.test', socketTimeout: 120_000 });
    conn.on('error', () => {});
    await new Promise<void>((res, rej) => {
      conn.once('error', rej);
      conn.connect(() => res());
    });
    while (next < msgs.length) {
      const m = msgs[next++]!;
      const ok = await new Promise<boolean>((res) => conn.send({ from: 'load@src.test', to: [m.rcpt] }, m.raw, (err) => res(!err)));
      if (!ok) failed++;
    }
    conn.quit();
  };
  await Promise.all(Array.from({ length: CLIENTS }, client));
  return failed;
}

/**
 * inject() in a worker thread, as Postfix's load comes from a process other than Postfix's: the
 * SMTP clients must not share the gateway's event loop. Resolves once the worker is up and the
 * messages are in it; go() starts the load and resolves with the number refused.
 */
function injector(port: number, msgs: Msg[]): Promise<{ go(): Promise<{ failed: number; cpu: number }> }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL(import.meta.url), { workerData: { kind: 'inject', port, msgs } });
    let done: ((r: { failed: number; cpu: number }) => void) | undefined;
    w.on('message', (m: { ready?: true; ok?: boolean; failed?: number; cpu?: number; error?: string }) => {
      if (m.ready) resolve({ go: () => new Promise((ok) => ((done = ok), w.postMessage('go'))) });
      else if (m.ok) done?.({ failed: m.failed ?? 0, cpu: m.cpu ?? 0 });
      else reject(new Error(m.error));
    });
    w.once('error', reject);
  });
}

// ---- the gateway ---------------------------------------------------------------------------------

interface Row {
  name: string;
  messages: number;
  bytes: number;
  seconds: number;
  acceptSeconds?: number;
  note: string;
  /** ms per stage of this process's main thread (the gateway's). */
  stages?: Map<string, number>;
  /** CPU seconds of the side under test (see cpuSince). */
  cpu?: number;
  /** Cassandra's CPU by thread group over the run. */
  cassandraThreads?: string;
}

const profiler = new StageProfiler();
/** BENCH_PROFILE=dir: each run's profile is written there too. */
const profilePath = (name: string) => (process.env.BENCH_PROFILE ? join(process.env.BENCH_PROFILE, `${name.replace(/[^A-Za-z0-9]+/g, '-')}.cpuprofile`) : undefined);

interface Gateway {
  config: Config;
  mailbox: MailboxService;
  qm: QueueManager;
  smtpPort: number;
  ingress: { stop(): Promise<void> } | undefined;
  ingressNote: string;
  relay: { stop(): Promise<void> } | undefined;
  delivered: number;
  stop(): Promise<void>;
}

async function startGatewayParts(contactPoint: string, keyspace: string, dataDir: string): Promise<Gateway> {
  tuneHeap(); // as startGateway() does
  const pool = await startRedisPool(2, { maxmemory: '4gb' });
  cpuPids.redis = pool.map((r) => r.proc.pid ?? 0);
  const smtpPort = await freePort();
  const config = testConfig({
    gateway: { id: 'bench-mbx', hostname: 'gw.bench.test', dataDir },
    redis: { nodes: pool.map((r) => r.url) },
    domains: { local: [DOMAIN] },
    smtp: { listen: `127.0.0.1:${smtpPort}`, maxMessageSize: '30MB', maxConnectionsPerClient: 1000 },
    submission: { listen: `127.0.0.1:${await freePort()}` },
    pop3: { listen: `127.0.0.1:${await freePort()}`, auth: { delay: '0s', perClient: 0 } },
    cassandra: { contactPoints: [contactPoint], keyspace, ...(process.env.BENCH_CHUNK ? { chunkSize: process.env.BENCH_CHUNK } : {}) },
    queue: { historyMaxLength: 10_000 },
  });
  const mailbox = await startMailbox(config, silentLogger);
  await waitFor(() => mailbox.store.ready, { timeout: 60_000, what: 'mailbox store' });
  const qm = new QueueManager(config, silentLogger, { gatewayId: 'bench-mbx' });
  await qm.start();
  const gw: Gateway = {
    config, mailbox, qm, smtpPort, ingress: undefined, relay: undefined, delivered: 0,
    ingressNote: 'SMTP ingress → replicated queue (2 Redis nodes) → relay → local delivery → Cassandra',
    async stop() {
      await gw.ingress?.stop().catch(() => {});
      await gw.relay?.stop().catch(() => {});
      await qm.stop();
      await mailbox.stop();
      await Promise.all(pool.map((r) => r.stop()));
    },
  };
  qm.on('event', (e: LifecycleEvent) => {
    if (e.kind === 'delivered') gw.delivered++;
  });
  try {
    const relayMod = (await import(pathToFileURL(join(import.meta.dirname, '..', 'src', 'relay', 'relay.ts')).href)) as {
      startRelay(q: QueueManager, c: Config, l: typeof silentLogger, o: { local: unknown }): { stop(): Promise<void> };
    };
    gw.relay = relayMod.startRelay(qm, config, silentLogger, { local: mailbox.localDelivery });
    const ingMod = (await import(pathToFileURL(join(import.meta.dirname, '..', 'src', 'ingress', 'smtp', 'server.ts')).href)) as {
      SmtpIngress: new (o: unknown) => { start(): Promise<void>; stop(): Promise<void> };
    };
    const ing = new ingMod.SmtpIngress({ config, queues: qm, log: silentLogger, users: mailbox.users });
    await ing.start();
    gw.ingress = ing;
  } catch (err) {
    gw.ingressNote = `SMTP ingress or relay not usable (${(err as Error).message.split('\n')[0]}): fed through LocalDelivery directly`;
  }
  return gw;
}

let seq = 0;
function queuedFor(m: Msg): QueuedMessage {
  const now = Date.now();
  const domain = DOMAIN;
  return { queue: domain, domain, id: newMessageId(now), entryId: `${now}-${seq++}`, attempt: 1, envelope: { from: 'load@src.test', to: [m.rcpt] }, raw: m.raw, meta: {}, acceptedAt: now };
}

/** Feeds messages straight into LocalDelivery with `inflight` at once. */
async function feedLocal(gw: Gateway, msgs: Msg[], inflight: number): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: inflight }, async () => {
    while (next < msgs.length) {
      const res = await gw.mailbox.localDelivery.deliver(queuedFor(msgs[next++]!));
      if (res[0]?.status !== 'delivered') throw new Error(`local delivery: ${JSON.stringify(res[0])}`);
    }
  }));
}

async function gatewayRun(gw: Gateway, name: string, msgs: Msg[]): Promise<Row> {
  const bytes = totalBytes(msgs);
  const start = gw.delivered;
  const load = gw.ingress ? await injector(gw.smtpPort, msgs) : undefined;
  const c0 = cpuNow();
  const th0 = threadCpu(cpuPids.cassandra);
  await profiler.start();
  const t0 = performance.now();
  let acceptSeconds: number | undefined;
  let note = gw.ingressNote;
  let loadCpu = 0;
  if (load) {
    const { failed, cpu } = await load.go();
    loadCpu = cpu;
    acceptSeconds = (performance.now() - t0) / 1000;
    if (failed) note += ` (${failed} refused at SMTP)`;
    await waitFor(() => gw.delivered - start >= msgs.length - failed, { timeout: 1_800_000, every: 20, what: `${name}: delivered` });
  } else {
    await feedLocal(gw, msgs, CLIENTS * 4);
  }
  const seconds = (performance.now() - t0) / 1000;
  const stages = await profiler.stop(profilePath(name));
  const cpu = cpuSince(c0, 'gateway', loadCpu);
  const cassandraThreads = threadCpuSince(th0, threadCpu(cpuPids.cassandra));
  return { name, messages: msgs.length, bytes, seconds, ...(acceptSeconds !== undefined ? { acceptSeconds } : {}), note: `${note}; ${cpu.text}`, stages, cpu: cpu.server, cassandraThreads };
}

// ---- Postfix -----------------------------------------------------------------------------------

function ensurePackage(bin: string, pkg: string): string | undefined {
  if (existsSync(bin)) return undefined;
  const r = spawnSync('apt-get', ['install', '-y', pkg], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, stdio: 'ignore' });
  return r.status === 0 && existsSync(bin) ? undefined : `${pkg} not installed (apt-get install ${pkg} failed)`;
}

interface Postfix {
  port: number;
  mailDir: string;
  version: string;
  stop(): void;
}

async function startMailPostfix(users: string[]): Promise<Postfix | string> {
  const dir = mkdtempSync(join(tmpdir(), 'sg-bench-postfix-'));
  const mailDir = join(dir, 'mail');
  const vmailbox = join(dir, 'vmailbox');
  writeFileSync(vmailbox, users.map((u) => `${u} ${u}/Maildir/\n`).join(''));
  const port = await freePort();
  let pf: PostfixInstance;
  try {
    pf = await startPostfix({
      dir,
      port,
      mainCf: [
        'mynetworks = 127.0.0.0/8',
        'smtpd_relay_restrictions = permit_mynetworks, reject',
        'smtpd_recipient_restrictions = permit_mynetworks, reject',
        'message_size_limit = 31457280',
        `virtual_mailbox_domains = ${DOMAIN}`,
        `virtual_mailbox_base = ${mailDir}`,
        `virtual_mailbox_maps = texthash:${vmailbox}`,
        `virtual_uid_maps = static:${VMAIL_UID}`,
        `virtual_gid_maps = static:${VMAIL_UID}`,
        'virtual_mailbox_limit = 0',
      ],
    });
  } catch (err) {
    return (err as Error).message;
  }
  mkdirSync(mailDir); // virtual(8) delivers as VMAIL_UID
  chownSync(mailDir, VMAIL_UID, VMAIL_UID);
  try {
    cpuPids.postfix = Number(readFileSync(join(pf.queueDir, 'pid', 'master.pid'), 'utf8').trim()) || undefined;
  } catch { /* no pid file: Postfix's CPU is not counted */ }
  return { port, mailDir, version: postfixVersion(), stop: pf.stop };
}

function maildirCount(base: string): number {
  let n = 0;
  if (!existsSync(base)) return 0;
  for (const u of readdirSync(base)) {
    for (const sub of ['new', 'cur']) {
      const d = join(base, u, 'Maildir', sub);
      if (existsSync(d)) n += readdirSync(d).length;
    }
  }
  return n;
}

async function postfixRun(p: Postfix, name: string, msgs: Msg[]): Promise<Row> {
  const before = maildirCount(p.mailDir);
  const load = await injector(p.port, msgs);
  const c0 = cpuNow();
  const t0 = performance.now();
  const { failed, cpu: loadCpu } = await load.go();
  const acceptSeconds = (performance.now() - t0) / 1000;
  await waitFor(() => maildirCount(p.mailDir) - before >= msgs.length - failed, { timeout: 1_800_000, every: 20, what: `${name}: postfix delivered` });
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuSince(c0, 'postfix', loadCpu);
  return { name, messages: msgs.length, bytes: totalBytes(msgs), seconds, acceptSeconds, note: `Postfix ${p.version}: smtpd → disk queue → virtual(8) → Maildir, defaults${failed ? `, ${failed} refused` : ''}; ${cpu.text}`, cpu: cpu.server };
}

// ---- POP3 download -------------------------------------------------------------------------------

/** Downloads a whole mailbox: USER/PASS, LIST, RETR 1..n one after the other, QUIT. */
async function download(port: number, user: string, password: string, verify?: Buffer[]): Promise<{ seconds: number; bytes: number; messages: number }> {
  const t0 = performance.now();
  const sock: Socket = netConnect(port, '127.0.0.1');
  sock.setNoDelay(true);
  const chunks: Buffer[] = [];
  let waiter: (() => void) | undefined;
  let closed = false;
  sock.on('data', (d: Buffer) => {
    chunks.push(d);
    waiter?.();
  });
  sock.on('close', () => {
    closed = true;
    waiter?.();
  });
  sock.on('error', () => {});
  // what arrived is searched chunk by chunk (and across each boundary), never concatenated while
  // a response is incomplete: the client's cost stays linear in the bytes, as it must for a
  // benchmark whose faster side would otherwise be capped by its client
  const take = async (needle: Buffer, before: Buffer): Promise<Buffer[]> => {
    const got: Buffer[] = [];
    const k = needle.length - 1;
    let tail = before; // the bytes before the next chunk (at most k)
    for (;;) {
      while (chunks.length) {
        const d = chunks.shift()!;
        let end = -1;
        if (tail.length) {
          const i = Buffer.concat([tail, d.subarray(0, k)]).indexOf(needle);
          if (i >= 0) end = i + needle.length - tail.length;
        }
        if (end < 0) {
          const i = d.indexOf(needle);
          if (i >= 0) end = i + needle.length;
        }
        if (end >= 0) {
          got.push(d.subarray(0, end));
          if (end < d.length) chunks.unshift(d.subarray(end));
          return got;
        }
        got.push(d);
        tail = d.length >= k ? d.subarray(d.length - k) : Buffer.concat([tail, d]).subarray(-k);
      }
      if (closed) throw new Error('POP3 connection closed');
      await new Promise<void>((r) => (waiter = r));
      waiter = undefined;
    }
  };
  const CRLF = Buffer.from('\r\n');
  const line = async () => Buffer.concat(await take(CRLF, Buffer.alloc(0))).toString('latin1').trimEnd();
  // a multi-line response ends with CRLF.CRLF, its status line's CRLF counting for an empty one
  const multi = () => take(Buffer.from('\r\n.\r\n'), CRLF);
  const cmd = async (c: string) => {
    sock.write(`${c}\r\n`);
    const r = await line();
    if (!r.startsWith('+OK')) throw new Error(`${c.split(' ')[0]}: ${r}`);
    return r;
  };
  await line(); // greeting
  await cmd(`USER ${user}`);
  await cmd(`PASS ${password}`);
  await cmd('LIST');
  const list = Buffer.concat(await multi()).toString('latin1').split('\r\n').filter((l) => /^\d+ \d+$/.test(l));
  let bytes = 0;
  for (let i = 1; i <= list.length; i++) {
    await cmd(`RETR ${i}`);
    const parts = await multi();
    const body = verify ? Buffer.concat(parts) : undefined;
    bytes += parts.reduce((n, b) => n + b.length, 0);
    if (verify && body) {
      const got = Buffer.from(body.subarray(0, body.length - 3).toString('latin1').replace(/(^|\r\n)\.\./g, '$1.'), 'latin1');
      const want = verify[i - 1]!;
      if (!got.equals(want)) throw new Error(`RETR ${i}: ${got.length} bytes differ from the ${want.length} stored`);
    }
  }
  await cmd('QUIT');
  sock.destroy();
  return { seconds: (performance.now() - t0) / 1000, bytes, messages: list.length };
}

/** download() in a worker thread: the client must not share the event loop with our POP3 server. */
function downloadInWorker(port: number, user: string, password: string, verify?: Buffer[]): Promise<{ seconds: number; bytes: number; messages: number; cpu: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL(import.meta.url), { workerData: { port, user, password, verify } });
    w.once('message', (m: { ok: boolean; result?: { seconds: number; bytes: number; messages: number; cpu: number }; error?: string }) => (m.ok ? resolve(m.result!) : reject(new Error(m.error))));
    w.once('error', reject);
  });
}

interface Dovecot {
  port: number;
  version: string;
  /** The master process: its tree's CPU is Dovecot's. */
  pid: number | undefined;
  stop(): Promise<void>;
}

async function startDovecot(user: string, password: string, bodies: Buffer[]): Promise<Dovecot | string> {
  const missing = ensurePackage('/usr/sbin/dovecot', 'dovecot-pop3d');
  if (missing) return missing;
  if (!existsSync('/usr/lib/dovecot/pop3')) {
    const m2 = spawnSync('apt-get', ['install', '-y', 'dovecot-pop3d'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, stdio: 'ignore' });
    if (m2.status !== 0) return 'dovecot-pop3d not installed';
  }
  if (process.getuid?.() !== 0) return 'dovecot needs root to run a private instance';
  const dir = mkdtempSync(join(tmpdir(), 'sg-bench-dovecot-'));
  chmodSync(dir, 0o755);
  const port = await freePort();
  const home = join(dir, 'mail', user);
  const cur = join(home, 'Maildir', 'cur');
  for (const d of [cur, join(home, 'Maildir', 'new'), join(home, 'Maildir', 'tmp'), join(dir, 'run'), join(dir, 'state')]) mkdirSync(d, { recursive: true });
  const t = 1_700_000_000;
  bodies.forEach((b, i) => writeFileSync(join(cur, `${t + i}.M${i}P1.bench,S=${b.length}:2,S`), b));
  execFileSync('chown', ['-R', `${VMAIL_UID}:${VMAIL_UID}`, join(dir, 'mail')]);
  writeFileSync(join(dir, 'users'), `${user}:{PLAIN}${password}\n`);
  const conf = join(dir, 'dovecot.conf');
  writeFileSync(conf, [
    'protocols = pop3',
    'listen = 127.0.0.1',
    `base_dir = ${join(dir, 'run')}`,
    `state_dir = ${join(dir, 'state')}`,
    'instance_name = sg-bench-dovecot',
    `log_path = ${join(dir, 'dovecot.log')}`,
    'ssl = no',
    'disable_plaintext_auth = no',
    'auth_mechanisms = plain',
    'mail_location = maildir:~/Maildir',
    'pop3_uidl_format = %08Xu%08Xv',
    'default_internal_user = dovecot',
    'default_login_user = dovenull',
    `passdb {\n  driver = passwd-file\n  args = scheme=PLAIN ${join(dir, 'users')}\n}`,
    `userdb {\n  driver = static\n  args = uid=${VMAIL_UID} gid=${VMAIL_UID} home=${join(dir, 'mail')}/%u\n}`,
    `service pop3-login {\n  inet_listener pop3 {\n    port = ${port}\n  }\n  inet_listener pop3s {\n    port = 0\n  }\n}`,
    '',
  ].join('\n'));
  const child: ChildProcess = spawn('/usr/sbin/dovecot', ['-F', '-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise<void>((r) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          r();
        }, 10_000);
        child.once('exit', () => {
          clearTimeout(timer);
          r();
        });
      });
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(() => child.exitCode === null && portOpen(port), { timeout: 20_000, what: 'dovecot pop3' });
  } catch (err) {
    const log = existsSync(join(dir, 'dovecot.log')) ? readFileSync(join(dir, 'dovecot.log'), 'utf8').split('\n').slice(-3).join(' | ') : '';
    await stop();
    return `dovecot did not start: ${(err as Error).message} ${stderr.trim()} ${log}`;
  }
  return { port, version: execFileSync('/usr/sbin/dovecot', ['--version']).toString().trim(), pid: child.pid, stop };
}

// ---- main ----------------------------------------------------------------------------------------

if (!isMainThread && (workerData as { kind?: string }).kind === 'inject') {
  const d = workerData as { port: number; msgs: { rcpt: string; raw: Uint8Array }[] };
  const msgs = d.msgs.map((m) => ({ rcpt: m.rcpt, raw: Buffer.from(m.raw.buffer, m.raw.byteOffset, m.raw.byteLength) }));
  parentPort!.once('message', () => {
    const c0 = process.threadCpuUsage();
    inject(d.port, msgs).then(
      (failed) => {
        const c = process.threadCpuUsage(c0);
        parentPort!.postMessage({ ok: true, failed, cpu: (c.user + c.system) / 1e6 });
      },
      (err: unknown) => parentPort!.postMessage({ ok: false, error: (err as Error).message }),
    ).finally(() => process.exit(0));
  });
  parentPort!.postMessage({ ready: true });
  await new Promise<never>(() => {}); // the worker ends with process.exit above
} else if (!isMainThread) {
  const d = workerData as { port: number; user: string; password: string; verify?: Uint8Array[] };
  try {
    const c0 = process.threadCpuUsage();
    const result = await download(d.port, d.user, d.password, d.verify?.map((v) => Buffer.from(v)));
    const c = process.threadCpuUsage(c0);
    parentPort!.postMessage({ ok: true, result: { ...result, cpu: (c.user + c.system) / 1e6 } });
  } catch (err) {
    parentPort!.postMessage({ ok: false, error: (err as Error).message });
  }
  process.exit(0);
}

const fmtRow = (r: Row) =>
  `| ${r.name} | ${r.messages} | ${(r.bytes / MB).toFixed(0)} MB | ${r.acceptSeconds !== undefined ? `${r.acceptSeconds.toFixed(1)} s` : '–'} | ${r.seconds.toFixed(1)} s | **${(r.bytes / MB / r.seconds).toFixed(1)} MB/s** | ${(r.messages / r.seconds).toFixed(1)} | ${r.note} |`;

const node = await cassandraForTests();
cpuPids.cassandra = pidOnPort(node.port);
const keyspace = `sg_bench_${randomBytes(3).toString('hex')}`;
const dataDir = mkdtempSync(join(tmpdir(), 'sg-bench-mbx-'));
const users = Array.from({ length: USERS }, (_, i) => `u${i}@${DOMAIN}`);
const rcpt = (i: number) => users[i % users.length]!;
const wA = workload(A, 200 * 1024, 2 * MB, 1, rcpt);
const wB = workload(B, 50 * 1024, 500 * 1024, 2, rcpt);
const popUser = `pop@${DOMAIN}`;
const wPop = workload(POP3_N, 50 * 1024, 500 * 1024, 3, () => popUser);

console.log(`mailbox benchmark: Cassandra at ${node.contactPoint} (1 node, RF 1, consistency ONE), ${CLIENTS} SMTP clients, ${USERS} recipients, ${process.env.BENCH_A ? '' : 'default '}sizes A=${A}×(200 KB–2 MB) B=${B}×(50–500 KB), ${availableParallelism()} CPUs; everything (load generator, gateway, Redis, Cassandra, Postfix, Dovecot) on this machine`);
console.log('');

const gw = await startGatewayParts(node.contactPoint, keyspace, dataDir);
const hash = await hashPassword(PASSWORD);
for (const u of [...users, popUser]) await gw.mailbox.store.createUser(u, hash);
const pfx = await startMailPostfix(users);

const rows: Row[] = [];
let pfNote = '';
try {
  // a warm-up on both sides (prepared statements, Postfix's processes, and the JIT compilers of
  // the gateway and of Cassandra's JVM: a node just started spends a third of its CPU compiling
  // for the first tens of MB, which a running node has long done)
  const warm = workload(Math.max(1, Math.round(WARMUP_MB / 1.1)), 200 * 1024, 2 * MB, 9, rcpt);
  await gatewayRun(gw, 'warm-up', warm);
  await feedLocal(gw, warm, CLIENTS * 4);
  if (typeof pfx !== 'string') await postfixRun(pfx, 'warm-up', warm);

  for (const [label, msgs] of ([['A: 200 KB–2 MB', wA], ['B: 50 KB–500 KB', wB]] as const).filter(([, m]) => m.length > 0)) {
    rows.push(await gatewayRun(gw, `streamgate ${label}`, msgs));
    if (typeof pfx !== 'string') rows.push(await postfixRun(pfx, `postfix ${label}`, msgs));
    else pfNote = `postfix: ${pfx}`;
    const c0 = cpuNow();
    const th0 = threadCpu(cpuPids.cassandra);
    await profiler.start();
    const t0 = performance.now();
    await feedLocal(gw, msgs, CLIENTS * 4);
    const s = (performance.now() - t0) / 1000;
    const stages = await profiler.stop(profilePath(`local delivery alone ${label}`));
    const cpu = cpuSince(c0, 'gateway');
    rows.push({ name: `local delivery alone ${label}`, messages: msgs.length, bytes: totalBytes(msgs), seconds: s, stages, cpu: cpu.server, cassandraThreads: threadCpuSince(th0, threadCpu(cpuPids.cassandra)), note: `LocalDelivery.deliver() with ${CLIENTS * 4} in flight: the Cassandra write path only (chunks of ${gw.config.cassandra.chunkSize / 1024} KB); ${cpu.text}` });
  }
} finally {
  if (typeof pfx !== 'string') pfx.stop();
}

console.log('| run | messages | volume | accepted in | delivered in | throughput | msg/s | path |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of rows) console.log(fmtRow(r));
if (pfNote) console.log(pfNote);
for (const label of ['A: 200 KB–2 MB', 'B: 50 KB–500 KB']) {
  const s = rows.find((r) => r.name === `streamgate ${label}`);
  const p = rows.find((r) => r.name === `postfix ${label}`);
  const alone = rows.find((r) => r.name === `local delivery alone ${label}`);
  if (s && p) console.log(`${label}: streamgate / postfix = ${(p.seconds / s.seconds).toFixed(2)}× in time; CPU s per MB: streamgate (gateway, Redis, Cassandra) ${((s.cpu ?? 0) / (s.bytes / MB)).toFixed(3)}, Postfix ${((p.cpu ?? 0) / (p.bytes / MB)).toFixed(3)}`);
  if (s && alone) console.log(`${label}: end to end / Cassandra writes alone = ${(alone.seconds / s.seconds).toFixed(2)}×`);
}
console.log('');
console.log(`The gateway's main thread by stage (V8's sampling profiler; time on the thread while not idle, which on a loaded machine includes time waiting for a core):`);
for (const r of rows) if (r.stages) console.log(`- ${r.name}: ${formatStages(r.stages, { unit: 'MB', count: r.bytes / MB })}`);
console.log('');
console.log(`Cassandra's CPU by thread group (/proc; what ran during the run, flushes and compactions of earlier writes included):`);
for (const r of rows) if (r.cassandraThreads) console.log(`- ${r.name}: ${r.cassandraThreads}`);
console.log('');

const cleanup = async () => {
  await gw.mailbox.store.client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`).catch(() => {});
  await gw.stop();
  rmSync(dataDir, { recursive: true, force: true });
};
if (POP3_N === 0) {
  await cleanup();
  process.exit(0);
}

// POP3: the same 1,000 messages in a Cassandra mailbox and in a Dovecot Maildir
const t0 = performance.now();
let next = 0;
await Promise.all(Array.from({ length: CLIENTS * 4 }, async () => {
  while (next < wPop.length) await gw.mailbox.localDelivery.deliver(queuedFor(wPop[next++]!));
}));
const loadSeconds = (performance.now() - t0) / 1000;
const stored: Buffer[] = [];
for await (const ref of gw.mailbox.store.listMessages(popUser, 'inbox', 500)) stored.push(await gw.mailbox.store.readWholeBody(ref));
const dv = await startDovecot(popUser, PASSWORD, stored);
const popBytes = stored.reduce((s, b) => s + b.length, 0);
console.log(`POP3 download of a ${stored.length}-message mailbox (${(popBytes / MB).toFixed(0)} MB, loaded into Cassandra in ${loadSeconds.toFixed(1)} s), one client, RETR one after the other, median of ${RUNS}:`);
console.log('');
console.log('| server | time | throughput | msg/s | |');
console.log('|---|---|---|---|---|');
let dovecotCpu = 0;
try {
  const port = gw.mailbox.pop3.address.port;
  // warm-up: the first download checks every byte; the read path is new to Cassandra's JIT
  // compilers, which go on compiling through several downloads (a running node has long done so)
  await downloadInWorker(port, popUser, PASSWORD, stored);
  for (let k = 1; k < POP3_WARMUP; k++) await downloadInWorker(port, popUser, PASSWORD);
  const ours: number[] = [];
  const c0 = cpuNow();
  const th0 = threadCpu(cpuPids.cassandra);
  await profiler.start();
  let clientCpu = 0;
  for (let k = 0; k < RUNS; k++) {
    const r = await downloadInWorker(port, popUser, PASSWORD);
    ours.push(r.seconds);
    clientCpu += r.cpu;
  }
  const popStages = await profiler.stop(profilePath('streamgate POP3'));
  const popSince = cpuSince(c0, 'gateway', clientCpu);
  const popServerCpu = popSince.server;
  const popCpu = `${popSince.text}; Cassandra by thread group ${threadCpuSince(th0, threadCpu(cpuPids.cassandra))}`;
  const s = median(ours);
  console.log(`| streamgate POP3 | ${s.toFixed(2)} s | **${(popBytes / MB / s).toFixed(1)} MB/s** | ${(stored.length / s).toFixed(0)} | Cassandra, pages of ${gw.config.pop3.pageSize} rows, bodies in ${gw.config.cassandra.chunkSize / 1024} KB chunks |`);
  if (typeof dv === 'string') console.log(`| dovecot | – | – | – | ${dv} |`);
  else {
    await downloadInWorker(dv.port, popUser, PASSWORD, stored);
    const theirs: number[] = [];
    const dv0 = treeCpu(dv.pid);
    for (let k = 0; k < RUNS; k++) theirs.push((await downloadInWorker(dv.port, popUser, PASSWORD)).seconds);
    dovecotCpu = treeCpu(dv.pid) - dv0;
    const d = median(theirs);
    console.log(`| dovecot ${dv.version.split(' ')[0]} | ${d.toFixed(2)} s | **${(popBytes / MB / d).toFixed(1)} MB/s** | ${(stored.length / d).toFixed(0)} | Maildir on local disk (page cache warm), private instance |`);
    console.log('');
    console.log(`POP3: streamgate / dovecot = ${(d / s).toFixed(2)}×`);
  }
  console.log('');
  console.log(`The gateway's main thread during the streamgate downloads, by stage: ${formatStages(popStages, { unit: 'MB', count: (RUNS * popBytes) / MB })}`);
  console.log(`The streamgate downloads' ${popCpu}`);
  const perMb = (cpu: number) => (cpu / ((RUNS * popBytes) / MB)).toFixed(3);
  console.log(`POP3 CPU s per MB: streamgate (gateway less its client thread, Cassandra) ${perMb(popServerCpu)}${typeof dv === 'string' ? '' : `, Dovecot ${perMb(dovecotCpu)}`}`);
} finally {
  if (typeof dv !== 'string') await dv.stop();
  await cleanup();
}
process.exit(0);
