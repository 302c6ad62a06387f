// src/ingress/smtp/connection.ts is the one place that uses smtp-server's internals. This test
// fails, and says what changed, when the smtp-server installed is not the one the adapter was
// checked against: its version, the body of SMTPServer.connect that the adapter repeats, and
// every underscored member the adapter reads or overrides, on a real connection; and the replies to
// pipelined commands leaving in one write.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { GatewayServer, type ConnectionRules, type GatewayConnection } from '../../src/ingress/smtp/connection.ts';
import { reply } from '../../src/ingress/smtp/replies.ts';
import { countSends } from '../helpers/sends.ts';
import { waitFor } from '../helpers/waitFor.ts';

const CHECKED = '3.21.6';

/** SMTPServer.connect as the adapter's GatewayServer.connect repeats it (white space folded). */
const LIBRARY_CONNECT =
  "connect(socket, socketOptions) { let connection = new SMTPConnection(this, socket, socketOptions); this.connections.add(connection); connection.on('error', err => this._onError(err)); connection.on('connect', data => this._onClientConnect(data)); connection.init(); }";

function installedVersion(): string {
  const path = createRequire(import.meta.url).resolve('smtp-server/package.json');
  return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
}

describe('smtp-server adapter (connection.ts)', () => {
  it('is pinned to the exact smtp-server version it was checked against, and that version is installed', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { dependencies: Record<string, string> };
    assert.equal(pkg.dependencies['smtp-server'], CHECKED, 'package.json pins smtp-server to the version connection.ts was checked against');
    assert.equal(installedVersion(), CHECKED, 'the installed smtp-server is the checked one');
  });

  it("repeats the library's SMTPServer.connect: the body it overrides is unchanged", () => {
    assert.equal(SMTPServer.prototype.connect.toString().replace(/\s+/g, ' '), LIBRARY_CONNECT);
    assert.equal(typeof SMTPServer.prototype._onError, 'function', 'SMTPServer._onError');
    assert.equal(typeof SMTPServer.prototype._onClientConnect, 'function', 'SMTPServer._onClientConnect');
    assert.equal(typeof SMTPConnection.prototype._onCommand, 'function', 'SMTPConnection._onCommand');
    assert.equal(typeof SMTPConnection.prototype.send, 'function', 'SMTPConnection.send');
  });

  it('a real connection has every internal member the adapter reads, and its command screen runs', async () => {
    const screened: string[] = [];
    const rules: ConnectionRules = {
      screen: (line) => {
        screened.push(line.toString('latin1').trim());
        return line.toString('latin1').startsWith('VRFY') ? reply('badParameter', 'X', 'VRFY') : undefined;
      },
      authOnlyOverTls: false,
      errors: { junkCommands: 100, softLimit: 100, sleep: 0 },
      failed: () => false,
      commandTimeout: 60_000,
    };
    let session: SMTPServerSession | undefined;
    const server = new GatewayServer(
      {
        logger: false,
        disabledCommands: ['AUTH', 'STARTTLS'],
        onConnect: (s, cb) => {
          session = s;
          cb();
        },
      },
      rules,
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.server.address() as { port: number }).port;
    const socket: Socket = connect(port, '127.0.0.1');
    let received = '';
    socket.on('data', (b: Buffer) => (received += b.toString('latin1')));
    try {
      await waitFor(() => received.startsWith('220 '), { what: 'greeting' });
      const conn: GatewayConnection | undefined = session && server.bySession.get(session);
      assert.ok(conn, 'the session finds its connection');
      assert.equal(conn._server, server, '_server');
      assert.ok(conn._socket && typeof conn._socket.cork === 'function', '_socket is the socket');
      for (const name of ['_ready', '_upgrading', '_handlerPending', '_closing', '_closed'] as const) assert.equal(typeof conn[name], 'boolean', name);
      assert.ok(conn._nextHandler === false || typeof conn._nextHandler === 'function', '_nextHandler');
      assert.ok(conn._dataStream === false || conn._dataStream === null || typeof conn._dataStream === 'object', '_dataStream');
      socket.write('EHLO client.test\r\nVRFY someone\r\n');
      await waitFor(() => /\r\n555 /.test(received), { what: 'the screen refused VRFY' });
      assert.deepEqual(screened, ['EHLO client.test', 'VRFY someone']);
      // replies to pipelined commands written in one turn leave in one write (send() corks the
      // socket for the turn): smtp-server answers MAIL and RCPT in one turn here, DATA in a later one
      const sends = countSends(conn._socket as Socket);
      socket.write('MAIL FROM:<a@client.test>\r\nRCPT TO:<b@server.test>\r\nDATA\r\n');
      await waitFor(() => /\r\n354 /.test(received), { what: 'the reply to DATA' });
      assert.deepEqual(sends, { writes: 2, chunks: 3 });
    } finally {
      socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
