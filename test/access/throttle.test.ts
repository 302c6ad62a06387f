// The failed-login throttle shared by SMTP (auth, errors) and POP3 (logins).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FailureThrottle } from '../../src/access/throttle.ts';

describe('failed-login throttle', () => {
  it('keeps AUTH failures per address for a window, per connection up to its limit', () => {
    let now = 1_000_000;
    const g = new FailureThrottle({ perConnection: 3, perClient: 4, window: 60_000, delay: 3000 }, () => now);
    assert.equal(g.delayFor('a'), 0);
    assert.equal(g.fail('a', 1), false);
    assert.equal(g.delayFor('a'), 3000);
    assert.equal(g.fail('a', 2), false);
    assert.equal(g.fail('a', 3), true, 'third on one connection');
    assert.equal(g.blocked('a'), false);
    assert.equal(g.fail('a', 1), true, 'fourth from the address');
    assert.equal(g.blocked('a'), true);
    assert.equal(g.blocked('b'), false);
    now += 60_001;
    assert.equal(g.blocked('a'), false, 'the window passed');
    assert.equal(g.delayFor('a'), 0);
  });

  it('as POP3 uses it: per client only, no delay; perClient 0 never refuses', () => {
    let now = 0;
    const g = new FailureThrottle({ perConnection: 0, perClient: 2, window: 1000, delay: 0 }, () => now);
    assert.equal(g.fail('10.0.0.1'), false);
    assert.equal(g.blocked('10.0.0.1'), false);
    assert.equal(g.fail('10.0.0.1'), true);
    assert.equal(g.blocked('10.0.0.1'), true);
    assert.equal(g.delayFor('10.0.0.1'), 0);
    now = 1001;
    assert.equal(g.blocked('10.0.0.1'), false, 'the window passed');
    const off = new FailureThrottle({ perConnection: 0, perClient: 0, window: 1000, delay: 0 }, () => now);
    for (let i = 0; i < 10; i++) off.fail('10.0.0.2');
    assert.equal(off.blocked('10.0.0.2'), false);
  });
});
