// The local Cassandra node service against a real Cassandra 5.0 JVM: CQL round trip, idempotent
// start, clean stop. The node is private to this file (it gets stopped), never the run's shared one.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import cassandra from 'cassandra-driver';
import { cassandraAnswers, startCassandra, stopCassandra } from '../../src/services/cassandra.ts';
import { cassandraForTests, startTestCassandra, type TestCassandra } from '../helpers/cassandra.ts';
import { waitFor } from '../helpers/waitFor.ts';

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : NaN;
}

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.charAt(stat.lastIndexOf(')') + 2) === 'Z';
}

describe('cassandra node service', { timeout: 300_000 }, () => {
  let node: TestCassandra;

  before(async () => {
    node = await startTestCassandra();
  });

  after(async () => {
    await node?.stop();
  });

  test('answers CQL: keyspace, table, insert, select', async (t) => {
    t.diagnostic(`cold start to CQL: ${node.ms} ms; JVM RSS: ${rssMiB(node.pid)} MiB`);
    assert.equal(await cassandraAnswers(node.host, node.port), true);
    const client = new cassandra.Client({
      contactPoints: [node.contactPoint],
      localDataCenter: 'datacenter1',
      refreshSchemaDelay: 100,
    });
    try {
      await client.connect();
      const rv = await client.execute('SELECT release_version FROM system.local');
      assert.match(String(rv.first().get('release_version')), /^5\.0\./);
      await client.execute(`CREATE KEYSPACE IF NOT EXISTS sg_test WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`);
      await client.execute('CREATE TABLE IF NOT EXISTS sg_test.messages (mailbox text, uid bigint, subject text, body blob, PRIMARY KEY (mailbox, uid))');
      const insert = 'INSERT INTO sg_test.messages (mailbox, uid, subject, body) VALUES (?, ?, ?, ?)';
      for (let uid = 1; uid <= 3; uid++) {
        await client.execute(insert, ['alice/INBOX', cassandra.types.Long.fromNumber(uid), `hello ${uid}`, Buffer.from(`body ${uid}`)], { prepare: true });
      }
      const rs = await client.execute('SELECT uid, subject, body FROM sg_test.messages WHERE mailbox = ? AND uid >= ?', ['alice/INBOX', cassandra.types.Long.fromNumber(2)], { prepare: true });
      assert.deepEqual(
        rs.rows.map((r) => [Number(r.get('uid')), r.get('subject'), (r.get('body') as Buffer).toString()]),
        [[2, 'hello 2', 'body 2'], [3, 'hello 3', 'body 3']],
      );
      t.diagnostic(`JVM RSS after round trip: ${rssMiB(node.pid)} MiB`);
    } finally {
      await client.shutdown();
    }
  });

  test('runs the quick JIT compiler alone by default (cassandra.jit: c1)', () => {
    const args = readFileSync(`/proc/${node.pid}/cmdline`, 'utf8').split('\0');
    assert.ok(args.includes('-XX:TieredStopAtLevel=1'), `JVM arguments: ${args.filter((a) => a.startsWith('-XX')).join(' ')}`);
  });

  test('startCassandra on a running node is idempotent', async () => {
    const again = await startCassandra(node.options);
    assert.equal(again.alreadyRunning, true);
    assert.equal(again.pid, node.pid);
    assert.equal(readFileSync(join(node.options.dataDir!, 'cassandra.pid'), 'utf8').trim(), String(node.pid));
  });

  test('stopCassandra stops exactly that process and removes the pid file', async () => {
    assert.equal(await stopCassandra(node.options), true);
    assert.equal(processGone(node.pid), true, `pid ${node.pid} still running`);
    assert.equal(existsSync(join(node.options.dataDir!, 'cassandra.pid')), false);
    assert.equal(await cassandraAnswers(node.host, node.port), false);
    assert.equal(await stopCassandra(node.options), false, 'a second stop finds nothing running');
  });
});

describe('a node as services up starts it, SIGKILLed', { timeout: 300_000 }, () => {
  let node: TestCassandra;

  before(async () => {
    // the JVM's own JIT here (cassandra.jit: full), so both settings run in the suite
    node = await startTestCassandra({ durable: true, jit: 'full' });
  });

  after(async () => {
    await node?.stop();
  });

  // A write at ONE is acknowledged by one node. With Cassandra's default periodic commit log a
  // node replays, after a kill, only what its commit log had marked (every 100 ms): the writes it
  // acknowledged since are gone, and with them any message whose row or body only that node held.
  test('cassandra.jit: full leaves the JVM its C2 compiler', () => {
    const args = readFileSync(`/proc/${node.pid}/cmdline`, 'utf8').split('\0');
    assert.ok(args.includes('-XX:+UseG1GC') && !args.some((a) => a.startsWith('-XX:TieredStopAtLevel')), `JVM arguments: ${args.filter((a) => a.startsWith('-XX')).join(' ')}`);
  });

  test('replays every write it acknowledged before the kill', async () => {
    const connect = async () => {
      const c = new cassandra.Client({ contactPoints: [node.contactPoint], localDataCenter: 'datacenter1' });
      await c.connect();
      return c;
    };
    let client = await connect();
    const ONE = { prepare: true, consistency: cassandra.types.consistencies.one };
    let acknowledged = 0;
    try {
      await client.execute(`CREATE KEYSPACE sg_kill WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`);
      await client.execute('CREATE TABLE sg_kill.rows (id int PRIMARY KEY, data blob)');
      // one write after another up to the kill, so the last ones are acknowledged moments before it
      for (let id = 0; id < 1000; id++) {
        await client.execute('INSERT INTO sg_kill.rows (id, data) VALUES (?, ?)', [id, Buffer.alloc(512, id % 256)], ONE);
        acknowledged++;
      }
      process.kill(node.pid, 'SIGKILL');
    } finally {
      await client.shutdown();
    }
    await waitFor(() => processGone(node.pid), { timeout: 30_000, what: 'the killed JVM gone' });
    // its ports close a moment after the process is gone
    const again = await waitFor(() => startCassandra(node.options).catch((err: Error) => {
      if (/already in use/.test(err.message)) return undefined;
      throw err;
    }), { timeout: 30_000, every: 250, what: 'the node started again' });
    assert.equal(again.alreadyRunning, false);
    client = await connect();
    try {
      const rs = await client.execute('SELECT id FROM sg_kill.rows', [], { ...ONE, fetchSize: 5000 });
      assert.equal(rs.rowLength, acknowledged, `rows after the kill and a restart, of ${acknowledged} acknowledged`);
    } finally {
      await client.shutdown();
    }
  });
});

test('cassandraForTests uses STREAMGATE_TEST_CASSANDRA when the runner set it', async () => {
  const saved = process.env.STREAMGATE_TEST_CASSANDRA;
  try {
    process.env.STREAMGATE_TEST_CASSANDRA = '127.0.0.1:45123';
    assert.deepEqual(await cassandraForTests(), { contactPoint: '127.0.0.1:45123', host: '127.0.0.1', port: 45123 });
    process.env.STREAMGATE_TEST_CASSANDRA = 'nonsense';
    await assert.rejects(cassandraForTests(), /STREAMGATE_TEST_CASSANDRA/);
  } finally {
    if (saved === undefined) delete process.env.STREAMGATE_TEST_CASSANDRA;
    else process.env.STREAMGATE_TEST_CASSANDRA = saved;
  }
});
