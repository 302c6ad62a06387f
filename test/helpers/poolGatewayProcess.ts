// A gateway process for the pool tests (several members on one pool): its queue manager, relay
// SMTP ingress and ops API (no mailboxes, no events), configured from SG_TEST_CONFIG (JSON
// overrides). Logs JSON lines (pino, level info) to stderr; prints "ready <smtp port> <ops port>"
// once it takes mail,
// stops on SIGTERM, and exits with status 1 once fenced, as `streamgate start` does.
import { createLogger } from '../../src/log.ts';
import { SmtpIngress } from '../../src/ingress/smtp/server.ts';
import { startOps } from '../../src/ops/http.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { Relay } from '../../src/relay/relay.ts';
import { testConfig } from './config.ts';

const config = testConfig({ ...(JSON.parse(process.env.SG_TEST_CONFIG ?? '{}') as Record<string, unknown>), log: { level: 'info' } });
const log = createLogger({ level: 'info', pretty: 'never', destination: process.stderr });
const qm = new QueueManager(config, log);
await qm.start();
const relay = new Relay(qm, config, log, { sweepMs: 100 });
relay.start();
const ingress = new SmtpIngress({ config, queues: qm, log });
await ingress.start();
const ops = await startOps({ config, queues: qm, relay, log });
process.stdout.write(`ready ${ingress.address('mx').port} ${ops.port}\n`);

const stop = async (code: number) => {
  await ops.stop().catch(() => {});
  await ingress.stop().catch(() => {});
  await relay.stop().catch(() => {});
  await qm.stop().catch(() => {});
  process.exit(code);
};
process.once('SIGTERM', () => void stop(0));
qm.once('fenced', () => void stop(1));
