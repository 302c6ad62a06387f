// Local delivery (the relay's `local` route): each recipient's copy goes into its `inbox` with
// Return-Path and Delivered-To prepended, as Postfix's local(8) and Dovecot's LDA do; when the
// sender authenticated as a local user (meta.auth.user from the ingress), a copy goes into the
// sender's `outbox` too (once per submission: the copies for several local domains share
// meta.submission). Rows are keyed by the queue message id, so a redelivery writes nothing new.
//
// Outcomes per recipient: delivered (250 2.0.0), bounced for an unknown user (550 5.1.1) or a full
// mailbox (552 5.2.2, Dovecot's default), deferred (451 4.3.0) when Cassandra failed for it. When
// Cassandra fails for every recipient (or for the outbox copy) deliver() throws, and the relay
// keeps the message queued and tries again later: nothing is dropped.
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { domainOf, type LocalDelivery, type QueuedMessage, type RecipientResult } from '../message/types.ts';
import { MailboxError } from './client.ts';
import type { MailboxDirectory } from './directory.ts';
import { DomainSet } from '../access/domains.ts';
import { INBOX, OUTBOX, tryUserKey } from './ids.ts';
import type { MailStore } from './store.ts';
import { timeOfMessageId } from '../message/ids.ts';

const RCPT_CONCURRENCY = 4;
const CRLF = Buffer.from('\r\n');

/**
 * Bare LF and bare CR become CRLF, and the message ends with CRLF: POP3 sizes are then exact.
 * `checked`: the SMTP ingress found no bare CR or LF in it already (meta.lineEnds 'crlf'), so only
 * the end is looked at (a scan costs about 1 ms per MB of the gateway's one thread).
 */
export function normalizeLineEnds(raw: Buffer, checked = false): Buffer {
  if (checked && raw.length >= 2 && raw[raw.length - 2] === 13 && raw[raw.length - 1] === 10) return raw;
  let bare = false;
  for (let i = raw.indexOf(10); i >= 0; i = raw.indexOf(10, i + 1)) {
    if (i === 0 || raw[i - 1] !== 13) {
      bare = true;
      break;
    }
  }
  if (!bare) {
    for (let i = raw.indexOf(13); i >= 0; i = raw.indexOf(13, i + 1)) {
      if (raw[i + 1] !== 10) {
        bare = true;
        break;
      }
    }
  }
  let out = raw;
  if (bare) out = Buffer.from(raw.toString('latin1').replace(/\r\n|\r|\n/g, '\r\n'), 'latin1');
  if (out.length > 0 && !(out[out.length - 2] === 13 && out[out.length - 1] === 10)) out = Buffer.concat([out, CRLF]);
  return out;
}

/** The address the sender authenticated as, from the message's meta (shapes read defensively). */
export function authenticatedUser(meta: Record<string, unknown> | undefined): string | undefined {
  if (!meta) return undefined;
  const auth = meta.auth;
  const pick = (v: unknown) => (typeof v === 'string' && v.includes('@') ? v : undefined);
  if (typeof auth === 'string') return pick(auth);
  if (auth && typeof auth === 'object') {
    const a = auth as Record<string, unknown>;
    return pick(a.user) ?? pick(a.username) ?? pick(a.address);
  }
  return pick(meta.authUser) ?? pick(meta.authenticatedUser);
}

const oneLine = (s: string) => s.replace(/[\r\n]+/g, ' ');

export class MailboxDelivery implements LocalDelivery {
  private readonly store: MailStore;
  private readonly directory: MailboxDirectory;
  private readonly localDomains: DomainSet;
  private readonly log: Logger;

  constructor(store: MailStore, directory: MailboxDirectory, config: Config, log: Logger) {
    this.store = store;
    this.directory = directory;
    this.localDomains = new DomainSet([...config.domains.local, ...Object.entries(config.routes).filter(([, r]) => r === 'local').map(([d]) => d)]);
    this.log = log.child({ component: 'local-delivery' });
  }

