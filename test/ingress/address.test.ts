// Address normalization and sender-specified routing (policy.ts), as pure functions.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { hasRouting, normalizeAddress } from '../../src/ingress/smtp/policy.ts';

describe('addresses', () => {
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
