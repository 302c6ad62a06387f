// Cassandra unreachable: local delivery throws (the relay defers, nothing is dropped), and the same
// message is delivered once Cassandra answers again; a gateway that starts while Cassandra is
// down starts anyway. The node sits behind a TCP forwarder that the test closes and reopens.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { MailboxError } from '../../src/mailbox/client.ts';
import { MailboxDelivery } from '../../src/mailbox/delivery.ts';
import { MailboxDirectory } from '../../src/mailbox/directory.ts';
import { startMailbox } from '../../src/mailbox/service.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import { cassandraForTests } from '../helpers/cassandra.ts';
import { testConfig } from '../helpers/config.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';
import { Pop3Client } from '../pop3/client.ts';
import { addUser, mailboxFixture, queued, rawMessage, type MailboxFixture } from './fixture.ts';

const isUnavailable = (e: unknown) => e instanceof MailboxError && e.code === 'STORE_UNAVAILABLE';

describe('cassandra unreachable', { timeout: 180_000 }, () => {
  let f: MailboxFixture;
  let proxy: import('./proxy.ts').TcpProxy;
  const D = 'out.test';

  before(async () => {
    f = await mailboxFixture('out');
    await addUser(f.store, `anne@${D}`, 'pw-anne');
    const node = await cassandraForTests();
    const { TcpProxy } = await import('./proxy.ts');
    proxy = new TcpProxy(await freePort(), { host: node.host, port: node.port });
  });
  after(async () => {
    await proxy?.close();
    await f?.close();
  });

  test('delivery throws while Cassandra is unreachable and succeeds once it answers', async () => {
    const config = { ...f.config, cassandra: { ...f.config.cassandra, contactPoints: [proxy.address] } };
    const store = new MailStore(config, silentLogger, { connectTimeoutMs: 1000, readTimeoutMs: 3000 });
    try {
      const delivery = new MailboxDelivery(store, new MailboxDirectory(store, config), config, silentLogger);
      const msg = queued({ to: [`anne@${D}`], raw: rawMessage('outage', 'kept until Cassandra answers\r\n') });

      // never connected: the store cannot even start
      await assert.rejects(delivery.deliver(msg), isUnavailable);
      await proxy.open();
      const res = await waitFor(() => delivery.deliver(msg), { timeout: 30_000, what: 'delivery after Cassandra is back' });
      assert.equal(res[0]!.status, 'delivered');

      // connected, then Cassandra goes away: the next message throws, and is delivered later
      await proxy.close();
      const second = queued({ to: [`anne@${D}`], raw: rawMessage('outage 2', 'second\r\n') });
      await assert.rejects(delivery.deliver(second), isUnavailable);
      await proxy.open();
      const res2 = await waitFor(() => delivery.deliver(second), { timeout: 30_000, what: 'delivery after reconnect' });
      assert.equal(res2[0]!.status, 'delivered');

      const list = [];
      for await (const r of f.store.listMessages(`anne@${D}`, 'inbox', 100)) list.push(r);
      assert.equal(list.length, 2, 'each message exactly once');
    } finally {
      await store.close();
      await proxy.close();
    }
  });

  test('the mailbox part starts while Cassandra is down; POP3 answers [SYS/TEMP], then works', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'sg-out-'));
    const config = testConfig({
      cassandra: { contactPoints: [proxy.address], keyspace: f.keyspace },
      pop3: { listen: `127.0.0.1:${await freePort()}`, auth: { delay: '0s' } },
      gateway: { dataDir },
    });
    const svc = await startMailbox(config, silentLogger);
    try {
      const c = await Pop3Client.connect(svc.pop3.address.port);
      assert.match(await c.login(`anne@${D}`, 'pw-anne'), /^-ERR \[SYS\/TEMP\]/);
      await assert.rejects(svc.localDelivery.deliver(queued({ to: [`anne@${D}`], raw: rawMessage('x', 'y\r\n') })), isUnavailable);
      await assert.rejects(svc.users.exists(`anne@${D}`), isUnavailable);
      await proxy.open();
      await waitFor(() => svc.store.ready, { timeout: 30_000, what: 'store ready' });
      assert.match(await c.login(`anne@${D}`, 'pw-anne'), /^\+OK Logged in: 2 messages/);
      assert.equal(await svc.users.exists(`anne@${D}`), true);
      await c.quit();
    } finally {
      await svc.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  test('a POP3 mailbox lock whose reply never came is given back, not held for its lease', async () => {
    const config = { ...f.config, cassandra: { ...f.config.cassandra, contactPoints: [proxy.address] } };
    const store = new MailStore(config, silentLogger, { connectTimeoutMs: 1000, readTimeoutMs: 2000 });
    const user = `anne@${D}`;
    const lease = 300_000;
    await proxy.open();
    try {
      await waitFor(() => store.connect().then(() => true), { timeout: 30_000, what: 'store through the proxy' });
      // both statements prepared first, so that what the proxy holds back is the lock's own reply
      assert.equal(await store.acquireLock(user, 'warm-up', 'w', lease), true);
      await store.releaseLock(user, 'warm-up', 'w');

      // the node applies INSERT ... IF NOT EXISTS; its reply comes after the session gave up
      proxy.hold();
      await assert.rejects(store.acquireLock(user, 'inbox', 'lost-reply', lease), isUnavailable);
      proxy.pass();
      assert.equal(await f.store.acquireLock(user, 'inbox', 'next', lease), false, 'the lock was taken all the same');
      await waitFor(() => f.store.acquireLock(user, 'inbox', 'next', lease), { timeout: 15_000, what: 'the lock given back' });
      await f.store.releaseLock(user, 'inbox', 'next');

      // a release whose reply never comes: retried until it is gone
      assert.equal(await store.acquireLock(user, 'inbox', 'second', lease), true);
      assert.equal(await store.acquireLock(user, 'inbox', 'second', lease), true, 'the holder taking it again keeps it');
      proxy.hold();
      await assert.rejects(store.releaseLock(user, 'inbox', 'second'), isUnavailable);
      proxy.pass();
      await waitFor(() => f.store.acquireLock(user, 'inbox', 'third', lease), { timeout: 15_000, what: 'the lock released by a retry' });
      await f.store.releaseLock(user, 'inbox', 'third');
    } finally {
      proxy.pass();
      await store.close();
      await proxy.close();
    }
  });
});
