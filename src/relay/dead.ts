// Dead destinations: after `failures` consecutive failures to reach a destination MTA (no SMTP
// session: refused, timed out, dropped) it is dead for `relay.deadDestination.suspend`. While it
// is dead no message is taken for it: messages wait in their queue without an attempt being
// counted, so the wait does not stack with their own retry schedule. When the wait ends, one
// probe message goes; success brings the destination back, failure makes it dead again for twice
// as long (at most 8 × `suspend`). (An operator's suspend of a queue is another thing:
// scheduler.ts.)
//
// With a pool (PoolState) the state is shared by every member and kept on every node
// (lua/deadDestination-2.lua, on the nodes' clocks): a destination one member finds dead is dead
// for all, one probe goes for all, and the loss of any one node forgets nothing. This process
// keeps a copy for the scheduler's synchronous looks, refreshed by refresh() (every relay sweep),
// with the times converted to its own clock from the time left the nodes answer. Without a
// majority of the nodes it decides on its own meanwhile.
import { randomBytes } from 'node:crypto';
import type { Config } from '../config/schema.ts';
import type { PoolState } from '../queue/poolState.ts';

export type DestState = { state: 'up' } | { state: 'dead'; until: number } | { state: 'probe' } | { state: 'probing' };

interface Entry {
  failures: number;
  until: number;
  /** Times dead in a row without a success: the wait doubles with each. */
  rounds: number;
  probing: boolean;
  /** Set from this process's own outcome at this change count (see refresh). */
  gen?: number;
}

/** A probe claim on the pool lasts this long at most (a member that dies with one out does not block the others). */
const PROBE_CLAIM_MS = 5 * 60_000;

export class DeadDestinations {
  private readonly entries = new Map<string, Entry>();
  private readonly cfg: Config['relay']['deadDestination'];
  private readonly now: () => number;
  private readonly pool: PoolState | undefined;
  private readonly holder = `${process.pid}.${randomBytes(4).toString('hex')}`;
  /** Counts this process's own changes: a refresh read before one must not undo it. */
  private gen = 0;
  /** Destinations this process reached, at which change count: a refresh read before must not make them dead again. */
  private readonly reached = new Map<string, number>();

  constructor(cfg: Config['relay']['deadDestination'], now: () => number, pool?: PoolState) {
    this.cfg = cfg;
    this.now = now;
    this.pool = pool;
  }

  private run(op: 'fail' | 'success' | 'claim' | 'unclaim' | 'list', dest: string): Promise<unknown[][] | undefined> {
    if (!this.pool) return Promise.resolve(undefined);
    return this.pool.run<unknown[]>('deadDestination', [`sg:dead:{${dest}}`, 'sg:dead', op, dest, this.cfg.failures, this.cfg.suspend, PROBE_CLAIM_MS, this.holder]).catch(() => undefined);
  }

  /**
   * Takes in what the pool says is dead now (every member's findings); returns the destinations
   * whose state changed here (dead found by another member, or back), for their queues to look again.
   */
  async refresh(): Promise<string[]> {
    const asOf = this.gen;
    const answers = await this.run('list', '');
    if (!answers) return [];
    const left = new Map<string, number>();
    for (const a of answers) for (let i = 0; i + 1 < a.length; i += 2) left.set(String(a[i]), Math.max(left.get(String(a[i])) ?? -Infinity, Number(a[i + 1])));
    const changed: string[] = [];
    const now = this.now();
    for (const [dest, ms] of left) {
      if ((this.reached.get(dest) ?? -1) > asOf) continue;
      const e = this.entries.get(dest) ?? { failures: this.cfg.failures, until: 0, rounds: 1, probing: false };
      const until = now + Math.max(ms, 0);
      if (e.until === 0) changed.push(dest);
      if (e.until === 0 || Math.abs(e.until - until) > 1000) e.until = until || 1;
      this.entries.set(dest, e);
    }
    for (const [dest, e] of this.entries) {
      if (e.until !== 0 && !left.has(dest) && !e.probing && (e.gen ?? 0) <= asOf) {
        this.entries.delete(dest); // back: another member reached it
        changed.push(dest);
      }
    }
    for (const [dest, g] of this.reached) if (g <= asOf) this.reached.delete(dest);
    return changed;
  }

  /** up; dead until; probe (the wait is over and no probe is out); probing (one is out). */
  state(dest: string): DestState {
    const e = this.entries.get(dest);
    if (!e || e.until === 0) return { state: 'up' };
    if (e.probing) return { state: 'probing' };
    if (this.now() < e.until) return { state: 'dead', until: e.until };
    return { state: 'probe' };
  }

  /** True when the caller may send (up, or it has just claimed the single probe, of every member's). */
  async claim(dest: string): Promise<boolean> {
    const e = this.entries.get(dest);
    if (!e || e.until === 0) return true;
    if (e.probing || this.now() < e.until) return false;
    const answers = await this.run('claim', dest);
    if (answers && answers.filter((a) => Number(a[0]) === 1).length < this.pool!.majority) {
      if (answers.every((a) => Number(a[0]) === 0)) e.until = Math.max(e.until, this.now() + Math.max(...answers.map((a) => Number(a[1]))));
      if (this.now() >= e.until) e.until = this.now() + 1000; // another member's probe is out: look again in a while
      void this.run('unclaim', dest);
      return false;
    }
    e.probing = true;
    return true;
  }

  /** A session was established (whatever the replies): the destination is alive. */
  async success(dest: string): Promise<boolean> {
    const e = this.entries.get(dest);
    this.entries.delete(dest);
    if (e && this.pool) this.reached.set(dest, ++this.gen);
    // only a destination this process saw fail is written: a healthy one costs nothing
    const answers = e ? await this.run('success', dest) : undefined;
    void answers;
    return !!e && e.until !== 0;
  }

  /** A failure to reach it; returns true when this failure makes it dead (here, or on the pool). */
  async failure(dest: string): Promise<boolean> {
    const answers = await this.run('fail', dest);
    if (answers) {
      const now = this.now();
      const e = this.entries.get(dest) ?? { failures: 0, until: 0, rounds: 0, probing: false };
      this.entries.set(dest, e);
      e.gen = ++this.gen;
      const dead = answers.some((a) => Number(a[0]) === 1);
      const left = Math.max(...answers.map((a) => Number(a[1])));
      e.failures = Math.max(...answers.map((a) => Number(a[2])));
      e.rounds = Math.max(...answers.map((a) => Number(a[3])));
      if (dead || left > 0) e.until = now + Math.max(left, 1);
      if (dead) e.probing = false;
      return dead;
    }
    return this.failedHere(dest);
  }

  private failedHere(dest: string): boolean {
    const e = this.entries.get(dest) ?? { failures: 0, until: 0, rounds: 0, probing: false };
    this.entries.set(dest, e);
    e.failures++;
    if (e.probing || (e.until === 0 && e.failures >= this.cfg.failures)) {
      e.probing = false;
      e.until = this.now() + this.cfg.suspend * Math.min(8, 2 ** e.rounds);
      e.rounds++;
      return true;
    }
    return false;
  }

  /** A probe that ended without telling anything (the relay stopped): let another go. */
  unclaim(dest: string): void {
    const e = this.entries.get(dest);
    if (e) e.probing = false;
    void this.run('unclaim', dest);
  }

  /** Dead destinations, for status pages. */
  list(): { dest: string; until: number; failures: number; probing: boolean }[] {
    return [...this.entries].filter(([, e]) => e.until !== 0).map(([dest, e]) => ({ dest, until: e.until, failures: e.failures, probing: e.probing }));
  }
}
