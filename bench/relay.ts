// Relay benchmark: end to end, from SMTP accept to an SMTP sink on loopback, with a 70% 1 KB /
// 30% 10 KB mix, in messages per second; side by side with Postfix relaying the same load to the
// same kind of sink in the same run (a private Postfix instance, bench/lib/postfix.ts: its own
// config and queue directories in a temp dir, its own loopback port, stopped afterwards; the
// system's Postfix setup and port 25 are never touched).
//
// The gateway side: SMTP ingress, replicated queue and relay in a child process of their own (as
// Postfix runs in processes of its own); the load generator and the sinks are in this process for
// both sides. A third row gives the relay alone, draining a queue filled beforehand.
//
//   npm run bench:relay            BENCH_N=3000 (messages per side)  BENCH_CLIENTS=32 (SMTP clients)
//                                  BENCH_CONNECTIONS=20 (the gateway's connections to the sink, as Postfix's default)
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
import { startSmtpSink, type SmtpSink } from '../test/helpers/smtpSink.ts';
import { freePort, waitFor } from '../test/helpers/waitFor.ts';
import { postfixVersion, startPostfix, type PostfixInstance } from './lib/postfix.ts';
import { newMessageId } from '../src/message/ids.ts';

const N = Number(process.env.BENCH_N ?? 3000);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 32);
/** Connections to the sink: Postfix's default per destination (default_destination_concurrency_limit). */
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 20);
const DOMAIN = 'bench.test';

function message(i: number): Buffer {
  const size = i % 10 < 7 ? 1024 : 10 * 1024;
  const head = `From: <load@src.test>\r\nTo: <r${i}@${DOMAIN}>\r\nSubject: bench ${i}\r\nMessage-ID: <b${i}.${Date.now()}@src.test>\r\nX-Bench-Id: ${i}\r\n\r\n`;
  const line = 'The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuv\r\n'; // 80 bytes
  let body = '';
  while (head.length + body.length + line.length <= size) body += line;
  return Buffer.from(head + body + 'x'.repeat(Math.max(0, size - head.length - body.length - 2)) + '\r\n');
}

/** Sends N messages over SMTP with CLIENTS connections (nodemailer), resolves when all are accepted. */
async function inject(port: number): Promise<number> {
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
    while (next < N) {
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
}

/**
 * The gateway runs in a child process of its own (QueueManager, relay, SMTP ingress), as Postfix
 * runs in processes of its own: the load generator and the sink stay in this process for both.
 */
async function runGateway(sink: SmtpSink): Promise<Figure> {
  const pool = await startRedisPool(2);
  const port = await freePort();
  const settings = { nodes: pool.map((r) => r.url), sinkPort: sink.port, port };
  const child = spawn(process.execPath, [import.meta.filename, 'serve'], { env: { ...process.env, BENCH_GATEWAY: JSON.stringify(settings) }, stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => (d.toString().includes('ready') ? resolve() : undefined));
      child.once('exit', (code) => reject(new Error(`gateway exited with ${code}`)));
    });
    const t0 = Date.now();
    const failed = await inject(port);
    const injected = Date.now();
    await waitFor(() => sink.messages.length >= N - failed, { timeout: 600_000, every: 20, what: 'gateway: all at the sink' });
    const t1 = Date.now();
    const note = `SMTP ingress → replicated queue (2 Redis nodes) → relay → sink, the gateway in its own process${failed ? ` (${failed} refused at SMTP)` : ''}`;
    return { name: 'streamgate', msgs: N, seconds: (t1 - t0) / 1000, injectSeconds: (injected - t0) / 1000, note };
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode === null ? child.once('exit', r) : r(null)));
    await Promise.all(pool.map((r) => r.stop()));
  }
}

