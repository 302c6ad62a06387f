// A delivery interrupted between a message's body chunks and its row (the gateway killed there, in
// a process of its own): the message is not visible, a retry stores it once with its whole body,
// and no chunk is left behind, whether the message is retried, its user deleted, or it is never
// retried at all (it expired in the queue: the next reader of the mailbox removes what is left).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { messageUuid } from '../../src/mailbox/ids.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import type { QueuedMessage } from '../../src/message/types.ts';
import { addUser, all, mailboxFixture, queued, rawMessage, type MailboxFixture } from './fixture.ts';

const D = 'intr.test';
const CHUNK = '4KB';

describe('a delivery interrupted between the body and the row', { timeout: 180_000 }, () => {
  let f: MailboxFixture;

  before(async () => {
    f = await mailboxFixture('intr', { cassandra: { chunkSize: CHUNK } });
    for (const u of ['anne', 'bob', 'carl', 'dora']) await addUser(f.store, `${u}@${D}`);
  });
  after(async () => f?.close());

  /** Runs the delivery of `msg` in a child process that kills itself once the body is written. */
  async function killedDelivery(msg: QueuedMessage): Promise<void> {
    const spec = {
      contactPoint: f.contactPoint, keyspace: f.keyspace, domain: D, chunkSize: CHUNK,
      msg: { id: msg.id, acceptedAt: msg.acceptedAt, from: msg.envelope.from, to: msg.envelope.to, raw: msg.raw.toString('base64'), meta: msg.meta },
    };
    const child = spawn(process.execPath, [join(import.meta.dirname, 'interruptChild.ts'), JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const [code, signal] = await new Promise<[number | null, string | null]>((ok) => child.once('exit', (c, s) => ok([c, s])));
    assert.equal(signal, 'SIGKILL', `the delivery was to die after its body (exit ${code}, said ${out.trim()})`);
  }

  /** Ids of every message body in the keyspace. */
  async function bodyIds(): Promise<Set<string>> {
    const rs = await f.store.client.execute(`SELECT DISTINCT id FROM ${f.keyspace}.bodies`);
    return new Set(rs.rows.map((r) => String(r.get('id'))));
  }

  /** Ids of the messages every user can see, in every mailbox. */
  async function visibleIds(): Promise<Set<string>> {
    const ids = new Set<string>();
    for await (const u of f.store.listUsers()) {
      for (const mb of ['inbox', 'outbox']) for (const r of await all(f.store.listMessages(u.address, mb, 100))) ids.add(r.id);
    }
    return ids;
  }

  const bigMessage = (to: string, subject: string) => queued({ to: [to], raw: rawMessage(subject, `${'0123456789abcdef'.repeat(64)}\r\n`.repeat(40)) });

  test('nothing shows; the retry stores the message once, whole, and leaves no stray chunk', async () => {
    const msg = bigMessage(`anne@${D}`, 'killed once');
    await killedDelivery(msg);
    const id = messageUuid(msg.id, msg.acceptedAt, `anne@${D}`, 'inbox').toString();
    assert.ok((await bodyIds()).has(id), 'the body was written before the kill');
    assert.deepEqual(await all(f.store.listMessages(`anne@${D}`, 'inbox', 100)), [], 'no visible message');
    assert.deepEqual(await f.store.listMailboxes(`anne@${D}`), [{ name: 'inbox', messages: 0, bytes: 0 }, { name: 'outbox', messages: 0, bytes: 0 }]);
    assert.deepEqual(await f.store.usage(`anne@${D}`), { messages: 0, bytes: 0 });

    const res = await f.delivery.deliver({ ...msg, attempt: 2 });
    assert.equal(res[0]!.status, 'delivered');
    const list = await all(f.store.listMessages(`anne@${D}`, 'inbox', 100));
    assert.equal(list.length, 1);
    assert.equal(list[0]!.id, id);
    const body = await f.store.readWholeBody(list[0]!);
    assert.equal(body.toString('latin1'), `Return-Path: <sender@remote.test>\r\nDelivered-To: anne@${D}\r\n${msg.raw.toString('latin1')}`);
    assert.equal(list[0]!.size, body.length);
    assert.ok(list[0]!.chunks > 1, 'the body spans several chunks');
    assert.deepEqual(await f.store.usage(`anne@${D}`), { messages: 1, bytes: body.length });
    assert.deepEqual(await bodyIds(), await visibleIds(), 'every body belongs to a visible message');
  });

  test('a user deleted after the interrupted delivery leaves no chunk behind', async () => {
    const msg = bigMessage(`bob@${D}`, 'killed, then the user goes');
    await killedDelivery(msg);
    const id = messageUuid(msg.id, msg.acceptedAt, `bob@${D}`, 'inbox').toString();
    assert.ok((await bodyIds()).has(id));
    await f.store.deleteUser(`bob@${D}`);
    assert.equal((await bodyIds()).has(id), false, 'the body went with the user');
    assert.deepEqual(await bodyIds(), await visibleIds());
  });

  test('a delivery never retried (the message expired in the queue) is cleaned up by the next reader of the mailbox', async () => {
    const msg = bigMessage(`carl@${D}`, 'killed, never retried');
    await killedDelivery(msg);
    const id = messageUuid(msg.id, msg.acceptedAt, `carl@${D}`, 'inbox').toString();
    // read within the message's lifetime: it may still be retried, so it stays (invisible)
    assert.deepEqual(await all(f.store.listMessages(`carl@${D}`, 'inbox', 100)), []);
    assert.ok((await bodyIds()).has(id), 'kept while the queue may still retry it');
    // read after the queue's maxLifetime: nobody will retry it
    const later = new MailStore(f.config, silentLogger, { now: () => Date.now() + f.config.relay.retry.maxLifetime + 2 * 3600_000 });
    try {
      assert.deepEqual(await all(later.listMessages(`carl@${D}`, 'inbox', 100)), []);
    } finally {
      await later.close();
    }
    assert.equal((await bodyIds()).has(id), false, 'the abandoned body is removed');
    assert.deepEqual(await bodyIds(), await visibleIds());
  });

  test('an outbox copy interrupted the same way is stored once on retry', async () => {
    const receivedAt = Date.now();
    const msg = queued({ from: `dora@${D}`, to: [`anne@${D}`], raw: rawMessage('from dora', 'x\r\n'.repeat(3000)), meta: { auth: { user: `dora@${D}` }, submission: 'sub-dora-1', receivedAt }, acceptedAt: receivedAt });
    await killedDelivery(msg); // dies after the outbox body
    assert.deepEqual(await all(f.store.listMessages(`dora@${D}`, 'outbox', 100)), []);
    assert.equal((await f.delivery.deliver(msg))[0]!.status, 'delivered');
    assert.equal((await all(f.store.listMessages(`dora@${D}`, 'outbox', 100))).length, 1);
    assert.deepEqual(await bodyIds(), await visibleIds());
  });

  test('a keyspace made before rows could be pending gets the column at connect, and its rows stay visible', async () => {
    const msg = queued({ to: [`anne@${D}`], raw: rawMessage('old row', 'before the column\r\n') });
    const before = (await all(f.store.listMessages(`anne@${D}`, 'inbox', 100))).length;
    await f.store.client.execute(`ALTER TABLE ${f.keyspace}.messages DROP pending`);
    await f.store.client.execute(`INSERT INTO ${f.keyspace}.messages (address, mailbox, bucket, id, size, chunks, queue_id, sender, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [`anne@${D}`, 'inbox', new Date(0), messageUuid(msg.id, msg.acceptedAt, `anne@${D}`, 'inbox'), 3, 1, msg.id, 'x', new Date(msg.acceptedAt)], { prepare: true });
    const fresh = f.another();
    await fresh.connect();
    const cols = await f.store.client.execute('SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?', [f.keyspace, 'messages'], { prepare: true });
    assert.ok(cols.rows.some((r) => r.get('column_name') === 'pending'), 'the column is back');
    assert.equal((await all(fresh.listMessages(`anne@${D}`, 'inbox', 100))).length, before + 1, 'a row without the column counts as committed');
  });
});
