// One POP3 connection: RFC 1939 (AUTHORIZATION → TRANSACTION → UPDATE), CAPA and response codes
// (RFC 2449, 3206), STLS (RFC 2595), AUTH PLAIN (RFC 5034 with RFC 4616).
//
// - "user|mailbox" as the login name picks a mailbox (default inbox), as CassMail does.
// - A mailbox is held by one session at a time: a lease row in Cassandra taken at login with a TTL
//   of pop3.lockLease, renewed while the session lives, deleted at QUIT or disconnect; a crashed
//   gateway's lease simply expires. A second session gets -ERR [IN-USE].
// - The maildrop is listed at login, pageSize rows per query; message numbers and UIDLs (the
//   row's TimeUUID, which never changes) are fixed for the session.
// - DELE only marks; marked messages are removed at QUIT (UPDATE state). A connection that ends
//   any other way removes nothing.
// - Commands are read in order, one at a time, so pipelining clients work.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { MailboxError } from '../mailbox/client.ts';
import type { MailboxDirectory } from '../mailbox/directory.ts';
import { INBOX, mailboxName, tryUserKey } from '../mailbox/ids.ts';
import type { MailStore, MessageRef } from '../mailbox/store.ts';
import { clientKey } from '../net/clients.ts';
import type { TrustedNetworks } from '../access/networks.ts';
import type { SharedFailureThrottle } from '../access/throttle.ts';
import { DotStuffer, LineSplitter, TOO_LONG, TopCutter } from './text.ts';

/** Longest command line accepted (RFC 2449 allows 255 octets; AUTH responses may be longer). */
const MAX_LINE = 2048;
/** Commands waiting while one runs; above this the socket stops reading. */
const MAX_QUEUED = 64;
/** Bytes a session may have queued on its socket before it waits for the client to read. */
const OUT_BUFFER = 512 * 1024;
/** Unknown or malformed commands tolerated per connection (Dovecot: 20). */
const MAX_BAD_COMMANDS = 20;
/**
 * Messages read ahead of the client's RETR, in maildrop order, and their bytes together at most
 * (one message is read ahead whatever its size). A client downloads a maildrop one RETR after the
 * other: with one message ahead, each waited for the store's round trip of the next one; with a few
 * in flight the store's reads overlap, as a disk's read-ahead does for Maildir files.
 */
const PREFETCH_MESSAGES = 4;
const PREFETCH_BYTES = 2 * 1024 * 1024;

export interface SessionDeps {
  config: Config;
  store: MailStore;
  directory: MailboxDirectory;
  limiter: SharedFailureThrottle;
  trusted: TrustedNetworks;
  secureContext: SecureContext | undefined;
  log: Logger;
}

type State = 'authorization' | 'transaction' | 'done';

interface Msg {
  ref: MessageRef;
  deleted: boolean;
}

