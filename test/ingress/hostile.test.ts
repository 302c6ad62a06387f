// Hostile clients at the SMTP edge: malformed command lines, floods, loops, trickles, memory.
// Every refusal is a precise reply, and nothing is stored.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { hashPassword } from '../../src/message/password.ts';
import { RawClient, session, startHarness, startIngress, uniqueDomain, type Harness } from './helpers.ts';

/** Writes raw bytes as one command line and reads the reply. */
async function rawCmd(c: RawClient, line: Buffer): Promise<{ code: number; text: string }> {
  c.write(Buffer.concat([line, Buffer.from('\r\n')]));
  const r = await c.read();
  assert.ok(r, 'a reply');
  return r;
}

describe('hostile SMTP clients', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('hostile');
  });
  after(async () => {
    await h.stop();
  });

  const relayTo = (domain: string, smtp: Record<string, unknown> = {}, more: Record<string, unknown> = {}) => ({ domains: { local: [], relay: [domain] }, networks: { trusted: [] }, smtp, ...more });

  it('refuses addresses that are not valid UTF-8 under SMTPUTF8 (553 5.6.7), storing nothing', async () => {
    const d = uniqueDomain('utf8');
    const ing = await startIngress(h, relayTo(d));
    const c = await session(ing.address('mx').port);
    const bad = Buffer.from([0xff, 0xfe]);
    const from = await rawCmd(c, Buffer.concat([Buffer.from('MAIL FROM:<'), bad, Buffer.from('@src.test> SMTPUTF8')]));
    assert.deepEqual([from.code, from.text], [553, '5.6.7 Address is not valid UTF-8']);
    assert.equal((await c.cmd('MAIL FROM:<ok@src.test> SMTPUTF8')).code, 250);
    const rcpt = await rawCmd(c, Buffer.concat([Buffer.from('RCPT TO:<'), bad, Buffer.from(`@${d}>`)]));
    assert.deepEqual([rcpt.code, rcpt.text], [553, '5.6.7 Address is not valid UTF-8']);
    assert.equal((await c.cmd('DATA')).code, 503, 'no recipient was taken');
    c.close();
    assert.equal(h.qm.queues.has(d), false);
  });

  it('answers unknown or malformed MAIL/RCPT parameters with 555 5.5.4', async () => {
    const d = uniqueDomain('params');
    const ing = await startIngress(h, relayTo(d));
    const c = await session(ing.address('mx').port);
    for (const p of ['X-FOO=bar', '=x', 'SMTPUTF8=yes', 'RET=BOGUS', 'BODY']) {
      const r = await c.cmd(`MAIL FROM:<a@src.test> ${p}`);
      assert.equal(r.code, 555, `MAIL ${p}: ${r.text}`);
      assert.match(r.text, /^5\.5\.4 Unsupported or malformed MAIL FROM parameter /);
    }
    assert.equal((await c.cmd('MAIL FROM:<a@src.test> SIZE=100 BODY=8BITMIME')).code, 250);
    for (const p of ['NOTIFY=BOGUS', 'NOTIFY=NEVER,SUCCESS', 'SMTPUTF8', 'X-FOO=bar', '=x', 'ORCPT=bad']) {
      const r = await c.cmd(`RCPT TO:<r@${d}> ${p}`);
      assert.equal(r.code, 555, `RCPT ${p}: ${r.text}`);
      assert.match(r.text, /^5\.5\.4 Unsupported or malformed RCPT TO parameter /);
    }
    assert.equal((await c.cmd(`RCPT TO:<r@${d}> NOTIFY=FAILURE,DELAY ORCPT=rfc822;r@${d}`)).code, 250);
    c.close();
  });

  it('answers an over-long command line with 500 5.5.2 and an over-long path with 501 5.1.3, keeping the session', async () => {
    const d = uniqueDomain('long');
    const ing = await startIngress(h, relayTo(d, { maxCommandLength: 600 }));
    const c = await session(ing.address('mx').port);
    assert.equal((await c.cmd(`NOOP ${'z'.repeat(500)}`)).code, 250);
    const r = await c.cmd(`NOOP ${'z'.repeat(700)}`);
    assert.deepEqual([r.code, r.text], [500, '5.5.2 Command line too long (at most 600 octets)']);
    const path = await c.cmd(`MAIL FROM:<${'p'.repeat(250)}@src.test>`);
    assert.deepEqual([path.code, path.text], [501, '5.1.3 Path too long (at most 256 octets)']);
    assert.equal((await c.cmd('MAIL FROM:<a@src.test>')).code, 250, 'the session goes on');
    assert.equal(c.closed, false);
    c.close();
  });
});

