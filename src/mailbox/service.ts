// The mailbox part of a gateway: the Cassandra store (connected, and the schema applied when
// missing, in the background until Cassandra answers), the user directory, local delivery and the
// POP3 listener. A gateway whose Cassandra is down still starts: local delivery throws (the relay
// defers mail for local domains), recipient checks answer from config.users or fail temporarily,
// POP3 logins get -ERR [SYS/TEMP], and all of it recovers once Cassandra answers.
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { loadTls } from '../access/tls.ts';
import { Pop3Server } from '../pop3/server.ts';
import { PoolState } from '../queue/poolState.ts';
import { MailboxDelivery } from './delivery.ts';
import { MailboxDirectory } from './directory.ts';
import { MailStore } from './store.ts';

export interface MailboxService {
  store: MailStore;
  users: MailboxDirectory;
  localDelivery: MailboxDelivery;
  pop3: Pop3Server;
  stop(): Promise<void>;
}

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30_000;

export async function startMailbox(config: Config, log: Logger): Promise<MailboxService> {
  const mlog = log.child({ component: 'mailbox' });
  const store = new MailStore(config, log);
  const users = new MailboxDirectory(store, config);
  const localDelivery = new MailboxDelivery(store, users, config, log);

  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const contactPoints = config.cassandra.contactPoints;
  const attempt = (delay: number, failures: number) => {
    store.connect().then(
      () => {
        if (failures > 0) mlog.info({ contactPoints, keyspace: config.cassandra.keyspace }, 'cassandra answers again: local delivery and POP3 resume');
        else mlog.info({ contactPoints, keyspace: config.cassandra.keyspace }, 'mailbox store ready');
      },
      (err: unknown) => {
        if (stopped) return;
        if (failures === 0) {
          mlog.error({ err, contactPoints }, 'cassandra unavailable: mail for local domains is deferred and POP3 logins fail until it answers');
        } else mlog.debug({ err }, 'cassandra still unavailable');
        timer = setTimeout(() => attempt(Math.min(delay * 2, RETRY_MAX_MS), failures + 1), delay);
        timer.unref();
      },
    );
  };
  attempt(RETRY_MIN_MS, 0);

  let pop3: Pop3Server;
  let pool: PoolState | undefined;
  try {
    // the gateway's one key and certificate (config.tls, or the self-signed pair in dataDir/tls),
    // shared with the SMTP listeners
    const { key, cert } = await loadTls(config, mlog);
    // failed logins are counted on the pool, for every member (its own connections to redis.nodes)
    pool = PoolState.connect(config.redis.nodes.map((n) => n.url), config.queue.timeout, log);
    pop3 = new Pop3Server({ config, store, directory: users, log, tls: { key, cert }, pool });
    await pop3.listen();
  } catch (err) {
    stopped = true;
    if (timer) clearTimeout(timer);
    await pool?.close();
    await store.close();
    throw err;
  }

  return {
    store,
    users,
    localDelivery,
    pop3,
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await pop3.stop();
      await pool?.close();
      await store.close();
    },
  };
}
