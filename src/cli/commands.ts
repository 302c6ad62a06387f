// The CLI's commands. Each later part adds its own here (queue, user, mailbox, schema).
import cluster from 'node:cluster';
import type { Command } from 'commander';
import { loadTls } from '../access/tls.ts';
import type { Logger } from '../log.ts';
import type { Config } from '../config/schema.ts';
import { servicesDown, servicesStatus, servicesUp, type ServiceStatus } from '../services/index.ts';
import { registerBouncesCommands } from './bouncesCommands.ts';
import { registerEventsCommands } from './eventsCommands.ts';
import { registerMailboxCommands } from './mailboxCommands.ts';
import { registerQueueCommands } from './queueCommands.ts';
import { registerSendmailCommand } from './sendmail.ts';
import { registerTopCommand } from './top.ts';
import { configOption, contextFrom, loggerFor } from './context.ts';
import { READY, runPrimary, workerCount, workerGatewayId } from './workers.ts';

/** Progress of `start` and `services up`: plain lines on standard error, beside the log. */
const say = (line: string) => console.error(`streamgate: ${line}`);

/** The one summary `start` ends its start with: where everything listens. */
function listeners(config: Config, seconds: number, ownServices: boolean, workers?: { id: string; pid: number }[]): string {
  const at = (l: { host: string; port: number }) => (l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`);
  const rows: [string, string][] = [
    ['SMTP', `${at(config.smtp.listen)}  (inbound MTAs; \`streamgate sendmail\` submits here)`],
    ['submission', `${at(config.submission.listen)}  (${config.submission.implicitTls ? 'TLS' : 'STARTTLS'}, then AUTH)`],
    ['POP3', at(config.pop3.listen)],
    ['ops', `http://${at(config.ops.listen)}/  (dashboard, API, /metrics)`],
    ['Redis', config.redis.nodes.map((n) => n.url.replace(/^rediss?:\/\/([^@/]*@)?/, '')).join(', ')],
    ['Cassandra', config.cassandra.contactPoints.join(', ')],
    ['events', `${config.events.redis.replace(/^rediss?:\/\/([^@/]*@)?/, '')}  (Redis of lifecycle events and producer jobs)`],
    ...(workers ? [['workers', `${workers.map((w) => `${w.id} (pid ${w.pid})`).join(', ')}  (sharing the listeners above)`] as [string, string]] : []),
  ];
  return [
    `streamgate: ready in ${seconds.toFixed(1)} s`,
    ...rows.map(([name, where]) => `  ${name.padEnd(11)} ${where}`),
    `streamgate: Ctrl-C stops the gateway${workers ? ' workers' : ''}${ownServices ? ' and the local services it started' : ''}`,
  ].join('\n');
}

function printServices(rows: ServiceStatus[]): void {
  for (const r of rows) {
    const extra = [r.pid ? `pid ${r.pid}` : '', r.ms !== undefined ? `${(r.ms / 1000).toFixed(1)} s` : ''].filter(Boolean).join(', ');
    console.log(`${r.name.padEnd(10)} ${r.address.padEnd(22)} ${r.state}${extra ? ` (${extra})` : ''}`);
  }
}

/**
 * Runs one gateway in this process until stopRequested resolves or the gateway is fenced (status 1
 * then: a newer member owns its queues; a supervisor may start it again, as a new member).
 */
async function serve(config: Config, log: Logger, stopRequested: Promise<string>, ready: () => void | Promise<void>, tell: (line: string) => void): Promise<void> {
  const { startGateway } = await import('../app.ts'); // the whole gateway, loaded only to run it
  const gateway = await startGateway(config, log);
  await ready();
  const fenced = new Promise<string>((resolve) => gateway.queues.once('fenced', (reason: string) => resolve(`fenced: ${reason}`)));
  const signal = await Promise.race([stopRequested, fenced]);
  tell(`stopping (${signal})`);
  if (signal.startsWith('fenced')) process.exitCode = 1;
  await gateway.stop().catch((err: unknown) => log.error({ err }, 'stop failed'));
}

