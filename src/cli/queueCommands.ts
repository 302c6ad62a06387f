// `streamgate queue ...`: a mailq / postsuper for the running gateway, through its ops API.
// Every call needs a token: --token or STREAMGATE_OPS_TOKEN (one of ops.tokens; writes need role admin).
import type { Command } from 'commander';
import { configOption, contextFrom } from './context.ts';

interface QueueRow {
  domain: string;
  /** The queue's full name (`<gateway id>:<domain>`). */
  queue: string;
  /** The gateway writing it, and, for one it adopted, the gateway it came from. */
  owner: string;
  adoptedFrom: string | null;
  status: string;
  depth: { ready: number; deferred: number; held: number; inflight: number; bytes: number; oldest: number | null };
  replicas: { node: string; sync: string; active: string; standby: string | null; txn: number }[];
  /** Why the queue is closed, when no replica can be proven current. */
  closed?: string;
}

/** Where the configured gateway's ops API answers, and the token to give it. */
export function opsTarget(opts: { config?: string; token?: string }): { base: string; token: string | undefined } {
  const { config } = contextFrom(opts);
  const host = config.ops.listen.host.includes(':') ? `[${config.ops.listen.host}]` : config.ops.listen.host;
  return { base: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${config.ops.listen.port}`, token: opts.token ?? process.env.STREAMGATE_OPS_TOKEN };
}

async function call(opts: { config?: string; token?: string }, method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
  const target = opsTarget(opts);
  const url = target.base + path;
  const token = target.token;
  let res: Response;
  try {
    res = await fetch(url, {
      method,
      headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (err) {
    throw new Error(`the gateway's ops API at ${url} does not answer (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message})`, { cause: err });
  }
  const json = (await res.json()) as { error?: { code: string; message: string } };
  if (!res.ok) throw Object.assign(new Error(`${json.error?.code ?? res.status}: ${json.error?.message ?? res.statusText}`), { exitCode: res.status === 400 ? 2 : 1 });
  return json;
}

const age = (ms: number | null) => (ms === null ? '-' : `${Math.round((Date.now() - ms) / 1000)}s`);