  async deliver(msg: QueuedMessage): Promise<RecipientResult[]> {
    const log = this.log.child({ messageId: msg.id, queue: msg.queue });
    await this.store.connect(); // STORE_UNAVAILABLE: the relay defers the whole message
    const body = normalizeLineEnds(msg.raw, msg.meta.lineEnds === 'crlf');
    const acceptedAt = Number.isFinite(msg.acceptedAt) && msg.acceptedAt > 0 ? msg.acceptedAt : (timeOfMessageId(msg.id) ?? 0);
    const from = oneLine(msg.envelope.from);

    const sender = tryUserKey(authenticatedUser(msg.meta) ?? '');
    if (msg.meta.outboxOnly === true) {
      // the ingress's copy for the outbox of a local sender whose recipients are all remote
      if (!sender || !this.isLocal(sender) || !(await this.directory.lookup(sender))) {
        return msg.envelope.to.map((rcpt) => ({ rcpt, status: 'bounced', code: 550, enhanced: '5.1.1', text: 'no local sender to keep an outbox copy for' }));
      }
      const submission = typeof msg.meta.submission === 'string' && msg.meta.submission ? msg.meta.submission : msg.id;
      const r = await this.store.putMessage({ address: sender, mailbox: OUTBOX, queueId: submission, acceptedAt, sender: from, body: [body] });
      log.info({ address: sender, mailbox: OUTBOX, id: r.id, duplicate: !r.stored }, 'stored');
      return msg.envelope.to.map((rcpt) => ({ rcpt, status: 'delivered', code: 250, enhanced: '2.0.0', text: `kept in the outbox of ${sender}` }));
    }
    if (sender && this.isLocal(sender) && (await this.directory.lookup(sender))) {
      // the copies of one submission for several destination domains share meta.submission and
      // meta.receivedAt: keyed by those, the sender's outbox gets one copy, not one per domain
      const submission = typeof msg.meta.submission === 'string' && msg.meta.submission ? msg.meta.submission : msg.id;
      const receivedAt = typeof msg.meta.receivedAt === 'number' && msg.meta.receivedAt > 0 ? msg.meta.receivedAt : acceptedAt;
      const r = await this.store.putMessage({ address: sender, mailbox: OUTBOX, queueId: submission, acceptedAt: receivedAt, sender: from, body: [body] });
      log.info({ address: sender, mailbox: OUTBOX, id: r.id, duplicate: !r.stored }, 'stored');
    }

    const results: RecipientResult[] = new Array(msg.envelope.to.length);
    const failures: unknown[] = [];
    let next = 0;
    const worker = async () => {
      while (next < msg.envelope.to.length) {
        const i = next++;
        const rcpt = msg.envelope.to[i]!;
        try {
          results[i] = await this.deliverOne(rcpt, msg, body, acceptedAt, from, log);
        } catch (err) {
          failures.push(err);
          log.warn({ err, rcpt }, 'local delivery deferred');
          results[i] = { rcpt, status: 'deferred', code: 451, enhanced: '4.3.0', text: 'mailbox store unavailable, try again later' };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(RCPT_CONCURRENCY, msg.envelope.to.length) }, worker));
    if (failures.length > 0 && results.every((r) => r.status === 'deferred')) {
      const first = failures[0];
      throw first instanceof MailboxError ? first : new MailboxError('STORE_UNAVAILABLE', `local delivery failed: ${(first as Error)?.message ?? String(first)}`, { cause: first });
    }
    return results;
  }

  private isLocal(address: string): boolean {
    return this.localDomains.has(domainOf(address));
  }

  private async deliverOne(rcpt: string, msg: QueuedMessage, body: Buffer, acceptedAt: number, from: string, log: Logger): Promise<RecipientResult> {
    const address = tryUserKey(rcpt);
    if (!address) return { rcpt, status: 'bounced', code: 553, enhanced: '5.1.3', text: 'bad recipient address syntax' };
    const user = await this.directory.lookup(address);
    if (!user) return { rcpt, status: 'bounced', code: 550, enhanced: '5.1.1', text: `no mailbox here by that name: ${address}` };
    // the recipient's lines go before the message as queued, which is stored as it is: not copied
    const prefix = Buffer.from(`Return-Path: <${from}>\r\nDelivered-To: ${address}\r\n`, 'latin1');
    const size = prefix.length + body.length;
    if (user.quota > 0) {
      const used = await this.store.usage(address);
      if (used.bytes + size > user.quota) {
        log.info({ rcpt: address, used: used.bytes, quota: user.quota, size }, 'mailbox full');
        return { rcpt, status: 'bounced', code: 552, enhanced: '5.2.2', text: 'mailbox full' };
      }
    }
    const r = await this.store.putMessage({ address, mailbox: INBOX, queueId: msg.id, acceptedAt, sender: from, body: [prefix, body] });
    log.info({ rcpt: address, mailbox: INBOX, id: r.id, size, duplicate: !r.stored }, 'delivered');
    return { rcpt, status: 'delivered', code: 250, enhanced: '2.0.0', text: r.stored ? `delivered to ${address} (${r.id})` : `already delivered to ${address} (${r.id})` };
  }
}
