// A replica dies in the middle of a 5,000-message run: every message that got 250 is on the
// surviving replica, the door closes while the queue cannot be written and opens again by
// itself once the queue is rebuilt on the spare, and then every accepted message is there too
// and can be delivered.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import nodemailer from 'nodemailer';
import type { SmtpIngress } from '../../src/ingress/smtp/server.ts';
import { waitFor } from '../helpers/waitFor.ts';
import { RawClient, startHarness, startIngress, uniqueDomain, type Harness } from '../helpers/ingress.ts';

const TOTAL = 5000;

describe('SMTP ingress when a replica dies', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('failover', { rebuildAfter: '1s', heartbeat: { every: '200ms', missed: 3 }, timeout: '1s' });
  });
  after(async () => {
    await h.stop();
  });

  it(`SIGKILL of one replica during ${TOTAL} messages: no 250'd message is lost`, async (t) => {
    const domain = uniqueDomain('fo');
    const ing: SmtpIngress = await startIngress(h, { domains: { local: [], relay: [domain] }, networks: { trusted: [] } });
    const port = ing.address('mx').port;
    const doors: boolean[] = [];
    ing.on('door', (open: boolean) => doors.push(open));

    const accepted = new Map<string, number>(); // queue id -> sequence number
    const replies = new Map<string, number>(); // reply class seen -> count
    let killedAt = -1;
    let victimPort = -1;
    let refusedAtConnect = 0;
    const transport = nodemailer.createTransport({ pool: true, maxConnections: 6, maxMessages: Infinity, host: '127.0.0.1', port, ignoreTLS: true });
    let next = 0;
    const worker = async () => {
      for (let seq = next++; seq < TOTAL; seq = next++) {
        const size = seq % 10 < 7 ? 1024 : 10 * 1024;
        const raw = `Subject: m${seq}\r\nX-Seq: ${seq}\r\n\r\n${`${'x'.repeat(76)}\r\n`.repeat(Math.floor(size / 78))}`;
        for (let attempt = 0; ; attempt++) {
          try {
            const info = await transport.sendMail({ envelope: { from: 'load@src.test', to: [`r${seq}@${domain}`] }, raw });
            const id = /queued as (\S+)/.exec(info.response)![1]!;
            accepted.set(id, seq);
            break;
          } catch (err) {
            const e = err as { responseCode?: number; response?: string };
            const key = e.response?.slice(0, 9) ?? String((err as Error).message).slice(0, 30);
            replies.set(key, (replies.get(key) ?? 0) + 1);
            assert.ok(!e.responseCode || (e.responseCode >= 400 && e.responseCode < 500), `only temporary failures: ${e.response}`);
            assert.ok(attempt < 400, `message ${seq} still refused after ${attempt} attempts`);
            await sleep(25);
          }
        }
        if (accepted.size === 1500 && killedAt < 0) {
          killedAt = accepted.size;
          const q = h.qm.queues.get(domain)!;
          victimPort = Number(q.replicas[0]!.node.id.split(':').pop());
          h.pool.find((r) => r.port === victimPort)!.kill('SIGKILL');
          // while the queue cannot be written, a new connection is turned away
          void (async () => {
            await waitFor(() => !ing.doorOpen, { timeout: 5000, what: 'the door closes' });
            const c = await RawClient.open(port);
            const r = await c.read();
            c.close();
            if (r?.code === 421 && r.text.startsWith('4.3.2 ')) refusedAtConnect++;
          })();
        }
      }
    };
    const t0 = Date.now();
    await Promise.all(Array.from({ length: 6 }, () => worker()));
    transport.close();
    t.diagnostic(`${TOTAL} messages in ${Date.now() - t0} ms; refusals seen: ${JSON.stringify(Object.fromEntries(replies))}`);

    assert.equal(accepted.size, TOTAL);
    assert.ok(killedAt > 0);
    assert.ok(refusedAtConnect === 1, 'a connection made while the queue was not writable got 421 4.3.2');
    assert.deepEqual(doors.slice(0, 2), [false, true], 'the door closed and opened again by itself');

    const q = h.qm.queues.get(domain)!;
    await waitFor(() => q.whole, { timeout: 20_000, what: 'the queue is whole again' });
    const nodes = q.replicas.map((r) => r.node);
    assert.ok(!nodes.some((n) => n.id.endsWith(`:${victimPort}`)), 'rebuilt on the spare');
    const ids = [...accepted.keys()];
    for (const node of nodes) {
      const states = await node.client.hmget(q.keys[3], ...ids);
      const missing = ids.filter((_, i) => !states[i]);
      assert.deepEqual(missing, [], `every 250'd message is on ${node.id}`);
    }
    const [la, lb] = await Promise.all(nodes.map((n) => n.client.xlen(q.keys[0])));
    assert.equal(la, lb, 'both replicas hold the same entries');
    assert.equal(la, TOTAL, 'no copy of an append that was answered 451 stays in the queue');

    // delivery completes: take everything and settle it
    const delivered = new Set<string>();
    for (;;) {
      const batch = await h.qm.take(domain, 500);
      if (!batch.length) break;
      for (const m of batch) delivered.add(m.id);
      await Promise.all(batch.map((m) => h.qm.settle(domain, m.id, 'delivered', { reply: '250 test' })));
    }
    const notDelivered = ids.filter((id) => !delivered.has(id));
    assert.deepEqual(notDelivered, []);
    await h.pool.find((r) => r.port === victimPort)!.restart();
  });

  it('smtp.whenUnwritable: close stops listening while the queue cannot be written, and listens again by itself', async () => {
    await waitFor(() => h.qm.nodes.every((n) => n.up), { timeout: 10_000, what: 'all three nodes up' });
    const domain = uniqueDomain('door');
    const ing = await startIngress(h, { domains: { local: [], relay: [domain] }, networks: { trusted: [] }, smtp: { whenUnwritable: 'close' } });
    const port = ing.address('mx').port;
    const t = nodemailer.createTransport({ host: '127.0.0.1', port, ignoreTLS: true });
    await t.sendMail({ envelope: { from: 'a@src.test', to: [`x@${domain}`] }, raw: 'Subject: 1\r\n\r\nx\r\n' });
    const q = h.qm.queues.get(domain)!;
    const victim = Number(q.replicas[1]!.node.id.split(':').pop());
    h.pool.find((r) => r.port === victim)!.kill('SIGKILL');
    await waitFor(() => !ing.doorOpen, { timeout: 5000, what: 'the door closes' });
    await assert.rejects(RawClient.open(port), { code: 'ECONNREFUSED' });
    await waitFor(() => ing.doorOpen, { timeout: 20_000, what: 'the door opens again' });
    const info = await t.sendMail({ envelope: { from: 'a@src.test', to: [`x@${domain}`] }, raw: 'Subject: 2\r\n\r\nx\r\n' });
    t.close();
    assert.match(info.response, /^250 2\.0\.0/);
    assert.equal(q.depth.ready, 2);
  });
});
