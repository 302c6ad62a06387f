// A local delivery in a process of its own that dies (SIGKILL, by its own hand) the moment the
// message's body chunks are written and before its row is: a gateway crashing mid-delivery.
// Argument: JSON { contactPoint, keyspace, domain, chunkSize, msg: { id, acceptedAt, from, to, raw (base64), meta } }.
import { silentLogger } from '../../src/log.ts';
import { MailboxDelivery } from '../../src/mailbox/delivery.ts';
import { MailboxDirectory } from '../../src/mailbox/directory.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import { testConfig } from '../helpers/config.ts';
import { queued } from './fixture.ts';

interface Spec {
  contactPoint: string;
  keyspace: string;
  domain: string;
  chunkSize: string;
  msg: { id: string; acceptedAt: number; from: string; to: string[]; raw: string; meta: Record<string, unknown> };
}

const spec = JSON.parse(process.argv[2]!) as Spec;
const config = testConfig({ cassandra: { contactPoints: [spec.contactPoint], keyspace: spec.keyspace, chunkSize: spec.chunkSize }, domains: { local: [spec.domain] } });
const store = new MailStore(config, silentLogger, { autoSchema: false, afterBody: () => void process.kill(process.pid, 'SIGKILL') });
const delivery = new MailboxDelivery(store, new MailboxDirectory(store, config), config, silentLogger);
const { raw, ...m } = spec.msg;
const res = await delivery.deliver(queued({ ...m, raw: Buffer.from(raw, 'base64') }));
// only reached when the delivery never wrote a body
process.stdout.write(`${JSON.stringify(res)}\n`);
await store.close();
