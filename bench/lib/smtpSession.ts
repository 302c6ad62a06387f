// One SMTP client session for the load generators of the benchmarks (smtp.ts, faults.ts): a raw TCP
// connection, PIPELINING for the envelope (MAIL, RCPT and DATA in one write), replies read in
// order. A connection that closes, or a reply that does not come within `replyTimeoutMs`, answers
// every reply still awaited with code 0, so a caller can tell "refused" (a 4xx/5xx reply) from
// "the outcome is unknown" (the message data was written and no reply came).
import { connect, type Socket } from 'node:net';

export interface Reply {
  code: number;
  text: string;
}

/** The reply given to everything awaited when the connection is gone. */
const LOST: Reply = { code: 0, text: 'connection lost' };

export interface SessionOptions {
  host?: string;
  /** The EHLO name. */
  name?: string;
  /** Time to connect and get the greeting and the EHLO reply. */
  openTimeoutMs?: number;
  /** A reply that takes longer closes the connection (0: wait for ever). */
  replyTimeoutMs?: number;
}

export interface SendResult {
  /** The final reply: the first of MAIL, RCPT, DATA that refused, else the reply to the data. */
  reply: Reply;
  /** Milliseconds from the end of the data to its reply (0 when the data was not sent). */
  ms: number;
  /** The whole message data was written: without a reply, the server may or may not have it. */
  dataSent: boolean;
}

export class SmtpSession {
  private readonly socket: Socket;
  private buf = '';
  private readonly waiting: ((r: Reply) => void)[] = [];
  private readonly early: Reply[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly replyTimeoutMs: number;
  closed = false;

  private constructor(socket: Socket, replyTimeoutMs: number) {
    this.socket = socket;
    this.replyTimeoutMs = replyTimeoutMs;
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.buf += d.toString('latin1');
      for (let eol = this.buf.indexOf('\r\n'); eol >= 0; eol = this.buf.indexOf('\r\n')) {
        const line = this.buf.slice(0, eol);
        this.buf = this.buf.slice(eol + 2);
        if (line[3] === '-') continue;
        this.deliver({ code: Number(line.slice(0, 3)) || 0, text: line });
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      clearTimeout(this.timer);
      for (const w of this.waiting.splice(0)) w(LOST);
    });
  }

  private deliver(r: Reply): void {
    const w = this.waiting.shift();
    if (w) w(r);
    else this.early.push(r);
    this.arm();
  }

  /** The reply timer runs while a reply is awaited. */
  private arm(): void {
    clearTimeout(this.timer);
    if (this.replyTimeoutMs > 0 && this.waiting.length) this.timer = setTimeout(() => this.socket.destroy(), this.replyTimeoutMs);
  }

  static async open(port: number, opts: SessionOptions = {}): Promise<SmtpSession> {
    const socket = connect(port, opts.host ?? '127.0.0.1');
    const s = new SmtpSession(socket, opts.replyTimeoutMs ?? 0);
    const limit = opts.openTimeoutMs ? setTimeout(() => socket.destroy(), opts.openTimeoutMs) : undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
        socket.once('close', () => reject(new Error('connection closed')));
      });
      const greet = await s.reply();
      if (greet.code !== 220) throw new Error(`greeting: ${greet.text}`);
      s.socket.write(`EHLO ${opts.name ?? 'load.bench.test'}\r\n`);
      const ehlo = await s.reply();
      if (ehlo.code !== 250) throw new Error(`EHLO: ${ehlo.text}`);
      return s;
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(limit);
    }
  }

  private reply(): Promise<Reply> {
    const r = this.early.shift();
    if (r) return Promise.resolve(r);
    if (this.closed) return Promise.resolve(LOST);
    const p = new Promise<Reply>((resolve) => this.waiting.push(resolve));
    this.arm();
    return p;
  }

  /** One message to one recipient; `body` is the message data ending with the "." line. */
  async send(from: string, rcpt: string, body: Buffer): Promise<SendResult> {
    if (this.closed) return { reply: LOST, ms: 0, dataSent: false };
    this.socket.write(`MAIL FROM:<${from}>\r\nRCPT TO:<${rcpt}>\r\nDATA\r\n`);
    const [mail, rcptReply, data] = [await this.reply(), await this.reply(), await this.reply()];
    if (mail.code !== 250 || rcptReply.code !== 250 || data.code !== 354) {
      if (data.code === 354) {
        this.socket.write('.\r\n');
        await this.reply();
      }
      const first = [mail, rcptReply, data].find((r, i) => r.code !== [250, 250, 354][i])!;
      return { reply: first, ms: 0, dataSent: false };
    }
    const t0 = performance.now();
    this.socket.write(body);
    const reply = await this.reply();
    return { reply, ms: performance.now() - t0, dataSent: true };
  }

  close(): void {
    if (!this.closed) this.socket.end('QUIT\r\n');
    this.socket.destroy();
  }
}
