// The SMTP ingress: two smtp-server listeners, the MX listener (`smtp.listen`, for inbound MTAs,
// no AUTH) and the submission listener (`submission.listen`, AUTH PLAIN/LOGIN required and only
// offered and taken over TLS: STARTTLS, or TLS from the first byte with submission.implicitTls). Both
// advertise PIPELINING, 8BITMIME, SMTPUTF8, SIZE, ENHANCEDSTATUSCODES and STARTTLS.
//
// Each command line passes commands.ts before smtp-server reads it; each connection counts its
// errors and junk commands and has a per-command deadline (connection.ts, the one adapter onto
// smtp-server's internals; limits.ts). The hooks apply the relay policy (policy.ts), the limits
// (limits.ts, net/clients.ts), the content hygiene (hygiene.ts), then store the message on both replicas of every destination queue before the
// reply (store.ts). Every refusal is a reply from the catalogue (replies.ts).
//
// Closing the door: while the queues cannot be written at the configured write concern
// (QueueManager.writable is false), new connections get 421 4.3.2 (smtp.whenUnwritable: refuse)
// or the listeners stop listening (close), and MAIL gets 451 4.3.0; the door opens again by itself
// when the queues can be written (the manager's 'health' event, and a poll).
import { reverse as dnsReverse } from 'node:dns/promises';
import { EventEmitter } from 'node:events';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerDataStream, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { Config } from '../../config/schema.ts';
import type { Logger } from '../../log.ts';
import { type UserDirectory } from '../../message/types.ts';
import type { QueueManager } from '../../queue/manager.ts';
import { loadTls, type LoadedTls } from '../../access/tls.ts';
import { FailureThrottle, SharedFailureThrottle } from '../../access/throttle.ts';
import { PoolState } from '../../queue/poolState.ts';
import { hardCommandLength, screenCommand } from './commands.ts';
import { GatewayServer, type ConnectionRules, type GatewayConnection } from './connection.ts';
import { addedHeaders, ContentScanner, faultReply, SMUGGLING } from './hygiene.ts';
import { ConnectionLimiter, clientKey } from '../../net/clients.ts';
import { DataDeadlines } from './limits.ts';
import { RelayPolicy } from './policy.ts';
import { REPLIES, reply, SmtpReply } from './replies.ts';
import { storeMessage, type Stored } from './store.ts';
import { ConfigUserDirectory } from './users.ts';
import { newMessageId } from '../../message/ids.ts';

export type ListenerName = 'mx' | 'submission';

export interface IngressOptions {
  config: Config;
  queues: QueueManager;
  log: Logger;
  /** Users for AUTH and local-domain recipient checks; default: the configuration's `users`. */
  users?: UserDirectory | undefined;
}

/** What the ingress keeps per SMTP session. */
interface SessionState {
  listener: ListenerName;
  /** The client as the per-client limits count it (net/clients.ts). */
  client: string;
  trusted: boolean;
  authFailures: number;
  /** Envelope sender as queued. */
  from: string;
  /** Accepted recipients: smtp-server's address (lower case) → the address as queued. */
  rcpts: Map<string, string>;
}

/** The first chunks of a message, up to the end of its header section: what addedHeaders reads. */
function headerChunks(chunks: Buffer[]): Buffer {
  let n = 0;
  while (n < chunks.length && !chunks[n]!.includes('\r\n\r\n')) n++;
  // a blank line that straddles two chunks is found in none: then everything is read
  const upTo = Math.min(n + 1, chunks.length);
  return upTo === 1 ? chunks[0]! : Buffer.concat(chunks.slice(0, upTo));
}

/** The one adapter from async hook functions to smtp-server's callbacks. */
function hook<T>(log: Logger, what: string, work: () => Promise<T>, cb: (err: Error | null, value?: T) => void): void {
  work().then(
    (v) => cb(null, v),
    (err: unknown) => {
      if (err instanceof SmtpReply) return cb(err);
      log.error({ err, hook: what }, 'hook failed');
      cb(reply('localError'));
    },
  );
}

