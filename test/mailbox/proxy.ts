// A TCP forwarder on a fixed loopback port in front of the test Cassandra node: close() makes the
// node unreachable (listener down, every connection cut), open() brings it back on the same port;
// hold() keeps the node's replies back (the requests still reach it: a reply that never comes in
// time), pass() sends what was held and forwards again; `down` counts the bytes the node sent.
import { connect, createServer, type Server, type Socket } from 'node:net';

export class TcpProxy {
  readonly port: number;
  private readonly target: { host: string; port: number };
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** Bytes from the node to the clients since the proxy was made. */
  down = 0;
  private held: Array<[Socket, Buffer]> | undefined;

  constructor(port: number, target: { host: string; port: number }) {
    this.port = port;
    this.target = target;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Listens (again); nothing to do while listening. */
  async open(): Promise<void> {
    if (this.server) return;
    const server = createServer((client) => {
      const upstream = connect(this.target);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {});
      }
      upstream.on('data', (d: Buffer) => {
        this.down += d.length;
        if (this.held) this.held.push([client, d]);
        else if (!client.write(d)) upstream.pause(); // the client's backpressure, as pipe() would
      });
      client.on('drain', () => upstream.resume());
      client.pipe(upstream);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((ok, fail) => {
      server.once('error', fail);
      server.listen({ host: '127.0.0.1', port: this.port }, ok);
    });
    this.server = server;
  }

  /** Replies from the node wait in the proxy until pass(). */
  hold(): void {
    this.held ??= [];
  }

  /** Sends the replies held back, in order, and forwards again. */
  pass(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const [client, d] of held) if (!client.destroyed) client.write(d);
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((ok) => server.close(() => ok()));
  }
}
