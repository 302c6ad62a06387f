// The mail the mailbox benchmarks send: CassMail-like messages of a size range, the same sizes on
// every run and on both sides of a comparison.
import { randomBytes } from 'node:crypto';

/** A small deterministic PRNG (mulberry32), so both sides get the same sizes every run. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Msg {
  rcpt: string;
  raw: Buffer;
}

/** `n` messages of `min`–`max` bytes: headers, a text part and a base64 "attachment" in 76-column lines. */
export function workload(n: number, min: number, max: number, seed: number, rcpt: (i: number) => string): Msg[] {
  const rnd = prng(seed);
  const out: Msg[] = [];
  for (let i = 0; i < n; i++) {
    const size = Math.floor(min + rnd() * (max - min));
    const to = rcpt(i);
    const head = `From: <load@src.test>\r\nTo: <${to}>\r\nSubject: bench ${seed}/${i}\r\nMessage-ID: <${seed}.${i}.${randomBytes(4).toString('hex')}@src.test>\r\n` +
      `MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n` +
      `--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n`;
    const tail = '--b--\r\n';
    const room = Math.max(0, size - head.length - tail.length);
    const lines = Math.floor(room / 78);
    const b64 = randomBytes(Math.ceil((lines * 76 * 3) / 4)).toString('base64');
    const body: string[] = [];
    for (let l = 0; l < lines; l++) body.push(b64.slice(l * 76, l * 76 + 76));
    out.push({ rcpt: to, raw: Buffer.from(`${head}${body.join('\r\n')}${lines ? '\r\n' : ''}${tail}`) });
  }
  return out;
}

export const totalBytes = (msgs: Msg[]) => msgs.reduce((s, m) => s + m.raw.length, 0);