export class SmtpIngress extends EventEmitter {
  readonly config: Config;
  readonly queues: QueueManager;
  readonly users: UserDirectory;
  readonly policy: RelayPolicy;
  private readonly log: Logger;
  /** The logger handed to smtp-server, which adds component: 'smtp-server' itself. */
  private readonly libraryLog: Logger;
  private readonly limiter: ConnectionLimiter;
  private readonly authGuard: SharedFailureThrottle;
  private readonly errorGuard: FailureThrottle;
  /** Message bytes held by all DATA transfers (smtp.maxBytesInFlight). */
  bytesInFlight = 0;
  private readonly deadlines: DataDeadlines;
  private readonly localDomains: ReadonlySet<string>;
  private readonly sessions = new WeakMap<SMTPServerSession, SessionState>();
  private readonly servers = new Map<ListenerName, GatewayServer>();
  private readonly bound = new Map<ListenerName, { host: string; port: number }>();
  private readonly storing = new Set<Promise<unknown>>();
  private tls: LoadedTls | undefined;
  private doorTimer: NodeJS.Timeout | undefined;
  private readonly onHealth = () => this.checkDoor();
  private stopping = false;
  /** False while the queues cannot be written: new connections are turned away. */
  doorOpen = true;
  /** Counters for operations and tests. */
  readonly stats = { connections: 0, refused: 0, accepted: 0, rejected: 0, copies: 0 };

