// `streamgate sendmail` through the installed command, in a subprocess, against a whole gateway
// (real Redis nodes, Cassandra, an SMTP sink for a remote domain), read back with curl's POP3:
// the README's first example, -t with Bcc, -f and -F, the "." line and -i, sendmail's exit codes,
// a link named sendmail. The message parsing itself is checked directly at the end.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EX, exitCodeFor, parseSendmailArgs, prepareMessage, UsageError } from '../../src/cli/sendmail.ts';
import type { Config } from '../../src/config/schema.ts';
import { buildCli, install, runCommand, type Installed } from '../helpers/cli.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import type { SmtpSink } from '../helpers/smtpSink.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';
import { addUser } from '../mailbox/fixture.ts';

const D = 'sendmail.test';

function pop3(user: string, pw: string, port: number, path = ''): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '--max-time', '20', '-u', `${user}:${pw}`, `pop3://127.0.0.1:${port}/${path}`], (e, out, err) =>
      resolve({ code: e ? Number((e as { code?: number }).code ?? 1) : 0, out: `${out}${err}` }));
  });
}

describe('streamgate sendmail', { timeout: 180_000 }, () => {
  let t: TestGateway;
  let config: Config;
  let sink: SmtpSink;
  let dir: string;
  let file: string;
  let cmd: Installed;

  before(async () => {
    buildCli();
    cmd = install('local');
    t = await startTestGateway('sendmail', { domain: D, hostname: 'mx.sendmail.test' });
    ({ config, sink } = t);
    await addUser(t.store, `bob@${D}`, 'bob-pw');
    await addUser(t.store, `anne@${D}`, 'anne-pw');
    // what the command needs of the configuration: where the MX listener is, the local domain
    dir = mkdtempSync(join(tmpdir(), 'sg-sendmail-'));
    file = join(dir, 'streamgate.yaml');
    writeFileSync(file, `smtp: { listen: "${config.smtp.listen.host}:${config.smtp.listen.port}" }\ndomains: { local: [${D}] }\ngateway: { hostname: mx.sendmail.test }\n`);
  });
  after(async () => {
    await t?.stop();
    cmd?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const sendmail = (args: string[], input: string, env: NodeJS.ProcessEnv = {}) => runCommand(cmd.bin, ['sendmail', '-C', file, ...args], { input, env });
  const port = () => config.pop3.listen.port;
  /** The message in the sink whose Subject is `subject`. */
  const relayed = (subject: string) => waitFor(() => sink.messages.find((m) => m.raw.toString().includes(`\r\nSubject: ${subject}\r\n`)), { timeout: 30_000, what: `"${subject}" relayed` });

  test('the README\'s first example: a message on standard input to a local user, read over POP3', async () => {
    const r = await sendmail([`bob@${D}`], 'Subject: hi\n\nhello\n');
    assert.deepEqual(r, { code: 0, stdout: '', stderr: '' });
    await waitFor(async () => /^1 \d+/m.test((await pop3(`bob@${D}`, 'bob-pw', port())).out), { timeout: 30_000, what: 'delivered to bob' });
    const msg = (await pop3(`bob@${D}`, 'bob-pw', port(), '1')).out;
    assert.match(msg, /^Return-Path: <[^@>\s]+@sendmail\.test>\r\n/, 'the user at the first local domain');
    assert.match(msg, /\r\nSubject: hi\r\nFrom: [^@\s]+@sendmail\.test\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\nMessage-ID: <[^@>]+@mx\.sendmail\.test>\r\n\r\nhello\r\n$/);
  });

  test('-t takes the recipients from To, Cc and Bcc and removes Bcc; -f and -F set the sender', async () => {
    const input = `To: Bob <bob@${D}>\nCc: carol@remote.test\nBcc: anne\nSubject: by -t\n\nto three\n`;
    const r = await sendmail(['-t', '-f', 'sam@remote.test', '-F', 'Sam Sender'], input);
    assert.deepEqual(r, { code: 0, stdout: '', stderr: '' });
    const carol = await relayed('by -t');
    assert.equal(carol.from, 'sam@remote.test');
    assert.deepEqual(carol.to, ['carol@remote.test']);
    const text = carol.raw.toString();
    assert.doesNotMatch(text, /^Bcc:/im);
    assert.match(text, /\r\nFrom: "Sam Sender" <sam@remote\.test>\r\n/);
    for (const [user, pw, n] of [[`anne@${D}`, 'anne-pw', '1'], [`bob@${D}`, 'bob-pw', '2']] as const) {
      await waitFor(async () => /\r\nSubject: by -t\r\n/.test((await pop3(user, pw, port(), n)).out), { timeout: 30_000, what: `${user} got it` });
    }
    assert.doesNotMatch((await pop3(`anne@${D}`, 'anne-pw', port(), '1')).out, /^Bcc:/im);
  });

  test('without -i a line "." ends the message; with -i or -oi it is text', async () => {
    for (const [flags, subject] of [[[], 'dot ends'], [['-i'], 'dot kept'], [['-oi'], 'dot kept too']] as const) {
      const r = await sendmail([...flags, 'carol@remote.test'], `Subject: ${subject}\n\nbefore\n.\nafter\n`);
      assert.equal(r.code, 0, r.stderr);
      const body = (await relayed(subject)).raw.toString().split('\r\n\r\n')[1];
      assert.equal(body, subject === 'dot ends' ? 'before\r\n' : 'before\r\n.\r\nafter\r\n');
    }
  });

  test('exit codes are sendmail\'s, with one line each: 67 unknown user, 64 usage, 75 no gateway, 78 configuration', async () => {
    const unknown = await sendmail([`nobody@${D}`], 'Subject: x\n\nx\n');
    assert.equal(unknown.code, EX.NOUSER);
    assert.match(unknown.stderr, /^streamgate sendmail: 550 5\.1\.1 [^\n]*\n$/);

    const partly = await sendmail([`nobody@${D}`, 'carol@remote.test'], 'Subject: partly\n\nx\n');
    assert.equal(partly.code, EX.NOUSER, 'a refused recipient is reported even when others got it');
    await relayed('partly');

    for (const args of [['-X'], ['-bp'], ['-f'], []]) {
      const r = await sendmail(args, 'x\n');
      assert.equal(r.code, EX.USAGE, args.join(' '));
      assert.match(r.stderr, /^streamgate sendmail: [^\n]*usage: streamgate sendmail [^\n]*\n$/);
    }

    const down = await sendmail(['carol@remote.test'], 'x\n', { STREAMGATE_SMTP__LISTEN: `127.0.0.1:${await freePort()}` });
    assert.equal(down.code, EX.TEMPFAIL);
    assert.match(down.stderr, /^streamgate sendmail: the gateway does not answer on 127\.0\.0\.1:\d+ [^\n]*\n$/);

    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'smtp: { listen: nowhere }\n');
    const conf = await runCommand(cmd.bin, ['sendmail', '-C', bad, 'carol@remote.test'], { input: 'x\n' });
    assert.equal(conf.code, EX.CONFIG);
    assert.match(conf.stderr, /^streamgate sendmail: .*bad\.yaml: smtp\.listen: expected "host:port"[^\n]*\n$/);

    const help = await runCommand(cmd.bin, ['sendmail', '--help']);
    assert.deepEqual([help.code, help.stderr], [0, '']);
    assert.match(help.stdout, /^usage: streamgate sendmail /);
  });

  test('a link named sendmail is `streamgate sendmail`, configured by STREAMGATE_CONFIG, as programs run it', async () => {
    const r = await runCommand(cmd.sendmail, ['-t', '-i'], { input: 'To: carol@remote.test\nSubject: as sendmail\n\nfrom a program\n', env: { STREAMGATE_CONFIG: file } });
    assert.deepEqual(r, { code: 0, stdout: '', stderr: '' });
    assert.match((await relayed('as sendmail')).raw.toString(), /\r\n\r\nfrom a program\r\n$/);
  });

  test('the parts: arguments, the prepared message, exit codes', () => {
    assert.deepEqual(parseSendmailArgs(['-oem', '-fa@x.test', '-FName', '-odi', '-t', '--', '-b@x.test']), { extract: true, ignoreDots: false, from: 'a@x.test', fullName: 'Name', recipients: ['-b@x.test'], help: false });
    assert.equal(parseSendmailArgs(['-f', '<>', 'a@x.test']).from, '');
    assert.throws(() => parseSendmailArgs(['-bs']), UsageError);
    const now = new Date(Date.UTC(2030, 0, 2, 3, 4, 5));
    const m = prepareMessage(Buffer.from('From: a@x.test\r\nTo: b@x.test,\r\n c@y.test\r\nBcc: d@z.test, dee\r\n\r\nbody\n'), { ignoreDots: false }, 'a@x.test', 'h.test', now);
    assert.deepEqual(m.headerRecipients, ['b@x.test', 'c@y.test', 'd@z.test', 'dee']);
    assert.match(m.raw.toString(), /^From: a@x\.test\r\nTo: b@x\.test,\r\n c@y\.test\r\nDate: Wed, 02 Jan 2030 03:04:05 \+0000\r\nMessage-ID: <[^>]+@h\.test>\r\n\r\nbody\r\n$/);
    // a first line that is not a header field begins the body
    assert.match(prepareMessage(Buffer.from('hello\n'), { ignoreDots: false }, '', 'h.test', now).raw.toString(), /^Date: [^\r]+\r\nMessage-ID: [^\r]+\r\n\r\nhello\r\n$/);
    assert.equal(exitCodeFor({ responseCode: 550, response: '550 5.7.1 relaying denied' }), EX.NOPERM);
    assert.equal(exitCodeFor({ responseCode: 554, response: '554 5.6.0 bare LF', command: 'DATA' }), EX.DATAERR);
    assert.equal(exitCodeFor({ responseCode: 452, response: '452 4.3.1 full' }), EX.TEMPFAIL);
  });
});
