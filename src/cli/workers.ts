// `streamgate start` with `gateway.workers` above 1: the primary process of node:cluster. It runs
// one gateway process per worker, each a member of the pool with an id of its own
// (`gateway.id`-N) and its own queues, all sharing the SMTP, submission, POP3 and ops listeners
// (the primary accepts each connection and hands it to the workers in turn). The primary holds no
// queue and writes nothing to the pool. It restarts a worker that dies, after a delay that doubles
// while the worker keeps dying soon after its start (a crash loop does not spin), and logs one
// line for it. SIGINT or SIGTERM to the primary asks every worker to drain (each closes its door,
// finishes what it is storing, leaves the pool and exits) and ends once all have exited.
import cluster, { type Worker } from 'node:cluster';
import { EventEmitter, once } from 'node:events';
import { availableParallelism } from 'node:os';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { ASK_TIMEOUT_MS, isSiblingMessage, type SiblingAnswer, type SiblingMessage } from '../ops/siblings.ts';

/** The first restart waits this long; each quick death again doubles it, up to RESTART_MAX_MS. */
export const RESTART_BASE_MS = 1000;
export const RESTART_MAX_MS = 30_000;
/** A worker that ran this long before it died starts again from RESTART_BASE_MS. */
export const STABLE_MS = 60_000;

/** What a worker tells the primary once its gateway is up. */
export const READY = { streamgate: 'ready' } as const;

/** How many gateway processes `start` runs: gateway.workers, `auto` being one per core. */
export function workerCount(config: Config): number {
  return config.gateway.workers === 'auto' ? availableParallelism() : config.gateway.workers;
}

/** The gateway id of worker n (from 1) when there are several. */
export const workerGatewayId = (config: Config, n: number) => `${config.gateway.id}-${n}`;

/** The wait before restarting a worker that died for the `failures`-th time in a row soon after its start. */
export function restartDelay(failures: number): number {
  return Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** Math.max(0, failures - 1));
}

interface Slot {
  n: number;
  id: string;
  worker: Worker | undefined;
  startedAt: number;
  ready: boolean;
  /** Deaths in a row, each within STABLE_MS of its start. */
  failures: number;
  restart: NodeJS.Timeout | undefined;
}

export interface PrimaryOptions {
  count: number;
  say: (line: string) => void;
  /** Resolves with the signal's name when the primary is told to stop. */
  stopRequested: Promise<string>;
  /** Called once every worker is up (the summary of where everything listens). */
  onReady: (workers: { id: string; pid: number }[]) => void | Promise<void>;
}

/**
 * Passes a worker's question to every other worker that is up and gives it their answers
 * (src/ops/siblings.ts), each named by the worker's gateway id; a worker that has not answered
 * within ASK_TIMEOUT_MS is listed with an error.
 */
function askRouter(slots: Slot[]) {
  let seq = 0;
  const open = new Map<number, { asker: Worker; id: number; waiting: Map<Worker, string>; answers: SiblingAnswer[]; timer: NodeJS.Timeout }>();
  const finish = (key: number) => {
    const q = open.get(key);
    if (!q) return;
    open.delete(key);
    clearTimeout(q.timer);
    for (const gateway of q.waiting.values()) q.answers.push({ gateway, error: 'no answer' });
    if (q.asker.isConnected()) q.asker.send({ streamgate: 'answers', id: q.id, answers: q.answers } satisfies SiblingMessage);
  };
  return {
    onMessage(from: Slot, worker: Worker, m: SiblingMessage): void {
      if (m.streamgate === 'ask') {
        const key = ++seq;
        const others = slots.filter((s) => s !== from && s.ready && s.worker?.isConnected());
        const q = { asker: worker, id: m.id, waiting: new Map(others.map((s) => [s.worker!, s.id])), answers: [] as SiblingAnswer[], timer: setTimeout(() => finish(key), ASK_TIMEOUT_MS) };
        open.set(key, q);
        for (const s of others) s.worker!.send({ streamgate: 'query', id: key, what: m.what, args: m.args } satisfies SiblingMessage);
        if (!others.length) finish(key);
      } else if (m.streamgate === 'answer') {
        const q = open.get(m.id);
        if (!q || !q.waiting.has(worker)) return;
        q.waiting.delete(worker);
        q.answers.push(m.error !== undefined ? { gateway: from.id, error: m.error } : { gateway: from.id, value: m.value });
        if (!q.waiting.size) finish(m.id);
      }
    },
  };
}

