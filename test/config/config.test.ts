import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { ConfigError, loadConfig, validateConfig } from '../../src/config/load.ts';
import { configSchema } from '../../src/config/schema.ts';
import { parseDuration, parseSize } from '../../src/config/units.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const EXAMPLE = join(ROOT, 'config', 'streamgate.example.yaml');

function writeConfig(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'sg-config-'));
  const p = join(dir, 'c.yaml');
  writeFileSync(p, text);
  return p;
}

function cli(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [join(ROOT, 'src', 'cli', 'main.ts'), ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
}

describe('units', () => {
  it('parses durations and sizes', () => {
    assert.equal(parseDuration('20m'), 1_200_000);
    assert.equal(parseDuration('5d'), 432_000_000);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('20'), undefined);
    assert.equal(parseDuration('5x'), undefined);
    assert.equal(parseSize('25MB'), 25 * 1024 * 1024);
    assert.equal(parseSize('512kb'), 512 * 1024);
    assert.equal(parseSize('12 parsecs'), undefined);
  });
});

describe('configuration', () => {
  it('the example file validates and equals the built-in defaults', () => {
    const { config } = loadConfig({ path: EXAMPLE, env: {} });
    assert.deepEqual(config, configSchema.parse({}));
  });

  it('the example file documents every option', () => {
    const text = readFileSync(EXAMPLE, 'utf8');
    const example = parse(text) as Record<string, unknown>;
    const missing: string[] = [];
    const walk = (defs: unknown, ex: unknown, path: string[]) => {
      if (typeof defs !== 'object' || defs === null || Array.isArray(defs)) return;
      const entries = Object.entries(defs);
      if (entries.length === 0) return; // open maps: routes, windows, destinations
      for (const [k, v] of entries) {
        const present = typeof ex === 'object' && ex !== null && k in ex;
        if (!present) missing.push([...path, k].join('.'));
        else if (typeof (ex as Record<string, unknown>)[k] === 'object') walk(v, (ex as Record<string, unknown>)[k], [...path, k]);
      }
    };
    walk(configSchema.parse({}), example, []);
    assert.deepEqual(missing, []);
    for (const optional of ['tls', 'readConsistency', 'writeConsistency', 'key:', 'cert:', 'standby']) assert.match(text, new RegExp(optional));
  });

  it('refuses budgets that add up to more than queue.memoryHighWater, naming the keys and the sum', () => {
    assert.throws(() => validateConfig({ events: { redis: 'redis://127.0.0.1:6381' } }, 'c.yaml'), (e: Error) => {
      assert.match(e.message, /^c\.yaml: queue\.mailBudget: expected queue\.mailBudget \+ queue\.historyBudget \+ events\.budget at most queue\.memoryHighWater \(0\.9\) \(events\.redis is the pool node 127\.0\.0\.1:6381: the three budgets share its memory\), got 0\.6 \+ 0\.15 \+ 0\.8 = 1\.55$/);
      return true;
    });
    assert.throws(() => validateConfig({ queue: { mailBudget: 0.8 } }), /queue\.mailBudget: expected queue\.mailBudget \+ queue\.historyBudget at most queue\.memoryHighWater \(0\.9\), got 0\.8 \+ 0\.15 = 0\.95/);
    validateConfig({ events: { redis: 'redis://127.0.0.1:6381', budget: 0.15 } });
  });

  it('rejects an unknown key with one line naming it', () => {
    assert.throws(() => validateConfig({ smtp: { listen: '127.0.0.1:25', lisen: 'x' } }, 'c.yaml'), (e: Error) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /^c\.yaml: smtp\.lisen: unknown option/);
      assert.doesNotMatch(e.message, /\n/);
      return true;
    });
  });

  it('rejects a wrong type and a bad duration or size, naming key, expectation and value', () => {
    assert.throws(() => validateConfig({ queue: { blockSize: 'many' } }), /queue\.blockSize: expected number, got "many"/);
    assert.throws(() => validateConfig({ queue: { timeout: '2 fortnights' } }), /queue\.timeout: expected a duration like "2s", "20m" or "5d", got "2 fortnights"/);
    assert.throws(() => validateConfig({ events: { batch: 1 } }), /events\.batch: expected false \(one job per event\) or a whole number of events per job from 2 to 1000, got 1/);
    assert.throws(() => validateConfig({ events: { batch: 'many' } }), /events\.batch: expected false .* got "many"/);
    assert.equal(validateConfig({ events: { batch: 50 } }).events.batch, 50);
    assert.equal(validateConfig({}).events.batch, 100, 'batched by default');
    assert.equal(validateConfig({ events: { batch: false } }).events.batch, false);
    assert.throws(() => validateConfig({ relay: { retry: { maxLifetime: 5 } } }), /relay\.retry\.maxLifetime: expected string, got 5/);
    assert.throws(() => validateConfig({ smtp: { maxMessageSize: '25 parsecs' } }), /smtp\.maxMessageSize: expected a size like "512KB" or "25MB", got "25 parsecs"/);
    assert.throws(() => validateConfig({ queue: { writeConcern: 'most' } }), /queue\.writeConcern: expected one of "all", "one", got "most"/);
    assert.throws(() => validateConfig({ cassandra: { jit: 'c2' } }), /cassandra\.jit: expected one of "c1", "full", got "c2"/);
    assert.equal(validateConfig({}).cassandra.jit, 'c1');
    assert.throws(() => validateConfig({ redis: { nodes: ['redis://127.0.0.1:1'] } }), /redis\.nodes: expected at least two nodes/);
  });

  it('applies environment overrides by the documented naming rule', () => {
    const { config } = loadConfig({
      path: EXAMPLE,
      env: { STREAMGATE_SMTP__LISTEN: '0.0.0.0:25', STREAMGATE_QUEUE__HEARTBEAT__MISSED: '5', STREAMGATE_DOMAINS__LOCAL: '[a.test, B.test]', STREAMGATE_ROUTES__DEST: 'local' },
    });
    assert.deepEqual(config.smtp.listen, { host: '0.0.0.0', port: 25 });
    assert.equal(config.queue.heartbeat.missed, 5);
    assert.deepEqual(config.domains.local, ['a.test', 'b.test']);
    assert.equal(config.routes.dest, 'local');
    assert.throws(() => loadConfig({ path: EXAMPLE, env: { STREAMGATE_SMPT__LISTEN: 'x' } }), /STREAMGATE_SMPT__LISTEN: unknown option smpt/);
    assert.throws(() => loadConfig({ path: EXAMPLE, env: { STREAMGATE_QUEUE__TIMEOUT: 'soon' } }), /queue\.timeout: expected a duration/);
  });

  it('the CLI exits 2 with one line for each kind of bad configuration', () => {
    for (const [text, re] of [
      ['smtp:\n  listen: "127.0.0.1:2525"\n  bogus: 1\n', /smtp\.bogus: unknown option/],
      ['queue:\n  blockSize: "x"\n', /queue\.blockSize: expected number/],
      ['relay:\n  retry:\n    maxLifetime: "forever"\n', /relay\.retry\.maxLifetime: expected a duration/],
      ['smtp: [1, 2\n', /not valid YAML/],
    ] as const) {
      const r = cli(['config', 'check', '--config', writeConfig(text)]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, re);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    const env = cli(['config', 'check'], { STREAMGATE_CONFIG: writeConfig('gateway:\n  id: "bad id"\n') });
    assert.equal(env.status, 2);
    assert.match(env.stderr, /gateway\.id: expected letters/);
    const missing = cli(['config', 'check', '--config', '/nonexistent/streamgate.yaml']);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /cannot read the configuration file \(ENOENT\)/);
  });

  it('the CLI has --help everywhere and exits 2 on usage errors', () => {
    for (const args of [['--help'], ['start', '--help'], ['services', '--help'], ['services', 'up', '--help'], ['services', 'down', '--help'], ['config', 'check', '--help']]) {
      const r = cli(args);
      assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /Usage: streamgate/);
    }
    assert.equal(cli(['frobnicate']).status, 2);
    assert.equal(cli(['start', '--no-such-flag']).status, 2);
    const ok = cli(['config', 'check', '--config', EXAMPLE]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(JSON.parse(ok.stdout).queue.timeout, 2000);
  });
});
