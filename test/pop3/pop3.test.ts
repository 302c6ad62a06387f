// POP3 against the real Cassandra node with a Node POP3 client over node:net/tls: full
// transcripts, user|mailbox, the one-session lock, DELE/RSET/QUIT/disconnect semantics, errors
// that change nothing, pipelining, STLS, AUTH PLAIN, login limits and the idle timeout.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import type { MessageRef } from '../../src/mailbox/store.ts';
import { Pop3Server } from '../../src/pop3/server.ts';
import { testConfig } from '../helpers/config.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { addUser, mailboxFixture, queued, type MailboxFixture } from '../mailbox/fixture.ts';
import { Pop3Client } from './client.ts';
import { selfSignedPair } from './tls.ts';
import { newMessageId } from '../../src/message/ids.ts';

const D = 'pop.test';
const PW = 'pop-secret';

function messages(): Buffer[] {
  const dotLines: string[] = [];
  for (let i = 0; i < 300; i++) dotLines.push(`.${'.'.repeat(i % 3)}line ${i} ${'z'.repeat((i * 37) % 61)}`);
  return [
    Buffer.from('From: a@remote.test\r\nSubject: one\r\n\r\nHello there.\r\nSecond line.\r\nThird line.\r\n'),
    Buffer.from('From: b@remote.test\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n'),
    Buffer.from(`From: c@remote.test\r\nSubject: big\r\n\r\n${dotLines.join('\r\n')}\r\n`), // many chunks of 1 KB
  ];
}

