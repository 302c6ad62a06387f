// `streamgate services up|down|status`: the embedded default. Starts, on this machine, what the
// configuration names on loopback: a redis-server per pool node, one for lifecycle events and
// producer jobs (events.redis, unless it names a pool node), and one Cassandra node.
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
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

export function localCassandra(config: Config): CassandraNodeOptions | undefined {
  const first = config.cassandra.contactPoints[0];
  if (!first) return undefined;
  const { host, port } = hostPort(first, 9042);
  if (!isLoopback(host)) return undefined;
  return {
    home: join(config.gateway.dataDir, 'cassandra'),
    dataDir: join(config.gateway.dataDir, 'services', `cassandra-${port}`),
    host, nativePort: port, heap: config.cassandra.heap,
  };
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
  const cass = wantCassandra ? localCassandra(config) : undefined;
  ensureTools([...(redis.length ? ['redis-server'] : []), ...(cass ? ['java', 'mvn'] : [])], say);
  const t0 = Date.now();
  if (redis.length) say(`redis ×${redis.length} starting on ${redis.map((o) => `${o.host}:${o.port}`).join(', ')}`);
  const started = await Promise.all(
    redis.map(async (o): Promise<ServiceStatus> => {
      const r = await startRedis(o);
      return { name: 'redis', address: `${o.host}:${o.port}`, state: r.alreadyRunning ? 'running' : 'started', pid: r.pid, ms: r.ms };
    }),
  );
  if (redis.length) say(`redis ×${redis.length} ready in ${seconds(Date.now() - t0)}${started.every((r) => r.state === 'running') ? ' (already running)' : ''}`);
  if (cass) {
    const t1 = Date.now();
    say(`cassandra starting on ${cass.host}:${cass.nativePort} (about a minute)`);
    const line = (o: { pid?: unknown; ms?: unknown }, m?: string) => say(`${m ?? ''}${typeof o.ms === 'number' ? ` in ${seconds(o.ms)}` : ''}${o.pid ? ` (pid ${String(o.pid)})` : ''}`);
    const ticker = setInterval(() => say(`cassandra starting, ${seconds(Date.now() - t1)}: ${cassandraPhase(cass.dataDir!) ?? 'JVM starting'}`), 10_000);
    try {
      const r = await startCassandra({ ...cass, log: { info: line, warn: line } });
      if (r.alreadyRunning) say(`cassandra already running (pid ${r.pid})`);
      started.push({ name: 'cassandra', address: `${cass.host}:${cass.nativePort}`, state: r.alreadyRunning ? 'running' : 'started', pid: r.pid, ms: r.ms });
    } finally {
      clearInterval(ticker);
    }
  }
  return started;
}

export async function servicesDown(config: Config): Promise<ServiceStatus[]> {
  const out: ServiceStatus[] = [];
  for (const o of localRedisNodes(config)) {
    const stopped = await stopRedis(o);
    out.push({ name: 'redis', address: `${o.host}:${o.port}`, state: stopped ? 'stopped' : 'down' });
  }
  const cass = localCassandra(config);
  if (cass) {
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
  for (const cp of config.cassandra.contactPoints) {
    const { host, port } = hostPort(cp, 9042);
    const up = await cassandraAnswers(host, port);
    out.push({ name: 'cassandra', address: `${host}:${port}`, state: up ? (isLoopback(host) ? 'running' : 'external') : 'down' });
  }
  return out;
}
