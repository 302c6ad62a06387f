// The relay in one process: real redis-server nodes, real SMTP sinks on loopback, an injected
// clock and an injected DNS resolver (answers for *.test names only, all pointing at loopback).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { simpleParser } from 'mailparser';
import { silentLogger } from '../../src/log.ts';
import { type LocalDelivery, type QueuedMessage } from '../../src/message/types.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import type { DnsResolver } from '../../src/relay/mx.ts';
import { Relay } from '../../src/relay/relay.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtpSink.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { newMessageId } from '../../src/message/ids.ts';

const MIN = 60_000;

/** A resolver for tests: a table of MX and A answers; everything else does not exist. */
class TableResolver implements DnsResolver {
  mx = new Map<string, { exchange: string; priority: number }[]>();
  a = new Map<string, string[]>();
  calls: string[] = [];
  async resolveMx(name: string) {
    this.calls.push(`MX ${name}`);
    const r = this.mx.get(name);
    if (r) return r;
    throw Object.assign(new Error(`queryMx ${this.a.has(name) ? 'ENODATA' : 'ENOTFOUND'} ${name}`), { code: this.a.has(name) ? 'ENODATA' : 'ENOTFOUND' });
  }
  async resolve4(name: string) {
    this.calls.push(`A ${name}`);
    const r = this.a.get(name);
    if (r) return r.map((address) => ({ address, ttl: 60 }));
    throw Object.assign(new Error(`queryA ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
  }
  async resolve6(name: string): Promise<{ address: string; ttl: number }[]> {
    throw Object.assign(new Error(`queryAaaa ENODATA ${name}`), { code: this.a.has(name) ? 'ENODATA' : 'ENOTFOUND' });
  }
}

const raw = (subject: string, body = 'hello') =>
  Buffer.from(`From: <sender@src.test>\r\nTo: <rcpt@dest.test>\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@src.test>\r\n\r\n${body}\r\n`);

interface Harness {
  qm: QueueManager;
  relay: Relay;
  clock: { t: number };
  resolver: TableResolver;
  append(domain: string, to: string[], subject: string, from?: string): Promise<string>;
  kinds(domain: string, id: string): Promise<string[]>;
  stop(): Promise<void>;
}

describe('relay', () => {
  let pool: TestRedis[];
  let dsnSink: SmtpSink;
  const sinks: SmtpSink[] = [];

  before(async () => {
    pool = await startRedisPool(2);
    dsnSink = await startSmtpSink({ hideStartTls: true });
  });
  after(async () => {
    await Promise.all([dsnSink.close(), ...sinks.map((s) => s.close())]);
    await Promise.all(pool.map((r) => r.stop()));
  });

  const sink = async (opts: Parameters<typeof startSmtpSink>[0] = {}) => {
    const s = await startSmtpSink(opts);
    sinks.push(s);
    return s;
  };

  async function harness(name: string, config: Record<string, unknown>, opts: { local?: LocalDelivery; start?: number } = {}): Promise<Harness> {
    const clock = { t: opts.start ?? Date.UTC(2030, 0, 1, 12, 0, 0) };
    const now = () => clock.t;
    const relayCfg = (config.relay ?? {}) as Record<string, unknown>;
    const cfg = testConfig({
      redis: { nodes: pool.map((r) => r.url) },
      gateway: { id: name, hostname: 'gw.streamgate.test' },
      ...config,
      routes: { 'src.test': `smtp://127.0.0.1:${dsnSink.port}`, ...((config.routes ?? {}) as Record<string, string>) },
      relay: { retry: { schedule: ['5m', '10m', '20m'], jitter: 0 }, socketTimeout: '2s', greetingTimeout: '2s', connectTimeout: '2s', ...relayCfg },
    });
    const qm = new QueueManager(cfg, silentLogger, { gatewayId: name, now });
    await qm.start();
    const resolver = new TableResolver();
    // dead-destination waits are moved through on the injected clock: kept by this relay, not on the pool's clocks
    const relay = new Relay(qm, cfg, silentLogger, { now, resolver, sweepMs: 30, local: opts.local, deadDestinations: 'process' });
    relay.start();
    return {
      qm,
      relay,
      clock,
      resolver,
      async append(domain, to, subject, from = 'sender@src.test') {
        const id = newMessageId();
        await qm.append({ id, domain, envelope: { from, to }, raw: raw(subject) });
        return id;
      },
      async kinds(domain, id) {
        return (await qm.history(domain, id)).map((h) => h.kind);
      },
      async stop() {
        await relay.stop();
        await qm.stop();
      },
    };
  }

