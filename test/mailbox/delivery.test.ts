// Local delivery into the Cassandra mailbox store, against the run's real Cassandra node: inbox and
// outbox copies, bounces, redelivery without duplicates, bodies in chunks, quotas, the directory.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import cassandra from 'cassandra-driver';
import { MailboxError } from '../../src/mailbox/client.ts';
import { messageUuid } from '../../src/mailbox/ids.ts';
import { addUser, all, mailboxFixture, queued, rawMessage, type MailboxFixture } from './fixture.ts';
import { newMessageId } from '../../src/message/ids.ts';

describe('local delivery', { timeout: 120_000 }, () => {
  let f: MailboxFixture;
  const D = 'dlv.test';

  before(async () => {
    f = await mailboxFixture('dlv', { cassandra: { chunkSize: '4KB' }, users: [{ address: `cfg@${D}`, passwordHash: '$scrypt$N=16384,r=8,p=1$AAAA$AAAA' }] });
    for (const u of ['anne', 'bob', 'carl', 'quota', 'redo', 'big', 'crlf']) await addUser(f.store, `${u}@${D}`, 'pw-' + u, u === 'quota' ? 3000 : 0);
  });
  after(async () => f?.close());

  test('writes each recipient\'s inbox with Return-Path and Delivered-To, bounces unknown users', async () => {
    const raw = rawMessage('hello', 'Hi there.\r\n');
    const msg = queued({ from: 'x@remote.test', to: [`bob@${D}`, `Carl@${D.toUpperCase()}`, `nobody@${D}`], raw });
    const res = await f.delivery.deliver(msg);
    assert.deepEqual(res.map((r) => [r.rcpt, r.status, r.enhanced]), [
      [`bob@${D}`, 'delivered', '2.0.0'],
      [`Carl@${D.toUpperCase()}`, 'delivered', '2.0.0'],
      [`nobody@${D}`, 'bounced', '5.1.1'],
    ]);
    for (const who of ['bob', 'carl']) {
      const list = await all(f.store.listMessages(`${who}@${D}`, 'inbox', 100));
      assert.equal(list.length, 1);
      const body = await f.store.readWholeBody(list[0]!);
      assert.equal(body.toString(), `Return-Path: <x@remote.test>\r\nDelivered-To: ${who}@${D}\r\n${raw.toString()}`);
      assert.equal(list[0]!.size, body.length);
    }
    assert.equal((await all(f.store.listMessages(`anne@${D}`, 'outbox', 100))).length, 0, 'no outbox copy without authentication');
  });

  test('an authenticated local sender gets one outbox copy per submission', async () => {
    const raw = rawMessage('from anne', 'Sent by Anne.\r\n');
    const receivedAt = Date.now();
    const meta = { auth: { user: `Anne@${D}` }, submission: newMessageId(receivedAt), receivedAt };
    // two copies of one submission, as the ingress makes for two destination domains
    const a = queued({ from: `anne@${D}`, to: [`bob@${D}`], raw, meta, acceptedAt: receivedAt + 1 });
    const b = queued({ from: `anne@${D}`, to: [`carl@${D}`], raw, meta, acceptedAt: receivedAt + 3 });
    assert.equal((await f.delivery.deliver(a))[0]!.status, 'delivered');
    assert.equal((await f.delivery.deliver(b))[0]!.status, 'delivered');
    const outbox = await all(f.store.listMessages(`anne@${D}`, 'outbox', 100));
    assert.equal(outbox.length, 1);
    assert.equal((await f.store.readWholeBody(outbox[0]!)).toString(), raw.toString(), 'the outbox copy is the message as sent');
    // meta without a usable auth user, or one that is not local: no outbox copy
    for (const m of [{ auth: null }, { auth: 'anne' }, { auth: { user: 'anne@elsewhere.test' } }]) {
      await f.delivery.deliver(queued({ from: `anne@${D}`, to: [`bob@${D}`], raw, meta: m }));
    }
    assert.equal((await all(f.store.listMessages(`anne@${D}`, 'outbox', 100))).length, 1);
  });

  test('a redelivery of the same queue message does not create a second copy', async () => {
    const msg = queued({ to: [`redo@${D}`], raw: rawMessage('once', 'only once\r\n') });
    const first = await f.delivery.deliver(msg);
    const again = await f.delivery.deliver({ ...msg, attempt: 2 });
    assert.equal(first[0]!.status, 'delivered');
    assert.equal(again[0]!.status, 'delivered');
    assert.match(again[0]!.text!, /already delivered/);
    const list = await all(f.store.listMessages(`redo@${D}`, 'inbox', 100));
    assert.equal(list.length, 1);
    assert.equal(list[0]!.id, messageUuid(msg.id, msg.acceptedAt, `redo@${D}`, 'inbox').toString());
    const usage = await f.store.usage(`redo@${D}`);
    assert.deepEqual(usage, { messages: 1, bytes: list[0]!.size });
    // a different queue message with the same content is a different message
    await f.delivery.deliver(queued({ to: [`redo@${D}`], raw: msg.raw }));
    assert.equal((await all(f.store.listMessages(`redo@${D}`, 'inbox', 100))).length, 2);
  });

  test('bodies above chunkSize are split into chunks and read back intact; bare LF becomes CRLF', async () => {
    const lines: string[] = [];
    for (let i = 0; i < 2000; i++) lines.push(`${i % 7 === 0 ? '.' : ''}line ${i} ${'x'.repeat(i % 50)}`);
    const raw = Buffer.from(`Subject: big\n\n${lines.join('\n')}`); // bare LF, no final newline
    await f.delivery.deliver(queued({ to: [`big@${D}`], raw }));
    const [ref] = await all(f.store.listMessages(`big@${D}`, 'inbox', 100));
    assert.ok(ref);
    const expected = `Return-Path: <sender@remote.test>\r\nDelivered-To: big@${D}\r\nSubject: big\r\n\r\n${lines.join('\r\n')}\r\n`;
    assert.equal(ref.size, Buffer.byteLength(expected));
    assert.equal(ref.chunks, Math.ceil(ref.size / 4096));
    assert.ok(ref.chunks > 10);
    const rows = await f.store.client.execute(`SELECT chunk FROM ${f.keyspace}.bodies WHERE id = ?`, [cassandra.types.TimeUuid.fromString(ref.id)], { prepare: true });
    assert.equal(rows.rowLength, ref.chunks);
    assert.equal((await f.store.readWholeBody(ref)).toString(), expected);
  });

  test('a message the SMTP ingress checked (meta.lineEnds crlf) is stored as it came; one without a final CRLF still gets it', async () => {
    const asIs = Buffer.from('Subject: checked\r\n\r\nbody line\r\n');
    const noEnd = Buffer.from('Subject: checked, no end\r\n\r\nlast line');
    for (const raw of [asIs, noEnd]) await f.delivery.deliver(queued({ to: [`crlf@${D}`], raw, meta: { lineEnds: 'crlf' } }));
    const bodies = await Promise.all((await all(f.store.listMessages(`crlf@${D}`, 'inbox', 100))).map((r) => f.store.readWholeBody(r)));
    const prefix = `Return-Path: <sender@remote.test>\r\nDelivered-To: crlf@${D}\r\n`;
    assert.ok(bodies.some((b) => b.toString() === `${prefix}${asIs.toString()}`), 'stored as it came');
    assert.ok(bodies.some((b) => b.toString() === `${prefix}${noEnd.toString()}\r\n`), 'a final CRLF added');
  });

  test('a body of several write batches and read pages (1 MB each) is stored whole, once, and read back in order', async () => {
    // 4 KB chunks: 256 per batch and per page; 2.5 MB makes three of each, the last one partial
    const line = (i: number) => `${String(i).padStart(7, '0')} ${'abcdefghijklmnopqrstuvwxyz'.repeat(2)}\r\n`;
    const parts: string[] = ['Subject: batches\r\n\r\n'];
    for (let i = 0, n = 0; n < 2.5 * 1024 * 1024; i++) {
      parts.push(line(i));
      n += line(i).length;
    }
    const raw = Buffer.from(parts.join(''));
    const msg = queued({ to: [`big@${D}`], raw });
    await f.delivery.deliver(msg);
    await f.delivery.deliver(msg); // a redelivery writes nothing new
    const refs = (await all(f.store.listMessages(`big@${D}`, 'inbox', 100))).filter((r) => r.size > 2 * 1024 * 1024);
    assert.equal(refs.length, 1);
    const ref = refs[0]!;
    const expected = Buffer.concat([Buffer.from(`Return-Path: <sender@remote.test>\r\nDelivered-To: big@${D}\r\n`), raw]);
    assert.equal(ref.chunks, Math.ceil(expected.length / 4096));
    assert.ok(ref.chunks > 2 * 256 && ref.chunks < 3 * 256, `${ref.chunks} chunks: three batches`);
    const rows = await f.store.client.execute(`SELECT chunk FROM ${f.keyspace}.bodies WHERE id = ?`, [cassandra.types.TimeUuid.fromString(ref.id)], { prepare: true, fetchSize: 5000 });
    assert.deepEqual(rows.rows.map((r) => r.get('chunk') as number), Array.from({ length: ref.chunks }, (_, i) => i));
    const got: Buffer[] = [];
    for await (const b of f.store.readBody(ref)) got.push(b);
    assert.equal(got.length, ref.chunks, 'one piece per chunk');
    assert.ok(Buffer.concat(got).equals(expected), 'the body read back is the body delivered');
  });

  test('a recipient over quota bounces with 5.2.2, others still get the message', async () => {
    const raw = rawMessage('q', 'y'.repeat(1000));
    const r1 = await f.delivery.deliver(queued({ to: [`quota@${D}`], raw }));
    const r2 = await f.delivery.deliver(queued({ to: [`quota@${D}`], raw }));
    const r3 = await f.delivery.deliver(queued({ to: [`quota@${D}`, `bob@${D}`], raw }));
    assert.equal(r1[0]!.status, 'delivered');
    assert.equal(r2[0]!.status, 'delivered');
    assert.deepEqual(r3.map((r) => [r.status, r.code, r.enhanced]), [['bounced', 552, '5.2.2'], ['delivered', 250, '2.0.0']]);
    assert.equal((await all(f.store.listMessages(`quota@${D}`, 'inbox', 100))).length, 2);
  });

  test('the directory: table users, config users, cache, verify', async () => {
    assert.equal(await f.directory.exists(`ANNE@${D}`), true);
    assert.equal(await f.directory.exists(`cfg@${D}`), true);
    assert.equal(await f.directory.exists(`ghost@${D}`), false);
    assert.equal(await f.directory.exists('not an address'), false);
    assert.equal(await f.directory.verify(`anne@${D}`, 'pw-anne'), true);
    assert.equal(await f.directory.verify(`anne@${D}`, 'wrong'), false);
    assert.equal(await f.directory.verify(`ghost@${D}`, 'pw-anne'), false);
    // answers are cached for seconds: a user added elsewhere shows up after the TTL or invalidate()
    await addUser(f.store, `late@${D}`, 'pw');
    assert.equal(await f.directory.exists(`late@${D}`), true, 'never asked before: read through');
    await f.store.deleteUser(`late@${D}`);
    assert.equal(await f.directory.exists(`late@${D}`), true, 'cached');
    f.directory.invalidate(`late@${D}`);
    assert.equal(await f.directory.exists(`late@${D}`), false);
  });

  test('deleteUser removes the user and all of its mail', async () => {
    await addUser(f.store, `gone@${D}`, 'pw');
    await f.delivery.deliver(queued({ to: [`gone@${D}`], raw: rawMessage('a', 'b\r\n') }));
    const [ref] = await all(f.store.listMessages(`gone@${D}`, 'inbox', 100));
    assert.ok(ref);
    const r = await f.store.deleteUser(`gone@${D}`);
    assert.equal(r.messages, 1);
    assert.equal(await f.store.getUser(`gone@${D}`), undefined);
    assert.equal((await all(f.store.listMessages(`gone@${D}`, 'inbox', 100))).length, 0);
    const body = await f.store.client.execute(`SELECT chunk FROM ${f.keyspace}.bodies WHERE id = ?`, [cassandra.types.TimeUuid.fromString(ref.id)], { prepare: true });
    assert.equal(body.rowLength, 0);
    await assert.rejects(f.store.deleteUser(`gone@${D}`), (e: unknown) => e instanceof MailboxError && e.code === 'NOT_FOUND');
    await assert.rejects(f.store.createUser(`bob@${D}`, 'h'), (e: unknown) => e instanceof MailboxError && e.code === 'EXISTS');
  });
});
