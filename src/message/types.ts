// Shared domain types: envelopes, queued messages, lifecycle events.
import type { LifecycleKind } from '../client/schema.ts';

export interface Envelope {
  /** Envelope sender; "" is the null sender (bounces, DSNs). */
  from: string;
  to: string[];
}

export interface NewMessage {
  /** Message id, the idempotency key (a producer's job id, or one made at accept time). */
  id: string;
  /** Destination domain: the queue it goes to. */
  domain: string;
  envelope: Envelope;
  raw: Buffer;
  /** Facts about the message kept with it and in its `accepted` event: client, size, tls, auth... */
  meta?: Record<string, unknown>;
  /** Not before this time (ms); default now. */
  notBefore?: number;
}

export interface QueuedMessage {
  queue: string;
  domain: string;
  id: string;
  entryId: string;
  /** This attempt's number, from 1. */
  attempt: number;
  envelope: Envelope;
  raw: Buffer;
  meta: Record<string, unknown>;
  acceptedAt: number;
}

// The kinds are part of the contract with consumers (client/schema.ts LIFECYCLE_KINDS): `recovered`,
// `flushed`, `suspended` and `resumed` are queue-level events (an operator's action on the queue:
// actor, reason, before and after), their messageId "".
export type { LifecycleKind };

export interface LifecycleEvent {
  /** Unique and stable, safe as a BullMQ job id: see eventId(). */
  id: string;
  queue: string;
  domain: string;
  kind: LifecycleKind;
  messageId: string;
  txn: number;
  at: number;
  details: Record<string, unknown>;
}

/** The domain of an address: what follows the last "@", lower-cased. */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

/** Per-recipient outcome of one delivery attempt. */
export interface RecipientResult {
  rcpt: string;
  /** delivered: done; deferred: try again later; bounced: permanent failure (DSN). */
  status: 'delivered' | 'deferred' | 'bounced';
  code?: number;
  enhanced?: string;
  text?: string;
}

/**
 * Delivery into local mailboxes (the `local` route). Implemented by src/mailbox; the relay calls
 * it for messages whose destination domain routes to `local`. A thrown error means "try again
 * later" for every recipient (for example Cassandra unavailable).
 */
export interface LocalDelivery {
  deliver(msg: QueuedMessage): Promise<RecipientResult[]>;
}

/**
 * The users the gateway knows: recipient checks for local domains at RCPT time and AUTH on
 * submission. Implemented by src/mailbox (Cassandra users table, cached for seconds) together
 * with the `users` of the configuration.
 */
export interface UserDirectory {
  exists(address: string): Promise<boolean>;
  /** True when the password matches the stored hash. */
  verify(address: string, password: string): Promise<boolean>;
}