export function registerQueueCommands(program: Command): void {
  program
    .command('gateways')
    .description('the gateways of the pool: id, lease, ownership epoch, queues and messages (through the ops API)')
    .addOption(configOption())
    .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
    .option('--json', 'print JSON')
    .action(async (opts: { config?: string; token?: string; json?: boolean }) => {
      const r = (await call(opts, 'GET', '/api/gateways')) as { self: string; members: { id: string; token: string; epoch: number; leaseMs: number; live: boolean; queues: number; messages: number; since: number }[] };
      if (opts.json) return console.log(JSON.stringify(r, null, 2));
      console.log(['GATEWAY'.padEnd(24), 'STATE'.padEnd(6), 'LEASE'.padStart(7), 'EPOCH'.padStart(7), 'QUEUES'.padStart(7), 'MESSAGES'.padStart(9), '  HOLDER'].join(' '));
      for (const m of r.members) {
        const me = m.id === r.self ? '*' : ' ';
        console.log([`${m.id}${me}`.padEnd(24), (m.live ? 'live' : 'gone').padEnd(6), `${(m.leaseMs / 1000).toFixed(1)}s`.padStart(7), String(m.epoch).padStart(7), String(m.queues).padStart(7), String(m.messages).padStart(9), ` ${m.token}`].join(' '));
      }
    });
  const queue = program.command('queue').description("the running gateway's queues, through its ops API");
  queue
    .command('list')
    .description('depth and replica state of every destination queue (like mailq); --at TIME: what was waiting where then, and why, from the event log')
    .addOption(configOption())
    .option('--json', 'print JSON')
    .option('--at <time>', 'a past moment (ISO 8601, e.g. 2026-11-29T10:00Z)')
    .action(async (opts: { config?: string; json?: boolean; at?: string }) => {
      if (opts.at !== undefined) {
        const past = (await call(opts, 'GET', `/api/queues?at=${encodeURIComponent(opts.at)}`)) as { at: number; totals: { queues: number; ready: number; deferred: number; held: number; inflight: number }; queues: { domain: string; depth: Record<string, number>; messages: { id: string; s: string; a: number; n: number; last: { kind: string; at: number; reason?: string } }[] }[] };
        if (opts.json) return console.log(JSON.stringify(past, null, 2));
        console.log(`-- as at ${new Date(past.at).toISOString()}, from the event log`);
        for (const q of past.queues) {
          console.log(`${q.domain}: ${q.depth.ready} ready, ${q.depth.deferred} deferred, ${q.depth.held} held, ${q.depth.inflight} in flight`);
          for (const m of q.messages) console.log(`  ${m.id} ${m.s} attempts ${m.a}${m.n ? ` next ${new Date(m.n).toISOString()}` : ''} since ${new Date(m.last.at).toISOString()} (${m.last.kind}${m.last.reason ? `: ${m.last.reason}` : ''})`);
        }
        const t = past.totals;
        return console.log(`-- ${t.queues} queues, ${t.ready + t.deferred + t.held + t.inflight} messages`);
      }
      const r = (await call(opts, 'GET', '/api/queues')) as { totals: QueueRow['depth'] & { queues: number }; queues: QueueRow[] };
      if (opts.json) return console.log(JSON.stringify(r, null, 2));
      console.log(['QUEUE'.padEnd(30), 'READY'.padStart(8), 'DEFER'.padStart(8), 'HELD'.padStart(6), 'FLIGHT'.padStart(7), 'OLDEST'.padStart(8), '  OWNER'.padEnd(26), 'STATUS   REPLICAS'].join(' '));
      for (const q of r.queues) {
        const reps = q.replicas.map((x) => `${x.node}:${x.sync}/${x.active}`).join(' ');
        // an adopted queue by its full name (its domain may have a queue of this gateway too), and where it came from
        const owner = q.adoptedFrom ? `${q.owner} (from ${q.adoptedFrom})` : q.owner;
        console.log([(q.adoptedFrom ? q.queue : q.domain).padEnd(30), String(q.depth.ready).padStart(8), String(q.depth.deferred).padStart(8), String(q.depth.held).padStart(6), String(q.depth.inflight).padStart(7), age(q.depth.oldest).padStart(8), `  ${owner}`.padEnd(26), `${q.status.padEnd(9)} ${reps}`].join(' '));
        if (q.closed) console.log(`   closed: ${q.closed} (streamgate queue recover ${q.domain} --from NODE --reason ...)`);
      }
      const t = r.totals;
      console.log(`-- ${t.queues} queues, ${t.ready + t.deferred + t.held + t.inflight} messages, ${Math.round(t.bytes / 1024)} KB`);
    });
  queue
    .command('show')
    .description("a message's state and history, whatever its age: `show ID` (every queue it went to, from the event log's index) or `show DOMAIN ID` (one queue)")
    .argument('<id-or-domain>', 'message id, or the destination domain followed by the message id')
    .argument('[id]', 'message id, after a domain')
    .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
    .option('--at <time>', 'as it stood at a past moment (ISO 8601), from the event log (with `show ID`)')
    .addOption(configOption())
    .action(async (first: string, second: string | undefined, opts: { config?: string; token?: string; at?: string }) => {
      if (second !== undefined && opts.at !== undefined) throw Object.assign(new Error('queue show: --at goes with `show ID` (the event log), not with `show DOMAIN ID`'), { exitCode: 2 });
      const at = opts.at === undefined ? '' : `?at=${encodeURIComponent(opts.at)}`;
      const path = second === undefined ? `/api/messages/${encodeURIComponent(first)}${at}` : `/api/queues/${encodeURIComponent(first)}/messages/${encodeURIComponent(second)}`;
      console.log(JSON.stringify(await call(opts, 'GET', path), null, 2));
    });
  for (const verb of ['hold', 'release', 'purge'] as const) {
    queue
      .command(verb)
      .description(`${verb} a message (recorded with actor and reason)`)
      .argument('<domain>', 'destination domain (the queue)')
      .argument('<id>', 'message id')
      .requiredOption('-r, --reason <text>', 'why (kept in the message history)')
      .option('--actor <name>', 'who (default: $USER)')
      .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
      .addOption(configOption())
      .action(async (domain: string, id: string, opts: { config?: string; reason: string; actor?: string; token?: string }) => {
        await call(opts, 'POST', `/api/queues/${encodeURIComponent(domain)}/messages/${encodeURIComponent(id)}/${verb}`, { reason: opts.reason, actor: opts.actor ?? process.env.USER ?? 'cli' });
        console.log(`${verb}: ${domain} ${id}`);
      });
  }
  queue
    .command('unpurge')
    .description('put a purged message back into its queue, under its id, within queue.purgeGrace (recorded with actor and reason)')
    .argument('<id>', 'message id')
    .requiredOption('-r, --reason <text>', 'why (kept in the message history)')
    .option('--actor <name>', 'who (default: $USER)')
    .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
    .addOption(configOption())
    .action(async (id: string, opts: { config?: string; reason: string; actor?: string; token?: string }) => {
      const r = (await call(opts, 'POST', `/api/messages/${encodeURIComponent(id)}/unpurge`, { reason: opts.reason, actor: opts.actor ?? process.env.USER ?? 'cli' })) as { domain: string };
      console.log(`unpurge: ${r.domain} ${id}`);
    });
  queue
    .command('rebuild-state')
    .description("write a queue's state (each live message's state, attempts, next attempt; the counters) back from its events alone, on both replicas, in the running gateway with the queue's writes held (recorded as a `rebuilt` event); --check compares only and prints the differences (exit 1 when there are any)")
    .argument('<domain>', 'destination domain (the queue)')
    .option('--check', 'compare the rebuilt state with the live one; write nothing')
    .option('-r, --reason <text>', 'why (kept in the queue history; needed to write)')
    .option('--actor <name>', 'who (default: $USER)')
    .option('--json', 'print JSON')
    .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
    .addOption(configOption())
    .action(async (domain: string, opts: { config?: string; token?: string; check?: boolean; json?: boolean; reason?: string; actor?: string }) => {
      if (!opts.check) {
        if (!opts.reason) throw Object.assign(new Error('queue rebuild-state: --reason TEXT is needed to write the state (or --check to compare only)'), { exitCode: 2 });
        const r = (await call(opts, 'POST', `/api/queues/${encodeURIComponent(domain)}/rebuild-state`, { reason: opts.reason, actor: opts.actor ?? process.env.USER ?? 'cli' })) as { events: number; messages: number; depth: Record<string, number>; withoutBody: string[] };
        if (opts.json) return console.log(JSON.stringify(r, null, 2));
        console.log(`${domain}: state rebuilt from ${r.events} events: ${r.messages} messages (${r.depth.ready} ready, ${r.depth.deferred} deferred, ${r.depth.held} held, ${r.depth.inflight} in flight)`);
        if (r.withoutBody.length) console.log(`-- ${r.withoutBody.length} messages the events say are queued have no live entry (their bodies are gone) and got no state: ${r.withoutBody.slice(0, 20).join(' ')}`);
        return;
      }
      const r = (await call(opts, 'GET', `/api/queues/${encodeURIComponent(domain)}/rebuild-check`)) as { events: number; rebuilt: number; live: number; counters: { rebuilt: Record<string, number>; live: Record<string, number> }; differences: { id: string; rebuilt: unknown; live: unknown }[] };
      if (opts.json) console.log(JSON.stringify(r, null, 2));
      else {
        console.log(`${domain}: ${r.events} events folded, ${r.rebuilt} messages rebuilt, ${r.live} live`);
        for (const k of Object.keys(r.counters.live)) if (r.counters.live[k] !== r.counters.rebuilt[k]) console.log(`counter ${k}: rebuilt ${r.counters.rebuilt[k]}, live ${r.counters.live[k]}`);
        for (const x of r.differences) console.log(`${x.id}: rebuilt ${JSON.stringify(x.rebuilt)}, live ${JSON.stringify(x.live)}`);
        console.log(r.differences.length ? `-- ${r.differences.length} differences` : '-- identical');
      }
      if (r.differences.length || JSON.stringify(r.counters.live) !== JSON.stringify(r.counters.rebuilt)) process.exitCode = 1;
    });
  const node = program.command('node').description('the Redis nodes of the pool');
  node
    .command('drain')
    .description("move every queue off a node (copied in blocks while writes go on, then switched; nothing lost): every member moves its own; waits until this gateway's are off it")
    .argument('<node>', 'the node: its url as in redis.nodes, host:port or its name')
    .requiredOption('-r, --reason <text>', 'why (logged with the actor)')
    .option('--actor <name>', 'who (default: $USER)')
    .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
    .option('--no-wait', 'return once the drain is recorded')
    .addOption(configOption())
    .action(async (url: string, opts: { config?: string; reason: string; actor?: string; token?: string; wait: boolean }) => {
      const r = (await call(opts, 'POST', '/api/nodes/drain', { node: url, reason: opts.reason, actor: opts.actor ?? process.env.USER ?? 'cli' })) as { node: string; queues: number };
      console.log(`drain: ${r.node}: ${r.queues} queues of this gateway on it`);
      if (!opts.wait) return;
      let left = r.queues;
      while (left > 0) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        const h = (await call(opts, 'GET', '/health').catch((err: { exitCode?: number }) => (err.exitCode === undefined ? Promise.reject(err) : undefined))) as { nodes?: { id: string; queues: number }[] } | undefined;
        const now = h?.nodes?.find((n) => n.id === r.node)?.queues;
        if (now !== undefined && now !== left) console.log(`drain: ${r.node}: ${now} queues left`);
        if (now !== undefined) left = now;
      }
      console.log(`drained: ${r.node}: no queue of this gateway on it`);
    });
  for (const verb of ['suspend', 'resume'] as const) {
    queue
      .command(verb)
      .description(verb === 'suspend' ? 'take nothing more from a destination queue until resume (messages stay queued)' : 'take from a suspended destination queue again')
      .argument('<domain>', 'destination domain (the queue)')
      .requiredOption('-r, --reason <text>', 'why (logged with the actor)')
      .option('--actor <name>', 'who (default: $USER)')
      .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
      .addOption(configOption())
      .action(async (domain: string, opts: { config?: string; reason: string; actor?: string; token?: string }) => {
        await call(opts, 'POST', `/api/queues/${encodeURIComponent(domain)}/${verb}`, { reason: opts.reason, actor: opts.actor ?? process.env.USER ?? 'cli' });
        console.log(`${verb}: ${domain}`);
      });
  }
  queue
    .command('recover')
    .description('open a queue that no replica can be proven current for, from the named node (its copy becomes the truth; audited)')
    .argument('<domain>', 'destination domain (the queue)')
    .requiredOption('--from <node>', 'the node to recover from (host:port or its name, as `queue list` shows)')
    .requiredOption('-r, --reason <text>', 'why (kept in the queue history)')
    .option('--actor <name>', 'who (default: $USER)')
    .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
    .addOption(configOption())
    .action(async (domain: string, opts: { config?: string; from: string; reason: string; actor?: string; token?: string }) => {
      const r = (await call(opts, 'POST', `/api/queues/${encodeURIComponent(domain)}/recover`, { from: opts.from, reason: opts.reason, actor: opts.actor ?? process.env.USER ?? 'cli' })) as { messages: number; txn: number };
      console.log(`recover: ${domain} from ${opts.from}: ${r.messages} messages, transaction ${r.txn}`);
    });
  queue
    .command('flush')
    .description('try every deferred message of a queue now')
    .argument('<domain>', 'destination domain (the queue)')
    .option('--token <token>', 'ops API token (default: $STREAMGATE_OPS_TOKEN)')
    .addOption(configOption())
    .action(async (domain: string, opts: { config?: string; token?: string }) => {
      const r = (await call(opts, 'POST', `/api/queues/${encodeURIComponent(domain)}/flush`)) as { flushed: number };
      console.log(`flush: ${domain}: ${r.flushed} deferred messages due now`);
    });
}
