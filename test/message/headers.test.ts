// Every header the gateway writes (Received, Message-ID, the DSN's header and report fields) stays
// one header per value, whatever a client, a producer or a remote server put into that value.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { addedHeaders, receivedHeader } from '../../src/ingress/smtp/hygiene.ts';
import { buildDsn } from '../../src/relay/dsn.ts';

const EVIL = 'x\r\nBcc: victim@evil.test\r\n';

/** The header lines of a header section: each one a field or the continuation of one. */
function fields(section: string): string[] {
  const lines = section.replace(/\r\n$/, '').split('\r\n');
  for (const l of lines) {
    assert.doesNotMatch(l, /[\r\n\0]/, `no stray line end in ${JSON.stringify(l)}`);
    assert.ok(/^[\t ]/.test(l) || /^[A-Za-z-]+: /.test(l), `a field or a continuation: ${JSON.stringify(l)}`);
  }
  return lines.filter((l) => !/^[\t ]/.test(l)).map((l) => l.slice(0, l.indexOf(':')).toLowerCase());
}

describe('header values', () => {
  const facts = {
    helo: 'c.test"<>;(x)',
    clientHostname: `host${EVIL}`,
    clientAddress: '192.0.2.1',
    by: 'mx.test',
    protocol: 'ESMTPSA',
    id: `ID1${EVIL}`,
    tls: { version: `TLSv1.3${EVIL}`, cipher: EVIL },
    authUser: `u${EVIL}`,
    for: `r${EVIL}@d.test`,
    date: new Date('2026-01-02T03:04:05Z'),
  };

  it('Received: client text cannot add a header, and the HELO name keeps only what a host name has', () => {
    const h = receivedHeader(facts);
    assert.deepEqual(fields(h), ['received']);
    assert.match(h, /^Received: from c\.test\?\?\?\?\?x\? \(/, 'no " < > ; ( ) from EHLO');
  });

  it('Message-ID (added on submission): the id and host name are encoded', () => {
    const h = addedHeaders(Buffer.from('Subject: x\r\n\r\nb\r\n'), { ...facts, by: `mx.test${EVIL}` }, true);
    assert.deepEqual(fields(h), ['received', 'date', 'message-id']);
    assert.match(h, /\r\nMessage-ID: <[!-~]+@[!-~]+>\r\n$/);
  });

  it('DSN: a message id, addresses, host names and replies with line ends stay inside their fields', () => {
    const original = { id: `job-${EVIL}`, queue: 'gw:x.test', acceptedAt: 0, envelope: { from: `s${EVIL}@src.test`, to: ['a@x.test'] }, raw: Buffer.from('Subject: hi\r\n\r\nbody\r\n') };
    const rcpts = [{ rcpt: `a${EVIL}@x.test`, action: 'failed' as const, status: '5.1.1', diagnostic: `550 5.1.1 unknown\rBcc: y@evil.test`, smtp: true, remoteMta: `mx${EVIL}[10.0.0.1]:25` }];
    const m = buildDsn({ original, recipients: rcpts, reportingMta: `gw.test${EVIL}`, now: 0, tag: 'B1' })!;
    const text = m.raw.toString();
    const [head] = text.split('\r\n\r\n');
    assert.deepEqual(fields(`${head!}\r\n`), ['from', 'to', 'subject', 'date', 'message-id', 'auto-submitted', 'mime-version', 'content-type', 'content-transfer-encoding']);
    assert.match(text, /\r\nMessage-ID: <[!-~]+@[!-~]+>\r\n/);
    const report = text.slice(text.indexOf('Content-Type: message/delivery-status'));
    const blocks = report.slice(report.indexOf('\r\n\r\n') + 4, report.indexOf('\r\n\r\n--')).split('\r\n\r\n');
    assert.deepEqual(blocks.map((b) => fields(`${b}\r\n`)), [
      ['reporting-mta', 'x-streamgate-queue-id', 'arrival-date'],
      ['final-recipient', 'action', 'status', 'remote-mta', 'diagnostic-code'],
    ]);
    assert.doesNotMatch(text, /^Bcc:/im);
  });
});
