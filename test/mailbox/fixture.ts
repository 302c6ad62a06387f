// A mailbox store in its own keyspace on the test run's Cassandra node, and helpers to make users
// and queued messages. Each test file takes its own keyspace and drops it at the end.
import { randomBytes } from 'node:crypto';
import type { Config } from '../../src/config/schema.ts';
import { silentLogger } from '../../src/log.ts';
import { MailboxDelivery } from '../../src/mailbox/delivery.ts';
import { MailboxDirectory } from '../../src/mailbox/directory.ts';
import { MailStore, type MessageRef, type StoreOptions } from '../../src/mailbox/store.ts';
import { hashPassword } from '../../src/message/password.ts';
import { type QueuedMessage } from '../../src/message/types.ts';
import { cassandraForTests } from '../helpers/cassandra.ts';
import { testConfig } from '../helpers/config.ts';
import { newMessageId } from '../../src/message/ids.ts';

export interface MailboxFixture {
  config: Config;
  keyspace: string;
  contactPoint: string;
  store: MailStore;
  directory: MailboxDirectory;
  delivery: MailboxDelivery;
  /** A store on the same keyspace with other options (closed by close()). */
  another(config?: Config, opts?: StoreOptions): MailStore;
  close(): Promise<void>;
}

export async function mailboxFixture(name: string, overrides: Record<string, unknown> = {}, opts: StoreOptions = {}): Promise<MailboxFixture> {
  const node = await cassandraForTests();
  const keyspace = `sg_${name}_${randomBytes(3).toString('hex')}`;
  const { cassandra: cass, ...rest } = overrides as { cassandra?: Record<string, unknown> };
  const config = testConfig({ cassandra: { contactPoints: [node.contactPoint], keyspace, ...cass }, domains: { local: [`${name}.test`] }, ...rest });
  const store = new MailStore(config, silentLogger, opts);
  await store.connect();
  const directory = new MailboxDirectory(store, config);
  const delivery = new MailboxDelivery(store, directory, config, silentLogger);
  const others: MailStore[] = [];
  return {
    config,
    keyspace,
    contactPoint: node.contactPoint,
    store,
    directory,
    delivery,
    another(c = config, o = {}) {
      const s = new MailStore(c, silentLogger, o);
      others.push(s);
      return s;
    },
    async close() {
      await Promise.all(others.map((s) => s.close()));
      await store.client.execute(`DROP KEYSPACE IF EXISTS ${keyspace}`).catch(() => {});
      await store.close();
    },
  };
}

let cachedHash: { password: string; hash: Promise<string> } | undefined;
/** Creates a user (the scrypt hash of one password is computed once per process). */
export async function addUser(store: MailStore, address: string, password = 'secret-pw', quota = 0): Promise<void> {
  if (cachedHash?.password !== password) cachedHash = { password, hash: hashPassword(password) };
  await store.createUser(address, await cachedHash.hash, quota);
}

export function rawMessage(subject: string, body: string, from = 'sender@remote.test', to = 'rcpt@local.test'): Buffer {
  return Buffer.from(`From: ${from}\r\nTo: ${to}\r\nSubject: ${subject}\r\nMessage-ID: <${randomBytes(8).toString('hex')}@test>\r\n\r\n${body}`);
}

export function queued(m: { from?: string; to: string[]; raw: Buffer; id?: string; acceptedAt?: number; meta?: Record<string, unknown> }): QueuedMessage {
  const acceptedAt = m.acceptedAt ?? Date.now();
  const id = m.id ?? newMessageId(acceptedAt);
  const domain = m.to[0]!.slice(m.to[0]!.lastIndexOf('@') + 1);
  return { queue: `q:${domain}`, domain, id, entryId: '1-0', attempt: 1, envelope: { from: m.from ?? 'sender@remote.test', to: m.to }, raw: m.raw, meta: m.meta ?? {}, acceptedAt };
}

/** Every message ref a listing yields. */
export async function all(gen: AsyncIterable<MessageRef>): Promise<MessageRef[]> {
  const out: MessageRef[] = [];
  for await (const r of gen) out.push(r);
  return out;
}
