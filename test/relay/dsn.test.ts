// Delivery status notifications (RFC 3464) as a pure function.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildDsn } from '../../src/relay/dsn.ts';

describe('dsn', () => {
  it('builds an RFC 3464 report; none for the null sender', () => {
    const original = { id: 'M1', queue: 'gw:x.test', acceptedAt: 0, envelope: { from: 's@src.test', to: ['a@x.test'] }, raw: Buffer.from('Subject: hi\r\nFrom: s@src.test\r\n\r\nbody secret\r\n') };
    const rcpts = [{ rcpt: 'a@x.test', action: 'failed' as const, status: '5.1.1', diagnostic: '550 5.1.1 unknown', smtp: true, remoteMta: 'mx.x.test[10.0.0.1]:25' }];
    const m = buildDsn({ original, recipients: rcpts, reportingMta: 'gw.test', now: 0, tag: 'B1' })!;
    const text = m.raw.toString();
    assert.deepEqual([m.id, m.domain, m.envelope], ['M1-dsn-B1', 'src.test', { from: '', to: ['s@src.test'] }]);
    assert.match(text, /Content-Type: multipart\/report; report-type=delivery-status;/);
    assert.match(text, /Reporting-MTA: dns; gw.test\r\n/);
    assert.match(text, /Final-Recipient: rfc822; a@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.x.test\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown/);
    assert.match(text, /Content-Type: text\/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSubject: hi\r\nFrom: s@src.test\r\n\r\n--/);
    assert.doesNotMatch(text, /body secret/, 'headers only');
    assert.equal(buildDsn({ original: { ...original, envelope: { from: '', to: ['a@x.test'] } }, recipients: rcpts, reportingMta: 'gw.test', now: 0, tag: 'B1' }), undefined);
  });
});
