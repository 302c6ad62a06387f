// npm run bench:soak — the whole gateway (`streamgate start` in a process of its own) under a
// steady SMTP load over many destination domains, all routed to one SMTP sink, for a set time,
// with and without a consumer on the lifecycle events queue. Every BENCH_EVERY seconds it prints a
// row: gateway RSS and heap, each Redis's memory by budget (mail, history; events on the events
// Redis), queues, acknowledged, refused, delivered. Then it waits for the queues to drain and
// gives a verdict:
//   - no message refused for storage (452 4.3.1) while mail's own budget was below its limit;
//   - gateway memory flat: the mean RSS of the last third of the load within 10% of the first
//     third's, counted after a warm-up (BENCH_WARMUP) in which the heap, the JIT and the
//     connection pools reach their working size; samples of the drain are not counted;
//   - every acknowledged message delivered (by its tag), none twice.
// Exit status 1 when a verdict fails. No Cassandra is used.
//
// Knobs (environment):
//   BENCH_RATE (150)           messages offered per second
//   BENCH_DOMAINS (1000)       destination domains
//   BENCH_SECONDS (75)         load time per setting; the documented long run is 1800
//   BENCH_EVERY (30)           seconds between printed rows (memory is sampled every 5 s)
//   BENCH_WARMUP (a quarter of BENCH_SECONDS, at most 120) seconds of load not counted in the
//                              memory verdict
//   BENCH_CONSUMER (both)      no | yes | both: an events consumer attached or not
//   BENCH_MAXMEMORY (256mb)    maxmemory of each pool node
//   BENCH_EVENTS_MAXMEMORY (32mb) maxmemory of the events Redis
//   BENCH_HISTORY_BUDGET (0.03) queue.historyBudget
//   BENCH_WHEN_FULL (stop)     events.whenFull
// The 30-minute setting: BENCH_SECONDS=1800 BENCH_RATE=300 BENCH_MAXMEMORY=1gb BENCH_EVENTS_MAXMEMORY=256mb npm run bench:soak
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import nodemailer from 'nodemailer';
import { startRedis, startRedisPool, type TestRedis } from '../test/helpers/redis.ts';
import { startSmtpSink, type SmtpSink } from '../test/helpers/smtpSink.ts';
import { startGatewayProcess } from './lib/gatewayProcess.ts';

const env = (k: string, d: string) => process.env[k] ?? d;
const RATE = Number(env('BENCH_RATE', '150'));
const DOMAINS = Number(env('BENCH_DOMAINS', '1000'));
const SECONDS = Number(env('BENCH_SECONDS', '75'));
const EVERY = Number(env('BENCH_EVERY', '30'));
const WARMUP = Number(env('BENCH_WARMUP', String(Math.min(120, Math.round(SECONDS / 4)))));
const CONSUMER = env('BENCH_CONSUMER', 'both');
const MAXMEMORY = env('BENCH_MAXMEMORY', '256mb');
const EVENTS_MAXMEMORY = env('BENCH_EVENTS_MAXMEMORY', '32mb');
const HISTORY_BUDGET = Number(env('BENCH_HISTORY_BUDGET', '0.03'));
const WHEN_FULL = env('BENCH_WHEN_FULL', 'stop');
const TOKEN = 'soak-bench-token-0123456789';

interface Memory {
  nodes: { node: string; usedMemory: number; mail: { bytes: number; limit: number }; history: { bytes: number; limit: number; blocked: boolean } }[];
  events: { bytes: number; limit: number; jobs: number; paused: boolean; dropped: number; usedMemory: number };
  historyTrimmed: number;
  queues: number;
  degraded: string[];
}

const mb = (b: number) => (b / 1048576).toFixed(1);

