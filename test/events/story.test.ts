// One message's story whatever its age: `streamgate queue show ID` and GET /api/messages/:id read
// the event log's index (message id -> its queues and events), so a message whose events Redis
// trimmed long ago (queue.historyMaxLength 20 here) is still found, in every queue it went to.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import type { LifecycleEvent } from '../../src/message/types.ts';
import { runCli } from '../helpers/cli.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';

const TOKEN = 'story-test-token-0123456789';

describe('a message story from the event log', () => {
  let t: TestGateway;
  let file: string;
  const accepted: LifecycleEvent[] = [];
  before(async () => {
    t = await startTestGateway('story', { domain: 'story.test', hostname: 'mx.story.test', overrides: { ops: { listen: `127.0.0.1:${await freePort()}`, tokens: [TOKEN] }, queue: { historyMaxLength: 20 } } });
    t.gw.queues.on('event', (ev: LifecycleEvent) => ev.kind === 'accepted' && accepted.push(ev));
    file = join(mkdtempSync(join(tmpdir(), 'sg-story-')), 'c.yaml');
    writeFileSync(file, `ops: { listen: "127.0.0.1:${t.config.ops.listen.port}", tokens: ["${TOKEN}"] }\n`);
  });
  after(async () => await t?.stop());

  it('finds the first message after Redis trimmed its events, through the CLI and the API, and says when an id is unknown', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, ignoreTLS: true });
    try {
      await transport.sendMail({ envelope: { from: 'a@src.test', to: ['r0@remote.test'] }, raw: 'Subject: first\r\n\r\nfirst\r\n' });
      await waitFor(() => t.sink.messages.length === 1, { what: 'first delivered' });
      for (let i = 1; i <= 15; i++) await transport.sendMail({ envelope: { from: 'a@src.test', to: [`r${i}@remote.test`] }, raw: `Subject: m${i}\r\n\r\nx\r\n` });
      await waitFor(() => t.sink.messages.length === 16, { what: 'all delivered' });
    } finally {
      transport.close();
    }
    const first = accepted.find((e) => e.domain === 'remote.test')!;
    const q = t.gw.queues.queues.get('remote.test')!;
    const redis = t.pool.find((p) => q.replicas[0]!.node.is(new URL(p.url).host))!.client();
    await t.gw.archive!.drain();
    await waitFor(async () => (await redis.xlen(q.keys[1])) <= 20, { what: 'history cut to queue.historyMaxLength' });
    const inRedis = (await redis.xrange(q.keys[1], '-', '+')) as [string, string[]][];
    assert.ok(!inRedis.some(([, f]) => f.includes(first.messageId)), 'the first message is no longer in Redis');

    const shown = await runCli(['queue', 'show', first.messageId, '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(shown.status, 0, shown.stderr);
    const story = JSON.parse(shown.stdout) as { id: string; live: unknown[]; events: LifecycleEvent[] };
    assert.equal(story.id, first.messageId);
    assert.deepEqual(story.events.map((e) => [e.domain, e.kind]), [['remote.test', 'accepted'], ['remote.test', 'attempted'], ['remote.test', 'delivered']]);
    assert.equal(story.events[0]!.id, first.id);
    assert.deepEqual(story.live, []);

    const res = await fetch(`http://127.0.0.1:${t.config.ops.listen.port}/api/messages/${first.messageId}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 200);
    assert.deepEqual(((await res.json()) as typeof story).events, story.events);
    // the queue's own route answers from the index too
    const perQueue = await runCli(['queue', 'show', 'remote.test', first.messageId, '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(perQueue.status, 0, perQueue.stderr);
    assert.deepEqual((JSON.parse(perQueue.stdout) as typeof story).events.map((e) => e.kind), ['accepted', 'attempted', 'delivered']);

    const unknown = await runCli(['queue', 'show', 'NO-SUCH-MESSAGE', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /SG_ERR_NOT_FOUND: no message NO-SUCH-MESSAGE in the event log/);
  });

  it('undoes a purge within queue.purgeGrace through the CLI: the message is back under its id with its body, and every step is in its story', async () => {
    t.sink.answer('later@remote.test', { code: 451, text: '4.7.1 try later' });
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, ignoreTLS: true });
    try {
      await transport.sendMail({ envelope: { from: 'a@src.test', to: ['later@remote.test'] }, raw: 'Subject: keep me\r\n\r\nbody to keep\r\n' });
    } finally {
      transport.close();
    }
    const ev = accepted.at(-1)!;
    const q = t.gw.queues.queues.get('remote.test')!;
    await waitFor(() => q.get(ev.messageId)?.state === 'deferred', { what: 'deferred' });
    const before = (await q.peek(ev.messageId))!;
    const purged = await runCli(['queue', 'purge', 'remote.test', ev.messageId, '--reason', 'looked like spam', '--actor', 'carol', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(purged.status, 0, purged.stderr);
    assert.equal(q.get(ev.messageId), undefined, 'purged');
    const back = await runCli(['queue', 'unpurge', ev.messageId, '--reason', 'it was not', '--actor', 'carol', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(back.status, 0, back.stderr);
    assert.equal(back.stdout.trim(), `unpurge: remote.test ${ev.messageId}`);
    const after = await q.peek(ev.messageId);
    assert.ok(after, 'live again');
    assert.deepEqual(after.raw, before.raw);
    assert.deepEqual(after.envelope, before.envelope);
    const shown = JSON.parse((await runCli(['queue', 'show', ev.messageId, '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN })).stdout) as { events: LifecycleEvent[]; live: { domain: string }[] };
    const kinds = shown.events.map((e) => e.kind);
    const since = kinds.slice(kinds.indexOf('purged'));
    assert.deepEqual(since.slice(0, 2), ['purged', 'accepted'], kinds.join(' '));
    assert.ok(since.includes('unpurged'), kinds.join(' ')); // the relay may take it again in between
    const p = shown.events.find((e) => e.kind === 'purged')!.details;
    assert.equal(p.actor, 'carol');
    assert.equal(p.before, 'deferred');
    assert.ok(Number(p.undoUntil) > Date.now() + 6 * 86_400_000, 'undo possible for queue.purgeGrace (7d)');
    assert.deepEqual(shown.live.map((l) => l.domain), ['remote.test']);
    // once undone it is gone from the vault: a second unpurge is refused
    const again = await runCli(['queue', 'unpurge', ev.messageId, '--reason', 'twice', '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal(again.status, 1);
    assert.match(again.stderr, /SG_ERR_NOT_FOUND: no purged message/);
  });

  it('answers queue list --at and queue show --at from the log, as a recorded timeline says', async () => {
    const seen: LifecycleEvent[] = [];
    t.gw.queues.on('event', (ev: LifecycleEvent) => seen.push(ev));
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, ignoreTLS: true });
    try {
      await transport.sendMail({ envelope: { from: 'a@src.test', to: ['later@remote.test'] }, raw: 'Subject: timeline\r\n\r\nx\r\n' });
    } finally {
      transport.close();
    }
    const id = accepted.at(-1)!.messageId;
    const deferred = await waitFor(() => seen.find((e) => e.messageId === id && e.kind === 'deferred'), { what: 'deferred' });
    const ops = (args: string[]) => runCli([...args, '--config', file], { STREAMGATE_OPS_TOKEN: TOKEN });
    assert.equal((await ops(['queue', 'hold', 'remote.test', id, '--reason', 'check the sender'])).status, 0);
    const held = seen.find((e) => e.messageId === id && e.kind === 'held')!;
    assert.equal((await ops(['queue', 'purge', 'remote.test', id, '--reason', 'gone'])).status, 0);
    const purged = seen.find((e) => e.messageId === id && e.kind === 'purged')!;
    await t.gw.archive!.drain();
    type Past = { queues: { domain: string; messages: { id: string; s: string; a: number; n: number; last: { kind: string; at: number; reason?: string } }[] }[] };
    const at = async (ms: number) => {
      const r = await ops(['queue', 'list', '--at', new Date(ms).toISOString(), '--json']);
      assert.equal(r.status, 0, r.stderr);
      return (JSON.parse(r.stdout) as Past).queues.find((q) => q.domain === 'remote.test')?.messages.find((m) => m.id === id);
    };
    const acceptedMs = Number(accepted.at(-1)!.id.split('/').pop()!.split('-')[0]);
    assert.equal(await at(acceptedMs - 1), undefined, 'before it came');
    const d = (await at(deferred.at))!;
    assert.deepEqual([d.s, d.a, d.n, d.last.kind, d.last.reason], ['deferred', 1, deferred.details.nextAt, 'deferred', deferred.details.reply]);
    const h = (await at(held.at))!;
    assert.equal(h.s, 'held');
    assert.deepEqual([h.last.kind, h.last.reason], ['held', 'check the sender']);
    assert.equal(await at(purged.at), undefined, 'purged by then');
    const text = await ops(['queue', 'list', '--at', new Date(held.at).toISOString()]);
    assert.match(text.stdout, new RegExp(`^  ${id} held attempts \\d+ .*since .* \\(held: check the sender\\)$`, 'm'));
    const shown = await ops(['queue', 'show', id, '--at', new Date(held.at).toISOString()]);
    assert.equal(shown.status, 0, shown.stderr);
    const story = JSON.parse(shown.stdout) as { live: { domain: string; state: string }[]; events: LifecycleEvent[] };
    assert.deepEqual(story.live.map((l) => [l.domain, l.state]), [['remote.test', 'held']]);
    assert.equal(story.events.at(-1)!.kind, 'held');
    const bad = await ops(['queue', 'list', '--at', 'noon']);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /expected a time like "2026-11-29T10:00Z", got "noon"/);
  });
});
