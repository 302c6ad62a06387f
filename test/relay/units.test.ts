// The relay's pure parts: classification rules, the retry schedule, delivery windows, routes and
// limit matching, DSN structure; and the shared rate limiter and connection leases on a real Redis.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { BounceRulesError, Classifier, parseReply, parseRules } from '../../src/relay/classify.ts';
import { buildDsn } from '../../src/relay/dsn.ts';
import { limitsFor, SharedLimits } from '../../src/relay/limits.ts';
import { Routes } from '../../src/relay/routes.ts';
import { RetryPolicy } from '../../src/relay/retry.ts';
import { Windows } from '../../src/relay/windows.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';

describe('relay units', () => {
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

  it('matches routes and limits: exact, then the longest wildcard, then "*"', () => {
    const r = new Routes({ 'a.test': 'smtp://10.0.0.1:2525', '*.a.test': 'local', '*': 'smtps://smart.test' });
    assert.deepEqual(r.lookup('A.test'), { kind: 'smtp', key: 'a.test', host: '10.0.0.1', port: 2525, secure: false });
    assert.deepEqual(r.lookup('x.y.a.test'), { kind: 'local', key: '*.a.test' });
    assert.deepEqual(r.lookup('b.test'), { kind: 'smtp', key: '*', host: 'smart.test', port: 465, secure: true });
    assert.deepEqual(new Routes({}).lookup('b.test'), { kind: 'mx' });
    const withLocal = new Routes({ 'mail.test': 'smtp://127.0.0.1:2526' }, ['Home.test', 'mail.test']);
    assert.deepEqual(withLocal.lookup('home.test'), { kind: 'local', key: 'home.test' }, 'a local domain goes to the mailboxes');
    assert.equal(withLocal.lookup('mail.test').kind, 'smtp', 'an explicit route wins over domains.local');
    assert.deepEqual(withLocal.lookup('sub.home.test'), { kind: 'mx' });
    const limits = testConfig({ relay: { limits: { destinations: { 'dest.test': { connections: 2, ratePerSecond: 50 }, 'mx1.big.test': { connections: 7 } } } } }).relay.limits;
    assert.deepEqual(limitsFor(limits, 'mx.dest.test', 'dest.test'), { key: 'dest.test', connections: 2, ratePerSecond: 50, messagesPerConnection: 100 });
    assert.deepEqual(limitsFor(limits, 'mx1.big.test', 'big.test'), { key: 'mx1.big.test', connections: 7, ratePerSecond: 0, messagesPerConnection: 100 });
    assert.deepEqual(limitsFor(limits, 'mx.other.test', 'other.test'), { key: 'mx.other.test', connections: 10, ratePerSecond: 0, messagesPerConnection: 100 });
  });

  it('builds an RFC 3464 report; none for the null sender', () => {
    const original = { id: 'M1', queue: 'gw:x.test', acceptedAt: 0, envelope: { from: 's@src.test', to: ['a@x.test'] }, raw: Buffer.from('Subject: hi\r\nFrom: s@src.test\r\n\r\nbody secret\r\n') };
    const rcpts = [{ rcpt: 'a@x.test', action: 'failed' as const, status: '5.1.1', diagnostic: '550 5.1.1 unknown', smtp: true, remoteMta: 'mx.x.test[10.0.0.1]:25' }];
    const m = buildDsn({ original, recipients: rcpts, reportingMta: 'gw.test', now: 0, tag: 'B1' })!;
    const text = m.raw.toString();
    assert.deepEqual([m.id, m.domain, m.envelope], ['M1-dsn-B1', 'src.test', { from: '', to: ['s@src.test'] }]);
    assert.match(text, /Content-Type: multipart\/report; report-type=delivery-status;/);
    assert.match(text, /Reporting-MTA: dns; gw.test\r\n/);
    assert.match(text, /Final-Recipient: rfc822; a@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.x.test\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown/);
    assert.match(text, /Content-Type: text\/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSubject: hi\r\nFrom: s@src.test\r\n\r\n--/);
    assert.doesNotMatch(text, /body secret/, 'headers only');
    assert.equal(buildDsn({ original: { ...original, envelope: { from: '', to: ['a@x.test'] } }, recipients: rcpts, reportingMta: 'gw.test', now: 0, tag: 'B1' }), undefined);
  });

  describe('shared limits on Redis', () => {
    let pool: TestRedis[];
    let qm: QueueManager;
    before(async () => {
      pool = await startRedisPool(2);
      qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) } }), silentLogger, { gatewayId: 'gw-units' });
      await qm.start();
    });
    after(async () => {
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
    });

    it('reserves send slots one interval apart across limiters, on the first node only', async () => {
      const mk = (id: string) => new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: id, leaseMs: 1000, log: silentLogger });
      const [a, b] = [mk('a'), mk('b')];
      const t0 = Date.now();
      await Promise.all([...Array.from({ length: 10 }, () => a.waitRate('units-rate', 100)), ...Array.from({ length: 10 }, () => b.waitRate('units-rate', 100))]);
      const took = Date.now() - t0;
      assert.ok(took >= 180, `20 messages at 100/s take at least 190 ms, took ${took}`);
      assert.equal(await pool[0]!.client().exists('sg:rate:{units-rate}'), 1);
      assert.equal(await pool[1]!.client().exists('sg:rate:{units-rate}'), 0);
    });

    it('grants at most `limit` connection leases across gateways, and gives them back', async () => {
      const mk = (id: string) => new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: id, leaseMs: 60_000, log: silentLogger });
      const [a, b] = [mk('a'), mk('b')];
      const l1 = await a.acquireLease('units-conn', 2);
      const l2 = await b.acquireLease('units-conn', 2);
      const ac = new AbortController();
      const third = b.acquireLease('units-conn', 2, ac.signal);
      let got = false;
      void third.then(() => (got = true), () => undefined);
      await new Promise((r) => setTimeout(r, 150));
      assert.equal(got, false, 'the third waits');
      await a.releaseLease(l1);
      const l3 = await third;
      assert.ok(l3.shared && l2.shared);
      assert.equal(await a.renewLease(l2, 2), true);
      await Promise.all([b.releaseLease(l2), b.releaseLease(l3)]);
      assert.equal(await pool[0]!.client().zcard('sg:conn:{units-conn}'), 0);
      ac.abort();
    });
  });
});
