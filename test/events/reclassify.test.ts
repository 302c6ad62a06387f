// Re-classification through the installed command: `streamgate bounces reclassify --since TIME
// [--rules FILE]` runs the bounce rules again over the replies a whole gateway recorded in the
// event log (a real SMTP sink answering 5xx to some recipients) and prints what would change,
// per reply and counted per change, writing nothing. A bad rules file gets a precise error and
// changes nothing.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { EventLog } from '../../src/events/archive.ts';
import type { LifecycleEvent } from '../../src/message/types.ts';
import { runCli } from '../helpers/cli.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { waitFor } from '../helpers/waitFor.ts';

describe('bounces reclassify: the rules again over past replies', () => {
  let t: TestGateway;
  let dir: string;
  let file: string;
  const finals: LifecycleEvent[] = [];
  const rcpts = ['ok1', 'ok2', 'gone', 'quota1', 'quota2', 'policy1', 'policy2', 'policy3'].map((l) => `${l}@remote.test`);
  before(async () => {
    t = await startTestGateway('reclass', { domain: 'reclass.test', hostname: 'mx.reclass.test' });
    t.gw.queues.on('event', (ev: LifecycleEvent) => (ev.kind === 'delivered' || ev.kind === 'bounced') && finals.push(ev));
    t.sink.answer('gone@remote.test', { code: 550, text: '5.1.1 No such user' });
    for (const r of ['quota1', 'quota2']) t.sink.answer(`${r}@remote.test`, { code: 554, text: '5.2.2 Quota exceeded' });
    for (const r of ['policy1', 'policy2', 'policy3']) t.sink.answer(`${r}@remote.test`, { code: 550, text: '5.7.1 Not accepted here' });
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, ignoreTLS: true });
    try {
      // one recipient each, from a sender at the sink, so the bounces' DSNs are delivered there too
      for (const to of rcpts) await transport.sendMail({ envelope: { from: 'sender@remote.test', to: [to] }, raw: `Subject: to ${to}\r\n\r\nhello\r\n` });
    } finally {
      transport.close();
    }
    // 8 messages end (2 delivered, 6 bounced) and the 6 DSNs are delivered
    await waitFor(() => finals.length === 14, { timeout: 30_000, what: 'every message and DSN settled' });
    await t.gw.archive!.drain();
    dir = mkdtempSync(join(tmpdir(), 'sg-reclass-'));
    file = join(dir, 'c.yaml');
    writeFileSync(file, `gateway: { id: ${t.config.gateway.id} }\ncassandra: { contactPoints: ["${t.config.cassandra.contactPoints[0]}"], keyspace: ${t.config.cassandra.keyspace} }\n`);
  });
  after(async () => await t?.stop());

  const archivedCount = async () => {
    let n = 0;
    for await (const ev of new EventLog(t.store, t.config, t.config.gateway.id).eventsOf('remote.test', 0, Date.now() + 60_000)) n += ev ? 1 : 0;
    return n;
  };

  it('prints nothing to change under the rules the replies were classified with, and each change a new rules file makes, counted per change', async () => {
    const same = await runCli(['bounces', 'reclassify', '--since', '1h', '--config', file]);
    assert.equal(same.status, 0, same.stderr);
    assert.match(same.stdout, /^-- 0 of 14 replies in 14 attempts since .* would change class \(config\/bounces\.txt; dry run, nothing written\)$/m);

    const rules = join(dir, 'new-rules.txt');
    // replaces the configured rules: 5.2.2 on a 554 is a full mailbox too, 5.7.1 a policy refusal; no unknown-user rule
    writeFileSync(rules, '# fixed rules\ndeferred  mailbox-full  ^55[24] 5\\.2\\.2\\b\nbounced   policy        ^550 5\\.7\\.1\\b\n');
    const before = await archivedCount();
    const r = await runCli(['bounces', 'reclassify', '--since', '1h', '--rules', rules, '--config', file]);
    assert.equal(r.status, 0, r.stderr);
    const id = (rcpt: string) => finals.find((e) => e.kind === 'bounced' && (e.details.recipients as { rcpt: string }[])[0]!.rcpt === rcpt)!.messageId;
    for (const q of ['quota1', 'quota2']) assert.match(r.stdout, new RegExp(`^${id(`${q}@remote.test`)} ${q}@remote\\.test \\(remote\\.test, attempt 1, [^)]+\\): bounced/permanent → deferred/mailbox-full  "554 5\\.2\\.2 Quota exceeded"$`, 'm'));
    for (const p of ['policy1', 'policy2', 'policy3']) assert.match(r.stdout, new RegExp(`^${id(`${p}@remote.test`)} ${p}@remote\\.test .*: bounced/permanent → bounced/policy  "550 5\\.7\\.1 Not accepted here"$`, 'm'));
    assert.match(r.stdout, new RegExp(`^${id('gone@remote.test')} gone@remote\\.test .*: bounced/unknown-user → bounced/permanent  "550 5\\.1\\.1 No such user"$`, 'm'));
    assert.match(r.stdout, /^-- bounced\/permanent → bounced\/policy: 3$/m);
    assert.match(r.stdout, /^-- bounced\/permanent → deferred\/mailbox-full: 2$/m);
    assert.match(r.stdout, /^-- bounced\/unknown-user → bounced\/permanent: 1$/m);
    assert.match(r.stdout, /^-- 6 of 14 replies in 14 attempts since .* would change class \(.*new-rules\.txt; dry run, nothing written\)$/m);
    assert.equal(r.stdout.trim().split('\n').length, 6 + 3 + 1, 'one line per changed reply, one per change, the total');
    // --domain narrows it; --json gives the same
    const json = await runCli(['bounces', 'reclassify', '--since', '1h', '--rules', rules, '--domain', 'elsewhere.test', '--json', '--config', file]);
    assert.equal(json.status, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), { events: 0, replies: 0, counts: {}, changes: [] });
    assert.equal(await archivedCount(), before, 'nothing written to the event log');
  });

  it('a bad rules file, a missing one or --apply: a precise error, exit 2, nothing printed or written', async () => {
    const before = await archivedCount();
    const bad = join(dir, 'bad-rules.txt');
    writeFileSync(bad, 'deferred  mailbox-full  ^552 5\\.2\\.2\n bouncd  policy  ^550\n');
    const r1 = await runCli(['bounces', 'reclassify', '--since', '1h', '--rules', bad, '--config', file]);
    assert.equal(r1.status, 2);
    assert.equal(r1.stdout, '');
    assert.match(r1.stderr, new RegExp(`--rules: ${bad.replace(/[.]/g, '\\.')}:2: expected a class of delivered, deferred or bounced, got "bouncd"`));
    writeFileSync(bad, 'bounced  broken  ^550 (5\\.7\n');
    const r2 = await runCli(['bounces', 'reclassify', '--since', '1h', '--rules', bad, '--config', file]);
    assert.equal(r2.status, 2);
    assert.match(r2.stderr, /:1: expected a regular expression, got "\^550 \(5\\\\\.7" \(/);
    const r3 = await runCli(['bounces', 'reclassify', '--since', '1h', '--rules', join(dir, 'none.txt'), '--config', file]);
    assert.equal(r3.status, 2);
    assert.match(r3.stderr, /--rules: cannot read .*none\.txt \(ENOENT\)/);
    const r4 = await runCli(['bounces', 'reclassify', '--since', '1h', '--apply', '--config', file]);
    assert.equal(r4.status, 2);
    assert.match(r4.stderr, /bounces reclassify: --apply is not offered/);
    const r5 = await runCli(['bounces', 'reclassify', '--since', 'last week', '--config', file]);
    assert.equal(r5.status, 2);
    assert.match(r5.stderr, /--since: expected a time like/);
    for (const r of [r2, r3, r4, r5]) assert.equal(r.stdout, '');
    assert.equal(await archivedCount(), before, 'nothing written');
  });
});
