// `streamgate top` as an operator runs it: in a terminal (tmux), against a whole gateway. It
// draws the queues sorted by depth, redraws in place as mail comes, sorts by age on `a`, and
// quits on `q` with status 0, leaving the terminal as it was.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { ROOT, runCli } from '../helpers/cli.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';

const TOKEN = 'top-token-0123456789abcdef';

describe('streamgate top in a terminal', () => {
  let t: TestGateway;
  let dir: string;
  const socket = `sg-top-${process.pid}`;
  const tmux = (...args: string[]) => execFileSync('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
  const screen = () => tmux('capture-pane', '-p', '-t', 'top');
  /** The queue names in the order the screen lists them. */
  const order = () => screen().split('\n').map((l) => /^(\S+\.top\.test)\s/.exec(l)?.[1]).filter(Boolean);

  before(async () => {
    t = await startTestGateway('top', { domain: 'top.test', hostname: 'mx.top.test', overrides: { ops: { listen: `127.0.0.1:${await freePort()}`, tokens: [TOKEN] } } });
    dir = mkdtempSync(join(tmpdir(), 'sg-top-'));
    writeFileSync(join(dir, 'streamgate.yaml'), `ops:\n  listen: "127.0.0.1:${t.config.ops.listen.port}"\n`);
    // b first and alone (the oldest), then three for a (the deepest); not due for an hour
    const later = Date.now() + 3_600_000;
    const add = (id: string, domain: string) => t.gw.queues.append({ id, domain, envelope: { from: 'a@src.test', to: [`x@${domain}`] }, raw: Buffer.from('Subject: top\r\n\r\nhi\r\n'), notBefore: later });
    await add('b1', 'b.top.test');
    await new Promise((r) => setTimeout(r, 1100)); // b's oldest message a second older than a's
    for (const id of ['a1', 'a2', 'a3']) await add(id, 'a.top.test');
  });
  after(async () => {
    spawnSync('tmux', ['-L', socket, 'kill-server']);
    await t?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('shows the queues by depth, follows the mail, sorts by age on a, quits on q', async () => {
    const status = join(dir, 'status');
    const cmd = `STREAMGATE_OPS_TOKEN=${TOKEN} '${process.execPath}' '${join(ROOT, 'src', 'cli', 'main.ts')}' top --config '${join(dir, 'streamgate.yaml')}'; echo $? > '${status}'`;
    tmux('new-session', '-d', '-s', 'top', '-x', '150', '-y', '40', 'sh', '-c', cmd);
    await waitFor(() => /streamgate top · gateway/.test(screen()), { what: 'top draws' });
    await waitFor(() => order().join(' ') === 'a.top.test b.top.test', { what: `sorted by depth:\n${screen()}` });
    assert.match(screen(), /a\.top\.test\s+0\s+3\s/);
    assert.match(screen(), /door open/);

    // a message over SMTP shows in the rates, redrawn in place (one header line, not two)
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, secure: false, ignoreTLS: true });
    await transport.sendMail({ envelope: { from: 'a@src.test', to: ['r@remote.test'] }, raw: 'Subject: top\r\n\r\nhello\r\n' });
    transport.close();
    await waitFor(() => /last minute: accepted [1-9]\d* · delivered 1 /.test(screen()), { what: 'the message in the rates' }).catch((err: Error) => assert.fail(`${err.message}\n${screen()}`));
    assert.equal(screen().match(/streamgate top · gateway/g)?.length, 1);

    tmux('send-keys', '-t', 'top', 'a');
    await waitFor(() => order().join(' ') === 'b.top.test a.top.test', { what: 'sorted by age' });
    assert.match(screen(), /sorted by age/);
    tmux('send-keys', '-t', 'top', 'd');
    await waitFor(() => order().join(' ') === 'a.top.test b.top.test', { what: 'sorted by depth again' });

    tmux('send-keys', '-t', 'top', 'q');
    await waitFor(() => existsSync(status) && readFileSync(status, 'utf8').trim() !== '', { what: 'top exits' });
    assert.equal(readFileSync(status, 'utf8').trim(), '0');
  });

  it('says why when it cannot connect, with status 1; a bad --sort is a usage error', async () => {
    const r = await runCli(['top', '--config', join(dir, 'streamgate.yaml'), '--token', 'wrong-token-0123456789']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /SG_ERR_UNAUTHORIZED/);
    const bad = await runCli(['top', '--config', join(dir, 'streamgate.yaml'), '--sort', 'size']);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--sort: expected depth or age, got "size"/);
  });
});