  constructor(opts: IngressOptions) {
    super();
    this.config = opts.config;
    this.queues = opts.queues;
    this.log = opts.log.child({ component: 'smtp' });
    this.libraryLog = opts.log;
    this.users = opts.users ?? new ConfigUserDirectory(opts.config.users);
    this.policy = new RelayPolicy(opts.config, this.users);
    const s = opts.config.smtp;
    this.limiter = new ConnectionLimiter(s.maxConnections, s.maxConnectionsPerClient);
    this.authGuard = new SharedFailureThrottle(s.auth, PoolState.of(opts.queues.nodes, opts.config.queue.timeout, this.log), 'smtp-auth');
    this.errorGuard = new FailureThrottle({ perConnection: s.errors.hardLimit, perClient: s.errors.perClient, window: s.errors.window, delay: s.errors.sleep });
    this.deadlines = new DataDeadlines(s.dataTimeout, s.minDataRate);
    this.localDomains = new Set(opts.config.domains.local);
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  async start(): Promise<void> {
    this.tls = await loadTls(this.config, this.log);
    const listeners: [ListenerName, { host: string; port: number }][] = [
      ['mx', this.config.smtp.listen],
      ['submission', this.config.submission.listen],
    ];
    try {
      for (const [name, addr] of listeners) {
        const srv = new GatewayServer(this.options(name), this.rules(name));
        srv.on('error', (err: Error & { code?: string }) => {
          if (err.code && ['ECONNRESET', 'EPIPE', 'ETIMEDOUT'].includes(err.code)) return;
          this.log.warn({ err, listener: name }, 'connection error');
        });
        this.servers.set(name, srv);
        await this.listen(srv, addr.host, addr.port);
        const a = srv.server.address() as AddressInfo;
        this.bound.set(name, { host: addr.host, port: a.port });
        this.log.info({ listener: name, host: addr.host, port: a.port, tls: this.tls.source }, 'listening');
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.queues.on('health', this.onHealth);
    this.doorTimer = setInterval(() => this.checkDoor(), Math.min(1000, this.config.queue.heartbeat.every)).unref();
    this.checkDoor();
  }

  private listen(srv: GatewayServer, host: string, port: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      srv.server.once('error', onError);
      srv.server.listen(port, host, () => {
        srv.server.off('error', onError);
        resolve();
      });
    });
  }

  /** Stops listening, lets the messages being stored finish, then closes every connection. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.doorTimer);
    this.queues.off('health', this.onHealth);
    const closed = [...this.servers.values()].map((srv) => new Promise<void>((resolve) => srv.close(() => resolve())));
    const deadline = sleep(this.config.queue.timeout * 2 + 1000).then(() => 'timeout');
    await Promise.race([Promise.allSettled([...this.storing]), deadline]);
    const [c, e, t] = REPLIES.shuttingDown;
    for (const srv of this.servers.values()) {
      for (const conn of [...srv.connections]) {
        conn.send(c, `${e} ${t}`, false);
        conn.close();
      }
    }
    await Promise.all(closed);
    this.deadlines.stop();
    this.log.info(this.stats, 'stopped');
  }

  /** Where each listener listens (the real port when the configuration said 0). */
  address(listener: ListenerName): { host: string; port: number } {
    const a = this.bound.get(listener);
    if (!a) throw new Error(`the ${listener} listener is not running`);
    return a;
  }

  /** The TLS pair in use (for clients in tests that pin the self-signed certificate). */
  get certificate(): Buffer | undefined {
    return this.tls?.cert;
  }

  // ---- the door -----------------------------------------------------------------------------

  private checkDoor(): void {
    if (this.stopping) return;
    const open = this.queues.writable;
    if (open === this.doorOpen) return;
    this.doorOpen = open;
    if (open) this.log.info('queues writable again: accepting connections');
    else this.log.warn({ mode: this.config.smtp.whenUnwritable }, 'queues not writable: turning connections away');
    if (this.config.smtp.whenUnwritable === 'close') {
      for (const [name, srv] of this.servers) {
        const addr = this.bound.get(name)!;
        if (open) {
          this.listen(srv, addr.host, addr.port).catch((err: unknown) => this.log.error({ err, listener: name }, 'listen again failed'));
        } else {
          srv.server.close();
        }
      }
    }
    this.emit('door', open);
  }

  // ---- smtp-server options and hooks ---------------------------------------------------------

  private options(listener: ListenerName): SMTPServerOptions {
    const s = this.config.smtp;
    const submission = listener === 'submission';
    const base: SMTPServerOptions = {
      name: this.config.gateway.hostname,
      banner: 'streamgate',
      key: this.tls!.key,
      cert: this.tls!.cert,
      size: s.maxMessageSize,
      hideSize: false,
      hidePIPELINING: false,
      hide8BITMIME: false,
      hideSMTPUTF8: false,
      hideENHANCEDSTATUSCODES: false,
      hideDSN: true,
      hideREQUIRETLS: true,
      socketTimeout: s.commandTimeout,
      closeTimeout: 2000,
      // lines up to smtp.maxCommandLength reach the hooks, longer ones get 500 5.5.2 (commands.ts)
      // and the session goes on; only a line that never ends is cut off at this hard limit (421)
      maxCommandLength: hardCommandLength(s.maxCommandLength),
      logger: this.libraryLog.child({ listener }) as unknown as SMTPServerOptions['logger'],
      // a client without a PTR record is common, not an error: smtp-server would log each one at
      // error level with a stack trace (a flood of connections floods the log)
      resolver: { reverse: (ip: string, cb: (err: Error | null, names: string[]) => void) => this.reverse(ip, cb) },
      onConnect: (session, cb) => hook(this.log, 'connect', () => this.onConnect(listener, session), cb),
      onMailFrom: (address, session, cb) => hook(this.log, 'mail', () => this.onMailFrom(address, session), cb),
      onRcptTo: (address, session, cb) => hook(this.log, 'rcpt', () => this.onRcptTo(address, session), cb),
      onData: (stream, session, cb) => this.onData(listener, stream, session, cb),
      onClose: (session) => this.limiter.release(session.id),
      // behind a balancer (smtp.proxyProtocol), the PROXY header's client is the session's remoteAddress
      ...(s.proxyProtocol.length ? { useProxy: s.proxyProtocol } : {}),
    };
    if (!submission) return { ...base, disabledCommands: ['AUTH'], authOptional: true };
    return {
      ...base,
      secure: this.config.submission.implicitTls,
      authMethods: ['PLAIN', 'LOGIN'],
      authOptional: false,
      authRequiredMessage: `${REPLIES.authRequired[1]} ${REPLIES.authRequired[2]}`,
      onAuth: (auth, session, cb) => hook(this.log, 'auth', () => this.onAuth(auth, session), cb),
    };
  }

  private rules(listener: ListenerName): ConnectionRules {
    const s = this.config.smtp;
    return {
      screen: (line, session) => screenCommand(line, s.maxCommandLength) ?? this.dataBudget(line, session),
      authOnlyOverTls: listener === 'submission',
      errors: s.errors,
      failed: (session, n) => this.errorGuard.fail(this.sessions.get(session)?.client ?? session.remoteAddress, n),
      commandTimeout: s.commandTimeout,
    };
  }

  /** DATA while the transfers in progress hold smtp.maxBytesInFlight: 452 4.3.1. */
  private dataBudget(line: Buffer, session: SMTPServerSession): SmtpReply | undefined {
    if (this.bytesInFlight < this.config.smtp.maxBytesInFlight || !session.envelope.rcptTo.length) return undefined;
    return /^DATA\s*$/i.test(line.toString('latin1', 0, 8)) ? reply('tooMuchInFlight') : undefined;
  }

  private reverse(ip: string, cb: (err: Error | null, names: string[]) => void): void {
    dnsReverse(ip).then(
      (names) => cb(null, names),
      (err: NodeJS.ErrnoException) => {
        this.log.debug({ client: ip, code: err.code }, 'no reverse DNS name');
        cb(null, []);
      },
    );
  }

  private state(session: SMTPServerSession): SessionState {
    const st = this.sessions.get(session);
    if (!st) throw new Error(`no state for session ${session.id}`);
    return st;
  }

  private connection(session: SMTPServerSession, listener: ListenerName): GatewayConnection | undefined {
    return this.servers.get(listener)?.bySession.get(session);
  }

  private async onConnect(listener: ListenerName, session: SMTPServerSession): Promise<void> {
    const client = clientKey(session.remoteAddress, this.config.networks.ipv6Prefix);
    this.sessions.set(session, { listener, client, trusted: this.policy.trusted.has(session.remoteAddress), authFailures: 0, from: '', rcpts: new Map() });
    this.stats.connections++;
    const refuse = (r: SmtpReply) => {
      this.stats.refused++;
      this.log.info({ session: session.id, client: session.remoteAddress, listener, reply: r.toString() }, 'connection refused');
      return r;
    };
    if (!this.doorOpen || this.stopping) throw refuse(reply(this.stopping ? 'shuttingDown' : 'doorClosed'));
    if (this.errorGuard.blocked(client)) throw refuse(reply('tooManyErrors'));
    if (listener === 'submission' && (await this.authGuard.check(client)).blocked) {
      await sleep(this.config.smtp.auth.delay);
      throw refuse(reply('authTooManyFailures'));
    }
    const over = this.limiter.admit(session.id, client);
    if (over) throw refuse(reply(over));
  }

  private async onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession): Promise<SMTPServerAuthenticationResponse> {
    const st = this.state(session);
    const client = st.client;
    const log = this.log.child({ session: session.id, client: session.remoteAddress });
    const { delay, blocked } = await this.authGuard.check(client);
    if (blocked) {
      await sleep(delay);
      throw reply('authTooManyFailures');
    }
    const username = auth.username ?? '';
    let ok = false;
    let why: SmtpReply = reply('authFailed');
    if (auth.method === 'PLAIN' && auth.authzid && auth.authcid && auth.authzid !== auth.authcid) {
      why = reply('authzidMismatch');
    } else {
      try {
        ok = await this.users.verify(username, auth.password ?? '');
      } catch (err) {
        log.error({ err }, 'user directory failed');
        await sleep(delay);
        throw reply('authUnavailable');
      }
    }
    if (ok) {
      await sleep(delay);
      log.info({ user: username, method: auth.method }, 'authenticated');
      return { user: username };
    }
    st.authFailures++;
    const over = await this.authGuard.fail(client, st.authFailures);
    log.warn({ user: username, method: auth.method, failures: st.authFailures }, 'authentication failed');
    await sleep(this.config.smtp.auth.delay);
    throw over ? reply('authTooManyFailures') : why;
  }

