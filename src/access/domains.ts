// Domain patterns, matched one way everywhere (relay policy, routes, delivery windows, per
// destination limits and TLS policy, local delivery): an exact name, or "*.name" for every
// subdomain of name (not name itself), and in maps keyed by pattern "*" for everything else.
import { domainToASCII } from 'node:url';

/**
 * The entry of a map keyed by domain patterns that applies to `name`: the exact name, else the
 * longest "*.suffix" that `name` ends with (subdomains only), else "*". Keys are lower case.
 */
export function matchDomain<T>(map: Record<string, T> | Map<string, T>, name: string): { key: string; value: T } | undefined {
  const get = (k: string): T | undefined => (map instanceof Map ? map.get(k) : Object.hasOwn(map, k) ? map[k] : undefined);
  const n = name.toLowerCase();
  const exact = get(n);
  if (exact !== undefined) return { key: n, value: exact };
  for (let i = n.indexOf('.'); i >= 0; i = n.indexOf('.', i + 1)) {
    const k = `*${n.slice(i)}`;
    const v = get(k);
    if (v !== undefined) return { key: k, value: v };
  }
  const any = get('*');
  return any !== undefined ? { key: '*', value: any } : undefined;
}

/**
 * A list of domains (domains.local, domains.relay): exact names and "*.name" for every subdomain
 * of name, matched as matchDomain does; names are kept in their ASCII form.
 */
export class DomainSet {
  private readonly patterns = new Map<string, true>();
  private readonly names: string[] = [];

  constructor(domains: readonly string[]) {
    for (const d of domains) {
      const wildcard = d.startsWith('*.');
      const ascii = domainToASCII(d.replace(/^\*\./, '').toLowerCase()) || d.toLowerCase();
      // a lone "*" is not a domain of a list (the configuration refuses it; a route may be "*")
      if (ascii === '*') continue;
      this.patterns.set(wildcard ? `*.${ascii}` : ascii, true);
      if (!wildcard) this.names.push(ascii);
    }
  }

  has(domain: string): boolean {
    return matchDomain(this.patterns, domain) !== undefined;
  }

  /** The first exact name of the list. */
  get first(): string | undefined {
    return this.names[0];
  }
}
