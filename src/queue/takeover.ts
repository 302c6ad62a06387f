// Takeover of the queues of a member whose lease lapsed (DESIGN, "Scale beyond one machine").
// Every live member looks at the registry every `gateway.adoption.every`; a member whose lease is
// gone on every node that answers (a majority must answer) for longer than `gateway.adoption.grace`
// is dead, and each of its queues is adopted by one live member: the first of the live members by
// rendezvous hashing of member id and queue name (so they spread over the survivors). The adopter
// claims the queue's name on a majority of the nodes (lua/queueOwner-1.lua) with an epoch above
// the dead member's, so two survivors never both adopt one, and a restarted process with the
// dead member's id (a newer epoch) keeps what it took back first. The queue itself is then claimed
// on its replicas with that epoch (the old owner is fenced out in Lua) and loaded from a replica
// proven current (QueueManager.adopt).
import { createHash } from 'node:crypto';
import type { Logger } from '../log.ts';
import { withDeadline } from './deadline.ts';
import { forgetMember } from './membership.ts';
import type { RedisNode } from './node.ts';
import { queueNameOf, readPlacement, type PlacementRecord } from './placement.ts';
import { runScript } from './scripts.ts';

/** A member of the pool as the takeover sees it: its last epoch, and whether any node still holds its lease. */
export interface PoolMember {
  id: string;
  epoch: number;
  live: boolean;
}

const majorityOf = (nodes: RedisNode[]) => Math.floor(nodes.length / 2) + 1;
const ownerKey = (name: string) => `sg:owner:{${name}}`;

/**
 * Claims a queue name for `me` on a majority of the nodes, taking it from `from` (whose last epoch
 * was `fromEpoch`): see lua/queueOwner-1.lua. A claim that reaches fewer than a majority is undone.
 */
export async function claimQueueName(nodes: RedisNode[], name: string, me: { id: string; epoch: number }, from: { id: string; epoch: number }, timeoutMs: number): Promise<{ ok: true } | { ok: false; holder: string }> {
  const up = nodes.filter((n) => n.up);
  const res = await Promise.allSettled(up.map((n) => withDeadline(runScript<[number, string]>(n.client, 'queueOwner', [ownerKey(name), 'claim', me.id, me.epoch, from.id, from.epoch]), timeoutMs, `owner of ${name} on ${n.id}`)));
  const granted = up.filter((_, i) => res[i]!.status === 'fulfilled' && Number((res[i] as PromiseFulfilledResult<[number, string]>).value[0]) === 1);
  if (granted.length >= majorityOf(nodes)) return { ok: true };
  await Promise.allSettled(granted.map((n) => runScript(n.client, 'queueOwner', [ownerKey(name), 'release', me.id, me.epoch])));
  const refused = res.find((r): r is PromiseFulfilledResult<[number, string]> => r.status === 'fulfilled' && Number(r.value[0]) === 0);
  return { ok: false, holder: refused ? String(refused.value[1]) : `fewer than ${majorityOf(nodes)} nodes answered` };
}

/** Forgets who owns a deleted queue's name (only the owner's own record goes). */
export async function dropQueueName(nodes: RedisNode[], name: string, me: string): Promise<void> {
  await Promise.allSettled(nodes.filter((n) => n.up).map((n) => runScript(n.client, 'queueOwner', [ownerKey(name), 'drop', me, 0])));
}

/** The registry with each member's lease as the nodes see it now; undefined when fewer than a majority answer. */
export async function poolMembers(nodes: RedisNode[], timeoutMs: number): Promise<PoolMember[] | undefined> {
  const up = nodes.filter((n) => n.up);
  const seen = await Promise.allSettled(
    up.map(async (n) => {
      const all = await withDeadline(n.client.hgetall('sg:members'), timeoutMs, `registry on ${n.id}`);
      const ids = Object.keys(all);
      const ttls = ids.length ? await withDeadline(Promise.all(ids.map((id) => n.client.pttl(`sg:member:{${id}}`))), timeoutMs, `leases on ${n.id}`) : [];
      return ids.map((id, i) => ({ id, epoch: Number((JSON.parse(all[id]!) as { epoch: number }).epoch), live: ttls[i]! > 0 }));
    }),
  );
  const answers = seen.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  if (answers.length < majorityOf(nodes)) return undefined;
  const out = new Map<string, PoolMember>();
  for (const m of answers.flat()) {
    const cur = out.get(m.id);
    out.set(m.id, { id: m.id, epoch: Math.max(cur?.epoch ?? 0, m.epoch), live: (cur?.live ?? false) || m.live });
  }
  return [...out.values()];
}

