// Local redis-server processes for the configured pool: one per node whose address is on this
// machine, with maxmemory set, maxmemory-policy noeviction, persistence off unless AOF is asked.
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { isOurs, readPid, stopPid } from './pidfile.ts';

export interface RedisNodeOptions {
  host: string;
  port: number;
  /** Other loopback addresses the same server answers on (a standby path such as 127.0.0.2). */
  extraBind?: string[];
  dir: string;
  maxmemory: number;
  aof?: boolean;
}

export const isLoopback = (host: string) => host === 'localhost' || host === '::1' || /^127\./.test(host);

export async function redisAnswers(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  const r = new Redis({ host, port, lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, retryStrategy: () => null });
  r.on('error', () => {});
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

const pidFile = (o: RedisNodeOptions) => join(resolve(o.dir), 'redis.pid');

/** Starts the node unless our pid file names a live redis-server that answers. Idempotent. */
export async function startRedis(o: RedisNodeOptions, timeoutMs = 10_000): Promise<{ pid: number; ms: number; alreadyRunning: boolean }> {
  const t0 = Date.now();
  const dir = resolve(o.dir);
  mkdirSync(dir, { recursive: true });
  const existing = readPid(pidFile(o));
  if (existing && isOurs(existing, 'redis-server') && (await redisAnswers(o.host, o.port))) {
    return { pid: existing, ms: Date.now() - t0, alreadyRunning: true };
  }
  const binds = [o.host, ...(o.extraBind ?? [])].join(' ');
  const args = [
    '--port', String(o.port),
    '--bind', binds,
    '--dir', dir,
    '--daemonize', 'yes',
    '--pidfile', pidFile(o),
    '--logfile', join(dir, 'redis.log'),
    '--maxmemory', String(o.maxmemory),
    '--maxmemory-policy', 'noeviction',
    '--save', '',
    '--appendonly', o.aof ? 'yes' : 'no',
    '--protected-mode', 'no',
  ];
  await new Promise<void>((ok, fail) => {
    const child = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('error', fail);
    child.on('exit', (code) => (code === 0 ? ok() : fail(new Error(`redis-server on ${o.host}:${o.port} exited ${code}: ${err.trim()}`))));
  });
  while (!(await redisAnswers(o.host, o.port))) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`redis-server on ${o.host}:${o.port} did not answer PING within ${timeoutMs} ms (log: ${join(dir, 'redis.log')})`);
    await sleep(25);
  }
  return { pid: readPid(pidFile(o)) ?? 0, ms: Date.now() - t0, alreadyRunning: false };
}

export async function stopRedis(o: Pick<RedisNodeOptions, 'dir'>): Promise<boolean> {
  return stopPid(join(resolve(o.dir), 'redis.pid'), 'redis-server');
}

export function redisPid(o: Pick<RedisNodeOptions, 'dir'>): number | undefined {
  const pid = readPid(join(resolve(o.dir), 'redis.pid'));
  return pid && isOurs(pid, 'redis-server') ? pid : undefined;
}
