// The POP3 listener: accepts connections on pop3.listen and runs a Pop3Session for each.
import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { MailboxDirectory } from '../mailbox/directory.ts';
import type { MailStore } from '../mailbox/store.ts';
import { ConnectionLimiter } from '../net/clients.ts';
import { TrustedNetworks } from '../access/networks.ts';
import { SharedFailureThrottle } from '../access/throttle.ts';
import type { PoolState } from '../queue/poolState.ts';
import type { TlsPair } from '../access/tls.ts';
import { Pop3Session } from './session.ts';

export interface Pop3ServerOptions {
  config: Config;
  store: MailStore;
  directory: MailboxDirectory;
  log: Logger;
  /** Key and certificate for STLS; without them STLS is not offered. */
  tls?: TlsPair | undefined;
  /** Where failed logins are counted for every member; without it, in this process. */
  pool?: PoolState | undefined;
}

export class Pop3Server {
  private readonly opts: Pop3ServerOptions;
  private readonly log: Logger;
  private readonly sessions = new Set<Pop3Session>();
  private readonly limiter: SharedFailureThrottle;
  private readonly connections: ConnectionLimiter;
  private readonly trusted: TrustedNetworks;
  private readonly secureContext: SecureContext | undefined;
  private server: Server | undefined;

  constructor(opts: Pop3ServerOptions) {
    this.opts = opts;
    this.log = opts.log.child({ component: 'pop3' });
    const auth = opts.config.pop3.auth;
    this.limiter = new SharedFailureThrottle({ perConnection: 0, perClient: auth.perClient, window: auth.window, delay: 0 }, opts.pool, 'pop3-auth');
    this.connections = new ConnectionLimiter(opts.config.pop3.maxConnections, opts.config.pop3.maxConnectionsPerClient);
    this.trusted = new TrustedNetworks(opts.config.networks.trusted);
    this.secureContext = opts.tls ? createSecureContext({ key: opts.tls.key, cert: opts.tls.cert, minVersion: 'TLSv1.2' }) : undefined;
  }

  /** Listens on `listen` (default config.pop3.listen); resolves with the bound address. */
  async listen(listen = this.opts.config.pop3.listen): Promise<{ host: string; port: number }> {
    const server = createServer((socket) => this.accept(socket));
    server.on('error', (err) => this.log.error({ err }, 'pop3 listener error'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: listen.host, port: listen.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const a = this.address;
    this.log.info({ host: a.host, port: a.port, stls: Boolean(this.secureContext) }, 'pop3 listening');
    return a;
  }

  get address(): { host: string; port: number } {
    const a = this.server?.address();
    if (!a || typeof a === 'string') throw new Error('the POP3 server is not listening');
    return { host: a.address, port: a.port };
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  private accept(socket: Socket): void {
    socket.setNoDelay(true);
    const session = new Pop3Session(socket, {
      config: this.opts.config,
      store: this.opts.store,
      directory: this.opts.directory,
      limiter: this.limiter,
      trusted: this.trusted,
      secureContext: this.secureContext,
      log: this.log,
    });
    const over = this.connections.admit(session.id, session.client);
    if (over) {
      this.log.info({ client: socket.remoteAddress, limit: over }, 'connection refused');
      return session.refuse(over === 'tooManyConnections' ? 'Too many connections; try again later.' : 'Too many connections from your address; try again later.');
    }
    this.sessions.add(session);
    void session.closed.then(() => {
      this.sessions.delete(session);
      this.connections.release(session.id);
    });
    session.start();
  }

  /** Stops listening, ends every session without the UPDATE state and waits for their locks to go. */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    const sessions = [...this.sessions];
    for (const s of sessions) s.abort();
    await Promise.all(sessions.map((s) => s.closed));
    await closed;
  }
}
