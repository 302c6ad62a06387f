// The one catalogue of SMTP replies the ingress gives: [code, enhanced status code (RFC 3463),
// text]. Every hook rejects by throwing (or calling back with) an SmtpReply made from this table;
// the listener writes it as "code enhanced text". The replies smtp-server writes by itself for
// the situations below (timeouts, over-long lines, AUTH before STARTTLS...) are rewritten to the
// catalogue's wording by the connection class in server.ts (see LIBRARY_REPLIES).

export type ReplySpec = readonly [code: number, enhanced: string, text: string];

/** Every reply the ingress gives, by name. `{0}`, `{1}` are filled in by reply(). */
export const REPLIES = {
  // ---- success ----
  queued: [250, '2.0.0', 'Ok: queued as {0}'],

  // ---- connection level (the connection closes after a 421) ----
  tooManyConnections: [421, '4.7.0', 'Too many connections, try again later'],
  tooManyFromClient: [421, '4.7.0', 'Too many connections from your address, try again later'],
  doorClosed: [421, '4.3.2', 'Not accepting mail now: queue storage is not writable, try again later'],
  tooManyMessages: [421, '4.7.0', 'Too many messages in one connection, reconnect to send more'],
  commandTimeout: [421, '4.4.2', 'Timeout waiting for a command, closing connection'],
  dataTooSlow: [421, '4.4.2', 'Message data arriving too slowly, closing connection'],
  commandTooLong: [421, '4.5.2', 'Command line too long, closing connection'],
  tooManyErrors: [421, '4.7.0', 'Too many errors, closing connection'],
  shuttingDown: [421, '4.3.2', 'Server shutting down, try again later'],
  tooManyUnrecognized: [421, '4.5.2', 'Too many unrecognized commands, closing connection'],
  tooManyUnauthenticated: [421, '4.7.0', 'Too many commands without authentication, closing connection'],

  // ---- authentication (submission) ----
  authRequired: [530, '5.7.0', 'Authentication required'],
  startTlsFirst: [530, '5.7.0', 'Must issue a STARTTLS command first'],
  authFailed: [535, '5.7.8', 'Authentication credentials invalid'],
  authTooManyFailures: [421, '4.7.0', 'Too many failed authentication attempts, try again later'],
  authUnavailable: [454, '4.7.0', 'Temporary authentication failure, try again later'],
  authzidMismatch: [535, '5.7.8', 'Authorization identity must be empty or equal the user name'],

  // ---- command syntax (the session goes on) ----
  commandLineTooLong: [500, '5.5.2', 'Command line too long (at most {0} octets)'],
  pathTooLong: [501, '5.1.3', 'Path too long (at most {0} octets)'],
  notUtf8: [553, '5.6.7', 'Address is not valid UTF-8'],
  badParameter: [555, '5.5.4', 'Unsupported or malformed {1} parameter {0}'],

  // ---- envelope ----
  storageUnavailable: [451, '4.3.0', 'Queue storage temporarily unavailable, try again later'],
  utf8Required: [553, '5.6.7', 'Non-ASCII address <{0}> needs the SMTPUTF8 parameter'],
  badRecipient: [501, '5.1.3', 'Bad recipient address syntax <{0}>'],
  tooManyRecipients: [452, '4.5.3', 'Too many recipients (at most {0} per message)'],
  unknownUser: [550, '5.1.1', '<{0}>: Recipient address rejected: user unknown'],
  recipientCheckFailed: [451, '4.3.0', '<{0}>: Recipient check failed temporarily, try again later'],
  relayDenied: [550, '5.7.1', '<{0}>: Relay access denied'],
  senderNotOwned: [553, '5.7.1', '<{0}>: Sender address rejected: not owned by user {1}'],
  routingDenied: [550, '5.7.1', '<{0}>: Sender-specified routing (%, !, quoted local part) is not allowed'],

  // ---- message content (DATA) ----
  messageTooBig: [552, '5.3.4', 'Message exceeds the maximum size of {0} bytes'],
  lineTooLong: [552, '5.6.0', 'Message has a line longer than {0} octets (RFC 5321 4.5.3.1.6)'],
  bareLf: [550, '5.5.2', 'Message contains a bare LF (line feed without carriage return), refused as a possible SMTP smuggling attempt'],
  bareCr: [550, '5.5.2', 'Message contains a bare CR (carriage return without line feed), refused as a possible SMTP smuggling attempt'],
  nulByte: [550, '5.6.0', 'Message contains a NUL byte'],
  headerTooBig: [552, '5.3.4', 'Message header exceeds {0} octets'],
  tooManyHops: [554, '5.4.0', 'Too many hops: {0} or more Received headers, message is looping'],

  // ---- storing ----
  queueUnavailable: [451, '4.3.0', 'Queue temporarily unavailable, message not accepted, try again later'],
  storageFull: [452, '4.3.1', 'Insufficient system storage, message not accepted, try again later'],
  tooManyQueues: [452, '4.3.1', 'Too many destination queues on this gateway, message not accepted, try again later'],
  tooMuchInFlight: [452, '4.3.1', 'Insufficient system resources: too much mail in transfer, try again later'],
  localError: [451, '4.3.0', 'Local error in processing, try again later'],
} as const satisfies Record<string, ReplySpec>;

export type ReplyName = keyof typeof REPLIES;

/** An error that carries an SMTP reply; smtp-server writes `responseCode` and `message`. */
export class SmtpReply extends Error {
  override name = 'SmtpReply';
  readonly responseCode: number;
  readonly enhanced: string;
  readonly text: string;
  readonly reply: ReplyName;
  constructor(name: ReplyName, args: (string | number)[] = []) {
    const [code, enhanced, template] = REPLIES[name];
    const text = template.replace(/\{(\d)\}/g, (_m, i: string) => sanitize(String(args[Number(i)] ?? '')));
    // The enhanced code leads the message: the connection class sees it and writes it instead of
    // the default smtp-server derives from the reply code.
    super(`${enhanced} ${text}`);
    this.responseCode = code;
    this.enhanced = enhanced;
    this.text = text;
    this.reply = name;
  }

  /** The whole reply line as the client sees it. */
  override toString(): string {
    return `${this.responseCode} ${this.enhanced} ${this.text}`;
  }
}

export function reply(name: ReplyName, ...args: (string | number)[]): SmtpReply {
  return new SmtpReply(name, args);
}

/** Client-supplied text in a reply: printable, bounded. */
function sanitize(s: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[\x00-\x1f\x7f]/g, '?');
  return clean.length > 200 ? `${clean.slice(0, 197)}...` : clean;
}

/** Starts with an enhanced status code ("5.7.1 ..."): a catalogue reply. */
export const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;

/**
 * Replies smtp-server writes on its own, keyed by code and text, mapped to the catalogue so the
 * client sees one wording and the right enhanced code.
 */
export const LIBRARY_REPLIES: ReadonlyMap<string, ReplyName> = new Map<string, ReplyName>([
  ['421 Timeout - closing connection', 'commandTimeout'],
  ['421 Error: Command line too long', 'commandTooLong'],
  ['421 Server shutting down', 'shuttingDown'],
  ['538 Error: Must issue a STARTTLS command first', 'startTlsFirst'],
  ['530 Error: authentication Required', 'authRequired'],
  ['421 Error: too many unrecognized commands', 'tooManyUnrecognized'],
  ['421 Error: too many unauthenticated commands', 'tooManyUnauthenticated'],
]);
