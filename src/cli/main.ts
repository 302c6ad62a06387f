// The `streamgate` command. Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { ConfigError } from '../config/load.ts';
import { MissingToolError } from '../services/tools.ts';
import { registerCommands } from './commands.ts';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE } from './context.ts';

/** The package's version, from package.json two folders up (from src/cli and from dist/cli alike). */
function version(): string {
  return (JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
}

export function buildProgram(): Command {
  const program = new Command('streamgate')
    .description('store-and-forward mail gateway: SMTP in, replicated Redis Stream queues, relay out, Cassandra mailboxes')
    .version(version())
    .showHelpAfterError('(run with --help for usage)')
    .enablePositionalOptions() // `sendmail` reads its own, sendmail's, options
    .exitOverride();
  registerCommands(program);
  for (const cmd of program.commands) cmd.exitOverride();
  return program;
}

export async function run(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT_OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return EXIT_OK;
      return EXIT_USAGE;
    }
    if (err instanceof ConfigError) {
      console.error(`streamgate: ${err.message}`);
      return EXIT_USAGE;
    }
    if (err instanceof MissingToolError) {
      console.error(`streamgate: ${err.message}`);
      return EXIT_FAILURE;
    }
    const e = err as Error & { exitCode?: number };
    console.error(`streamgate: ${e.message ?? String(err)}`);
    if (process.env.STREAMGATE_DEBUG) console.error(e.stack);
    return e.exitCode === EXIT_USAGE ? EXIT_USAGE : EXIT_FAILURE;
  }
}

if (import.meta.main) {
  // `start` resolves only after the gateway has shut down, so every command ends here.
  process.exit(await run(process.argv.slice(2)));
}
