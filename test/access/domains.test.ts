// Domain patterns, one matcher for lists (domains.local, domains.relay) and maps keyed by pattern.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DomainSet } from '../../src/access/domains.ts';

describe('domain patterns', () => {
  it('matches exact domains and *.parent subdomains', () => {
    const s = new DomainSet(['a.test', '*.b.test', 'BÜCHER.test']);
    assert.ok(s.has('a.test'));
    assert.ok(!s.has('x.a.test'));
    assert.ok(s.has('x.b.test'));
    assert.ok(s.has('y.x.b.test'));
    assert.ok(!s.has('b.test'));
    assert.ok(!s.has('evilb.test'));
    assert.ok(s.has('xn--bcher-kva.test'));
    assert.equal(s.first, 'a.test');
  });

  it('ignores a lone "*" in a list (only a route may be "*")', () => {
    const s = new DomainSet(['*', 'a.test']);
    assert.ok(!s.has('b.test'));
    assert.ok(s.has('a.test'));
  });
});
