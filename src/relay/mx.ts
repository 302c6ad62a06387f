// MX resolution (RFC 5321 §5.1, RFC 7505) with node:dns: a domain's MX hosts in preference
// order (equal preferences shuffled), each with its addresses; no MX records → the domain's own
// A/AAAA records (the implicit MX); a null MX ("0 .") or a domain that does not exist bounces;
// other DNS failures defer. Answers are cached for their TTL on the injected clock. node:dns does
// not report the TTL of MX records, so an MX answer lives as long as the shortest TTL of its hosts'
// addresses (or the record's own `ttl` when an injected resolver gives one), within
// [MIN_TTL, MAX_TTL]. The resolver is injectable: tests pass one that answers for loopback.
import { isIP } from 'node:net';
import { Resolver } from 'node:dns/promises';

/** What the relay needs of a DNS resolver; node:dns/promises Resolver has exactly this shape. */
export interface DnsResolver {
  resolveMx(name: string): Promise<{ exchange: string; priority: number; ttl?: number }[]>;
  resolve4(name: string, options: { ttl: true }): Promise<{ address: string; ttl: number }[]>;
  resolve6(name: string, options: { ttl: true }): Promise<{ address: string; ttl: number }[]>;
}

export interface MxHost {
  /** The exchange name (or the domain itself for an implicit MX). */
  host: string;
  priority: number;
  /** IPv4 first, then IPv6. */
  addresses: string[];
}

export type Resolution =
  | { ok: true; hosts: MxHost[]; implicit: boolean }
  | { ok: false; permanent: boolean; enhanced: string; text: string };

export const MIN_TTL = 5_000;
export const MAX_TTL = 3_600_000;
const NEGATIVE_TTL = 60_000;
const CACHE_MAX = 10_000;

const NO_RECORD = new Set(['ENODATA', 'ENOTFOUND']);

type Addrs = { ok: true; addresses: string[]; ttl: number } | { ok: false; permanent: boolean; text: string };

export interface MxOptions {
  resolver?: DnsResolver | undefined;
  now?: () => number;
}

export class MxResolver {
  private readonly resolver: DnsResolver;
  private readonly now: () => number;
  private readonly cache = new Map<string, { value: Resolution; expires: number }>();
  private readonly addrCache = new Map<string, { value: Addrs; expires: number }>();
  private readonly inflight = new Map<string, Promise<Resolution>>();
  /** DNS queries made (for tests and metrics). */
  queries = 0;

  constructor(opts: MxOptions = {}) {
    this.resolver = opts.resolver ?? new Resolver({ timeout: 5000, tries: 2 });
    this.now = opts.now ?? Date.now;
  }

  /** The domain's mail hosts, from the cache while its TTL lasts. */
  resolve(domain: string): Promise<Resolution> {
    const d = domain.toLowerCase().replace(/\.$/, '');
    const hit = this.cache.get(d);
    if (hit && hit.expires > this.now()) return Promise.resolve(hit.value);
    let p = this.inflight.get(d);
    if (!p) {
      p = this.lookup(d).finally(() => this.inflight.delete(d));
      this.inflight.set(d, p);
    }
    return p;
  }

  /** A host's addresses (IPv4 first), cached for their TTL; an IP literal stands for itself. */
  async addresses(host: string): Promise<Addrs> {
    if (isIP(host.replace(/^\[|\]$/g, ''))) return { ok: true, addresses: [host.replace(/^\[|\]$/g, '')], ttl: MAX_TTL };
    if (host === 'localhost') return { ok: true, addresses: ['127.0.0.1'], ttl: MAX_TTL };
    const name = host.toLowerCase().replace(/\.$/, '');
    const hit = this.addrCache.get(name);
    if (hit && hit.expires > this.now()) return hit.value;
    this.queries += 2;
    const [v4, v6] = await Promise.allSettled([this.resolver.resolve4(name, { ttl: true }), this.resolver.resolve6(name, { ttl: true })]);
    const addresses: string[] = [];
    let ttl = MAX_TTL;
    for (const r of [v4, v6]) {
      if (r.status !== 'fulfilled') continue;
      for (const a of r.value) {
        addresses.push(a.address);
        ttl = Math.min(ttl, a.ttl * 1000);
      }
    }
    let value: Addrs;
    if (addresses.length) value = { ok: true, addresses, ttl: clampTtl(ttl) };
    else {
      const codes = [v4, v6].map((r) => (r.status === 'rejected' ? String((r.reason as NodeJS.ErrnoException).code) : 'ENODATA'));
      const permanent = codes.every((c) => NO_RECORD.has(c));
      value = { ok: false, permanent, text: `no address for ${name} (${[...new Set(codes)].join(', ')})` };
    }
    this.remember(this.addrCache, name, value, value.ok ? value.ttl : value.permanent ? NEGATIVE_TTL : 0);
    return value;
  }

