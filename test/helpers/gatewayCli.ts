// `streamgate start` through the installed command in a subprocess, as an operator runs it: a
// configuration written to a file (every listener on a free loopback port, no Cassandra: nobody
// listens on its contact point, so no mailboxes), its output collected, resolved once the start's
// summary is printed (every worker up).
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { freePort, waitFor } from './waitFor.ts';

export interface GatewayCli {
  child: ChildProcess;
  /** Standard output and error together, as they came. */
  out: { text: string };
  /** SIGTERM, and the exit status once it exited. */
  stop(): Promise<number | null>;
}

/** A configuration on free loopback ports, `over` merged on top (one level deep). */
export async function gatewayCliConfig(file: string, base: { poolUrls: string[]; eventsUrl: string; dataDir: string }, over: Record<string, Record<string, unknown>> = {}): Promise<Record<string, Record<string, unknown>>> {
  const config: Record<string, Record<string, unknown>> = {
    gateway: { dataDir: base.dataDir },
    log: { level: 'info', pretty: 'never' },
    smtp: { listen: `127.0.0.1:${await freePort()}`, maxConnectionsPerClient: 200 },
    submission: { listen: `127.0.0.1:${await freePort()}` },
    pop3: { listen: `127.0.0.1:${await freePort()}` },
    ops: { listen: `127.0.0.1:${await freePort()}` },
    redis: { nodes: base.poolUrls },
    cassandra: { contactPoints: [`127.0.0.1:${await freePort()}`] },
    domains: { local: [], relay: [] },
    events: { redis: base.eventsUrl, archive: false },
  };
  for (const [k, v] of Object.entries(over)) config[k] = { ...config[k], ...v };
  writeFileSync(file, toYaml(config));
  return config;
}

export async function startGatewayCli(bin: string, configFile: string, opts: { args?: string[]; timeout?: number } = {}): Promise<GatewayCli> {
  const child = spawn(bin, ['start', '--config', configFile, ...(opts.args ?? [])], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: `${join(process.execPath, '..')}:${process.env.PATH ?? ''}` } });
  const out = { text: '' };
  child.stdout!.on('data', (d) => (out.text += d));
  child.stderr!.on('data', (d) => (out.text += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    await waitFor(() => {
      if (child.exitCode !== null) throw new Error(`start exited ${child.exitCode}: ${out.text.slice(-2000)}`);
      return /^streamgate: Ctrl-C stops/m.test(out.text);
    }, { timeout: opts.timeout ?? 90_000, what: 'the summary of start' });
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    child,
    out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}
