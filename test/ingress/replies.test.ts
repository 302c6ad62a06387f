// The reply catalogue (replies.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { REPLIES, reply } from '../../src/ingress/smtp/replies.ts';

describe('replies', () => {
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
});
