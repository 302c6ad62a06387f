// A private Postfix instance for the benchmarks that compare with Postfix (smtp.ts, relay.ts,
// mailbox.ts): its config, queue and data directories in a directory of its own, smtpd on its own
// loopback port, no chroot, no TLS, no DNS, no aliases, no limits on the client; nothing of the
// system's Postfix (/etc/postfix, its queue, port 25) is read or touched. Each benchmark adds the
// main.cf lines that say what this Postfix does with the mail (hold it, relay it to a sink,
// deliver it to Maildirs). Installed with apt-get ("No configuration": the system instance is not
// set up or started) when missing; running it needs root.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { waitFor } from '../../test/helpers/waitFor.ts';

const POSTFIX = '/usr/sbin/postfix';
const POSTCONF = '/usr/sbin/postconf';

/** Installs Debian's postfix package when /usr/sbin/postfix is missing; throws when that fails. */
export function ensurePostfix(): void {
  if (existsSync(POSTFIX)) return;
  console.error('bench: installing postfix (apt-get, "No configuration": the system instance is not set up or started)');
  try {
    execFileSync('sh', ['-c', 'echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections'], { stdio: ['ignore', 'ignore', 'inherit'] });
    execFileSync('apt-get', ['install', '-y', '-q', 'postfix'], { stdio: ['ignore', process.stderr, 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  } catch {
    /* said below */
  }
  if (!existsSync(POSTFIX)) throw new Error('postfix not installed (apt-get install postfix failed)');
}

/** The pid of a running instance's master process (its tree: every Postfix process of the instance). */
export function masterPid(instance: PostfixInstance): number | undefined {
  return Number(readFileSync(join(instance.queueDir, 'pid', 'master.pid'), 'utf8').trim()) || undefined;
}

/** The installed Postfix's version, e.g. "3.7.11". */
export function postfixVersion(): string {
  return execFileSync(POSTCONF, ['-d', '-h', 'mail_version'], { encoding: 'utf8' }).trim();
}

export interface PostfixOptions {
  /** The instance's directory: created when missing, made 0755 (the daemons run as the postfix user: its parents must let them through too), removed by stop(). */
  dir: string;
  /** The loopback port smtpd listens on. */
  port: number;
  /** main.cf lines of the benchmark's own: relay_domains, mynetworks, restrictions, transports, mailboxes... */
  mainCf?: string[];
  /** master.cf lines added to the stock services. */
  services?: string[];
  /** default_process_limit, when the Postfix default (100) is too few smtpd processes for the load. */
  processLimit?: number;
}

export interface PostfixInstance {
  /** = options.dir */
  root: string;
  configDir: string;
  queueDir: string;
  maillog: string;
  /** Message files in one of the queue's directories ("hold", "incoming", "active", "deferred"). */
  queued(queue: string): number;
  /** Stops the instance (`postfix stop` waits for the master to exit) and removes its directory; synchronous, for 'exit' handlers too; once only. */
  stop(): void;
}

/** Master.cf: Debian's stock services, none chrooted (the chroot would need a copy of the system's files). */
function masterCf(port: number, extra: string[]): string {
  //                                   type          private unpriv chroot wakeup maxproc command
  const services: [string, string, string, string, string, string, string][] = [
    ['pickup', 'unix', 'n', '-', '60', '1', 'pickup'],
    ['cleanup', 'unix', 'n', '-', '-', '0', 'cleanup'],
    ['qmgr', 'unix', 'n', '-', '300', '1', 'qmgr'],
    ['tlsmgr', 'unix', '-', '-', '1000?', '1', 'tlsmgr'],
    ['rewrite', 'unix', '-', '-', '-', '-', 'trivial-rewrite'],
    ['bounce', 'unix', '-', '-', '-', '0', 'bounce'],
    ['defer', 'unix', '-', '-', '-', '0', 'bounce'],
    ['trace', 'unix', '-', '-', '-', '0', 'bounce'],
    ['verify', 'unix', '-', '-', '-', '1', 'verify'],
    ['flush', 'unix', 'n', '-', '1000?', '0', 'flush'],
    ['proxymap', 'unix', '-', '-', '-', '-', 'proxymap'],
    ['proxywrite', 'unix', '-', '-', '-', '1', 'proxymap'],
    ['smtp', 'unix', '-', '-', '-', '-', 'smtp'],
    ['relay', 'unix', '-', '-', '-', '-', 'smtp'],
    ['showq', 'unix', 'n', '-', '-', '-', 'showq'],
    ['error', 'unix', '-', '-', '-', '-', 'error'],
    ['retry', 'unix', '-', '-', '-', '-', 'error'],
    ['discard', 'unix', '-', '-', '-', '-', 'discard'],
    ['local', 'unix', '-', 'n', '-', '-', 'local'],
    ['virtual', 'unix', '-', 'n', '-', '-', 'virtual'],
    ['lmtp', 'unix', '-', '-', '-', '-', 'lmtp'],
    ['anvil', 'unix', '-', '-', '-', '1', 'anvil'],
    ['scache', 'unix', '-', '-', '-', '1', 'scache'],
    ['postlog', 'unix-dgram', 'n', '-', '-', '1', 'postlogd'],
  ];
  const line = ([name, type, priv, unpriv, wakeup, maxproc, cmd]: string[]) => `${name} ${type} ${priv} ${unpriv} n ${wakeup} ${maxproc} ${cmd}`;
  return [line([`127.0.0.1:${port}`, 'inet', 'n', '-', '-', '-', 'smtpd']), ...services.map(line), ...extra, ''].join('\n');
}

/** The last fatal and error lines of a maillog, for the message when the instance does not start. */
function logErrors(maillog: string): string {
  if (!existsSync(maillog)) return '';
  return readFileSync(maillog, 'utf8').split('\n').filter((l) => /fatal|error/.test(l)).slice(-2).join(' | ');
}

/** Whether something accepts connections on a loopback port. */
export function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/** Writes the instance's config into o.dir, starts it, resolves when smtpd answers on o.port; throws (o.dir removed) when it cannot. */
export async function startPostfix(o: PostfixOptions): Promise<PostfixInstance> {
  const root = o.dir;
  try {
    ensurePostfix();
    if (process.getuid?.() !== 0) throw new Error('postfix needs root to run a private instance');
  } catch (err) {
    rmSync(root, { recursive: true, force: true });
    throw err;
  }
  const configDir = join(root, 'etc');
  const queueDir = join(root, 'queue');
  const data = join(root, 'data');
  const maillog = join(root, 'maillog');
  for (const d of [root, configDir, queueDir, data]) mkdirSync(d, { recursive: true });
  chmodSync(root, 0o755);
  chownSync(data, Number(execFileSync('id', ['-u', 'postfix'], { encoding: 'utf8' })), Number(execFileSync('id', ['-g', 'postfix'], { encoding: 'utf8' })));
  writeFileSync(
    join(configDir, 'main.cf'),
    [
      'compatibility_level = 3.6',
      `queue_directory = ${queueDir}`,
      `data_directory = ${data}`,
      'mail_owner = postfix',
      'setgid_group = postdrop',
      'myhostname = postfix.bench.test',
      'mydestination =',
      'inet_interfaces = 127.0.0.1',
      'inet_protocols = ipv4',
      'alias_maps =',
      'alias_database =',
      'smtpd_tls_security_level = none',
      'smtp_tls_security_level = none',
      'smtp_dns_support_level = disabled',
      'smtpd_client_connection_count_limit = 0',
      'smtpd_client_connection_rate_limit = 0',
      'smtpd_client_message_rate_limit = 0',
      ...(o.processLimit ? [`default_process_limit = ${o.processLimit}`] : []),
      `maillog_file = ${maillog}`,
      `maillog_file_prefixes = ${root}`,
      'biff = no',
      'readme_directory = no',
      ...(o.mainCf ?? []),
      '',
    ].join('\n'),
  );
  writeFileSync(join(configDir, 'master.cf'), masterCf(o.port, o.services ?? []));
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    try {
      execFileSync(POSTFIX, ['-c', configDir, 'stop'], { stdio: 'ignore' });
    } catch {
      /* not running */
    }
    rmSync(root, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  };
  try {
    execFileSync(POSTFIX, ['-c', configDir, 'start'], { stdio: 'pipe' });
    await waitFor(() => portOpen(o.port), { timeout: 20_000, every: 100, what: 'postfix smtpd' });
  } catch (err) {
    const e = err as Error & { stderr?: Buffer };
    const why = [e.message.split('\n')[0], e.stderr?.toString().trim(), logErrors(maillog)].filter(Boolean).join(' ');
    stop();
    throw new Error(`postfix did not start: ${why}`, { cause: err });
  }
  const queued = (queue: string) => {
    const d = join(queueDir, queue);
    return existsSync(d) ? readdirSync(d, { recursive: true, withFileTypes: true }).filter((f) => f.isFile()).length : 0;
  };
  return { root, configDir, queueDir, maillog, queued, stop };
}
