// The client module and the examples against a real gateway (three Redis nodes, Cassandra, the
// SMTP sink behind remote.test): the billing producer and the notification consumer run as their
// users run them, `node examples/….ts`, in processes of their own.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { compareEvents, connect, eventSchema, SubmitError, type StreamgateClient, type StreamgateEvent } from '../../src/client/index.ts';
import { ROOT } from '../helpers/cli.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { waitFor } from '../helpers/waitFor.ts';

/** `node examples/<name> ...args`, killed after `ms`. */
function run(name: string, args: string[], env: Record<string, string>, ms = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'examples', name), ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
const lines = (out: string) => out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

describe('client module and examples against a real gateway', () => {
  let t: TestGateway;
  let redis: string;
  let client: StreamgateClient;
  const events: StreamgateEvent[] = [];

  before(async () => {
    t = await startTestGateway('client', { domain: 'local.client.test', hostname: 'mx.client.test' });
    redis = t.config.events.redis ?? t.config.redis.nodes[0]!.url;
    client = connect({ connection: redis });
  });
  after(async () => {
    await client?.close();
    await t?.stop();
  });

  it('the billing producer queues each invoice once, however often it runs, and refuses a bad one', async () => {
    const env = { STREAMGATE_REDIS: redis };
    const first = await run('billing-producer.ts', ['1001:anne@remote.test', '1002:bob@remote.test'], env);
    assert.equal(first.code, 0, first.stdout + first.stderr);
    const out = lines(first.stdout);
    assert.deepEqual(out, [
      { invoice: '1001', queued: [{ domain: 'remote.test', queue: out[0]!.queued && (out[0]!.queued as { queue: string }[])[0]!.queue, id: 'job-invoice-1001' }] },
      { invoice: '1002', queued: [{ domain: 'remote.test', queue: (out[1]!.queued as { queue: string }[])[0]!.queue, id: 'job-invoice-1002' }] },
    ]);
    await waitFor(() => t.sink.messages.length >= 2, { what: 'both invoices at the sink' });
    // run again (a billing service restarted mid-batch): the same copies, nothing mailed twice
    const again = await run('billing-producer.ts', ['1001:anne@remote.test', '1002:bob@remote.test'], env);
    assert.equal(again.code, 0, again.stdout + again.stderr);
    assert.deepEqual(lines(again.stdout), out);
    const bad = await run('billing-producer.ts', ['1003:not-an-address'], env);
    assert.equal(bad.code, 1);
    assert.deepEqual(lines(bad.stdout), [{ invoice: '1003', error: 'job invoice-1003: to.0: expected an e-mail address local@domain', refused: true }]);
    // everything the gateway queued for remote.test is delivered: nothing more can reach the sink
    await waitFor(() => {
      const d = t.gw.queues.depth('remote.test');
      return d.ready + d.deferred + d.inflight === 0;
    }, { what: 'remote.test drained' });
    const subjects = t.sink.messages.map((m) => /^Subject: (.*)\r$/m.exec(m.raw.toString())?.[1]).sort();
    assert.deepEqual(subjects, ['Invoice 1001', 'Invoice 1002']);
  });

  it('the notification consumer tells of each delivery once', async () => {
    const r = await run('notification-consumer.ts', ['--count', '2'], { STREAMGATE_REDIS: redis });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const notes = lines(r.stdout).sort((a, b) => String(a.messageId).localeCompare(String(b.messageId)));
    assert.deepEqual(notes.map((n) => [n.messageId, n.outcome]), [['job-invoice-1001', 'delivered'], ['job-invoice-1002', 'delivered']]);
    assert.deepEqual((notes[0]!.recipients as { rcpt: string; status: string }[]).map((x) => [x.rcpt, x.status]), [['anne@remote.test', 'delivered']]);
  });

  it('submit() resolves to the copies per domain and rejects with the gateway\'s own reason', async () => {
    const res = await client.submit({ from: 'billing@src.test', to: ['a@remote.test', 'nobody@local.client.test', 'c@remote.test'], raw: 'Subject: two domains\n\nhi\n' }, { id: 'multi-1', timeout: 20_000 });
    assert.deepEqual(res.queued.map((q) => [q.domain, q.id]).sort(), [['local.client.test', 'job-multi-1'], ['remote.test', 'job-multi-1']]);
    // passes the schema, fails the gateway's hygiene: refused by the gateway, not retried
    await assert.rejects(client.submit({ from: '', to: ['a@remote.test'], raw: 'Subject: x\n\na\u0000b\n' }, { id: 'nul-1', timeout: 20_000 }), (err: unknown) => {
      assert.ok(err instanceof SubmitError);
      assert.equal(err.refused, true);
      assert.match(err.reason, /^job nul-1: .*NUL byte/);
      return true;
    });
    // a limit of the gateway's configuration (smtp.maxRecipients)
    const many = Array.from({ length: t.config.smtp.maxRecipients + 1 }, (_, i) => `r${i}@remote.test`);
    await assert.rejects(client.submit({ from: '', to: many, raw: 'Subject: x\n\nx\n' }, { id: 'many-1', timeout: 20_000 }), /job many-1: to: at most \d+ recipients/);
    await assert.rejects(client.submit({ from: '', to: ['a@remote.test'], raw: 'x' }, { id: 'bad:id' }), /job id: expected 1 to 190/);
  });

  it('onEvent() hands over typed events of the chosen kinds, valid against the event schema, in queue order', async () => {
    const consumer = client.onEvent((ev) => void events.push(ev));
    const final = (domain: string, kind: string) => events.some((e) => e.messageId === 'job-multi-1' && e.domain === domain && e.kind === kind);
    try {
      await waitFor(() => final('remote.test', 'delivered') && final('local.client.test', 'bounced'), { timeout: 30_000, what: 'delivered and bounced events' });
    } finally {
      await consumer.close();
    }
    for (const e of events) assert.equal(eventSchema.safeParse(e).success, true);
    const mine = events.filter((e) => e.messageId === 'job-multi-1' && e.domain === 'remote.test').sort(compareEvents);
    assert.deepEqual(mine.map((e) => e.kind), ['accepted', 'attempted', 'delivered']);
    const accepted = mine[0]!;
    assert.ok(accepted.kind === 'accepted');
    assert.deepEqual(accepted.details.envelope, { from: 'billing@src.test', to: ['a@remote.test', 'c@remote.test'] });
    assert.equal(accepted.details.source, 'producer');
    assert.match(accepted.id, /^[^/]+\/remote\.test\/\d+-\d+$/);
    const bounced = events.find((e) => e.messageId === 'job-multi-1' && e.kind === 'bounced')!;
    assert.ok(bounced.kind === 'bounced');
    assert.deepEqual(bounced.details.recipients.map((r) => [r.rcpt, r.status, r.enhanced]), [['nobody@local.client.test', 'bounced', '5.1.1']]);
    // nothing the gateway published failed the client's schema
    const conn = new Redis(redis, { maxRetriesPerRequest: null });
    const q = new Queue(t.config.events.queue, { connection: conn });
    const failed = await q.getFailed();
    await q.close();
    conn.disconnect(); // a connection given to BullMQ stays open after close()
    assert.deepEqual(failed.map((j) => j.failedReason), []);
  });

  it('onEvent() with kinds and from: only what was asked for reaches the handler', async () => {
    await client.submit({ from: '', to: ['old@remote.test'], raw: 'Subject: old\n\nx\n' }, { id: 'before-from' });
    await new Promise((r) => setTimeout(r, 20));
    const since = Date.now();
    const got: StreamgateEvent[] = [];
    const consumer = client.onEvent((ev) => void got.push(ev), { kinds: ['accepted'], from: since });
    try {
      await client.submit({ from: '', to: ['new@remote.test'], raw: 'Subject: new\n\nx\n' }, { id: 'after-from' });
      await waitFor(() => got.length >= 1, { timeout: 20_000, what: 'accepted event' });
      await new Promise((r) => setTimeout(r, 1500)); // the rest of this message's events go by
    } finally {
      await consumer.close();
    }
    assert.deepEqual(got.map((e) => [e.kind, e.messageId]), [['accepted', 'job-after-from']]);
    assert.ok(got[0]!.at >= since);
  });
});
