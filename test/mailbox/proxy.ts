// A TCP forwarder on a fixed loopback port in front of the test Cassandra node: close() makes the
// node unreachable (listener down, every connection cut), open() brings it back on the same port;
// `down` counts the bytes the node sent to its clients.
import { connect, createServer, type Server, type Socket } from 'node:net';

export class TcpProxy {
  readonly port: number;
  private readonly target: { host: string; port: number };
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** Bytes from the node to the clients since the proxy was made. */
  down = 0;

  constructor(port: number, target: { host: string; port: number }) {
    this.port = port;
    this.target = target;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async open(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.target);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {});
      }
      upstream.on('data', (d: Buffer) => (this.down += d.length));
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((ok, fail) => {
      server.once('error', fail);
      server.listen({ host: '127.0.0.1', port: this.port }, ok);
    });
    this.server = server;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((ok) => server.close(() => ok()));
  }
}
