// Relay policy and limits: every refusal gives its documented reply and stores nothing.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import nodemailer from 'nodemailer';
import { hashPassword } from '../../src/message/password.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { liveEverywhere, RawClient, session, startHarness, startIngress, uniqueDomain, type Harness } from '../helpers/ingress.ts';

describe('relay policy', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('policy');
  });
  after(async () => {
    await h.stop();
  });

  it('refuses relaying from an untrusted client in every address form, and stores nothing', async () => {
    const loc = uniqueDomain('loc');
    const rel = uniqueDomain('rel');
    const foreign = uniqueDomain('foreign');
    const ing = await startIngress(h, {
      domains: { local: [loc], relay: [rel] },
      networks: { trusted: ['10.200.0.0/16'] },
      users: [{ address: `known@${loc}`, passwordHash: await hashPassword('x-123456') }, { address: `postmaster@${loc}`, passwordHash: await hashPassword('x-123456') }],
      smtp: { errors: { softLimit: 1000, hardLimit: 1000 } }, // every refusal below on one connection
    });
    const refused: [rcpt: string, code: number, enhanced: string][] = [
      [`<victim@${foreign}>`, 550, '5.7.1'],
      [`<victim@${foreign.toUpperCase()}>`, 550, '5.7.1'],
      [`<victim%${foreign}@${loc}>`, 550, '5.7.1'],
      [`<victim%${foreign}@${rel}>`, 550, '5.7.1'],
      [`<${foreign}!victim@${loc}>`, 550, '5.7.1'],
      [`<${foreign}!victim@${rel}>`, 550, '5.7.1'],
      [`<"victim%${foreign}"@${rel}>`, 550, '5.7.1'],
      [`<"victim"@${rel}>`, 550, '5.7.1'],
      [`<@${loc}:victim@${foreign}>`, 550, '5.7.1'],
      [`<@${rel},@${loc}:victim@${foreign}>`, 550, '5.7.1'],
      [`<victim@[192.0.2.1]>`, 550, '5.7.1'],
      [`<victim@[IPv6:2001:db8::1]>`, 550, '5.7.1'],
      [`<victim@${loc}.${foreign}>`, 550, '5.7.1'],
      [`<victim@sub.${loc}>`, 550, '5.7.1'],
      [`<victim@sub.${rel}>`, 550, '5.7.1'],
      [`<victim@bücher-${foreign}>`, 550, '5.7.1'],
      [`<unknown@${loc}>`, 550, '5.1.1'],
      [`<"victim@${foreign}"@${loc}>`, 501, '5.1.3'],
      [`<victim@${foreign}@${loc}>`, 501, '5.1.3'],
      [`<victim@${foreign}.>`, 501, '5.1.3'],
      [`<victim@${loc}%${foreign}>`, 501, '5.1.3'],
      [`<victim@${foreign}/${loc}>`, 501, '5.1.3'],
      [`victim@${foreign}`, 501, '5.1.3'],
      [`<"victim@${foreign}">`, 501, '5.1.3'],
    ];
    const c = await session(ing.address('mx').port);
    assert.equal((await c.cmd('MAIL FROM:<sender@elsewhere.test> SMTPUTF8')).code, 250);
    for (const [rcpt, code, enhanced] of refused) {
      const r = await c.cmd(`RCPT TO:${rcpt}`);
      assert.equal(r.code, code, `RCPT TO:${rcpt} → ${r.lines.join(' | ')}`);
      assert.ok(r.text.startsWith(`${enhanced} `), `RCPT TO:${rcpt} → ${r.text}`);
    }
    assert.equal((await c.cmd('DATA')).code, 503, 'no recipient was accepted');
    // the accepted forms, for contrast
    for (const rcpt of [`<known@${loc}>`, `<KNOWN@${loc.toUpperCase()}>`, `<anyone@${rel}>`, '<postmaster>', `<@${foreign}:anyone@${rel}>`]) {
      assert.equal((await c.cmd(`RCPT TO:${rcpt}`)).code, 250, rcpt);
    }
    assert.equal((await c.cmd('RSET')).code, 250);
    c.close();
    assert.deepEqual(await liveEverywhere(h, foreign), [0, 0, 0]);
    assert.equal(h.qm.queues.has(foreign), false);
    assert.equal([...h.qm.queues.keys()].some((d) => d.includes('foreign')), false);

    // the relay denial text names the address, like Postfix
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: ing.address('mx').port, ignoreTLS: true });
    await assert.rejects(t.sendMail({ envelope: { from: 'a@b.test', to: [`v@${foreign}`] }, raw: 'x\r\n' }), (err: { response?: string }) => {
      assert.equal(err.response, `550 5.7.1 <v@${foreign}>: Relay access denied`);
      return true;
    });
    t.close();
  });

  it('lets a trusted network relay anywhere, and routes by the final domain only', async () => {
    const foreign = uniqueDomain('far');
    const ing = await startIngress(h, { domains: { local: [], relay: [] }, networks: { trusted: ['127.0.0.0/8'] } });
    const c = await session(ing.address('mx').port);
    await c.cmd('MAIL FROM:<a@src.test>');
    assert.equal((await c.cmd(`RCPT TO:<@hop.test:x%other.test@${foreign}>`)).code, 250);
    await c.cmd('DATA');
    assert.equal((await c.cmd('Subject: r\r\n\r\nx\r\n.')).code, 250);
    c.close();
    const [m] = await h.qm.take(foreign, 1);
    assert.deepEqual(m!.envelope.to, [`x%other.test@${foreign}`]);
    assert.equal(h.qm.queues.has('other.test'), false);
    assert.equal(h.qm.queues.has('hop.test'), false);
  });

  it('refuses a non-ASCII address without SMTPUTF8 (553 5.6.7)', async () => {
    const rel = uniqueDomain('utf');
    const ing = await startIngress(h, { domains: { local: [], relay: [rel] }, networks: { trusted: [] } });
    const c = await session(ing.address('mx').port);
    assert.equal((await c.cmd('MAIL FROM:<jöran@src.test>')).text, '5.6.7 Non-ASCII address <jöran@src.test> needs the SMTPUTF8 parameter');
    assert.equal((await c.cmd('MAIL FROM:<joran@src.test>')).code, 250);
    const r = await c.cmd(`RCPT TO:<zoë@${rel}>`);
    assert.equal(r.code, 553);
    assert.ok(r.text.startsWith('5.6.7 '));
    c.close();
  });
});

