// `streamgate services up|down|status`: the embedded default. Starts, on this machine, what the
// configuration names on loopback: a redis-server per pool node, one for lifecycle events and
// producer jobs (events.redis, unless it names a pool node), and Cassandra: one node, or a cluster
// of `cassandra.local.nodes` (up to 3) on consecutive loopback addresses.
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import cassandra from 'cassandra-driver';
import type { Config } from '../config/schema.ts';
import { cassandraAnswers, startCassandra, stopCassandra, type CassandraNodeOptions } from './cassandra.ts';
import { isLoopback, redisAnswers, redisPid, startRedis, stopRedis, type RedisNodeOptions } from './redis.ts';
import { ensureTools } from './tools.ts';

export interface ServiceStatus {
  name: string;
  address: string;
  state: 'running' | 'started' | 'stopped' | 'external' | 'down';
  pid?: number | undefined;
  ms?: number;
}

function hostPort(url: string, defPort: number): { host: string; port: number } {
  const u = new URL(url.includes('://') ? url : `tcp://${url}`);
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || defPort) };
}

export function localRedisNodes(config: Config): RedisNodeOptions[] {
  const out: RedisNodeOptions[] = [];
  const urls = config.redis.nodes.map((n) => ({ url: n.url, standby: n.standby }));
  const ev = hostPort(config.events.redis, 6379);
  if (!config.redis.nodes.some((n) => { const p = hostPort(n.url, 6379); return p.host === ev.host && p.port === ev.port; })) urls.push({ url: config.events.redis, standby: undefined });
  for (const node of urls) {
    const { host, port } = hostPort(node.url, 6379);
    if (!isLoopback(host)) continue;
    const extraBind: string[] = [];
    if (node.standby) {
      const sb = hostPort(node.standby, 6379);
      if (sb.port === port && isLoopback(sb.host) && sb.host !== host) extraBind.push(sb.host);
    }
    out.push({
      host, port, extraBind,
      dir: join(config.gateway.dataDir, 'services', `redis-${port}`),
      maxmemory: config.redis.maxmemory,
      aof: config.redis.persistence === 'aof',
    });
  }
  return out;
}

/** The token of node `i` of `n`: the Murmur3 ring (-2^63 .. 2^63-1) split evenly; 0 for a node alone. */
export function nodeToken(i: number, n: number): string {
  if (n === 1) return '0';
  return (-(2n ** 63n) + (BigInt(i) * 2n ** 64n) / BigInt(n)).toString();
}

/**
 * The Cassandra nodes `services up` starts: none unless the first contact point is on loopback;
 * then `cassandra.local.nodes` of them on that address and the next ones, with the same ports,
 * each with its own data dir; the first is the seed of the others.
 */
export function localCassandraNodes(config: Config): CassandraNodeOptions[] {
  const first = config.cassandra.contactPoints[0];
  if (!first) return [];
  const { host, port } = hostPort(first, 9042);
  if (!isLoopback(host)) return [];
  const n = config.cassandra.local.nodes;
  const storagePort = port + 10_000 <= 65_535 ? port + 10_000 : port - 10_000;
  const octets = host.split('.');
  const hostOf = (i: number) => (i === 0 ? host : [...octets.slice(0, 3), String(Number(octets[3]) + i)].join('.'));
  const home = join(config.gateway.dataDir, 'cassandra');
  return Array.from({ length: n }, (_, i) => {
    const h = hostOf(i);
    const node: CassandraNodeOptions = {
      home,
      dataDir: join(config.gateway.dataDir, 'services', i === 0 ? `cassandra-${port}` : `cassandra-${h}-${port}`),
      host: h, nativePort: port, heap: config.cassandra.heap, jit: config.cassandra.jit,
    };
    if (n > 1) Object.assign(node, { storagePort, seeds: [`${host}:${storagePort}`], initialToken: nodeToken(i, n), hintedHandoff: true });
    return node;
  });
}

/** True once a node has written data files (its data dir holds system tables). */
const hasData = (o: CassandraNodeOptions) => existsSync(join(o.dataDir!, 'data', 'system'));

/** Resolves when the driver, connected to `first`, sees `n` nodes and all of them up. */
async function ringUp(first: CassandraNodeOptions, n: number, timeoutMs: number): Promise<void> {
  const client = new cassandra.Client({
    contactPoints: [`${first.host}:${first.nativePort}`],
    protocolOptions: { port: first.nativePort }, // the port of the peers it discovers
    localDataCenter: 'datacenter1',
    socketOptions: { connectTimeout: 3000, readTimeout: 5000 },
  });
  const t0 = Date.now();
  try {
    await client.connect();
    for (;;) {
      const hosts = client.hosts.values();
      if (hosts.length >= n && hosts.every((h) => h.isUp())) return;
      if (Date.now() - t0 > timeoutMs) {
        throw new Error(`the cassandra ring shows ${hosts.filter((h) => h.isUp()).length} of ${n} nodes up after ${timeoutMs / 1000} s: ${hosts.map((h) => `${h.address} ${h.isUp() ? 'up' : 'down'}`).join(', ')}`);
      }
      await sleep(500);
    }
  } finally {
    await client.shutdown().catch(() => {});
  }
}

