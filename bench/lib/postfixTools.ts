// Postfix's own test programs as a benchmark's load and sink: smtp-source sends messages over
// several SMTP sessions at once, smtp-sink takes them and throws them away. Both are small C
// programs (in Debian's postfix package, installed by ensurePostfix()), so the load and the sink
// cost the shared cores little beside the systems measured, which is what a figure of a gateway
// against Postfix should measure. smtp-source does not pipeline; each of its sessions sends its
// messages one after another over one connection (-d). Their CPU seconds are read from /proc
// (the sink, a process that runs until closed) and from the shell's `times` (the sources, which
// have exited by then).
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { freePort, waitFor } from '../../test/helpers/waitFor.ts';
import { procCpu } from './cpu.ts';
import { ensurePostfix } from './postfix.ts';

const SMTP_SINK = '/usr/sbin/smtp-sink';
const SMTP_SOURCE = '/usr/sbin/smtp-source';

/** A sink a benchmark counts the messages of: Postfix's smtp-sink, or any other that can tell how many it took. */
export interface CountingSink {
  port: number;
  /** Messages received so far (their data ended with "."). */
  received(): number;
  /** CPU seconds the sink used so far, when it runs in a process of its own. */
  cpu(): number | undefined;
  close(): Promise<void>;
}

/** smtp-sink on a free loopback port: takes every message (8BITMIME, PIPELINING, no TLS), keeps none. */
export async function startCSink(): Promise<CountingSink> {
  ensurePostfix();
  const port = await freePort();
  // -c: counters on stdout ("sess=N quit=N mesg=N", each update after a carriage return);
  // as root it must be told whom to run as
  const args = ['-c', ...(process.getuid?.() === 0 ? ['-u', 'nobody'] : []), '-m', '1024', `127.0.0.1:${port}`, '1024'];
  const proc: ChildProcess = spawn(SMTP_SINK, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let count = 0;
  let tail = '';
  let failure = '';
  proc.stdout!.on('data', (d: Buffer) => {
    tail = (tail + d.toString('latin1')).slice(-200);
    const all = [...tail.matchAll(/mesg=(\d+)/g)];
    if (all.length) count = Number(all.at(-1)![1]);
  });
  proc.stderr!.on('data', (d: Buffer) => (failure += d.toString()));
  // listening once a connection is taken
  const listening = () =>
    new Promise<boolean>((res) => {
      if (proc.exitCode !== null) return res(true); // said below
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), res(true)));
      s.once('error', () => res(false));
    });
  await waitFor(listening, { timeout: 10_000, every: 50, what: 'smtp-sink listening' });
  if (proc.exitCode !== null) throw new Error(`smtp-sink exited: ${failure.trim() || proc.exitCode}`);
  return {
    port,
    received: () => count,
    cpu: () => procCpu(proc.pid),
    close: () =>
      new Promise<void>((res) => {
        if (proc.exitCode !== null) return res();
        proc.once('exit', () => res());
        proc.kill('SIGTERM');
      }),
  };
}

/** One smtp-source run: `sessions` sessions sending `messages` messages of `payload` bytes of body. */
export interface SourcePart {
  sessions: number;
  messages: number;
  payload: number;
}

/**
 * Sends the parts' messages at once (one smtp-source each, all in parallel) from `from` to
 * `to` (each recipient numbered: -N) at 127.0.0.1:port; resolves when all have ended, with the
 * CPU seconds they used. A reply other than the expected one ends that smtp-source with an
 * error, and the promise rejects with its message: the benchmark's figure would not be one.
 */
export async function smtpSource(port: number, parts: SourcePart[], opts: { from: string; to: string; helo: string }): Promise<{ cpu: number }> {
  ensurePostfix();
  const one = (p: SourcePart) => [SMTP_SOURCE, '-d', '-N', '-s', p.sessions, '-m', p.messages, '-l', p.payload, '-f', opts.from, '-t', opts.to, '-M', opts.helo, `127.0.0.1:${port}`].join(' ');
  const live = parts.filter((p) => p.messages > 0);
  // each in the background, each waited for by its pid (so a failure is seen), then `times`: its second line the children's user and system time
  const script = `${live.map((p, i) => `${one(p)} & p${i}=$!`).join('; ')}; st=0; ${live.map((_, i) => `wait $p${i} || st=1`).join('; ')}; times; exit $st`;
  const proc = spawn('sh', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((res) => proc.once('exit', res));
  if (code !== 0) throw new Error(`smtp-source failed: ${err.trim().split('\n').slice(-3).join(' / ') || `exit ${code}`}`);
  const children = out.trim().split('\n').at(-1) ?? '';
  const cpu = [...children.matchAll(/(\d+)m([\d.]+)s/g)].reduce((a, m) => a + 60 * Number(m[1]) + Number(m[2]), 0);
  return { cpu };
}
