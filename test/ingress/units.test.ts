// The ingress's pure parts: address normalization, the DATA deadline, the reply catalogue and the
// added headers.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { addedHeaders, headerNames, receivedHeader } from '../../src/ingress/smtp/hygiene.ts';
import { DataDeadlines } from '../../src/ingress/smtp/limits.ts';
import { ConnectionLimiter } from '../../src/net/clients.ts';
import { hasRouting, normalizeAddress } from '../../src/ingress/smtp/policy.ts';
import { REPLIES, reply } from '../../src/ingress/smtp/replies.ts';
import { splitByDomain } from '../../src/ingress/smtp/store.ts';
import { ConfigUserDirectory } from '../../src/ingress/smtp/users.ts';
import { hashPassword } from '../../src/message/password.ts';

describe('policy helpers', () => {
  it('normalizes the final domain to lower-case ASCII and refuses what is not a domain', () => {
    assert.deepEqual(normalizeAddress('Joe@Bücher.TEST'), { address: 'Joe@xn--bcher-kva.test', local: 'Joe', domain: 'xn--bcher-kva.test' });
    assert.equal(normalizeAddress('a@[192.0.2.1]')!.domain, '[192.0.2.1]');
    for (const bad of ['a@evil.test/good.test', 'a@evil%2etest', 'a@', '@x.test', 'nodomain', 'a@x y.test', 'a@x\\y.test']) {
      assert.equal(normalizeAddress(bad), undefined, bad);
    }
    assert.equal(normalizeAddress('a%b@c@d.test')!.domain, 'd.test', 'the last @ decides');
  });

  it('finds sender-specified routing', () => {
    for (const l of ['a%b', 'b!a', '"a"', '"a b"']) assert.ok(hasRouting(l), l);
    for (const l of ['a', 'a.b+tag', 'a-b_c']) assert.ok(!hasRouting(l), l);
  });

});

describe('limits', () => {
  it('counts connections in total and per client', () => {
    const l = new ConnectionLimiter(3, 2);
    assert.equal(l.admit('s1', 'a'), undefined);
    assert.equal(l.admit('s2', 'a'), undefined);
    assert.equal(l.admit('s3', 'a'), 'tooManyFromClient');
    assert.equal(l.admit('s4', 'b'), undefined);
    assert.equal(l.admit('s5', 'c'), 'tooManyConnections');
    l.release('s1');
    l.release('s1');
    assert.equal(l.size, 2);
    assert.equal(l.admit('s6', 'a'), undefined);
  });

  it('gives a DATA transfer dataTimeout plus one second per minDataRate bytes', async () => {
    let now = 0;
    const d = new DataDeadlines(400, 1000, () => now);
    assert.equal(d.budget(0), 400);
    assert.equal(d.budget(5000), 5400);
    assert.equal(new DataDeadlines(400, 0).budget(1e9), 400, 'minDataRate 0: a fixed budget');
    let bytes = 0;
    let cut = 0;
    const stop = d.add({ started: 0, bytes: () => bytes, cut: () => cut++ });
    now = 390;
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(cut, 0);
    bytes = 100; // 0.1 s of credit
    now = 505;
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(cut, 1);
    stop();
    d.stop();
  });
});

describe('replies, headers, split', () => {
  it('every catalogue reply is well formed', () => {
    for (const [name, [code, enhanced, text]] of Object.entries(REPLIES)) {
      assert.ok(code >= 200 && code < 600, name);
      assert.equal(enhanced[0], String(code)[0], `${name}: class of ${enhanced} matches ${code}`);
      assert.ok(text.length > 5 && text.length < 200, name);
    }
    const r = reply('relayDenied', 'a\r\nb@x.test');
    assert.equal(r.toString(), '550 5.7.1 <a??b@x.test>: Relay access denied', 'client text cannot split a reply');
    assert.equal(r.message, '5.7.1 <a??b@x.test>: Relay access denied');
  });

  it('builds a folded Received header and adds Date and Message-ID only when missing', () => {
    const facts = { helo: 'c.test', clientHostname: 'host.c.test', clientAddress: '2001:db8::1', by: 'mx.test', protocol: 'ESMTPSA', id: 'ID1', tls: { version: 'TLSv1.3', cipher: 'X' }, authUser: 'u(x)@y', for: 'r@d.test', date: new Date('2026-01-02T03:04:05Z') };
    assert.equal(
      receivedHeader(facts),
      'Received: from c.test (host.c.test [IPv6:2001:db8::1])\r\n\t(using TLSv1.3 with cipher X)\r\n\t(Authenticated sender: u?x?@y)\r\n\tby mx.test (streamgate) with ESMTPSA id ID1\r\n\tfor <r@d.test>; Fri, 02 Jan 2026 03:04:05 +0000\r\n',
    );
    const bare = Buffer.from('Subject: x\r\nX-Other: y\r\n continued: no\r\n\r\nDate: not a header\r\n');
    assert.deepEqual([...headerNames(bare)], ['subject', 'x-other']);
    const added = addedHeaders(bare, facts, true);
    assert.match(added, /\r\nDate: Fri, 02 Jan 2026 03:04:05 \+0000\r\nMessage-ID: <ID1@mx\.test>\r\n$/);
    assert.doesNotMatch(addedHeaders(Buffer.from('date: x\r\nMESSAGE-ID: <m@x>\r\n\r\nb'), facts, true), /Date:|Message-ID:/);
    assert.doesNotMatch(addedHeaders(bare, facts, false), /Date:|Message-ID:/, 'not on the MX listener');
  });

  it('splits recipients by final domain, once each', () => {
    assert.deepEqual([...splitByDomain(['a@x.test', 'b@y.test', 'A@x.test', 'c@X.test', 'a%y.test@x.test'])], [
      ['x.test', ['a@x.test', 'c@X.test', 'a%y.test@x.test']],
      ['y.test', ['b@y.test']],
    ]);
  });

  it('checks configured users without regard to case and says no for unknown ones', async () => {
    const u = new ConfigUserDirectory([{ address: 'Ann@X.test', passwordHash: await hashPassword('s3cret-pw') }]);
    assert.equal(await u.exists('ann@x.test'), true);
    assert.equal(await u.exists('bob@x.test'), false);
    assert.equal(await u.verify('ANN@x.test', 's3cret-pw'), true);
    assert.equal(await u.verify('ann@x.test', 'wrong'), false);
    assert.equal(await u.verify('bob@x.test', 's3cret-pw'), false);
  });
});