  const idle = (h: Harness, domain: string) => waitFor(() => h.qm.queues.get(domain) && h.qm.depth(domain).inflight === 0 && h.qm.depth(domain).ready === 0, { what: `${domain} idle` });

  it('keeps FIFO order to a destination limited to one connection; a deferred message does not block', async () => {
    const s = await sink();
    const h = await harness('gw-fifo', { routes: { 'fifo.test': `smtp://127.0.0.1:${s.port}` }, relay: { limits: { destinations: { 'fifo.test': { connections: 1 } } } } });
    try {
      s.answer('slow@fifo.test', { code: 451, text: '4.7.1 try later' });
      const subjects: string[] = [];
      for (let i = 0; i < 30; i++) {
        subjects.push(`fifo-${i}`);
        await h.append('fifo.test', [i === 4 ? 'slow@fifo.test' : `r${i}@fifo.test`], `fifo-${i}`);
      }
      await waitFor(() => s.messages.length === 29, { what: '29 messages at the sink' });
      const got = s.messages.map((m) => /Subject: (\S+)/.exec(m.raw.toString())![1]);
      assert.deepEqual(got, subjects.filter((x) => x !== 'fifo-4'));
      assert.equal(s.maxConcurrent, 1, 'one connection at a time');
      await waitFor(() => h.qm.depth('fifo.test').deferred === 1 && h.qm.depth('fifo.test').inflight === 0);
    } finally {
      await h.stop();
    }
  });

  it('gives a connection dropped before its greeting back to the pool: the attempt is deferred, nothing stays in flight', async () => {
    const s = await sink();
    const h = await harness('gw-drop', {
      routes: { 'drop.test': `smtp://127.0.0.1:${s.port}` },
      relay: { limits: { destinations: { 'drop.test': { connections: 2 } } }, deadDestination: { failures: 100 }, retry: { schedule: ['5m'], jitter: 0 } },
    });
    try {
      s.failConnections(4, 'drop');
      for (let i = 0; i < 6; i++) await h.append('drop.test', [`r${i}@drop.test`], `drop-${i}`);
      await waitFor(() => h.qm.depth('drop.test').inflight === 0 && h.qm.depth('drop.test').ready === 0, { what: 'every message attempted', timeout: 15_000 });
      assert.equal(s.failedConnections, 4);
      const deferred = h.qm.depth('drop.test').deferred;
      assert.equal(s.messages.length + deferred, 6, `delivered ${s.messages.length}, deferred ${deferred}`);
      assert.ok(deferred > 0, 'the dropped connections deferred their messages');
      h.clock.t += 5 * MIN;
      h.relay.poke();
      await waitFor(() => s.messages.length === 6, { what: 'all delivered on the retry' });
      await idle(h, 'drop.test');
    } finally {
      await h.stop();
    }
  });

  it('settles partial recipient failures per recipient, with a DSN for the bounced one', async () => {
    const s = await sink();
    const h = await harness('gw-partial', { routes: { 'part.test': `smtp://127.0.0.1:${s.port}` } });
    try {
      s.answer('b@part.test', { code: 550, text: '5.1.1 No such user' });
      s.answer('c@part.test', { code: 451, text: '4.2.0 Mailbox busy' });
      const before = dsnSink.messages.length;
      const id = await h.append('part.test', ['a@part.test', 'b@part.test', 'c@part.test', 'd@part.test'], 'partial-1', 'partial@src.test');
      await waitFor(() => h.qm.depth('part.test').deferred === 1, { what: 'deferred with one recipient left' });
      assert.deepEqual(s.messages.map((m) => m.to), [['a@part.test', 'd@part.test']]);
      const hist = await h.qm.history('part.test', id);
      const deferred = hist.find((e) => e.kind === 'deferred')!.details as { recipients: { rcpt: string; status: string; code: number }[]; nextAt: number };
      assert.deepEqual(
        deferred.recipients.map((r) => [r.rcpt, r.status, r.code]),
        [['a@part.test', 'delivered', 250], ['b@part.test', 'bounced', 550], ['c@part.test', 'deferred', 451], ['d@part.test', 'delivered', 250]],
      );
      assert.equal(deferred.nextAt, h.clock.t + 5 * MIN);
      await waitFor(() => dsnSink.messages.length === before + 1, { what: 'DSN for b@' });
      const dsn = dsnSink.messages.at(-1)!;
      assert.deepEqual([dsn.from, dsn.to], ['', ['partial@src.test']]);
      assert.match(dsn.raw.toString(), /Final-Recipient: rfc822; b@part.test\r\nAction: failed\r\nStatus: 5.1.1/);
      assert.doesNotMatch(dsn.raw.toString(), /c@part.test/);

      s.answer('c@part.test', 'ok');
      h.clock.t += 5 * MIN;
      h.relay.poke();
      await waitFor(() => s.messages.length === 2, { what: 'second attempt' });
      assert.deepEqual(s.messages[1]!.to, ['c@part.test'], 'only the recipient still to do');
      await idle(h, 'part.test');
      assert.deepEqual(await h.kinds('part.test', id), ['accepted', 'attempted', 'deferred', 'attempted', 'delivered']);
      assert.equal(dsnSink.messages.length, before + 1, 'no second DSN');
    } finally {
      await h.stop();
    }
  });

