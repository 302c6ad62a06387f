// Delivery windows per destination, in a time zone.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Windows } from '../../src/relay/windows.ts';

describe('delivery windows', () => {
  it('reads delivery windows in a time zone, wrapping midnight', () => {
    const w = new Windows({ 'example.net': ['06:00-24:00'], '*.night.test': ['22:00-02:00'] }, 'UTC');
    const at = (h: number, m = 0) => Date.UTC(2030, 0, 1, h, m);
    assert.deepEqual(w.check('example.net', at(3)), { open: false, opensAt: at(6) });
    assert.deepEqual(w.check('example.net', at(6)), { open: true });
    assert.deepEqual(w.check('a.night.test', at(23)), { open: true });
    assert.deepEqual(w.check('a.night.test', at(1, 59)), { open: true });
    assert.deepEqual(w.check('a.night.test', at(2)), { open: false, opensAt: at(22) });
    assert.deepEqual(w.check('other.test', at(3)), { open: true });
    const berlin = new Windows({ 'b.test': ['06:00-24:00'] }, 'Europe/Berlin');
    assert.deepEqual(berlin.check('b.test', at(4, 30)), { open: false, opensAt: at(5) }, '06:00 in Berlin is 05:00 UTC in winter');
    assert.throws(() => new Windows({}, 'Mars/Base'), /relay.timezone/);
  });
});