  private async lookup(domain: string): Promise<Resolution> {
    let records: { exchange: string; priority: number; ttl?: number }[];
    this.queries++;
    try {
      records = await this.resolver.resolveMx(domain);
    } catch (err) {
      const code = String((err as NodeJS.ErrnoException).code);
      if (code === 'ENOTFOUND') {
        return this.store(domain, { ok: false, permanent: true, enhanced: '5.1.2', text: `domain ${domain} does not exist` }, NEGATIVE_TTL);
      }
      if (code !== 'ENODATA') {
        return { ok: false, permanent: false, enhanced: '4.4.3', text: `MX lookup for ${domain} failed (${code})` };
      }
      records = [];
    }
    if (records.length === 1 && records[0]!.priority === 0 && (records[0]!.exchange === '' || records[0]!.exchange === '.')) {
      return this.store(domain, { ok: false, permanent: true, enhanced: '5.1.10', text: `domain ${domain} accepts no mail (null MX)` }, NEGATIVE_TTL);
    }
    const real = records.filter((r) => r.exchange && r.exchange !== '.');
    if (!real.length) {
      // RFC 5321 §5.1: no MX records, the domain itself is the implicit MX
      const a = await this.addresses(domain);
      if (!a.ok) {
        return a.permanent
          ? this.store(domain, { ok: false, permanent: true, enhanced: '5.1.2', text: `domain ${domain} has no MX and no address records` }, NEGATIVE_TTL)
          : { ok: false, permanent: false, enhanced: '4.4.3', text: a.text };
      }
      return this.store(domain, { ok: true, implicit: true, hosts: [{ host: domain, priority: 0, addresses: a.addresses }] }, a.ttl);
    }
    const shuffled = real.map((r) => ({ r, k: Math.random() })).sort((x, y) => x.r.priority - y.r.priority || x.k - y.k).map((x) => x.r);
    const resolved = await Promise.all(shuffled.map(async (r) => ({ r, a: await this.addresses(r.exchange) })));
    const hosts: MxHost[] = [];
    let ttl = MAX_TTL;
    for (const { r, a } of resolved) {
      if (r.ttl !== undefined) ttl = Math.min(ttl, r.ttl * 1000);
      if (!a.ok) continue;
      ttl = Math.min(ttl, a.ttl);
      hosts.push({ host: r.exchange.toLowerCase().replace(/\.$/, ''), priority: r.priority, addresses: a.addresses });
    }
    if (!hosts.length) {
      // MX hosts without addresses: a DNS mistake that is often fixed; defer (as Postfix does)
      return { ok: false, permanent: false, enhanced: '4.4.4', text: `no MX host of ${domain} has an address (${resolved.map((x) => x.r.exchange).join(', ')})` };
    }
    return this.store(domain, { ok: true, implicit: false, hosts }, clampTtl(ttl));
  }

  private store(domain: string, value: Resolution, ttl: number): Resolution {
    this.remember(this.cache, domain, value, ttl);
    return value;
  }

  private remember<V>(cache: Map<string, { value: V; expires: number }>, key: string, value: V, ttl: number): void {
    if (ttl <= 0) return;
    cache.delete(key);
    if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value!);
    cache.set(key, { value, expires: this.now() + ttl });
  }
}

function clampTtl(ms: number): number {
  return Math.max(MIN_TTL, Math.min(MAX_TTL, ms));
}
