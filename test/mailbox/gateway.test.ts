// End to end through a whole gateway (startGateway): swaks → SMTP ingress → replicated queue →
// relay → Cassandra mailbox → curl's POP3. Unknown local recipients are refused at RCPT; an
// authenticated submission also lands in the sender's outbox; with Cassandra unreachable the
// message is deferred, and delivered once Cassandra answers again.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import type { Gateway } from '../../src/app.ts';
import type { Config } from '../../src/config/schema.ts';
import type { MailStore } from '../../src/mailbox/store.ts';
import { cassandraForTests } from '../helpers/cassandra.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import type { SmtpSink } from '../helpers/smtpSink.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';
import { addUser } from './fixture.ts';
import { TcpProxy } from './proxy.ts';

const D = 'gw.test';

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 30_000 }, (e, out, err) => resolve({ code: e ? Number((e as { code?: number }).code ?? 1) : 0, out: `${out}${err}` }));
  });
}

describe('through the whole gateway', { timeout: 180_000 }, () => {
  let t: TestGateway;
  let proxy: TcpProxy;
  let gw: Gateway;
  let config: Config;
  let store: MailStore;
  let sink: SmtpSink;

  before(async () => {
    const node = await cassandraForTests();
    proxy = new TcpProxy(await freePort(), { host: node.host, port: node.port });
    await proxy.open();
    t = await startTestGateway('gw', { domain: D, hostname: 'mx.gw.test', contactPoint: proxy.address });
    ({ gw, config, store, sink } = t);
    await addUser(store, `anne@${D}`, 'anne-pw');
    await addUser(store, `bob@${D}`, 'bob-pw');
  });
  after(async () => {
    await t?.stop();
    await proxy?.close();
  });

  const pop3 = (user: string, pw: string, path = '') => run('curl', ['-sS', '-u', `${user}:${pw}`, `pop3://127.0.0.1:${config.pop3.listen.port}/${path}`]);
  /** Messages in a mailbox per curl's LIST, or undefined when the login failed. */
  const count = async (user: string, pw: string) => {
    const r = await pop3(user, pw);
    return r.code === 0 ? r.out.split('\r\n').filter((l) => /^\d+ \d+$/.test(l)).length : undefined;
  };
  const smtp = (args: string[]) => run('swaks', ['--server', `127.0.0.1:${config.smtp.listen.port}`, '--from', 'x@remote.test', '--helo', 'remote.test', ...args]);

  test('SMTP in, POP3 out; an unknown local user is refused at RCPT', async () => {
    const sent = await smtp(['--to', `bob@${D}`, '--header', 'Subject: end to end', '--body', 'through the whole gateway']);
    assert.equal(sent.code, 0, sent.out);
    const list = await waitFor(async () => ((await pop3(`bob@${D}`, 'bob-pw')).out.match(/^1 \d+/m) ? true : undefined), { timeout: 30_000, what: 'delivered to bob' });
    assert.ok(list);
    const msg = await pop3(`bob@${D}`, 'bob-pw', '1');
    assert.match(msg.out, /^Return-Path: <x@remote\.test>\r\nDelivered-To: bob@gw\.test\r\n/);
    assert.match(msg.out, /Subject: end to end/);
    const refused = await smtp(['--to', `nobody@${D}`]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.out, /550[ -]5\.1\.1/);
  });

  test('an authenticated submission also lands in the sender\'s outbox', async () => {
    const sent = await run('swaks', ['--server', `127.0.0.1:${config.submission.listen.port}`, '--tls', '--auth', 'PLAIN',
      '--auth-user', `anne@${D}`, '--auth-password', 'anne-pw', '--from', `anne@${D}`, '--to', `bob@${D}`, '--header', 'Subject: from anne', '--body', 'hello bob']);
    assert.equal(sent.code, 0, sent.out);
    await waitFor(async () => ((await pop3(`anne@${D}|outbox`, 'anne-pw')).out.match(/^1 \d+/m) ? true : undefined), { timeout: 30_000, what: 'outbox copy' });
    assert.match((await pop3(`anne@${D}|outbox`, 'anne-pw', '1')).out, /Subject: from anne/);
    await waitFor(async () => ((await pop3(`bob@${D}`, 'bob-pw')).out.match(/^2 \d+/m) ? true : undefined), { timeout: 30_000, what: 'inbox copy' });
  });

  test('an authenticated submission to remote recipients only is kept in the sender\'s outbox', async () => {
    try {
      const before = (await pop3(`anne@${D}|outbox`, 'anne-pw')).out.split('\r\n').filter((l) => /^\d+ \d+$/.test(l)).length;
      const sent = await run('swaks', ['--server', `127.0.0.1:${config.submission.listen.port}`, '--tls', '--auth', 'PLAIN',
        '--auth-user', `anne@${D}`, '--auth-password', 'anne-pw', '--from', `anne@${D}`, '--to', 'carol@remote.test', '--header', 'Subject: to carol', '--body', 'hello carol']);
      assert.equal(sent.code, 0, sent.out);
      await waitFor(async () => (await pop3(`anne@${D}|outbox`, 'anne-pw')).out.split('\r\n').filter((l) => /^\d+ \d+$/.test(l)).length === before + 1, { timeout: 30_000, what: 'outbox copy' });
      assert.match((await pop3(`anne@${D}|outbox`, 'anne-pw', String(before + 1))).out, /Subject: to carol/);
      await waitFor(() => sink.messages.length === 1, { timeout: 30_000, what: 'relayed to carol' });
      assert.deepEqual(sink.messages[0]!.to, ['carol@remote.test']);
      assert.equal(await count(`bob@${D}`, 'bob-pw'), 2, 'no local recipient got a copy');
    } finally {
      sink.messages.length = 0;
    }
  });

  test('Cassandra unreachable: the message is deferred, then delivered once it is back', async () => {
    const before = await count(`anne@${D}`, 'anne-pw');
    assert.equal(before, 0);
    await proxy.close();
    const sent = await smtp(['--to', `anne@${D}`, '--header', 'Subject: during the outage']);
    assert.equal(sent.code, 0, `accepted while Cassandra is down (the user is cached): ${sent.out}`);
    const history = await waitFor(async () => {
      const h = await gw.queues.history(D);
      return h.some((e) => e.kind === 'deferred') ? h : undefined;
    }, { timeout: 30_000, what: 'a deferred event' });
    assert.ok(history.some((e) => e.kind === 'deferred'));
    assert.equal(await count(`anne@${D}`, 'anne-pw'), undefined, 'no POP3 login while Cassandra is away');
    await proxy.open();
    await waitFor(async () => ((await count(`anne@${D}`, 'anne-pw')) === 1 ? true : undefined), { timeout: 60_000, what: 'delivered after the outage' });
    const h = await gw.queues.history(D);
    assert.ok(h.some((e) => e.kind === 'delivered' && h.some((d) => d.kind === 'deferred' && d.messageId === e.messageId)), 'the deferred message was delivered');
  });
});
