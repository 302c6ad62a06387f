// The CLI's commands. Each later part adds its own here (queue, user, mailbox, schema).
import type { Command } from 'commander';
import { startGateway } from '../app.ts';
import { servicesDown, servicesStatus, servicesUp, type ServiceStatus } from '../services/index.ts';
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
      let ownServices = false;
      if (opts.withServices) {
        const rows = await servicesUp(config, { say: (line) => log.info(line) });
        for (const r of rows) log.info({ service: r.name, address: r.address, state: r.state, pid: r.pid, ms: r.ms }, 'service ready');
        ownServices = rows.some((r) => r.state === 'started');
      }
      const gateway = await startGateway(config, log);
      await new Promise<void>((resolve) => {
        let stopping = false;
        const stop = (signal: string) => {
          if (stopping) return;
          stopping = true;
          log.info({ signal }, 'stopping');
          void gateway
            .stop()
            .catch((err: unknown) => log.error({ err }, 'stop failed'))
            .then(async () => {
              if (ownServices) {
                const rows = await servicesDown(config);
                for (const r of rows) log.info({ service: r.name, address: r.address, state: r.state }, 'service stopped');
              }
            })
            .finally(resolve);
        };
        process.once('SIGINT', () => stop('SIGINT'));
        process.once('SIGTERM', () => stop('SIGTERM'));
      });
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
}
