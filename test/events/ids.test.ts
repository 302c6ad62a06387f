// Event ids are safe everywhere they travel: a queue whose domain is an address literal (the DSN
// to MAIL FROM:<x@[IPv6:2001:db8::1]>) once gave event ids with ":", which BullMQ refuses as job
// ids, and the publisher stopped for good (its start rejected). And one event the events queue
// cannot take is parked with its reason; it never blocks the events after it.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Queue as BullQueue } from 'bullmq';
import { Redis } from 'ioredis';
import { EventPublisher } from '../../src/events/publisher.ts';
import { normalizeAddress } from '../../src/ingress/smtp/policy.ts';
import { silentLogger } from '../../src/log.ts';
import { type LifecycleEvent } from '../../src/message/types.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { buildDsn } from '../../src/relay/dsn.ts';
import { testConfig } from '../helpers/config.ts';
import { startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { domainOfEventId, eventId, histIdOf } from '../../src/message/ids.ts';

const msg = (id: string, domain: string) => ({ id, domain, envelope: { from: 's@src.test', to: [`r@${domain}`] }, raw: Buffer.from(`Subject: ${id}\r\n\r\nx\r\n`) });

describe('event ids', () => {
  let pool: TestRedis[];
  let qm: QueueManager;
  let conn: Redis;
  let pub: EventPublisher | undefined;
  let bull: BullQueue;
  before(async () => {
    pool = await startRedisPool(3);
    qm = new QueueManager(testConfig({ redis: { nodes: pool.map((r) => r.url) } }), silentLogger, { gatewayId: 'gw1' });
    await qm.start();
    conn = new Redis(pool[0]!.url, { maxRetriesPerRequest: null });
    bull = new BullQueue('ids-events', { connection: conn });
  });
  after(async () => {
    await pub?.stop();
    await bull.close();
    conn.disconnect();
    await qm.stop();
    await Promise.all(pool.map((r) => r.stop()));
  });

  it('keeps a domain name as it is and percent-encodes the rest of a domain', () => {
    assert.equal(eventId('gw1', 'relay.example-1.test', '5-0'), 'gw1/relay.example-1.test/5-0');
    assert.equal(eventId('gw1', '[ipv6:2001:db8::1]', '5-0'), 'gw1/[ipv6%3A2001%3Adb8%3A%3A1]/5-0');
    assert.equal(eventId('gw1', 'a/b%c!', '5-0'), 'gw1/a%2Fb%25c%21/5-0');
  });

  it('reads the domain and the history id back from an event id', () => {
    for (const domain of ['relay.example-1.test', '[ipv6:2001:db8::1]', 'a/b%c!']) {
      const id = eventId('gw1-2', domain, '17-3');
      assert.equal(domainOfEventId(id), domain);
      assert.equal(histIdOf(id), '17-3');
    }
  });

  it('publishes the events of an address-literal queue (a DSN to [IPv6:…]) from the history at start and live', async () => {
    const sender = normalizeAddress('x@[IPv6:2001:db8::1]')!.address;
    const dsn = buildDsn({
      original: { id: 'M1', envelope: { from: sender, to: ['u@relay.test'] }, raw: Buffer.from('Subject: a\r\n\r\nb\r\n'), acceptedAt: Date.now(), queue: 'gw1:relay.test' },
      recipients: [{ rcpt: 'u@relay.test', action: 'failed', status: '5.1.1', diagnostic: '550 5.1.1 no', smtp: true, lastAttempt: Date.now() }],
      reportingMta: 'mx',
      now: Date.now(),
      tag: 'B1',
    })!;
    assert.match(dsn.domain, /:/);
    await qm.append(dsn);
    await qm.append(msg('plain-1', 'plain.test'));
    pub = new EventPublisher(qm, 'ids-events', conn, silentLogger);
    await pub.start(); // rejected before: "Custom Id cannot contain :"
    const literalId = (await qm.history(dsn.domain, dsn.id))[0]!.id;
    assert.doesNotMatch(literalId, /:/);
    const job = await bull.getJob(literalId);
    assert.ok(job, `job ${literalId} published`);
    assert.equal((job.data as LifecycleEvent).domain, dsn.domain, 'the event keeps the domain as it is');
    assert.equal((job.data as LifecycleEvent).messageId, dsn.id);
    assert.ok(await bull.getJob((await qm.history('plain.test', 'plain-1'))[0]!.id));
    // live events of that queue go out too
    await qm.append({ ...dsn, id: `${dsn.id}-2` });
    const [live] = await qm.history(dsn.domain, `${dsn.id}-2`);
    await waitFor(() => bull.getJob(live!.id), { what: 'live event of the literal queue published' });
    assert.equal(pub.parked, 0);
  });

  it('parks one event the events queue refuses, with its reason, and sends the ones around it', async () => {
    assert.ok(pub, 'the publisher of the test before');
    await qm.append(msg('around-1', 'plain.test'));
    // an event with a job id BullMQ refuses, between two good ones (as one written by an older version)
    const bad: LifecycleEvent = { id: 'gw1/old:style/1-0', queue: 'gw1:old:style', domain: 'old:style', kind: 'accepted', messageId: 'bad-1', txn: 1, at: Date.now(), details: {} };
    qm.emit('event', bad);
    await qm.append(msg('around-2', 'plain.test'));
    const ids = await Promise.all(['around-1', 'around-2'].map(async (m) => (await qm.history('plain.test', m))[0]!.id));
    for (const id of ids) await waitFor(() => bull.getJob(id), { what: `${id} published` });
    await waitFor(() => pub!.parked === 1, { what: 'the bad event parked' });
    const parked = await pub.parkedEvents();
    assert.equal(parked.length, 1);
    assert.equal(parked[0]!.id, bad.id);
    assert.match(parked[0]!.reason, /contains ":"/);
    assert.deepEqual(parked[0]!.event, bad);
    // the publisher goes on: later events are published too
    await qm.append(msg('around-3', 'plain.test'));
    const [ev3] = await qm.history('plain.test', 'around-3');
    await waitFor(() => bull.getJob(ev3!.id), { what: 'an event after the parked one published' });
    assert.equal(pub.budget().paused, false);
  });
});