  it('splits a batch refused with 452 too many recipients into further transactions', async () => {
    const s = await sink({ maxRecipients: 2 });
    const h = await harness('gw-split', { routes: { 'split.test': `smtp://127.0.0.1:${s.port}` } });
    try {
      const to = ['a', 'b', 'c', 'd', 'e'].map((x) => `${x}@split.test`);
      const id = await h.append('split.test', to, 'split-1');
      await idle(h, 'split.test');
      assert.deepEqual(s.messages.map((m) => m.to), [to.slice(0, 2), to.slice(2, 4), to.slice(4)]);
      assert.deepEqual(await h.kinds('split.test', id), ['accepted', 'attempted', 'delivered']);
      assert.equal(new Set(s.messages.map((m) => m.session)).size, 1, 'on one connection');
    } finally {
      await h.stop();
    }
  });

  it('sends the envelope and the raw message unchanged, 8-bit and dot lines included, over STARTTLS', async () => {
    const s = await sink();
    const h = await harness('gw-raw', { routes: { 'raw.test': `smtp://127.0.0.1:${s.port}` } });
    try {
      const body = Buffer.concat([Buffer.from('Subject: raw\r\n\r\n.leading dot\r\n..two\r\n'), Buffer.from([0xe9, 0xe8, 0x0d, 0x0a]), Buffer.from('.\r\nend\r\n')]);
      await h.qm.append({ id: newMessageId(), domain: 'raw.test', envelope: { from: 'x@src.test', to: ['Y@raw.test'] }, raw: body });
      await waitFor(() => s.messages.length === 1);
      assert.ok(s.messages[0]!.raw.equals(body), 'bytes equal');
      assert.deepEqual([s.messages[0]!.from, s.messages[0]!.to], ['x@src.test', ['Y@raw.test']]);
      assert.equal(s.messages[0]!.secure, true, 'opportunistic STARTTLS taken');
    } finally {
      await h.stop();
    }
  });

  it('honours the retry schedule on an injected clock, the last delay repeating', async () => {
    const s = await sink();
    const h = await harness('gw-retry', { routes: { 'retry.test': `smtp://127.0.0.1:${s.port}` }, relay: { retry: { schedule: ['5m', '10m', '20m'], jitter: 0, warnAfter: '0s' } } });
    try {
      s.answer('r@retry.test', { code: 421, text: '4.4.5 busy' });
      const id = await h.append('retry.test', ['r@retry.test'], 'retry-1');
      const deferrals = async () => (await h.qm.history('retry.test', id)).filter((e) => e.kind === 'deferred').map((e) => (e.details as { nextAt: number }).nextAt);
      const t0 = h.clock.t;
      await waitFor(async () => (await deferrals()).length === 1);
      assert.deepEqual(await deferrals(), [t0 + 5 * MIN]);
      const expected = [t0 + 5 * MIN];
      let at = t0;
      for (const step of [5, 10, 20, 20]) {
        // one second early: nothing happens
        h.clock.t = at + step * MIN - 1000;
        h.relay.poke();
        await waitFor(() => h.relay.status().domains.find((d) => d.domain === 'retry.test')?.wakeAt === at + step * MIN, { what: 'next wake time' });
        assert.equal((await deferrals()).length, expected.length, `no attempt before ${step}m`);
        at += step * MIN;
        h.clock.t = at;
        h.relay.poke();
        const nextStep = step === 5 ? 10 : 20;
        expected.push(at + nextStep * MIN);
        await waitFor(async () => (await deferrals()).length === expected.length, { what: `attempt at +${step}m` });
        assert.deepEqual(await deferrals(), expected);
      }
      const attempts = (await h.qm.history('retry.test', id)).filter((e) => e.kind === 'attempted').map((e) => (e.details as { attempt: number }).attempt);
      assert.deepEqual(attempts, [1, 2, 3, 4, 5]);
    } finally {
      await h.stop();
    }
  });

