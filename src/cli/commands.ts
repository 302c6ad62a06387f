// The CLI's commands. Each later part adds its own here (queue, user, mailbox, schema).
import type { Command } from 'commander';
import { servicesDown, servicesStatus, servicesUp, type ServiceStatus } from '../services/index.ts';
import { registerMailboxCommands } from './mailboxCommands.ts';
import { registerQueueCommands } from './queueCommands.ts';
import { configOption, contextFrom, loggerFor } from './main.ts';

function printServices(rows: ServiceStatus[]): void {
  for (const r of rows) {
    const extra = [r.pid ? `pid ${r.pid}` : '', r.ms !== undefined ? `${(r.ms / 1000).toFixed(1)} s` : ''].filter(Boolean).join(', ');
    console.log(`${r.name.padEnd(10)} ${r.address.padEnd(22)} ${r.state}${extra ? ` (${extra})` : ''}`);
  }
}

export function registerCommands(program: Command): void {
  program
    .command('start')
    .description('run the gateway until SIGINT or SIGTERM')
    .addOption(configOption())
    .option('--with-services', 'start the local Redis nodes and Cassandra first and stop them on exit')
    .action(async (opts: { config?: string; withServices?: boolean }) => {
      const { config } = contextFrom(opts);
      const log = loggerFor(config);
      // Signals are taken from the first moment: one that comes while the gateway is still
      // starting stops it as soon as it is up, with the local services it started.
      let signalled: (signal: string) => void = () => {};
      const stopRequested = new Promise<string>((resolve) => (signalled = resolve));
      const onSignal = (signal: string) => () => signalled(signal);
      process.once('SIGINT', onSignal('SIGINT'));
      process.once('SIGTERM', onSignal('SIGTERM'));
      let ownServices = false;
      const downServices = async () => {
        if (!ownServices) return;
        for (const r of await servicesDown(config)) log.info({ service: r.name, address: r.address, state: r.state }, 'service stopped');
      };
      try {
        if (opts.withServices) {
          const rows = await servicesUp(config, { say: (line) => log.info(line) });
          ownServices = rows.some((r) => r.state === 'started');
          for (const r of rows) log.info({ service: r.name, address: r.address, state: r.state, pid: r.pid, ms: r.ms }, 'service ready');
        }
        const { startGateway } = await import('../app.ts'); // the whole gateway, loaded only to run it
        const gateway = await startGateway(config, log);
        const signal = await stopRequested;
        log.info({ signal }, 'stopping');
        await gateway.stop().catch((err: unknown) => log.error({ err }, 'stop failed'));
      } finally {
        await downServices();
      }
      log.info('stopped');
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
      printServices(await servicesUp(config, { cassandra: opts.cassandra }));
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
}
