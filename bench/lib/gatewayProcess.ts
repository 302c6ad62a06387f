// The whole gateway for benchmarks: `streamgate start` in a process of its own, on free loopback
// ports, without Cassandra (no mailboxes) unless the caller gives one, its log in a file; the
// caller's configuration goes over these defaults, section by section (a key it gives replaces
// the default's). Resolves once /health answers 200 and the start has printed its summary (with
// gateway.workers, once every worker is up: /health alone could be the first worker's answer).
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { freePort, waitFor } from '../../test/helpers/waitFor.ts';

const ROOT = join(import.meta.dirname, '..', '..');

export interface GatewayProcess {
  gw: ChildProcess;
  smtpPort: number;
  opsPort: number;
  dir: string;
  logFile: string;
  /** SIGTERM, wait for the exit, remove its folder. */
  stop(): Promise<void>;
}

export async function startGatewayProcess(name: string, opts: { poolUrls: string[]; eventsUrl: string; token: string; config: Record<string, unknown> }): Promise<GatewayProcess> {
  const dir = mkdtempSync(join(tmpdir(), `sg-${name}-`));
  const smtpPort = await freePort();
  const opsPort = await freePort();
  const config = {
    gateway: { id: name, hostname: `gw.${name}.test`, dataDir: join(dir, 'data') },
    log: { level: 'warn', pretty: 'never' },
    smtp: { listen: `127.0.0.1:${smtpPort}`, maxConnectionsPerClient: 200 },
    submission: { listen: `127.0.0.1:${await freePort()}` },
    pop3: { listen: `127.0.0.1:${await freePort()}` },
    ops: { listen: `127.0.0.1:${opsPort}`, tokens: [opts.token] },
    redis: { nodes: opts.poolUrls },
    cassandra: { contactPoints: [`127.0.0.1:${await freePort()}`] }, // nobody listens: no mailboxes
    domains: { local: [], relay: [] }, // the load comes from loopback, a trusted network
    events: { redis: opts.eventsUrl, archive: false }, // no Cassandra: no event log either
  } as Record<string, unknown>;
  for (const [section, value] of Object.entries(opts.config)) {
    const base = config[section];
    config[section] = base && typeof base === 'object' && value && typeof value === 'object' && !Array.isArray(value) ? { ...base, ...value } : value;
  }
  writeFileSync(join(dir, 'gateway.yaml'), toYaml(config));
  const logFile = join(dir, 'gateway.log');
  const out = openSync(logFile, 'a');
  const gw = spawn(process.execPath, [join(ROOT, 'src/cli/main.ts'), 'start', '--config', join(dir, 'gateway.yaml')], { cwd: ROOT, stdio: ['ignore', out, out] });
  closeSync(out);
  await waitFor(async () => {
    if (gw.exitCode !== null) throw new Error(`the gateway exited: ${readFileSync(logFile, 'utf8').slice(-500)}`);
    if (!/^streamgate: Ctrl-C stops/m.test(readFileSync(logFile, 'utf8'))) return false;
    return (await fetch(`http://127.0.0.1:${opsPort}/health`, { signal: AbortSignal.timeout(1000) }).catch(() => undefined))?.status === 200;
  }, { timeout: 120_000, what: 'the gateway' });
  return {
    gw, smtpPort, opsPort, dir, logFile,
    async stop() {
      gw.kill('SIGTERM');
      await new Promise((r) => (gw.exitCode !== null ? r(null) : gw.once('exit', r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
