// One local Apache Cassandra 5.0 node for dev and tests, run from the cassandra-all jars on Maven
// Central on the machine's JDK 17 (no Docker, no tarball). config/cassandra/ holds the Maven project
// that copies the jars, and the cassandra.yaml template and logback.xml this module renders into
// the node's data dir. The JVM flags are Cassandra 5.0's own conf/jvm-server.options and
// conf/jvm17-server.options, less what only matters for big production heaps.
//
// Layout of a node's data dir (`dataDir`, default `${home}/data-${nativePort}`):
//   conf/cassandra.yaml conf/logback.xml   rendered at each start
//   data/ commitlog/ hints/ saved_caches/ cdc_raw/
//   logs/system.log                        logback, INFO and up
//   cassandra.log                          the JVM's stdout/stderr (WARN and up, JVM errors)
//   cassandra.pid                          the pid of the JVM we started
//   tmp/                                   java.io.tmpdir (native libraries unpack here)
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer } from 'node:net';
import { delimiter, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import cassandra from 'cassandra-driver';
import { alive } from './pidfile.ts';

export interface CassandraNodeOptions {
  /** Base dir for jars and state, e.g. ".streamgate/cassandra" (git-ignored): jars in `${home}/lib`. */
  home: string;
  /** Where data, commitlog, logs and the pid file go; default `${home}/data-${nativePort}`. */
  dataDir?: string;
  /** cassandra-all version; default the `cassandra.version` property of config/cassandra/pom.xml. */
  version?: string;
  /** listen and rpc address, e.g. "127.0.0.1". */
  host: string;
  /** CQL port, e.g. 9042. */
  nativePort: number;
  /** Internode port; default nativePort + 10000 (nativePort - 10000 above 55535), or a free port if that one is taken. */
  storagePort?: number;
  /** JVM max heap (-Xmx; -Xms starts at min(heap, 128m)); default "512m". */
  heap?: string;
  /** The JIT: "c1" (default) the quick compiler only, "full" C1 then C2 (see jvmArgs()). */
  jit?: 'c1' | 'full';
  /** A pino-like logger. */
  log?: { info(obj: object, msg?: string): void; warn(obj: object, msg?: string): void };
  /** How long startCassandra waits for CQL to answer; default 180 s. */
  startTimeoutMs?: number;
  /**
   * -Dcassandra.unsafesystem=true: schema changes are not flushed synchronously (faster DDL); a
   * crash (not a SIGTERM stop) may lose recent schema changes. For throw-away test nodes.
   */
  unsafeSystem?: boolean;
  /**
   * The seeds (host:storagePort) of the cluster this node joins; default none: the node is alone
   * and its own seed.
   */
  seeds?: string[];
  /** The node's token; default "0" (a node alone). */
  initialToken?: string;
  /** Streams its ranges from the cluster before serving (a node added to a cluster with data); default false. */
  autoBootstrap?: boolean;
  /** Keeps hints for a peer that is down; default false (a node alone has no peers). */
  hintedHandoff?: boolean;
  /**
   * When a write is acknowledged: 'batch' (default) once its commit log entry is synced to disk, so
   * a node killed at any moment (SIGKILL, OOM) replays every write it acknowledged; 'periodic'
   * at once, the commit log synced every 10 s and marked every 100 ms, so a killed node loses the
   * writes it acknowledged in its last ~100 ms (throw-away test nodes, for speed).
   */
  commitlogSync?: 'batch' | 'periodic';
}

const CONF_SRC = resolve(import.meta.dirname, '..', '..', 'config', 'cassandra');
const POM = join(CONF_SRC, 'pom.xml');
const DAEMON = 'org.apache.cassandra.service.CassandraDaemon';
const STOP_GRACE_MS = 30_000;

// ---------------------------------------------------------------------------------------------
// paths and small process helpers

const homeDir = (o: CassandraNodeOptions) => resolve(o.home);
const libDir = (o: CassandraNodeOptions) => join(homeDir(o), 'lib');
const nodeDir = (o: CassandraNodeOptions) => resolve(o.dataDir ?? join(homeDir(o), `data-${o.nativePort}`));
const pidPath = (dir: string) => join(dir, 'cassandra.pid');
const outLogPath = (dir: string) => join(dir, 'cassandra.log');

let pomVersion: string | undefined;
/** The cassandra-all version pinned in config/cassandra/pom.xml. */
function defaultVersion(): string {
  if (pomVersion) return pomVersion;
  const m = /<cassandra\.version>\s*([^<\s]+)\s*<\/cassandra\.version>/.exec(readFileSync(POM, 'utf8'));
  if (!m?.[1]) throw new Error(`no <cassandra.version> property in ${POM}`);
  return (pomVersion = m[1]);
}

function readPid(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}


/** True when pid is a live Cassandra daemon whose storage dir is `dir` (guards against reused pids). */
function isOurNode(pid: number, dir: string): boolean {
  if (!alive(pid)) return false;
  if (!existsSync('/proc/self/cmdline')) return true;
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.includes(DAEMON) && argv.includes(`-Dcassandra.storagedir=${dir}`);
  } catch {
    return false;
  }
}

