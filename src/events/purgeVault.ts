// A purge that can be undone for queue.purgeGrace: before a message is purged, its envelope,
// metadata and body are written to Cassandra (table purged, with the grace as TTL, the body in
// chunks of cassandra.chunkSize); `streamgate queue unpurge ID` appends it again to its queue
// under the same id and records an `unpurged` event with actor and reason. After the grace the
// rows expire: the body is gone, the `purged` event stays in the history and the event log.
// A purge whose body cannot be kept (Cassandra does not answer) is refused, not done half.
import type { Config } from '../config/schema.ts';
import { consistencyFrom, type Consistency } from '../mailbox/client.ts';
import type { MailStore } from '../mailbox/store.ts';
import { QueueError } from '../queue/errors.ts';
import type { QueueManager } from '../queue/manager.ts';

export class PurgeVault {
  private readonly queues: QueueManager;
  private readonly store: MailStore;
  private readonly cl: Consistency;
  private readonly ks: string;
  private readonly graceS: number;
  private readonly chunk: number;

  constructor(queues: QueueManager, store: MailStore, config: Config) {
    this.queues = queues;
    this.store = store;
    this.cl = consistencyFrom(config);
    this.ks = store.keyspace;
    this.graceS = Math.ceil(config.queue.purgeGrace / 1000);
    this.chunk = config.cassandra.chunkSize;
  }

  /** Purges a message, its body kept for the grace first; the event says until when it can be undone. */
  async purge(domain: string, msgId: string, actor: string, reason: string, extra: Record<string, unknown> = {}): Promise<void> {
    const q = this.queues.queues.get(domain.toLowerCase());
    const m = q && (await q.peek(msgId));
    if (!q || !m) return this.queues.purge(domain, msgId, actor, reason, extra);
    const now = this.queues.now();
    const chunks = Math.max(1, Math.ceil(m.raw.length / this.chunk));
    try {
      await this.store.connect();
      const opts = { prepare: true, consistency: this.cl.write, isIdempotent: true };
      const stmt = `INSERT INTO ${this.ks}.purged (gateway, message_id, domain, chunk, envelope, meta, accepted_at, purged_at, chunks, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ${this.graceS}`;
      for (let i = 0; i < chunks; i++) {
        await this.store.client.execute(stmt, [this.queues.gatewayId, msgId, q.domain, i, JSON.stringify(m.envelope), JSON.stringify(m.meta), new Date(m.acceptedAt), new Date(now), chunks, m.raw.subarray(i * this.chunk, (i + 1) * this.chunk)], opts);
      }
    } catch (err) {
      throw new QueueError('QUEUE_UNAVAILABLE', `the body of ${msgId} cannot be kept for queue.purgeGrace (${err instanceof Error ? err.message : String(err)}): not purged`);
    }
    await this.queues.purge(domain, msgId, actor, reason, { ...extra, undoUntil: now + this.graceS * 1000 });
  }

  /** Puts a purged message back into its queue under its id; NOT_FOUND once the grace is over. Returns its queue. */
  async unpurge(msgId: string, actor: string, reason: string, extra: Record<string, unknown> = {}): Promise<string> {
    await this.store.connect();
    const rs = await this.store.client.execute(
      `SELECT domain, chunk, envelope, meta, purged_at, chunks, data FROM ${this.ks}.purged WHERE gateway = ? AND message_id = ?`,
      [this.queues.gatewayId, msgId],
      { prepare: true, consistency: this.cl.read },
    );
    const first = rs.first();
    if (!first) throw new QueueError('NOT_FOUND', `no purged message ${msgId} within queue.purgeGrace`);
    const domain = first.get('domain') as string;
    const rows = rs.rows.filter((r) => r.get('domain') === domain);
    if (rows.length !== (first.get('chunks') as number)) throw new QueueError('NOT_FOUND', `the body of purged message ${msgId} is incomplete (its grace is ending)`);
    const raw = Buffer.concat(rows.map((r) => r.get('data') as Buffer));
    const envelope = JSON.parse(first.get('envelope') as string) as { from: string; to: string[] };
    const meta = JSON.parse(first.get('meta') as string) as Record<string, unknown>;
    const purgedAt = (first.get('purged_at') as Date).getTime();
    await this.queues.append({ id: msgId, domain, envelope, raw, meta });
    await this.queues.mark(domain, 'unpurged', { actor, reason, ...extra, purgedAt, before: 'purged', after: 'ready' }, msgId);
    await this.store.client.execute(`DELETE FROM ${this.ks}.purged WHERE gateway = ? AND message_id = ? AND domain = ?`, [this.queues.gatewayId, msgId, domain], { prepare: true, consistency: this.cl.write });
    return domain;
  }
}
