// Which replica of a queue may be loaded and copied from: the one proven current by the records
// on the nodes themselves (DESIGN, invariant 9). Each write stores, on every replica it reaches,
// the transaction number and the write set (the replicas the write went to). A replica R with the
// highest transaction number among those that answer is current when every other member of its
// last write set answers too: nobody outside that set took writes after R's last one, and those
// inside answered with no higher number. An empty replica (no record) proves nothing; a replica
// that does not answer proves nothing either, and may hold writes the others never saw.
import type { RedisNode } from './node.ts';
import type { MetaRecord } from './records.ts';

export interface ReplicaView {
  node: RedisNode;
  reachable: boolean;
  /** The replica's record; undefined when it answered with none (empty) or did not answer. */
  meta: MetaRecord | undefined;
}

export interface Verdict {
  /** The replica to load from; undefined when every replica answered empty (a queue with no data). */
  source: ReplicaView | undefined;
  /** Replicas proven identical to the source (the source included). */
  current: RedisNode[];
  /** Why no replica can be proven current (the queue stays closed). */
  reason?: string;
}

export function provenSource(views: ReplicaView[], placement: RedisNode[]): Verdict {
  const own = views.filter((v) => placement.includes(v.node));
  const known = views.filter((v) => v.reachable && v.meta);
  const silent = own.filter((v) => !v.reachable).map((v) => v.node.id);
  if (!known.length) {
    if (!silent.length) return { source: undefined, current: own.map((v) => v.node) };
    return { source: undefined, current: [], reason: `no replica with a record answers (unreachable: ${silent.join(', ')}; empty: ${own.filter((v) => v.reachable).map((v) => v.node.id).join(', ') || 'none'})` };
  }
  const best = Math.max(...known.map((v) => v.meta!.txn));
  const source = known.find((v) => v.meta!.txn === best && placement.includes(v.node));
  if (!source) return { source: undefined, current: [], reason: `the highest transaction number (${best}) is on a node outside the queue's placement` };
  const members = source.meta!.members ?? placement.map((n) => n.id); // a record older than write sets: the whole pair
  const unheard = members.filter((id) => !source.node.is(id) && !views.some((v) => v.node.is(id) && v.reachable));
  if (unheard.length) {
    return { source: undefined, current: [], reason: `${source.node.id} (transaction ${best}) cannot be proven current: ${unheard.join(', ')} of its last write set does not answer` };
  }
  const current = own.filter((v) => v.reachable && v.meta?.txn === best && members.some((id) => v.node.is(id))).map((v) => v.node);
  if (!current.includes(source.node)) current.unshift(source.node);
  return { source, current };
}
