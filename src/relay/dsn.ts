// Delivery status notifications (RFC 3464): a multipart/report with a human-readable part, a
// message/delivery-status part (one block per recipient) and the original message's headers
// (text/rfc822-headers). A DSN is an ordinary message from the null sender to the original
// sender, appended to the sender domain's queue; never one for a message whose sender is null.
// Its message id is derived from the original's, so appending it twice (a retry after a crash)
// stores it once.
import { randomBytes } from 'node:crypto';
import { addressText, hostText, idToken, lineText } from '../message/headers.ts';
import { domainOf, type NewMessage, type QueuedMessage } from '../message/types.ts';

export type DsnAction = 'failed' | 'delayed';

export interface DsnRecipient {
  rcpt: string;
  action: DsnAction;
  /** RFC 3463 status, e.g. "5.1.1", "4.4.7". */
  status: string;
  /** The reply that decided it, as received ("550 5.1.1 No such user"), or a network error. */
  diagnostic?: string | undefined;
  /** True when `diagnostic` is an SMTP reply (else a network error or a local reason). */
  smtp?: boolean | undefined;
  remoteMta?: string | undefined;
  lastAttempt?: number | undefined;
}

export interface DsnInput {
  original: Pick<QueuedMessage, 'id' | 'envelope' | 'raw' | 'acceptedAt' | 'queue'>;
  recipients: DsnRecipient[];
  /** Our host name: Reporting-MTA and MAILER-DAEMON's domain. */
  reportingMta: string;
  now: number;
  /** For delayed: until when the relay keeps trying. */
  willRetryUntil?: number | undefined;
  /** Distinguishes DSNs of one message: "E" expired, "B3" bounced at attempt 3, "W" warning. */
  tag: string;
}

const rfc5322Date = (ms: number) => new Date(ms).toUTCString().replace(/GMT$/, '+0000');

/** The status code for a recipient: the reply's enhanced code when it agrees with the outcome. */
export function dsnStatus(action: DsnAction | 'expired', enhanced: string | undefined, code: number | undefined): string {
  const want = action === 'failed' ? '5' : '4';
  if (action === 'expired') return '4.4.7';
  if (enhanced && enhanced.startsWith(want)) return enhanced;
  if (code !== undefined && String(code).startsWith(want)) return `${want}.0.0`;
  return action === 'failed' ? '5.0.0' : '4.0.0';
}

/** The original's header section (up to the first empty line). */
export function headerSection(raw: Buffer): Buffer {
  const crlf = raw.indexOf('\r\n\r\n');
  const lf = raw.indexOf('\n\n');
  const end = crlf >= 0 && (lf < 0 || crlf < lf) ? crlf + 2 : lf >= 0 ? lf + 1 : raw.length;
  return raw.subarray(0, end);
}

/** The DSN as a message to append, or undefined when the original's sender is null. */
export function buildDsn(input: DsnInput): NewMessage | undefined {
  const sender = input.original.envelope.from;
  if (!sender || !input.recipients.length) return undefined;
  const failed = input.recipients.some((r) => r.action === 'failed');
  // every value below that reaches a header or a report field goes through message/headers.ts
  const host = hostText(input.reportingMta);
  const boundary = `${input.now.toString(36)}.${randomBytes(8).toString('hex')}/${host}`;
  const id = `${input.original.id}-dsn-${input.tag}`;

  const human = failed
    ? [
        `This is the mail system at host ${host}.`,
        '',
        "I'm sorry to have to inform you that your message could not",
        'be delivered to one or more recipients. It is attached below.',
        '',
      ]
    : [
        `This is the mail system at host ${host}.`,
        '',
        '####################################################################',
        '# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #',
        '####################################################################',
        '',
        'Your message could not be delivered yet. The mail system will keep trying',
        input.willRetryUntil ? `until ${rfc5322Date(input.willRetryUntil)}.` : 'for a while.',
        '',
      ];
  for (const r of input.recipients) human.push(`<${addressText(r.rcpt)}>: ${lineText(r.diagnostic ?? r.status)}`);

  const perMessage = [`Reporting-MTA: dns; ${host}`, `X-Streamgate-Queue-ID: ${idToken(input.original.id)}`, `Arrival-Date: ${rfc5322Date(input.original.acceptedAt)}`];
  const blocks = input.recipients.map((r) => {
    const b = [`Final-Recipient: rfc822; ${addressText(r.rcpt)}`, `Action: ${r.action}`, `Status: ${idToken(r.status)}`];
    if (r.remoteMta) b.push(`Remote-MTA: dns; ${hostText(r.remoteMta.replace(/\[.*$/s, ''))}`);
    if (r.diagnostic) b.push(`Diagnostic-Code: ${r.smtp ? 'smtp' : 'X-Streamgate'}; ${lineText(r.diagnostic)}`);
    if (r.lastAttempt) b.push(`Last-Attempt-Date: ${rfc5322Date(r.lastAttempt)}`);
    if (r.action === 'delayed' && input.willRetryUntil) b.push(`Will-Retry-Until: ${rfc5322Date(input.willRetryUntil)}`);
    return b.join('\r\n');
  });

  const head = [
    `From: Mail Delivery System <MAILER-DAEMON@${host}>`,
    `To: <${addressText(sender)}>`,
    `Subject: ${failed ? 'Undelivered Mail Returned to Sender' : 'Delayed Mail (still being retried)'}`,
    `Date: ${rfc5322Date(input.now)}`,
    `Message-ID: <${idToken(id)}@${idToken(host)}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="${boundary}"`,
    'Content-Transfer-Encoding: 8bit',
  ];
  const text = [
    head.join('\r\n'),
    '',
    'This is a MIME-encapsulated message.',
    '',
    `--${boundary}`,
    'Content-Description: Notification',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    human.join('\r\n'),
    '',
    `--${boundary}`,
    'Content-Description: Delivery report',
    'Content-Type: message/delivery-status',
    '',
    [perMessage.join('\r\n'), ...blocks].join('\r\n\r\n'),
    '',
    `--${boundary}`,
    'Content-Description: Undelivered Message Headers',
    'Content-Type: text/rfc822-headers',
    'Content-Transfer-Encoding: 8bit',
    '',
    '',
  ].join('\r\n');
  let headers = headerSection(input.original.raw);
  if (!headers.subarray(-2).equals(Buffer.from('\r\n')) && headers.length) headers = Buffer.concat([headers, Buffer.from('\r\n')]);
  const raw = Buffer.concat([Buffer.from(text), headers, Buffer.from(`\r\n--${boundary}--\r\n`)]);
  return {
    id,
    domain: domainOf(sender),
    envelope: { from: '', to: [sender] },
    raw,
    meta: { dsn: failed ? 'failed' : 'delayed', original: input.original.id, originalQueue: input.original.queue },
  };
}
