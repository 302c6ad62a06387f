// The relay's dot-stuffing: nodemailer's DataStream as installed (its scan patched,
// patches/nodemailer+*.patch: a regular expression finds where the rules apply) against the same
// rules applied by testing every byte in JavaScript, as the unpatched library does, on
// bench:relay's message mix (70% 1 KB, 30% 10 KB, 80-byte lines) and on 50–500 KB messages. CPU
// microseconds per message on this process's thread, medians of the rounds; both give the same
// bytes (checked here on every message, and for every short message in
// test/relay/dotStuffing.test.ts).
//
//   npm run bench:stuffing        BENCH_N=20000 (messages per round)  BENCH_RUNS=5 (rounds, alternating)
import DataStream from 'nodemailer/lib/smtp-connection/data-stream';
import { median } from './lib/stats.ts';

const N = Number(process.env.BENCH_N ?? 20_000);
const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 5));

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

/** The rules tested byte by byte, chunk after chunk: the unpatched library's way. */
class ByteByByte extends DataStream {
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    const out: Buffer[] = [];
    let from = 0;
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i]!;
      const prev = i ? chunk[i - 1] : this.lastByte;
      const insert = prev === CR && byte !== LF ? (byte === DOT ? '\n.' : '\n') : byte === LF && prev !== CR ? '\r' : byte === DOT && (prev === LF || prev === false) ? '.' : '';
      if (insert) {
        out.push(chunk.subarray(from, i), Buffer.from(insert));
        from = i;
      }
    }
    this.lastByte = chunk[chunk.length - 1]!;
    this.push(out.length ? Buffer.concat([...out, chunk.subarray(from)]) : chunk);
    done();
  }
}

const line = 'The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuv\r\n';
const relayMix = Array.from({ length: 10 }, (_, i) => Buffer.from(line.repeat(i < 7 ? 12 : 125)));
// 50–500 KB with a dot at the start of a line now and then, written in 64 KB pieces as a stream reads them
const large = Array.from({ length: 10 }, (_, i) => Buffer.from(`${line.repeat(60)}.dot\r\n`.repeat(1 + 10 * i)));

/** One message through a stream of `Kind` in pieces of 64 KB: what it gives out. */
function stuff(Kind: typeof DataStream, msg: Buffer): Buffer {
  const s = new Kind();
  const out: Buffer[] = [];
  s.push = (b: Buffer | null) => (b ? out.push(b) > 0 : true);
  for (let at = 0; at < msg.length; at += 65_536) s._transform(msg.subarray(at, at + 65_536), 'latin1', () => {});
  s._flush(() => {});
  return Buffer.concat(out);
}

/** CPU µs per message of `Kind` over `n` messages of `set`. */
function round(Kind: typeof DataStream, set: Buffer[], n: number): number {
  const t0 = process.cpuUsage();
  for (let i = 0; i < n; i++) stuff(Kind, set[i % set.length]!);
  const t = process.cpuUsage(t0);
  return (t.user + t.system) / n;
}

for (const [name, set, n] of [['relay mix, 1 KB / 10 KB', relayMix, N], ['50–500 KB', large, Math.max(10, Math.round(N / 100))]] as const) {
  for (const m of set) if (!stuff(DataStream, m).equals(stuff(ByteByByte, m))) throw new Error(`${name}: the two give different bytes`);
  round(DataStream, set, n); // warm both up
  round(ByteByByte, set, n);
  const patched: number[] = [];
  const bytewise: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    patched.push(round(DataStream, set, n));
    bytewise.push(round(ByteByByte, set, n));
  }
  const [p, b] = [median(patched), median(bytewise)];
  const mb = set.reduce((a, m) => a + m.length, 0) / set.length / 1e6;
  console.log(`${name}: DataStream as installed ${p.toFixed(1)} µs per message (${(p / 1000 / mb).toFixed(2)} ms per MB), byte by byte ${b.toFixed(1)} µs (${(b / 1000 / mb).toFixed(2)} ms per MB): ${(b / p).toFixed(1)}× less CPU; ${RUNS} rounds of ${n} messages, medians`);
}
