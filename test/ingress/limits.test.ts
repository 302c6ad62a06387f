// The deadline of a DATA transfer (limits.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DataDeadlines } from '../../src/ingress/smtp/limits.ts';
import { waitFor } from '../helpers/waitFor.ts';

describe('DATA deadline', () => {
  it('gives a DATA transfer dataTimeout plus one second per minDataRate bytes', async () => {
    let now = 0;
    const d = new DataDeadlines(400, 1000, () => now);
    assert.equal(d.budget(0), 400);
    assert.equal(d.budget(5000), 5400);
    assert.equal(new DataDeadlines(400, 0).budget(1e9), 400, 'minDataRate 0: a fixed budget');
    let bytes = 0;
    let cut = 0;
    const stop = d.add({ started: 0, bytes: () => bytes, cut: () => cut++ });
    // a transfer already past its budget: once it is cut, a check has run at the time set
    let checked = 0;
    const late = () => d.add({ started: -10_000, bytes: () => 0, cut: () => checked++ });
    now = 390;
    late();
    await waitFor(() => checked === 1, { what: 'a check at 390 ms' });
    assert.equal(cut, 0);
    bytes = 100; // 0.1 s of credit
    now = 505;
    await waitFor(() => cut === 1, { what: 'cut at 505 ms' });
    stop();
    d.stop();
  });
});
