// Reply classification: the rules of config/bounces.txt first, then the reply code.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { BounceRulesError, Classifier, parseReply, parseRules } from '../../src/relay/classify.ts';

describe('classify', () => {
  it('classifies by code, with config/bounces.txt rules first', () => {
    const c = new Classifier(parseRules(readFileSync(new URL('../../config/bounces.txt', import.meta.url), 'utf8')));
    const k = (s: string) => c.classify(parseReply(s));
    assert.deepEqual(k('250 2.0.0 ok'), { status: 'delivered', category: 'ok' });
    assert.deepEqual(k('451 4.7.1 later'), { status: 'deferred', category: 'transient' });
    assert.deepEqual(k('554 5.7.0 rejected'), { status: 'bounced', category: 'permanent' });
    assert.deepEqual(k('550 5.1.1 No such user'), { status: 'bounced', category: 'unknown-user' });
    assert.deepEqual(k('550 5.7.1 greylisted, try again later'), { status: 'deferred', category: 'greylist' });
    assert.deepEqual(k('452 4.5.3 Too many recipients'), { status: 'deferred', category: 'too-many-recipients' });
    assert.deepEqual(k('552 5.2.2 Mailbox full'), { status: 'deferred', category: 'mailbox-full' });
    assert.deepEqual(c.classify({ error: 'ECONNREFUSED', text: 'connect refused' }), { status: 'deferred', category: 'network' });
    assert.deepEqual(parseReply('550-5.1.1 first\n550 5.1.1 second'), { code: 550, enhanced: '5.1.1', text: 'first second' });
    assert.throws(() => parseRules('maybe x ^5'), BounceRulesError);
    assert.throws(() => parseRules('bounced x ([)'), /bounces.txt:1: expected a regular expression/);
  });
});
