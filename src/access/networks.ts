// Trusted networks (networks.trusted): the client addresses that may relay over SMTP without
// AUTH and, with pop3.plaintextAuth tls-or-trusted, log in over POP3 without TLS. IPv4 and IPv6
// addresses and CIDR ranges; an IPv4-mapped IPv6 client address is read as its IPv4 address.
import { BlockList, isIP } from 'node:net';

export class TrustedNetworks {
  private readonly list = new BlockList();

  constructor(ranges: readonly string[]) {
    for (const r of ranges) {
      const [ip, bits] = r.split('/') as [string, string | undefined];
      const family = isIP(ip);
      if (!family) throw new Error(`networks.trusted: expected an IPv4 or IPv6 address or range, got ${JSON.stringify(r)}`);
      const type = family === 6 ? 'ipv6' : 'ipv4';
      if (bits === undefined) this.list.addAddress(ip, type);
      else this.list.addSubnet(ip, Number(bits), type);
    }
  }

  has(address: string): boolean {
    const a = address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
    const family = isIP(a);
    if (!family) return false;
    return this.list.check(a, family === 6 ? 'ipv6' : 'ipv4');
  }
}
