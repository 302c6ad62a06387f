// A gateway's membership of the pool (DESIGN, invariant 10). The process holds a lease on its
// gateway id on every node it reaches, renewed at a third of the lease time; it holds the id
// while a majority of the pool's nodes say so, so the loss of any one node changes nothing. A
// process that finds its id held by a member that still renews refuses to join; one whose holder
// stopped renewing (dead, or paused) takes it over. Each join draws a new ownership epoch, higher
// than any drawn before on a majority of the nodes: the queue scripts refuse a write carrying an
// older epoch than the one the queue was claimed with, so a paused or partitioned process that
// wakes after its queues were taken over cannot write a single entry to them.
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.ts';
import { withDeadline } from './deadline.ts';
import { QueueError } from './errors.ts';
import type { RedisNode } from './node.ts';
import { runScript } from './scripts.ts';

/** A member as the pool's registry shows it (`streamgate gateways`, GET /api/gateways). */
export interface MemberRecord {
  id: string;
  token: string;
  epoch: number;
  /** When it joined and last renewed (ms, its own clock: for people, never for decisions). */
  since: number;
  renewed: number;
  queues: number;
  messages: number;
  /** Time left on its lease (ms, the node's clock); 0 when it lapsed: the member is gone. */
  leaseMs: number;
  live: boolean;
}

/** The pool's registry of members: gateway id -> its record, on every node. */
const MEMBERS_KEY = 'sg:members';

interface LeaseAnswer {
  node: RedisNode;
  held: boolean;
  /** A renewal found the lease gone on this node (it had lapsed, or the node lost it). */
  lapsed: boolean;
  ttl: number;
  holder: string | undefined;
}

