// Hostile clients at the SMTP edge: malformed command lines, floods, loops, trickles, memory.
// Every refusal is a precise reply, and nothing is stored.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { Writable } from 'node:stream';
import { SmtpIngress } from '../../src/ingress/smtp/server.ts';
import { createLogger } from '../../src/log.ts';
import { hashPassword } from '../../src/message/password.ts';
import { testConfig } from '../helpers/config.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { RawClient, session, startHarness, startIngress, uniqueDomain, type Harness } from '../helpers/ingress.ts';

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

describe('floods, loops, trickles and memory', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('floods');
  });
  after(async () => {
    await h.stop();
  });

  const relayTo = (domain: string, smtp: Record<string, unknown> = {}) => ({ domains: { local: [], relay: [domain] }, networks: { trusted: [] }, smtp });

  /** Replies until the server closes the connection. */
  async function repliesUntilClosed(c: RawClient): Promise<{ code: number; text: string }[]> {
    const out: { code: number; text: string }[] = [];
    for (;;) {
      const r = await c.read(15_000);
      if (!r) return out;
      out.push(r);
    }
  }

  it('junk commands: past smtpd_junk_command_limit each one is an error; past the soft limit replies slow down; at the hard limit 421 4.7.0', async () => {
    const ing = await startIngress(h, relayTo(uniqueDomain('junk'), { errors: { sleep: '50ms' } }));
    const c = await session(ing.address('mx').port);
    const t0 = Date.now();
    c.write('NOOP\r\nRSET\r\nVRFY x\r\n'.repeat(100));
    const replies = await repliesUntilClosed(c);
    const last = replies.at(-1)!;
    assert.deepEqual([last.code, last.text], [421, '4.7.0 Too many errors, closing connection']);
    // 100 junk commands are free, the next 20 are errors: the 20th ends the connection unanswered
    assert.equal(replies.length, 120);
    assert.equal(replies.filter((r) => r.code < 400).length, 119);
    assert.ok(Date.now() - t0 >= 10 * 50, 'errors past the soft limit waited errors.sleep each');
  });

  it('a dictionary attack: 550s end in 421 4.7.0 per connection, then the client is refused', async () => {
    const d = uniqueDomain('dict');
    const ing = await startIngress(h, { domains: { local: [d], relay: [] }, networks: { trusted: [] }, smtp: { errors: { sleep: '20ms', perClient: 30, window: '1m' } } });
    const port = ing.address('mx').port;
    const c = await session(port);
    await c.cmd('MAIL FROM:<a@src.test>');
    c.write(Array.from({ length: 200 }, (_, i) => `RCPT TO:<guess${i}@${d}>\r\n`).join(''));
    const replies = await repliesUntilClosed(c);
    assert.equal(replies.filter((r) => r.code === 550).length, 20);
    assert.deepEqual(replies.at(-1), { code: 421, lines: ['421 4.7.0 Too many errors, closing connection'], text: '4.7.0 Too many errors, closing connection' });
    // the next connection from the same client gets the rest of its 30, then 421
    const c2 = await session(port);
    await c2.cmd('MAIL FROM:<a@src.test>');
    c2.write(Array.from({ length: 50 }, (_, i) => `RCPT TO:<again${i}@${d}>\r\n`).join(''));
    const second = await repliesUntilClosed(c2);
    assert.equal(second.filter((r) => r.code === 550).length, 10);
    assert.equal(second.at(-1)!.text, '4.7.0 Too many errors, closing connection');
    const c3 = await RawClient.open(port);
    assert.equal((await c3.read())!.text, '4.7.0 Too many errors, closing connection');
    await c3.closedByServer();
    assert.equal(h.qm.queues.has(d), false);
  });

  it('mail loops (smtp.maxHops, 554 5.4.0) and huge header sections (smtp.maxHeaderSize, 552 5.3.4)', async () => {
    const d = uniqueDomain('loop');
    const ing = await startIngress(h, relayTo(d, { maxHeaderSize: '8KB', maxHops: 5 }));
    const c = await session(ing.address('mx').port);
    const received = 'Received: from a.test by b.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n';
    for (const [head, code, text] of [
      [received.repeat(5), 554, '5.4.0 Too many hops: 5 or more Received headers, message is looping'],
      [`X-Long: ${'a'.repeat(70)}\r\n${' folded\r\n'.repeat(1000)}`, 552, '5.3.4 Message header exceeds 8192 octets'],
      ['X: y\r\n'.repeat(2000), 552, '5.3.4 Message header exceeds 8192 octets'],
      [received.repeat(4), 250, undefined],
    ] as const) {
      await c.cmd('MAIL FROM:<a@src.test>');
      await c.cmd(`RCPT TO:<r@${d}>`);
      await c.cmd('DATA');
      const r = await c.cmd(`${head}Subject: x\r\n\r\n${received}body\r\n.`);
      assert.equal(r.code, code, r.text);
      if (text) assert.equal(r.text, text);
    }
    c.close();
    assert.equal((await h.qm.take(d, 5)).length, 1);
  });

  it('a command trickled a byte at a time is cut off at smtp.commandTimeout (421 4.4.2)', async () => {
    const ing = await startIngress(h, relayTo(uniqueDomain('trickle'), { commandTimeout: '1s' }));
    const c = await session(ing.address('mx').port);
    const t0 = Date.now();
    const timer = setInterval(() => c.write('N'), 200);
    try {
      const r = await c.read(10_000);
      assert.deepEqual([r?.code, r?.text], [421, '4.4.2 Timeout waiting for a command, closing connection']);
      await c.closedByServer();
      assert.ok(Date.now() - t0 < 4000, `closed after ${Date.now() - t0} ms`);
    } finally {
      clearInterval(timer);
    }
  });

  it('bytes in flight: past smtp.maxBytesInFlight a transfer is refused at its end and DATA at once (452 4.3.1)', async () => {
    const d = uniqueDomain('inflight');
    const ing = await startIngress(h, relayTo(d, { maxBytesInFlight: '64KB' }));
    const port = ing.address('mx').port;
    const open = async () => {
      const c = await session(port);
      await c.cmd('MAIL FROM:<a@src.test>');
      await c.cmd(`RCPT TO:<r@${d}>`);
      return c;
    };
    const line = `${'x'.repeat(98)}\r\n`;
    const a = await open();
    assert.equal((await a.cmd('DATA')).code, 354);
    a.write(`Subject: a\r\n\r\n${line.repeat(600)}`); // 60 KB, held
    await waitFor(() => ing.bytesInFlight >= 60_000, { what: 'the first transfer is held' });
    const b = await open();
    assert.equal((await b.cmd('DATA')).code, 354);
    b.write(`Subject: b\r\n\r\n${line.repeat(100)}`); // 10 KB more: over the budget
    await waitFor(() => ing.bytesInFlight > 64 * 1024, { what: 'over the budget' });
    const c = await open();
    const refused = await c.cmd('DATA');
    assert.deepEqual([refused.code, refused.text], [452, '4.3.1 Insufficient system resources: too much mail in transfer, try again later']);
    const rb = await b.cmd('.');
    assert.deepEqual([rb.code, rb.text], [452, '4.3.1 Insufficient system resources: too much mail in transfer, try again later']);
    assert.equal((await a.cmd('.')).code, 250, 'the one within the budget is queued');
    assert.equal(ing.bytesInFlight, 0);
    for (const x of [a, b, c]) x.close();
    assert.equal((await h.qm.take(d, 5)).length, 1);
  });

  it("the gateway's own trouble (4.3.x) is not counted as the client's error", async () => {
    const d = uniqueDomain('ours');
    const ing = await startIngress(h, relayTo(d, { maxBytesInFlight: '1KB', errors: { hardLimit: 2, perClient: 3, window: '1m' } }));
    const c = await session(ing.address('mx').port);
    const body = `Subject: big\r\n\r\n${'x'.repeat(98)}\r\n`.repeat(50); // 5 KB: over the budget on its own
    for (let i = 0; i < 5; i++) {
      assert.equal((await c.cmd('MAIL FROM:<a@src.test>')).code, 250);
      assert.equal((await c.cmd(`RCPT TO:<r${i}@${d}>`)).code, 250);
      assert.equal((await c.cmd('DATA')).code, 354);
      c.write(body);
      const r = await c.cmd('.');
      assert.deepEqual([r.code, r.text.slice(0, 5)], [452, '4.3.1'], `message ${i}`);
    }
    assert.equal((await c.cmd('NOOP')).code, 250, 'the session goes on past errors.hardLimit');
    c.close();
    const again = await session(ing.address('mx').port);
    assert.equal((await again.cmd('NOOP')).code, 250, 'and the client is not refused past errors.perClient');
    again.close();
  });

  it('a client without reverse DNS is not an error in the log', async () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        cb();
      },
    });
    const config = testConfig({ ...h.base, smtp: { listen: '127.0.0.1:0' }, submission: { listen: '127.0.0.1:0' }, domains: { local: [], relay: [] } });
    const ing = new SmtpIngress({ config, queues: h.qm, log: createLogger({ level: 'info', pretty: 'never', destination }) });
    await ing.start();
    try {
      for (let i = 0; i < 3; i++) {
        const c = await session(ing.address('mx').port, '127.0.0.2'); // no PTR record for it here
        assert.equal((await c.cmd('QUIT')).code, 221);
        await c.closedByServer();
      }
    } finally {
      await ing.stop();
    }
    const levels = lines.map((l) => (JSON.parse(l) as { level: number }).level);
    assert.ok(levels.length > 0);
    assert.deepEqual(levels.filter((l) => l >= 50), [], lines.filter((l) => /"level":[56]0/.test(l)).join('\n'));
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