if (process.argv[2] === 'serve') {
  const settings = JSON.parse(process.env.BENCH_GATEWAY!) as { nodes: string[]; sinkPort: number; port: number };
  const config = testConfig({
    gateway: { id: 'bench-gw', hostname: 'gw.bench.test', dataDir: mkdtempSync(join(tmpdir(), 'sg-bench-relay-')) },
    redis: { nodes: settings.nodes },
    routes: { [DOMAIN]: `smtp://127.0.0.1:${settings.sinkPort}` },
    relay: { limits: { destinations: { [DOMAIN]: { connections: CONNECTIONS } } } },
    domains: { local: [], relay: [DOMAIN] },
    smtp: { listen: `127.0.0.1:${settings.port}` },
    submission: { listen: '127.0.0.1:0' },
  });
  const qm = new QueueManager(config, silentLogger);
  await qm.start();
  const relay = new Relay(qm, config, silentLogger);
  relay.start();
  const ingress = new SmtpIngress({ config, queues: qm, log: silentLogger });
  await ingress.start();
  process.once('SIGTERM', () => {
    void (async () => {
      await ingress.stop();
      await relay.stop();
      await qm.stop();
      process.exit(0);
    })();
  });
  console.log('ready');
  await new Promise(() => {}); // serve until SIGTERM
}

async function runPostfix(sink: SmtpSink): Promise<Figure | string> {
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
    const before = sink.messages.length;
    const t0 = Date.now();
    const failed = await inject(port);
    const injected = Date.now();
    await waitFor(() => sink.messages.length - before >= N - failed, { timeout: 600_000, every: 20, what: 'postfix: all at the sink' });
    const t1 = Date.now();
    return { name: 'postfix', msgs: N, seconds: (t1 - t0) / 1000, injectSeconds: (injected - t0) / 1000, note: `Postfix ${postfixVersion()}, private instance, default limits (20 connections per destination), disk queue${failed ? `, ${failed} refused` : ''}` };
  } catch (err) {
    return `postfix run failed: ${(err as Error).message.split('\n')[0]}`;
  } finally {
    pf.stop();
  }
}

/** The relay alone: N messages already queued, then the relay started; time until all are at the sink. */
async function runRelayOnly(sink: SmtpSink): Promise<Figure> {
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
  await waitFor(() => sink.messages.length >= N && qm.depth(DOMAIN).inflight === 0, { timeout: 600_000, every: 10, what: 'drain' });
  const t1 = Date.now();
  await relay.stop();
  await qm.stop();
  await Promise.all(pool.map((r) => r.stop()));
  return { name: 'relay only', msgs: N, seconds: (t1 - t0) / 1000, injectSeconds: 0, note: `queue already full → relay (take, deliver, settle on 2 replicas) → sink, ${CONNECTIONS} connections` };
}

const drainSink = await startSmtpSink({ hideStartTls: true });
const drain = await runRelayOnly(drainSink);
await drainSink.close();
const gwSink = await startSmtpSink({ hideStartTls: true });
const pfSink = await startSmtpSink({ hideStartTls: true });
console.log(`relay benchmark: ${N} messages per side (70% 1 KB / 30% 10 KB), ${CLIENTS} SMTP clients, sinks on loopback`);
const gw = await runGateway(gwSink);
const pf = await runPostfix(pfSink);
await Promise.all([gwSink.close(), pfSink.close()]);

const row = (f: Figure) =>
  `${f.name.padEnd(11)} ${String(f.msgs).padStart(6)}  ${f.seconds.toFixed(2).padStart(7)} s  ${(f.msgs / f.seconds).toFixed(0).padStart(7)} msg/s  (accepted in ${f.injectSeconds.toFixed(2)} s)  ${f.note}`;
console.log(`${'system'.padEnd(11)} ${'msgs'.padStart(6)}  ${'time'.padStart(9)}  ${'rate'.padStart(13)}`);
console.log(row(gw));
console.log(row(drain));
if (typeof pf === 'string') console.log(`postfix     ${pf}`);
else {
  console.log(row(pf));
  console.log(`streamgate / postfix: ${(pf.seconds / gw.seconds).toFixed(2)}×`);
}
process.exit(0);
