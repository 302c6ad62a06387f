// The users of the configuration (`users:`, scrypt hashes from `streamgate user hash`) as a
// UserDirectory: submission AUTH and, until the mailbox store provides its own directory,
// recipient checks for local domains. Addresses compare without regard to case.
import { hashPassword, verifyPassword } from '../../message/password.ts';
import type { UserDirectory } from '../../message/types.ts';

export class ConfigUserDirectory implements UserDirectory {
  private readonly hashes = new Map<string, string>();
  /** Verified against when the user is unknown, so that timing does not tell who exists. */
  private dummy: Promise<string> | undefined;

  constructor(users: readonly { address: string; passwordHash: string }[]) {
    for (const u of users) this.hashes.set(u.address.toLowerCase(), u.passwordHash);
  }

  exists(address: string): Promise<boolean> {
    return Promise.resolve(this.hashes.has(address.toLowerCase()));
  }

  async verify(address: string, password: string): Promise<boolean> {
    const hash = this.hashes.get(address.toLowerCase());
    if (hash === undefined) {
      this.dummy ??= hashPassword('streamgate-no-such-user');
      await verifyPassword(password, await this.dummy);
      return false;
    }
    return verifyPassword(password, hash);
  }
}
