// Behind a balancer: connections from an address in smtp.proxyProtocol open with a PROXY v1
// header, and the client it names, not the balancer, is the one the relay policy judges.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { validateConfig } from '../../src/config/load.ts';
import { RawClient, startHarness, startIngress, uniqueDomain, type Harness } from '../helpers/ingress.ts';

describe('PROXY protocol from a balancer', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness('proxy');
  });
  after(async () => {
    await h.stop();
  });

  /** RCPT to a foreign domain (relaying) on a connection that opens with `header`, if any. */
  const relayReply = async (port: number, header: string | undefined, from?: string) => {
    const c = from ? await RawClient.openFrom(port, from) : await RawClient.open(port);
    try {
      if (header) c.write(header);
      assert.equal((await c.read())?.code, 220);
      assert.equal((await c.cmd('EHLO client.test')).code, 250);
      assert.equal((await c.cmd('MAIL FROM:<a@src.test>')).code, 250);
      return await c.cmd(`RCPT TO:<b@${uniqueDomain('far')}>`);
    } finally {
      c.close();
    }
  };

  it("judges the client the header names: a trusted balancer's untrusted client may not relay, a trusted one may", async () => {
    const ing = await startIngress(h, { smtp: { proxyProtocol: ['127.0.0.1'] } });
    const port = ing.address('mx').port;
    const outside = await relayReply(port, 'PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n');
    assert.deepEqual([outside.code, outside.text.split(' ')[0]], [550, '5.7.1'], 'a client outside networks.trusted behind the balancer');
    const inside = await relayReply(port, 'PROXY TCP4 127.0.0.9 127.0.0.1 40000 25\r\n');
    assert.equal(inside.code, 250, 'a trusted client behind the balancer');
    // a peer that is not a listed balancer is taken as it comes: no header expected from it
    const direct = await relayReply(port, undefined, '127.0.0.2');
    assert.equal(direct.code, 250);
  });

  it('without smtp.proxyProtocol a PROXY line is no header: the balancer itself is the client', async () => {
    const ing = await startIngress(h);
    const c = await RawClient.open(ing.address('mx').port);
    try {
      assert.equal((await c.read())?.code, 220);
      assert.equal((await c.cmd('PROXY TCP4 203.0.113.9 127.0.0.1 40000 25')).code, 500);
    } finally {
      c.close();
    }
  });

  it('smtp.proxyProtocol takes addresses, not ranges', () => {
    assert.throws(() => validateConfig({ smtp: { proxyProtocol: ['10.0.0.0/8'] } }, 'c.yaml'), { message: 'c.yaml: smtp.proxyProtocol.0: expected an IP address such as "10.5.0.10" (no range), got "10.0.0.0/8"' });
  });
});
