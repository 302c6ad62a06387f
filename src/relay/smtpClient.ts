// The one adapter onto nodemailer's internals (checked against nodemailer 10.6.0, pinned to that
// exact version in package.json; test/relay/smtpClient.test.ts fails when the library no longer
// behaves as this file expects). When the server refuses the message data after refusing some
// recipients, send()'s EMESSAGE error does not carry those RCPT refusals: nodemailer keeps them
// on the connection's undocumented `_envelope` until the next send or reset. Nothing else in
// the project reads nodemailer's underscored members.
import type SMTPConnection from 'nodemailer/lib/smtp-connection';

/** A recipient refused at RCPT, as nodemailer records it. */
export interface RcptRefusal {
  recipient?: string | undefined;
  response?: string | undefined;
  responseCode?: number | undefined;
}

/** The recipients the server refused at RCPT in the connection's last transaction. */
export function rcptRefusals(smtp: SMTPConnection): RcptRefusal[] {
  const envelope = (smtp as unknown as { _envelope?: { rejectedErrors?: RcptRefusal[] } | false })._envelope;
  return (envelope && envelope.rejectedErrors) || [];
}
