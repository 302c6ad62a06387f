// Message bodies over POP3 as a real client reads them: curl's RETR and TOP give back the stored
// bytes exactly, with byte-stuffing right where a line starting with "." meets a chunk boundary
// (after a CRLF that ends a chunk, after a CR that ends one, a "." that ends one, a lone "."
// line); and TOP reads from Cassandra only the chunks its lines are in (counted on a TCP
// forwarder in front of the node), while TOP with a huge line count sends the whole message. A
// body with a chunk missing: -ERR before anything is sent when the first page lacks it; the
// connection closed without UPDATE when a later page does (the +OK is out by then).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import cassandra from 'cassandra-driver';
import { silentLogger } from '../../src/log.ts';
import { MailStore, type MessageRef } from '../../src/mailbox/store.ts';
import { Pop3Server } from '../../src/pop3/server.ts';
import { testConfig } from '../helpers/config.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';
import { addUser, all, mailboxFixture, queued, type MailboxFixture } from '../mailbox/fixture.ts';
import { TcpProxy } from '../mailbox/proxy.ts';
import { curl, Pop3Client } from './client.ts';

const D = 'body.test';
const CHUNK = 1024;
const FROM = 'sender@remote.test';


/**
 * A message whose stored form (with the lines delivery prepends for `to`) puts lines starting
 * with "." across the chunk boundaries in every way they can fall. Returns the raw message to
 * deliver and the offsets where those lines sit.
 */
function dottedAtBoundaries(to: string): { raw: Buffer; stored: Buffer } {
  const prefix = `Return-Path: <${FROM}>\r\nDelivered-To: ${to}\r\n`;
  let s = `${prefix}From: ${FROM}\r\nTo: ${to}\r\nSubject: dots at chunk boundaries\r\n\r\n`;
  /** Filler lines so that the text reaches `to` octets, ending with CRLF. */
  const pad = (to: number) => {
    while (to - s.length > 80) s += `${'y'.repeat(70)}\r\n`;
    const n = to - s.length - 2;
    if (n < 0) throw new Error(`cannot pad to ${to} from ${s.length}`);
    s += `${'z'.repeat(n)}\r\n`;
  };
  pad(2 * CHUNK); // chunk 1 ends with CRLF, chunk 2 starts with "."
  s += '.starts chunk 2\r\n';
  pad(4 * CHUNK + 1); // chunk 3 ends with CR, chunk 4 starts with LF "."
  s += '.after a CRLF split across chunks\r\n';
  pad(6 * CHUNK - 1); // the "." is the last octet of chunk 5
  s += '.ends chunk 5 and the line goes on\r\n';
  pad(8 * CHUNK); // a line of a single "." starts chunk 8
  s += '.\r\n..two\r\n...three\r\n';
  pad(10 * CHUNK - 3); // chunk 9 ends with "\r\n." and the next starts with "\r\n"
  s += '.\r\nlast line\r\n';
  const stored = Buffer.from(s, 'latin1');
  return { raw: stored.subarray(prefix.length), stored };
}

