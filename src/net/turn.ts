// Writes gathered per turn of the event loop: a socket corked at the first write of a turn and
// uncorked in that turn's check phase sends everything written meanwhile in one system call (one
// writev), in order. Nothing waits past the turn: the poll phase does not block while an
// immediate is due. Used where many callbacks of one turn write to the same peer: the queue's
// scripts to a Redis node (src/queue/scripts.ts), the SMTP replies to pipelined commands
// (src/ingress/smtp/connection.ts).
import type { Duplex } from 'node:stream';

/** Corks `socket` until the end of this turn, unless it is corked already or no longer writable. */
export function corkForTurn(socket: Pick<Duplex, 'cork' | 'uncork' | 'writable' | 'writableCorked' | 'destroyed'>): void {
  if (socket.writableCorked || !socket.writable || socket.destroyed) return;
  socket.cork();
  setImmediate(() => {
    if (socket.writableCorked) socket.uncork();
  });
}