export class Membership extends EventEmitter {
  /** Who holds the lease: host, pid and a random part (never a secret). */
  readonly token = `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
  /** This process's ownership epoch; 0 until it joined. */
  epoch = 0;
  private timer: NodeJS.Timeout | undefined;
  private lostAt: number | undefined;
  private readonly key: string;
  private readonly majority: number;
  private readonly nodes: RedisNode[];
  private readonly id: string;
  private readonly leaseMs: number;
  private readonly timeoutMs: number;
  private readonly log: Logger;

  private since = 0;
  private readonly load: () => { queues: number; messages: number };

  constructor(nodes: RedisNode[], id: string, opts: { leaseMs: number; timeoutMs: number; load?: () => { queues: number; messages: number } }, log: Logger) {
    super();
    this.load = opts.load ?? (() => ({ queues: 0, messages: 0 }));
    this.nodes = nodes;
    this.id = id;
    this.leaseMs = opts.leaseMs;
    this.timeoutMs = opts.timeoutMs;
    this.log = log;
    this.key = `sg:member:{${id}}`;
    this.majority = Math.floor(nodes.length / 2) + 1;
  }

  private async onAll(op: 'acquire' | 'renew' | 'take' | 'release'): Promise<LeaseAnswer[]> {
    const up = this.nodes.filter((n) => n.up);
    const res = await Promise.allSettled(up.map((n) => withDeadline(runScript<[number, number, string?]>(n.client, 'memberLease', [this.key, op, this.token, this.leaseMs]), this.timeoutMs, `lease on ${n.id}`)));
    const out: LeaseAnswer[] = [];
    res.forEach((r, i) => {
      if (r.status === 'fulfilled') out.push({ node: up[i]!, held: Number(r.value[0]) >= 1, lapsed: Number(r.value[0]) === 2, ttl: Number(r.value[1]), holder: r.value[2] });
    });
    return out;
  }

  private granted(answers: LeaseAnswer[]): boolean {
    return answers.filter((a) => a.held).length >= this.majority;
  }

  /** Takes the gateway id (or refuses: MEMBER_CONFLICT), draws the epoch, starts renewing. */
  async join(): Promise<void> {
    let answers = await this.onAll('acquire');
    if (!this.granted(answers)) {
      const others = answers.filter((a) => !a.held);
      if (!others.length) throw new QueueError('QUEUE_UNAVAILABLE', `gateway id ${this.id}: ${answers.length} of ${this.nodes.length} redis nodes answer, ${this.majority} needed to hold it`);
      // Held by another process. One of this host that is gone (a crash, then a restart) is taken
      // over at once; otherwise, is it still renewing? Its lease's time left says so.
      const wait = deadHere(others[0]!.holder) ? 0 : Math.floor(this.leaseMs / 3) + 500;
      const before = Math.max(...others.map((a) => a.ttl));
      await sleep(wait);
      answers = await this.onAll('acquire');
      const again = answers.filter((a) => !a.held);
      if (!this.granted(answers)) {
        const after = Math.max(0, ...again.map((a) => a.ttl));
        if (wait && again.length && after > before - wait / 2) {
          throw new QueueError('MEMBER_CONFLICT', `gateway id ${this.id} is held by a live member (${again[0]!.holder}); give this process another gateway.id`);
        }
        this.log.warn({ gateway: this.id, holder: others[0]!.holder }, 'taking over the gateway id of a member that stopped renewing its lease');
        answers = await this.onAll('take');
        if (!this.granted(answers)) throw new QueueError('QUEUE_UNAVAILABLE', `gateway id ${this.id}: could not take the lease on ${this.majority} redis nodes`);
      }
    }
    this.epoch = await this.drawEpoch();
    this.since = Date.now();
    await this.register();
    this.timer = setInterval(() => void this.renew(), Math.max(100, Math.floor(this.leaseMs / 3)));
    this.timer.unref();
    this.log.info({ gateway: this.id, epoch: this.epoch, token: this.token }, 'joined the pool');
  }

  /**
   * Draws a new epoch, above any drawn before (the epoch of a member whose queues this one is about
   * to adopt included), and records it in the registry before it is used: an adopter's claims on
   * queue names carry it, and whoever later adopts from this member must see it.
   */
  async redraw(): Promise<number> {
    this.epoch = await this.drawEpoch();
    await this.register();
    this.log.info({ gateway: this.id, epoch: this.epoch }, 'new ownership epoch');
    return this.epoch;
  }

  private async drawEpoch(): Promise<number> {
    const up = this.nodes.filter((n) => n.up);
    const draw = await Promise.allSettled(up.map((n) => withDeadline(runScript<number>(n.client, 'ownerEpoch', ['sg:epoch', 'draw']), this.timeoutMs, `epoch on ${n.id}`)));
    const got = draw.flatMap((r, i) => (r.status === 'fulfilled' ? [{ node: up[i]!, value: Number(r.value) }] : []));
    if (got.length < this.majority) throw new QueueError('QUEUE_UNAVAILABLE', `gateway id ${this.id}: ${got.length} redis nodes answered the epoch draw, ${this.majority} needed`);
    const epoch = Math.max(...got.map((g) => g.value));
    await Promise.allSettled(got.map((g) => runScript(g.node.client, 'ownerEpoch', ['sg:epoch', 'raise', epoch])));
    return epoch;
  }

  private async renew(): Promise<void> {
    const answers = await this.onAll('renew').catch(() => []);
    const lapsed = answers.filter((a) => a.lapsed);
    if (lapsed.length >= this.majority) {
      // Paused or cut off past the lease: other members may have adopted this one's queues.
      clearInterval(this.timer);
      this.log.error({ gateway: this.id, nodes: lapsed.map((a) => a.node.id) }, 'the lease lapsed before it was renewed');
      await this.onAll('release').catch(() => []); // what this renewal re-created: a new process with the id takes it at once
      this.emit('lost', `the lease of gateway id ${this.id} lapsed before it was renewed; other members may have adopted its queues`);
      return;
    }
    const taken = answers.filter((a) => !a.held);
    if (taken.length >= this.majority) {
      clearInterval(this.timer);
      this.log.error({ gateway: this.id, holder: taken[0]!.holder }, 'another process took this gateway id');
      this.emit('lost', `another process (${taken[0]!.holder}) took gateway id ${this.id}`);
      return;
    }
    if (this.granted(answers)) {
      this.lostAt = undefined;
      await this.register();
      return;
    }
    this.lostAt ??= Date.now();
    if (Date.now() - this.lostAt > this.leaseMs) this.log.warn({ gateway: this.id, answers: answers.length }, 'the lease is held on fewer than a majority of the nodes');
  }

  /**
   * Gives the id back (a clean stop). A member that still holds messages stays in the registry,
   * not live: the other members adopt its queues (takeover.ts); one that holds none leaves it.
   */
  async leave(): Promise<void> {
    clearInterval(this.timer);
    if (!this.epoch) return;
    await this.onAll('release').catch(() => {});
    if (this.load().messages) await this.register();
    else await forgetMember(this.nodes, this.id);
  }

  /** This member's record in the registry (its figures now), on every node that answers. */
  async register(): Promise<void> {
    const rec = JSON.stringify({ token: this.token, epoch: this.epoch, since: this.since, renewed: Date.now(), ...this.load() });
    await Promise.allSettled(this.nodes.filter((n) => n.up).map((n) => withDeadline(n.client.hset(MEMBERS_KEY, this.id, rec), this.timeoutMs, `registry on ${n.id}`)));
  }
}

/** The members the pool knows, with their leases: the newest record of each id over the nodes that answer. */
export async function listMembers(nodes: RedisNode[], timeoutMs: number): Promise<MemberRecord[]> {
  const best = new Map<string, MemberRecord>();
  await Promise.allSettled(
    nodes
      .filter((n) => n.up)
      .map(async (n) => {
        const all = await withDeadline(n.client.hgetall(MEMBERS_KEY), timeoutMs, `registry on ${n.id}`);
        const ids = Object.keys(all);
        const ttls = ids.length ? await Promise.all(ids.map((id) => n.client.pttl(`sg:member:{${id}}`))) : [];
        ids.forEach((id, i) => {
          const r = JSON.parse(all[id]!) as Omit<MemberRecord, 'id' | 'leaseMs' | 'live'>;
          const leaseMs = Math.max(0, ttls[i]!);
          const cur = best.get(id);
          if (!cur || r.renewed > cur.renewed || (r.renewed === cur.renewed && leaseMs > cur.leaseMs)) best.set(id, { id, ...r, leaseMs, live: leaseMs > 0 });
        });
      }),
  );
  return [...best.values()].sort((a, b) => a.id.localeCompare(b.id));
}

/** Takes a member out of the registry (it left holding nothing, or every queue of it was adopted). */
export async function forgetMember(nodes: RedisNode[], id: string): Promise<void> {
  await Promise.allSettled(nodes.filter((n) => n.up).map((n) => n.client.hdel(MEMBERS_KEY, id)));
}

/** True when a lease holder's token names a process of this host that no longer runs. */
function deadHere(holder: string | undefined): boolean {
  const m = /^(.*):(\d+):[0-9a-f]+$/.exec(holder ?? '');
  if (!m || m[1] !== hostname() || Number(m[2]) === process.pid) return false;
  try {
    process.kill(Number(m[2]), 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
