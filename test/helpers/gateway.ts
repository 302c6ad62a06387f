// A whole gateway (startGateway) for end-to-end tests: three real Redis nodes and one for lifecycle
// events and producer jobs (`eventsRedis`), the run's Cassandra
// (or the contact point given) in a keyspace of its own, every listener on a free loopback port, a
// data dir of its own, retries every second, and remote.test routed to an SMTP sink; with a
// mailbox store on the same keyspace once the gateway has applied the schema.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway, type Gateway } from '../../src/app.ts';
import type { Config } from '../../src/config/schema.ts';
import { silentLogger } from '../../src/log.ts';
import { MailStore } from '../../src/mailbox/store.ts';
import { cassandraForTests } from './cassandra.ts';
import { testConfig } from './config.ts';
import { startRedis, startRedisPool, type TestRedis } from './redis.ts';
import { startSmtpSink, type SmtpSink } from './smtpSink.ts';
import { freePort, waitFor } from './waitFor.ts';

export interface TestGateway {
  config: Config;
  gw: Gateway;
  store: MailStore;
  pool: TestRedis[];
  eventsRedis: TestRedis;
  sink: SmtpSink;
  stop(): Promise<void>;
}

export async function startTestGateway(name: string, opts: { domain: string; hostname: string; contactPoint?: string; overrides?: Record<string, unknown>; eventsMaxmemory?: string; poolMaxmemory?: string; eventsOnPool?: boolean }): Promise<TestGateway> {
  const sink = await startSmtpSink();
  const contactPoint = opts.contactPoint ?? (await cassandraForTests()).contactPoint;
  const pool = await startRedisPool(3, opts.poolMaxmemory ? { maxmemory: opts.poolMaxmemory } : {});
  const eventsRedis = await startRedis(opts.eventsMaxmemory ? { maxmemory: opts.eventsMaxmemory } : {});
  const dataDir = mkdtempSync(join(tmpdir(), `sg-${name}-`));
  const config = testConfig({
    gateway: { dataDir, hostname: opts.hostname },
    redis: { nodes: pool.map((r) => r.url) },
    domains: { local: [opts.domain] },
    smtp: { listen: `127.0.0.1:${await freePort()}` },
    submission: { listen: `127.0.0.1:${await freePort()}` },
    pop3: { listen: `127.0.0.1:${await freePort()}`, auth: { delay: '0s' } },
    ops: { listen: `127.0.0.1:${await freePort()}` },
    cassandra: { contactPoints: [contactPoint], keyspace: `sg_${name}_${Date.now().toString(36)}` },
    relay: { retry: { schedule: ['1s'], jitter: 0 } },
    routes: { 'remote.test': `smtp://127.0.0.1:${sink.port}` },
    ...opts.overrides,
    events: { ...(opts.overrides?.events as object | undefined), redis: opts.eventsOnPool ? pool[0]!.url : eventsRedis.url },
  });
  const gw = await startGateway(config, silentLogger);
  const store = new MailStore(config, silentLogger);
  await waitFor(() => store.connect().then(() => true), { timeout: 30_000, what: 'schema' });
  return {
    config, gw, store, pool, eventsRedis, sink,
    async stop() {
      await gw.stop();
      await store.client.execute(`DROP KEYSPACE IF EXISTS ${config.cassandra.keyspace}`).catch(() => {});
      await store.close();
      await Promise.all([...pool, eventsRedis].map((r) => r.stop()));
      await sink.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
