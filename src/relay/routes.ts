// Where a destination domain's mail goes: static routes from configuration (a domain, "*.domain"
// for its subdomains, "*" for everything else) to `local` (mailbox delivery) or a fixed SMTP
// host; the local domains (domains.local) go to `local`; every other domain goes to its MX hosts
// (src/relay/mx.ts).
import { matchDomain } from '../access/domains.ts';

export type Route =
  | { kind: 'local'; key: string }
  | { kind: 'smtp'; key: string; host: string; port: number; secure: boolean }
  | { kind: 'mx' };

export class Routes {
  private readonly table = new Map<string, Route>();

  /** `localDomains` (domains.local) go to mailbox delivery unless a route of their own says otherwise. */
  constructor(routes: Record<string, string>, localDomains: string[] = []) {
    for (const d of localDomains) this.table.set(d.toLowerCase(), { kind: 'local', key: d.toLowerCase() });
    for (const [pattern, target] of Object.entries(routes)) {
      const key = pattern.toLowerCase();
      if (target === 'local') {
        this.table.set(key, { kind: 'local', key });
        continue;
      }
      const url = new URL(target);
      const secure = url.protocol === 'smtps:';
      const host = url.hostname.replace(/^\[|\]$/g, '');
      this.table.set(key, { kind: 'smtp', key, host, port: url.port ? Number(url.port) : secure ? 465 : 25, secure });
    }
  }

  lookup(domain: string): Route {
    return matchDomain(this.table, domain)?.value ?? { kind: 'mx' };
  }
}
