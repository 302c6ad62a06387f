// Counts what a real socket sends: its Writable calls _write for one chunk and _writev for
// several in one system call, so `writes` is the number of system calls the socket made to send
// and `chunks` the writes its user issued (a corked socket gathers several into one _writev).
// `onSend`, when given, is told what each system call carried (latin1), in order.
import type { Socket } from 'node:net';

export interface Sends {
  writes: number;
  chunks: number;
}

type Sending = Socket & { _write: (...a: unknown[]) => void; _writev: (...a: unknown[]) => void };

export function countSends(socket: Socket, onSend?: (bytes: string) => void): Sends {
  const s = socket as Sending;
  const counts: Sends = { writes: 0, chunks: 0 };
  const text = (c: unknown) => (Buffer.isBuffer(c) ? c.toString('latin1') : String(c));
  const write = s._write;
  const writev = s._writev;
  s._write = function (this: Socket, ...a: unknown[]) {
    counts.writes++;
    counts.chunks++;
    onSend?.(text(a[0]));
    return write.apply(this, a);
  };
  s._writev = function (this: Socket, ...a: unknown[]) {
    counts.writes++;
    counts.chunks += (a[0] as unknown[]).length;
    onSend?.((a[0] as { chunk: unknown }[]).map((c) => text(c.chunk)).join(''));
    return writev.apply(this, a);
  };
  return counts;
}
