// A real Cassandra 5.0 node for tests. The test runner starts one node per run with
// startTestCassandra() and passes it on as STREAMGATE_TEST_CASSANDRA=127.0.0.1:PORT; a test file run
// on its own starts a node in a temp dir on free ports, which a process 'exit' hook (and
// SIGINT/SIGTERM/SIGHUP) kills and removes. Jars come from <repo>/.streamgate/cassandra/lib.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startCassandra, stopCassandra, type CassandraNodeOptions } from '../../src/services/cassandra.ts';
import { alive } from '../../src/services/pidfile.ts';

const REPO = resolve(import.meta.dirname, '..', '..');
/** Where the test nodes' jars live (git-ignored). */
export const TEST_CASSANDRA_HOME = join(REPO, '.streamgate', 'cassandra');
const HOST = '127.0.0.1';
/** Ports the project's own services and examples use: never hand them to a test node. */
const RESERVED = new Set([9042, 7000, 7001, 7199, 6379, 6381, 6382, 6383, 2525, 2587, 1110, 8025]);

export interface TestCassandra {
  /** "127.0.0.1:PORT", for the driver's contactPoints. */
  contactPoint: string;
  host: string;
  port: number;
  pid: number;
  /** Milliseconds until CQL answered. */
  ms: number;
  /** The options the node was started with (for startCassandra/stopCassandra). */
  options: CassandraNodeOptions;
  /** Stops the node (SIGTERM, SIGKILL after 30 s) and removes its temp dir. Idempotent. */
  stop(): Promise<void>;
}

/** Distinct free loopback ports, found by binding port 0 (all held open until every one is known). */
async function freePorts(n: number): Promise<number[]> {
  const servers: Server[] = [];
  const ports: number[] = [];
  try {
    while (ports.length < n) {
      const srv = createServer();
      servers.push(srv);
      const port = await new Promise<number>((ok, fail) => {
        srv.once('error', fail);
        srv.listen({ host: HOST, port: 0, exclusive: true }, () => {
          const a = srv.address();
          ok(typeof a === 'object' && a ? a.port : 0);
        });
      });
      if (port > 0 && !RESERVED.has(port)) ports.push(port);
    }
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((ok) => (s.listening ? s.close(() => ok()) : ok()))));
  }
  return ports;
}

// ---- synchronous cleanup for 'exit' and signals -------------------------------------------------

const live = new Map<string, CassandraNodeOptions>(); // dataDir -> options

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** SIGKILLs the node of `dataDir` (only if its pid file names that node) and removes the dir. */
function killSync(dataDir: string): void {
  try {
    const pid = Number(readFileSync(join(dataDir, 'cassandra.pid'), 'utf8').trim());
    let ours = Number.isInteger(pid) && pid > 0;
    if (ours && existsSync(`/proc/${pid}/cmdline`)) {
      ours = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(`-Dcassandra.storagedir=${dataDir}`);
    }
    if (ours) {
      process.kill(pid, 'SIGKILL');
      for (let i = 0; i < 100 && alive(pid); i++) sleepSync(20);
    }
  } catch { /* no pid file or already gone */ }
  for (let i = 0; i < 5; i++) {
    try {
      rmSync(dataDir, { recursive: true, force: true });
      return;
    } catch {
      sleepSync(50);
    }
  }
}

function cleanupAll(): void {
  for (const dir of live.keys()) killSync(dir);
  live.clear();
}

let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', cleanupAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = () => {
      cleanupAll();
      process.removeListener(sig, onSignal);
      process.kill(process.pid, sig); // default action (or other listeners) from here on
    };
    process.on(sig, onSignal);
  }
}

// ---- public helpers ------------------------------------------------------------------------------

/**
 * Starts a private node on free ports in a fresh temp dir. The runner script uses this once per run.
 * Its commit log is synced periodically (acknowledged writes are not waited for: throw-away data,
 * and no test kills it); `durable` gives it the commit log and schema flushes of the nodes
 * `services up` starts; `jit` is the node's cassandra.jit (default c1).
 */
export async function startTestCassandra(opts: { durable?: boolean; jit?: 'c1' | 'full' } = {}): Promise<TestCassandra> {
  const [port, storagePort] = await freePorts(2) as [number, number];
  const dataDir = mkdtempSync(join(tmpdir(), 'sg-cassandra-'));
  const options: CassandraNodeOptions = {
    home: TEST_CASSANDRA_HOME,
    dataDir,
    host: HOST,
    nativePort: port,
    storagePort,
    heap: '512m',
    ...(opts.jit ? { jit: opts.jit } : {}),
    // throw-away data: skip synchronous schema flushes, do not wait for commit log syncs
    ...(opts.durable ? {} : { unsafeSystem: true, commitlogSync: 'periodic' as const }),
    log: { info: () => {}, warn: (o, m) => console.error(`cassandra: ${m ?? ''} ${JSON.stringify(o)}`) },
  };
  hookExit();
  live.set(dataDir, options);
  let r: Awaited<ReturnType<typeof startCassandra>>;
  try {
    r = await startCassandra(options);
  } catch (e) {
    live.delete(dataDir);
    killSync(dataDir);
    throw e;
  }
  let stopped = false;
  return {
    contactPoint: `${HOST}:${port}`,
    host: HOST,
    port,
    pid: r.pid,
    ms: r.ms,
    options,
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await stopCassandra(options);
      } finally {
        live.delete(dataDir);
        rmSync(dataDir, { recursive: true, force: true });
      }
    },
  };
}

let shared: Promise<{ contactPoint: string; host: string; port: number }> | undefined;

/**
 * The Cassandra node for this test process: STREAMGATE_TEST_CASSANDRA ("127.0.0.1:PORT") when the
 * runner set it, else one node started on first use and killed when the process exits.
 */
export function cassandraForTests(): Promise<{ contactPoint: string; host: string; port: number }> {
  const env = process.env.STREAMGATE_TEST_CASSANDRA?.trim();
  if (env) {
    const i = env.lastIndexOf(':');
    const host = env.slice(0, i).replace(/^\[|\]$/g, '');
    const port = Number(env.slice(i + 1));
    if (i <= 0 || !host || !Number.isInteger(port) || port <= 0 || port > 65535) {
      return Promise.reject(new Error(`STREAMGATE_TEST_CASSANDRA must look like 127.0.0.1:PORT, got "${env}"`));
    }
    return Promise.resolve({ contactPoint: env, host, port });
  }
  shared ??= startTestCassandra().then((n) => ({ contactPoint: n.contactPoint, host: n.host, port: n.port }));
  shared.catch(() => (shared = undefined)); // let a later call try again
  return shared;
}
