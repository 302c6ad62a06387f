// Real redis-server processes on free loopback ports in temp folders, killed afterwards even when
// a test fails (the returned stop() plus a process 'exit' hook).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './waitFor.ts';

export interface TestRedis {
  host: string;
  port: number;
  url: string;
  dir: string;
  proc: ChildProcess;
  client(): Redis;
  kill(signal?: NodeJS.Signals): void;
  /** Starts it again on the same port and folder after a kill. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export interface RedisOptions {
  maxmemory?: string;
  policy?: string;
  bind?: string[];
  /** requirepass: the url then carries it (redis://:PASSWORD@host:port). */
  password?: string;
}

export async function startRedis(opts: RedisOptions = {}): Promise<TestRedis> {
  let port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'sg-redis-'));
  const bind = opts.bind ?? ['127.0.0.1'];
  const clients: Redis[] = [];
  const spawnIt = async (): Promise<ChildProcess> => {
    const proc = spawn('redis-server', ['--port', String(port), '--bind', bind.join(' '), '--dir', dir, '--save', '', '--appendonly', 'no',
      '--maxmemory', opts.maxmemory ?? '512mb', '--maxmemory-policy', opts.policy ?? 'noeviction', '--protected-mode', 'no', ...(opts.password ? ['--requirepass', opts.password] : [])], { stdio: 'ignore' });
    live.add(proc);
    proc.once('exit', () => live.delete(proc));
    const ping = async () => {
      const c = new Redis({ port, host: '127.0.0.1', password: opts.password, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      c.on('error', () => {});
      try {
        await c.connect();
        return (await c.ping()) === 'PONG';
      } catch {
        return false;
      } finally {
        c.disconnect();
      }
    };
    const deadline = Date.now() + 10_000;
    // a port taken meanwhile by another process: ours exits, and must not be mistaken for the other
    while (proc.exitCode === null && proc.signalCode === null && !(await ping())) {
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`redis-server on ${port} did not answer within 10 s`);
      }
      await new Promise((res) => setTimeout(res, 20));
    }
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`redis-server on ${port} exited`);
    return proc;
  };
  // The first start: a free port can be taken by another process before redis-server binds it.
  let first: ChildProcess | undefined;
  for (let tries = 1; !first; tries++) {
    try {
      first = await spawnIt();
    } catch (err) {
      if (tries >= 3) throw err;
      port = await freePort();
    }
  }
  const r: TestRedis = {
    host: '127.0.0.1',
    port,
    url: opts.password ? `redis://:${encodeURIComponent(opts.password)}@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`,
    dir,
    proc: first,
    client() {
      const c = new Redis({ port, host: '127.0.0.1', password: opts.password, maxRetriesPerRequest: 1 });
      c.on('error', () => {});
      clients.push(c);
      return c;
    },
    kill(signal = 'SIGKILL') {
      r.proc.kill(signal);
    },
    async restart() {
      if (r.proc.exitCode === null && r.proc.signalCode === null) {
        r.proc.kill('SIGKILL');
        await new Promise((res) => r.proc.once('exit', res));
      }
      r.proc = await spawnIt();
    },
    async stop() {
      for (const c of clients) c.disconnect();
      if (r.proc.exitCode === null && r.proc.signalCode === null) {
        r.proc.kill('SIGCONT');
        r.proc.kill('SIGKILL');
        await new Promise((res) => r.proc.once('exit', res));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return r;
}

export async function startRedisPool(n: number, opts: RedisOptions = {}): Promise<TestRedis[]> {
  return Promise.all(Array.from({ length: n }, () => startRedis(opts)));
}
