// Values that reach a header the gateway writes (Received, Message-ID, the DSN's header and report
// fields): the one place that validates or encodes them, so that no client, producer, remote
// server or configuration value can end a header line and start another (a Bcc: in a bounce).
// Message ids are validated where they come in (producers' job ids, the ops API) and encoded
// here once more where they become header text.

/** A producer's job id: it becomes part of message ids, history keys and DSN Message-IDs. */
export const JOB_ID = /^[A-Za-z0-9_.+=-]{1,190}$/;
export const JOB_ID_EXPECTED = 'expected 1 to 190 letters, digits, "_", ".", "+", "=" or "-"';

/** A message id as the ops API and the queues take it (ours, and "job-" + a job id, "-dsn-" + tag). */
export const MESSAGE_ID = /^[A-Za-z0-9_.+=-]{1,200}$/;

// atext (RFC 5322 3.2.3) and ".", less "+" (the escape below)
const ID_SAFE = /[^A-Za-z0-9!#$%&'*/=?^_`{|}~.-]/g;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/g;

/**
 * A token for the left or right side of a Message-ID, or an id field: every octet outside atext
 * written as "+XX" (RFC 3461 xtext), so distinct ids stay distinct.
 */
export function idToken(value: string): string {
  const out = value.replace(ID_SAFE, (c) =>
    [...Buffer.from(c, 'utf8')].map((b) => `+${b.toString(16).toUpperCase().padStart(2, '0')}`).join(''),
  );
  return out || '+00';
}

/** A host name (or address literal) as given by a client or a DNS answer; anything else becomes "?". */
export function hostText(value: string): string {
  return value.replace(/[^A-Za-z0-9._:[\]-]/g, '?').slice(0, 255) || 'unknown';
}

/** Text inside a header comment: printable ASCII without ( ) \ " < > ; . */
export function commentText(value: string): string {
  return value.replace(/[^\x21\x23-\x27\x2a-\x3a\x3d\x3f-\x5b\x5d-\x7e]/g, '?').slice(0, 255);
}

/** An address inside <...> or after "rfc822;": UTF-8 kept (RFC 6532), controls and < > replaced. */
export function addressText(value: string): string {
  return value.replace(CONTROL, '?').replace(/[<>\s]/g, '?').slice(0, 320);
}

/** Free text in an unstructured field (a remote server's reply): one line, controls as spaces. */
export function lineText(value: string, max = 998): string {
  return value.replace(CONTROL, ' ').replace(/ {2,}/g, ' ').trim().slice(0, max);
}
