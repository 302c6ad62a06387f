// The installed `streamgate` command, run as users run it: through the links npm makes for a
// dependency (node_modules/.bin) and for `npm install -g`, through npx in the project, and under
// a Node older than 24, which gets one line saying what to install.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildCli, install, ROOT, runCommand, type Installed } from '../helpers/cli.ts';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** A Node older than 24 on this machine (the system's, which runs npm itself), if there is one. */
function olderNode(): string | undefined {
  for (const candidate of ['/usr/bin/node', '/usr/local/bin/node']) {
    if (!existsSync(candidate)) continue;
    const v = execFileSync(candidate, ['--version'], { encoding: 'utf8' }).trim();
    if (Number(/^v(\d+)/.exec(v)?.[1]) < 24) return candidate;
  }
  return undefined;
}

describe('the installed streamgate command', { timeout: 120_000 }, () => {
  const installs: Installed[] = [];
  before(() => {
    buildCli();
    installs.push(install('local'), install('global'));
  });
  after(() => {
    for (const i of installs) i.remove();
  });

  for (const kind of ['local', 'global'] as const) {
    test(`through ${kind === 'local' ? 'node_modules/.bin' : 'an npm install -g'} link: help, version, config check, exit codes`, async () => {
      const { bin, dir } = installs[kind === 'local' ? 0 : 1]!;
      const help = await runCommand(bin, ['--help']);
      assert.equal(help.code, 0, help.stderr);
      assert.match(help.stdout, /^Usage: streamgate \[options\] \[command\]/);
      for (const cmd of ['start', 'services', 'config', 'user', 'mailbox', 'schema', 'queue', 'sendmail']) assert.match(help.stdout, new RegExp(`^  ${cmd}\\b`, 'm'));

      const version = await runCommand(bin, ['--version']);
      assert.deepEqual([version.code, version.stdout.trim()], [0, VERSION]);

      const good = join(dir, 'good.yaml');
      writeFileSync(good, 'domains: { local: [bin.test] }\n');
      const check = await runCommand(bin, ['config', 'check', '--config', good]);
      assert.equal(check.code, 0, check.stderr);
      assert.deepEqual((JSON.parse(check.stdout) as { domains: { local: string[] } }).domains.local, ['bin.test']);

      const bad = join(dir, 'bad.yaml');
      writeFileSync(bad, 'smtp: { listen: "127.0.0.1:2525" }\nnosuchkey: 1\n');
      for (const args of [['config', 'check', '--config', bad], ['start', '--config', bad]]) {
        const r = await runCommand(bin, args);
        assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
        assert.equal(r.stdout, '');
        assert.match(r.stderr, /^streamgate: .*bad\.yaml: nosuchkey: unknown option \(known here: .*\)\n$/);
      }

      const unknown = await runCommand(bin, ['nosuchcommand']);
      assert.equal(unknown.code, 2);
      assert.match(unknown.stderr, /unknown command 'nosuchcommand'/);
    });
  }

  test('npx streamgate in the project, without a warning, whatever Node npm itself runs on', async (t) => {
    const npx = await runCommand('sh', ['-c', 'command -v npx']);
    if (npx.code !== 0) return t.skip('npx is not on the path');
    // an empty npm cache: npx first links the project into its cache, which is where npm, on the
    // system's Node, would check the package's engines and warn
    const cache = mkdtempSync(join(tmpdir(), 'sg-npm-cache-'));
    try {
      const r = await runCommand('npx', ['--no-install', 'streamgate', '--version'], { cwd: ROOT, env: { npm_config_cache: cache }, node: olderNode() });
      assert.deepEqual([r.code, r.stdout.trim(), r.stderr], [0, VERSION, '']);
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  });

  test('an older Node gets one line naming the Node it needs, and exit 1', async (t) => {
    const old = olderNode();
    if (!old) return t.skip('no Node older than 24 on this machine');
    for (const args of [['--help'], ['sendmail', 'someone@bin.test']]) {
      const r = await runCommand(old, [join(ROOT, 'bin', 'streamgate.js'), ...args]);
      assert.equal(r.code, 1);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /^streamgate: needs Node\.js 24 or newer \(this is v\d+\.\d+\.\d+\); install it from https:\/\/nodejs\.org[^\n]*\n$/);
    }
  });
});
