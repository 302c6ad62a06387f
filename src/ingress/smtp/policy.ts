// Relay policy: who may send mail to which recipient. A recipient is accepted for a local domain
// (the user must exist), for a relay domain, and for any domain when the client authenticated or
// connects from a trusted network; anything else is refused (550 5.7.1): no open relay.
//
// Only the final domain of an address decides, and it is the one the message is queued for.
// smtp-server already strips RFC 5321 source routes ("<@a,@b:user@dom>" becomes "user@dom") and
// refuses local parts that contain "@"; sender-specified routing in the local part ("%", "!",
// quoted local parts) from an untrusted, unauthenticated client is refused even for local and
// relay domains (Postfix's allow_untrusted_routing = no), so that a next hop that still honours
// such forms cannot be used to reach a third party.
import { domainToASCII } from 'node:url';
import { DomainSet } from '../../access/domains.ts';
import { TrustedNetworks } from '../../access/networks.ts';
import type { Config } from '../../config/schema.ts';
import { domainOf, type UserDirectory } from '../../message/types.ts';
import { reply } from './replies.ts';

export interface Address {
  /** As queued: local part unchanged, domain in lower-case ASCII (IDNA). */
  address: string;
  local: string;
  domain: string;
}

export interface ClientFacts {
  trusted: boolean;
  authenticated: boolean;
  /** The client gave SMTPUTF8 with MAIL FROM. */
  smtpUtf8: boolean;
}

// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

/**
 * An address as smtp-server parsed it, with its domain in lower-case ASCII. IDN domains (which
 * smtp-server turns into Unicode) go back to their A-label form, so that a queue and the MX
 * lookup see one spelling. Address literals ("[192.0.2.1]") are kept, lower-cased.
 */
export function normalizeAddress(raw: string): Address | undefined {
  const at = raw.lastIndexOf('@');
  if (at <= 0 || at === raw.length - 1) return undefined;
  const local = raw.slice(0, at);
  const rawDomain = raw.slice(at + 1);
  let domain: string;
  if (rawDomain.startsWith('[')) {
    domain = rawDomain.toLowerCase();
  } else {
    // domainToASCII is a WHATWG host parser: it would cut "a.test/b.test" at "/" and decode
    // "%2e"; smtp-server refuses such domains already, and so does this line.
    const lower = rawDomain.toLowerCase();
    if (/[^a-z0-9.\-\u0080-\uffff]/.test(lower)) return undefined;
    domain = domainToASCII(lower);
    if (!domain || !/^[a-z0-9.-]+$/.test(domain)) return undefined;
  }
  return { address: `${local}@${domain}`, local, domain };
}

/** Sender-specified routing in a local part: %-hack, bang path, quoted local part. */
export function hasRouting(local: string): boolean {
  return local.includes('%') || local.includes('!') || local.includes('@') || local.startsWith('"');
}

export class RelayPolicy {
  readonly local: DomainSet;
  readonly relay: DomainSet;
  readonly trusted: TrustedNetworks;
  private readonly users: UserDirectory;
  private readonly postmasterAddress: string;
  /** submission.senderLogins: sender address or "@domain" (lower case) → logins (lower case). */
  private readonly senderLogins = new Map<string, Set<string>>();

  constructor(config: Config, users: UserDirectory) {
    this.postmasterAddress = config.domains.postmaster;
    for (const [sender, logins] of Object.entries(config.submission.senderLogins)) {
      this.senderLogins.set(sender.toLowerCase(), new Set(logins.map((l) => l.toLowerCase())));
    }
    this.local = new DomainSet(config.domains.local);
    this.relay = new DomainSet(config.domains.relay);
    this.trusted = new TrustedNetworks(config.networks.trusted);
    this.users = users;
  }

  /**
   * RFC 5321 4.5.1: <postmaster> and postmaster@ every local domain are accepted, without a user
   * check, for the mailbox of domains.postmaster (default postmaster@ the first local domain).
   */
  private postmaster(raw: string): Address | undefined {
    const at = raw.lastIndexOf('@');
    if ((at < 0 ? raw : raw.slice(0, at)).toLowerCase() !== 'postmaster') return undefined;
    if (at >= 0) {
      const a = normalizeAddress(raw);
      if (!a || !this.local.has(a.domain)) return undefined;
    }
    const first = this.local.first;
    const target = this.postmasterAddress || (first ? `postmaster@${first}` : '');
    return target ? normalizeAddress(target) : undefined;
  }

  /**
   * May this login use this envelope sender? Its own address, and what submission.senderLogins
   * gives it (by address, then by "@domain"). The null sender is anyone's.
   */
  ownsSender(login: string, sender: string): boolean {
    if (sender === '') return true;
    const user = login.toLowerCase();
    const address = sender.toLowerCase();
    if (address === user) return true;
    return !!(this.senderLogins.get(address)?.has(user) || this.senderLogins.get(`@${domainOf(address)}`)?.has(user));
  }

  /** The envelope sender ("" is the null sender). Throws an SmtpReply when refused. */
  sender(raw: string, facts: Pick<ClientFacts, 'smtpUtf8'>): string {
    if (raw === '') return '';
    const a = normalizeAddress(raw);
    if (!a) return raw; // smtp-server checked the syntax; keep what it accepted
    if (!facts.smtpUtf8 && NON_ASCII.test(a.local)) throw reply('utf8Required', raw);
    return a.address;
  }

  /**
   * Decides one RCPT TO. Returns the address as it will be queued (postmaster's mailbox for
   * postmaster), or throws an SmtpReply:
   * 553 5.6.7, 501 5.1.3, 550 5.7.1 (relay or routing), 550 5.1.1 (unknown local user),
   * 451 4.3.0 (the user directory did not answer).
   */
  async recipient(raw: string, facts: ClientFacts): Promise<Address> {
    const postmaster = this.postmaster(raw);
    if (postmaster) return postmaster;
    const a = normalizeAddress(raw);
    if (!a) throw reply('badRecipient', raw);
    if (!facts.smtpUtf8 && NON_ASCII.test(a.local)) throw reply('utf8Required', raw);
    const privileged = facts.trusted || facts.authenticated;
    const isLocal = this.local.has(a.domain);
    if (!isLocal && !this.relay.has(a.domain)) {
      if (!privileged) throw reply('relayDenied', a.address);
      return a;
    }
    if (!privileged && hasRouting(a.local)) throw reply('routingDenied', a.address);
    if (isLocal) {
      let exists: boolean;
      try {
        exists = await this.users.exists(a.address);
      } catch (err) {
        throw Object.assign(reply('recipientCheckFailed', a.address), { cause: err });
      }
      if (!exists) throw reply('unknownUser', a.address);
    }
    return a;
  }
}