describe('pop3', { timeout: 300_000 }, () => {
  let f: MailboxFixture;
  let server: Pop3Server;
  let port: number;
  let n = 0;
  const tls = selfSignedPair();

  /** A user with the three messages; returns the address and the stored rows. */
  async function freshUser(count = 3): Promise<{ address: string; refs: MessageRef[]; bodies: Buffer[] }> {
    const address = `u${++n}-${Date.now().toString(36)}@${D}`;
    await addUser(f.store, address, PW);
    for (const raw of messages().slice(0, count)) await f.delivery.deliver(queued({ to: [address], raw }));
    const refs: MessageRef[] = [];
    for await (const r of f.store.listMessages(address, 'inbox', 100)) refs.push(r);
    const bodies = await Promise.all(refs.map((r) => f.store.readWholeBody(r)));
    return { address, refs, bodies };
  }

  async function serverWith(pop3: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<Pop3Server> {
    const config = testConfig({ cassandra: f.config.cassandra, pop3: { listen: '127.0.0.1:0', ...pop3 }, ...extra });
    const s = new Pop3Server({ config, store: f.store, directory: f.directory, log: silentLogger, tls });
    await s.listen();
    return s;
  }

  async function login(user: string, p = port): Promise<{ c: Pop3Client; reply: string }> {
    const c = await Pop3Client.connect(p);
    return { c, reply: await c.login(user, PW) };
  }

  /** Logs in once the mailbox is free (a lock being released after a disconnect). */
  async function loginWhenFree(user: string): Promise<Pop3Client> {
    return waitFor(async () => {
      const { c, reply } = await login(user);
      if (reply.startsWith('+OK')) return c;
      c.destroy();
      return undefined;
    }, { timeout: 15_000, what: `login of ${user}` });
  }

  before(async () => {
    f = await mailboxFixture('pop', { cassandra: { chunkSize: 1024 } });
    server = await serverWith({ auth: { perClient: 0, perConnection: 0, delay: '0s' } });
    port = server.address.port;
  });
  after(async () => {
    await server?.stop();
    await f?.close();
  });

  test('a full transcript: CAPA, USER/PASS, STAT, LIST, UIDL, TOP, RETR, NOOP, QUIT', async () => {
    const u = await freshUser();
    const total = u.refs.reduce((s, r) => s + r.size, 0);
    const c = await Pop3Client.connect(port);
    assert.match(c.greeting, /^\+OK .*POP3 ready/);
    const capa = await c.multi('CAPA');
    assert.equal(capa.status, '+OK Capability list follows');
    for (const cap of ['TOP', 'UIDL', 'USER', 'SASL PLAIN', 'STLS', 'PIPELINING', 'RESP-CODES', 'AUTH-RESP-CODE']) assert.ok(capa.lines.includes(cap), `CAPA lists ${cap}`);
    assert.equal(await c.command(`USER ${u.address}`), '+OK');
    assert.equal(await c.command(`PASS ${PW}`), `+OK Logged in: 3 messages (${total} octets).`);
    assert.equal(await c.command('STAT'), `+OK 3 ${total}`);
    const list = await c.multi('LIST');
    assert.equal(list.status, `+OK 3 messages (${total} octets)`);
    assert.deepEqual(list.lines, u.refs.map((r, i) => `${i + 1} ${r.size}`));
    assert.equal(await c.command('LIST 2'), `+OK 2 ${u.refs[1]!.size}`);
    const uidl = await c.multi('UIDL');
    assert.deepEqual(uidl.lines, u.refs.map((r, i) => `${i + 1} ${r.id}`));
    assert.equal(await c.command('UIDL 3'), `+OK 3 ${u.refs[2]!.id}`);
    for (const id of u.refs.map((r) => r.id)) assert.match(id, /^[\x21-\x7e]{1,70}$/);

    const top0 = await c.multi('TOP 1 0');
    const header1 = u.bodies[0]!.toString().split('\r\n\r\n')[0]!;
    assert.equal(top0.data.toString(), `${header1}\r\n\r\n`);
    const top2 = await c.multi('TOP 2 2');
    assert.equal(top2.data.toString(), `${u.bodies[1]!.toString().split('\r\n\r\n')[0]}\r\n\r\n.leading dot\r\n..two dots\r\n`);
    const topAll = await c.multi('TOP 1 100');
    assert.equal(topAll.data.toString(), u.bodies[0]!.toString(), 'TOP with more lines than the body sends the whole message');

    for (let i = 0; i < 3; i++) {
      const r = await c.multi(`RETR ${i + 1}`);
      assert.equal(r.status, `+OK ${u.refs[i]!.size} octets`);
      assert.equal(r.data.length, u.refs[i]!.size, 'LIST size = octets sent (after unstuffing)');
      assert.ok(r.data.equals(u.bodies[i]!), `message ${i + 1} intact`);
    }
    assert.ok(u.refs[2]!.chunks > 5, 'the big message spans many chunks');
    assert.equal(await c.command('NOOP'), '+OK');
    assert.equal(await c.quit(), '+OK streamgate POP3 signing off (3 messages left).');
    assert.equal(c.isClosed, true);
  });

  test('byte-stuffing on the wire: a line of "." goes out as ".."', async () => {
    const u = await freshUser(2);
    const { c } = await login(u.address);
    c.send('RETR 2');
    assert.equal(await c.line(), `+OK ${u.refs[1]!.size} octets`);
    const wire: string[] = [];
    for (;;) {
      const l = await c.line();
      wire.push(l);
      if (l === '.') break;
    }
    assert.deepEqual(wire.slice(-6), ['', '..leading dot', '...two dots', '..', 'end', '.']);
    await c.quit();
  });

  test('user|mailbox picks a mailbox: anne|outbox', async () => {
    const anne = `anne${++n}@${D}`;
    const bob = `bob${n}@${D}`;
    await addUser(f.store, anne, PW);
    await addUser(f.store, bob, PW);
    const raw = Buffer.from(`From: ${anne}\r\nTo: ${bob}\r\nSubject: sent\r\n\r\nfrom anne\r\n`);
    await f.delivery.deliver(queued({ from: anne, to: [bob], raw, meta: { auth: { user: anne }, submission: newMessageId() } }));

    const o = await login(`${anne}|outbox`);
    assert.equal(o.reply, `+OK Logged in: 1 messages (${raw.length} octets).`);
    assert.ok((await o.c.multi('RETR 1')).data.equals(raw));
    await o.c.quit();
    const i = await login(anne);
    assert.equal(i.reply, '+OK Logged in: 0 messages (0 octets).');
    await i.c.quit();
    const i2 = await login(`${anne}|INBOX`);
    assert.match(i2.reply, /^\+OK Logged in: 0 messages/);
    await i2.c.quit();
    const b = await login(`${bob}|inbox`);
    assert.match(b.reply, /^\+OK Logged in: 1 messages/);
    await b.c.quit();
    for (const bad of [`${anne}|nosuch`, `${anne}|bad name`, `${anne}|../x`]) {
      const x = await login(bad);
      assert.equal(x.reply, '-ERR No such mailbox.', bad);
      x.c.destroy();
    }
  });

  test('one session per mailbox: a second gets [IN-USE]; QUIT and disconnect release the lock', async () => {
    const u = await freshUser(1);
    const a = await login(u.address);
    assert.match(a.reply, /^\+OK/);
    const b = await login(u.address);
    assert.match(b.reply, /^-ERR \[IN-USE\]/);
    assert.equal(await b.c.command('STAT'), '-ERR Not logged in.', 'the refused session stays in AUTHORIZATION');
    const other = await login(`${u.address}|outbox`);
    assert.match(other.reply, /^\+OK/, 'another mailbox of the same user is free');
    await other.c.quit();
    await a.c.quit();
    assert.match(await b.c.login(u.address, PW), /^\+OK/, 'free after QUIT');
    b.c.destroy(); // dropped without QUIT
    const c = await loginWhenFree(u.address);
    await c.quit();
  });

  test('a crashed session\'s lock expires with its lease', async () => {
    const u = await freshUser(1);
    assert.equal(await f.store.acquireLock(u.address, 'inbox', 'gw-crashed:0', 2000), true);
    const x = await login(u.address);
    assert.match(x.reply, /^-ERR \[IN-USE\]/);
    x.c.destroy();
    const c = await loginWhenFree(u.address);
    await c.quit();
  });

  test('DELE then QUIT removes the message; UIDLs of the others stay', async () => {
    const u = await freshUser();
    const { c } = await login(u.address);
    assert.equal(await c.command('DELE 2'), '+OK Message 2 deleted.');
    assert.equal(await c.command('DELE 2'), '-ERR Message 2 is deleted.');
    assert.equal(await c.command('RETR 2'), '-ERR Message 2 is deleted.');
    assert.equal(await c.command('STAT'), `+OK 2 ${u.refs[0]!.size + u.refs[2]!.size}`);
    assert.deepEqual((await c.multi('UIDL')).lines, [`1 ${u.refs[0]!.id}`, `3 ${u.refs[2]!.id}`]);
    assert.equal(await c.quit(), '+OK streamgate POP3 signing off (2 messages left).');
    const again = await login(u.address);
    assert.match(again.reply, /^\+OK Logged in: 2 messages/);
    assert.deepEqual((await again.c.multi('UIDL')).lines, [`1 ${u.refs[0]!.id}`, `2 ${u.refs[2]!.id}`]);
    assert.ok((await again.c.multi('RETR 2')).data.equals(u.bodies[2]!));
    await again.c.quit();
    await assert.rejects(f.store.readWholeBody(u.refs[1]!), /missing/, 'the body is gone too');
    assert.deepEqual(await f.store.usage(u.address), { messages: 2, bytes: u.refs[0]!.size + u.refs[2]!.size });
  });

  test('DELE then RSET keeps everything', async () => {
    const u = await freshUser();
    const { c } = await login(u.address);
    await c.command('DELE 1');
    await c.command('DELE 3');
    assert.equal(await c.command('STAT'), `+OK 1 ${u.refs[1]!.size}`);
    assert.match(await c.command('RSET'), /^\+OK 3 messages/);
    assert.equal(await c.command('LIST 1'), `+OK 1 ${u.refs[0]!.size}`);
    assert.match(await c.quit(), /\(3 messages left\)/);
    const again = await login(u.address);
    assert.deepEqual((await again.c.multi('UIDL')).lines, u.refs.map((r, i) => `${i + 1} ${r.id}`));
    await again.c.quit();
  });

  test('a dropped connection keeps everything, DELE included', async () => {
    const u = await freshUser();
    const { c } = await login(u.address);
    assert.match(await c.command('DELE 1'), /^\+OK/);
    assert.match(await c.command('DELE 2'), /^\+OK/);
    c.destroy();
    const again = await loginWhenFree(u.address);
    assert.equal(await again.command('STAT'), `+OK 3 ${u.refs.reduce((s, r) => s + r.size, 0)}`);
    await again.quit();
  });

  test('unknown and malformed commands get -ERR and change nothing', async () => {
    const u = await freshUser();
    const total = u.refs.reduce((s, r) => s + r.size, 0);
    const c = await Pop3Client.connect(port);
    for (const cmd of ['STAT', 'RETR 1', 'DELE 1', 'PASS nouser', 'HELO x', 'APOP a b', 'STLS now', 'AUTH LOGIN', 'AUTH PLAIN !!!!']) {
      assert.match(await c.command(cmd), /^-ERR/, `before login: ${cmd}`);
    }
    assert.match(await c.quit(), /^\+OK/);
    const bad = ['FOO', 'RETR', 'RETR x', 'RETR 0', 'RETR 4', 'RETR -1', 'RETR 01', 'RETR 1 2', 'LIST 1 2', 'LIST 9', 'UIDL x', 'DELE', 'DELE 99',
      'TOP 1', 'TOP 1 x', 'TOP x 1', 'TOP 1 -1', 'STAT 1', 'RSET now', 'NOOP x', 'USER x', 'PASS y', 'AUTH PLAIN', 'STLS', '', ' ', 'x'.repeat(3000)];
    for (let i = 0; i < bad.length; i += 14) {
      const { c: t, reply } = await login(u.address);
      assert.match(reply, /^\+OK/);
      for (const cmd of bad.slice(i, i + 14)) assert.match(await t.command(cmd), /^-ERR/, `in TRANSACTION: ${JSON.stringify(cmd.slice(0, 20))}`);
      assert.equal(await t.command('STAT'), `+OK 3 ${total}`);
      assert.match(await t.quit(), /\(3 messages left\)/);
    }
    const again = await login(u.address);
    assert.equal(await again.c.command('STAT'), `+OK 3 ${total}`);
    // a client that keeps sending garbage is disconnected
    for (let i = 0; i < 19; i++) assert.equal(await again.c.command('BOGUS'), '-ERR Unknown command.');
    assert.equal(await again.c.command('BOGUS'), '-ERR Too many invalid commands.');
    await again.c.closed;
    const third = await loginWhenFree(u.address);
    assert.equal(await third.command('STAT'), `+OK 3 ${total}`, 'nothing deleted by the disconnect');
    await third.quit();
  });

  test('pipelined commands are answered in order', async () => {
    const u = await freshUser(2);
    const c = await Pop3Client.connect(port);
    c.writeRaw(`USER ${u.address}\r\nPASS ${PW}\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\nNOOP\r\nQUIT\r\n`);
    assert.equal(await c.line(), '+OK');
    assert.match(await c.line(), /^\+OK Logged in: 2 messages/);
    assert.match(await c.line(), /^\+OK 2 /);
    assert.equal((await c.multiBody(await c.line())).lines.length, 2);
    assert.equal(await c.line(), `+OK 2 ${u.refs[1]!.id}`);
    assert.ok((await c.multiBody(await c.line())).data.equals(u.bodies[0]!));
    assert.equal(await c.line(), '+OK');
    assert.match(await c.line(), /^\+OK .*signing off/);
    await c.closed;
  });

  test('AUTH PLAIN: initial response, continuation, cancel, authzid', async () => {
    const u = await freshUser(1);
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const c = await Pop3Client.connect(port);
    assert.deepEqual((await c.multi('AUTH')).lines, ['PLAIN']);
    assert.match(await c.command(`AUTH PLAIN ${b64(`\0${u.address}\0wrong`)}`), /^-ERR \[AUTH\]/);
    assert.match(await c.command(`AUTH PLAIN ${b64(`other@${D}\0${u.address}\0${PW}`)}`), /^-ERR \[AUTH\]/, 'no proxy authorization');
    assert.equal(await c.command('AUTH PLAIN'), '+ ');
    assert.equal(await c.command('*'), '-ERR Authentication cancelled.');
    assert.equal(await c.command('AUTH PLAIN'), '+ ');
    assert.match(await c.command(b64(`${u.address}\0${u.address}\0${PW}`)), /^\+OK Logged in: 1 messages/);
    await c.quit();
    const o = await Pop3Client.connect(port);
    assert.match(await o.command(`AUTH PLAIN ${b64(`\0${u.address}|outbox\0${PW}`)}`), /^\+OK Logged in: 0 messages/);
    await o.quit();
  });

  test('plaintext logins are refused outside TLS and trusted networks; STLS then works', async () => {
    const strict = await serverWith({ auth: { perClient: 0, delay: '0s' } }, { networks: { trusted: ['10.0.0.0/8'] } });
    try {
      const u = await freshUser(1);
      const c = await Pop3Client.connect(strict.address.port);
      const capa = await c.multi('CAPA');
      assert.ok(capa.lines.includes('STLS'));
      assert.ok(!capa.lines.includes('USER') && !capa.lines.includes('SASL PLAIN'), 'no plaintext mechanism offered');
      assert.match(await c.command(`USER ${u.address}`), /^-ERR \[AUTH\] Plaintext authentication disallowed/);
      assert.match(await c.command(`AUTH PLAIN ${Buffer.from(`\0${u.address}\0${PW}`).toString('base64')}`), /^-ERR \[AUTH\]/);
      // a command pipelined behind STLS must not be executed (RFC 2595, CVE-2011-0411)
      c.writeRaw('STLS\r\nNOOP\r\n');
      assert.equal(await c.line(), '+OK Begin TLS negotiation now.');
      await c.upgrade();
      const capa2 = await c.multi('CAPA');
      assert.equal(capa2.status, '+OK Capability list follows', 'the NOOP sent before the handshake was dropped');
      assert.ok(capa2.lines.includes('USER') && !capa2.lines.includes('STLS'));
      assert.match(await c.command('STLS'), /^-ERR/);
      assert.match(await c.login(u.address, PW), /^\+OK Logged in: 1 messages/);
      assert.ok((await c.multi('RETR 1')).data.equals(u.bodies[0]!));
      await c.quit();
    } finally {
      await strict.stop();
    }
  });

  test('failed logins are limited per connection and per client address', async () => {
    const limited = await serverWith({ auth: { perConnection: 2, perClient: 4, window: '1m', delay: '200ms' } });
    try {
      const u = await freshUser(1);
      const p = limited.address.port;
      for (let conn = 0; conn < 2; conn++) {
        const c = await Pop3Client.connect(p);
        const t0 = Date.now();
        assert.equal(await c.login(u.address, 'bad'), '-ERR [AUTH] Authentication failed.');
        assert.ok(Date.now() - t0 >= 180, 'a failed login is answered after the delay');
        assert.equal(await c.login(u.address, 'bad'), '-ERR [AUTH] Authentication failed.');
        assert.equal(await c.line(), '-ERR [AUTH] Too many failed logins.');
        await c.closed;
      }
      const c = await Pop3Client.connect(p);
      assert.match(await c.login(u.address, PW), /^-ERR \[AUTH\] Too many failed logins from your address/, 'even the right password');
      await c.closed;
      const other = await Pop3Client.connect(port);
      assert.match(await other.login(u.address, PW), /^\+OK/, 'another listener (its own counters) is not affected');
      await other.quit();
    } finally {
      await limited.stop();
    }
  });

  test('an idle session is disconnected, without UPDATE, and its lock released', async () => {
    const idle = await serverWith({ idleTimeout: '1s', auth: { perClient: 0, delay: '0s' } });
    try {
      const u = await freshUser(1);
      const c = await Pop3Client.connect(idle.address.port);
      assert.match(await c.login(u.address, PW), /^\+OK/);
      assert.match(await c.command('DELE 1'), /^\+OK/);
      await c.closed; // RFC 1939 3: the autologout timer closes the connection without a response
      await assert.rejects(c.line(), /connection closed; unread: ""/);
      const again = await loginWhenFree(u.address);
      assert.match(await again.command('STAT'), /^\+OK 1 /);
      await again.quit();
    } finally {
      await idle.stop();
    }
  });

  test('a command trickled a byte at a time is cut off at pop3.idleTimeout', async () => {
    const slow = await serverWith({ idleTimeout: '1s', auth: { perClient: 0, delay: '0s' } });
    const c = await Pop3Client.connect(slow.address.port);
    const t0 = Date.now();
    const timer = setInterval(() => c.write('N'), 200);
    try {
      await c.closed;
      assert.ok(Date.now() - t0 < 4000, `closed after ${Date.now() - t0} ms`);
    } finally {
      clearInterval(timer);
      await slow.stop();
    }
  });

  test('connections in total and per client (pop3.maxConnections, maxConnectionsPerClient)', async () => {
    const capped = await serverWith({ maxConnections: 3, maxConnectionsPerClient: 2, auth: { perClient: 0, delay: '0s' } });
    const p = capped.address.port;
    try {
      const a = await Pop3Client.connect(p);
      const b = await Pop3Client.connect(p);
      const c = await Pop3Client.connect(p);
      assert.equal(c.greeting, '-ERR [SYS/TEMP] Too many connections from your address; try again later.');
      await c.closed;
      const d = await Pop3Client.connect(p, '127.0.0.1', '127.0.0.2');
      assert.match(d.greeting, /^\+OK/, 'another client');
      const e = await Pop3Client.connect(p, '127.0.0.1', '127.0.0.3');
      assert.equal(e.greeting, '-ERR [SYS/TEMP] Too many connections; try again later.');
      await e.closed;
      await a.quit();
      await waitFor(() => capped.sessionCount === 2, { what: 'a session ended' });
      const f2 = await Pop3Client.connect(p);
      assert.match(f2.greeting, /^\+OK/, 'room again');
      for (const x of [b, d, f2]) await x.quit();
    } finally {
      await capped.stop();
    }
  });

  // what TOP reads from Cassandra (only the chunks its lines are in) is measured in body.test.ts
  test('TOP n with a huge line count sends the whole message, as RETR does; TOP 1 2 the header and two lines', async () => {
    const address = `top-${Date.now().toString(36)}@${D}`;
    await addUser(f.store, address, PW);
    const raw = Buffer.from(`Subject: short lines\r\n\r\n${'0123456\r\n'.repeat(150_000)}`); // 1.35 MB in 1 KB chunks
    await f.delivery.deliver(queued({ to: [address], raw }));
    const c = (await login(address)).c;
    const retr = await c.multi('RETR 1');
    const top = await c.multi('TOP 1 999999999');
    assert.ok(retr.data.subarray(-raw.length).equals(raw) && top.data.equals(retr.data), 'the whole message either way');
    const head = await c.multi('TOP 1 2');
    const header = retr.data.toString().split('\r\n\r\n')[0]!;
    assert.equal(head.data.toString(), `${header}\r\n\r\n0123456\r\n0123456\r\n`);
    await c.quit();
  });

  test('server stop ends sessions without UPDATE and releases their locks', async () => {
    const s = await serverWith({ auth: { perClient: 0, delay: '0s' } });
    const u = await freshUser(1);
    const c = await Pop3Client.connect(s.address.port);
    assert.match(await c.login(u.address, PW), /^\+OK/);
    await c.command('DELE 1');
    await s.stop();
    await c.closed;
    const again = await login(u.address);
    assert.match(again.reply, /^\+OK Logged in: 1 messages/, 'the lock was released at stop');
    await again.c.quit();
  });
});
