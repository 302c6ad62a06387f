import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { alive, readPid } from '../../src/services/pidfile.ts';
import { redisAnswers } from '../../src/services/redis.ts';
import { cassandraAnswers } from '../../src/services/cassandra.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';

const MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');

function cli(args: string[]) {
  return spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 240_000 });
}

describe('streamgate services', () => {
  let dir: string;
  let config: string;
  let ports: number[];
  let eventsPort: number;
  let cql: number;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sg-services-'));
    ports = [await freePort(), await freePort(), await freePort()];
    eventsPort = await freePort();
    cql = await freePort();
    config = join(dir, 'streamgate.yaml');
    writeFileSync(
      config,
      [
        'gateway: { dataDir: "' + join(dir, 'data') + '" }',
        'log: { level: info, pretty: never }',
        `smtp: { listen: "127.0.0.1:${await freePort()}" }`,
        `submission: { listen: "127.0.0.1:${await freePort()}" }`,
        `pop3: { listen: "127.0.0.1:${await freePort()}" }`,
        `ops: { listen: "127.0.0.1:${await freePort()}" }`,
        `redis: { nodes: [${ports.map((p) => `"redis://127.0.0.1:${p}"`).join(', ')}], maxmemory: 64MB }`,
        `cassandra: { contactPoints: ["127.0.0.1:${cql}"], heap: 256m }`,
        `events: { redis: "redis://127.0.0.1:${eventsPort}" }`,
      ].join('\n'),
    );
  });
  after(() => {
    cli(['services', 'down', '--config', config]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('up starts each Redis node and Cassandra once, waits until they answer, and is idempotent', async () => {
    const first = cli(['services', 'up', '--config', config]);
    assert.equal(first.status, 0, first.stderr);
    for (const p of [...ports, eventsPort]) assert.match(first.stdout, new RegExp(`redis\\s+127\\.0\\.0\\.1:${p}\\s+started \\(pid \\d+, [\\d.]+ s\\)`));
    assert.match(first.stdout, new RegExp(`cassandra\\s+127\\.0\\.0\\.1:${cql}\\s+started`));
    for (const p of [...ports, eventsPort]) assert.equal(await redisAnswers('127.0.0.1', p), true);
    assert.equal(await cassandraAnswers('127.0.0.1', cql), true);
    const pids = [...first.stdout.matchAll(/pid (\d+)/g)].map((m) => Number(m[1]));
    assert.equal(pids.length, 5);

    const second = cli(['services', 'up', '--config', config]);
    assert.equal(second.status, 0, second.stderr);
    assert.doesNotMatch(second.stdout, /started/);
    assert.deepEqual([...second.stdout.matchAll(/pid (\d+)/g)].map((m) => Number(m[1])), pids);

    const status = cli(['services', 'status', '--config', config]);
    assert.equal(status.status, 0, status.stdout);
    assert.equal(status.stdout.match(/running/g)?.length, 5);

    // the Redis nodes refuse to evict: the gateway's invariant 8
    const { Redis } = await import('ioredis');
    const c = new Redis({ port: ports[0], lazyConnect: true });
    await c.connect();
    assert.deepEqual(await c.config('GET', 'maxmemory-policy'), ['maxmemory-policy', 'noeviction']);
    assert.deepEqual(await c.config('GET', 'maxmemory'), ['maxmemory', String(64 * 1024 * 1024)]);
    c.disconnect();

    const down = cli(['services', 'down', '--config', config]);
    assert.equal(down.status, 0, down.stderr);
    assert.equal(down.stdout.match(/stopped/g)?.length, 5);
    for (const pid of pids) assert.equal(alive(pid), false, `pid ${pid} gone`);
    const after = cli(['services', 'status', '--config', config]);
    assert.equal(after.status, 1);
  });

  it('start --with-services says what it does, ends its start with where everything listens, and leaves nothing behind on SIGINT, even a second one while it stops', async () => {
    const child = spawn(process.execPath, [MAIN, 'start', '--with-services', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    try {
      await waitFor(() => /^streamgate: Ctrl-C stops/m.test(err), { timeout: 240_000, what: 'start summary' });
      assert.match(err, /^streamgate: redis ×4 starting on /m);
      assert.match(err, /^streamgate: redis ×4 ready in [\d.]+ s$/m);
      assert.match(err, new RegExp(`^streamgate: cassandra starting on 127\\.0\\.0\\.1:${cql}`, 'm'));
      assert.match(err, /^streamgate: cassandra answers CQL in [\d.]+ s \(pid \d+\)$/m);
      assert.match(err, /^streamgate: ready in [\d.]+ s\n {2}SMTP {8}127\.0\.0\.1:\d+ .*\n {2}submission .*\n {2}POP3 .*\n {2}ops {9}http:\/\/127\.0\.0\.1:\d+\/ .*\n {2}Redis .*\n {2}Cassandra /m);
      assert.doesNotMatch(out + err, /Deprecation|EBADENGINE|\(node:\d+\) /, 'no warnings nobody can act on');
      for (const p of [...ports, eventsPort]) assert.equal(await redisAnswers('127.0.0.1', p), true);
      assert.equal(await cassandraAnswers('127.0.0.1', cql), true);
      const services = join(dir, 'data', 'services');
      const pids = [...[...ports, eventsPort].map((p) => join(services, `redis-${p}`, 'redis.pid')), join(services, `cassandra-${cql}`, 'cassandra.pid')].map((f) => readPid(f));
      assert.equal(pids.filter((pid) => pid && alive(pid)).length, 5);
      // Ctrl-C under `npm start` comes twice: the terminal's SIGINT, and npm's passed on to its child
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGINT');
      await waitFor(() => /^streamgate: stopping \(SIGINT\)$/m.test(err), { what: 'the stop begun' });
      child.kill('SIGINT');
      const code = await exited;
      assert.equal(code, 0, err);
      assert.match(err, /^streamgate: already stopping \(SIGINT\); the local services are stopped next$/m);
      assert.match(err, /^streamgate: local services stopped: redis .*cassandra .*\nstreamgate: stopped$/m);
      for (const p of [...ports, eventsPort]) assert.equal(await redisAnswers('127.0.0.1', p), false, `redis ${p} stopped`);
      assert.equal(await cassandraAnswers('127.0.0.1', cql), false);
      for (const pid of pids) assert.equal(alive(pid!), false);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
