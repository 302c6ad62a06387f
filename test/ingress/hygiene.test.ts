// The headers the ingress adds (hygiene.ts): Received, and Date and Message-ID when missing.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { addedHeaders, headerNames, receivedHeader } from '../../src/ingress/smtp/hygiene.ts';

describe('added headers', () => {
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
});