/** The live member that adopts a queue: the first by rendezvous hashing of member id and queue name. */
export function adopterOf(name: string, live: string[]): string | undefined {
  const score = (id: string) => createHash('sha1').update(`${id}|${name}`).digest().readUInt32BE(0);
  return [...live].sort((a, b) => score(b) - score(a) || a.localeCompare(b))[0];
}

/** What the takeover needs of the queue manager. */
export interface TakeoverHost {
  readonly nodes: RedisNode[];
  readonly gatewayId: string;
  /** False once this process was fenced or is stopping: it adopts nothing more. */
  readonly adopting: boolean;
  /** Adopts one queue of a dead member; false when another member got it first. */
  adopt(from: PoolMember, field: string, rec: PlacementRecord): Promise<boolean>;
}

export interface TakeoverOptions {
  /** How often the registry is looked at (ms). */
  every: number;
  /** How long a member's lease must have been gone before its queues are adopted (ms). */
  grace: number;
  timeoutMs: number;
  /** Queues adopted at once. */
  parallel: number;
}

export class Takeover {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<number> | undefined;
  /** When this process first saw each dead member dead (its own clock: only for the grace). */
  private readonly deadSince = new Map<string, number>();
  private readonly host: TakeoverHost;
  private readonly opts: TakeoverOptions;
  private readonly log: Logger;

  constructor(host: TakeoverHost, opts: TakeoverOptions, log: Logger) {
    this.host = host;
    this.opts = opts;
    this.log = log;
  }

  start(): void {
    this.timer = setInterval(() => void this.sweep(), this.opts.every);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running?.catch(() => 0);
  }

  /** One look at the registry: adopts what falls to this member; returns how many queues it adopted. */
  sweep(): Promise<number> {
    this.running ??= this.sweepOnce()
      .catch((err: unknown) => {
        this.log.warn({ err }, 'takeover sweep failed');
        return 0;
      })
      .finally(() => (this.running = undefined));
    return this.running;
  }

  private async sweepOnce(): Promise<number> {
    const h = this.host;
    if (!h.adopting) return 0;
    const members = await poolMembers(h.nodes, this.opts.timeoutMs);
    if (!members) return 0;
    const live = [...new Set([h.gatewayId, ...members.filter((m) => m.live).map((m) => m.id)])];
    const now = Date.now();
    let adopted = 0;
    for (const m of members) {
      if (m.live || m.id === h.gatewayId) {
        this.deadSince.delete(m.id);
        continue;
      }
      const since = this.deadSince.get(m.id) ?? now;
      this.deadSince.set(m.id, since);
      if (now - since < this.opts.grace) continue;
      const records = await readPlacement(h.nodes, m.id, this.opts.timeoutMs);
      const left = [...records].filter(([, rec]) => !rec.adoptedBy);
      if (!left.length) {
        await forgetMember(h.nodes, m.id);
        this.deadSince.delete(m.id);
        this.log.info({ gateway: m.id }, 'member forgotten: every queue of it was adopted');
        continue;
      }
      const mine = left.filter(([field, rec]) => adopterOf(queueNameOf(m.id, field, rec), live) === h.gatewayId);
      for (let i = 0; i < mine.length && h.adopting; i += this.opts.parallel) {
        const got = await Promise.allSettled(mine.slice(i, i + this.opts.parallel).map(([field, rec]) => h.adopt(m, field, rec)));
        for (const r of got) {
          if (r.status === 'fulfilled' && r.value) adopted++;
          if (r.status === 'rejected') this.log.warn({ err: r.reason as Error, gateway: m.id }, 'adoption failed');
        }
      }
    }
    return adopted;
  }
}
