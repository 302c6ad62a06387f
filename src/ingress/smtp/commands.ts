// Checks on a command line before smtp-server reads it, each answered with a catalogue reply while
// the session goes on (the client can correct itself, and one that repeats the same error runs
// into the error limits of limits.ts instead of reconnecting for ever):
//   - a line longer than smtp.maxCommandLength                     500 5.5.2
//     (one that does not end within hardCommandLength: 421 4.5.2, closed)
//   - MAIL/RCPT whose path is longer than 256 octets (RFC 5321)     501 5.1.3
//   - MAIL/RCPT that is not valid UTF-8                              553 5.6.7
//     (smtp-server would decode it into U+FFFD and queue that)
//   - a MAIL/RCPT parameter that is unknown or malformed             555 5.5.4
//     (smtp-server skips "=x" and lets any other keyword through)
import { isUtf8 } from 'node:buffer';
import { reply, type SmtpReply } from './replies.ts';

/** RFC 5321 4.5.3.1.3: a reverse or forward path, with its angle brackets. */
export const MAX_PATH = 256;

const ADDRESS_COMMAND = /^(MAIL FROM|RCPT TO):/i;
const KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
// esmtp-value (RFC 5321 4.1.2), UTF-8 allowed (RFC 6531)
// eslint-disable-next-line no-control-regex
const VALUE = /^[^\s=\x00-\x1f\x7f]+$/u;
const XTEXT = /^([\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+$/;

/** The parameters the gateway takes, by command, each with the values it accepts (true: none). */
const PARAMETERS: Record<'MAIL FROM' | 'RCPT TO', Record<string, RegExp | true>> = {
  // SIZE and BODY values are checked by smtp-server (501); AUTH= as RFC 4954 5; RET and ENVID
  // (RFC 3461) are taken and ignored, as DSN is not offered
  'MAIL FROM': { SIZE: /^.+$/, BODY: /^.+$/, SMTPUTF8: true, AUTH: /^(<>|.+)$/, RET: /^(FULL|HDRS)$/i, ENVID: XTEXT },
  'RCPT TO': {
    NOTIFY: /^(NEVER|(SUCCESS|FAILURE|DELAY)(,(SUCCESS|FAILURE|DELAY))*)$/i,
    ORCPT: /^[A-Za-z0-9-]+;([\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+$/,
  },
};

/** Where smtp-server itself stops reading a line that does not end (421 4.5.2, closed). */
export function hardCommandLength(maxCommandLength: number): number {
  return Math.max(16 * 1024, maxCommandLength * 4);
}

/** A reply refusing the line, or undefined to hand it to smtp-server. */
export function screenCommand(line: Buffer, maxCommandLength: number): SmtpReply | undefined {
  if (line.length > maxCommandLength) return reply('commandLineTooLong', maxCommandLength);
  const head = ADDRESS_COMMAND.exec(line.toString('latin1', 0, 10));
  if (!head) return undefined;
  const command = head[1]!.toUpperCase() as 'MAIL FROM' | 'RCPT TO';
  if (!isUtf8(line)) return reply('notUtf8');
  const rest = line.toString('utf8', head[0].length).trim();
  const close = rest.startsWith('<') ? rest.indexOf('>') : -1;
  if (close < 0) return undefined; // smtp-server answers the syntax error
  if (Buffer.byteLength(rest.slice(0, close + 1)) > MAX_PATH) return reply('pathTooLong', MAX_PATH);
  const known = PARAMETERS[command];
  for (const param of rest.slice(close + 1).split(/\s+/)) {
    if (!param) continue;
    const eq = param.indexOf('=');
    const keyword = (eq < 0 ? param : param.slice(0, eq)).toUpperCase();
    const value = eq < 0 ? undefined : param.slice(eq + 1);
    const rule = known[keyword];
    const ok = KEYWORD.test(keyword) && rule !== undefined && (rule === true ? value === undefined : value !== undefined && VALUE.test(value) && rule.test(value));
    if (!ok) return reply('badParameter', param, command);
  }
  return undefined;
}