function tail(file: string, lines = 20): string {
  try {
    const all = readFileSync(file, 'utf8').trimEnd().split('\n');
    return all.slice(-lines).join('\n');
  } catch {
    return '';
  }
}

function logTail(dir: string): string {
  const out = tail(outLogPath(dir));
  const sys = tail(join(dir, 'logs', 'system.log'));
  const parts = [`--- ${outLogPath(dir)} ---\n${out || '(empty)'}`];
  // stdout carries WARN+ only; when it says little, the INFO log usually has the story
  if (out.split('\n').length < 5 && sys) parts.push(`--- ${join(dir, 'logs', 'system.log')} ---\n${sys}`);
  return parts.join('\n');
}

interface RunResult { code: number | null; out: string }

function run(cmd: string, args: string[], what: string, hint: string): Promise<RunResult> {
  return new Promise((ok, fail) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024, env: process.env }, (err, stdout, stderr) => {
      const out = `${stdout}${stderr}`.replace(new RegExp(`${String.fromCharCode(27)}?\\[[0-9;]*m`, 'g'), ''); // Maven colours even in batch mode
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') {
        fail(new Error(`${what} not found (${cmd}): ${hint}`));
        return;
      }
      ok({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out });
    });
  });
}

function javaBin(): string {
  return process.env.JAVA_HOME ? join(process.env.JAVA_HOME, 'bin', 'java') : 'java';
}

let javaMajorCache: number | undefined;
/** The major version of the java we will run; a clear Error when there is none. */
async function javaMajor(): Promise<number> {
  if (javaMajorCache) return javaMajorCache;
  const r = await run(javaBin(), ['-version'], 'java', 'install a JDK 17 (apt-get install openjdk-17-jre-headless) or set JAVA_HOME');
  const m = /version "(\d+)(?:\.(\d+))?/.exec(r.out);
  if (r.code !== 0 || !m) throw new Error(`could not run ${javaBin()} -version: ${r.out.trim()}`);
  const major = m[1] === '1' ? Number(m[2]) : Number(m[1]);
  if (major < 11) throw new Error(`Cassandra 5.0 needs Java 11 or 17; ${javaBin()} is Java ${major}`);
  return (javaMajorCache = major);
}

function libComplete(lib: string, version: string): boolean {
  let names: string[];
  try {
    names = readdirSync(lib);
  } catch {
    return false;
  }
  const alls = names.filter((n) => /^cassandra-all-.*\.jar$/.test(n));
  return alls.length === 1 && alls[0] === `cassandra-all-${version}.jar` && names.some((n) => /^jamm-.*\.jar$/.test(n));
}

// ---------------------------------------------------------------------------------------------
// jars

/**
 * Makes sure `${home}/lib` holds cassandra-all `version` and its runtime dependencies; runs Maven
 * (into a temporary dir, then renamed into place) only when they are missing. Returns the lib dir.
 */
