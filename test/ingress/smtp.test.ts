// The SMTP ingress end to end: real redis-server nodes, real clients (nodemailer, swaks), raw
// sockets where a test needs exact bytes.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import type { LifecycleEvent } from '../../src/message/types.ts';
import { hashPassword } from '../../src/message/password.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { silentLogger } from '../../src/log.ts';
import { testConfig } from '../helpers/config.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { onReplicas, RawClient, startHarness, startIngress, uniqueDomain, type Harness } from '../helpers/ingress.ts';

const run = promisify(execFile);
const queuedId = (response: string) => /queued as (\S+)/.exec(response)?.[1];

describe('SMTP ingress', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('smtp');
  });
  after(async () => {
    await h.stop();
  });

  it('replies 250 only once the message is on both replicas, and emits accepted with the facts', async () => {
    const domain = uniqueDomain('both');
    const ing = await startIngress(h, { domains: { local: [], relay: [domain] }, networks: { trusted: [] } });
    const events: { ev: LifecycleEvent; at: number }[] = [];
    const onEvent = (ev: LifecycleEvent) => events.push({ ev, at: Date.now() });
    h.qm.on('event', onEvent);
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: ing.address('mx').port, secure: false, tls: { rejectUnauthorized: false } });
    try {
      for (let i = 0; i < 5; i++) {
        const info = await transport.sendMail({ from: 'sender@src.test', to: `user${i}@${domain}`, subject: `m${i}`, text: 'hello' });
        const at = Date.now();
        const id = queuedId(info.response);
        assert.match(info.response, /^250 2\.0\.0 Ok: queued as [0-9A-Z]{20}$/);
        assert.ok(id);
        // read straight from both Redis nodes of the queue
        const reps = await onReplicas(h.qm, domain, id);
        assert.equal(reps.length, 2);
        for (const r of reps) {
          assert.ok(r.state, `message ${id} is in the state hash on ${r.node}`);
          assert.equal(r.live, i + 1, `live stream length on ${r.node}`);
        }
        const ev = events.find((e) => e.ev.messageId === id);
        assert.ok(ev && ev.at <= at, 'accepted was emitted before the client had the 250');
        assert.equal(ev.ev.kind, 'accepted');
        const d = ev.ev.details as Record<string, unknown>;
        assert.deepEqual(d.envelope, { from: 'sender@src.test', to: [`user${i}@${domain}`] });
        assert.equal(typeof d.size, 'number');
        assert.equal((d.client as { address: string }).address, '127.0.0.1');
        assert.deepEqual((d.tls as { version: string }).version.startsWith('TLS'), true, 'nodemailer used STARTTLS');
        assert.equal(d.auth, null);
        assert.equal(d.submission, id);
        assert.equal(d.listener, 'mx');
      }
    } finally {
      h.qm.off('event', onEvent);
      transport.close();
    }
  });

  it('splits recipients by destination domain: one copy per queue, one submission id', async () => {
    const a = uniqueDomain('split-a');
    const b = uniqueDomain('split-b');
    const ing = await startIngress(h, { domains: { local: [], relay: [a, b] }, networks: { trusted: [] } });
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: ing.address('mx').port, ignoreTLS: true });
    const info = await transport.sendMail({
      envelope: { from: 'x@src.test', to: [`one@${a}`, `two@${b}`, `three@${a.toUpperCase()}`, `one@${a}`] },
      raw: 'Subject: split\r\n\r\nbody\r\n',
    });
    transport.close();
    const [first, more] = /queued as (\S+) \(and (\S+)\)/.exec(info.response)!.slice(1);
    const qa = await h.qm.take(a, 10);
    const qb = await h.qm.take(b, 10);
    assert.equal(qa.length, 1);
    assert.equal(qb.length, 1);
    assert.equal(qa[0]!.id, first);
    assert.equal(qb[0]!.id, more);
    assert.deepEqual(qa[0]!.envelope.to, [`one@${a}`, `three@${a}`], 'domain lower-cased, duplicate dropped');
    assert.deepEqual(qb[0]!.envelope.to, [`two@${b}`]);
    assert.equal(qa[0]!.meta.submission, first);
    assert.equal(qb[0]!.meta.submission, first);
    assert.equal(qa[0]!.meta.copies, 2);
    assert.ok(qa[0]!.raw.equals(qb[0]!.raw), 'the same bytes in both queues');
    assert.match(qa[0]!.raw.toString(), /^Received: from \[?[^\r]+\r\n\t[^\r]*by mx\.gw\.test \(streamgate\) with ESMTP id /);
    assert.doesNotMatch(qa[0]!.raw.toString(), /Message-ID/i, 'no Message-ID added on the MX listener');
  });

  it('works with swaks, adds Received with TLS facts, and keeps 8-bit and SMTPUTF8 mail intact', async () => {
    const domain = uniqueDomain('swaks');
    const ing = await startIngress(h, { domains: { local: [], relay: [domain] }, networks: { trusted: [] } });
    const { stdout } = await run('swaks', ['--server', `127.0.0.1:${ing.address('mx').port}`, '--from', 'pé@src.test', '--to', `zoë@${domain}`, '--tls'], { timeout: 20_000 }).catch((e: { stdout: string }) => e);
    // swaks sends no SMTPUTF8 parameter: the non-ASCII sender is refused
    assert.match(stdout, /553 5\.6\.7 Non-ASCII address/);
    const ok = await run('swaks', ['--server', `127.0.0.1:${ing.address('mx').port}`, '--from', 'p@src.test', '--to', `zoe@${domain}`, '--tls', '--header', 'Subject: héllo', '--body', 'grüße'], { timeout: 20_000 });
    assert.match(ok.stdout, /250 2\.0\.0 Ok: queued as/);
    const [m] = await h.qm.take(domain, 1);
    const raw = m!.raw.toString('utf8');
    assert.match(raw, /\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)/);
    assert.match(raw, /with ESMTPS id /);
    assert.match(raw, /for <zoe@[^>]+>; \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000/);
    assert.ok(raw.includes('grüße'), '8-bit body survives');
    // SMTPUTF8 over a raw socket
    const c = await RawClient.open(ing.address('mx').port);
    assert.equal((await c.read())!.code, 220);
    assert.equal((await c.cmd('EHLO client.test')).code, 250);
    assert.equal((await c.cmd('MAIL FROM:<pé@src.test> SMTPUTF8')).code, 250);
    assert.equal((await c.cmd(`RCPT TO:<zoë@${domain}>`)).code, 250);
    assert.equal((await c.cmd('DATA')).code, 354);
    const r = await c.cmd('Subject: utf8\r\n\r\nhi\r\n.');
    assert.equal(r.code, 250);
    c.close();
    const [u] = await h.qm.take(domain, 1);
    assert.deepEqual(u!.envelope, { from: 'pé@src.test', to: [`zoë@${domain}`] });
    assert.equal(u!.meta.smtpUtf8, true);
  });

  it('queues IDN domains under their ASCII form', async () => {
    const ing = await startIngress(h, { domains: { local: [], relay: ['xn--bcher-kva.test'] }, networks: { trusted: [] } });
    const c = await RawClient.open(ing.address('mx').port);
    await c.read();
    await c.cmd('EHLO client.test');
    assert.equal((await c.cmd('MAIL FROM:<a@src.test> SMTPUTF8')).code, 250);
    assert.equal((await c.cmd('RCPT TO:<b@bücher.test>')).code, 250, 'Unicode form');
    assert.equal((await c.cmd('RCPT TO:<c@XN--BCHER-KVA.test>')).code, 250, 'A-label form');
    await c.cmd('DATA');
    assert.equal((await c.cmd('Subject: idn\r\n\r\nx\r\n.')).code, 250);
    c.close();
    const [m] = await h.qm.take('xn--bcher-kva.test', 1);
    assert.deepEqual(m!.envelope.to, ['b@xn--bcher-kva.test', 'c@xn--bcher-kva.test']);
  });

  it('generates the self-signed pair once and reuses it', async () => {
    const ing1 = await startIngress(h, {});
    const certFile = join(h.dataDir, 'tls', 'cert.pem');
    assert.ok(existsSync(certFile));
    const ing2 = await startIngress(h, {});
    assert.ok(ing1.certificate!.equals(ing2.certificate!));
    assert.ok(readFileSync(certFile).equals(ing1.certificate!));
  });

  describe('submission', () => {
    const user = 'alice@sub.test';
    const password = 'correct horse battery staple';
    let port: number;
    let domain: string;
    before(async () => {
      domain = uniqueDomain('sub-dest');
      const ing = await startIngress(h, {
        domains: { local: ['sub.test'], relay: [] },
        networks: { trusted: [] },
        users: [{ address: user, passwordHash: await hashPassword(password) }],
        smtp: { auth: { perConnection: 3, perClient: 5, window: '1m', delay: '50ms' } },
      });
      port = ing.address('submission').port;
    });

    it('offers AUTH only over TLS and requires it for MAIL', async () => {
      const c = await RawClient.open(port);
      await c.read();
      const ehlo = await c.cmd('EHLO client.test');
      assert.ok(ehlo.lines.some((l) => l.includes('STARTTLS')));
      const plain = Buffer.from(`\0${user}\0${password}`).toString('base64');
      assert.deepEqual(await c.cmd(`AUTH PLAIN ${plain}`), { code: 530, lines: ['530 5.7.0 Must issue a STARTTLS command first'], text: '5.7.0 Must issue a STARTTLS command first' });
      assert.equal((await c.cmd('MAIL FROM:<alice@sub.test>')).text, '5.7.0 Authentication required');
      assert.equal((await c.cmd('STARTTLS')).code, 220);
      await c.startTls();
      const ehlo2 = await c.cmd('EHLO client.test');
      assert.ok(ehlo2.lines.some((l) => /AUTH PLAIN LOGIN/.test(l)));
      assert.equal((await c.cmd('MAIL FROM:<alice@sub.test>')).text, '5.7.0 Authentication required');
      assert.equal((await c.cmd(`AUTH PLAIN ${plain}`)).code, 235);
      assert.equal((await c.cmd('MAIL FROM:<alice@sub.test>')).code, 250);
      assert.equal((await c.cmd(`RCPT TO:<bob@${domain}>`)).code, 250, 'authenticated clients may relay');
      c.close();
    });

    it('hangs up on a client that keeps talking without authenticating (421 4.7.0)', async () => {
      const c = await RawClient.open(port);
      await c.read();
      let last: Awaited<ReturnType<RawClient['cmd']>> | undefined;
      for (let i = 0; i < 12 && !c.closed; i++) {
        last = await c.cmd('NOOP');
        if (last.code === 421) break;
      }
      assert.equal(last?.code, 421);
      assert.equal(last?.text, '4.7.0 Too many commands without authentication, closing connection');
      await c.closedByServer();
    });

    it('accepts nodemailer with STARTTLS and AUTH, adding Date and Message-ID when missing', async () => {
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user, pass: password } });
      const info = await transport.sendMail({ envelope: { from: user, to: [`carol@${domain}`] }, raw: 'From: alice@sub.test\r\nSubject: no ids\r\n\r\nhello\r\n' });
      transport.close();
      const id = queuedId(info.response)!;
      const [m] = await h.qm.take(domain, 1);
      assert.equal(m!.id, id);
      const raw = m!.raw.toString();
      assert.match(raw, /\(Authenticated sender: alice@sub\.test\)/);
      assert.match(raw, /with ESMTPSA id /);
      assert.match(raw, /\r\nDate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000\r\n/);
      assert.ok(raw.includes(`\r\nMessage-ID: <${id}@mx.gw.test>\r\n`));
      assert.deepEqual(m!.meta.auth, { user });
      // a message that has both keeps its own
      const t2 = nodemailer.createTransport({ host: '127.0.0.1', port, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user, pass: password } });
      await t2.sendMail({ from: user, to: `dave@${domain}`, subject: 'with ids', text: 'x', messageId: '<own@client.test>', date: new Date('2020-01-02T03:04:05Z') });
      t2.close();
      const [m2] = await h.qm.take(domain, 1);
      const raw2 = m2!.raw.toString();
      assert.equal(raw2.match(/^Message-ID:/gim)?.length, 1);
      assert.ok(raw2.includes('<own@client.test>'));
      assert.equal(raw2.match(/^Date:/gim)?.length, 1);
    });

    it('accepts swaks with AUTH LOGIN and AUTH PLAIN after STARTTLS', async () => {
      for (const method of ['LOGIN', 'PLAIN']) {
        const { stdout } = await run('swaks', ['--server', `127.0.0.1:${port}`, '--from', user, '--to', `erin@${domain}`, '--tls', '--auth', method, '--auth-user', user, '--auth-password', password], { timeout: 20_000 });
        assert.match(stdout, /235 2\.7\.0 Authentication successful/);
        assert.match(stdout, /250 2\.0\.0 Ok: queued as/);
      }
      assert.equal((await h.qm.take(domain, 10)).length, 2);
    });

    it('answers failed AUTH with 535 after a delay, then 421 and a hang-up, then refuses the address', async () => {
      const c = await RawClient.open(port);
      await c.read();
      await c.cmd('EHLO client.test');
      await c.cmd('STARTTLS');
      await c.startTls();
      await c.cmd('EHLO client.test');
      const bad = Buffer.from(`\0${user}\0wrong`).toString('base64');
      const t0 = Date.now();
      assert.equal((await c.cmd(`AUTH PLAIN ${bad}`)).text, '5.7.8 Authentication credentials invalid');
      assert.ok(Date.now() - t0 >= 45, 'the failure reply is delayed');
      const login = await c.cmd('AUTH LOGIN');
      assert.equal(login.code, 334);
      await c.cmd(Buffer.from(user).toString('base64'));
      assert.equal((await c.cmd(Buffer.from('wrong again').toString('base64'))).code, 535);
      const third = await c.cmd(`AUTH PLAIN ${bad}`);
      assert.equal(third.code, 421);
      assert.equal(third.text, '4.7.0 Too many failed authentication attempts, try again later');
      await c.closedByServer();
      // two more failures from this address reach perClient (5): then it is refused at connect
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user, pass: 'nope' } });
      await assert.rejects(transport.sendMail({ from: user, to: `x@${domain}`, text: 'x' }), { responseCode: 535 });
      await assert.rejects(transport.sendMail({ from: user, to: `x@${domain}`, text: 'x' }), { responseCode: 421 });
      transport.close();
      const d = await RawClient.open(port);
      const greet = await d.read();
      assert.equal(greet!.code, 421);
      assert.equal(greet!.text, '4.7.0 Too many failed authentication attempts, try again later');
      d.close();
    });
  });

  it('accepts submission over implicit TLS', async () => {
    const domain = uniqueDomain('implicit');
    const user = 'bob@imp.test';
    const ing = await startIngress(h, {
      domains: { local: ['imp.test'], relay: [] },
      networks: { trusted: [] },
      users: [{ address: user, passwordHash: await hashPassword('pw-123456') }],
      submission: { implicitTls: true },
    });
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: ing.address('submission').port, secure: true, tls: { rejectUnauthorized: false }, auth: { user, pass: 'pw-123456' } });
    const info = await transport.sendMail({ from: user, to: `x@${domain}`, text: 'hi' });
    transport.close();
    assert.match(info.response, /^250 2\.0\.0/);
    const [m] = await h.qm.take(domain, 1);
    assert.match(m!.raw.toString(), /with ESMTPSA id/);
  });

  it('withdraws what was appended when another destination queue refuses, and answers 452 4.3.1', async () => {
    // a second gateway on the same nodes whose queues hold at most two messages
    const qm = new QueueManager(testConfig({ ...h.base, gateway: { id: 'gw-small', hostname: 'mx.gw.test', dataDir: h.dataDir }, queue: { maxLength: 2 } }), silentLogger, { gatewayId: 'gw-small' });
    await qm.start();
    try {
      const ok = uniqueDomain('wd-ok');
      const full = uniqueDomain('wd-full');
      for (let i = 0; i < 2; i++) await qm.append({ id: `fill${i}`, domain: full, envelope: { from: '', to: [`f@${full}`] }, raw: Buffer.from('x\r\n') });
      const events: LifecycleEvent[] = [];
      qm.on('event', (ev: LifecycleEvent) => events.push(ev));
      const ing = await startIngress(h, { domains: { local: [], relay: [ok, full] }, networks: { trusted: [] } }, undefined, qm);
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port: ing.address('mx').port, ignoreTLS: true });
      await assert.rejects(transport.sendMail({ envelope: { from: 'a@src.test', to: [`x@${ok}`, `y@${full}`] }, raw: 'Subject: t\r\n\r\nx\r\n' }), (err: { responseCode?: number; response?: string }) => {
        assert.equal(err.responseCode, 452);
        assert.match(err.response!, /^452 4\.3\.1 Insufficient system storage/);
        return true;
      });
      transport.close();
      const acc = events.find((e) => e.kind === 'accepted' && e.domain === ok);
      assert.ok(acc, 'the copy for the other queue was appended first');
      await waitFor(() => events.some((e) => e.kind === 'withdrawn' && e.messageId === acc.messageId));
      assert.equal(qm.depth(ok).ready, 0, 'and withdrawn: nothing left to deliver');
      assert.equal(qm.depth(full).ready, 2);
      const reps = await onReplicas(qm, ok, acc.messageId);
      for (const r of reps) assert.equal(r.state, null, `gone from ${r.node}`);
      const hist = await qm.history(ok, acc.messageId);
      assert.deepEqual(hist.map((x) => x.kind), ['accepted', 'withdrawn']);
    } finally {
      await Promise.all(h.ingresses.filter((i) => i.queues === qm).map((i) => i.stop()));
      h.ingresses = h.ingresses.filter((i) => i.queues !== qm);
      await qm.stop();
    }
  });
});
