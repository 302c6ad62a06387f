// State every member of the pool shares that is not a queue: failed logins per client, dead
// destinations, delay-warning markers. Each change runs as a script on every node that answers
// (not on one node, so the loss of any one node loses nothing), and each script reads the time
// from its node (TIME), never from the caller, so a member whose clock runs ahead or behind
// cannot expire what the others wrote. An answer counts when a majority of the pool's nodes gave
// it; callers merge the answers (the highest count, the latest time).
import { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import { withDeadline } from './deadline.ts';
import type { RedisNode } from './node.ts';
import { defineScripts, runScript, type ScriptArg, type ScriptName } from './scripts.ts';

interface PoolClient {
  client: Redis;
  readonly up: boolean;
}

export class PoolState {
  private readonly nodes: () => PoolClient[];
  private readonly own: Redis[] = [];
  readonly timeoutMs: number;
  private readonly log: Logger;
  /** Fewer than a majority answered last time (said once until they answer again). */
  private short = false;

  /** On the queue manager's nodes (their connections and health). */
  constructor(nodes: () => PoolClient[], timeoutMs: number, log: Logger) {
    this.nodes = nodes;
    this.timeoutMs = timeoutMs;
    this.log = log;
  }

  /** With connections of its own to `urls` (a part that runs without the queue manager). */
  static connect(urls: string[], timeoutMs: number, log: Logger): PoolState {
    const clients = urls.map((url) => {
      const c = new Redis(url, { lazyConnect: false, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: Math.max(2 * timeoutMs, 1000), connectTimeout: Math.max(timeoutMs, 1000), retryStrategy: (n) => Math.min(n * 100, 1000) });
      c.on('error', () => {}); // a node down: its answers are missing, the others decide
      defineScripts(c);
      return c;
    });
    const s = new PoolState(() => clients.map((client) => ({ client, get up() { return client.status === 'ready'; } })), timeoutMs, log);
    s.own.push(...clients);
    return s;
  }

  static of(nodes: RedisNode[], timeoutMs: number, log: Logger): PoolState {
    return new PoolState(() => nodes, timeoutMs, log);
  }

  get majority(): number {
    return Math.floor(this.nodes().length / 2) + 1;
  }

  /**
   * Runs a script on every node that answers; the answers, or undefined when fewer than a
   * majority answered (the caller then decides on its own, and says so).
   */
  async run<T>(script: ScriptName, args: ScriptArg[]): Promise<T[] | undefined> {
    const up = this.nodes().filter((n) => n.up);
    const res = await Promise.allSettled(up.map((n) => withDeadline(runScript<T>(n.client, script, args), this.timeoutMs, `${script} on the pool`)));
    const answers = res.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    if (answers.length >= this.majority) {
      this.short = false;
      return answers;
    }
    if (!this.short) this.log.warn({ script, answered: answers.length, majority: this.majority }, 'shared state: fewer than a majority of the nodes answer; this process decides on its own meanwhile');
    this.short = true;
    return undefined;
  }

  async close(): Promise<void> {
    for (const c of this.own) c.disconnect();
  }
}
