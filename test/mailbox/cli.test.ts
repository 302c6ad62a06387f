// The mailbox CLI as an operator runs it: `streamgate schema apply`, `user add|passwd|del|list`,
// `mailbox list`, each with --config, against the run's Cassandra node; exit statuses 0/1/2.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { MailboxDelivery } from '../../src/mailbox/delivery.ts';
import { MailboxDirectory } from '../../src/mailbox/directory.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import { verifyPassword } from '../../src/message/password.ts';
import { cassandraForTests } from '../helpers/cassandra.ts';
import { testConfig } from '../helpers/config.ts';
import { freePort } from '../helpers/waitFor.ts';
import { queued, rawMessage } from './fixture.ts';

const MAIN = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');

function cli(args: string[], stdin?: string): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (status) => resolve({ status: status ?? -1, stdout, stderr }));
    child.stdin.end(stdin ?? '');
  });
}

describe('mailbox CLI', { timeout: 180_000 }, () => {
  let dir: string;
  let cfg: string;
  let keyspace: string;
  let store: MailStore;
  const D = 'cli.test';

  before(async () => {
    const node = await cassandraForTests();
    dir = mkdtempSync(join(tmpdir(), 'sg-cli-'));
    keyspace = `sg_cli_${randomBytes(3).toString('hex')}`;
    cfg = join(dir, 'streamgate.yaml');
    writeFileSync(cfg, [
      `gateway: { dataDir: "${join(dir, 'data')}" }`,
      'log: { level: warn, pretty: never }',
      `cassandra: { contactPoints: ["${node.contactPoint}"], keyspace: ${keyspace} }`,
      `domains: { local: [${D}] }`,
    ].join('\n'));
    store = new MailStore(testConfig({ cassandra: { contactPoints: [node.contactPoint], keyspace } }), silentLogger, { autoSchema: false });
  });
  after(async () => {
    await store?.client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`).catch(() => {});
    await store?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('schema apply creates the keyspace and tables once', async () => {
    const first = await cli(['schema', 'apply', '--config', cfg]);
    assert.equal(first.status, 0, first.stderr);
    assert.equal(first.stdout.trim(), `created in keyspace ${keyspace}: keyspace, users, mailboxes, mailbox_buckets, messages, bodies, usage, pop3_locks, history, message_events, message_index, message_blocks, archive_cursors, purged`);
    const again = await cli(['schema', 'apply', '--config', cfg]);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(again.stdout.trim(), `schema of keyspace ${keyspace} is up to date`);
  });

  test('user add, passwd, list; mailbox list; user del', async () => {
    const dir2 = new MailboxDirectory(store, testConfig());
    const add = await cli(['user', 'add', `Anne@${D}`, '--password', 'first pw', '--quota', '1GB', '--config', cfg]);
    assert.equal(add.status, 0, add.stderr);
    assert.equal(add.stdout.trim(), `user anne@${D} added`);
    assert.equal(await dir2.verify(`anne@${D}`, 'first pw'), true);
    assert.equal((await store.getUser(`anne@${D}`))?.quota, 1024 ** 3);

    const dup = await cli(['user', 'add', `anne@${D}`, '--password', 'x', '--config', cfg]);
    assert.equal(dup.status, 1);
    assert.match(dup.stderr, /exists already/);

    const fromStdin = await cli(['user', 'add', `bob@${D}`, '--config', cfg], 'piped secret\n');
    assert.equal(fromStdin.status, 0, fromStdin.stderr);
    assert.equal(await dir2.verify(`bob@${D}`, 'piped secret'), true);

    const passwd = await cli(['user', 'passwd', `bob@${D}`, '--config', cfg], 'new secret\n');
    assert.equal(passwd.status, 0, passwd.stderr);
    dir2.invalidate();
    assert.equal(await dir2.verify(`bob@${D}`, 'new secret'), true);
    assert.equal(await dir2.verify(`bob@${D}`, 'piped secret'), false);

    const delivery = new MailboxDelivery(store, dir2, testConfig({ domains: { local: [D] } }), silentLogger);
    await delivery.deliver(queued({ to: [`anne@${D}`], raw: rawMessage('one', 'hello\r\n') }));
    const list = await cli(['user', 'list', '--config', cfg]);
    assert.equal(list.status, 0, list.stderr);
    const lines = list.stdout.trim().split('\n');
    assert.match(lines[0]!, /^ADDRESS\s+MESSAGES\s+SIZE\s+QUOTA\s+CREATED$/);
    assert.match(lines[1]!, new RegExp(`^anne@${D}\\s+1\\s+\\S+\\s+1\\.0GB\\s+\\d{4}-`));
    assert.match(lines[2]!, new RegExp(`^bob@${D}\\s+0\\s+0\\s+-\\s+`));

    const mbx = await cli(['mailbox', 'list', `anne@${D}`, '--config', cfg]);
    assert.equal(mbx.status, 0, mbx.stderr);
    const rows = mbx.stdout.trim().split('\n').map((l) => l.split(/\s+/));
    assert.deepEqual(rows[0], ['MAILBOX', 'MESSAGES', 'OCTETS']);
    assert.equal(rows[1]![0], 'inbox');
    assert.equal(rows[1]![1], '1');
    assert.ok(Number(rows[1]![2]) > 0);
    assert.deepEqual(rows[2], ['outbox', '0', '0']);

    const del = await cli(['user', 'del', `anne@${D}`, '--config', cfg]);
    assert.equal(del.status, 0, del.stderr);
    assert.equal(del.stdout.trim(), `user anne@${D} deleted with 1 messages`);
    assert.equal((await cli(['user', 'del', `anne@${D}`, '--config', cfg])).status, 1);
    assert.equal((await cli(['mailbox', 'list', `anne@${D}`, '--config', cfg])).status, 1);
    assert.equal((await cli(['user', 'passwd', `ghost@${D}`, '--password', 'x', '--config', cfg])).status, 1);
  });

  test('usage errors exit 2 and change nothing', async () => {
    for (const args of [
      ['user', 'add', 'not-an-address', '--password', 'x'],
      ['user', 'add', `pipe|x@${D}`, '--password', 'x'],
      ['user', 'add', `carl@${D}`, '--password', ''],
      ['user', 'add', `carl@${D}`, '--password', 'x', '--quota', 'lots'],
      ['user', 'add'],
      ['mailbox', 'list'],
    ]) {
      const r = await cli([...args, '--config', cfg]);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    }
    assert.equal(await store.getUser(`carl@${D}`), undefined);
  });

  test('user hash prints a scrypt hash for config.users (no Cassandra needed)', async () => {
    const r = await cli(['user', 'hash'], 'hash me\n');
    assert.equal(r.status, 0, r.stderr);
    const hash = r.stdout.trim();
    assert.match(hash, /^\$scrypt\$N=16384,r=8,p=1\$/);
    assert.equal(await verifyPassword('hash me', hash), true);
    assert.equal(await verifyPassword('hash me\n', hash), false, 'the final newline is not part of the password');
  });

  test('Cassandra unreachable: exit 1 with a clear message', async () => {
    const bad = join(dir, 'down.yaml');
    writeFileSync(bad, `log: { level: warn, pretty: never }\ncassandra: { contactPoints: ["127.0.0.1:${await freePort()}"], keyspace: ${keyspace} }\n`);
    const r = await cli(['user', 'list', '--config', bad]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cassandra at 127\.0\.0\.1:\d+ unavailable/);
  });
});
