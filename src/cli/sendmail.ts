// `streamgate sendmail`: the sendmail command every MTA carries, for people and for programs on this
// host that send mail by running sendmail. The message comes on standard input and is submitted
// over SMTP to the gateway's MX listener (smtp.listen; a wildcard address is reached on loopback),
// as Postfix's sendmail hands mail to its own server: from this host, which networks.trusted
// covers by default, so it may be addressed to any domain. Before it goes, the message gets what a
// submission lacks (Date, Message-ID, From) and loses its Bcc header; line ends become CRLF.
//
// Options as sendmail's: -t (recipients from To, Cc and Bcc, besides those given), -f FROM (the
// envelope sender; "<>" for none), -F NAME (the From header's name when one is added), -i / -oi (a
// line "." does not end the message), -C FILE (the configuration); -bm, -o*, -B, -N, -R, -U and
// -v are accepted and change nothing here. Addresses without a domain get the first local domain.
// Exit codes are sendmail's (sysexits.h), one line on standard error for each problem.
import { randomBytes } from 'node:crypto';
import { userInfo } from 'node:os';
import type { Command } from 'commander';
import nodemailer from 'nodemailer';
import addressparser from 'nodemailer/lib/addressparser';
import { ConfigError, loadConfig } from '../config/load.ts';
import type { Config } from '../config/schema.ts';

/** sysexits.h */
export const EX = { OK: 0, USAGE: 64, DATAERR: 65, NOUSER: 67, UNAVAILABLE: 69, SOFTWARE: 70, IOERR: 74, TEMPFAIL: 75, NOPERM: 77, CONFIG: 78 } as const;

const USAGE = 'usage: streamgate sendmail [-t] [-i] [-f FROM] [-F NAME] [-C CONFIG] [RECIPIENT...] < message';

export interface SendmailOptions {
  /** -t: recipients from the To, Cc and Bcc headers too. */
  extract: boolean;
  /** -i, -oi: a line with a single "." is message text, not its end. */
  ignoreDots: boolean;
  /** -f: the envelope sender ("" for the null sender); default the user at the first local domain. */
  from?: string;
  /** -F: the name in a From header that sendmail adds. */
  fullName?: string;
  /** -C: the configuration file. */
  config?: string;
  recipients: string[];
  help: boolean;
}

export class UsageError extends Error {}

/** Reads sendmail's command line. Throws UsageError for what sendmail would refuse. */
export function parseSendmailArgs(args: string[]): SendmailOptions {
  const o: SendmailOptions = { extract: false, ignoreDots: false, recipients: [], help: false };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    /** The value of a flag given as "-fVALUE" or "-f VALUE". */
    const value = (flag: string) => {
      if (a.length > flag.length) return a.slice(flag.length);
      if (i + 1 >= args.length) throw new UsageError(`${flag} needs a value`);
      return args[++i]!;
    };
    if (a === '--') {
      o.recipients.push(...args.slice(i + 1));
      break;
    } else if (!a.startsWith('-') || a === '-') {
      o.recipients.push(a);
    } else if (a === '-h' || a === '--help') {
      o.help = true;
    } else if (a === '-t') {
      o.extract = true;
    } else if (a === '-i' || a === '-oi') {
      o.ignoreDots = true;
    } else if (a.startsWith('-f') || a.startsWith('-r')) {
      const v = value(a.slice(0, 2)).trim();
      o.from = v === '<>' ? '' : v.replace(/^<(.*)>$/, '$1');
    } else if (a.startsWith('-F')) {
      o.fullName = value('-F');
    } else if (a.startsWith('-C')) {
      o.config = value('-C');
    } else if (a === '--config' || a.startsWith('--config=')) {
      o.config = a.startsWith('--config=') ? a.slice('--config='.length) : value('--config');
    } else if (a.startsWith('-B') || a.startsWith('-N') || a.startsWith('-R')) {
      value(a.slice(0, 2)); // body type, DSN NOTIFY and RET: the gateway decides these
    } else if (a === '-bm' || a.startsWith('-o') || a === '-U' || a === '-v') {
      // deliver mail (the default mode), sendmail's -o options, initial submission, verbose
    } else if (a.startsWith('-b')) {
      throw new UsageError(`${a}: only -bm (send a message) is supported`);
    } else {
      throw new UsageError(`unknown option ${a}`);
    }
  }
  return o;
}

