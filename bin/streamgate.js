#!/usr/bin/env node
// The installed command (`npx streamgate`, node_modules/.bin/streamgate, `npm install -g`): runs
// the compiled CLI (`npm run build` writes dist/). Plain JavaScript that any Node parses, so that
// an older Node says in one line what is needed instead of failing somewhere inside. It calls the
// CLI's run() itself: the CLI's own entry-point check (import.meta.main) is false when this file,
// reached through a symlink or not, is the entry point. Called by the name `sendmail` (a link so
// named, for programs that run sendmail), it is `streamgate sendmail`.
//
// The Node it needs is checked here, not declared in package.json's `engines`: npm runs on
// whatever Node is first on the path (often an older system Node, while the project brings its
// own Node 24), and would print an EBADENGINE warning at every install and at a clone's first
// `npx streamgate`, though the command then runs on the project's Node. This says it once, when
// it matters.
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const NEEDED = 24;
const major = Number(process.versions.node.split('.')[0]);
if (!(major >= NEEDED)) {
  console.error(`streamgate: needs Node.js ${NEEDED} or newer (this is v${process.versions.node}); install it from https://nodejs.org, or run it through npm (\`npx streamgate\`, \`npm start\`) in the project, which uses the project's own Node`);
  process.exit(1);
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const main = join(root, 'dist', 'cli', 'main.js');
if (!existsSync(main)) {
  console.error(`streamgate: ${main} is missing; run \`npm run build\` in ${root}`);
  process.exit(1);
}
const args = process.argv.slice(2);
const argv = basename(process.argv[1] ?? '') === 'sendmail' ? ['sendmail', ...args] : args;
try {
  const { run } = await import(pathToFileURL(main).href);
  // `start` resolves only after the gateway has shut down, so every command ends here.
  process.exit(await run(argv));
} catch (err) {
  console.error(`streamgate: ${err?.message ?? err}`);
  process.exit(1);
}