export async function ensureCassandraJars(opts: CassandraNodeOptions): Promise<string> {
  const lib = libDir(opts);
  const version = opts.version ?? defaultVersion();
  if (libComplete(lib, version)) return lib;
  await javaMajor(); // no point downloading for a machine that cannot run it
  const t0 = Date.now();
  opts.log?.info({ version, lib }, 'downloading cassandra jars with maven');
  mkdirSync(homeDir(opts), { recursive: true });
  const tmp = `${lib}.partial-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const r = await run(
      'mvn',
      ['-B', '-q', '-Dstyle.color=never', '-f', POM, 'dependency:copy-dependencies', `-DoutputDirectory=${tmp}`, `-Dcassandra.version=${version}`],
      'mvn',
      'install Maven (apt-get install maven)',
    );
    if (r.code !== 0) {
      throw new Error(`mvn could not fetch cassandra-all ${version} (exit ${r.code}):\n${r.out.trim().split('\n').slice(-30).join('\n')}`);
    }
    if (!libComplete(tmp, version)) throw new Error(`mvn finished but ${tmp} lacks cassandra-all-${version}.jar or jamm`);
    if (!libComplete(lib, version)) {
      // another process may have finished first; otherwise swap the new dir in
      rmSync(lib, { recursive: true, force: true });
      try {
        renameSync(tmp, lib);
      } catch (e) {
        if (!libComplete(lib, version)) throw e;
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  opts.log?.info({ version, lib, jars: readdirSync(lib).length, ms: Date.now() - t0 }, 'cassandra jars ready');
  return lib;
}

// ---------------------------------------------------------------------------------------------
// probing

function tcpOpen(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = netConnect({ host, port });
    const done = (v: boolean) => {
      s.destroy();
      ok(v);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((ok) => {
    const srv = createServer();
    srv.once('error', () => ok(false));
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => ok(true)));
  });
}

async function freePort(host: string): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen({ host, port: 0, exclusive: true }, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => ok(port));
    });
  });
}

/** True when `SELECT release_version FROM system.local` answers on host:port. */
export async function cassandraAnswers(host: string, port: number): Promise<boolean> {
  if (!(await tcpOpen(host, port, 1000))) return false;
  const client = new cassandra.Client({
    contactPoints: [host],
    protocolOptions: { port },
    // round robin needs no data-center name, so this also answers for a node we did not configure
    policies: { loadBalancing: new cassandra.policies.loadBalancing.RoundRobinPolicy() },
    isMetadataSyncEnabled: false,
    socketOptions: { connectTimeout: 3000, readTimeout: 5000 },
    pooling: { coreConnectionsPerHost: { [cassandra.types.distance.local]: 1, [cassandra.types.distance.remote]: 0 } },
  });
  try {
    await client.connect();
    const rs = await client.execute('SELECT release_version FROM system.local');
    return rs.rows.length === 1;
  } catch {
    return false;
  } finally {
    await client.shutdown().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// start / stop

function renderTemplate(text: string, vars: Record<string, string>, name: string): string {
  return text.replace(/\$\{([A-Z_]+)\}/g, (_m, key: string) => {
    const v = vars[key];
    if (v === undefined) throw new Error(`${name}: unknown placeholder \${${key}}`);
    if (/[\r\n]/.test(v)) throw new Error(`${name}: value for \${${key}} contains a newline`);
    return v.replace(/'/g, "''"); // placeholders that need quoting sit in single-quoted YAML scalars
  });
}

/** Bytes of a JVM size such as "512m", "1g", "262144k". */
function jvmBytes(size: string): number {
  const m = /^(\d+)([kmg]?)$/i.exec(size.trim());
  if (!m) throw new Error(`bad JVM heap size "${size}": expected e.g. "512m" or "1g"`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * unit;
}

function initialHeap(heap: string): string {
  return jvmBytes(heap) <= 128 * 1024 ** 2 ? heap : '128m';
}

function jvmArgs(o: {
  heap: string; jit: 'c1' | 'full'; lib: string; dir: string; conf: string; host: string; javaMajor: number; unsafeSystem: boolean; alone: boolean;
}): string[] {
  const jamm = readdirSync(o.lib).filter((n) => /^jamm-.*\.jar$/.test(n)).sort().pop();
  if (!jamm) throw new Error(`no jamm-*.jar in ${o.lib}`);
  const tmp = join(o.dir, 'tmp');
  return [
    // heap and GC: conf/jvm17-server.options without the 16m region size (too coarse for 512m)
    // -Xms below -Xmx: with -Xms = -Xmx (production advice) start-up churn leaves the whole heap
    // resident (~960 MiB RSS for 512m); starting at 128m it grows only as needed (~600 MiB RSS idle)
    `-Xms${initialHeap(o.heap)}`, `-Xmx${o.heap}`, '-Xss256k',
    '-XX:+UseG1GC', '-XX:+ParallelRefProcEnabled', '-XX:MaxTenuringThreshold=1',
    '-XX:G1RSetUpdatingPauseTimePercent=5', '-XX:MaxGCPauseMillis=300', '-XX:InitiatingHeapOccupancyPercent=70',
    '-XX:ParallelGCThreads=2', '-XX:ConcGCThreads=1',
    // JIT: by default C1 alone. A node started here shares a few cores with the gateway and Redis,
    // and C2's compiler threads took a quarter to a half of its CPU for its first minutes: runs of
    // bench:archive in a row on one node cost 26.4, 15.3, 8.3, 7.4 µs of Cassandra's CPU per event
    // with C2, 8.9, 5.2, 5.4 with C1 alone (the event log's writes spend little in compiled code)
    ...(o.jit === 'c1' ? ['-XX:TieredStopAtLevel=1'] : []),
    // conf/jvm-server.options, less AlwaysPreTouch (slow start) and heap dumps (heap-sized files)
    '-ea', '-da:net.openhft...', '-XX:+UseThreadPriorities', '-XX:+UseTLAB', '-XX:+ResizeTLAB',
    '-XX:+PerfDisableSharedMem', '-XX:+ExitOnOutOfMemoryError',
    ...(o.host.includes(':') ? [] : ['-Djava.net.preferIPv4Stack=true']),
    '-Dchronicle.analytics.disable=true', '-Dchronicle.announcer.disable=true',
    '-Djdk.attach.allowAttachSelf=true',
    // JPMS: conf/jvm17-server.options + what bin/cassandra.in.sh adds on a JDK >= 17
    '--add-exports', 'java.base/jdk.internal.misc=ALL-UNNAMED',
    '--add-exports', 'java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED',
    '--add-exports', 'java.management/com.sun.jmx.remote.security=ALL-UNNAMED',
    '--add-exports', 'java.rmi/sun.rmi.registry=ALL-UNNAMED',
    '--add-exports', 'java.rmi/sun.rmi.server=ALL-UNNAMED',
    '--add-exports', 'java.sql/java.sql=ALL-UNNAMED',
    '--add-exports', 'java.base/java.lang.ref=ALL-UNNAMED',
    '--add-exports', 'jdk.unsupported/sun.misc=ALL-UNNAMED',
    '--add-exports', 'jdk.attach/sun.tools.attach=ALL-UNNAMED',
    '--add-exports', 'jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED',
    '--add-opens', 'jdk.compiler/com.sun.tools.javac=ALL-UNNAMED',
    '--add-opens', 'java.base/java.lang.module=ALL-UNNAMED',
    '--add-opens', 'java.base/jdk.internal.loader=ALL-UNNAMED',
    '--add-opens', 'java.base/jdk.internal.ref=ALL-UNNAMED',
    '--add-opens', 'java.base/jdk.internal.reflect=ALL-UNNAMED',
    '--add-opens', 'java.base/jdk.internal.math=ALL-UNNAMED',
    '--add-opens', 'java.base/jdk.internal.module=ALL-UNNAMED',
    '--add-opens', 'java.base/jdk.internal.util.jar=ALL-UNNAMED',
    '--add-opens', 'jdk.management/com.sun.management.internal=ALL-UNNAMED',
    '--add-opens', 'java.base/sun.nio.ch=ALL-UNNAMED',
    '--add-opens', 'java.base/java.io=ALL-UNNAMED',
    '--add-opens', 'java.base/java.lang.reflect=ALL-UNNAMED',
    '--add-opens', 'java.base/java.lang=ALL-UNNAMED',
    '--add-opens', 'java.base/java.util=ALL-UNNAMED',
    '--add-opens', 'java.base/java.nio=ALL-UNNAMED',
    // Java 18+ removed the default security manager that Cassandra 5.0 installs (only 11/17 are supported)
    ...(o.javaMajor >= 18 ? ['-Djava.security.manager=allow'] : []),
    '-Dio.netty.tryReflectionSetAccessible=true',
    '-Dio.netty.allocator.useCacheForAllThreads=true',
    '-Dio.netty.allocator.maxOrder=11',
    `-javaagent:${join(o.lib, jamm)}`,
    // daemon: no JMX port is opened (no cassandra.jmx.*.port), so instances never clash on it
    '-Dcassandra-foreground=yes',
    `-Dcassandra.config=${pathToFileURL(join(o.conf, 'cassandra.yaml')).href}`,
    `-Dcassandra.storagedir=${o.dir}`,
    `-Dcassandra.logdir=${join(o.dir, 'logs')}`,
    `-Dlogback.configurationFile=${join(o.conf, 'logback.xml')}`,
    '-Dcassandra.skip_wait_for_gossip_to_settle=0',
    '-Dcassandra.superuser_setup_delay_ms=0',
    // one node alone: no peers to tell of a stop, saves 2 s per stop
    ...(o.alone ? ['-Dcassandra.shutdown_announce_in_ms=0'] : []),
    `-Dcassandra.triggers_dir=${join(o.dir, 'triggers')}`,
    ...(o.unsafeSystem ? ['-Dcassandra.unsafesystem=true'] : []),
    `-Djava.io.tmpdir=${tmp}`, `-Djna.tmpdir=${tmp}`,
    '-cp', `${o.conf}${delimiter}${join(o.lib, '*')}`,
    DAEMON,
  ];
}

async function waitForCql(
  o: CassandraNodeOptions, dir: string, pid: number, t0: number, timeoutMs: number,
  exited: () => { code: number | null; signal: string | null } | undefined,
): Promise<void> {
  for (;;) {
    const ex = exited() ?? (alive(pid) ? undefined : { code: null, signal: null });
    if (ex) {
      const how = ex.signal ? `signal ${ex.signal}` : ex.code === null ? 'an unknown status' : `code ${ex.code}`;
      throw new Error(`Cassandra (pid ${pid}) exited with ${how} before answering CQL on ${o.host}:${o.nativePort}; last log lines:\n${logTail(dir)}`);
    }
    if (await cassandraAnswers(o.host, o.nativePort)) return;
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`Cassandra (pid ${pid}) did not answer CQL on ${o.host}:${o.nativePort} within ${timeoutMs} ms; last log lines:\n${logTail(dir)}`);
    }
    await sleep(250);
  }
}

/**
 * Starts the node unless our pid file names a live Cassandra for this data dir (then waits for it
 * to answer and returns alreadyRunning: true). The JVM is spawned detached and unref'd: it
 * outlives this process unless the caller stops it.
 */
export async function startCassandra(opts: CassandraNodeOptions): Promise<{ pid: number; ms: number; alreadyRunning: boolean }> {
  const t0 = Date.now();
  const dir = nodeDir(opts);
  const timeoutMs = opts.startTimeoutMs ?? 180_000;
  const pidFile = pidPath(dir);

  const existing = readPid(pidFile);
  if (existing !== undefined) {
    if (isOurNode(existing, dir)) {
      await waitForCql(opts, dir, existing, t0, timeoutMs, () => undefined);
      return { pid: existing, ms: Date.now() - t0, alreadyRunning: true };
    }
    rmSync(pidFile, { force: true }); // stale: the process is gone or the pid was reused
  }

  const lib = await ensureCassandraJars(opts);
  const major = await javaMajor();

  if (!(await portFree(opts.host, opts.nativePort))) {
    throw new Error(`cannot start Cassandra: ${opts.host}:${opts.nativePort} is already in use by another process (no live node in ${dir})`);
  }
  let storagePort = opts.storagePort;
  if (storagePort === undefined) {
    const guess = opts.nativePort + 10_000 <= 65_535 ? opts.nativePort + 10_000 : opts.nativePort - 10_000;
    storagePort = guess > 0 && (await portFree(opts.host, guess)) ? guess : await freePort(opts.host);
    if (storagePort !== guess) opts.log?.warn({ wanted: guess, storagePort }, 'cassandra storage port taken, using a free one');
  } else if (storagePort === opts.nativePort || !(await portFree(opts.host, storagePort))) {
    throw new Error(`cannot start Cassandra: storage port ${opts.host}:${storagePort} is in use or equals the native port`);
  }

  const conf = join(dir, 'conf');
  for (const d of [dir, conf, join(dir, 'logs'), join(dir, 'tmp'), join(dir, 'triggers')]) mkdirSync(d, { recursive: true });
  const vars: Record<string, string> = {
    LISTEN_ADDRESS: opts.host,
    NATIVE_PORT: String(opts.nativePort),
    STORAGE_PORT: String(storagePort),
    DATA_DIR: dir,
    CLUSTER_NAME: 'streamgate',
    INITIAL_TOKEN: opts.initialToken ?? '0',
    SEEDS: (opts.seeds?.length ? opts.seeds : [`${opts.host}:${storagePort}`]).join(','),
    AUTO_BOOTSTRAP: String(opts.autoBootstrap ?? false),
    HINTED_HANDOFF: String(opts.hintedHandoff ?? false),
    COMMITLOG_SYNC: opts.commitlogSync ?? 'batch',
    // batch mode refuses a period; periodic needs one
    COMMITLOG_SYNC_PERIOD: (opts.commitlogSync ?? 'batch') === 'batch' ? '0ms' : '10000ms',
  };
  writeFileSync(join(conf, 'cassandra.yaml'), renderTemplate(readFileSync(join(CONF_SRC, 'cassandra.yaml'), 'utf8'), vars, 'cassandra.yaml'));
  writeFileSync(join(conf, 'logback.xml'), readFileSync(join(CONF_SRC, 'logback.xml')));

  const args = jvmArgs({ heap: opts.heap ?? '512m', jit: opts.jit ?? 'c1', lib, dir, conf, host: opts.host, javaMajor: major, unsafeSystem: opts.unsafeSystem ?? false, alone: !opts.seeds?.length });
  const out = openSync(outLogPath(dir), 'a');
  let exit: { code: number | null; signal: string | null } | undefined;
  let pid: number;
  try {
    const child = spawn(javaBin(), args, {
      cwd: dir, // hs_err files land here
      detached: true,
      stdio: ['ignore', out, out],
      env: { ...process.env, MALLOC_ARENA_MAX: '4' },
    });
    await new Promise<void>((ok, fail) => {
      child.once('spawn', ok);
      child.once('error', fail);
    });
    child.on('exit', (code, signal) => (exit = { code, signal }));
    child.unref();
    pid = child.pid!;
  } finally {
    closeSync(out);
  }
  writeFileSync(pidFile, `${pid}\n`);
  opts.log?.info({ pid, host: opts.host, nativePort: opts.nativePort, storagePort, dataDir: dir }, 'cassandra starting');

  try {
    await waitForCql(opts, dir, pid, t0, timeoutMs, () => exit);
  } catch (e) {
    // we started it, so we clean it up: a half-started node must not hold the ports
    if (alive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch { /* gone */ }
      for (let i = 0; i < 100 && alive(pid); i++) await sleep(50);
    }
    rmSync(pidFile, { force: true });
    throw e;
  }
  const ms = Date.now() - t0;
  opts.log?.info({ pid, ms, host: opts.host, nativePort: opts.nativePort }, 'cassandra answers CQL');
  return { pid, ms, alreadyRunning: false };
}

/**
 * SIGTERMs the pid named by the pid file (only when it is the Cassandra of this data dir), waits for
 * it to exit (SIGKILL after 30 s) and removes the pid file. False when nothing was running.
 */
export async function stopCassandra(opts: CassandraNodeOptions): Promise<boolean> {
  const dir = nodeDir(opts);
  const pidFile = pidPath(dir);
  const pid = readPid(pidFile);
  if (pid === undefined) return false;
  if (!isOurNode(pid, dir)) {
    rmSync(pidFile, { force: true });
    return false;
  }
  const t0 = Date.now();
  try {
    process.kill(pid, 'SIGTERM');
  } catch { /* exited meanwhile */ }
  while (alive(pid) && Date.now() - t0 < STOP_GRACE_MS) await sleep(100);
  if (alive(pid)) {
    opts.log?.warn({ pid, graceMs: STOP_GRACE_MS }, 'cassandra ignored SIGTERM, sending SIGKILL');
    try {
      process.kill(pid, 'SIGKILL');
    } catch { /* exited meanwhile */ }
    while (alive(pid)) await sleep(50);
  }
  rmSync(pidFile, { force: true });
  opts.log?.info({ pid, ms: Date.now() - t0 }, 'cassandra stopped');
  return true;
}
