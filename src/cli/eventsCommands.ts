// `streamgate events ...`: the event log in Cassandra, read directly (the gateway need not run).
import { Queue as BullQueue } from 'bullmq';
import type { Command } from 'commander';
import { Redis } from 'ioredis';
import { LIFECYCLE_KINDS } from '../client/schema.ts';
import { parseDuration } from '../config/units.ts';
import { EventLog, logGateways } from '../events/archive.ts';
import { replay } from '../events/replay.ts';
import { UsageError, withStore } from './mailboxCommands.ts';
import { configOption, contextFrom } from './context.ts';

/** An instant: ISO 8601 ("2026-11-29T10:00Z") or a duration ago ("24h"). */
export function parseInstant(text: string, now = Date.now()): number {
  const ago = parseDuration(text);
  if (ago !== undefined) return now - ago;
  const t = /^\d{4}-\d{2}-\d{2}/.test(text) ? Date.parse(text) : NaN;
  if (Number.isNaN(t)) throw new UsageError(`--since: expected a time like "2026-11-29T10:00Z" or a duration ago like "24h", got ${JSON.stringify(text)}`);
  return t;
}

const list = (v: string, prev: string[] = []) => [...prev, ...v.split(',').map((x) => x.trim()).filter(Boolean)];

export function registerEventsCommands(program: Command): void {
  const events = program.command('events').description('the event log (every lifecycle event, archived in Cassandra)');
  events
    .command('replay')
    .description("re-publish archived events to the events queue (or --queue) with their original ids, so a consumer re-reads them (it deduplicates by id as always)")
    .requiredOption('--since <time>', 'from this time: ISO 8601 ("2026-11-29T10:00Z") or a duration ago ("24h")')
    .option('--kind <kinds>', `only these kinds (comma-separated or repeated): ${LIFECYCLE_KINDS.join(', ')}`, list)
    .option('--domain <domains>', 'only these destination queues (comma-separated or repeated)', list)
    .option('--queue <name>', 'the BullMQ queue to publish to (default: events.queue)')
    .option('--gateway <ids>', "only the queues of these gateway ids (comma-separated or repeated; default: gateway.id, and with gateway.workers above 1 every worker's, <id>-1 … <id>-N)", list)
    .addOption(configOption())
    .action(async (opts: { config?: string; since: string; kind?: string[]; domain?: string[]; queue?: string; gateway?: string[] }) => {
      const { config } = contextFrom(opts);
      const since = parseInstant(opts.since);
      const bad = opts.kind?.find((k) => !(LIFECYCLE_KINDS as readonly string[]).includes(k));
      if (bad) throw new UsageError(`--kind: expected one of ${LIFECYCLE_KINDS.join(', ')}, got ${JSON.stringify(bad)}`);
      const conn = new Redis(config.events.redis, { maxRetriesPerRequest: 1 });
      const bull = new BullQueue(opts.queue ?? config.events.queue, { connection: conn });
      try {
        const rows = await withStore(config, async (store) => {
          const out: { gateway: string; domain: string; events: number }[] = [];
          for (const gateway of await logGateways(store, config, opts.gateway)) {
            const done = await replay(new EventLog(store, config, gateway), bull, { since, batch: config.events.batch, ...(opts.kind ? { kinds: new Set(opts.kind) } : {}), ...(opts.domain ? { domains: new Set(opts.domain.map((d) => d.toLowerCase())) } : {}) });
            out.push(...done.map((r) => ({ gateway, ...r })));
          }
          return out;
        });
        // a queue of another gateway id than the configuration's is named by its full name
        for (const r of rows) console.log(`${r.gateway === config.gateway.id ? '' : `${r.gateway}:`}${r.domain}: ${r.events} events re-published`);
        console.log(`-- ${rows.reduce((a, r) => a + r.events, 0)} events since ${new Date(since).toISOString()} to ${opts.queue ?? config.events.queue}`);
      } finally {
        await bull.close();
        conn.disconnect();
      }
    });
}
