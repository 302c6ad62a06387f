// A small POP3 client over node:net and node:tls for tests: one command at a time or pipelined,
// single-line and multi-line answers (dot-unstuffed), STLS; and curl's pop3:// as a client.
import { execFile } from 'node:child_process';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';

export interface Multi {
  status: string;
  /** The body of a multi-line answer, dot-unstuffed, without the final ".". */
  data: Buffer;
  lines: string[];
}

export class Pop3Client {
  greeting = '';
  private sock: Socket | TLSSocket;
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;

  private constructor(sock: Socket) {
    this.sock = sock;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.attach(sock);
  }

  private attach(sock: Socket | TLSSocket): void {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    sock.on('close', () => {
      this.ended = true;
      this.waiter?.();
      this.resolveClosed();
    });
    sock.on('error', () => {});
  }

  static async connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<Pop3Client> {
    const sock = netConnect({ port, host, localAddress });
    await new Promise<void>((ok, fail) => {
      sock.once('connect', ok);
      sock.once('error', fail);
    });
    const c = new Pop3Client(sock);
    c.greeting = await c.line();
    return c;
  }

  get isClosed(): boolean {
    return this.ended;
  }

  private async until(find: () => number): Promise<number> {
    for (;;) {
      const i = find();
      if (i >= 0) return i;
      if (this.ended) throw new Error(`connection closed; unread: ${JSON.stringify(this.buf.toString('latin1').slice(0, 200))}`);
      await new Promise<void>((r) => (this.waiter = r));
      this.waiter = undefined;
    }
  }

  /** The next line, without CRLF. */
  async line(): Promise<string> {
    const i = await this.until(() => this.buf.indexOf('\r\n'));
    const s = this.buf.toString('utf8', 0, i);
    this.buf = this.buf.subarray(i + 2);
    return s;
  }

  /** A multi-line answer whose status line was already read or is next. */
  async multiBody(status: string): Promise<Multi> {
    if (!status.startsWith('+OK')) return { status, data: Buffer.alloc(0), lines: [] };
    // the body ends at a line that is just "."
    const end = await this.until(() => {
      if (this.buf.subarray(0, 3).equals(Buffer.from('.\r\n'))) return 0;
      const j = this.buf.indexOf('\r\n.\r\n');
      return j < 0 ? -1 : j + 2;
    });
    const body = this.buf.subarray(0, end);
    this.buf = this.buf.subarray(end + 3);
    const data = Buffer.from(body.toString('latin1').replace(/(^|\r\n)\.\./g, '$1.'), 'latin1');
    const text = data.toString('utf8');
    const lines = text === '' ? [] : text.replace(/\r\n$/, '').split('\r\n');
    return { status, data, lines };
  }

  send(line: string): void {
    this.sock.write(`${line}\r\n`);
  }

  writeRaw(data: string | Buffer): void {
    this.sock.write(data);
  }

  async command(line: string): Promise<string> {
    this.send(line);
    return this.line();
  }

  async multi(line: string): Promise<Multi> {
    this.send(line);
    return this.multiBody(await this.line());
  }

  /** USER/PASS; the answer to PASS. */
  async login(user: string, password: string): Promise<string> {
    const u = await this.command(`USER ${user}`);
    if (!u.startsWith('+OK')) return u;
    return this.command(`PASS ${password}`);
  }

  async stls(): Promise<string> {
    const r = await this.command('STLS');
    if (r.startsWith('+OK')) await this.upgrade();
    return r;
  }

  /** Starts TLS on the connection (after the server's +OK to STLS); unread plaintext is dropped. */
  async upgrade(): Promise<void> {
    const plain = this.sock as Socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    this.buf = Buffer.alloc(0);
    const secure = tlsConnect({ socket: plain, rejectUnauthorized: false });
    await new Promise<void>((ok, fail) => {
      secure.once('secureConnect', ok);
      secure.once('error', fail);
    });
    this.sock = secure;
    this.attach(secure);
  }

  /** The unread bytes (what the server sent that no read consumed). */
  get pending(): Buffer {
    return this.buf;
  }

  /** Drops the connection without QUIT. */
  /** Raw bytes, as they are. */
  write(data: string): void {
    this.sock.write(data);
  }

  destroy(): void {
    this.sock.destroy();
  }

  async quit(): Promise<string> {
    const r = await this.command('QUIT');
    await this.closed;
    return r;
  }
}

/** Runs curl (asynchronously: the server answers from this same process). */
export function curl(args: string[]): Promise<{ code: number; out: Buffer; err: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '--max-time', '30', ...args], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 }, (e, out, err) => {
      resolve({ code: e ? Number((e as { code?: number }).code ?? 1) : 0, out, err: err.toString() });
    });
  });
}
