// What every `streamgate` command shares: the exit codes, the --config option, the loaded
// configuration and the logger it asks for. The command files import this, not main.ts, so the
// CLI has no import cycle (main.ts → commands.ts → the command files → context.ts).
import { Option } from 'commander';
import { loadConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';
import { createLogger } from '../log.ts';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export interface Context {
  config: Config;
  configPath: string | undefined;
}

export function contextFrom(opts: { config?: string }): Context {
  const { config, path } = loadConfig({ path: opts.config });
  return { config, configPath: path };
}

export const configOption = () => new Option('-c, --config <path>', 'configuration file (default: $STREAMGATE_CONFIG)');

export function loggerFor(config: Config) {
  return createLogger({ level: config.log.level, pretty: config.log.pretty });
}