/**
 * Runs the workers until stopRequested resolves; returns the exit status: 0 after a drain, 1 when
 * a worker could not start (the others are stopped then, and the worker said why).
 */
export async function runPrimary(config: Config, log: Logger, opts: PrimaryOptions): Promise<number> {
  const slots: Slot[] = Array.from({ length: opts.count }, (_, i) => ({ n: i + 1, id: workerGatewayId(config, i + 1), worker: undefined, startedAt: 0, ready: false, failures: 0, restart: undefined }));
  const events = new EventEmitter();
  const asks = askRouter(slots);
  let stopping = false;
  let starting = true;

  const fork = (slot: Slot) => {
    slot.restart = undefined;
    slot.startedAt = Date.now();
    slot.ready = false;
    const worker = cluster.fork({ STREAMGATE_GATEWAY__ID: slot.id });
    slot.worker = worker;
    worker.on('message', (m: unknown) => {
      if (isSiblingMessage(m)) return asks.onMessage(slot, worker, m);
      if ((m as typeof READY | undefined)?.streamgate !== READY.streamgate) return;
      slot.ready = true;
      if (slot.failures && !starting) log.info({ worker: slot.n, gateway: slot.id, workerPid: worker.process.pid }, 'worker restarted');
      events.emit('ready', slot);
    });
    worker.on('exit', (code: number | null, signal: string | null) => {
      slot.worker = undefined;
      events.emit('exit', slot, code, signal);
      if (stopping || starting) return;
      slot.failures = Date.now() - slot.startedAt < STABLE_MS ? slot.failures + 1 : 1;
      const delay = restartDelay(slot.failures);
      log.warn({ worker: slot.n, gateway: slot.id, workerPid: worker.process.pid, code, signal, restartInMs: delay }, 'worker died; restarting it');
      slot.restart = setTimeout(() => fork(slot), delay);
    });
  };

  const stopAll = async () => {
    stopping = true;
    for (const s of slots) clearTimeout(s.restart);
    const live = slots.flatMap((s) => (s.worker ? [s.worker] : []));
    await Promise.all(
      live.map(async (w) => {
        const exited = once(w, 'exit');
        w.process.kill('SIGTERM');
        await exited;
      }),
    );
  };

  // The first worker alone, then the others together: the first start applies what is created
  // once (the Cassandra schema) without racing the others.
  const started = (group: Slot[]) =>
    new Promise<string | undefined>((resolve) => {
      const onReady = () => {
        if (group.every((s) => s.ready)) done(undefined);
      };
      const onExit = (slot: Slot, code: number | null, signal: string | null) => {
        done(`gateway worker ${slot.n} (${slot.id}) exited ${signal ? `on ${signal}` : `with status ${code}`} ${slot.ready ? 'while the others were starting' : 'before it was ready'}`);
      };
      const done = (failure: string | undefined) => {
        events.off('ready', onReady);
        events.off('exit', onExit);
        resolve(failure);
      };
      events.on('ready', onReady);
      events.on('exit', onExit);
      for (const s of group) fork(s);
    });
  const stop = opts.stopRequested.then((signal) => ({ signal }));
  for (const group of [slots.slice(0, 1), slots.slice(1)]) {
    if (!group.length) continue;
    const r = await Promise.race([started(group), stop]);
    if (typeof r === 'object') {
      opts.say(`stopping (${r.signal})`);
      await stopAll();
      return 0;
    }
    if (r) {
      opts.say(r);
      await stopAll();
      return 1;
    }
  }
  starting = false;
  await opts.onReady(slots.map((s) => ({ id: s.id, pid: s.worker!.process.pid! })));
  const { signal } = await stop;
  opts.say(`stopping ${slots.length} gateway workers (${signal})`);
  await stopAll();
  return 0;
}
