// Splitting recipients by destination domain (store.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { splitByDomain } from '../../src/ingress/smtp/store.ts';

describe('split by domain', () => {
  it('splits recipients by final domain, once each', () => {
    assert.deepEqual([...splitByDomain(['a@x.test', 'b@y.test', 'A@x.test', 'c@X.test', 'a%y.test@x.test'])], [
      ['x.test', ['a@x.test', 'c@X.test', 'a%y.test@x.test']],
      ['y.test', ['b@y.test']],
    ]);
  });
});
