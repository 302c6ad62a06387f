// Makes sure the programs the local services need are on this machine: installs them with apt-get
// when we are root, or stops with one line saying what to install.
import { execFileSync, spawnSync } from 'node:child_process';

export class MissingToolError extends Error {
  override name = 'MissingToolError';
}

interface Tool {
  /** The Debian packages that make the command work, Recommends it needs included by name. */
  packages: string[];
  /** Beyond the command being on the path: does it work? */
  works?: () => boolean;
}

/** Commands that need more than a package of their own name. */
const TOOLS: Record<string, Tool> = {
  'redis-server': { packages: ['redis-server'] },
  java: { packages: ['openjdk-17-jre-headless'] },
  mvn: { packages: ['maven'] },
  'docker-compose': { packages: ['docker-compose'] },
  // promtool checks and unit-tests the alert rules in compose/prometheus/
  promtool: { packages: ['prometheus'] },
  // swaks speaks STARTTLS only with Perl's Net::SSLeay, which Debian lists as a Recommends of swaks
  // (not installed by --no-install-recommends): named, and checked, on its own, with what it
  // depends on through a virtual package (perl-openssl-abi-3, provided by perl-openssl-defaults).
  swaks: { packages: ['swaks', 'libnet-ssleay-perl', 'perl-openssl-defaults'], works: () => spawnSync('perl', ['-MNet::SSLeay', '-e', '1'], { stdio: 'ignore' }).status === 0 },
};

const toolFor = (cmd: string): Tool => TOOLS[cmd] ?? { packages: [cmd] };

export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

let aptUpdated = false;

/** Ensures each command exists; installs the missing ones as root. Returns what it installed. */
export function ensureTools(cmds: string[], say: (line: string) => void = console.error): string[] {
  const ready = (c: string) => hasCommand(c) && (toolFor(c).works?.() ?? true);
  const missing = cmds.filter((c) => !ready(c));
  if (missing.length === 0) return [];
  const pkgs = missing.flatMap((c) => toolFor(c).packages);
  const isRoot = process.getuid?.() === 0;
  if (!isRoot || !hasCommand('apt-get')) {
    throw new MissingToolError(`${missing.join(', ')} not found or incomplete; install with: sudo apt-get install -y ${pkgs.join(' ')}`);
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
  const still = missing.filter((c) => !ready(c));
  if (still.length) throw new MissingToolError(`${still.join(', ')} still not found or incomplete after apt-get install ${pkgs.join(' ')}`);
  return pkgs;
}
