// A counting SMTP sink in a process of its own, for benchmarks whose load generator must not share
// an event loop with the sink's parsing (bench:smtp's whole-gateway mode). It accepts everything,
// discards the data and counts the messages whose data was read in full; the parent asks for the
// count over IPC ({ count: true } → { count: N }). Started by startSinkProcess().
import { fork, type ChildProcess } from 'node:child_process';
import { SMTPServer } from 'smtp-server';

export interface SinkProcess {
  port: number;
  pid: number;
  count(): Promise<number>;
  stop(): void;
}

export async function startSinkProcess(): Promise<SinkProcess> {
  const child: ChildProcess = fork(import.meta.filename, ['serve'], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m) => resolve((m as { port: number }).port));
    child.once('exit', (code) => reject(new Error(`the sink exited with ${code}`)));
  });
  return {
    port,
    pid: child.pid!,
    count: () =>
      new Promise((resolve) => {
        child.once('message', (m) => resolve((m as { count: number }).count));
        child.send({ count: true });
      }),
    stop: () => void child.kill('SIGKILL'),
  };
}

if (process.argv[1] === import.meta.filename && process.argv[2] === 'serve') {
  let count = 0;
  const server = new SMTPServer({
    secure: false,
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    logger: false,
    size: 64 * 1024 * 1024,
    onData(stream, _session, done) {
      stream.on('data', () => {});
      stream.on('end', () => {
        count++;
        done();
      });
    },
  });
  server.listen(0, '127.0.0.1', () => process.send!({ port: (server.server.address() as { port: number }).port }));
  process.on('message', () => process.send!({ count }));
}
