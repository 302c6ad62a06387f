// Counts what a real socket sends: its Writable calls _write for one chunk and _writev for
// several in one system call, so `writes` is the number of system calls the socket made to send
// and `chunks` the writes its user issued (a corked socket gathers several into one _writev).
import type { Socket } from 'node:net';

export interface Sends {
  writes: number;
  chunks: number;
}

type Sending = Socket & { _write: (...a: unknown[]) => void; _writev: (...a: unknown[]) => void };

export function countSends(socket: Socket): Sends {
  const s = socket as Sending;
  const counts: Sends = { writes: 0, chunks: 0 };
  const write = s._write;
  const writev = s._writev;
  s._write = function (this: Socket, ...a: unknown[]) {
    counts.writes++;
    counts.chunks++;
    return write.apply(this, a);
  };
  s._writev = function (this: Socket, ...a: unknown[]) {
    counts.writes++;
    counts.chunks += (a[0] as unknown[]).length;
    return writev.apply(this, a);
  };
  return counts;
}
