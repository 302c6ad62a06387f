// The users the gateway knows (UserDirectory): `config.users` first, then the mailbox store's users
// table, each answer cached for a few seconds (positive and negative). When Cassandra fails, a
// cached answer is used even if stale; with none, the call throws so that the caller answers with
// a temporary failure (SMTP 451, POP3 [SYS/TEMP]) instead of a wrong "no such user".
import type { Config } from '../config/schema.ts';
import type { UserDirectory } from '../message/types.ts';
import { hashPassword, verifyPassword } from '../message/password.ts';
import { tryUserKey } from './ids.ts';
import type { MailStore } from './store.ts';

export interface DirectoryEntry {
  address: string;
  passwordHash?: string;
  /** Bytes; 0 means no limit. */
  quota: number;
  source: 'config' | 'store';
}

export interface DirectoryOptions {
  /** How long an answer is reused, ms; default 5000. */
  cacheMs?: number;
  now?: () => number;
}

const MAX_CACHED = 50_000;

export class MailboxDirectory implements UserDirectory {
  private readonly store: MailStore;
  private readonly configUsers = new Map<string, string>();
  private readonly cacheMs: number;
  private readonly now: () => number;
  private readonly cache = new Map<string, { entry: DirectoryEntry | undefined; at: number }>();
  private dummyHash: Promise<string> | undefined;

  constructor(store: MailStore, config: Config, opts: DirectoryOptions = {}) {
    this.store = store;
    for (const u of config.users) {
      const key = tryUserKey(u.address);
      if (key) this.configUsers.set(key, u.passwordHash);
    }
    this.cacheMs = opts.cacheMs ?? 5000;
    this.now = opts.now ?? Date.now;
  }

  /** The user behind an address, or undefined; throws STORE_UNAVAILABLE when it cannot tell. */
  async lookup(address: string): Promise<DirectoryEntry | undefined> {
    const key = tryUserKey(address);
    if (!key) return undefined;
    const hash = this.configUsers.get(key);
    if (hash !== undefined) return { address: key, passwordHash: hash, quota: 0, source: 'config' };
    const hit = this.cache.get(key);
    if (hit && this.now() - hit.at < this.cacheMs) return hit.entry;
    let entry: DirectoryEntry | undefined;
    try {
      const user = await this.store.getUser(key);
      entry = user ? { address: key, quota: user.quota, source: 'store', ...(user.passwordHash ? { passwordHash: user.passwordHash } : {}) } : undefined;
    } catch (err) {
      if (hit) return hit.entry; // stale beats nothing while Cassandra is away
      throw err;
    }
    this.cache.delete(key);
    if (this.cache.size >= MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(key, { entry, at: this.now() });
    return entry;
  }

  async exists(address: string): Promise<boolean> {
    return (await this.lookup(address)) !== undefined;
  }

  async verify(address: string, password: string): Promise<boolean> {
    const entry = await this.lookup(address);
    if (!entry?.passwordHash) {
      // spend the same scrypt time as for a real user, so timing does not tell who exists
      this.dummyHash ??= hashPassword('streamgate-no-such-user');
      await verifyPassword(password, await this.dummyHash);
      return false;
    }
    return verifyPassword(password, entry.passwordHash);
  }

  /** Drops cached answers (all, or one address) after a change made in this process. */
  invalidate(address?: string): void {
    if (address === undefined) this.cache.clear();
    else {
      const key = tryUserKey(address);
      if (key) this.cache.delete(key);
    }
  }
}
