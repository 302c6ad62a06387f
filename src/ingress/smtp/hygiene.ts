// Message hygiene: what the gateway refuses in message content, from SMTP DATA and from producer
// jobs alike (ContentScanner is the one check for both), and the trace and identity headers the
// ingress adds.
//
// Refused, while the data arrives (ContentScanner, chunk by chunk, native indexOf scans):
//   - a bare LF (a line feed not preceded by CR)                       550 5.5.2
//   - a bare CR (a carriage return not followed by LF)                  550 5.5.2
//   - a NUL byte                                                         550 5.6.0
//   - a line longer than smtp.maxLineLength octets                       552 5.6.0
//   - a header section larger than smtp.maxHeaderSize octets             552 5.3.4
//   - smtp.maxHops or more Received headers (a mail loop)               554 5.4.0
// smtp-server ends DATA only at <CRLF>.<CRLF>, so every SMTP smuggling variant (<LF>.<LF>,
// <CR>.<CR><LF>, <LF>.<CR><LF>, <CRLF><NUL>.<CRLF>, ...) stays inside the message it was sent in;
// refusing that message means that nothing which another server could read as a second message
// ever reaches the queue or the next hop.
//
// Added: a Received header (RFC 5321 4.4) on every message; Date and Message-ID on submission
// when the message lacks them (RFC 6409 8.2, 8.3). Every value in them goes through
// message/headers.ts.
import { addressText, commentText, hostText, idToken } from '../../message/headers.ts';
import { reply, type SmtpReply } from './replies.ts';

export type ContentFault = 'bareLf' | 'bareCr' | 'nulByte' | 'lineTooLong' | 'headerTooBig' | 'tooManyHops';

/** The faults that may be an SMTP smuggling attempt: the connection is closed after the reply. */
export const SMUGGLING: ReadonlySet<ContentFault> = new Set(['bareLf', 'bareCr', 'nulByte']);

/** The limits of smtp: that the scanner applies; 0 turns a limit off. */
export interface HygieneLimits {
  /** Octets per line including CRLF. */
  maxLineLength: number;
  /** Octets of the header section. */
  maxHeaderSize: number;
  /** Received headers at which a message is taken for a loop. */
  maxHops: number;
}

const CR = 0x0d;
const LF = 0x0a;
const RECEIVED = 'received:';
const limit = (n: number) => (n > 0 ? n : Infinity);

export class ContentScanner {
  /** The first fault found, if any; scanning stops there. */
  fault: ContentFault | undefined;
  private prevCR = false;
  /** Octets of the current line received so far (no LF seen yet). */
  private carry = 0;
  private readonly maxLine: number;
  private readonly maxHeader: number;
  private readonly maxHops: number;
  private inHeader = true;
  private headerBytes = 0;
  private hops = 0;
  /** The first octets of the current header line, lower case (to find "Received:"). */
  private lineHead = '';

  constructor(limits: HygieneLimits) {
    this.maxLine = limit(limits.maxLineLength);
    this.maxHeader = limit(limits.maxHeaderSize);
    this.maxHops = limit(limits.maxHops);
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
      const length = this.carry + (i - start) + 1;
      if (length > this.maxLine) return (this.fault = 'lineTooLong');
      if (this.inHeader && this.headerLine(chunk, start, i + 1, length)) return this.fault;
      this.carry = 0;
      this.lineHead = '';
      start = i + 1;
    }
    if (this.inHeader && start < n) {
      this.noteHead(chunk, start, n);
      this.headerBytes += n - start;
      if (this.headerBytes > this.maxHeader) return (this.fault = 'headerTooBig');
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

  /** A header line ends at chunk[end - 1]; true when it makes a fault. */
  private headerLine(chunk: Buffer, start: number, end: number, length: number): boolean {
    if (length === 2) {
      this.inHeader = false; // the empty line: the body starts
      return false;
    }
    this.noteHead(chunk, start, end);
    this.headerBytes += end - start;
    if (this.headerBytes > this.maxHeader) this.fault = 'headerTooBig';
    else if (this.lineHead === RECEIVED && ++this.hops >= this.maxHops) this.fault = 'tooManyHops';
    return this.fault !== undefined;
  }

  private noteHead(chunk: Buffer, start: number, end: number): void {
    const want = RECEIVED.length - this.lineHead.length;
    if (want > 0) this.lineHead += chunk.toString('latin1', start, Math.min(end, start + want)).toLowerCase();
  }

  /** At the end of the data: a CR left hanging is a bare CR. */
  end(): ContentFault | undefined {
    if (!this.fault && this.prevCR) this.fault = 'bareCr';
    return this.fault;
  }
}

/** A whole message through the same checks as SMTP DATA (producer jobs). */
export function checkMessage(raw: Buffer, limits: HygieneLimits): ContentFault | undefined {
  const scanner = new ContentScanner(limits);
  scanner.push(raw);
  return scanner.end();
}

/** The catalogue reply for a fault, with the limit it names. */
export function faultReply(fault: ContentFault, limits: HygieneLimits): SmtpReply {
  if (fault === 'lineTooLong') return reply(fault, limits.maxLineLength);
  if (fault === 'headerTooBig') return reply(fault, limits.maxHeaderSize);
  if (fault === 'tooManyHops') return reply(fault, limits.maxHops);
  return reply(fault);
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
  const lines = [`Received: from ${hostText(f.helo)} (${commentText(f.clientHostname)} [${hostText(addr)}])`];
  if (f.tls) lines.push(`(using ${commentText(f.tls.version)} with cipher ${commentText(f.tls.cipher)})`);
  if (f.authUser) lines.push(`(Authenticated sender: ${commentText(f.authUser)})`);
  const by = `by ${hostText(f.by)} (streamgate) with ${idToken(f.protocol)} id ${idToken(f.id)}`;
  if (f.for) lines.push(by, `for <${addressText(f.for)}>; ${rfc5322Date(f.date)}`);
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
    if (!names.has('message-id')) out += `Message-ID: <${idToken(trace.id)}@${idToken(trace.by)}>\r\n`;
  }
  return out;
}
