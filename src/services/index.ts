// `streamgate services up|down|status`: the embedded default. Starts, on this machine, what the
// configuration names on loopback: a redis-server per pool node and one Cassandra node.
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
  for (const node of config.redis.nodes) {
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

export async function servicesUp(config: Config, opts: UpOptions = {}): Promise<ServiceStatus[]> {
  const say = opts.say ?? console.error;
  const wantCassandra = opts.cassandra !== false;
  const redis = localRedisNodes(config);
  const cass = wantCassandra ? localCassandra(config) : undefined;
  ensureTools([...(redis.length ? ['redis-server'] : []), ...(cass ? ['java', 'mvn'] : [])], say);
  const started = await Promise.all(
    redis.map(async (o): Promise<ServiceStatus> => {
      const r = await startRedis(o);
      return { name: 'redis', address: `${o.host}:${o.port}`, state: r.alreadyRunning ? 'running' : 'started', pid: r.pid, ms: r.ms };
    }),
  );
  if (cass) {
    const r = await startCassandra({ ...cass, log: { info: (o, m) => say(`${m ?? ''} ${JSON.stringify(o)}`), warn: (o, m) => say(`${m ?? ''} ${JSON.stringify(o)}`) } });
    started.push({ name: 'cassandra', address: `${cass.host}:${cass.nativePort}`, state: r.alreadyRunning ? 'running' : 'started', pid: r.pid, ms: r.ms });
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
  for (const node of config.redis.nodes) {
    const { host, port } = hostPort(node.url, 6379);
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