export function registerCommands(program: Command): void {
  program
    .command('start')
    .description('run the gateway (gateway.workers processes of it) until SIGINT or SIGTERM')
    .addOption(configOption())
    .option('--with-services', 'start the local Redis nodes and Cassandra first and stop them on exit')
    .action(async (opts: { config?: string; withServices?: boolean }) => {
      const { config } = contextFrom(opts);
      const log = loggerFor(config);
      const t0 = Date.now();
      // Signals are taken from the first moment: one that comes while the gateway is still
      // starting stops it as soon as it is up, with the local services it started. Those that
      // come while it stops are taken too, and change nothing: Ctrl-C under `npm start` comes
      // twice (the terminal's SIGINT and npm's, passed on to its child), and a second one must
      // not end the process half-way, its local services left running.
      let signalled: (signal: string) => void = () => {};
      const stopRequested = new Promise<string>((resolve) => (signalled = resolve));
      let signals = 0;
      let ownServices = false;
      const onSignal = (signal: string) => () => {
        if (++signals === 1) return signalled(signal);
        say(`${cluster.isWorker ? `${config.gateway.id}: ` : ''}already stopping (${signal})${ownServices ? '; the local services are stopped next' : ''}`);
      };
      process.on('SIGINT', onSignal('SIGINT'));
      process.on('SIGTERM', onSignal('SIGTERM'));
      if (cluster.isWorker) {
        // One of gateway.workers: its id came from the primary (STREAMGATE_GATEWAY__ID); the
        // primary started the services and prints the summary.
        const tell = (line: string) => say(`${config.gateway.id}: ${line}`);
        await serve(config, log, stopRequested, () => void process.send?.(READY), tell);
        tell('stopped');
        return log.flush?.();
      }
      const downServices = async () => {
        if (!ownServices) return;
        const rows = await servicesDown(config);
        say(`local services stopped: ${rows.filter((r) => r.state === 'stopped').map((r) => `${r.name} ${r.address}`).join(', ') || 'no local services'}`);
      };
      const summary = async (workers?: { id: string; pid: number }[]) => {
        await new Promise<void>((resolve) => log.flush(() => resolve())); // the summary comes after the log's start lines
        console.error(listeners(config, (Date.now() - t0) / 1000, ownServices, workers));
      };
      try {
        if (opts.withServices) {
          const rows = await servicesUp(config, { say });
          ownServices = rows.some((r) => r.state === 'started');
        }
        const count = workerCount(config);
        if (count > 1) {
          say(`starting ${count} gateway workers, ${workerGatewayId(config, 1)} to ${workerGatewayId(config, count)}`);
          await loadTls(config, log); // a generated pair is made once, here, and read by every worker
          process.exitCode = await runPrimary(config, log, { count, say, stopRequested, onReady: summary });
        } else {
          say('starting the gateway');
          await serve(config, log, stopRequested, () => summary(), say);
        }
      } finally {
        await downServices();
      }
      say('stopped');
      log.flush?.();
    });

  const services = program.command('services').description('local Redis nodes and Cassandra: the embedded default');
  services
    .command('up')
    .description('start what the configuration names on this machine and wait until each answers')
    .addOption(configOption())
    .option('--no-cassandra', 'start the Redis nodes only')
    .action(async (opts: { config?: string; cassandra: boolean }) => {
      const { config } = contextFrom(opts);
      printServices(await servicesUp(config, { cassandra: opts.cassandra, say }));
    });
  services
    .command('down')
    .description('stop the processes `services up` started (by pid file), nothing else')
    .addOption(configOption())
    .action(async (opts: { config?: string }) => printServices(await servicesDown(contextFrom(opts).config)));
  services
    .command('status')
    .description('say which configured services answer')
    .addOption(configOption())
    .action(async (opts: { config?: string }) => {
      const rows = await servicesStatus(contextFrom(opts).config);
      printServices(rows);
      if (rows.some((r) => r.state === 'down')) process.exitCode = 1;
    });

  program
    .command('config')
    .description('configuration tools')
    .command('check')
    .description('validate the configuration and print it with every default filled in')
    .addOption(configOption())
    .action((opts: { config?: string }) => {
      console.log(JSON.stringify(contextFrom(opts).config, null, 2));
    });

  registerMailboxCommands(program);
  registerQueueCommands(program);
  registerTopCommand(program);
  registerEventsCommands(program);
  registerBouncesCommands(program);
  registerSendmailCommand(program);
}
