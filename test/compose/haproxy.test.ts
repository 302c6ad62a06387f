// compose/haproxy/haproxy.cfg run for real in front of two gateway processes on loopback: the
// committed file with only its addresses changed (ports on 127.0.0.1 for Docker's names, no
// Docker DNS). SMTP through it reaches both gateways, each gateway sees the real client through
// the PROXY header (relaying is allowed to that client only), and a gateway whose door closes
// (its queues cannot be written: /health 503) leaves the rotation until it opens again.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildCli, install, ROOT, type Installed } from '../helpers/cli.ts';
import { gatewayCliConfig, startGatewayCli, type GatewayCli } from '../helpers/gatewayCli.ts';
import { RawClient } from '../helpers/ingress.ts';
import { startRedis, startRedisPool, type TestRedis } from '../helpers/redis.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';

const CLIENT = '127.0.0.2'; // the sender: trusted by the gateways; the balancer (127.0.0.1) is not

describe('HAProxy in front of the gateways', { timeout: 300_000 }, () => {
  let bin: Installed;
  let dir: string;
  let poolA: TestRedis[];
  let poolB: TestRedis[];
  let events: TestRedis;
  const gateways: GatewayCli[] = [];
  let haproxy: ChildProcess | undefined;
  let smtpFront: number;
  let health: { a: number; b: number };

  before(async () => {
    buildCli();
    bin = install('local');
    dir = mkdtempSync(join(tmpdir(), 'sg-haproxy-'));
    // gateway b on a pool of two nodes: one node lost and its queues cannot be written (door closed)
    [poolA, poolB, events] = await Promise.all([startRedisPool(3), startRedisPool(2), startRedis()]);
    const configs = [];
    for (const [name, pool] of [['a', poolA], ['b', poolB]] as const) {
      const file = join(dir, `${name}.yaml`);
      configs.push(
        await gatewayCliConfig(file, { poolUrls: pool.map((r) => r.url), eventsUrl: events.url, dataDir: join(dir, name) }, {
          gateway: { id: `gw-${name}`, hostname: `gw${name}.balanced.test` },
          smtp: { proxyProtocol: ['127.0.0.1'] },
          networks: { trusted: [`${CLIENT}/32`] },
          queue: { heartbeat: { every: '200ms', missed: 3 } },
          routes: { '*': `smtp://127.0.0.1:${await freePort()}` }, // nobody answers: mail stays queued
        }),
      );
      gateways.push(await startGatewayCli(bin.bin, file));
    }
    const [a, b] = configs.map((c) => ({ smtp: Number(String(c.smtp!.listen).split(':')[1]), submission: Number(String(c.submission!.listen).split(':')[1]), ops: Number(String(c.ops!.listen).split(':')[1]) })) as [{ smtp: number; submission: number; ops: number }, { smtp: number; submission: number; ops: number }];
    health = { a: a.ops, b: b.ops };
    smtpFront = await freePort();
    // the committed file; only addresses change
    const cfg = readFileSync(join(ROOT, 'compose', 'haproxy', 'haproxy.cfg'), 'utf8')
      .replace(/\nresolvers docker\n(?:[ \t]+.*\n)+/, '\n')
      .replaceAll(' resolvers docker', '')
      .replace('bind :2525', `bind 127.0.0.1:${smtpFront}`)
      .replace('bind :2587', `bind 127.0.0.1:${await freePort()}`)
      .replace('bind :8404', `bind 127.0.0.1:${await freePort()}`)
      .replace('server gateway-1 gateway-1:2525', `server gateway-1 127.0.0.1:${a.smtp} check port ${a.ops}`)
      .replace('server gateway-2 gateway-2:2525', `server gateway-2 127.0.0.1:${b.smtp} check port ${b.ops}`)
      .replace('server gateway-1 gateway-1:2587', `server gateway-1 127.0.0.1:${a.submission} check port ${a.ops}`)
      .replace('server gateway-2 gateway-2:2587', `server gateway-2 127.0.0.1:${b.submission} check port ${b.ops}`);
    assert.doesNotMatch(cfg, /gateway-\d:|resolvers|bind :/, 'every address replaced');
    writeFileSync(join(dir, 'haproxy.cfg'), cfg);
    haproxy = spawn('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'ignore', 'inherit'] });
  });
  after(async () => {
    haproxy?.kill('SIGKILL');
    for (const g of gateways) await g.stop();
    await Promise.all([...poolA, ...poolB, events].map((r) => r.stop()));
    bin.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The gateway that greets a connection through the balancer, and its answer to a relay RCPT from CLIENT. */
  const through = async (): Promise<{ gateway: string; rcpt: number }> => {
    const c = await RawClient.openFrom(smtpFront, CLIENT);
    try {
      const greeting = await c.read();
      assert.equal(greeting?.code, 220, JSON.stringify(greeting));
      const gateway = /^(gw\w)\.balanced\.test/.exec(greeting.lines[0]!.slice(4))?.[1] ?? '?';
      assert.equal((await c.cmd('EHLO client.test')).code, 250);
      assert.equal((await c.cmd('MAIL FROM:<a@src.test>')).code, 250);
      const rcpt = (await c.cmd('RCPT TO:<b@far.example>')).code;
      await c.cmd('QUIT');
      return { gateway, rcpt };
    } finally {
      c.close();
    }
  };

  const rotation = async (n: number) => {
    const seen = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const { gateway, rcpt } = await through();
      assert.equal(rcpt, 250, `${gateway} relays for ${CLIENT}: it saw the client named by the PROXY header, not the balancer`);
      seen.set(gateway, (seen.get(gateway) ?? 0) + 1);
    }
    return seen;
  };

  it('balances SMTP over both gateways with the real client, and takes a gateway whose door closed out of rotation until it opens', async () => {
    // both in rotation once HAProxy's checks passed
    await waitFor(async () => (await rotation(4)).size === 2, { timeout: 30_000, what: 'both gateways in rotation' });

    // gateway b loses a node of its two: its queues cannot be written, its door closes
    poolB[1]!.kill('SIGSTOP');
    await waitFor(async () => (await fetch(`http://127.0.0.1:${health.b}/health`)).status === 503, { timeout: 20_000, what: "gateway b's /health at 503" });
    assert.equal((await fetch(`http://127.0.0.1:${health.a}/health`)).status, 200);
    // after HAProxy's failed checks, every connection goes to a
    await waitFor(async () => {
      const seen = await rotation(6);
      return seen.size === 1 && seen.has('gwa');
    }, { timeout: 30_000, what: 'only gateway a in rotation' });

    // the node answers again: the door opens and b is back in rotation
    poolB[1]!.kill('SIGCONT');
    await waitFor(async () => (await fetch(`http://127.0.0.1:${health.b}/health`)).status === 200, { timeout: 30_000, what: "gateway b's /health at 200 again" });
    await waitFor(async () => (await rotation(4)).has('gwb'), { timeout: 30_000, what: 'gateway b back in rotation' });
  });
});
