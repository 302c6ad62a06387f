// Copies a queue from an in-sync replica to another node in blocks while writes go on: the
// rebuild on the spare, and the whole re-copy of a replica found NG.
//   pass 1 (writes continue on the source): live entries and history up to their last ids at the
//          start, in blocks, with each message's state; the ids written meanwhile are noted;
//   pass 2 (writes wait, briefly): what came after those ids, the noted messages again, the
//          history trimmed to the source's, and the meta hash with its transaction number; then
//          the target joins the write set, before the writes that waited go on, so that they
//          reach both replicas.
// A copy never goes over a replica that went on without the source to a higher transaction number.
import type { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import type { Queue } from './queue.ts';
import { QueueError } from './errors.ts';
import { decodeState, LIVE_MSG_ID_INDEX, META_FIELDS, decodeMeta } from './records.ts';
import type { Replica } from './replicas.ts';

export interface CopyStats {
  live: number;
  history: number;
  dirty: number;
  ms: number;
  barrierMs: number;
}

type Entry = [Buffer, Buffer[]];

async function lastId(c: Redis, key: string): Promise<string | undefined> {
  const r = (await c.xrevrange(key, '+', '-', 'COUNT', 1)) as [string, string[]][];
  return r[0]?.[0];
}

/** Copies stream entries in (after, upto] in blocks; with `states`, the state of each live message too. */
async function copyStream(src: Redis, dst: Redis, key: string, stateKey: string | undefined, after: string | undefined, upto: string, block: number): Promise<[number, string | undefined]> {
  let cursor = after ? `(${after}` : '-';
  let n = 0;
  let last = after;
  for (;;) {
    const entries = (await src.xrangeBuffer(key, cursor, upto, 'COUNT', block)) as unknown as Entry[];
    if (!entries.length) break;
    const pipe = dst.pipeline();
    let states: (Buffer | null)[] = [];
    if (stateKey) states = await src.hmgetBuffer(stateKey, ...entries.map((e) => e[1][LIVE_MSG_ID_INDEX]!));
    entries.forEach(([id, fields], i) => {
      pipe.xadd(key, id.toString(), ...fields);
      const st = states[i];
      if (stateKey && st) pipe.hset(stateKey, fields[LIVE_MSG_ID_INDEX]!, st);
    });
    const res = await pipe.exec();
    const failed = res?.find(([err]) => err);
    if (failed) throw failed[0]!;
    n += entries.length;
    last = entries[entries.length - 1]![0].toString();
    cursor = `(${last}`;
    if (entries.length < block) break;
  }
  return [n, last];
}

export async function copyQueue(q: Queue, source: Replica, target: Replica, block: number, log: Logger): Promise<CopyStats> {
  const t0 = Date.now();
  const src = source.node.client;
  const dst = target.node.client;
  const [live, hist, meta, state] = q.keys;
  const set = q.set;
  const [mine, theirs] = await Promise.all([src.hmget(meta, ...META_FIELDS).then(decodeMeta), dst.hmget(meta, ...META_FIELDS).then(decodeMeta)]);
  // A higher number on the target is only divergence when the source was in the target's last
  // write set (every write the target took went to the source too, which applied them all); if
  // the target went on without the source, it may hold mail the source never saw.
  if (theirs && mine && theirs.txn > mine.txn && theirs.members && !theirs.members.some((id) => source.node.is(id))) {
    throw new QueueError('COPY_REFUSED', `refusing to copy ${q.name} from ${source.node.id} (transaction ${mine.txn}) over ${target.node.id}, which went on without it to transaction ${theirs.txn}`);
  }
  await dst.del(live, hist, meta, state);
  set.dirty = new Set();
  try {
    // pass 1: writes continue on the source
    const l0 = (await lastId(src, live)) ?? '0-0';
    const h0 = (await lastId(src, hist)) ?? '0-0';
    const [n1, lastLive] = await copyStream(src, dst, live, state, undefined, l0, block);
    const [h1, lastHist] = await copyStream(src, dst, hist, undefined, undefined, h0, block);
    // pass 2: writes wait
    const tg = Date.now();
    set.raiseWriteBarrier();
    await set.drain();
    const [n2] = await copyStream(src, dst, live, state, lastLive, '+', block);
    const [h2] = await copyStream(src, dst, hist, undefined, lastHist, '+', block);
    const dirty = [...set.dirty];
    for (let i = 0; i < dirty.length; i += block) {
      const ids = dirty.slice(i, i + block);
      const [srcStates, dstStates] = await Promise.all([src.hmgetBuffer(state, ...ids), dst.hmget(state, ...ids)]);
      const pipe = dst.pipeline();
      ids.forEach((id, k) => {
        const s = srcStates[k];
        if (s) pipe.hset(state, id, s);
        else if (dstStates[k]) {
          pipe.hdel(state, id);
          pipe.xdel(live, decodeState(dstStates[k]).entryId);
        }
      });
      await pipe.exec();
    }
    const firstHist = (await src.xrange(hist, '-', '+', 'COUNT', 1)) as [string, string[]][];
    if (firstHist[0]) await dst.xtrim(hist, 'MINID', '=', firstHist[0][0]);
    const m = await src.hgetallBuffer(meta);
    await dst.del(meta);
    if (Object.keys(m).length) await dst.hset(meta, m);
    const [srcTxn, dstTxn, srcLen, dstLen] = await Promise.all([src.hget(meta, 'txn'), dst.hget(meta, 'txn'), src.xlen(live), dst.xlen(live)]);
    if (srcTxn !== dstTxn || srcLen !== dstLen) {
      throw new QueueError('COPY_MISMATCH', `copy of ${q.name} does not match: txn ${srcTxn}/${dstTxn}, live ${srcLen}/${dstLen}`);
    }
    // A source that left the write set meanwhile, or a write whose outcome is unknown, makes the
    // copy worthless as a replica the gateway knows: it is not taken as in sync.
    if (set.stale || !set.inSync().includes(source)) throw new QueueError('COPY_ABANDONED', `copy of ${q.name}: ${set.stale ? 'a write of unknown outcome' : `the source ${source.node.id} left the write set`} during the copy`);
    // both now hold the same record: the write set is the pair, and the target takes writes
    const members = [...set.inSync().map((r) => r.node.id), target.node.id].join(',');
    await Promise.all([src.hset(meta, 'members', members), dst.hset(meta, 'members', members)]);
    set.markSync(target, Number(srcTxn));
    const stats = { live: n1 + n2, history: h1 + h2, dirty: dirty.length, ms: Date.now() - t0, barrierMs: Date.now() - tg };
    log.debug({ queue: q.name, ...stats }, 'copied');
    return stats;
  } finally {
    set.dirty = undefined;
    set.lowerWriteBarrier();
  }
}
