// Client addresses as the limits count them, and the connection limiter of both listeners (SMTP
// and POP3). An IPv6 client is counted per network of networks.ipv6Prefix bits (default /64, one
// site's allocation, which a client can rotate through at will); IPv4 and IPv4-mapped IPv6 per
// address. Every per-client limit (connections, failed logins, errors) counts by this key.
import ipaddr from 'ipaddr.js';

/** "2001:db8:1:2::9" → "2001:db8:1:2::/64"; "::ffff:192.0.2.1" → "192.0.2.1". */
export function clientKey(address: string, ipv6Prefix: number): string {
  if (!ipaddr.isValid(address)) return address;
  const ip = ipaddr.process(address);
  if (ip.kind() === 'ipv4' || ipv6Prefix >= 128) return ip.toString();
  const bytes = ip.toByteArray();
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, ipv6Prefix - i * 8));
    bytes[i] = bytes[i]! & ((0xff << (8 - keep)) & 0xff);
  }
  return `${ipaddr.fromByteArray(bytes).toString()}/${ipv6Prefix}`;
}

/** Connections in total and per client key (smtp. and pop3.maxConnections[PerClient]). */
export class ConnectionLimiter {
  private readonly byClient = new Map<string, number>();
  private readonly admitted = new Map<string, string>(); // session id -> client key
  private readonly max: number;
  private readonly perClient: number;

  constructor(max: number, perClient: number) {
    this.max = max;
    this.perClient = perClient;
  }

  get size(): number {
    return this.admitted.size;
  }

  /** Counts the session in, or tells which limit it hits. */
  admit(sessionId: string, client: string): 'tooManyConnections' | 'tooManyFromClient' | undefined {
    if (this.admitted.size >= this.max) return 'tooManyConnections';
    const n = this.byClient.get(client) ?? 0;
    if (n >= this.perClient) return 'tooManyFromClient';
    this.byClient.set(client, n + 1);
    this.admitted.set(sessionId, client);
    return undefined;
  }

  release(sessionId: string): void {
    const client = this.admitted.get(sessionId);
    if (client === undefined) return;
    this.admitted.delete(sessionId);
    const n = (this.byClient.get(client) ?? 1) - 1;
    if (n <= 0) this.byClient.delete(client);
    else this.byClient.set(client, n);
  }
}
