// Per-client limits count an IPv6 client per /64 (networks.ipv6Prefix), IPv4 per address.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { clientKey, ConnectionLimiter } from '../../src/net/clients.ts';

describe('client keys', () => {
  it('puts every address of one IPv6 /64 under one key, and keeps IPv4 addresses apart', () => {
    const a = clientKey('2001:db8:1:2::1', 64);
    assert.equal(a, '2001:db8:1:2::/64');
    assert.equal(clientKey('2001:db8:1:2:ffff:ffff:ffff:fffe', 64), a);
    assert.equal(clientKey('2001:DB8:1:2:0:0:0:9', 64), a);
    assert.notEqual(clientKey('2001:db8:1:3::1', 64), a);
    assert.equal(clientKey('2001:db8:1:2::1', 48), '2001:db8:1::/48');
    assert.equal(clientKey('2001:db8:1:2::1', 128), '2001:db8:1:2::1');
    assert.equal(clientKey('::ffff:192.0.2.1', 64), '192.0.2.1');
    assert.notEqual(clientKey('192.0.2.1', 64), clientKey('192.0.2.2', 64));
  });

  it('a client rotating through its /64 hits the per-client connection limit', () => {
    const limiter = new ConnectionLimiter(100, 3);
    const results = [1, 2, 3, 4].map((i) => limiter.admit(`s${i}`, clientKey(`2001:db8:0:7::${i}`, 64)));
    assert.deepEqual(results, [undefined, undefined, undefined, 'tooManyFromClient']);
    assert.equal(limiter.admit('s5', clientKey('2001:db8:0:8::1', 64)), undefined, 'another /64 is another client');
  });
});

describe('connection limits', () => {
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
});
