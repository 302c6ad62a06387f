// Replay for consumers: archived lifecycle events re-published to a BullMQ queue (events.queue, or
// one named) with their original ids as job ids, so a consumer that lost a day reads it again and
// deduplicates as it always does. Events from a time on, optionally of some kinds and queues, in
// each queue's order. BullMQ does not add a job whose id it still keeps (waiting, or among the
// finished it keeps): such an event is not sent twice. With events.batch N the events go as the
// publisher sends them, up to N of one queue per job, each with its own id inside.
import type { Queue as BullQueue } from 'bullmq';
import type { LifecycleEvent } from '../message/types.ts';
import type { EventLog } from './archive.ts';
import { eventJobs, JOB_OPTIONS } from './publisher.ts';

export interface ReplayOptions {
  /** From this time (ms, inclusive) to `until` (exclusive; default now). */
  since: number;
  until?: number;
  kinds?: ReadonlySet<string>;
  domains?: ReadonlySet<string>;
  /** events.batch: up to this many events per job (false: one job per event). */
  batch?: number | false;
}

const BATCH = 500;

/** Re-publishes the matching events; returns how many were read and sent per queue. */
export async function replay(log: EventLog, bull: BullQueue, opts: ReplayOptions): Promise<{ domain: string; events: number }[]> {
  const until = opts.until ?? Date.now();
  const out: { domain: string; events: number }[] = [];
  for (const domain of (await log.archivedQueues()).sort()) {
    if (opts.domains && !opts.domains.has(domain)) continue;
    let batch: LifecycleEvent[] = [];
    let n = 0;
    const send = async () => {
      await bull.addBulk(eventJobs(batch, opts.batch).map((j) => ({ name: j.name, data: j.data, opts: { ...JOB_OPTIONS, ...j.opts } })));
      n += batch.length;
      batch = [];
    };
    for await (const ev of log.eventsOf(domain, opts.since, until)) {
      if (opts.kinds && !opts.kinds.has(ev.kind)) continue;
      batch.push(ev);
      if (batch.length >= BATCH) await send();
    }
    if (batch.length) await send();
    out.push({ domain, events: n });
  }
  return out;
}
