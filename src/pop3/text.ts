// Bytes on a POP3 connection: command lines in, byte-stuffed multi-line responses out (RFC 1939 3).

const LF = 0x0a;
const DOT = 0x2e;
const DOT_BUF = Buffer.from('.');
const NL_DOT = Buffer.from('\n.');

/** The line that stood for a command longer than the limit (the command itself was dropped). */
export const TOO_LONG = Symbol('line too long');

/** Splits incoming bytes into lines (CRLF or LF); a line longer than `max` becomes TOO_LONG. */
export class LineSplitter {
  private buf: Buffer = Buffer.alloc(0);
  private discarding = false;
  private readonly max: number;

  constructor(max: number) {
    this.max = max;
  }

  push(data: Buffer): (string | typeof TOO_LONG)[] {
    const out: (string | typeof TOO_LONG)[] = [];
    let buf = this.buf.length > 0 ? Buffer.concat([this.buf, data]) : data;
    for (;;) {
      const nl = buf.indexOf(LF);
      if (nl < 0) break;
      if (this.discarding) {
        this.discarding = false;
        out.push(TOO_LONG);
      } else if (nl > this.max) {
        out.push(TOO_LONG);
      } else {
        const end = nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl;
        out.push(buf.toString('utf8', 0, end));
      }
      buf = buf.subarray(nl + 1);
    }
    if (buf.length > this.max) {
      this.discarding = true;
      buf = Buffer.alloc(0);
    }
    this.buf = buf.length > 0 ? Buffer.from(buf) : Buffer.alloc(0);
    return out;
  }

  /** Forgets what was received and not yet split (after STLS: nothing sent before TLS counts). */
  reset(): void {
    this.buf = Buffer.alloc(0);
    this.discarding = false;
  }
}

/**
 * Byte-stuffing across chunk boundaries, in one pass: a "." that starts a line is sent as "..".
 * push() returns the chunk as views into it with a "." between where one is added, so nothing is
 * copied; the pieces go to the socket in one gathered write.
 */
export class DotStuffer {
  private atLineStart = true;
  private lastTwo = [0x0d, LF];

  push(chunk: Buffer): Buffer[] {
    if (chunk.length === 0) return [];
    const out: Buffer[] = [];
    let start = 0;
    if (this.atLineStart && chunk[0] === DOT) out.push(DOT_BUF);
    for (let j = chunk.indexOf(NL_DOT); j >= 0; j = chunk.indexOf(NL_DOT, j + 1)) {
      out.push(chunk.subarray(start, j + 1), DOT_BUF);
      start = j + 1;
    }
    out.push(start === 0 ? chunk : chunk.subarray(start));
    this.atLineStart = chunk[chunk.length - 1] === LF;
    this.lastTwo = chunk.length >= 2 ? [chunk[chunk.length - 2]!, chunk[chunk.length - 1]!] : [this.lastTwo[1]!, chunk[0]!];
    return out;
  }

  /** The end of the response: CRLF first unless the content ended with one, then ".". */
  end(): Buffer {
    return this.lastTwo[0] === 0x0d && this.lastTwo[1] === LF ? Buffer.from('.\r\n') : Buffer.from('\r\n.\r\n');
  }
}

/**
 * What TOP sends of a message, chunk by chunk: the header, the blank line and `lines` body lines.
 * Each chunk is looked at once, whatever the line count (a count of 999999999 costs what RETR does).
 */
export class TopCutter {
  /** True once the cut is reached: nothing more is to be sent. */
  done = false;
  private inBody = false;
  private left: number;
  /** Octets of the current line before this chunk, and whether the last of them was a CR. */
  private carry = 0;
  private lastCR = false;

  constructor(lines: number) {
    this.left = lines;
  }

  /** The part of `chunk` to send. */
  push(chunk: Buffer): Buffer {
    if (this.done) return chunk.subarray(0, 0);
    let start = 0;
    for (let nl = chunk.indexOf(LF); nl >= 0; nl = chunk.indexOf(LF, nl + 1)) {
      if (!this.inBody) {
        const length = this.carry + (nl - start);
        const cr = nl > start ? chunk[nl - 1] === 0x0d : this.lastCR;
        this.inBody = length === 0 || (length === 1 && cr); // the blank line ends the header
      } else {
        this.left--;
      }
      this.carry = 0;
      start = nl + 1;
      if (this.inBody && this.left <= 0) {
        this.done = true;
        return chunk.subarray(0, nl + 1);
      }
    }
    this.carry += chunk.length - start;
    if (chunk.length > start) this.lastCR = chunk[chunk.length - 1] === 0x0d;
    return chunk;
  }
}
