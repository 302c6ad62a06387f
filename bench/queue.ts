// npm run bench:queue — figures for the replicated queue, each beside a bare Redis baseline on the
// same nodes in the same run:
//   1. append + settle per second through the replica pair (both nodes written, transaction
//      numbers compared) for 0.4 KB, 1 KB and 10 KB messages, against raw XADD + XDEL pipelined to
//      the same two nodes;
//   2. recovery of N queued 1 KB messages (default 500,000) against a bare block-wise XRANGE;
//   3. Redis memory per queued 1 KB message on each replica.
// Options: BENCH_MESSAGES (per size, default 50000), BENCH_RECOVERY (default 500000),
// BENCH_INFLIGHT (concurrent operations, default 256), BENCH_RUNS (default 3; medians printed).
import { Redis } from 'ioredis';
import { silentLogger } from '../src/log.ts';
import { QueueManager } from '../src/queue/manager.ts';
import { testConfig } from '../test/helpers/config.ts';
import { startRedisPool } from '../test/helpers/redis.ts';

const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 50_000);
const RECOVERY = Number(process.env.BENCH_RECOVERY ?? 500_000);
const INFLIGHT = Number(process.env.BENCH_INFLIGHT ?? 256);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (n: number) => Math.round(n).toLocaleString('en');

async function parallel(total: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: INFLIGHT }, async () => {
      while (next < total) await fn(next++);
    }),
  );
  return (performance.now() - t0) / 1000;
}

const pool = await startRedisPool(3, { maxmemory: '4gb' });
const nodes = pool.slice(0, 2).map((r) => r.url);
const config = testConfig({ redis: { nodes }, queue: { historyMaxLength: 10_000 } });
const clients = pool.slice(0, 2).map((r) => new Redis({ port: r.port, host: r.host, enableAutoPipelining: true }));

try {
  console.log(`streamgate queue benchmark: ${MESSAGES.toLocaleString('en')} messages per size, ${INFLIGHT} in flight, median of ${RUNS} runs`);
  console.log('');
  console.log('| size | replica pair: append+settle msg/s | raw XADD+XDEL on both nodes msg/s | ratio |');
  console.log('|---|---|---|---|');
  let run = 0;
  for (const size of [400, 1024, 10240]) {
    const raw = Buffer.alloc(size, 0x61);
    const ours: number[] = [];
    const bare: number[] = [];
    for (let k = 0; k < RUNS; k++) {
      run++;
      const qm = new QueueManager(config, silentLogger, { gatewayId: `bench${run}` });
      await qm.start();
      const domain = `s${size}.test`;
      await qm.queueFor(domain);
      const s1 = await parallel(MESSAGES, async (i) => {
        const id = `m${i}`;
        await qm.append({ id, domain, envelope: { from: 'a@b.test', to: [`r@${domain}`] }, raw });
        await qm.settle(domain, id, 'delivered');
      });
      ours.push(MESSAGES / s1);
      await qm.stop();
      const key = `bare:{${run}}`;
      const s2 = await parallel(MESSAGES, async (i) => {
        const id = `${i + 1}-0`;
        await Promise.all(clients.map((c) => c.xadd(key, id, 'm', `m${i}`, 'raw', raw)));
        await Promise.all(clients.map((c) => c.xdel(key, id)));
      });
      bare.push(MESSAGES / s2);
      await Promise.all(clients.map((c) => c.flushall()));
    }
    console.log(`| ${size >= 1024 ? `${size / 1024} KB` : `${size / 1000} KB`} | ${fmt(median(ours))} | ${fmt(median(bare))} | ${(median(ours) / median(bare)).toFixed(2)} |`);
  }

  // --- recovery and memory ---
  const raw = Buffer.alloc(1024, 0x62);
  const used = async () => Promise.all(clients.map(async (c) => Number(/used_memory:(\d+)/.exec(await c.info('memory'))![1])));
  const before = await used();
  let qm = new QueueManager(config, silentLogger, { gatewayId: 'recovery' });
  await qm.start();
  const domain = 'recovery.test';
  await qm.queueFor(domain);
  const fill = await parallel(RECOVERY, (i) => qm.append({ id: `r${i}`, domain, envelope: { from: 'a@b.test', to: [`r${i}@${domain}`] }, raw }));
  const after = await used();
  const q = qm.queues.get(domain)!;
  const keys = q.keys;
  await qm.stop();
  console.log('');
  console.log(`filled ${RECOVERY.toLocaleString('en')} × 1 KB messages in ${fill.toFixed(1)} s (${fmt(RECOVERY / fill)} appends/s)`);
  console.log('');
  console.log('| replica | Redis memory per queued 1 KB message |');
  console.log('|---|---|');
  after.forEach((a, i) => console.log(`| ${nodes[i]!.replace('redis://', '')} | ${fmt((a - before[i]!) / RECOVERY)} bytes |`));

  const recov: number[] = [];
  const scan: number[] = [];
  for (let k = 0; k < RUNS; k++) {
    qm = new QueueManager(config, silentLogger, { gatewayId: 'recovery' });
    const t0 = performance.now();
    await qm.start();
    recov.push((performance.now() - t0) / 1000);
    if (qm.lastRecovery.messages !== RECOVERY) throw new Error(`recovered ${qm.lastRecovery.messages}, expected ${RECOVERY}`);
    await qm.stop();
    const c = clients[0]!;
    const t1 = performance.now();
    let cursor = '-';
    let n = 0;
    for (;;) {
      const rows = (await c.xrangeBuffer(keys[0], cursor, '+', 'COUNT', config.queue.blockSize)) as unknown as [Buffer, Buffer[]][];
      if (!rows.length) break;
      n += rows.length;
      cursor = `(${rows[rows.length - 1]![0].toString()}`;
    }
    scan.push((performance.now() - t1) / 1000);
    if (n !== RECOVERY) throw new Error(`read ${n}`);
  }
  console.log('');
  console.log(`| recovery of ${RECOVERY.toLocaleString('en')} × 1 KB (blocks of ${config.queue.blockSize}) | seconds |`);
  console.log('|---|---|');
  console.log(`| gateway start: find queues, read live stream + state, rebuild projection | ${median(recov).toFixed(2)} |`);
  console.log(`| bare block-wise XRANGE of the same stream | ${median(scan).toFixed(2)} |`);
  console.log(`| ratio | ${(median(recov) / median(scan)).toFixed(2)} |`);
} finally {
  for (const c of clients) c.disconnect();
  await Promise.all(pool.map((r) => r.stop()));
}