describe('pop3 bodies', { timeout: 180_000 }, () => {
  let f: MailboxFixture;
  let server: Pop3Server;
  let refs: MessageRef[] = [];
  let stored: Buffer[] = [];
  const anne = `anne@${D}`;

  before(async () => {
    f = await mailboxFixture('body', { cassandra: { chunkSize: CHUNK } });
    await addUser(f.store, anne, 'anne-pw');
    const m = dottedAtBoundaries(anne);
    await f.delivery.deliver(queued({ from: FROM, to: [anne], raw: m.raw }));
    refs = await all(f.store.listMessages(anne, 'inbox', 100));
    stored = await Promise.all(refs.map((r) => f.store.readWholeBody(r)));
    assert.ok(stored[0]!.equals(m.stored), 'stored as built: the boundaries fall where intended');
    server = new Pop3Server({ config: testConfig({ cassandra: f.config.cassandra, pop3: { listen: '127.0.0.1:0', auth: { delay: '0s' } } }), store: f.store, directory: f.directory, log: silentLogger, tls: undefined });
    await server.listen();
  });
  after(async () => {
    await server?.stop();
    await f?.close();
  });

  const url = (path = '') => `pop3://127.0.0.1:${server.address.port}/${path}`;

  test('curl RETR gets the message byte for byte, dots at every chunk boundary included', async () => {
    const r = await curl(['-u', `${anne}:anne-pw`, url('1')]);
    assert.equal(r.code, 0, r.err);
    assert.ok(r.out.equals(stored[0]!), `RETR: ${r.out.length} octets, ${stored[0]!.length} stored`);
  });

  test('curl TOP with a huge line count gets the whole message; TOP 3 the header and three lines', async () => {
    const whole = await curl(['-u', `${anne}:anne-pw`, '-X', 'TOP 1 999999999', url()]);
    assert.equal(whole.code, 0, whole.err);
    assert.ok(whole.out.equals(stored[0]!), `TOP: ${whole.out.length} octets, ${stored[0]!.length} stored`);
    const three = await curl(['-u', `${anne}:anne-pw`, '-X', 'TOP 1 3', url()]);
    assert.equal(three.code, 0, three.err);
    const text = stored[0]!.toString('latin1');
    const head = text.slice(0, text.indexOf('\r\n\r\n') + 4);
    const body = text.slice(head.length).split('\r\n').slice(0, 3).join('\r\n');
    assert.equal(three.out.toString('latin1'), `${head}${body}\r\n`);
  });

  /**
   * A POP3 server over a store in 64 KB chunks whose Cassandra connection goes through a forwarder
   * that counts what the node sends (proxy.down); `deliver` stores a message for `to` through it.
   */
  async function proxied(): Promise<{ proxy: TcpProxy; pop: Pop3Server; deliver: (to: string, raw: Buffer) => Promise<void>; close: () => Promise<void> }> {
    const node = f.contactPoint.split(':');
    const proxy = new TcpProxy(await freePort(), { host: node[0]!, port: Number(node[1]) });
    await proxy.open();
    const config = testConfig({ cassandra: { ...f.config.cassandra, contactPoints: [proxy.address], chunkSize: '64KB' }, pop3: { listen: '127.0.0.1:0', auth: { delay: '0s' } } });
    const store = new MailStore(config, silentLogger);
    const pop = new Pop3Server({ config, store, directory: f.directory, log: silentLogger, tls: undefined });
    await store.connect();
    const delivery = new (await import('../../src/mailbox/delivery.ts')).MailboxDelivery(store, f.directory, config, silentLogger);
    await pop.listen();
    return {
      proxy,
      pop,
      deliver: async (to, raw) => assert.equal((await delivery.deliver(queued({ from: FROM, to: [to], raw })))[0]!.status, 'delivered'),
      close: async () => {
        await pop.stop();
        await store.close();
        await proxy.close();
      },
    };
  }

  test('TOP reads only the chunks its lines are in', async () => {
    // a 2 MB message in 64 KB chunks, read through a forwarder that counts what Cassandra sends
    const p = await proxied();
    const bob = `bob@${D}`;
    await addUser(f.store, bob, 'bob-pw');
    const line = `${'0123456789'.repeat(7)}\r\n`;
    const big = Buffer.from(`From: ${FROM}\r\nSubject: big\r\n\r\n${line.repeat(Math.ceil((2 * 1024 * 1024) / line.length))}`);
    try {
      await p.deliver(bob, big);
      const c = await Pop3Client.connect(p.pop.address.port);
      assert.match(await c.login(bob, 'bob-pw'), /^\+OK/);
      const before = p.proxy.down;
      const top = await c.multi('TOP 1 5');
      const read = p.proxy.down - before;
      assert.equal(top.lines.length, 4 + 1 + 5, 'the four header lines, the blank line and five body lines');
      assert.ok(read < 100 * 1024, `TOP 1 5 read ${read} octets from Cassandra: the first 64 KB chunk, not more`);
      const all2 = await c.multi('TOP 1 999999999');
      const size = (await c.command('LIST 1')).split(' ')[2];
      assert.equal(String(all2.data.length), size, 'TOP with a huge count sends the whole message');
      await c.quit();
    } finally {
      await p.close();
    }
  });

  test('RETR reads the next messages ahead, 2 MB of them at most, and each body is its own in any order, deleted ones left out', async () => {
    // six messages of about 900 KB: after RETR 1 the two after it are read ahead (a third would
    // pass 2 MB), so Cassandra has sent about three messages, not six
    const p = await proxied();
    const dora = `dora@${D}`;
    await addUser(f.store, dora, 'dora-pw');
    const KB900 = 900 * 1024;
    try {
      for (let i = 1; i <= 6; i++) {
        const line = `message ${i} ${'abcdefghij'.repeat(6)}\r\n.a dotted line of ${i}\r\n`;
        await p.deliver(dora, Buffer.from(`From: ${FROM}\r\nSubject: ahead ${i}\r\n\r\n${line.repeat(Math.floor(KB900 / line.length))}`));
      }
      const refs6 = await all(f.store.listMessages(dora, 'inbox', 100));
      const bodies = await Promise.all(refs6.map((r) => f.store.readWholeBody(r)));
      const c = await Pop3Client.connect(p.pop.address.port);
      assert.match(await c.login(dora, 'dora-pw'), /^\+OK/);
      const retr = async (n: number) => {
        const r = await c.multi(`RETR ${n}`);
        assert.ok(r.data.equals(bodies[n - 1]!), `RETR ${n}: ${r.data.length} octets, message ${n} is ${bodies[n - 1]!.length}`);
      };
      const before = p.proxy.down;
      await retr(1);
      // the reads ahead finish on their own: what Cassandra sent, once it stops growing
      let read = -1;
      await waitFor(
        () => {
          const now = p.proxy.down - before;
          const still = now === read;
          read = now;
          return still;
        },
        { every: 300, what: 'the reads ahead to end' },
      );
      const size = bodies[0]!.length;
      assert.ok(read > 2.9 * size && read < 3.3 * size, `after RETR 1 Cassandra sent ${read} octets: message 1 and the two after it (${3 * size}), not all six (${6 * size})`);
      await retr(2);
      await retr(5); // a skip: the reads ahead start again after 5
      await retr(3); // back
      assert.match(await c.command('DELE 4'), /^\+OK/);
      assert.match(await c.command('RETR 4'), /^-ERR/);
      await retr(6);
      await retr(1);
      await c.quit();
    } finally {
      await p.close();
    }
  });

  test('a body with a chunk missing: -ERR when the first page lacks it, the connection closed without UPDATE when a later one does', async () => {
    const carol = `carol@${D}`;
    await addUser(f.store, carol, 'carol-pw');
    const line = `${'abcdefghij'.repeat(7)}\r\n`;
    // 300 KB in 1 KB chunks: two pages (RETR reads up to 256 chunks per query)
    const raw = (n: number) => Buffer.from(`From: ${FROM}\r\nSubject: damaged ${n}\r\n\r\n${line.repeat(Math.ceil((300 * 1024) / line.length))}`);
    for (const n of [1, 2]) assert.equal((await f.delivery.deliver(queued({ from: FROM, to: [carol], raw: raw(n) })))[0]!.status, 'delivered');
    const refs = await all(f.store.listMessages(carol, 'inbox', 100));
    assert.equal(refs.length, 2);
    assert.ok(refs.every((r) => r.chunks > 256), 'each body spans two pages');
    const whole = await f.store.readWholeBody(refs[1]!);
    const drop = (ref: MessageRef, chunk: number) =>
      f.store.client.execute(`DELETE FROM ${f.keyspace}.bodies WHERE id = ? AND chunk = ?`, [cassandra.types.TimeUuid.fromString(ref.id), chunk], { prepare: true });
    await drop(refs[0]!, 5);
    await drop(refs[1]!, 280);

    const c = await Pop3Client.connect(server.address.port);
    assert.match(await c.login(carol, 'carol-pw'), /^\+OK/);
    assert.equal(await c.command('RETR 1'), '-ERR [SYS/PERM] Message body is damaged.');
    assert.match(await c.command('STAT'), /^\+OK 2 /, 'the session goes on after the -ERR');
    assert.match(await c.command('DELE 1'), /^\+OK/);
    c.send('RETR 2');
    assert.equal(await c.line(), `+OK ${refs[1]!.size} octets`);
    await c.closed;
    const sent = c.pending;
    assert.ok(sent.length >= 256 * 1024 && sent.length < whole.length, `the first page went out (${sent.length} octets), not the whole body`);
    assert.ok(whole.subarray(0, 1000).equals(sent.subarray(0, 1000)), 'what went out is the start of the body');
    assert.equal(sent.indexOf('\r\n.\r\n'), -1, 'no end of the answer was sent');

    const again = await Pop3Client.connect(server.address.port);
    assert.match(await again.login(carol, 'carol-pw'), /^\+OK/);
    assert.match(await again.command('STAT'), /^\+OK 2 /, 'DELE 1 was not applied: the session ended without UPDATE');
    await again.quit();
  });
});
