// The installed `streamgate` command as users run it: the compiled CLI (built once per test
// process, as `npm run build` does) reached through the links npm makes, in a subprocess whose
// PATH starts with this Node, as npm scripts and npx arrange.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export const ROOT = join(import.meta.dirname, '..', '..');

let built = false;
/** Compiles src/ to dist/ once per process. */
export function buildCli(): void {
  if (built) return;
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  execFileSync(process.execPath, [join(ROOT, 'scripts', 'copy-assets.mjs')], { cwd: ROOT, stdio: 'inherit' });
  built = true;
}

export interface Installed {
  /** The `streamgate` link a user runs. */
  bin: string;
  /** A link named `sendmail` to the same file, as a host's sendmail. */
  sendmail: string;
  dir: string;
  remove(): void;
}

/**
 * The links npm makes: `local` as in a project that depends on streamgate
 * (node_modules/.bin/streamgate → ../streamgate/bin/streamgate.js, node_modules/streamgate → the
 * package), `global` as `npm install -g` (PREFIX/bin/streamgate → ../lib/node_modules/streamgate/…).
 */
export function install(kind: 'local' | 'global'): Installed {
  const dir = mkdtempSync(join(tmpdir(), `sg-bin-${kind}-`));
  const modules = kind === 'local' ? join(dir, 'node_modules') : join(dir, 'lib', 'node_modules');
  const binDir = kind === 'local' ? join(modules, '.bin') : join(dir, 'bin');
  for (const d of [modules, binDir]) mkdirSync(d, { recursive: true });
  symlinkSync(ROOT, join(modules, 'streamgate'), 'dir');
  const bin = join(binDir, 'streamgate');
  symlinkSync(kind === 'local' ? '../streamgate/bin/streamgate.js' : '../lib/node_modules/streamgate/bin/streamgate.js', bin);
  const sendmail = join(dir, 'sendmail');
  symlinkSync(bin, sendmail);
  return { bin, sendmail, dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command without blocking this process (a gateway in this process may have to answer it),
 * with `node` (default: this Node) first on the path.
 */
export function runCommand(cmd: string, args: string[], opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv; cwd?: string; node?: string } = {}): Promise<Ran> {
  const env = { ...process.env, ...opts.env, PATH: `${dirname(opts.node ?? process.execPath)}:${process.env.PATH ?? ''}` };
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? tmpdir(), env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.on('error', () => {}); // a command that exits before reading its input
    child.stdin.end(opts.input ?? '');
  });
}

/** The CLI from source (`node src/cli/main.ts`), as in development. */
export async function runCli(args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const r = await runCommand(process.execPath, [join(ROOT, 'src', 'cli', 'main.ts'), ...args], { env });
  return { status: r.code, stdout: r.stdout, stderr: r.stderr };
}
