// SMTP smuggling and STARTTLS command injection, over raw sockets; and the content scanner on
// every chunk boundary.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ContentScanner } from '../../src/ingress/smtp/hygiene.ts';
import { hashPassword } from '../../src/message/password.ts';
import { liveEverywhere, RawClient, startHarness, startIngress, uniqueDomain, type Harness } from '../helpers/ingress.ts';

describe('content scanner', () => {
  const cases: [string, string | undefined][] = [
    ['a\r\nb\r\n', undefined],
    ['a\nb\r\n', 'bareLf'],
    ['a\rb\r\n', 'bareCr'],
    ['a\r\n\r', 'bareCr'],
    ['a\r\r\n', 'bareCr'],
    ['\na\r\n', 'bareLf'],
    ['a\r\n\x00.\r\n', 'nulByte'],
    [`${'x'.repeat(8)}\r\n`, undefined],
    [`${'x'.repeat(9)}\r\n`, 'lineTooLong'],
  ];
  it('finds the same fault wherever the data is split', () => {
    for (const [text, fault] of cases) {
      const buf = Buffer.from(text, 'latin1');
      for (let i = 0; i <= buf.length; i++) {
        for (let j = i; j <= buf.length; j++) {
          const s = new ContentScanner({ maxLineLength: 10, maxHeaderSize: 0, maxHops: 0 });
          s.push(buf.subarray(0, i));
          s.push(buf.subarray(i, j));
          s.push(buf.subarray(j));
          assert.equal(s.end(), fault, `${JSON.stringify(text)} split at ${i},${j}`);
        }
      }
    }
  });
});

describe('SMTP smuggling', () => {
  let h: Harness;
  let port: number;
  let subPort: number;
  let d1: string;
  let d2: string;
  before(async () => {
    h = await startHarness('smuggle');
    d1 = uniqueDomain('first');
    d2 = uniqueDomain('second');
    // a trusted client may relay anywhere: the worst case for an injected second message
    const ing = await startIngress(h, {
      domains: { local: ['sm.test'], relay: [] },
      networks: { trusted: ['127.0.0.0/8'] },
      users: [{ address: 'u@sm.test', passwordHash: await hashPassword('pw-123456') }],
    });
    port = ing.address('mx').port;
    subPort = ing.address('submission').port;
  });
  after(async () => {
    await h.stop();
  });

  const smuggled = () => `MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<victim@${d2}>\r\nDATA\r\nFrom: ceo@bank.test\r\nSubject: smuggled\r\n\r\npay now\r\n`;
  const variants: [name: string, seq: string, enhanced: string][] = [
    ['<LF>.<LF>', '\n.\n', '5.5.2'],
    ['<LF>.<CR><LF>', '\n.\r\n', '5.5.2'],
    ['<CR>.<CR><LF>', '\r.\r\n', '5.5.2'],
    ['<CR><LF>.<CR>', '\r\n.\r', '5.5.2'],
    ['<CR><LF>.<LF>', '\r\n.\n', '5.5.2'],
    ['<CR>.<CR>', '\r.\r', '5.5.2'],
    ['<CR><LF><NUL>.<CR><LF>', '\r\n\x00.\r\n', '5.6.0'],
    ['<CR><LF>.<NUL><CR><LF>', '\r\n.\x00\r\n', '5.6.0'],
    ['<LF>..<LF>', '\n..\n', '5.5.2'],
    ['<CR><CR><LF>.<CR><CR><LF>', '\r\r\n.\r\r\n', '5.5.2'],
    ['bare LF before the dot', 'x\n.\r\n', '5.5.2'],
  ];

  for (const [name, seq, enhanced] of variants) {
    it(`${name} never yields a second message`, async () => {
      const c = await RawClient.open(port);
      await c.read();
      await c.cmd('EHLO attacker.test');
      assert.equal((await c.cmd('MAIL FROM:<a@src.test>')).code, 250);
      assert.equal((await c.cmd(`RCPT TO:<first@${d1}>`)).code, 250);
      assert.equal((await c.cmd('DATA')).code, 354);
      // everything in one write: message, smuggle sequence, second transaction, real end, and more
      c.write(Buffer.from(`Subject: first\r\n\r\nhello${seq}${smuggled()}\r\n.\r\nQUIT\r\n`, 'latin1'));
      const r = await c.read();
      assert.ok(r, 'a reply to the DATA');
      assert.ok(r.code >= 550 && r.code < 560, `refused: ${r.lines.join(' | ')}`);
      assert.ok(r.text.startsWith(`${enhanced} `), r.text);
      assert.equal(await c.read(), undefined, 'nothing more: the server hung up');
      assert.deepEqual(await liveEverywhere(h, d1), [0, 0, 0]);
      assert.deepEqual(await liveEverywhere(h, d2), [0, 0, 0]);
    });
  }

  it('dot-stuffed lines are content, and one message is one message', async () => {
    const c = await RawClient.open(port);
    await c.read();
    await c.cmd('EHLO honest.test');
    await c.cmd('MAIL FROM:<a@src.test>');
    await c.cmd(`RCPT TO:<first@${d1}>`);
    await c.cmd('DATA');
    const r = await c.cmd(`Subject: dots\r\n\r\nline\r\n..\r\n...x\r\n${smuggled()}.`);
    assert.equal(r.code, 250);
    assert.equal((await c.cmd('QUIT')).code, 221);
    const got = await h.qm.take(d1, 10);
    assert.equal(got.length, 1);
    assert.ok(got[0]!.raw.toString().endsWith(`line\r\n.\r\n..x\r\n${smuggled()}`));
    assert.deepEqual(await liveEverywhere(h, d2), [0, 0, 0]);
  });

  it('discards commands pipelined after STARTTLS (MX)', async () => {
    const c = await RawClient.open(port);
    await c.read();
    await c.cmd('EHLO client.test');
    c.write(`STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<victim@${d2}>\r\n`);
    const r = await c.read();
    assert.equal(r!.code, 220);
    await c.startTls();
    assert.equal(c.pending, '', 'no reply to the injected commands');
    const ehlo = await c.cmd('EHLO client.test');
    assert.equal(ehlo.code, 250);
    const mail = await c.cmd('MAIL FROM:<honest@src.test>');
    assert.equal(mail.code, 250, `no transaction left from before TLS: ${mail.text}`);
    assert.equal((await c.cmd('DATA')).code, 503, 'the injected RCPT did not count');
    await c.cmd(`RCPT TO:<first@${d1}>`);
    await c.cmd('DATA');
    assert.equal((await c.cmd('Subject: tls\r\n\r\nx\r\n.')).code, 250);
    c.close();
    const [m] = await h.qm.take(d1, 1);
    assert.deepEqual(m!.envelope, { from: 'honest@src.test', to: [`first@${d1}`] });
    assert.deepEqual(await liveEverywhere(h, d2), [0, 0, 0]);
  });

  it('discards AUTH pipelined after STARTTLS (submission)', async () => {
    const c = await RawClient.open(subPort);
    await c.read();
    await c.cmd('EHLO client.test');
    const creds = Buffer.from('\0u@sm.test\0pw-123456').toString('base64');
    c.write(`STARTTLS\r\nAUTH PLAIN ${creds}\r\n`);
    assert.equal((await c.read())!.code, 220);
    await c.startTls();
    assert.equal(c.pending, '');
    await c.cmd('EHLO client.test');
    const mail = await c.cmd('MAIL FROM:<u@sm.test>');
    assert.equal(mail.code, 530, 'not authenticated by the injected AUTH');
    c.close();
  });
});
