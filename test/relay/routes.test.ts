// Static routes: exact, then the longest wildcard, then "*"; local domains to the mailboxes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Routes } from '../../src/relay/routes.ts';

describe('routes', () => {
  it('matches routes: exact, then the longest wildcard, then "*"', () => {
    const r = new Routes({ 'a.test': 'smtp://10.0.0.1:2525', '*.a.test': 'local', '*': 'smtps://smart.test' });
    assert.deepEqual(r.lookup('A.test'), { kind: 'smtp', key: 'a.test', host: '10.0.0.1', port: 2525, secure: false });
    assert.deepEqual(r.lookup('x.y.a.test'), { kind: 'local', key: '*.a.test' });
    assert.deepEqual(r.lookup('b.test'), { kind: 'smtp', key: '*', host: 'smart.test', port: 465, secure: true });
    assert.deepEqual(new Routes({}).lookup('b.test'), { kind: 'mx' });
    const withLocal = new Routes({ 'mail.test': 'smtp://127.0.0.1:2526' }, ['Home.test', 'mail.test']);
    assert.deepEqual(withLocal.lookup('home.test'), { kind: 'local', key: 'home.test' }, 'a local domain goes to the mailboxes');
    assert.equal(withLocal.lookup('mail.test').kind, 'smtp', 'an explicit route wins over domains.local');
    assert.deepEqual(withLocal.lookup('sub.home.test'), { kind: 'mx' });
  });
});
