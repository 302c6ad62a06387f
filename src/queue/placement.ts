// Where a gateway's queues are: one hash per gateway id on every node of the pool
// (sg:placement:{<gateway id>}), read back at start and by a member adopting the queues of one
// whose lease lapsed. A field is a destination domain (a queue this gateway created) or a full
// queue name (one it adopted). A record carries an epoch, bumped on every change; the highest
// over the nodes that answer is the truth. An adopted queue leaves a tombstone (adoptedBy) in the
// hash of the member it came from: a restarted process with that id then knows the name is taken.
import { withDeadline } from './deadline.ts';
import type { RedisNode } from './node.ts';

export interface PlacementRecord {
  /** The replicas' node ids, in order. */
  nodes: string[];
  epoch: number;
  /** The queue's full name when it is not `<gateway id>:<domain>` of the hash it is in. */
  name?: string;
  /** Adopted by this member: the queue is no longer here. */
  adoptedBy?: string;
}

export function placementKey(gatewayId: string): string {
  return `sg:placement:{${gatewayId}}`;
}

/** A gateway's placement records, the newest of each over the nodes that answer. */
export async function readPlacement(nodes: RedisNode[], gatewayId: string, timeoutMs: number): Promise<Map<string, PlacementRecord>> {
  const records = new Map<string, PlacementRecord>();
  const all = await Promise.allSettled(nodes.filter((n) => n.up).map((n) => withDeadline(n.client.hgetall(placementKey(gatewayId)), timeoutMs, `placement on ${n.id}`)));
  for (const r of all) {
    if (r.status !== 'fulfilled') continue;
    for (const [field, json] of Object.entries(r.value)) {
      const rec = JSON.parse(json) as PlacementRecord;
      const cur = records.get(field);
      if (!cur || rec.epoch > cur.epoch) records.set(field, rec);
    }
  }
  return records;
}

/** Writes one record on every node that answers. */
export async function writePlacement(nodes: RedisNode[], gatewayId: string, field: string, rec: PlacementRecord): Promise<void> {
  await Promise.allSettled(nodes.filter((n) => n.up).map((n) => n.client.hset(placementKey(gatewayId), field, JSON.stringify(rec))));
}

/** Removes one record from every node that answers (the queue was deleted). */
export async function dropPlacement(nodes: RedisNode[], gatewayId: string, field: string): Promise<void> {
  await Promise.allSettled(nodes.filter((n) => n.up).map((n) => n.client.hdel(placementKey(gatewayId), field)));
}

/** The queue name a placement field stands for in the hash of `gatewayId`. */
export function queueNameOf(gatewayId: string, field: string, rec: PlacementRecord): string {
  return rec.name ?? (field.includes(':') ? field : `${gatewayId}:${field}`);
}

/** A queue name's two parts: the gateway id it was created under, and its destination domain. */
export function splitQueueName(name: string): { origin: string; domain: string } {
  const i = name.indexOf(':');
  return { origin: name.slice(0, i), domain: name.slice(i + 1) };
}
