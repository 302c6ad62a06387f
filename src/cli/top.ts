// `streamgate top`: the dashboard's live data in a terminal, for operators on a shell. It reads the
// same server-sent events as the page (GET /api/live, a read token) and redraws in place once a
// second: the door and the totals, messages per second (this second and the last minute), the
// Redis nodes, and the destination queues sorted by depth or by the age of their oldest message,
// as many as the terminal has rows for. Keys: d sorts by depth, a by age, q (or Ctrl-C) quits.
import { emitKeypressEvents } from 'node:readline';
import type { Command } from 'commander';
import { EventSourceParserStream } from 'eventsource-parser/stream';
import { configOption } from './context.ts';
import { opsTarget } from './queueCommands.ts';

/** The part of a /api/live frame `top` shows (src/ops/live.ts makes them). */
interface Frame {
  at: number;
  gateway: string;
  writable: boolean;
  point: { rates: Record<string, number | null> };
  totals: { queues: number; ready: number; deferred: number; held: number; inflight: number };
  nodes: { id: string; up: boolean; active: string; usedMemory: number; maxmemory: number }[];
  queues: { domain: string; status: string; depth: { ready: number; deferred: number; held: number; inflight: number; oldest: number | null }; rate: number; notTaken: string | null; replicas: { sync: string; up: boolean }[] }[];
}

type SortKey = 'depth' | 'age';
const KINDS = ['accepted', 'delivered', 'deferred', 'bounced', 'expired'];
const ESC = '\x1b[';

const secs = (s: number) => (s < 90 ? `${Math.round(s)}s` : s < 5400 ? `${Math.round(s / 60)}m` : s < 172_800 ? `${(s / 3600).toFixed(1)}h` : `${(s / 86_400).toFixed(1)}d`);
const total = (d: Frame['queues'][number]['depth']) => d.ready + d.deferred + d.held + d.inflight;
const relayWord = (q: Frame['queues'][number]) => q.notTaken ?? '';

/** The screen for one frame: `rows` lines of at most `cols` characters. */
export function screen(f: Frame, minute: Record<string, number>, sort: SortKey, rows: number, cols: number): string[] {
  const t = f.totals;
  const lines = [
    `streamgate top · gateway ${f.gateway} · ${f.writable ? 'door open' : 'DOOR CLOSED'} · ${new Date(f.at).toLocaleTimeString()}   (d: sort by depth, a: by age, q: quit)`,
    `queues ${t.queues} · ready ${t.ready} · deferred ${t.deferred} · held ${t.held} · in flight ${t.inflight}`,
    `per second: ${KINDS.map((k) => `${k} ${f.point.rates[k] ?? 0}`).join(' · ')}`,
    `last minute: ${KINDS.map((k) => `${k} ${minute[k] ?? 0}`).join(' · ')}`,
    `nodes: ${f.nodes.map((n) => `${n.id} ${n.up ? 'up' : 'DOWN'} ${n.active}${n.maxmemory ? ` ${Math.round((100 * n.usedMemory) / n.maxmemory)}%` : ''}`).join(' · ')}`,
    '',
  ];
  const now = f.at;
  const queues = [...f.queues].sort(sort === 'depth'
    ? (a, b) => total(b.depth) - total(a.depth) || (a.domain < b.domain ? -1 : 1)
    : (a, b) => (a.depth.oldest ?? Infinity) - (b.depth.oldest ?? Infinity) || (a.domain < b.domain ? -1 : 1));
  lines.push(`${'QUEUE'.padEnd(32)} ${'READY'.padStart(7)} ${'DEFER'.padStart(7)} ${'HELD'.padStart(6)} ${'FLIGHT'.padStart(6)} ${'OLDEST'.padStart(7)} ${'DLV/S'.padStart(6)} ${'STATUS'.padEnd(9)} ${'SYNC'.padEnd(5)} RELAY   sorted by ${sort}`);
  for (const q of queues.slice(0, Math.max(0, rows - lines.length))) {
    const sync = q.replicas.every((r) => r.sync === 'Sync' && r.up) ? 'ok' : 'NG';
    const oldest = q.depth.oldest === null ? '-' : secs(Math.max(0, (now - q.depth.oldest) / 1000));
    lines.push(`${q.domain.slice(0, 32).padEnd(32)} ${String(q.depth.ready).padStart(7)} ${String(q.depth.deferred).padStart(7)} ${String(q.depth.held).padStart(6)} ${String(q.depth.inflight).padStart(6)} ${oldest.padStart(7)} ${q.rate.toFixed(1).padStart(6)} ${q.status.padEnd(9)} ${sync.padEnd(5)} ${relayWord(q)}`);
  }
  return lines.map((l) => l.slice(0, cols));
}