describe('limits', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('limits');
  });
  after(async () => {
    await h.stop();
  });

  const relayTo = (domain: string, smtp: Record<string, unknown>) => ({ domains: { local: [], relay: [domain] }, networks: { trusted: [] }, smtp });

  it('recipients per message: 452 4.5.3, and the accepted ones still go through', async () => {
    const d = uniqueDomain('rcpts');
    const ing = await startIngress(h, relayTo(d, { maxRecipients: 3 }));
    const c = await session(ing.address('mx').port);
    await c.cmd('MAIL FROM:<a@src.test>');
    for (let i = 0; i < 3; i++) assert.equal((await c.cmd(`RCPT TO:<r${i}@${d}>`)).code, 250);
    const r = await c.cmd(`RCPT TO:<r3@${d}>`);
    assert.equal(r.code, 452);
    assert.equal(r.text, '4.5.3 Too many recipients (at most 3 per message)');
    assert.equal((await c.cmd(`RCPT TO:<R1@${d}>`)).code, 250, 'one already accepted does not count again');
    await c.cmd('DATA');
    assert.equal((await c.cmd('Subject: x\r\n\r\nx\r\n.')).code, 250);
    c.close();
    const [m] = await h.qm.take(d, 5);
    assert.equal(m!.envelope.to.length, 3);
  });

  it('message size: SIZE in MAIL and the data itself, 552 5.3.4, nothing stored', async () => {
    const d = uniqueDomain('size');
    const ing = await startIngress(h, relayTo(d, { maxMessageSize: '2KB' }));
    const c = await session(ing.address('mx').port);
    const ehlo = await c.cmd('EHLO client.test');
    assert.ok(ehlo.lines.includes('250 SIZE 2048'));
    const big = await c.cmd('MAIL FROM:<a@src.test> SIZE=5000');
    assert.equal(big.code, 552);
    assert.ok(big.text.startsWith('5.3.4 '));
    await c.cmd('MAIL FROM:<a@src.test>');
    await c.cmd(`RCPT TO:<r@${d}>`);
    await c.cmd('DATA');
    const line = `${'x'.repeat(76)}\r\n`;
    const r = await c.cmd(`Subject: big\r\n\r\n${line.repeat(40)}.`);
    assert.equal(r.code, 552);
    assert.equal(r.text, '5.3.4 Message exceeds the maximum size of 2048 bytes');
    // the session goes on: a small one is accepted
    await c.cmd('MAIL FROM:<a@src.test>');
    await c.cmd(`RCPT TO:<r@${d}>`);
    await c.cmd('DATA');
    assert.equal((await c.cmd(`Subject: small\r\n\r\n${line.repeat(5)}.`)).code, 250);
    c.close();
    assert.equal((await h.qm.take(d, 5)).length, 1);
  });

  it('line length: 552 5.6.0 past smtp.maxLineLength', async () => {
    const d = uniqueDomain('lines');
    const ing = await startIngress(h, relayTo(d, { maxLineLength: 100 }));
    const c = await session(ing.address('mx').port);
    for (const [len, code] of [[101, 552], [100, 250]] as const) {
      await c.cmd('MAIL FROM:<a@src.test>');
      await c.cmd(`RCPT TO:<r@${d}>`);
      await c.cmd('DATA');
      const r = await c.cmd(`Subject: l\r\n\r\n${'y'.repeat(len - 2)}\r\n.`);
      assert.equal(r.code, code, `${len} octets`);
      if (code === 552) assert.equal(r.text, '5.6.0 Message has a line longer than 100 octets (RFC 5321 4.5.3.1.6)');
    }
    c.close();
    assert.equal((await h.qm.take(d, 5)).length, 1);
  });

  it('command length: a line that never ends is cut off past the hard limit, 421 4.5.2', async () => {
    const ing = await startIngress(h, relayTo(uniqueDomain('cmd'), { maxCommandLength: 600 }));
    const c = await session(ing.address('mx').port);
    c.write(`NOOP ${'z'.repeat(20_000)}`);
    const r = await c.read();
    assert.equal(r?.code, 421);
    assert.equal(r?.text, '4.5.2 Command line too long, closing connection');
    await c.closedByServer();
  });

  it('connections in total and per client address: 421 4.7.0', async () => {
    const ing = await startIngress(h, relayTo(uniqueDomain('conns'), { maxConnections: 3, maxConnectionsPerClient: 2 }));
    const port = ing.address('mx').port;
    const a = await session(port);
    const b = await session(port);
    const c = await RawClient.open(port);
    const r = await c.read();
    assert.equal(r!.code, 421);
    assert.equal(r!.text, '4.7.0 Too many connections from your address, try again later');
    await c.closedByServer();
    const d = await session(port, '127.0.0.2');
    const e = await RawClient.openFrom(port, '127.0.0.3');
    const r2 = await e.read();
    assert.equal(r2!.text, '4.7.0 Too many connections, try again later');
    a.close();
    // a slot is free again once a client leaves
    await waitFor(async () => {
      const f = await RawClient.open(port);
      const g = await f.read();
      f.close();
      return g?.code === 220;
    });
    for (const x of [b, d, e]) x.close();
  });

  it('messages per connection: 421 4.7.0 on the next MAIL', async () => {
    const dom = uniqueDomain('msgs');
    const ing = await startIngress(h, relayTo(dom, { maxMessagesPerConnection: 2 }));
    const c = await session(ing.address('mx').port);
    for (let i = 0; i < 2; i++) {
      await c.cmd('MAIL FROM:<a@src.test>');
      await c.cmd(`RCPT TO:<r@${dom}>`);
      await c.cmd('DATA');
      assert.equal((await c.cmd('Subject: n\r\n\r\nx\r\n.')).code, 250);
    }
    const r = await c.cmd('MAIL FROM:<a@src.test>');
    assert.equal(r.code, 421);
    assert.equal(r.text, '4.7.0 Too many messages in one connection, reconnect to send more');
    await c.closedByServer();
  });

  it('command timeout: 421 4.4.2', async () => {
    const ing = await startIngress(h, relayTo(uniqueDomain('idle'), { commandTimeout: '300ms' }));
    const c = await session(ing.address('mx').port);
    const r = await c.read(3000);
    assert.equal(r!.code, 421);
    assert.equal(r!.text, '4.4.2 Timeout waiting for a command, closing connection');
    await c.closedByServer();
  });

  it('minimum data rate: a trickling client is cut off with 421 4.4.2 and nothing is stored; a fast one is not', async () => {
    const d = uniqueDomain('slow');
    const ing = await startIngress(h, relayTo(d, { dataTimeout: '400ms', minDataRate: '1KB' }));
    const c = await session(ing.address('mx').port);
    await c.cmd('MAIL FROM:<a@src.test>');
    await c.cmd(`RCPT TO:<r@${d}>`);
    await c.cmd('DATA');
    c.write('Subject: slow\r\n\r\n');
    const t0 = Date.now();
    for (let i = 0; i < 50 && !c.closed; i++) {
      c.write('abcdefghi\r\n');
      await sleep(50);
      if (c.pending.includes('\r\n')) break;
    }
    const cut = await c.read(2000);
    assert.equal(cut!.code, 421);
    assert.equal(cut!.text, '4.4.2 Message data arriving too slowly, closing connection');
    assert.ok(Date.now() - t0 < 2000);
    await c.closedByServer();
    // 200 KB at full speed takes far longer than 400 ms worth of budget would allow without the rate credit
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: ing.address('mx').port, ignoreTLS: true });
    const info = await t.sendMail({ envelope: { from: 'a@src.test', to: [`r@${d}`] }, raw: `Subject: fast\r\n\r\n${`${'f'.repeat(98)}\r\n`.repeat(2000)}` });
    t.close();
    assert.match(info.response, /^250 /);
    const got = await h.qm.take(d, 5);
    assert.equal(got.length, 1);
    assert.match(got[0]!.raw.toString(), /Subject: fast/);
  });
});
