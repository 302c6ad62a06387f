#!/usr/bin/env node
// First step of `npm start` and `npm test` on any machine: installs the npm packages when they
// are missing or older than package-lock.json (this runs on whatever Node is first on the path;
// the project's own Node 24 comes with the packages), then compiles src/ to dist/ unless
// --no-build. Plain JavaScript on purpose: it must run before anything is installed.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const say = (line) => console.error(`streamgate: ${line}`);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit' });

const stamp = join(root, 'node_modules', '.package-lock.json');
const lock = join(root, 'package-lock.json');
const node24 = join(root, 'node_modules', '.bin', 'node');
const stale = !existsSync(stamp) || !existsSync(node24) || (existsSync(lock) && statSync(lock).mtimeMs > statSync(stamp).mtimeMs + 1000);
if (stale) {
  say('installing npm packages, the project\'s own Node.js 24 among them');
  try {
    // Not `npm ci`: the lock's optional packages for other platforms are not all on every registry
    // mirror. --loglevel=error: this npm runs on whatever Node is first on the path, often an older
    // system Node, while it installs the project's own Node 24; it would print an EBADENGINE
    // warning for every package that wants a newer Node, which nobody can act on (the Node that
    // runs the project is checked just below). Errors still show.
    run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error']);
  } catch {
    // npm's own output above says why: the registry out of reach, or (from postinstall) a patch in
    // patches/ that no longer applies to the version of its package in the lock
    say('npm install failed (its output is above): check the network to the npm registry, or a patch in patches/ that no longer applies, then run `npm install`');
    process.exit(1);
  }
}
const version = execFileSync(node24, ['--version'], { encoding: 'utf8' }).trim();
if (!/^v24\./.test(version)) {
  say(`node_modules/.bin/node is ${version}, expected v24; run \`npm install\``);
  process.exit(1);
}
if (!process.argv.includes('--no-build')) {
  say('compiling src/ to dist/');
  run(node24, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json']);
  run(node24, [join(root, 'scripts', 'copy-assets.mjs')]);
}
