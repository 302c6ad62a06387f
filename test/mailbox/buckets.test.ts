// Bounded partitions: 20,000 messages for one user spread over buckets of about `bucketSize`
// rows, counted in Cassandra partition by partition; the mailbox still reads back whole and in order.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import cassandra from 'cassandra-driver';
import { BUCKET_OPEN_AHEAD_MS } from '../../src/mailbox/store.ts';
import { addUser, mailboxFixture, queued, rawMessage, type MailboxFixture } from './fixture.ts';

const TOTAL = 20_000;
const BUCKET = 5000;
const STEP_MS = 5; // accept times 5 ms apart on the injected clock
const CONCURRENCY = 64;

describe('mailbox partitions stay bounded', { timeout: 600_000 }, () => {
  let f: MailboxFixture;
  let clock = Date.UTC(2031, 0, 1);
  const user = 'heavy@bkt.test';

  before(async () => {
    f = await mailboxFixture('bkt', { cassandra: { bucketSize: BUCKET } }, { now: () => clock });
    await addUser(f.store, user);
  });
  after(async () => f?.close());

  test(`${TOTAL} messages for one user`, async (t) => {
    const raw = rawMessage('bulk', 'a small message\r\n');
    let next = 0;
    const t0 = Date.now();
    const worker = async () => {
      while (next < TOTAL) {
        next++;
        clock += STEP_MS;
        const res = await f.delivery.deliver(queued({ to: [user], raw, acceptedAt: clock }));
        assert.equal(res[0]!.status, 'delivered');
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    t.diagnostic(`${TOTAL} deliveries in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const buckets = await f.store.buckets(user, 'inbox');
    const counts: number[] = [];
    for (const b of buckets) {
      const rs = await f.store.client.execute(`SELECT COUNT(*) AS n FROM ${f.keyspace}.messages WHERE address = ? AND mailbox = ? AND bucket = ?`, [user, 'inbox', b], { prepare: true });
      counts.push((rs.first().get('n') as cassandra.types.Long).toNumber());
    }
    t.diagnostic(`rows per partition: ${counts.join(', ')}`);
    assert.equal(counts.reduce((a, b) => a + b, 0), TOTAL);
    // a bucket fills past bucketSize by what arrives before the next one opens: messages accepted
    // in the next BUCKET_OPEN_AHEAD_MS, and deliveries that start while the one that fills it is
    // under way: up to CONCURRENCY each while its count is read (the counter lags by what is in
    // flight), while it writes and counts, and while the next bucket is opened (a read and a write
    // that take about a delivery's time, or longer on a busy machine: a fourth CONCURRENCY)
    const slack = BUCKET_OPEN_AHEAD_MS / STEP_MS + 4 * CONCURRENCY;
    assert.ok(counts.length >= TOTAL / (BUCKET + slack), `at least ${Math.ceil(TOTAL / (BUCKET + slack))} partitions, got ${counts.length}`);
    for (const n of counts) assert.ok(n <= BUCKET + slack, `a partition holds ${n} rows, bound ${BUCKET + slack}`);

    // the mailbox reads back whole, oldest first, across partitions
    let count = 0;
    let last = -1;
    const seen = new Set<string>();
    for await (const ref of f.store.listMessages(user, 'inbox', 500)) {
      const at = cassandra.types.TimeUuid.fromString(ref.id).getDate().getTime();
      assert.ok(at >= last, 'ordered by accept time');
      last = at;
      seen.add(ref.id);
      count++;
    }
    assert.equal(count, TOTAL);
    assert.equal(seen.size, TOTAL);
  });
});
