// CLI for the mailbox store: `user add|passwd|del|list|hash`, `mailbox list`, `schema apply`.
// Exit status as src/cli/main.ts defines: 0 done, 1 failure (Cassandra unreachable, user exists or
// missing), 2 usage (a bad address, size or empty password).
import type { Command } from 'commander';
import { parseSize } from '../config/units.ts';
import type { Config } from '../config/schema.ts';
import { createLogger } from '../log.ts';
import { MailboxError } from '../mailbox/client.ts';
import { userKey } from '../mailbox/ids.ts';
import { applySchema } from '../mailbox/schema.ts';
import { MailStore } from '../mailbox/store.ts';
import { hashPassword } from '../message/password.ts';
import { configOption, contextFrom, EXIT_USAGE } from './context.ts';

export class UsageError extends Error {
  readonly exitCode = EXIT_USAGE;
}

function address(text: string): string {
  try {
    return userKey(text);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** The store for one command; logs go to stderr at warn and above, so stdout carries the answer. */
export async function withStore<T>(config: Config, fn: (store: MailStore) => Promise<T>, opts: { autoSchema?: boolean } = {}): Promise<T> {
  const log = createLogger({ level: config.log.level === 'silent' ? 'silent' : 'warn', pretty: 'never', destination: process.stderr });
  const store = new MailStore(config, log, { autoSchema: opts.autoSchema ?? true });
  try {
    await store.connect();
    return await fn(store);
  } catch (err) {
    if (err instanceof MailboxError && err.code === 'BAD_INPUT') throw new UsageError(err.message);
    throw err;
  } finally {
    await store.close();
  }
}

/** Reads stdin to its end (a pipe), or one line typed without echo (a terminal). */
async function readPassword(): Promise<string> {
  const stdin = process.stdin;
  if (!stdin.isTTY) {
    const parts: Buffer[] = [];
    for await (const chunk of stdin) parts.push(chunk as Buffer);
    return Buffer.concat(parts).toString('utf8').replace(/\r?\n$/, '');
  }
  process.stderr.write('Password: ');
  stdin.setRawMode(true);
  stdin.resume();
  try {
    return await new Promise<string>((resolve, reject) => {
      let text = '';
      const onData = (data: Buffer) => {
        for (const ch of data.toString('utf8')) {
          if (ch === '\r' || ch === '\n') {
            stdin.off('data', onData);
            process.stderr.write('\n');
            resolve(text);
            return;
          }
          if (ch === '\u0003') {
            stdin.off('data', onData);
            reject(new UsageError('cancelled'));
            return;
          }
          if (ch === '\u007f' || ch === '\b') text = text.slice(0, -1);
          else text += ch;
        }
      };
      stdin.on('data', onData);
    });
  } finally {
    stdin.setRawMode(false);
    stdin.pause();
  }
}

async function passwordFrom(opts: { password?: string }): Promise<string> {
  const pw = opts.password ?? (await readPassword());
  if (pw === '') throw new UsageError('the password is empty: give --password or one line on standard input');
  return pw;
}

function quotaFrom(text: string | undefined): number {
  if (text === undefined) return 0;
  const n = parseSize(text);
  if (n === undefined) throw new UsageError(`--quota: expected a size like "512MB" or "2GB" (0 for none), got ${JSON.stringify(text)}`);
  return n;
}

function human(bytes: number): string {
  if (bytes <= 0) return '0';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)}${units[i]}`;
}

function group(program: Command, name: string, description: string): Command {
  return program.commands.find((c) => c.name() === name) ?? program.command(name).description(description);
}

export function registerMailboxCommands(program: Command): void {
  const user = group(program, 'user', 'mailbox users (the Cassandra users table)');
  user
    .command('add')
    .description('create a user with an inbox and an outbox; the password comes from --password or standard input')
    .argument('<address>', 'the user\'s address, e.g. anne@example.test')
    .option('-p, --password <password>', 'the password (else read from standard input)')
    .option('-q, --quota <size>', 'mailbox quota, e.g. "2GB" (default: none)')
    .addOption(configOption())
    .action(async (addr: string, opts: { password?: string; quota?: string; config?: string }) => {
      const { config } = contextFrom(opts);
      const key = address(addr);
      const quota = quotaFrom(opts.quota);
      const hash = await hashPassword(await passwordFrom(opts));
      await withStore(config, (store) => store.createUser(key, hash, quota));
      console.log(`user ${key} added`);
    });
  user
    .command('passwd')
    .description('set a user\'s password (from --password or standard input)')
    .argument('<address>')
    .option('-p, --password <password>', 'the new password (else read from standard input)')
    .addOption(configOption())
    .action(async (addr: string, opts: { password?: string; config?: string }) => {
      const { config } = contextFrom(opts);
      const key = address(addr);
      const hash = await hashPassword(await passwordFrom(opts));
      await withStore(config, (store) => store.setPassword(key, hash));
      console.log(`password of ${key} changed`);
    });
  user
    .command('del')
    .description('delete a user and all of its mail')
    .argument('<address>')
    .addOption(configOption())
    .action(async (addr: string, opts: { config?: string }) => {
      const { config } = contextFrom(opts);
      const key = address(addr);
      const r = await withStore(config, (store) => store.deleteUser(key));
      console.log(`user ${key} deleted with ${r.messages} messages`);
    });
  user
    .command('list')
    .description('list the users of the mailbox store')
    .addOption(configOption())
    .action(async (opts: { config?: string }) => {
      const { config } = contextFrom(opts);
      await withStore(config, async (store) => {
        const rows: string[][] = [];
        for await (const u of store.listUsers()) {
          const used = await store.usage(u.address);
          rows.push([u.address, String(used.messages), human(used.bytes), u.quota > 0 ? human(u.quota) : '-', u.created?.toISOString() ?? '-']);
        }
        rows.sort((a, b) => a[0]!.localeCompare(b[0]!));
        printTable(['ADDRESS', 'MESSAGES', 'SIZE', 'QUOTA', 'CREATED'], rows);
      });
    });

  if (!user.commands.some((c) => c.name() === 'hash')) {
    user
      .command('hash')
      .description('print the scrypt hash of a password (from --password or standard input), for `users` in the configuration')
      .option('-p, --password <password>', 'the password (else read from standard input)')
      .action(async (opts: { password?: string }) => {
        console.log(await hashPassword(await passwordFrom(opts)));
      });
  }

  const mailbox = group(program, 'mailbox', 'mailboxes in the Cassandra store');
  mailbox
    .command('list')
    .description('list a user\'s mailboxes with their messages and sizes')
    .argument('<address>')
    .addOption(configOption())
    .action(async (addr: string, opts: { config?: string }) => {
      const { config } = contextFrom(opts);
      const key = address(addr);
      await withStore(config, async (store) => {
        if (!(await store.getUser(key))) throw new MailboxError('NOT_FOUND', `no user ${key}`);
        const rows = (await store.listMailboxes(key)).map((m) => [m.name, String(m.messages), String(m.bytes)]);
        printTable(['MAILBOX', 'MESSAGES', 'OCTETS'], rows);
      });
    });

  const schema = group(program, 'schema', 'the Cassandra schema of the mailbox store');
  schema
    .command('apply')
    .description('create the keyspace and missing tables, and set the keyspace replication from the configuration')
    .addOption(configOption())
    .action(async (opts: { config?: string }) => {
      const { config } = contextFrom(opts);
      await withStore(config, async (store) => {
        const r = await applySchema(store.client, config, { alterReplication: true });
        const ks = config.cassandra.keyspace;
        if (r.created.length === 0 && !r.replicationChanged) console.log(`schema of keyspace ${ks} is up to date`);
        if (r.created.length > 0) console.log(`created in keyspace ${ks}: ${r.created.join(', ')}`);
        if (r.replicationChanged) console.log(`replication of keyspace ${ks} set to ${config.cassandra.replicationStrategy} ${config.cassandra.replicationFactor}; run a repair`);
      }, { autoSchema: false });
    });
}

function printTable(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}
