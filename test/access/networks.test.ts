// Trusted networks (networks.trusted), as SMTP relay policy and POP3 plaintext login read them.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TrustedNetworks } from '../../src/access/networks.ts';

describe('trusted networks', () => {
  it('matches trusted networks, IPv4, IPv6 and IPv4-mapped', () => {
    const n = new TrustedNetworks(['127.0.0.0/8', '::1/128', '10.1.2.3', '2001:db8::/32']);
    assert.ok(n.has('127.9.9.9'));
    assert.ok(n.has('::ffff:127.0.0.1'));
    assert.ok(n.has('::1'));
    assert.ok(n.has('10.1.2.3'));
    assert.ok(!n.has('10.1.2.4'));
    assert.ok(n.has('2001:db8:1::5'));
    assert.ok(!n.has('2001:db9::1'));
    assert.ok(!n.has('garbage'));
    assert.throws(() => new TrustedNetworks(['not-an-ip/8']), /networks\.trusted/);
  });
});