/** Where local mail goes for an address without a domain: the first local domain, else the hostname. */
export function originOf(config: Config): string {
  return config.domains.local.find((d) => !d.startsWith('*.')) ?? config.gateway.hostname;
}

const qualify = (address: string, origin: string) => (address.includes('@') ? address : `${address}@${origin}`);

/** Addresses in a list such as a header's value or "a@x, b@y" on the command line; "bob" alone is a local name. */
function addresses(list: string): string[] {
  return addressparser(list, { flatten: true }).map((a) => a.address || (/^[^\s@<>"(),;:]+$/.test(a.name) ? a.name : '')).filter(Boolean);
}

interface Prepared {
  raw: Buffer;
  /** To, Cc and Bcc of the header, for -t. */
  headerRecipients: string[];
}

/**
 * The message as it is submitted: lines end in CRLF; without -i it ends at a line "."; a Bcc
 * header is removed; Date, Message-ID and (for a sender) From are added when missing.
 */
export function prepareMessage(input: Buffer, o: Pick<SendmailOptions, 'ignoreDots' | 'fullName'>, from: string, hostname: string, now = new Date()): Prepared {
  let lines = input.toString('latin1').split(/\r?\n/); // latin1: every byte kept as it came
  if (lines.at(-1) === '') lines.pop();
  if (!o.ignoreDots) {
    const dot = lines.indexOf('.');
    if (dot >= 0) lines = lines.slice(0, dot);
  }
  // the header: field lines and their continuations, up to an empty line or the first other line
  let end = 0;
  while (end < lines.length && (/^[!-9;-~]+:/.test(lines[end]!) || (end > 0 && /^[ \t]/.test(lines[end]!)))) end++;
  const fields: string[] = [];
  for (const line of lines.slice(0, end)) {
    if (/^[ \t]/.test(line) && fields.length) fields[fields.length - 1] += `\r\n${line}`;
    else fields.push(line);
  }
  const body = lines.slice(lines[end] === '' ? end + 1 : end);
  const named = (name: string) => fields.filter((f) => f.slice(0, f.indexOf(':')).trim().toLowerCase() === name);
  const headerRecipients = ['to', 'cc', 'bcc'].flatMap((n) => named(n).flatMap((f) => addresses(Buffer.from(f.slice(f.indexOf(':') + 1), 'latin1').toString('utf8'))));
  const added: string[] = [];
  if (!named('from').length && from) added.push(`From: ${o.fullName ? `"${o.fullName.replace(/["\\\r\n]/g, '')}" <${from}>` : from}`);
  if (!named('date').length) added.push(`Date: ${now.toUTCString().replace(/GMT$/, '+0000')}`);
  if (!named('message-id').length) added.push(`Message-ID: <${now.getTime().toString(36)}.${randomBytes(6).toString('hex')}@${hostname}>`);
  const kept = fields.filter((f) => !/^bcc\s*:/i.test(f));
  const text = [...kept, ...added, '', ...body].join('\r\n') + '\r\n';
  return { raw: Buffer.from(text, 'latin1'), headerRecipients };
}

interface SmtpFailure {
  code?: string;
  command?: string;
  responseCode?: number;
  response?: string;
  message?: string;
}

/** The gateway could not be reached or the connection broke: worth trying again later. */
const unreachable = (e: SmtpFailure) => !e.code || ['ECONNECTION', 'ETIMEDOUT', 'ESOCKET', 'EDNS'].includes(e.code);

/** The sysexits code for a failed submission (or a refused recipient). */
export function exitCodeFor(e: SmtpFailure): number {
  const reply = e.responseCode;
  if (!reply) return unreachable(e) ? EX.TEMPFAIL : EX.SOFTWARE;
  if (reply < 500) return EX.TEMPFAIL;
  if (/\b5\.1\.1\b/.test(e.response ?? '')) return EX.NOUSER;
  if (/\b5\.7\.\d+\b/.test(e.response ?? '')) return EX.NOPERM;
  if (e.command === 'DATA' || e.code === 'EMESSAGE') return EX.DATAERR;
  return EX.UNAVAILABLE;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(typeof c === 'string' ? Buffer.from(c) : c);
  return Buffer.concat(chunks);
}

/** Runs `streamgate sendmail ARGS` with the message on `stdin`; returns the exit code. */
export async function sendmail(args: string[], stdin: NodeJS.ReadableStream = process.stdin): Promise<number> {
  const say = (line: string) => console.error(`streamgate sendmail: ${line}`);
  let o: SendmailOptions;
  try {
    o = parseSendmailArgs(args);
  } catch (err) {
    say(`${(err as Error).message} (${USAGE})`);
    return EX.USAGE;
  }
  if (o.help) {
    console.log(USAGE);
    return EX.OK;
  }
  let config: Config;
  try {
    config = loadConfig({ path: o.config }).config;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    say(err.message);
    return EX.CONFIG;
  }
  const origin = originOf(config);
  const login = (() => {
    try {
      return userInfo().username;
    } catch {
      return process.env.USER ?? 'nobody';
    }
  })();
  const from = o.from === '' ? '' : qualify(o.from ?? login, origin);
  const given = o.recipients.flatMap(addresses);
  if (!o.extract && given.length === 0) {
    say(`no recipients given (${USAGE})`);
    return EX.USAGE;
  }
  let input: Buffer;
  try {
    input = await readAll(stdin);
  } catch (err) {
    say(`cannot read the message: ${(err as Error).message}`);
    return EX.IOERR;
  }
  const message = prepareMessage(input, o, from, config.gateway.hostname);
  const to = [...new Set([...given, ...(o.extract ? message.headerRecipients : [])].map((a) => qualify(a, origin)))];
  if (to.length === 0) {
    say('no recipients in the To, Cc or Bcc headers nor on the command line');
    return EX.USAGE;
  }
  const { host, port } = config.smtp.listen;
  const target = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  const transport = nodemailer.createTransport({
    host: target, port, ignoreTLS: true, name: config.gateway.hostname,
    connectionTimeout: 10_000, greetingTimeout: 30_000, socketTimeout: 300_000, logger: false,
  });
  try {
    const info = (await transport.sendMail({ envelope: { from, to }, raw: message.raw })) as { rejectedErrors?: SmtpFailure[] };
    const refused = info.rejectedErrors ?? [];
    for (const r of refused) say(r.response ?? r.message ?? 'refused');
    return refused.length ? exitCodeFor(refused[0]!) : EX.OK;
  } catch (err) {
    const e = err as SmtpFailure & { rejectedErrors?: SmtpFailure[] };
    const each = e.rejectedErrors?.length ? e.rejectedErrors : [e];
    for (const r of each) say(r.response ?? (unreachable(r) ? `the gateway does not answer on ${target}:${port} (${r.message ?? String(err)}); is it running?` : r.message ?? String(err)));
    return exitCodeFor(each[0]!);
  } finally {
    transport.close();
  }
}

export function registerSendmailCommand(program: Command): void {
  program
    .command('sendmail')
    .description('send the message on standard input, as sendmail does: [-t] [-i] [-f FROM] [-F NAME] [-C CONFIG] [RECIPIENT...] (exit codes from sysexits.h)')
    .argument('[args...]')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .passThroughOptions()
    .action(async (args: string[]) => {
      process.exitCode = await sendmail(args);
    });
}