  it('expires a message after its maximum lifetime with exactly one DSN, after one delay warning', async () => {
    const s = await sink();
    const h = await harness('gw-expire', {
      routes: { 'exp.test': `smtp://127.0.0.1:${s.port}` },
      relay: { retry: { schedule: ['15m'], jitter: 0, maxLifetime: '1h', warnAfter: '20m' } },
    });
    try {
      s.answer('gone@exp.test', { code: 450, text: '4.2.1 mailbox unavailable' });
      const fromDsn = () => dsnSink.to('expiry@src.test');
      const id = await h.append('exp.test', ['gone@exp.test'], 'expire-1', 'expiry@src.test');
      const t0 = h.clock.t;
      for (const m of [15, 30, 45]) {
        await waitFor(() => h.qm.depth('exp.test').deferred === 1 || h.qm.depth('exp.test').ready + h.qm.depth('exp.test').inflight === 0);
        h.clock.t = t0 + m * MIN;
        h.relay.poke();
      }
      await waitFor(() => h.qm.depth('exp.test').deferred + h.qm.depth('exp.test').ready + h.qm.depth('exp.test').inflight === 0, { what: 'expired' });
      const kinds = await h.kinds('exp.test', id);
      assert.deepEqual(kinds, ['accepted', 'attempted', 'deferred', 'attempted', 'deferred', 'attempted', 'deferred', 'attempted', 'expired']);
      await waitFor(() => fromDsn().length === 2, { what: 'a warning and a failure DSN' });
      // later sweeps add nothing
      h.clock.t += 10 * 24 * 60 * MIN;
      h.relay.poke();
      await idle(h, 'src.test');
      const dsns = fromDsn();
      assert.equal(dsns.length, 2);
      const [warn, fail] = dsns.map((d) => d.raw.toString());
      assert.match(warn!, /Action: delayed/);
      assert.match(warn!, /Will-Retry-Until: /);
      assert.match(fail!, /Action: failed\r\nStatus: 4\.4\.7/);
      assert.match(fail!, /Diagnostic-Code: smtp; 450 4\.2\.1 mailbox unavailable/);
      for (const d of dsns) assert.equal(d.from, '', 'null sender');
      const parsed = await simpleParser(dsns[1]!.raw);
      assert.match(String(parsed.headers.get('content-type') && (parsed.headers.get('content-type') as { value: string }).value), /multipart\/report/);
      assert.match(fail!, /\r\nContent-Type: message\/delivery-status\r\n\r\nReporting-MTA: dns; gw\.streamgate\.test\r\n/);
      const types = parsed.attachments.map((a) => a.contentType);
      assert.ok(types.includes('text/rfc822-headers'), `parts: ${types.join(', ')}`);
      const headersPart = parsed.attachments.find((a) => a.contentType === 'text/rfc822-headers')!;
      assert.match(headersPart.content.toString(), /Subject: expire-1/);
    } finally {
      await h.stop();
    }
  });

  it('never sends a DSN for a message from the null sender', async () => {
    const s = await sink();
    const h = await harness('gw-null', { routes: { 'null.test': `smtp://127.0.0.1:${s.port}` } });
    try {
      s.answer('x@null.test', { code: 550, text: '5.1.1 unknown' });
      const id = await h.append('null.test', ['x@null.test'], 'null-1', '');
      await idle(h, 'null.test');
      assert.deepEqual(await h.kinds('null.test', id), ['accepted', 'attempted', 'bounced']);
      assert.equal(h.qm.queues.has('src.test'), false, 'nothing appended for a sender domain');
      assert.equal([...h.qm.queues.keys()].length, 1);
    } finally {
      await h.stop();
    }
  });

