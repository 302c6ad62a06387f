// Message hygiene: what the ingress refuses in message content, and the trace and identity
// headers it adds.
//
// Refused, while the data arrives (ContentScanner, chunk by chunk, native indexOf scans):
//   - a bare LF (a line feed not preceded by CR)       550 5.5.2
//   - a bare CR (a carriage return not followed by LF)  550 5.5.2
//   - a NUL byte                                         550 5.6.0
//   - a line longer than smtp.maxLineLength octets       552 5.6.0
// smtp-server ends DATA only at <CRLF>.<CRLF>, so every SMTP smuggling variant (<LF>.<LF>,
// <CR>.<CR><LF>, <LF>.<CR><LF>, <CRLF><NUL>.<CRLF>, ...) stays inside the message it was sent in;
// refusing that message means that nothing which another server could read as a second message
// ever reaches the queue or the next hop.
//
// Added: a Received header (RFC 5321 4.4) on every message; Date and Message-ID on submission
// when the message lacks them (RFC 6409 8.2, 8.3).

export type ContentFault = 'bareLf' | 'bareCr' | 'nulByte' | 'lineTooLong';

const CR = 0x0d;
const LF = 0x0a;

export class ContentScanner {
  /** The first fault found, if any; scanning stops there. */
  fault: ContentFault | undefined;
  private prevCR = false;
  /** Octets of the current line received so far (no LF seen yet). */
  private carry = 0;
  private readonly maxLine: number;

  /** @param maxLineLength octets per line including CRLF; 0 = no limit */
  constructor(maxLineLength: number) {
    this.maxLine = maxLineLength > 0 ? maxLineLength : Infinity;
  }

  push(chunk: Buffer): ContentFault | undefined {
    if (this.fault || chunk.length === 0) return this.fault;
    const n = chunk.length;
    if (chunk.indexOf(0) >= 0) return (this.fault = 'nulByte');
    if (this.prevCR && chunk[0] !== LF) return (this.fault = 'bareCr');
    // every LF follows a CR, and no line is too long
    let start = 0;
    for (let i = chunk.indexOf(LF); i >= 0; i = chunk.indexOf(LF, i + 1)) {
      const preceded = i > 0 ? chunk[i - 1] === CR : this.prevCR;
      if (!preceded) return (this.fault = 'bareLf');
      if (this.carry + (i - start) + 1 > this.maxLine) return (this.fault = 'lineTooLong');
      this.carry = 0;
      start = i + 1;
    }
    this.carry += n - start;
    if (this.carry > this.maxLine) return (this.fault = 'lineTooLong');
    // every CR is followed by LF (one at the very end waits for the next chunk)
    for (let i = chunk.indexOf(CR); i >= 0; i = chunk.indexOf(CR, i + 1)) {
      if (i === n - 1) break;
      if (chunk[i + 1] !== LF) return (this.fault = 'bareCr');
    }
    this.prevCR = chunk[n - 1] === CR;
    return undefined;
  }

  /** At the end of the data: a CR left hanging is a bare CR. */
  end(): ContentFault | undefined {
    if (!this.fault && this.prevCR) this.fault = 'bareCr';
    return this.fault;
  }
}

/** Header names present in the message's header section (lower case). */
export function headerNames(raw: Buffer): Set<string> {
  const names = new Set<string>();
  let end = raw.indexOf('\r\n\r\n');
  if (raw[0] === CR && raw[1] === LF) end = 0; // no header section at all
  const block = raw.subarray(0, end < 0 ? raw.length : end).toString('latin1');
  for (const line of block.split('\r\n')) {
    if (!line || line[0] === ' ' || line[0] === '\t') continue;
    const colon = line.indexOf(':');
    if (colon > 0) names.add(line.slice(0, colon).trimEnd().toLowerCase());
  }
  return names;
}

/** RFC 5322 date-time in UTC: "Tue, 01 Jul 2025 12:00:00 +0000". */
export function rfc5322Date(d: Date): string {
  return d.toUTCString().replace(/GMT$/, '+0000');
}

/** Text a client chose, made safe for a header comment or field. */
function clean(s: string): string {
  return s.replace(/[^\x21-\x27\x2a-\x5b\x5d-\x7e]/g, '?').slice(0, 255);
}

export interface TraceFacts {
  /** HELO/EHLO argument. */
  helo: string;
  /** Reverse-resolved name of the client, or "[address]". */
  clientHostname: string;
  clientAddress: string;
  /** This gateway's name. */
  by: string;
  /** ESMTP, ESMTPS, ESMTPA, ESMTPSA... */
  protocol: string;
  id: string;
  tls?: { version: string; cipher: string } | undefined;
  authUser?: string | undefined;
  /** The recipient, when there is exactly one. */
  for?: string | undefined;
  date: Date;
}

/** A Received header, folded, ending in CRLF. */
export function receivedHeader(f: TraceFacts): string {
  const addr = f.clientAddress.includes(':') ? `IPv6:${f.clientAddress}` : f.clientAddress;
  const lines = [`Received: from ${clean(f.helo || 'unknown')} (${clean(f.clientHostname)} [${addr}])`];
  if (f.tls) lines.push(`(using ${clean(f.tls.version)} with cipher ${clean(f.tls.cipher)})`);
  if (f.authUser) lines.push(`(Authenticated sender: ${clean(f.authUser)})`);
  const by = `by ${clean(f.by)} (streamgate) with ${f.protocol} id ${f.id}`;
  if (f.for) lines.push(by, `for <${clean(f.for)}>; ${rfc5322Date(f.date)}`);
  else lines.push(`${by};`, rfc5322Date(f.date));
  return lines.join('\r\n\t') + '\r\n';
}

/**
 * The header lines to put in front of the message: Received always; for submission, Date and
 * Message-ID when missing.
 */
export function addedHeaders(raw: Buffer, trace: TraceFacts, submission: boolean): string {
  let out = receivedHeader(trace);
  if (submission) {
    const names = headerNames(raw);
    if (!names.has('date')) out += `Date: ${rfc5322Date(trace.date)}\r\n`;
    if (!names.has('message-id')) out += `Message-ID: <${trace.id}@${clean(trace.by)}>\r\n`;
  }
  return out;
}