  private async onMailFrom(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    const st = this.state(session);
    st.rcpts = new Map();
    if (session.transaction > this.config.smtp.maxMessagesPerConnection) throw reply('tooManyMessages');
    // the door's state, not QueueManager.writable (which looks at every queue) on every MAIL
    if (!this.doorOpen) throw reply('storageUnavailable');
    if (st.listener === 'submission' && !session.user) throw reply('authRequired');
    st.from = this.policy.sender(address.address, { smtpUtf8: !!session.envelope.smtpUtf8 });
    const user = typeof session.user === 'string' ? session.user : undefined;
    if (user && !this.policy.ownsSender(user, st.from)) throw reply('senderNotOwned', st.from, user);
  }

  private async onRcptTo(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    const st = this.state(session);
    const key = address.address.toLowerCase();
    const max = this.config.smtp.maxRecipients;
    if (session.envelope.rcptTo.length >= max && !st.rcpts.has(key)) throw reply('tooManyRecipients', max);
    const a = await this.policy.recipient(address.address, { trusted: st.trusted, authenticated: !!session.user, smtpUtf8: !!session.envelope.smtpUtf8 });
    st.rcpts.set(key, a.address);
  }

  private onData(listener: ListenerName, stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const st = this.state(session);
    const log = this.log;
    const scanner = new ContentScanner(this.config.smtp);
    const chunks: Buffer[] = [];
    let kept = 0;
    let overBudget = false;
    let done = false;
    let ended = 0;
    const finish = (err: Error | null, message?: string) => {
      if (done) return;
      done = true;
      untrack();
      // end of DATA to the reply, for the metrics (SMTP reply latency)
      if (ended) this.emit('reply', { listener, seconds: (performance.now() - ended) / 1000, code: err instanceof SmtpReply ? err.responseCode : err ? 451 : 250 });
      this.bytesInFlight -= kept;
      if (err instanceof SmtpReply) {
        this.stats.rejected++;
        log.info({ session: session.id, listener, client: session.remoteAddress, reply: err.toString() }, 'message refused');
      }
      cb(err, message);
    };
    const untrack = this.deadlines.add({
      started: Date.now(),
      bytes: () => stream.byteLength,
      cut: () => {
        log.warn({ session: session.id, client: session.remoteAddress, bytes: stream.byteLength }, 'data too slow, cut off');
        const conn = this.connection(session, listener);
        const r = reply('dataTooSlow');
        if (conn) conn.send(r.responseCode, r.message);
        finish(r);
      },
    });
    stream.on('data', (chunk: Buffer) => {
      if (done || stream.sizeExceeded || scanner.fault || overBudget) return;
      scanner.push(chunk);
      chunks.push(chunk);
      kept += chunk.length;
      this.bytesInFlight += chunk.length;
      // past smtp.maxBytesInFlight this transfer keeps nothing more and is refused at its end
      overBudget = this.bytesInFlight > this.config.smtp.maxBytesInFlight;
    });
    stream.once('error', (err: Error) => finish(Object.assign(reply('localError'), { cause: err })));
    stream.once('end', () => {
      if (done) return;
      ended = performance.now();
      if (stream.sizeExceeded) return finish(reply('messageTooBig', this.config.smtp.maxMessageSize));
      if (overBudget) return finish(reply('tooMuchInFlight'));
      const fault = scanner.end();
      if (fault) {
        const r = faultReply(fault, this.config.smtp);
        if (SMUGGLING.has(fault)) {
          // A possible smuggling attempt: answer, then hang up, so that nothing the client
          // pipelined after this message is read as a command.
          const conn = this.connection(session, listener);
          if (conn) {
            conn.send(r.responseCode, r.message);
            conn.close();
          }
        }
        return finish(r);
      }
      const p = this.store(listener, session, st, chunks, kept).then(
        (stored) => finish(null, this.queuedText(stored)),
        (err: unknown) => finish(err instanceof SmtpReply ? err : reply('localError')),
      );
      this.storing.add(p);
      void p.finally(() => this.storing.delete(p));
    });
  }