  it('respects a delivery window (injected clock, UTC)', async () => {
    const s = await sink();
    const h = await harness('gw-window', { routes: { 'win.test': `smtp://127.0.0.1:${s.port}` }, relay: { windows: { 'win.test': ['06:00-24:00'] } } }, { start: Date.UTC(2030, 0, 1, 3, 0, 0) });
    try {
      await h.append('win.test', ['a@win.test'], 'window-1');
      const opens = Date.UTC(2030, 0, 1, 6, 0, 0);
      await waitFor(() => h.relay.status().domains.find((d) => d.domain === 'win.test')?.blocked?.until === opens, { what: 'blocked until 06:00' });
      assert.equal(h.qm.depth('win.test').ready, 1);
      assert.equal(s.messages.length + s.totalConnections, 0);
      h.clock.t = opens - 1000;
      h.relay.poke();
      assert.equal(h.qm.depth('win.test').inflight, 0, 'still closed one second before');
      h.clock.t = opens;
      h.relay.poke();
      await waitFor(() => s.messages.length === 1, { what: 'delivered at 06:00' });
      await idle(h, 'win.test');
    } finally {
      await h.stop();
    }
  });

  it('suspends a dead destination without counting attempts, probes with one message, resumes', async () => {
    const s = await sink();
    const h = await harness('gw-dead', {
      routes: { 'dead.test': `smtp://127.0.0.1:${s.port}` },
      relay: { deadDestination: { failures: 2, suspend: '1m' }, limits: { destinations: { 'dead.test': { connections: 1 } } }, retry: { schedule: ['5m'], jitter: 0 } },
    });
    try {
      s.failConnections(Infinity, '421');
      const ids: string[] = [];
      for (let i = 0; i < 6; i++) ids.push(await h.append('dead.test', [`r${i}@dead.test`], `dead-${i}`));
      const dest = `127.0.0.1:${s.port}`;
      await waitFor(() => h.relay.status().dead.some((x) => x.dest === dest) && h.qm.depth('dead.test').inflight === 0, { what: 'dead' });
      assert.equal(s.failedConnections, 2, 'two failures, then no more connections');
      assert.deepEqual({ ...h.qm.depth('dead.test'), bytes: 0, oldest: 0 }, { ready: 4, deferred: 2, held: 0, inflight: 0, bytes: 0, oldest: 0 });
      const k2 = await h.kinds('dead.test', ids[2]!);
      assert.ok(!k2.includes('deferred'), `no attempt counted while dead: ${k2.join(',')}`);

      // The wait ends: one probe, still refused: dead again (for 2m).
      h.clock.t += MIN;
      h.relay.poke();
      await waitFor(() => s.failedConnections === 3 && h.qm.depth('dead.test').inflight === 0, { what: 'probe' });
      await waitFor(() => (h.relay.status().dead.find((x) => x.dest === dest)?.until ?? 0) === h.clock.t + 2 * MIN, { what: 'dead again, twice as long' });
      h.relay.poke();
      assert.equal(s.failedConnections, 3, 'only one probe');

      s.failConnections(0);
      h.clock.t += 2 * MIN;
      h.relay.poke();
      await waitFor(() => s.messages.length === 3, { what: 'probe delivered, destination resumed' });
      assert.equal(h.relay.status().dead.length, 0);
      // the two deferred by the failures go at their own time (5m after their attempt), not later
      h.clock.t += 2 * MIN;
      h.relay.poke();
      await waitFor(() => s.messages.length === 5);
      assert.equal(h.qm.depth('dead.test').deferred, 1, 'the probe that failed waits for its own retry');
      h.clock.t += 5 * MIN;
      h.relay.poke();
      await waitFor(() => s.messages.length === 6);
      await idle(h, 'dead.test');
    } finally {
      await h.stop();
    }
  });

  it('wakes every queue waiting on a destination when its probe resumes it', async () => {
    const s = await sink({ dataDelayMs: 300 }); // the probe takes its time: the other queues see it out
    const domains = ['p0.test', 'p1.test', 'p2.test', 'p3.test'];
    const h = await harness('gw-probe', {
      routes: Object.fromEntries(domains.map((d) => [d, `smtp://127.0.0.1:${s.port}`])),
      relay: { deadDestination: { failures: 2, suspend: '1m' }, retry: { schedule: ['30m'], jitter: 0 } },
    });
    try {
      s.failConnections(Infinity, '421');
      for (const d of domains) for (let i = 0; i < 3; i++) await h.append(d, [`r${i}@${d}`], `${d}-${i}`);
      const dest = `127.0.0.1:${s.port}`;
      await waitFor(() => h.relay.status().dead.some((x) => x.dest === dest) && domains.every((d) => h.qm.depth(d).inflight === 0), { what: 'dead' });
      s.failConnections(0);
      h.clock.t += MIN;
      h.relay.poke();
      // every queue drains (nothing ready, nothing in flight), not only the one whose message probed
      await waitFor(() => domains.every((d) => h.qm.depth(d).ready === 0 && h.qm.depth(d).inflight === 0), { what: 'every queue drained once the probe resumed the destination', timeout: 15_000 });
      const deferred = domains.reduce((n, d) => n + h.qm.depth(d).deferred, 0);
      assert.equal(s.messages.length + deferred, 12, `delivered ${s.messages.length}, deferred by the failed attempts before the suspension ${deferred}`);
      assert.equal(h.relay.status().dead.length, 0);
    } finally {
      await h.stop();
    }
  });

