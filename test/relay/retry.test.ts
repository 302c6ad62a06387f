// The retry policy: delays with jitter, the last one repeating, the lifetime and the delay warning.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RetryPolicy } from '../../src/relay/retry.ts';
import { testConfig } from '../helpers/config.ts';

describe('retry policy', () => {
  it('computes the retry schedule with jitter and the lifetime', () => {
    const cfg = testConfig({ relay: { retry: { schedule: ['5m', '10m'], jitter: 0.1, maxLifetime: '1h', warnAfter: '20m' } } }).relay.retry;
    const low = new RetryPolicy(cfg, () => 0);
    const high = new RetryPolicy(cfg, () => 0.999999);
    assert.equal(low.delay(1), 270_000);
    assert.equal(Math.round(high.delay(1) / 1000), 330);
    assert.equal(low.delay(2), 540_000);
    assert.equal(low.delay(9), 540_000, 'the last delay repeats');
    assert.deepEqual(low.next(1, 0, 1000), { at: 271_000 });
    assert.deepEqual(low.next(5, 0, 3_300_000), { expired: true });
    assert.equal(low.warnDue(0, 1_199_999), false);
    assert.equal(low.warnDue(0, 1_200_000), true);
  });
});
