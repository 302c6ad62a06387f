// A real SMTP server (smtp-server) on 127.0.0.1, port 0, that records what it receives: envelopes
// and message bodies (Buffers, as received after dot-unstuffing), connections (simultaneous
// maximum, total), arrivals per second. It can be told per recipient to answer 4xx, 5xx, or hang
// (never answer), to answer the data with a given reply, to refuse connections (421 at the
// greeting, or drop them), to cap recipients per transaction (452 4.5.3), and to take its time.
import type { Socket } from 'node:net';
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';

export interface SinkMessage {
  from: string;
  to: string[];
  raw: Buffer;
  /** Arrival (ms, wall clock): when the data was complete. */
  at: number;
  /** The connection was TLS (STARTTLS) when the message came. */
  secure: boolean;
  session: string;
}

export type RcptAnswer = { code: number; text: string } | 'hang' | 'ok';

export interface SinkOptions {
  /** Do not offer STARTTLS. */
  hideStartTls?: boolean;
  /** Recipients per transaction; more get "452 4.5.3 Too many recipients". */
  maxRecipients?: number;
  /** Wait this long before answering the end of the data. */
  dataDelayMs?: number;
}

export class SmtpSink {
  readonly host = '127.0.0.1';
  port = 0;
  readonly messages: SinkMessage[] = [];
  /** TCP connections open now, the most at once, and ever. */
  connections = 0;
  maxConcurrent = 0;
  totalConnections = 0;
  /** Connections refused (421 or dropped) by failConnections. */
  failedConnections = 0;
  readonly server: SMTPServer;
  private readonly answers = new Map<string, RcptAnswer>();
  private failMode: { mode: '421' | 'drop'; left: number } | undefined;
  /** Reply to the end of the data instead of 250 (all messages while set). */
  dataAnswer: { code: number; text: string } | undefined;
  opts: SinkOptions;
  private readonly sockets = new Set<Socket>();
  private readonly hung = new Set<() => void>();

  constructor(opts: SinkOptions = {}) {
    this.opts = opts;
    this.server = new SMTPServer({
      secure: false,
      authOptional: true,
      disabledCommands: ['AUTH'],
      hideSTARTTLS: opts.hideStartTls ?? false,
      logger: false,
      banner: 'streamgate test sink',
      size: 64 * 1024 * 1024,
      closeTimeout: 50,
      maxClients: 10_000,
      onConnect: (_session, cb) => {
        const f = this.failMode;
        if (f && f.left > 0 && f.mode === '421') {
          f.left--;
          this.failedConnections++;
          return cb(Object.assign(new Error('4.3.2 Service not available, try later'), { responseCode: 421 }));
        }
        cb();
      },
      onMailFrom: (_addr, _session, cb) => cb(),
      onRcptTo: (addr, session, cb) => {
        const max = this.opts.maxRecipients;
        if (max !== undefined && session.envelope.rcptTo.length >= max) {
          return cb(Object.assign(new Error('4.5.3 Too many recipients'), { responseCode: 452 }));
        }
        const a = this.answers.get(addr.address.toLowerCase()) ?? 'ok';
        if (a === 'hang') {
          this.hung.add(() => cb(Object.assign(new Error('4.4.2 closing'), { responseCode: 421 })));
          return;
        }
        if (a === 'ok') return cb();
        cb(Object.assign(new Error(a.text), { responseCode: a.code }));
      },
      onData: (stream: SMTPServerDataStream, session: SMTPServerSession, cb) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          const finish = () => {
            if (this.dataAnswer) return cb(Object.assign(new Error(this.dataAnswer.text), { responseCode: this.dataAnswer.code }));
            this.messages.push({
              from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
              to: session.envelope.rcptTo.map((r) => r.address),
              raw: Buffer.concat(chunks),
              at: Date.now(),
              secure: session.secure,
              session: session.id,
            });
            cb(null, '2.0.0 queued as ' + this.messages.length);
          };
          if (this.opts.dataDelayMs) setTimeout(finish, this.opts.dataDelayMs);
          else finish();
        });
      },
    });
    this.server.on('error', () => {});
    this.server.server.on('connection', (sock: Socket) => {
      const f = this.failMode;
      if (f && f.left > 0 && f.mode === 'drop') {
        f.left--;
        this.failedConnections++;
        this.totalConnections++;
        sock.destroy();
        return;
      }
      this.sockets.add(sock);
      this.connections++;
      this.totalConnections++;
      this.maxConcurrent = Math.max(this.maxConcurrent, this.connections);
      sock.once('close', () => {
        this.sockets.delete(sock);
        this.connections--;
      });
    });
  }

  /** How to answer RCPT TO for an address: "ok", { code, text }, or "hang". */
  answer(rcpt: string, a: RcptAnswer): void {
    this.answers.set(rcpt.toLowerCase(), a);
  }

  /** Refuse the next `n` connections (Infinity: until told otherwise; 0 stops refusing). */
  failConnections(n: number, mode: '421' | 'drop' = '421'): void {
    this.failMode = n > 0 ? { mode, left: n } : undefined;
  }

  /** Messages that arrived in each whole second (keys: seconds since the epoch). */
  perSecond(): Map<number, number> {
    const m = new Map<number, number>();
    for (const msg of this.messages) {
      const s = Math.floor(msg.at / 1000);
      m.set(s, (m.get(s) ?? 0) + 1);
    }
    return m;
  }

  /** Messages whose recipients include `rcpt`. */
  to(rcpt: string): SinkMessage[] {
    return this.messages.filter((m) => m.to.some((t) => t.toLowerCase() === rcpt.toLowerCase()));
  }

  async listen(port = 0): Promise<this> {
    await new Promise<void>((resolve, reject) => {
      this.server.server.once('error', reject);
      this.server.listen(port, this.host, () => {
        this.server.server.removeListener('error', reject);
        resolve();
      });
    });
    this.port = (this.server.server.address() as { port: number }).port;
    return this;
  }

  async close(): Promise<void> {
    for (const h of this.hung) h();
    this.hung.clear();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

export async function startSmtpSink(opts: SinkOptions = {}): Promise<SmtpSink> {
  return new SmtpSink(opts).listen();
}
