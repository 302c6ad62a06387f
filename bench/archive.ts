// npm run bench:archive — the event log's throughput and what it costs the queue path, in one run.
//
//   1. archive alone: BENCH_EVENTS events (default 60,000: messages accepted, taken and delivered,
//      three events each) are written to a queue's history with no archive running, then the
//      archive drains them into Cassandra: events per second, and the CPU per event of the gateway
//      process, of the Cassandra node and of the two Redis nodes (which read the history out).
//   2. cost: the same traffic through the queue (append, take, settle on the replica pair) with
//      and without the archive running beside it, twice each, alternating: messages per second
//      of each side and their ratio.
//
// BENCH_PROFILE=dir writes the archive-alone drain's CPU profile there (archive-alone.cpuprofile).
//
// Redis: a replica pair of redis-server processes on free loopback ports; Cassandra: the node
// STREAMGATE_TEST_CASSANDRA names, else one started for the run (test/helpers/cassandra.ts).
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { cpuUsage } from 'node:process';
import { HistoryArchive } from '../src/events/archive.ts';
import { newMessageId } from '../src/message/ids.ts';
import { silentLogger } from '../src/log.ts';
import { MailStore } from '../src/mailbox/store.ts';
import { QueueManager } from '../src/queue/manager.ts';
import { cassandraForTests } from '../test/helpers/cassandra.ts';
import { testConfig } from '../test/helpers/config.ts';
import { startRedisPool } from '../test/helpers/redis.ts';
import { pidOnPort, procCpu, threadCpu, threadCpuSince } from './lib/cpu.ts';
import { StageProfiler } from './lib/stages.ts';

const EVENTS = Number(process.env.BENCH_EVENTS ?? 60_000);
const MESSAGES = Math.ceil(EVENTS / 3);
const RAW = Buffer.from(`Subject: bench\r\n\r\n${'x'.repeat(1000)}\r\n`);

const node = await cassandraForTests();
const pool = await startRedisPool(2, { maxmemory: '2gb' });
const keyspace = `sg_bench_archive_${randomBytes(3).toString('hex')}`;
const config = testConfig({ redis: { nodes: pool.map((r) => r.url) }, queue: { historyMaxLength: 10_000 }, cassandra: { contactPoints: [node.contactPoint], keyspace } });
const qm = new QueueManager(config, silentLogger, { gatewayId: 'gw-bench', archived: true });
await qm.start();
const store = new MailStore(config, silentLogger);
await store.connect();

/** `n` messages accepted, taken and delivered on queue `domain`, 500 at a time; messages per second. */
async function traffic(domain: string, n: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i += 500) {
    const ids = Array.from({ length: Math.min(500, n - i) }, () => newMessageId());
    await Promise.all(ids.map((id) => qm.append({ id, domain, envelope: { from: 's@src.bench.test', to: [`r@${domain}`] }, raw: RAW })));
    for (let taken = await qm.take(domain, 500); taken.length; taken = await qm.take(domain, 500)) {
      await Promise.all(taken.map((m) => qm.settle(domain, m.id, 'delivered', { reply: '250 ok' })));
    }
  }
  return (n * 1000) / (performance.now() - t0);
}

try {
  // 1. archive alone
  await traffic('alone.bench.test', MESSAGES);
  const archive = new HistoryArchive(qm, store, config, silentLogger);
  const profiler = process.env.BENCH_PROFILE ? new StageProfiler() : undefined;
  await profiler?.start();
  const c0 = cpuUsage();
  const cassPid = pidOnPort(node.port);
  const redisCpu = () => pool.reduce<number>((a, r) => a + procCpu(r.proc.pid), 0);
  const k0 = procCpu(cassPid);
  const th0 = threadCpu(cassPid);
  const r0 = redisCpu();
  const t0 = performance.now();
  await archive.drain();
  const ms = performance.now() - t0;
  const cpu = cpuUsage(c0);
  const cassS = procCpu(cassPid) - k0;
  const cassThreads = threadCpuSince(th0, threadCpu(cassPid));
  const redisS = redisCpu() - r0;
  if (profiler) await profiler.stopProfile(join(process.env.BENCH_PROFILE!, 'archive-alone.cpuprofile'));
  const events = archive.status().archived;
  console.log(`archive alone: ${events.toLocaleString('en')} events into Cassandra in ${(ms / 1000).toFixed(1)} s: ${Math.round((events * 1000) / ms).toLocaleString('en')} events/s, gateway CPU ${(((cpu.user + cpu.system) / events)).toFixed(1)} µs per event, Cassandra's ${((cassS * 1e6) / events).toFixed(1)} µs per event, the Redis pair's ${((redisS * 1e6) / events).toFixed(1)} µs per event`);
  console.log(`  Cassandra by thread group: ${cassThreads}`);
  archive.start();

  // 2. cost: with and without the archive beside the traffic, alternating
  const rates: Record<'with' | 'without', number[]> = { with: [], without: [] };
  for (let round = 0; round < 2; round++) {
    for (const side of ['without', 'with'] as const) {
      if (side === 'with') archive.start();
      else await archive.stop();
      rates[side].push(await traffic(`${side}-${round}.bench.test`, Math.ceil(MESSAGES / 2)));
      if (side === 'with') await archive.drain();
    }
  }
  const avg = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  console.log(`queue path (append + take + settle, 1 KB): without the archive ${Math.round(avg(rates.without)).toLocaleString('en')} msg/s, with it ${Math.round(avg(rates.with)).toLocaleString('en')} msg/s: ratio ${(avg(rates.with) / avg(rates.without)).toFixed(2)}`);
  await archive.stop();
} finally {
  await store.client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`).catch(() => {});
  await store.close();
  await qm.stop();
  await Promise.all(pool.map((r) => r.stop()));
}
process.exit(0);
