// Makes sure the programs the local services need are on this machine: installs them with apt-get
// when we are root, or stops with one line saying what to install.
import { execFileSync, spawnSync } from 'node:child_process';

export class MissingToolError extends Error {
  override name = 'MissingToolError';
}

const PACKAGES: Record<string, string> = {
  'redis-server': 'redis-server',
  java: 'openjdk-17-jre-headless',
  mvn: 'maven',
  'docker-compose': 'docker-compose',
};

export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

let aptUpdated = false;

/** Ensures each command exists; installs the missing ones as root. Returns what it installed. */
export function ensureTools(cmds: string[], say: (line: string) => void = console.error): string[] {
  const missing = cmds.filter((c) => !hasCommand(c));
  if (missing.length === 0) return [];
  const pkgs = missing.map((c) => PACKAGES[c] ?? c);
  const isRoot = process.getuid?.() === 0;
  if (!isRoot || !hasCommand('apt-get')) {
    throw new MissingToolError(`${missing.join(', ')} not found; install with: sudo apt-get install -y ${pkgs.join(' ')}`);
  }
  say(`installing ${pkgs.join(' ')} with apt-get (missing: ${missing.join(', ')})`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    if (!aptUpdated) execFileSync('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'inherit'], env });
    aptUpdated = true;
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...pkgs], { stdio: ['ignore', 'ignore', 'inherit'], env });
  } catch {
    throw new MissingToolError(`apt-get could not install ${pkgs.join(' ')}; install it by hand: apt-get install -y ${pkgs.join(' ')}`);
  }
  const still = missing.filter((c) => !hasCommand(c));
  if (still.length) throw new MissingToolError(`${still.join(', ')} still not found after apt-get install ${pkgs.join(' ')}`);
  return pkgs;
}