async function run(consumer: boolean): Promise<boolean> {
  const [pool, events, sink] = await Promise.all([startRedisPool(3, { maxmemory: MAXMEMORY }), startRedis({ maxmemory: EVENTS_MAXMEMORY }), startSmtpSink()]);
  const gateway = await startGatewayProcess('soak', {
    poolUrls: pool.map((r) => r.url),
    eventsUrl: events.url,
    token: TOKEN,
    config: {
      routes: { '*.soak.test': `smtp://127.0.0.1:${sink.port}` },
      queue: { historyBudget: HISTORY_BUDGET },
      relay: { limits: { default: { connections: 20, messagesPerConnection: 100 } }, idleTimeout: '1s' }, // every domain is routed to the one sink: 20 connections to it, as Postfix's default
      events: { redis: events.url, whenFull: WHEN_FULL, archive: false },
    },
  });
  const { gw, smtpPort, opsPort } = gateway;
  const api = async <T>(path: string): Promise<T> => (await fetch(`http://127.0.0.1:${opsPort}${path}`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: AbortSignal.timeout(5000) })).json() as Promise<T>;
  const metric = async (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(await (await fetch(`http://127.0.0.1:${opsPort}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text())?.[1] ?? 0);

  let worker: Worker | undefined;
  let workerConn: Redis | undefined;
  if (consumer) {
    workerConn = new Redis(events.url, { maxRetriesPerRequest: null });
    worker = new Worker('streamgate-events', async () => {}, { connection: workerConn, concurrency: 50, removeOnComplete: { count: 1000 } });
  }

  const transport = nodemailer.createTransport({ host: '127.0.0.1', port: smtpPort, ignoreTLS: true, pool: true, maxConnections: 16, maxMessages: 1000 });
  const acked = new Set<string>();
  let sent = 0;
  let refusedStorage = 0;
  let refusedOther = 0;
  let refusedWhileMailBelow = 0;
  let last: Memory | undefined;
  const mailBelow = () => !last || last.nodes.every((n) => !n.mail.limit || n.mail.bytes < n.mail.limit);
  const rss: { at: number; bytes: number }[] = [];
  const delivered = () => {
    const tags = new Map<string, number>();
    for (const m of sink.messages) {
      const tag = /^Subject: (\S+)/m.exec(m.raw.toString('latin1'))?.[1];
      if (tag) tags.set(tag, (tags.get(tag) ?? 0) + 1);
    }
    return tags;
  };
  console.log(`\nsoak: ${consumer ? 'with' : 'without'} an events consumer; ${RATE} msg/s offered over ${DOMAINS} domains for ${SECONDS} s; pool nodes ${MAXMEMORY}, events Redis ${EVENTS_MAXMEMORY}, events.whenFull ${WHEN_FULL}, queue.historyBudget ${HISTORY_BUDGET}\n`);
  console.log('| s | acked | refused (storage / other) | delivered | queues | gateway RSS MB | heap MB | mail MB (limit) | history MB (limit) | events MB (limit) | event jobs | history trimmed | events | health |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  const t0 = Date.now();
  const row = async () => {
    await sample().catch(() => {});
    const m = last!;
    const node = m.nodes.reduce((a, b) => (b.mail.bytes + b.history.bytes > a.mail.bytes + a.history.bytes ? b : a));
    const s = Math.round((Date.now() - t0) / 1000);
    const heap = await metric('streamgate_process_nodejs_heap_size_used_bytes');
    const ev = m.events.paused ? 'stopped' : m.events.dropped ? `${m.events.dropped} dropped` : 'flowing';
    console.log(`| ${s} | ${acked.size} | ${refusedStorage} / ${refusedOther} | ${delivered().size} | ${m.queues} | ${mb(rss.at(-1)?.bytes ?? 0)} | ${mb(heap)} | ${mb(node.mail.bytes)} (${mb(node.mail.limit)}) | ${mb(node.history.bytes)} (${mb(node.history.limit)})${node.history.blocked ? ' held' : ''} | ${mb(m.events.bytes)} (${mb(m.events.limit)}) | ${m.events.jobs} | ${m.historyTrimmed} | ${ev} | ${m.degraded.length ? 'degraded' : 'ok'} |`);
  };
  const sample = async () => {
    last = await api<Memory>('/api/memory');
    rss.push({ at: Date.now(), bytes: Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${gw.pid}/status`, 'utf8'))?.[1] ?? 0) * 1024 });
  };
  await sample();
  const sampler = setInterval(() => void sample().catch(() => {}), 5000);
  let nextRow = t0 + EVERY * 1000;
  const inflight = new Set<Promise<void>>();
  const end = t0 + SECONDS * 1000;
  while (Date.now() < end) {
    const due = Math.floor(((Date.now() - t0) / 1000) * RATE);
    while (sent < due) {
      const i = sent++;
      const tag = `soak-${consumer ? 'c' : 'n'}-${i}`;
      const p = transport
        .sendMail({ envelope: { from: 'load@src.soak', to: [`u${i % 7}@d${i % DOMAINS}.soak.test`] }, raw: `Subject: ${tag}\r\nFrom: load@src.soak\r\n\r\n${'x'.repeat(70)}\r\n`.repeat(1) + `${'y'.repeat(76)}\r\n`.repeat(12) })
        .then(
          () => void acked.add(tag),
          (err: { responseCode?: number }) => {
            if (err.responseCode === 452) {
              refusedStorage++;
              if (mailBelow()) refusedWhileMailBelow++;
            } else refusedOther++;
          },
        )
        .finally(() => inflight.delete(p));
      inflight.add(p);
      if (inflight.size > 2000) break;
    }
    if (Date.now() >= nextRow) {
      await row();
      nextRow += EVERY * 1000;
    }
    await sleep(20);
  }
  await Promise.all(inflight);
  transport.close();
  // drain: every acknowledged message delivered
  const drainStart = Date.now();
  while (Date.now() - drainStart < 120_000) {
    const got = delivered();
    if ([...acked].every((t) => got.has(t))) break;
    await sleep(1000);
  }
  await sample();
  await row();
  clearInterval(sampler);
  const got = delivered();
  const missing = [...acked].filter((t) => !got.has(t)).length;
  const dups = [...got.values()].filter((n) => n > 1).length;
  const counted = rss.filter((r) => r.at >= t0 + WARMUP * 1000 && r.at <= end).map((r) => r.bytes);
  const third = Math.max(1, Math.floor(counted.length / 3));
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  const first = mean(counted.slice(0, third));
  const lastThird = mean(counted.slice(-third));
  const growth = (lastThird - first) / first;
  const checks = [
    [`no storage refusal while mail was below its budget (${refusedWhileMailBelow} of ${refusedStorage} refusals)`, refusedWhileMailBelow === 0],
    [`gateway memory flat: RSS last third ${mb(lastThird)} MB vs first third ${mb(first)} MB of the load after ${WARMUP} s of warm-up (${(growth * 100).toFixed(1)}%, limit 10%)`, counted.length >= 3 && growth <= 0.1],
    [`every acknowledged message delivered: ${acked.size} acked, ${missing} missing, ${dups} twice`, missing === 0 && dups === 0],
  ] as const;
  console.log('');
  for (const [what, ok] of checks) console.log(`${ok ? 'PASS' : 'FAIL'}  ${what}`);
  await worker?.close();
  workerConn?.disconnect();
  await gateway.stop();
  await Promise.all([...pool, events].map((r: TestRedis) => r.stop()));
  await (sink as SmtpSink).close();
  return checks.every(([, ok]) => ok);
}

const settings = CONSUMER === 'both' ? [false, true] : [CONSUMER === 'yes'];
let ok = true;
for (const c of settings) ok = (await run(c)) && ok;
console.log(`\nverdict: ${ok ? 'PASS' : 'FAIL'}`);
process.exit(ok ? 0 : 1);
