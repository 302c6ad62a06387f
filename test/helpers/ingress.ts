// Helpers for the ingress tests: a gateway's queue manager on real redis-server processes, an
// ingress on free ports, a raw SMTP client for protocol edge cases, and direct looks at both
// replicas of a queue.
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { silentLogger } from '../../src/log.ts';
import { SmtpIngress } from '../../src/ingress/smtp/server.ts';
import type { UserDirectory } from '../../src/message/types.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from './config.ts';
import { startRedisPool, type TestRedis } from './redis.ts';
import { waitFor } from './waitFor.ts';

export interface Harness {
  pool: TestRedis[];
  qm: QueueManager;
  dataDir: string;
  /** Config overrides every ingress of this harness starts from. */
  base: Record<string, unknown>;
  ingresses: SmtpIngress[];
  stop(): Promise<void>;
}

let n = 0;

/** Three Redis nodes and a queue manager; one per test file. */
export async function startHarness(name: string, queue: Record<string, unknown> = {}): Promise<Harness> {
  const pool = await startRedisPool(3);
  const dataDir = mkdtempSync(join(tmpdir(), 'sg-ingress-'));
  const base = { gateway: { id: `gw-${name}`, hostname: 'mx.gw.test', dataDir }, redis: { nodes: pool.map((r) => r.url) }, queue };
  const qm = new QueueManager(testConfig(base), silentLogger, { gatewayId: `gw-${name}` });
  await qm.start();
  const h: Harness = {
    pool,
    qm,
    dataDir,
    base,
    ingresses: [],
    async stop() {
      await Promise.all(h.ingresses.map((i) => i.stop()));
      await qm.stop();
      await Promise.all(pool.map((r) => r.stop()));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return h;
}

/** An ingress on free ports with these overrides (smtp, domains, networks, users...). */
export async function startIngress(h: Harness, overrides: Record<string, unknown> = {}, users?: UserDirectory, qm = h.qm): Promise<SmtpIngress> {
  const smtp = { listen: '127.0.0.1:0', ...((overrides.smtp as object) ?? {}) };
  const submission = { listen: '127.0.0.1:0', ...((overrides.submission as object) ?? {}) };
  const config = testConfig({ ...h.base, ...overrides, smtp, submission });
  const ingress = new SmtpIngress({ config, queues: qm, log: silentLogger, users });
  await ingress.start();
  h.ingresses.push(ingress);
  return ingress;
}

export async function stopIngress(h: Harness, ingress: SmtpIngress): Promise<void> {
  h.ingresses = h.ingresses.filter((i) => i !== ingress);
  await ingress.stop();
}

export const uniqueDomain = (tag: string) => `${tag}-${process.pid}-${++n}.test`;

export interface Reply {
  code: number;
  lines: string[];
  /** The last line's text after the code, e.g. "5.7.1 <a@b>: Relay access denied". */
  text: string;
}

/** A raw SMTP client: write exactly the bytes a test wants, read replies one by one. */
export class RawClient {
  socket: Socket | TLSSocket;
  private buf = '';
  private waiting: (() => void) | undefined;
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.attach(socket);
  }

  private attach(s: Socket | TLSSocket): void {
    s.on('data', (d: Buffer) => {
      this.buf += d.toString('utf8');
      this.waiting?.();
    });
    s.on('close', () => {
      this.closed = true;
      this.waiting?.();
    });
    s.on('error', () => {});
  }

  static open(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return RawClient.connect({ port, host });
  }

  /** From another address of the loopback range (127.0.0.2...), to be a different client. */
  static openFrom(port: number, localAddress: string): Promise<RawClient> {
    return RawClient.connect({ port, host: '127.0.0.1', localAddress });
  }

  private static async connect(opts: { port: number; host: string; localAddress?: string }): Promise<RawClient> {
    const s = connect(opts);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    return new RawClient(s);
  }

  /** Next complete reply (multi-line aware); undefined when the server closed without one. */
  async read(timeout = 5000): Promise<Reply | undefined> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const r = this.take();
      if (r) return r;
      if (this.closed) return undefined;
      if (Date.now() > deadline) throw new Error(`no reply within ${timeout} ms (have ${JSON.stringify(this.buf)})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiting = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiting = undefined;
    }
  }

  private take(): Reply | undefined {
    const lines: string[] = [];
    let pos = 0;
    for (;;) {
      const eol = this.buf.indexOf('\r\n', pos);
      if (eol < 0) return undefined;
      const line = this.buf.slice(pos, eol);
      lines.push(line);
      pos = eol + 2;
      if (line[3] !== '-') {
        this.buf = this.buf.slice(pos);
        return { code: Number(line.slice(0, 3)), lines, text: line.slice(4) };
      }
    }
  }

  /** Bytes received but not yet read as replies. */
  get pending(): string {
    return this.buf;
  }

  write(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  }

  async cmd(line: string): Promise<Reply> {
    this.write(`${line}\r\n`);
    const r = await this.read();
    if (!r) throw new Error(`connection closed after ${line}`);
    return r;
  }

  /** After a 220 to STARTTLS: the TLS handshake on the same socket. */
  async startTls(): Promise<void> {
    const plain = this.socket as Socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const s = tlsConnect({ socket: plain, rejectUnauthorized: false, servername: 'mx.gw.test' });
    await new Promise<void>((resolve, reject) => {
      s.once('secureConnect', resolve);
      s.once('error', reject);
    });
    this.socket = s;
    this.attach(s);
  }

  /** Waits until the server closes the connection. */
  async closedByServer(timeout = 5000): Promise<boolean> {
    await waitFor(() => this.closed, { timeout, what: 'server closes the connection' });
    return true;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Opens a session up to the point after EHLO. */
export async function session(port: number, localAddress?: string): Promise<RawClient> {
  const c = localAddress ? await RawClient.openFrom(port, localAddress) : await RawClient.open(port);
  const greet = await c.read();
  if (greet?.code !== 220) throw new Error(`greeting: ${JSON.stringify(greet)}`);
  const ehlo = await c.cmd('EHLO client.test');
  if (ehlo.code !== 250) throw new Error(`EHLO: ${JSON.stringify(ehlo)}`);
  return c;
}

/** The state and live entry of a message on every replica of its queue, read from the nodes. */
export async function onReplicas(qm: QueueManager, domain: string, id: string): Promise<{ node: string; state: string | null; live: number }[]> {
  const q = qm.queues.get(domain);
  if (!q) return [];
  return Promise.all(
    q.replicas.map(async (r) => ({ node: r.node.id, state: await r.node.client.hget(q.keys[3], id), live: await r.node.client.xlen(q.keys[0]) })),
  );
}

/** Live entries of a domain's queue on every node of the pool (0 where there is none). */
export async function liveEverywhere(h: Harness, domain: string): Promise<number[]> {
  const key = `sg:{${h.qm.gatewayId}:${domain}}:live`;
  return Promise.all(
    h.pool.map(async (r) => {
      const c = r.client();
      try {
        return await c.xlen(key);
      } catch {
        return -1;
      }
    }),
  );
}
