// POP3 with a real client: curl's pop3:// (LIST, RETR, UIDL, DELE; AUTH PLAIN, STLS with
// --ssl-reqd; user|mailbox as the login name).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import type { MessageRef } from '../../src/mailbox/store.ts';
import { Pop3Server } from '../../src/pop3/server.ts';
import { testConfig } from '../helpers/config.ts';
import { addUser, mailboxFixture, queued, rawMessage, type MailboxFixture } from '../mailbox/fixture.ts';
import { curl } from './client.ts';
import { selfSignedPair } from './tls.ts';
import { newMessageId } from '../../src/message/ids.ts';

const D = 'curl.test';


describe('pop3 with curl', { timeout: 120_000 }, () => {
  let f: MailboxFixture;
  let plain: Pop3Server;
  let strict: Pop3Server;
  const refs: MessageRef[] = [];
  let bodies: Buffer[] = [];
  const anne = `anne@${D}`;

  before(async () => {
    f = await mailboxFixture('curl', { cassandra: { chunkSize: 1024 } });
    await addUser(f.store, anne, 'anne pw');
    await addUser(f.store, `bob@${D}`, 'bob-pw');
    const big = Array.from({ length: 400 }, (_, i) => `${i % 2 ? '.' : ''}line ${i}`).join('\r\n');
    for (const raw of [rawMessage('one', 'first\r\n'), rawMessage('two', `.dot\r\n${big}\r\n.\r\n`), rawMessage('three', 'third\r\n')]) {
      await f.delivery.deliver(queued({ to: [anne], raw }));
    }
    await f.delivery.deliver(queued({ from: anne, to: [`bob@${D}`], raw: rawMessage('to bob', 'hi bob\r\n'), meta: { auth: { user: anne }, submission: newMessageId() } }));
    for await (const r of f.store.listMessages(anne, 'inbox', 100)) refs.push(r);
    bodies = await Promise.all(refs.map((r) => f.store.readWholeBody(r)));
    const tls = selfSignedPair();
    plain = new Pop3Server({ config: testConfig({ cassandra: f.config.cassandra, pop3: { listen: '127.0.0.1:0', auth: { delay: '100ms' } } }), store: f.store, directory: f.directory, log: silentLogger, tls });
    strict = new Pop3Server({ config: testConfig({ cassandra: f.config.cassandra, pop3: { listen: '127.0.0.1:0' }, networks: { trusted: ['192.0.2.0/24'] } }), store: f.store, directory: f.directory, log: silentLogger, tls });
    await plain.listen();
    await strict.listen();
  });
  after(async () => {
    await plain?.stop();
    await strict?.stop();
    await f?.close();
  });

  const url = (s: Pop3Server, path = '') => `pop3://127.0.0.1:${s.address.port}/${path}`;

  test('LIST, RETR and UIDL', async () => {
    const list = await curl(['-u', `${anne}:anne pw`, url(plain)]);
    assert.equal(list.code, 0, list.err);
    assert.equal(list.out.toString(), refs.map((r, i) => `${i + 1} ${r.size}\r\n`).join(''));
    for (let i = 0; i < refs.length; i++) {
      const r = await curl(['-u', `${anne}:anne pw`, url(plain, String(i + 1))]);
      assert.equal(r.code, 0, r.err);
      assert.ok(r.out.equals(bodies[i]!), `curl reads message ${i + 1} byte for byte`);
    }
    const uidl = await curl(['-u', `${anne}:anne pw`, '-X', 'UIDL', url(plain)]);
    assert.equal(uidl.out.toString(), refs.map((r, i) => `${i + 1} ${r.id}\r\n`).join(''));
  });

  test('a wrong password is refused', async () => {
    const r = await curl(['-u', `${anne}:nope`, url(plain)]);
    assert.equal(r.code, 67, 'curl: login denied');
  });

  test('STLS with --ssl-reqd, and user|outbox', async () => {
    assert.equal((await curl(['-u', `${anne}:anne pw`, url(strict)])).code, 67, 'no plaintext login without TLS from an untrusted network');
    const list = await curl(['--ssl-reqd', '-k', '-u', `${anne}:anne pw`, url(strict)]);
    assert.equal(list.code, 0, list.err);
    assert.equal(list.out.toString().split('\r\n').filter(Boolean).length, 3);
    const outbox = await curl(['--ssl-reqd', '-k', '-u', `${anne}|outbox:anne pw`, url(strict, '1')]);
    assert.equal(outbox.code, 0, outbox.err);
    assert.match(outbox.out.toString(), /Subject: to bob\r\n/);
  });

  test('DELE, then QUIT when curl closes the connection', async () => {
    const r = await curl(['-u', `${anne}:anne pw`, '-X', 'DELE', '-I', url(plain, '1')]);
    assert.equal(r.code, 0, r.err);
    const list = await curl(['-u', `${anne}:anne pw`, url(plain)]);
    assert.equal(list.out.toString(), `1 ${refs[1]!.size}\r\n2 ${refs[2]!.size}\r\n`);
    const uidl = await curl(['-u', `${anne}:anne pw`, '-X', 'UIDL', url(plain)]);
    assert.equal(uidl.out.toString(), `1 ${refs[1]!.id}\r\n2 ${refs[2]!.id}\r\n`, 'UIDLs do not change');
  });
});