export interface UpOptions {
  cassandra?: boolean;
  say?: (line: string) => void;
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** What Cassandra's system.log says it is doing: the message of its last line. */
function cassandraPhase(dataDir: string): string | undefined {
  const file = join(dataDir, 'logs', 'system.log');
  try {
    const size = statSync(file).size;
    const buf = Buffer.alloc(Math.min(size, 4096));
    const fd = openSync(file, 'r');
    try {
      readSync(fd, buf, 0, buf.length, size - buf.length);
    } finally {
      closeSync(fd);
    }
    const last = buf.toString('utf8').trimEnd().split('\n').pop() ?? '';
    const msg = last.slice(last.indexOf(' - ') + 3).trim(); // "INFO  [main] <date> File.java:12 - message"
    return msg.length > 100 ? `${msg.slice(0, 97)}...` : msg || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Starts what is not running and waits until each answers. `say` gets plain progress lines:
 * Redis starting and ready, Cassandra's steps (jars, JVM, what its log says every few seconds).
 */
export async function servicesUp(config: Config, opts: UpOptions = {}): Promise<ServiceStatus[]> {
  const say = opts.say ?? console.error;
  const wantCassandra = opts.cassandra !== false;
  const redis = localRedisNodes(config);
  const cass = wantCassandra ? localCassandraNodes(config) : [];
  ensureTools([...(redis.length ? ['redis-server'] : []), ...(cass.length ? ['java', 'mvn'] : [])], say);
  const t0 = Date.now();
  if (redis.length) say(`redis ×${redis.length} starting on ${redis.map((o) => `${o.host}:${o.port}`).join(', ')}`);
  const started = await Promise.all(
    redis.map(async (o): Promise<ServiceStatus> => {
      const r = await startRedis(o);
      return { name: 'redis', address: `${o.host}:${o.port}`, state: r.alreadyRunning ? 'running' : 'started', pid: r.pid, ms: r.ms };
    }),
  );
  if (redis.length) say(`redis ×${redis.length} ready in ${seconds(Date.now() - t0)}${started.every((r) => r.state === 'running') ? ' (already running)' : ''}`);
  // nodes added to a cluster whose first node held data before this start stream their ranges
  const clusterHadData = cass.length > 1 && hasData(cass[0]!);
  for (const [i, node] of cass.entries()) {
    const t1 = Date.now();
    const name = cass.length > 1 ? `cassandra ${i + 1}/${cass.length}` : 'cassandra';
    const o = { ...node, autoBootstrap: i > 0 && clusterHadData && !hasData(node) };
    say(`${name} starting on ${o.host}:${o.nativePort} (about a minute${o.autoBootstrap ? ', more: it joins a cluster with data' : ''})`);
    const line = (x: { pid?: unknown; ms?: unknown }, m?: string) => say(`${m ?? ''}${typeof x.ms === 'number' ? ` in ${seconds(x.ms)}` : ''}${x.pid ? ` (pid ${String(x.pid)})` : ''}`);
    const ticker = setInterval(() => say(`${name} starting, ${seconds(Date.now() - t1)}: ${cassandraPhase(o.dataDir!) ?? 'JVM starting'}`), 10_000);
    try {
      // one at a time: a node joins the ring only while no other is joining
      const r = await startCassandra({ ...o, log: { info: line, warn: line } });
      if (r.alreadyRunning) say(`${name} already running (pid ${r.pid})`);
      started.push({ name: 'cassandra', address: `${o.host}:${o.nativePort}`, state: r.alreadyRunning ? 'running' : 'started', pid: r.pid, ms: r.ms });
    } finally {
      clearInterval(ticker);
    }
  }
  if (cass.length > 1) {
    const t2 = Date.now();
    await ringUp(cass[0]!, cass.length, 120_000);
    say(`cassandra ring: ${cass.length} nodes up (${seconds(Date.now() - t2)})`);
  }
  return started;
}

export async function servicesDown(config: Config): Promise<ServiceStatus[]> {
  const out: ServiceStatus[] = [];
  for (const o of localRedisNodes(config)) {
    const stopped = await stopRedis(o);
    out.push({ name: 'redis', address: `${o.host}:${o.port}`, state: stopped ? 'stopped' : 'down' });
  }
  for (const cass of localCassandraNodes(config).reverse()) {
    const stopped = await stopCassandra(cass);
    out.push({ name: 'cassandra', address: `${cass.host}:${cass.nativePort}`, state: stopped ? 'stopped' : 'down' });
  }
  return out;
}

export async function servicesStatus(config: Config): Promise<ServiceStatus[]> {
  const out: ServiceStatus[] = [];
  const events = hostPort(config.events.redis, 6379);
  const all = [...config.redis.nodes.map((n) => n.url), ...(config.redis.nodes.some((n) => { const p = hostPort(n.url, 6379); return p.host === events.host && p.port === events.port; }) ? [] : [config.events.redis])];
  for (const url of all) {
    const { host, port } = hostPort(url, 6379);
    const local = localRedisNodes(config).find((o) => o.host === host && o.port === port);
    const up = await redisAnswers(host, port);
    out.push({ name: 'redis', address: `${host}:${port}`, state: up ? (local ? 'running' : 'external') : 'down', pid: local ? redisPid(local) : undefined });
  }
  const local = localCassandraNodes(config).map((o) => `${o.host}:${o.nativePort}`);
  for (const cp of [...new Set([...local, ...config.cassandra.contactPoints.map((c) => { const p = hostPort(c, 9042); return `${p.host}:${p.port}`; })])]) {
    const { host, port } = hostPort(cp, 9042);
    const up = await cassandraAnswers(host, port);
    out.push({ name: 'cassandra', address: `${host}:${port}`, state: up ? (isLoopback(host) ? 'running' : 'external') : 'down' });
  }
  return out;
}