export function registerTopCommand(program: Command): void {
  program
    .command('top')
    .description('live view of the running gateway (queues by depth or age, rates, door, nodes), through its ops API; d/a sort, q quits')
    .addOption(configOption())
    .option('--token <token>', 'ops API token with role read (default: $STREAMGATE_OPS_TOKEN)')
    .option('--sort <key>', 'depth or age', 'depth')
    .action(async (opts: { config?: string; token?: string; sort: string }) => {
      if (opts.sort !== 'depth' && opts.sort !== 'age') throw Object.assign(new Error(`--sort: expected depth or age, got ${JSON.stringify(opts.sort)}`), { exitCode: 2 });
      await runTop(opts, opts.sort);
    });
}

async function runTop(opts: { config?: string; token?: string }, initial: SortKey): Promise<void> {
  const { base, token } = opsTarget(opts);
  const out = process.stdout;
  let sort = initial;
  let last: Frame | undefined;
  const history: Record<string, number>[] = [];
  const abort = new AbortController();
  const draw = () => {
    if (!last) return;
    const minute: Record<string, number> = {};
    for (const p of history) for (const k of KINDS) minute[k] = (minute[k] ?? 0) + (p[k] ?? 0);
    const lines = screen(last, minute, sort, out.rows || 40, out.columns || 120);
    out.write(`${ESC}H${lines.map((l) => `${l}${ESC}K`).join('\n')}${ESC}J`);
  };
  const quit = () => abort.abort();
  if (process.stdin.isTTY) {
    emitKeypressEvents(process.stdin);
    process.stdin.setRawMode(true);
    process.stdin.on('keypress', (_s: string, key: { name?: string; ctrl?: boolean }) => {
      if (key.name === 'q' || (key.ctrl && key.name === 'c')) quit();
      else if (key.name === 'd' || key.name === 'a') {
        sort = key.name === 'd' ? 'depth' : 'age';
        draw();
      }
    });
  }
  process.once('SIGINT', quit);
  out.on('resize', draw);
  out.write(`${ESC}?1049h${ESC}?25l`); // the alternate screen, no cursor: the terminal is left as it was
  try {
    let res: Response;
    try {
      res = await fetch(`${base}/api/live`, { headers: token ? { authorization: `Bearer ${token}` } : {}, signal: abort.signal });
    } catch (err) {
      if (abort.signal.aborted) return;
      throw new Error(`the gateway's ops API at ${base} does not answer (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message})`, { cause: err });
    }
    if (!res.ok || !res.body) {
      const body = (await res.json().catch(() => ({}))) as { error?: { code: string; message: string } };
      throw new Error(`${body.error?.code ?? res.status}: ${body.error?.message ?? res.statusText}`);
    }
    const events = res.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
    try {
      for await (const ev of events) {
        if (ev.event !== 'tick') continue;
        last = JSON.parse(ev.data) as Frame;
        history.push(Object.fromEntries(KINDS.map((k) => [k, last!.point.rates[k] ?? 0])));
        if (history.length > 60) history.shift();
        draw();
      }
    } catch (err) {
      if (!abort.signal.aborted) throw err;
    }
    if (!abort.signal.aborted) throw new Error(`the gateway at ${base} ended the live stream (stopped?)`);
  } finally {
    out.write(`${ESC}?25h${ESC}?1049l`);
    if (process.stdin.isTTY) {
      process.stdin.setRawMode(false);
      process.stdin.pause();
    }
  }
}