describe('postmaster (RFC 5321 4.5.1)', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('postmaster');
  });
  after(async () => {
    await h.stop();
  });

  it('accepts <postmaster> and postmaster@ every local domain, for the configured mailbox', async () => {
    const a = uniqueDomain('pm-a');
    const b = uniqueDomain('pm-b');
    const ing = await startIngress(h, { domains: { local: [a, b], relay: [], postmaster: `admin@${a}` }, networks: { trusted: [] } });
    const c = await session(ing.address('mx').port);
    assert.equal((await c.cmd('MAIL FROM:<someone@src.test>')).code, 250);
    for (const rcpt of ['<postmaster>', '<POSTMASTER>', `<postmaster@${a}>`, `<PostMaster@${b.toUpperCase()}>`]) {
      const r = await c.cmd(`RCPT TO:${rcpt}`);
      assert.equal(r.code, 250, `${rcpt}: ${r.text}`);
    }
    assert.equal((await c.cmd(`RCPT TO:<nobody@${a}>`)).code, 550, 'other unknown users are still refused');
    assert.equal((await c.cmd('DATA')).code, 354);
    assert.equal((await c.cmd('Subject: to the postmaster\r\n\r\nhello\r\n.')).code, 250);
    c.close();
    const [m] = await h.qm.take(a, 5);
    assert.deepEqual(m!.envelope.to, [`admin@${a}`]);
    assert.equal(h.qm.queues.has(b), false);
  });

  it('without a configured mailbox, postmaster@ the first local domain', async () => {
    const a = uniqueDomain('pm-default');
    const ing = await startIngress(h, { domains: { local: [a], relay: [] }, networks: { trusted: [] } });
    const c = await session(ing.address('mx').port);
    await c.cmd('MAIL FROM:<someone@src.test>');
    assert.equal((await c.cmd('RCPT TO:<postmaster>')).code, 250);
    await c.cmd('DATA');
    assert.equal((await c.cmd('Subject: x\r\n\r\nhello\r\n.')).code, 250);
    c.close();
    const [m] = await h.qm.take(a, 5);
    assert.deepEqual(m!.envelope.to, [`postmaster@${a}`]);
  });
});

describe('submission: who may send as whom, and AUTH never offered in the clear', () => {
  let h: Harness;
  let port: number;
  let dest: string;
  const password = 'correct horse battery staple';
  before(async () => {
    h = await startHarness('sender-login');
    dest = uniqueDomain('sl-dest');
    const hash = await hashPassword(password);
    const ing = await startIngress(h, {
      domains: { local: ['sl.test'], relay: [] },
      networks: { trusted: [] },
      users: [{ address: 'app@sl.test', passwordHash: hash }, { address: 'anne@sl.test', passwordHash: hash }],
      submission: { senderLogins: { 'noreply@sl.test': ['app@sl.test'], '@brand.test': ['APP@sl.test'] } },
    });
    port = ing.address('submission').port;
  });
  after(async () => {
    await h.stop();
  });

  it('an authenticated user sends only as an address it owns (553 5.7.1 otherwise)', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user: 'app@sl.test', pass: password } });
    try {
      for (const from of ['app@sl.test', 'App@SL.test', 'noreply@sl.test', 'billing@brand.test']) {
        const info = await transport.sendMail({ envelope: { from, to: [`r@${dest}`] }, raw: 'Subject: x\r\n\r\nx\r\n' });
        assert.match(info.response, /^250 /, from);
      }
      for (const from of ['anne@sl.test', 'ceo@bank.test']) {
        await assert.rejects(transport.sendMail({ envelope: { from, to: [`r@${dest}`] }, raw: 'Subject: x\r\n\r\nx\r\n' }), (err: Error & { response?: string }) => {
          assert.equal(err.response, `553 5.7.1 <${from}>: Sender address rejected: not owned by user app@sl.test`);
          return true;
        });
      }
    } finally {
      transport.close();
    }
    assert.equal((await h.qm.take(dest, 10)).length, 4);
  });

  it('does not offer AUTH before STARTTLS', async () => {
    const c = await RawClient.open(port);
    await c.read();
    const ehlo = await c.cmd('EHLO client.test');
    assert.ok(ehlo.lines.some((l) => l.includes('STARTTLS')));
    assert.equal(ehlo.lines.some((l) => /AUTH/.test(l)), false, ehlo.lines.join(' | '));
    assert.equal((await c.cmd('STARTTLS')).code, 220);
    await c.startTls();
    const after = await c.cmd('EHLO client.test');
    assert.ok(after.lines.some((l) => /AUTH PLAIN LOGIN/.test(l)));
    c.close();
  });
});
