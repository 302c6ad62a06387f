// The memory budgets as operators see them (/api/memory, /health, /metrics, the dashboard): per
// pool node the estimated bytes of queued mail and of history against their limits, the events
// queue against its budget on the events Redis, what was trimmed or dropped, and why the gateway
// is degraded when it is. Degraded is not failing: mail is still accepted.
import type { Config } from '../config/schema.ts';
import type { ArchiveStatus, HistoryArchive } from '../events/archive.ts';
import type { EventPublisher, EventsBudgetStatus } from '../events/publisher.ts';
import type { HistoryBudget } from '../queue/historyBudget.ts';
import type { QueueManager } from '../queue/manager.ts';

export interface MemoryReport {
  nodes: { node: string; up: boolean; usedMemory: number; maxmemory: number; mail: { bytes: number; limit: number }; history: { bytes: number; limit: number; blocked: boolean } }[];
  events: EventsBudgetStatus & { redis: string };
  historyTrimmed: number;
  /** The event log in Cassandra: events archived, its lag; absent when events.archive is off. */
  archive?: ArchiveStatus;
  /** Events trimmed from the history before they were sent (or archived): held history reached its ceiling. */
  eventsLost: number;
  historyEventBytes: number;
  queues: number;
  /** Why the gateway is degraded (empty: it is not). */
  degraded: string[];
}

export function memoryReport(config: Config, queues: QueueManager, history: HistoryBudget, publisher: EventPublisher, archive?: HistoryArchive): () => MemoryReport {
  const eventsNode = new URL(config.events.redis);
  const redis = `${eventsNode.hostname}:${eventsNode.port || '6379'}`;
  return () => {
    const hist = history.status();
    const nodes = queues.nodes.map((n, i) => {
      const s = n.status();
      return {
        node: s.id, up: s.up, usedMemory: s.usedMemory, maxmemory: s.maxmemory,
        mail: { bytes: s.mailBytes, limit: Math.floor(s.maxmemory * config.queue.mailBudget) },
        history: { bytes: hist[i]!.bytes, limit: hist[i]!.limit, blocked: hist[i]!.blocked },
      };
    });
    const events = { ...publisher.budget(), redis };
    const degraded: string[] = [];
    if (events.paused) degraded.push(events.full ? `events budget full on ${redis} (events.whenFull: stop): publishing stopped, the cursors stay until a consumer drains ${config.events.queue}` : `events not published: ${redis} does not take them; catching up from the history`);
    // full and not yet paused: with `stop` the publisher is about to pause (its next measure), with `drop` it drops
    else if (events.full) degraded.push(events.policy === 'stop' ? `events budget full on ${redis} (events.whenFull: stop): publishing stops, the cursors stay until a consumer drains ${config.events.queue}` : `events budget full on ${redis} (events.whenFull: drop): ${events.dropped} undelivered events dropped`);
    for (const n of nodes) if (n.history.blocked) degraded.push(`history on ${n.node} above its budget (queue.historyBudget) and held by events not yet sent or not yet archived`);
    const arch = archive?.status();
    if (arch?.failing) degraded.push(`history not archived (${arch.failing}): kept whole in Redis until the archive answers`);
    if (history.lost) degraded.push(`${history.lost} events trimmed from the history before they were sent or archived: history held by them reached its ceiling (memoryHighWater less the mail budget)`);
    return { nodes, events, historyTrimmed: history.trimmed, eventsLost: history.lost, ...(arch ? { archive: arch } : {}), historyEventBytes: queues.historyEventBytes, queues: queues.queues.size, degraded };
  };
}
