// Names in the mailbox store: addresses as keys, mailbox names, and the TimeUUID of a message row.
//
// A message row's TimeUUID is derived from the queue message id, the mailbox owner and the mailbox
// name: its time is the message's accept time (so a mailbox reads oldest first) and its remaining
// 78 bits (sub-millisecond ticks, clock sequence, node) come from a SHA-256 of those three. A
// redelivery after a crash therefore writes the same row again instead of a second copy.
import { createHash } from 'node:crypto';
import cassandra from 'cassandra-driver';
import { MailboxError } from './client.ts';

export const INBOX = 'inbox';
export const OUTBOX = 'outbox';

const MAILBOX_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A mailbox name: 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit; compared without case. */
export function mailboxName(name: string): string {
  if (!MAILBOX_RE.test(name)) throw new MailboxError('BAD_INPUT', `expected a mailbox name of letters, digits, ".", "_" or "-" (at most 64), got ${JSON.stringify(name)}`);
  return name.toLowerCase();
}

/**
 * The key of a user: the address with its domain lower-cased and, as Postfix and Dovecot do by
 * default, its local part too. Throws BAD_INPUT for anything that is not local@domain.
 */
export function userKey(address: string): string {
  const a = address.trim();
  const at = a.lastIndexOf('@');
  const control = [...a].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);
  if (at <= 0 || at === a.length - 1 || a.length > 254 || control || /[\s<>|,;"\\]/.test(a)) {
    throw new MailboxError('BAD_INPUT', `expected an address like user@example.com, got ${JSON.stringify(address)}`);
  }
  const domain = a.slice(at + 1);
  if (!/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(domain)) {
    throw new MailboxError('BAD_INPUT', `expected a domain name after "@", got ${JSON.stringify(address)}`);
  }
  return a.toLowerCase();
}

/** userKey, or undefined instead of an error. */
export function tryUserKey(address: string): string | undefined {
  try {
    return userKey(address);
  } catch {
    return undefined;
  }
}

/** The row id of queue message `queueId` (accepted at `acceptedAt` ms) in `address`'s `mailbox`. */
export function messageUuid(queueId: string, acceptedAt: number, address: string, mailbox: string): cassandra.types.TimeUuid {
  const h = createHash('sha256').update(queueId).update('\0').update(address).update('\0').update(mailbox).digest();
  const ticks = h.readUInt16BE(0) % 10_000;
  return cassandra.types.TimeUuid.fromDate(new Date(acceptedAt), ticks, h.subarray(2, 8), h.subarray(8, 10));
}
