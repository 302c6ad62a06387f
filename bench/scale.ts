// npm run bench:scale — what many queues cost one member: the whole gateway (`streamgate start`,
// one process, no Cassandra: bench/lib/gatewayProcess.ts) first idle with no queue, then after one
// message to each of BENCH_QUEUES destination domains (default 1,000; all routed to one SMTP sink
// in a process of its own, so each queue is created, delivered and left empty). For each state it
// prints the gateway's resident memory and heap, the pool's Redis memory (used_memory summed over
// the three nodes) and the CPU the gateway and the Redis nodes use per second while nothing is sent
// for BENCH_IDLE seconds (default 20): the cost of the sweeps that visit every queue (relay
// scheduler, door, dispatcher, heartbeats and tallies, history budget).
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { startRedis, startRedisPool } from '../test/helpers/redis.ts';
import { waitFor } from '../test/helpers/waitFor.ts';
import { machineCpu, procCpu } from './lib/cpu.ts';
import { startGatewayProcess } from './lib/gatewayProcess.ts';
import { startCSink } from './lib/postfixTools.ts';
import { SmtpSession } from './lib/smtpSession.ts';

const QUEUES = Number(process.env.BENCH_QUEUES ?? 1000);
const IDLE = Number(process.env.BENCH_IDLE ?? 20);
const TOKEN = 'bench-scale-token-0123456789abcdef';

const pool = await startRedisPool(3, { maxmemory: '1gb' });
const events = await startRedis();
const sink = await startCSink();
const gw = await startGatewayProcess('scale', {
  poolUrls: pool.map((r) => r.url),
  eventsUrl: events.url,
  token: TOKEN,
  config: { routes: { '*.scale.test': `smtp://127.0.0.1:${sink.port}` }, relay: { limits: { default: { connections: 2 } } } },
});
const clients = pool.map((r) => new Redis({ port: r.port, host: r.host }));

const rssMb = () => Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${gw.gw.pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024;
const heapMb = async () => {
  const text = await (await fetch(`http://127.0.0.1:${gw.opsPort}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
  return Number(/^streamgate_process_nodejs_heap_size_used_bytes (\S+)$/m.exec(text)?.[1] ?? NaN) / 1024 / 1024;
};
const redisMb = async () => (await Promise.all(clients.map(async (c) => Number(/used_memory:(\d+)/.exec(await c.info('memory'))![1])))).reduce((a, b) => a + b, 0) / 1024 / 1024;
const queueCount = async () => ((await (await fetch(`http://127.0.0.1:${gw.opsPort}/api/queues`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { queues: unknown[] }).queues.length;

interface Row {
  state: string;
  queues: number;
  rss: number;
  heap: number;
  redis: number;
  gatewayCpu: number;
  redisCpu: number;
  machineCpu: number;
}

async function idleRow(state: string): Promise<Row> {
  const g0 = procCpu(gw.gw.pid);
  const r0 = pool.reduce((a, r) => a + procCpu(r.proc.pid), 0);
  const m0 = machineCpu();
  await sleep(IDLE * 1000);
  return {
    state,
    queues: await queueCount(),
    rss: rssMb(),
    heap: await heapMb(),
    redis: await redisMb(),
    gatewayCpu: (procCpu(gw.gw.pid) - g0) / IDLE,
    redisCpu: (pool.reduce((a, r) => a + procCpu(r.proc.pid), 0) - r0) / IDLE,
    machineCpu: (machineCpu() - m0) / IDLE,
  };
}

try {
  console.error(`bench: scale: ${QUEUES} queues of one member, ${IDLE} s idle per state`);
  const rows = [await idleRow('no queue')];
  const sessions = await Promise.all(Array.from({ length: 16 }, () => SmtpSession.open(gw.smtpPort)));
  let refused = 0;
  await Promise.all(
    sessions.map(async (s, k) => {
      for (let i = k; i < QUEUES; i += sessions.length) {
        const domain = `d${i}.scale.test`;
        const { reply } = await s.send('load@src.bench.test', `someone@${domain}`, Buffer.from(`Subject: scale ${i}\r\n\r\nhello\r\n.\r\n`));
        if (reply.code !== 250) refused++;
      }
    }),
  );
  for (const s of sessions) s.close();
  await waitFor(async () => sink.received() >= QUEUES - refused, { timeout: 300_000, what: 'every message at the sink' });
  rows.push(await idleRow(`${QUEUES.toLocaleString('en')} queues, each delivered and empty`));
  console.log('');
  console.log(`One member (streamgate start, one process, no Cassandra), ${IDLE} s idle per state; ${refused} of ${QUEUES} messages refused`);
  console.log('');
  console.log('| state | queues | gateway RSS MB | heap used MB | Redis used_memory, 3 nodes, MB | gateway CPU s per s idle | Redis CPU s per s idle (3 nodes) | machine CPU s per s |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) console.log(`| ${r.state} | ${r.queues} | ${r.rss.toFixed(1)} | ${r.heap.toFixed(1)} | ${r.redis.toFixed(1)} | ${r.gatewayCpu.toFixed(3)} | ${r.redisCpu.toFixed(3)} | ${r.machineCpu.toFixed(2)} |`);
  const [a, b] = rows as [Row, Row];
  console.log('');
  console.log(`per queue: gateway RSS ${(((b.rss - a.rss) * 1024) / QUEUES).toFixed(1)} KB, Redis ${(((b.redis - a.redis) * 1024) / QUEUES).toFixed(1)} KB over the 3 nodes, gateway CPU ${(((b.gatewayCpu - a.gatewayCpu) * 1e6) / QUEUES).toFixed(1)} µs per second idle`);
} finally {
  for (const c of clients) c.disconnect();
  await gw.stop();
  await sink.close();
  await Promise.all([...pool, events].map((r) => r.stop()));
}
process.exit(0);