  it('routes by MX with fallback, caches answers for their TTL, uses the implicit MX, bounces a null MX', async () => {
    const s = await sink();
    const h = await harness('gw-mx', { relay: { mxPort: s.port } });
    try {
      const r = h.resolver;
      r.mx.set('mx.test', [{ exchange: 'mx2.mx.test', priority: 20 }, { exchange: 'mx1.mx.test', priority: 10 }]);
      r.a.set('mx1.mx.test', ['127.0.0.2']); // nothing listens there: refused, next MX
      r.a.set('mx2.mx.test', ['127.0.0.1']);
      r.a.set('amx.test', ['127.0.0.1']);
      r.mx.set('nullmx.test', [{ exchange: '', priority: 0 }]);
      await h.append('mx.test', ['a@mx.test'], 'mx-1');
      await h.append('amx.test', ['a@amx.test'], 'amx-1');
      const nid = await h.append('nullmx.test', ['a@nullmx.test'], 'nullmx-1', 'nullmx@src.test');
      const xid = await h.append('nx.test', ['a@nx.test'], 'nx-1', 'nx@src.test');
      await waitFor(() => s.messages.length === 2, { what: 'mx and implicit mx delivered' });
      await idle(h, 'nullmx.test');
      await idle(h, 'nx.test');
      assert.deepEqual(await h.kinds('nullmx.test', nid), ['accepted', 'attempted', 'bounced']);
      assert.deepEqual(await h.kinds('nx.test', xid), ['accepted', 'attempted', 'bounced']);
      await waitFor(() => dsnSink.to('nullmx@src.test').length === 1 && dsnSink.to('nx@src.test').length === 1);
      assert.match(dsnSink.to('nullmx@src.test')[0]!.raw.toString(), /Status: 5\.1\.10/);
      const mxCalls = () => r.calls.filter((c) => c === 'MX mx.test').length;
      assert.equal(mxCalls(), 1);
      await h.append('mx.test', ['b@mx.test'], 'mx-2');
      await waitFor(() => s.messages.length === 3);
      assert.equal(mxCalls(), 1, 'answered from the cache');
      h.clock.t += 61_000; // the addresses' TTL is 60 s
      await h.append('mx.test', ['c@mx.test'], 'mx-3');
      await waitFor(() => s.messages.length === 4);
      assert.equal(mxCalls(), 2, 'asked again after the TTL');
    } finally {
      await h.stop();
    }
  });

  it('hands `local` mail to the LocalDelivery, and defers it with a clear reason when there is none', async () => {
    const got: QueuedMessage[] = [];
    const local: LocalDelivery = {
      async deliver(msg) {
        got.push(msg);
        return msg.envelope.to.map((rcpt) => (rcpt.startsWith('nobody') ? { rcpt, status: 'bounced', code: 550, enhanced: '5.1.1', text: 'no such mailbox' } : { rcpt, status: 'delivered' }));
      },
    };
    const h = await harness('gw-local', { routes: { 'box.test': 'local' } }, { local });
    const h2 = await harness('gw-nolocal', { routes: { 'box.test': 'local' } });
    try {
      const id = await h.append('box.test', ['u@box.test', 'nobody@box.test'], 'local-1', 'loc@src.test');
      await idle(h, 'box.test');
      assert.deepEqual(got[0]!.envelope.to, ['u@box.test', 'nobody@box.test']);
      assert.deepEqual(await h.kinds('box.test', id), ['accepted', 'attempted', 'delivered']);
      await waitFor(() => dsnSink.to('loc@src.test').length === 1);
      const id2 = await h2.append('box.test', ['u@box.test'], 'local-2');
      await waitFor(() => h2.qm.depth('box.test').deferred === 1);
      const ev = (await h2.qm.history('box.test', id2)).find((e) => e.kind === 'deferred')!;
      assert.match(String((ev.details as { reply: string }).reply), /local delivery is not available/);
    } finally {
      await h.stop();
      await h2.stop();
    }
  });
});
