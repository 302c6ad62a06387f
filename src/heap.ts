// The garbage collector and a gateway's buffers. Message bodies, socket reads and the Cassandra
// driver's frames are Buffers outside the JavaScript heap. By default V8 starts a full
// mark-compact each time such external memory has grown by 64 MB since the last one, however
// small the heap and however short-lived the buffers: serving a mailbox at 200 MB/s that is a
// mark-compact of the whole heap every tenth of a second, a third of the main thread, freeing
// almost nothing the young generation's collections would not have freed anyway. With
// --external-memory-accounted-in-global-limit, external memory counts toward the heap's global
// limit instead, which grows with the heap like the rest of it.
//
// Measured (bench:mailbox, alternating runs): the main thread during the POP3 downloads 910–990
// against 560–660 ms; POP3 0.39–0.41× Dovecot against 0.45–0.48×; the process's peak RSS 1.13
// against 1.18 GB. A loop of 1 MB buffers that die young (test/heap.test.ts): about 28 major
// collections in 2 GB by default, 0–2 with it.
import { setFlagsFromString } from 'node:v8';

let tuned = false;

/** Sets the V8 flags a gateway process runs with; once per process, before its parts start. */
export function tuneHeap(): void {
  if (tuned) return;
  tuned = true;
  setFlagsFromString('--external-memory-accounted-in-global-limit');
}