/** "::ffff:1.2.3.4" → "1.2.3.4". */
export function plainIp(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

export class Pop3Session {
  readonly id = randomBytes(6).toString('hex');
  readonly closed: Promise<void>;
  private readonly deps: SessionDeps;
  private readonly raw: Socket;
  private out: Socket;
  private readonly log: Logger;
  private readonly ip: string;
  /** The client as the per-client limits count it (net/clients.ts). */
  readonly client: string;
  private readonly lines = new LineSplitter(MAX_LINE);
  private readonly queue: (string | typeof TOO_LONG)[] = [];
  private busy = false;
  private state: State = 'authorization';
  private tls = false;
  private pendingUser: string | undefined;
  private saslWait = false;
  private failures = 0;
  private bad = 0;
  private user: { address: string; mailbox: string } | undefined;
  private lockHeld = false;
  private lockLost = false;
  private quitting = false;
  private renewTimer: NodeJS.Timeout | undefined;
  private messages: Msg[] = [];
  /** Bodies being read ahead (prefetchAfter()), consecutive undeleted messages in order. */
  private prefetched: { n: number; size: number; it: AsyncIterator<Buffer[]>; first: Promise<IteratorResult<Buffer[]>> }[] = [];
  private closing = false;
  private resolveClosed!: () => void;
  private readonly onData = (data: Buffer) => this.receive(data);
  private readonly onSocketClose = () => {
    clearTimeout(this.deadline);
    if (this.closing) return;
    this.closing = true;
    void this.onClose().finally(() => this.resolveClosed());
  };
  /** The autologout timer (RFC 1939 3): the connection is closed without a response. */
  private readonly onIdle = () => {
    this.log.info('idle timeout');
    this.state = 'done';
    this.out.end();
    setTimeout(() => this.raw.destroy(), 2000).unref();
  };
  /** Runs while a command is awaited; only a whole command line stops it (no trickling). */
  private deadline: NodeJS.Timeout | undefined;

  constructor(socket: Socket, deps: SessionDeps) {
    this.deps = deps;
    this.raw = socket;
    this.out = socket;
    this.ip = plainIp(socket.remoteAddress);
    this.client = clientKey(this.ip, deps.config.networks.ipv6Prefix);
    this.log = deps.log.child({ session: this.id, client: this.ip });
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    socket.once('close', this.onSocketClose);
    socket.on('error', (err) => this.log.debug({ err }, 'socket error'));
    socket.setTimeout(deps.config.pop3.idleTimeout, this.onIdle);
    socket.on('data', this.onData);
  }

  start(): void {
    this.log.debug('session opened');
    this.armDeadline();
    void this.send(`+OK ${this.deps.config.gateway.hostname} streamgate POP3 ready.`);
  }

  /** Turns the connection away with one line (a connection limit), without a session. */
  refuse(text: string): void {
    this.state = 'done';
    this.out.end(`-ERR [SYS/TEMP] ${text}\r\n`);
    setTimeout(() => this.raw.destroy(), 1000).unref();
  }

  private armDeadline(): void {
    clearTimeout(this.deadline);
    if (this.ended || this.closing) return;
    this.deadline = setTimeout(this.onIdle, this.deps.config.pop3.idleTimeout).unref();
  }

  /** Ends the session without the UPDATE state (gateway shutdown). */
  abort(): void {
    this.state = 'done';
    this.out.end('-ERR [SYS/TEMP] Server shutting down.\r\n');
    setTimeout(() => this.raw.destroy(), 1000).unref();
  }

  /** A method, so that TypeScript does not keep a narrowed `state` across awaits. */
  private get ended(): boolean {
    return this.state === 'done';
  }

  // ---- input ----------------------------------------------------------------------------------

  private receive(data: Buffer): void {
    if (this.state === 'done') return;
    const lines = this.lines.push(data);
    if (lines.length === 0) return;
    clearTimeout(this.deadline);
    this.queue.push(...lines);
    if (this.queue.length > MAX_QUEUED) this.out.pause();
    if (!this.busy) void this.pump();
  }

  private async pump(): Promise<void> {
    this.busy = true;
    try {
      while (this.queue.length > 0 && !this.ended) {
        const line = this.queue.shift()!;
        try {
          await this.handle(line);
        } catch (err) {
          this.log.error({ err }, 'command failed');
          await this.send('-ERR [SYS/TEMP] Internal error.');
        }
        if (this.queue.length <= MAX_QUEUED / 2 && this.out.isPaused() && !this.ended) this.out.resume();
      }
    } finally {
      this.busy = false;
      if (this.queue.length === 0) this.armDeadline();
    }
  }

  // ---- output ---------------------------------------------------------------------------------

  private async write(data: string | Buffer): Promise<void> {
    const out = this.out;
    if (out.destroyed || !out.writable) return;
    // backpressure with some slack: up to OUT_BUFFER bytes may wait in the socket, so that reading
    // the next chunks from Cassandra overlaps with sending the last ones
    if (out.write(data) || out.writableLength < OUT_BUFFER) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        out.off('drain', done);
        out.off('close', done);
        resolve();
      };
      out.on('drain', done);
      out.on('close', done);
    });
  }

  /** Several pieces in one gathered write (writev), with write()'s backpressure. */
  private async writeAll(pieces: Buffer[]): Promise<void> {
    if (pieces.length <= 1) return pieces.length ? this.write(pieces[0]!) : undefined;
    const out = this.out;
    if (out.destroyed || !out.writable) return;
    out.cork();
    for (const p of pieces.slice(0, -1)) out.write(p);
    const last = this.write(pieces[pieces.length - 1]!);
    out.uncork();
    await last;
  }

  private send(line: string): Promise<void> {
    return this.write(`${line}\r\n`);
  }

  private async badCommand(text: string): Promise<void> {
    this.bad++;
    if (this.bad >= MAX_BAD_COMMANDS) {
      await this.send('-ERR Too many invalid commands.');
      this.finish();
      return;
    }
    await this.send(`-ERR ${text}`);
  }

  private finish(): void {
    this.state = 'done';
    this.out.end();
    setTimeout(() => this.raw.destroy(), 5000).unref();
  }

  // ---- dispatch -------------------------------------------------------------------------------

  private async handle(line: string | typeof TOO_LONG): Promise<void> {
    if (line === TOO_LONG) {
      this.saslWait = false;
      return this.badCommand('Line too long.');
    }
    if (this.saslWait) {
      this.saslWait = false;
      return this.saslResponse(line);
    }
    const sp = line.indexOf(' ');
    const cmd = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
    const rest = sp < 0 ? '' : line.slice(sp + 1);
    const args = rest === '' ? [] : rest.split(' ');
    if (cmd === 'CAPA' && args.length === 0) return this.capa();
    if (cmd === 'QUIT' && args.length === 0) return this.quit();
    if (cmd === 'NOOP' && args.length === 0 && this.state === 'transaction') return this.send('+OK');
    if (this.state === 'authorization') {
      switch (cmd) {
        case 'USER':
          return this.userCmd(rest);
        case 'PASS':
          return this.passCmd(rest);
        case 'AUTH':
          return this.authCmd(args);
        case 'STLS':
          return args.length === 0 ? this.stls() : this.badCommand('STLS takes no arguments.');
        case 'APOP':
          return this.badCommand('APOP is not supported; use USER/PASS or AUTH PLAIN.');
        case 'STAT': case 'LIST': case 'UIDL': case 'TOP': case 'RETR': case 'DELE': case 'RSET': case 'NOOP':
          return this.badCommand('Not logged in.');
        default:
          return this.badCommand('Unknown command.');
      }
    }
    switch (cmd) {
      case 'STAT':
        return args.length === 0 ? this.stat() : this.badCommand('STAT takes no arguments.');
      case 'LIST':
        return this.list(args);
      case 'UIDL':
        return this.uidl(args);
      case 'TOP':
        return this.top(args);
      case 'RETR':
        return this.retr(args);
      case 'DELE':
        return this.dele(args);
      case 'RSET':
        return args.length === 0 ? this.rset() : this.badCommand('RSET takes no arguments.');
      case 'USER': case 'PASS': case 'AUTH': case 'STLS': case 'APOP':
        return this.badCommand('Already logged in.');
      default:
        return this.badCommand('Unknown command.');
    }
  }

  // ---- AUTHORIZATION --------------------------------------------------------------------------

  private plaintextAllowed(): boolean {
    const mode = this.deps.config.pop3.plaintextAuth;
    if (mode === 'always' || this.tls) return true;
    if (mode === 'never') return false;
    return this.deps.trusted.has(this.ip);
  }

  private async capa(): Promise<void> {
    const caps = ['TOP', 'UIDL', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'EXPIRE NEVER'];
    if (this.state === 'authorization') {
      if (this.plaintextAllowed()) caps.push('USER', 'SASL PLAIN');
      if (!this.tls && this.deps.secureContext) caps.push('STLS');
    }
    caps.push('IMPLEMENTATION streamgate');
    await this.write(`+OK Capability list follows\r\n${caps.join('\r\n')}\r\n.\r\n`);
  }

  private async refusePlaintext(): Promise<void> {
    await this.send('-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS first.');
  }

  private async userCmd(name: string): Promise<void> {
    if (!this.plaintextAllowed()) return this.refusePlaintext();
    if (name === '') return this.badCommand('USER needs a name.');
    this.pendingUser = name;
    await this.send('+OK');
  }

  private async passCmd(password: string): Promise<void> {
    const user = this.pendingUser;
    this.pendingUser = undefined;
    if (!this.plaintextAllowed()) return this.refusePlaintext();
    if (user === undefined) return this.badCommand('No user name given: USER first.');
    await this.login(user, password);
  }

  private async authCmd(args: string[]): Promise<void> {
    if (args.length === 0) return this.write('+OK\r\nPLAIN\r\n.\r\n');
    if (args[0]!.toUpperCase() !== 'PLAIN' || args.length > 2) return this.badCommand('Unsupported authentication mechanism.');
    if (!this.plaintextAllowed()) return this.refusePlaintext();
    if (args.length === 2) return this.saslResponse(args[1]!);
    this.saslWait = true;
    await this.send('+ ');
  }

  private async saslResponse(text: string): Promise<void> {
    if (text === '*') return this.send('-ERR Authentication cancelled.');
    const b64 = text === '=' ? '' : text;
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) return this.badCommand('Invalid base64 data.');
    const parts = Buffer.from(b64, 'base64').toString('utf8').split('\0');
    if (parts.length !== 3 || parts[1] === '') return this.authFailed(undefined);
    const [authz, authc, password] = parts as [string, string, string];
    if (authz !== '' && authz !== authc) return this.authFailed(authc); // no proxy authorization
    await this.login(authc, password);
  }

  private async authFailed(name: string | undefined): Promise<void> {
    this.failures++;
    await this.deps.limiter.fail(this.client);
    this.log.info({ user: name, failures: this.failures }, 'login failed');
    const delay = this.deps.config.pop3.auth.delay;
    if (delay > 0) await sleep(delay);
    await this.send('-ERR [AUTH] Authentication failed.');
    const perConnection = this.deps.config.pop3.auth.perConnection;
    if (perConnection > 0 && this.failures >= perConnection) {
      await this.send('-ERR [AUTH] Too many failed logins.');
      this.finish();
    }
  }

  private async login(name: string, password: string): Promise<void> {
    if ((await this.deps.limiter.check(this.client)).blocked) {
      this.log.info({ user: name }, 'login refused: too many failures from this address');
      await this.send('-ERR [AUTH] Too many failed logins from your address; try again later.');
      this.finish();
      return;
    }
    const bar = name.lastIndexOf('|');
    const address = bar < 0 ? name : name.slice(0, bar);
    const mailboxPart = bar < 0 ? '' : name.slice(bar + 1);
    let ok: boolean;
    try {
      ok = await this.deps.directory.verify(address, password);
    } catch (err) {
      this.log.warn({ err, user: address }, 'login: user directory unavailable');
      await this.send('-ERR [SYS/TEMP] Mailbox store unavailable; try again later.');
      return;
    }
    if (!ok) return this.authFailed(address);
    const key = tryUserKey(address)!;
    let mailbox: string;
    try {
      mailbox = mailboxPart === '' ? INBOX : mailboxName(mailboxPart);
    } catch {
      await this.send('-ERR No such mailbox.');
      return;
    }
    try {
      if (!(await this.deps.store.mailboxExists(key, mailbox))) {
        await this.send('-ERR No such mailbox.');
        return;
      }
      if (!(await this.deps.store.acquireLock(key, mailbox, this.lockId(), this.deps.config.pop3.lockLease))) {
        this.log.info({ user: key, mailbox }, 'mailbox in use');
        await this.send('-ERR [IN-USE] Mailbox is in use by another POP3 session.');
        return;
      }
    } catch (err) {
      this.log.warn({ err, user: key, mailbox }, 'login: mailbox store unavailable');
      await this.send('-ERR [SYS/TEMP] Mailbox store unavailable; try again later.');
      return;
    }
    this.user = { address: key, mailbox };
    this.lockHeld = true;
    if (this.closing) {
      // the client went away while the lock was being taken: onClose ran without it
      await this.releaseLock();
      return;
    }
    try {
      const list: Msg[] = [];
      for await (const ref of this.deps.store.listMessages(key, mailbox, this.deps.config.pop3.pageSize)) list.push({ ref, deleted: false });
      this.messages = list;
    } catch (err) {
      this.log.warn({ err, user: key, mailbox }, 'login: listing failed');
      await this.releaseLock();
      this.user = undefined;
      await this.send('-ERR [SYS/TEMP] Mailbox store unavailable; try again later.');
      return;
    }
    if (this.closing) {
      await this.releaseLock(); // gone while the maildrop was being read
      return;
    }
    this.state = 'transaction';
    this.startRenewing();
    const { count, bytes } = this.totals();
    this.log.info({ user: key, mailbox, messages: count, bytes, tls: this.tls }, 'logged in');
    await this.send(`+OK Logged in: ${count} messages (${bytes} octets).`);
  }

  private lockId(): string {
    return `${this.deps.config.gateway.id}:${this.id}`;
  }

  private startRenewing(): void {
    const lease = this.deps.config.pop3.lockLease;
    this.renewTimer = setInterval(() => {
      if (!this.user || !this.lockHeld) return;
      const { address, mailbox } = this.user;
      this.deps.store.renewLock(address, mailbox, this.lockId(), lease).then(
        (held) => {
          if (!held && !this.lockLost) {
            this.lockLost = true;
            this.log.warn({ user: address, mailbox }, 'mailbox lock lost');
          }
        },
        (err: unknown) => this.log.warn({ err, user: address, mailbox }, 'mailbox lock not renewed'),
      );
    }, Math.max(1000, Math.floor(lease / 3)));
    this.renewTimer.unref();
  }

  private async releaseLock(): Promise<void> {
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = undefined;
    if (!this.user || !this.lockHeld) return;
    this.lockHeld = false;
    try {
      await this.deps.store.releaseLock(this.user.address, this.user.mailbox, this.lockId());
    } catch (err) {
      this.log.warn({ err, user: this.user.address, mailbox: this.user.mailbox }, 'mailbox lock not released: tried again in the background, else it expires by its lease');
    }
  }

  private async stls(): Promise<void> {
    if (this.tls) return this.badCommand('Already using TLS.');
    const ctx = this.deps.secureContext;
    if (!ctx) return this.badCommand('TLS is not available.');
    // nothing the client sent before the handshake may be used after it (RFC 2595 4, CVE-2011-0411)
    this.raw.off('data', this.onData);
    this.raw.setTimeout(0);
    this.raw.pause();
    this.queue.length = 0;
    this.lines.reset();
    this.pendingUser = undefined;
    await this.send('+OK Begin TLS negotiation now.');
    const secure = new TLSSocket(this.raw, { isServer: true, secureContext: ctx });
    this.out = secure as unknown as Socket;
    secure.setTimeout(this.deps.config.pop3.idleTimeout, this.onIdle);
    secure.once('close', this.onSocketClose);
    secure.on('error', (err) => {
      this.log.info({ err }, 'TLS handshake failed');
      this.raw.destroy();
    });
    secure.once('secure', () => {
      this.tls = true;
      this.log.debug({ protocol: secure.getProtocol(), cipher: secure.getCipher()?.name }, 'TLS started');
    });
    secure.on('data', this.onData);
  }

  // ---- TRANSACTION ----------------------------------------------------------------------------

  private totals(): { count: number; bytes: number } {
    let count = 0;
    let bytes = 0;
    for (const m of this.messages) {
      if (m.deleted) continue;
      count++;
      bytes += m.ref.size;
    }
    return { count, bytes };
  }

  /** The message `arg` names, or a reply already sent. */
  private async pick(arg: string | undefined): Promise<{ n: number; msg: Msg } | undefined> {
    if (arg === undefined || !/^[1-9]\d{0,8}$/.test(arg)) {
      await this.badCommand('Invalid message number.');
      return undefined;
    }
    const n = Number(arg);
    const msg = this.messages[n - 1];
    if (!msg) {
      await this.send(`-ERR There is no message ${n}.`);
      return undefined;
    }
    if (msg.deleted) {
      await this.send(`-ERR Message ${n} is deleted.`);
      return undefined;
    }
    return { n, msg };
  }

  private async stat(): Promise<void> {
    const { count, bytes } = this.totals();
    await this.send(`+OK ${count} ${bytes}`);
  }

  private async list(args: string[]): Promise<void> {
    if (args.length > 1) return this.badCommand('LIST takes at most one argument.');
    if (args.length === 1) {
      const p = await this.pick(args[0]);
      if (p) await this.send(`+OK ${p.n} ${p.msg.ref.size}`);
      return;
    }
    const { count, bytes } = this.totals();
    const lines = [`+OK ${count} messages (${bytes} octets)`];
    this.messages.forEach((m, i) => {
      if (!m.deleted) lines.push(`${i + 1} ${m.ref.size}`);
    });
    lines.push('.');
    await this.write(`${lines.join('\r\n')}\r\n`);
  }

  private async uidl(args: string[]): Promise<void> {
    if (args.length > 1) return this.badCommand('UIDL takes at most one argument.');
    if (args.length === 1) {
      const p = await this.pick(args[0]);
      if (p) await this.send(`+OK ${p.n} ${p.msg.ref.id}`);
      return;
    }
    const lines = ['+OK'];
    this.messages.forEach((m, i) => {
      if (!m.deleted) lines.push(`${i + 1} ${m.ref.id}`);
    });
    lines.push('.');
    await this.write(`${lines.join('\r\n')}\r\n`);
  }

  private async bodyError(err: unknown, n: number, started: boolean): Promise<void> {
    this.log.warn({ err, n, id: this.messages[n - 1]?.ref.id }, 'message body unreadable');
    if (started) {
      // the +OK is out: the client cannot be told in-band; end the session without UPDATE
      this.state = 'done';
      this.raw.destroy();
      return;
    }
    const temp = !(err instanceof MailboxError) || err.code === 'STORE_UNAVAILABLE';
    await this.send(temp ? '-ERR [SYS/TEMP] Mailbox store unavailable; try again later.' : '-ERR [SYS/PERM] Message body is damaged.');
  }

  /**
   * Starts reading the messages after `n` (their first pages) before the client asks for them:
   * up to PREFETCH_MESSAGES, PREFETCH_BYTES together, going on from those already read ahead.
   */
  private prefetchAfter(n: number): void {
    let bytes = this.prefetched.reduce((a, p) => a + p.size, 0);
    for (let k = (this.prefetched.at(-1)?.n ?? n) + 1; k <= this.messages.length && this.prefetched.length < PREFETCH_MESSAGES; k++) {
      const msg = this.messages[k - 1]!;
      if (msg.deleted) continue;
      if (this.prefetched.length && bytes + msg.ref.size > PREFETCH_BYTES) break;
      const it = this.deps.store.readPages(msg.ref)[Symbol.asyncIterator]();
      const first = it.next();
      first.catch(() => {}); // a failure shows when (if) RETR k uses it
      this.prefetched.push({ n: k, size: msg.ref.size, it, first });
      bytes += msg.ref.size;
    }
  }

  /** Stops the reads ahead (each once its first page is in: an iterator is not closed while it runs). */
  private dropPrefetch(): void {
    for (const p of this.prefetched.splice(0)) void p.first.then(() => p.it.return?.(undefined), () => {}).catch(() => {});
  }

  private async retr(args: string[]): Promise<void> {
    if (args.length !== 1) return this.badCommand('RETR takes one message number.');
    const p = await this.pick(args[0]);
    if (!p) return;
    let it: AsyncIterator<Buffer[]>;
    let first: Promise<IteratorResult<Buffer[]>>;
    if (this.prefetched[0]?.n === p.n) ({ it, first } = this.prefetched.shift()!);
    else {
      // not the next message in order (a client that goes back, skips, or deleted one read ahead)
      this.dropPrefetch();
      it = this.deps.store.readPages(p.msg.ref)[Symbol.asyncIterator]();
      first = it.next();
    }
    // the messages after it are read while this one is sent
    this.prefetchAfter(p.n);
    await this.sendBody(p.n, `+OK ${p.msg.ref.size} octets`, p.msg.ref.chunks, it, first);
  }

  /**
   * A multi-line answer with a message body, page by page as it is read, dot-stuffed; `cutter`
   * ends it early (TOP). The first page is read before the status line, so that a failure can
   * still be reported. Each page goes out in one gathered write: the status line with the first,
   * the terminating "." with the last (the body's chunk count says which one that is).
   */
  private async sendBody(n: number, status: string, chunks: number, it: AsyncIterator<Buffer[]>, first: Promise<IteratorResult<Buffer[]>>, cutter?: TopCutter): Promise<void> {
    let started = false;
    try {
      let r = await first;
      const stuffer = new DotStuffer();
      let out: Buffer[] = [Buffer.from(`${status}\r\n`)];
      let read = 0;
      for (;;) {
        let last = r.done === true;
        if (!r.done) {
          for (const chunk of r.value) {
            out.push(...stuffer.push(cutter ? cutter.push(chunk) : chunk));
            if (cutter?.done) break;
          }
          read += r.value.length;
          if (cutter?.done) await it.return?.(undefined);
          last = cutter?.done === true || read >= chunks;
        }
        if (last) out.push(stuffer.end());
        started = true;
        await this.writeAll(out);
        if (last) return;
        out = [];
        r = await it.next();
      }
    } catch (err) {
      await this.bodyError(err, n, started);
    }
  }

  private async top(args: string[]): Promise<void> {
    if (args.length !== 2 || !/^\d{1,9}$/.test(args[1]!)) return this.badCommand('TOP takes a message number and a line count.');
    const p = await this.pick(args[0]);
    if (!p) return;
    // no read-ahead: a page is read only when the lines asked for go on into it
    const it = this.deps.store.readPages(p.msg.ref, { readAhead: false })[Symbol.asyncIterator]();
    await this.sendBody(p.n, '+OK', p.msg.ref.chunks, it, it.next(), new TopCutter(Number(args[1])));
  }

  private async dele(args: string[]): Promise<void> {
    if (args.length !== 1) return this.badCommand('DELE takes one message number.');
    const p = await this.pick(args[0]);
    if (!p) return;
    p.msg.deleted = true;
    await this.send(`+OK Message ${p.n} deleted.`);
  }

  private async rset(): Promise<void> {
    for (const m of this.messages) m.deleted = false;
    const { count, bytes } = this.totals();
    await this.send(`+OK ${count} messages (${bytes} octets).`);
  }

  // ---- QUIT and the UPDATE state --------------------------------------------------------------

  private async quit(): Promise<void> {
    if (this.state !== 'transaction' || !this.user) {
      await this.send('+OK streamgate POP3 signing off.');
      this.finish();
      return;
    }
    const { address, mailbox } = this.user;
    const doomed = this.messages.filter((m) => m.deleted).map((m) => m.ref);
    this.state = 'done';
    this.quitting = true; // the lock stays held until the deletions are done, even if the client goes
    this.dropPrefetch();
    let reply: string;
    if (doomed.length === 0) {
      reply = `+OK streamgate POP3 signing off (${this.messages.length} messages left).`;
    } else {
      try {
        const held = !this.lockLost && (await this.deps.store.renewLock(address, mailbox, this.lockId(), this.deps.config.pop3.lockLease));
        if (!held) {
          this.log.warn({ user: address, mailbox }, 'quit: lock lost, nothing deleted');
          reply = '-ERR [IN-USE] Mailbox lock lost; no messages deleted.';
        } else {
          await this.deps.store.deleteMessages(address, mailbox, doomed);
          this.log.info({ user: address, mailbox, deleted: doomed.length }, 'messages deleted');
          reply = `+OK streamgate POP3 signing off (${this.messages.length - doomed.length} messages left).`;
        }
      } catch (err) {
        this.log.warn({ err, user: address, mailbox }, 'quit: delete failed');
        reply = '-ERR [SYS/TEMP] Some deleted messages not removed.';
      }
    }
    await this.releaseLock();
    await this.write(`${reply}\r\n`);
    this.finish();
  }

  private async onClose(): Promise<void> {
    this.state = 'done';
    this.dropPrefetch();
    if (!this.quitting) await this.releaseLock();
    this.log.debug('session closed');
  }
}
