// `streamgate bounces ...`: the bounce rules over the replies in the event log, read directly from
// Cassandra (the gateway need not run).
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { EventLog, logGateways } from '../events/archive.ts';
import { reclassify } from '../events/reclassify.ts';
import { BounceRulesError, Classifier, parseRules } from '../relay/classify.ts';
import { parseInstant } from './eventsCommands.ts';
import { UsageError, withStore } from './mailboxCommands.ts';
import { configOption, contextFrom } from './context.ts';

const list = (v: string, prev: string[] = []) => [...prev, ...v.split(',').map((x) => x.trim()).filter(Boolean)];

/** The rules of --rules FILE, or else the configuration's (relay.bounceRules); a bad file is a usage error naming it. */
function rulesFrom(file: string | undefined, configured: string): Classifier {
  try {
    if (file === undefined) return Classifier.fromFile(configured);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new UsageError(`--rules: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    return new Classifier(parseRules(text, file));
  } catch (err) {
    if (err instanceof BounceRulesError) throw new UsageError(`${file === undefined ? 'relay.bounceRules' : '--rules'}: ${err.message}`);
    throw err;
  }
}

export function registerBouncesCommands(program: Command): void {
  const bounces = program.command('bounces').description('the bounce classification rules (relay.bounceRules) over past replies');
  bounces
    .command('reclassify')
    .description("run the bounce rules again over the replies in the event log and print what would change (old class → new class, per reply and counted per change); a dry run: nothing is written or sent")
    .requiredOption('--since <time>', 'from this time: ISO 8601 ("2026-11-29T10:00Z") or a duration ago ("7d")')
    .option('--rules <file>', "rules in relay.bounceRules' format (default: the configuration's relay.bounceRules)")
    .option('--domain <domains>', 'only these destination queues (comma-separated or repeated)', list)
    .option('--gateway <ids>', "only the event logs of these gateway ids (comma-separated or repeated; default: gateway.id, and with gateway.workers above 1 every worker's, <id>-1 … <id>-N)", list)
    .option('--apply', 'not offered (see --help): the command is a dry run')
    .option('--json', 'print JSON')
    .addOption(configOption())
    .action(async (opts: { config?: string; since: string; rules?: string; domain?: string[]; gateway?: string[]; apply?: boolean; json?: boolean }) => {
      if (opts.apply) throw new UsageError('bounces reclassify: --apply is not offered: what a past reply caused is done (a DSN sent, a retry made); put the rules in relay.bounceRules to use them from now on');
      const { config } = contextFrom(opts);
      const since = parseInstant(opts.since);
      const classifier = rulesFrom(opts.rules, config.relay.bounceRules);
      const r = await withStore(
        config,
        async (store) => reclassify((await logGateways(store, config, opts.gateway)).map((g) => new EventLog(store, config, g)), classifier, { since, ...(opts.domain ? { domains: new Set(opts.domain.map((d) => d.toLowerCase())) } : {}) }),
        { autoSchema: false },
      );
      if (opts.json) return console.log(JSON.stringify({ events: r.events, replies: r.replies, counts: Object.fromEntries(r.counts), changes: r.changes }, null, 2));
      // a queue of another gateway id than the configuration's is named by its full name
      for (const c of r.changes) console.log(`${c.messageId} ${c.rcpt} (${c.gateway === config.gateway.id ? '' : `${c.gateway}:`}${c.domain}, attempt ${c.attempt}, ${new Date(c.at).toISOString()}): ${c.from.status}/${c.from.category} → ${c.to.status}/${c.to.category}  ${JSON.stringify(c.reply)}`);
      for (const [change, n] of [...r.counts].sort((a, b) => b[1] - a[1])) console.log(`-- ${change}: ${n}`);
      console.log(`-- ${r.changes.length} of ${r.replies} replies in ${r.events} attempts since ${new Date(since).toISOString()} would change class (${opts.rules ?? config.relay.bounceRules}; dry run, nothing written)`);
    });
}
