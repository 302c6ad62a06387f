// The one adapter onto smtp-server's internals (checked against smtp-server 3.21.6, pinned to
// that exact version in package.json; test/ingress/connection.test.ts fails when the library no
// longer has what this file uses). smtp-server has no hook for a command line before it parses
// it, nor for the replies it writes by itself, so this file subclasses its SMTPConnection and
// SMTPServer. What it uses that the library does not document:
//   SMTPConnection: _onCommand (overridden), _server, _socket, _ready, _upgrading, _nextHandler,
//                   _handlerPending, _dataStream, _closing, _closed, send (overridden);
//   SMTPServer:     connect (overridden: the library's body, with GatewayConnection for
//                   SMTPConnection), _onError, _onClientConnect.
// Nothing else in the project touches either class's underscored members.
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import { SMTPConnection, type SMTPConnectionOptions } from 'smtp-server/lib/smtp-connection.js';
import { ENHANCED_PREFIX, LIBRARY_REPLIES, REPLIES, type SmtpReply, type ReplyName } from './replies.ts';
import { corkForTurn } from '../../net/turn.ts';

/**
 * smtp-server's connection, with the replies it writes made to follow the catalogue: a reply text
 * that starts with an enhanced status code is written as is (smtp-server would put its own code,
 * derived from the reply code, in front), and the replies smtp-server makes up by itself for
 * timeouts, over-long lines and the like are replaced by the catalogue's.
 */
export class GatewayConnection extends SMTPConnection {
  /** Error replies and junk commands on this connection since its last queued message. */
  private errors = 0;
  private junk = 0;
  private deadline: NodeJS.Timeout | undefined;

  private get rules(): ConnectionRules {
    return (this._server as GatewayServer).rules;
  }

  /**
   * Every command line passes the ingress's checks (commands.ts) before smtp-server reads it; junk
   * commands past errors.junkCommands count as errors; past errors.softLimit errors each command
   * waits errors.sleep first; and each command must arrive whole within commandTimeout.
   */
  override _onCommand(command: Buffer, callback?: () => void): void {
    const next = callback ?? (() => {});
    if (this._upgrading || !this._ready) return super._onCommand(command, next);
    clearTimeout(this.deadline);
    const done = () => {
      this.armDeadline();
      next();
    };
    if (this._nextHandler) return super._onCommand(command, done); // an AUTH exchange's line
    if (JUNK.test(command.toString('latin1', 0, 5)) && ++this.junk > this.rules.errors.junkCommands) this.countError();
    const run = () => {
      if (this._closing || this._closed) return next();
      const refused = this.rules.screen(command, this.session);
      if (!refused) return super._onCommand(command, done);
      this.send(refused.responseCode, refused.message);
      setImmediate(done);
    };
    if (this.errors >= this.rules.errors.softLimit) setTimeout(run, this.rules.errors.sleep);
    else run();
  }

  /** The per-command deadline (Postfix's per-record deadline): 421 4.4.2 when it passes. */
  armDeadline(): void {
    clearTimeout(this.deadline);
    if (this._closing || this._closed) return;
    this.deadline = setTimeout(() => {
      if (this._closing || this._closed) return;
      // waiting for a hook or in DATA (which has its own deadline): not the client's turn
      if (this._handlerPending || this._dataStream) return this.armDeadline();
      this.send(...REPLY_ARGS('commandTimeout'));
      this.close();
    }, this.rules.commandTimeout).unref();
  }

  disarm(): void {
    clearTimeout(this.deadline);
  }

  /** One more error on this connection: 421 4.7.0 and closed at the connection's or the client's limit. */
  private countError(): void {
    this.errors++;
    if (!this._closing && !this._closed && this.rules.failed(this.session, this.errors)) {
      this.send(...REPLY_ARGS('tooManyErrors'));
      this.close();
    }
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    // Replies written in one turn of the event loop (those to pipelined commands) leave in one
    // segment: the socket is corked until the turn ends (RFC 2920 lets a server group them).
    // Not the 220s (the greeting, and STARTTLS, after which TLS takes the socket over) nor the
    // replies after which the connection closes.
    if (code !== 220 && code !== 221 && code !== 421) corkForTurn(this._socket);
    if (Array.isArray(data) && code === 250 && !this.secure && this.rules.authOnlyOverTls) {
      // the EHLO reply: AUTH is not offered before STARTTLS (Postfix smtpd_tls_auth_only), so
      // that no client sends its password in the clear to find out it must not
      data = data.filter((line) => !line.startsWith('AUTH '));
    }
    const name = typeof data === 'string' && !ENHANCED_PREFIX.test(data) ? LIBRARY_REPLIES.get(`${code} ${data}`) : undefined;
    if (name) super.send(...REPLY_ARGS(name));
    else super.send(code, data, typeof data === 'string' && ENHANCED_PREFIX.test(data) ? false : context);
    // The gateway's own trouble (4.3.x: storage full, queues not writable) is not the client's error.
    const text = name ? REPLIES[name][1] : typeof data === 'string' ? data : '';
    if (code >= 400 && code !== 421 && !text.startsWith('4.3.')) this.countError();
    else if (code === 250 && typeof data === 'string' && data.startsWith(QUEUED)) this.errors = this.junk = 0;
  }
}

/** A catalogue reply as smtp-server's send() arguments. */
const REPLY_ARGS = (name: ReplyName): [number, string, false] => {
  const [code, enhanced, text] = REPLIES[name];
  return [code, `${enhanced} ${text}`, false];
};
const QUEUED = `${REPLIES.queued[1]} `;
/** Postfix's junk commands (smtpd_junk_command_limit), those smtp-server has. */
const JUNK = /^(NOOP|RSET|VRFY|HELP)(\s|$)/i;

/** What the ingress applies to each connection of a listener, besides smtp-server's hooks. */
export interface ConnectionRules {
  /** A reply refusing a command line (the session goes on), or undefined to let it through. */
  screen(line: Buffer, session: SMTPServerSession): SmtpReply | undefined;
  /** AUTH is left out of the EHLO reply until the connection is secure (submission). */
  authOnlyOverTls: boolean;
  errors: { junkCommands: number; softLimit: number; sleep: number };
  /** Records an error of the session; true when its connection or client is over its limit. */
  failed(session: SMTPServerSession, errorsOnConnection: number): boolean;
  commandTimeout: number;
}

/** smtp-server with GatewayConnection, and a way to find a session's connection. */
export class GatewayServer extends SMTPServer {
  readonly bySession = new WeakMap<SMTPServerSession, GatewayConnection>();
  readonly rules: ConnectionRules;

  constructor(options: SMTPServerOptions, rules: ConnectionRules) {
    super(options);
    this.rules = rules;
  }

  /** smtp-server's connect(), but for the connection's class and the deadline and lookup it adds. */
  override connect(socket: Socket | TLSSocket, socketOptions?: SMTPConnectionOptions | null): void {
    const connection = new GatewayConnection(this, socket, socketOptions);
    this.bySession.set(connection.session, connection);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data: Parameters<SMTPServer['_onClientConnect']>[0]) => this._onClientConnect(data));
    socket.once('close', () => connection.disarm());
    connection.armDeadline();
    connection.init();
  }
}