  private async store(listener: ListenerName, session: SMTPServerSession, st: SessionState, chunks: Buffer[], size: number): Promise<Stored> {
    // the header section is only read on submission (Date and Message-ID when missing)
    const submission = listener === 'submission';
    const body = submission ? headerChunks(chunks) : Buffer.alloc(0);
    const submissionId = newMessageId();
    const to = session.envelope.rcptTo.map((r) => st.rcpts.get(r.address.toLowerCase()) ?? r.address);
    const tlsInfo = session.secure && session.tlsOptions ? { version: session.tlsOptions.version ?? 'TLS', cipher: session.tlsOptions.name } : undefined;
    const user = typeof session.user === 'string' ? session.user : undefined;
    const now = new Date();
    const headers = addedHeaders(
      body,
      {
        helo: session.hostNameAppearsAs || '',
        clientHostname: session.clientHostname,
        clientAddress: session.remoteAddress,
        by: this.config.gateway.hostname,
        protocol: session.transmissionType || 'ESMTP',
        id: submissionId,
        tls: tlsInfo,
        authUser: user,
        for: to.length === 1 ? to[0] : undefined,
        date: now,
      },
      submission,
    );
    const head = Buffer.from(headers, 'latin1');
    const raw = Buffer.concat([head, ...chunks], head.length + size);
    chunks.length = 0; // one copy of the message in memory from here on, not two
    const meta: Record<string, unknown> = {
      submission: submissionId,
      listener,
      client: { address: session.remoteAddress, port: session.remotePort, hostname: session.clientHostname, helo: session.hostNameAppearsAs || null },
      tls: tlsInfo ?? null,
      auth: user ? { user } : null,
      trusted: st.trusted,
      bodyType: session.envelope.bodyType ?? '7bit',
      smtpUtf8: !!session.envelope.smtpUtf8,
      receivedAt: now.getTime(),
      // ContentScanner let no bare CR or LF through and DATA ends with CRLF: local delivery
      // stores the bytes as they are instead of scanning them again
      lineEnds: 'crlf',
    };
    const stored = await storeMessage(this.queues, { submissionId, from: st.from, to, raw, meta }, this.log, this.localDomains);
    this.stats.accepted++;
    this.stats.copies += stored.copies.length;
    const copies = stored.copies.length === 1 ? stored.copies[0]!.domain : stored.copies.map((c) => `${c.domain}/${c.id}`);
    this.log.info({ session: session.id, submission: submissionId, from: st.from, rcpts: to.length, size: raw.length, copies }, 'queued');
    return stored;
  }

  private queuedText(stored: Stored): string {
    const [first, ...more] = stored.copies;
    const [, enhanced, template] = REPLIES.queued;
    let text = `${enhanced} ${template.replace('{0}', first!.id)}`;
    if (more.length) {
      const ids = more.map((c) => c.id).join(' ');
      text += ids.length <= 300 ? ` (and ${ids})` : ` (and ${more.length} more copies)`;
    }
    return text;
  }
}
