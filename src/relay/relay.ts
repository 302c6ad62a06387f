// The relay: takes ready messages from this gateway's destination queues in FIFO order (take()
// marks them in flight), routes them (static route, `local`, or MX), delivers them through the
// dispatcher, and settles each attempt per recipient: delivered, bounced (with a DSN to the
// sender), deferred (the recipients still to do, at the next time of the retry schedule), or
// expired after the maximum lifetime (with a DSN). When a queue may be taken from is the
// scheduler's (scheduler.ts); how fast mail goes to each destination MTA, the dispatcher's.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { LocalDelivery, QueuedMessage } from '../message/types.ts';
import type { QueueManager } from '../queue/manager.ts';
import { Classifier } from './classify.ts';
import type { RecipientOutcome } from './deliver.ts';
import { Dispatcher, type Target } from './dispatcher.ts';
import { buildDsn, dsnStatus, type DsnRecipient } from './dsn.ts';
import { SharedLimits } from './limits.ts';
import { MxResolver, type DnsResolver } from './mx.ts';
import { RetryPolicy } from './retry.ts';
import { Routes } from './routes.ts';
import { Scheduler } from './scheduler.ts';
import { Windows } from './windows.ts';
import { PoolState } from '../queue/poolState.ts';

export interface RelayOptions {
  /** Mailbox delivery for the `local` route; without it such messages are deferred. */
  local?: LocalDelivery | undefined;
  /** The clock (ms); default the QueueManager's. */
  now?: () => number;
  resolver?: DnsResolver | undefined;
  /** Retry jitter's random source. */
  random?: () => number;
  /** How often every queue is looked at (ms); default 1000. */
  sweepMs?: number;
  /** How long stop() waits for deliveries in progress (ms); default 10000. */
  drainMs?: number;
  classifier?: Classifier;
  /**
   * Where dead destinations are kept: 'pool' (default), shared by every member on the nodes'
   * clocks; 'process', this relay's own, on its clock (tests that move an injected clock past
   * dead times).
   */
  deadDestinations?: 'pool' | 'process';
}

interface Attempt {
  results: RecipientOutcome[];
  mx?: string | undefined;
  tls?: boolean | undefined;
  reply?: string | undefined;
}

const LOCAL_CONCURRENCY = 32;

export class Relay {
  readonly dispatcher: Dispatcher;
  readonly mx: MxResolver;
  private readonly limits: SharedLimits;
  private readonly qm: QueueManager;
  private readonly config: Config;
  private readonly log: Logger;
  private readonly local: LocalDelivery | undefined;
  private readonly now: () => number;
  private readonly routes: Routes;
  private readonly retry: RetryPolicy;
  private readonly scheduler: Scheduler;
  private readonly abort = new AbortController();
  private readonly drainMs: number;
  private stopping = false;
  private started = false;

  constructor(qm: QueueManager, config: Config, log: Logger, opts: RelayOptions = {}) {
    this.qm = qm;
    this.config = config;
    this.log = log.child({ component: 'relay' });
    this.local = opts.local;
    this.now = opts.now ?? qm.now;
    this.drainMs = opts.drainMs ?? 10_000;
    this.routes = new Routes(config.routes, config.domains.local);
    this.retry = new RetryPolicy(config.relay.retry, opts.random);
    this.mx = new MxResolver({ resolver: opts.resolver, now: this.now });
    const classifier = opts.classifier ?? Classifier.fromFile(config.relay.bounceRules);
    const pool = PoolState.of(qm.nodes, config.queue.timeout, this.log);
    const limits = (this.limits = new SharedLimits({ pick: () => qm.nodes.find((n) => n.up), gatewayId: qm.gatewayId, leaseMs: config.relay.connectionLease, log: this.log, pool }));
    this.dispatcher = new Dispatcher({ config, limits, classifier, now: this.now, log: this.log, onChange: (domain) => this.scheduler.recheck(domain), ...(opts.deadDestinations === 'process' ? {} : { pool }) });
    this.scheduler = new Scheduler({
      queues: qm,
      windows: new Windows(config.relay.windows, config.relay.timezone),
      dispatcher: this.dispatcher,
      capFor: (domain) => this.capFor(domain),
      run: (msg) => this.process(msg),
      now: this.now,
      sweepMs: opts.sweepMs ?? 1000,
      log: this.log,
    });
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.scheduler.start();
    this.log.info({ queues: this.qm.domains().length, local: !!this.local }, 'relay started');
  }

  /** Stops taking messages, lets deliveries in progress finish (up to drainMs), closes connections. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.scheduler.stop();
    this.abort.abort(new Error('relay stopping'));
    const deadline = Date.now() + this.drainMs;
    await this.scheduler.drained(deadline);
    await this.dispatcher.close(1000);
    await this.scheduler.drained(deadline + 2000);
    this.log.info({ unfinished: this.scheduler.inflight }, 'relay stopped');
  }

  /** An operator's suspend of a destination's queue (the scheduler's, see there). */
  suspend(domain: string, actor: string, reason: string): void {
    this.scheduler.suspend(domain, actor, reason);
  }

  /** Ends an operator's suspend; returns false when the destination was not suspended. */
  resume(domain: string, actor: string, reason: string): boolean {
    return this.scheduler.resume(domain, actor, reason);
  }

  /** The destinations an operator suspended. */
  suspended(): ReturnType<Scheduler['suspended']> {
    return this.scheduler.suspended();
  }

  /** Looks at every queue now (tests call it after moving their clock). */
  poke(): void {
    this.scheduler.sweep();
  }

  /** What the relay is doing per queue, and the dead destinations. */
  status() {
    return {
      domains: this.scheduler.status(),
      dead: this.dispatcher.deadDestinations(),
      connections: this.dispatcher.connections(),
    };
  }

  private capFor(domain: string): number {
    const route = this.routes.lookup(domain);
    if (route.kind === 'local') return LOCAL_CONCURRENCY;
    const host = route.kind === 'smtp' ? route.host : domain;
    return 2 * this.dispatcher.limitsFor(host, domain).connections;
  }

  // ---- one message --------------------------------------------------------------------------

  private async process(msg: QueuedMessage): Promise<void> {
    const log = this.log.child({ queue: msg.queue, messageId: msg.id, attempt: msg.attempt });
    const started = Date.now();
    try {
      if (this.retry.expired(msg.acceptedAt, this.now())) {
        await this.persist(log, () => this.expire(msg, { results: msg.envelope.to.map((rcpt) => ({ rcpt, status: 'deferred', text: 'maximum lifetime reached', category: 'expired' })) }, 0));
        return;
      }
      const attempt = await this.attempt(msg);
      if (attempt === 'requeue') {
        await this.persist(log, () => this.requeue(msg, 'dead destination'));
        return;
      }
      if (this.stopping && attempt.results.every((r) => r.category === 'network')) {
        await this.persist(log, () => this.requeue(msg, 'relay stopping'));
        return;
      }
      const ms = Date.now() - started;
      await this.persist(log, () => this.settle(msg, attempt, ms));
    } catch (err) {
      if (this.abort.signal.aborted) {
        await this.persist(log, () => this.requeue(msg, 'relay stopping'));
        return;
      }
      log.error({ err }, 'delivery failed');
      const text = `internal error: ${(err as Error).message}`;
      await this.persist(log, () => this.settle(msg, { results: msg.envelope.to.map((rcpt) => ({ rcpt, status: 'deferred', text, category: 'internal' })) }, Date.now() - started));
    }
  }

  /** Retries a queue write that failed (replicas unreachable) until it goes through or the relay stops. */
  private async persist(log: Logger, write: () => Promise<void>): Promise<void> {
    for (let i = 0; ; i++) {
      try {
        await write();
        return;
      } catch (err) {
        if ((err as { code?: string }).code === 'NOT_FOUND' || (err as { code?: string }).code === 'WRONG_STATE') {
          log.info({ err: (err as Error).message }, 'message changed meanwhile (purged or held)');
          return;
        }
        if (this.stopping && i >= 2) {
          log.warn({ err }, 'could not record the outcome; the message is retried after restart');
          return;
        }
        log.warn({ err }, 'could not record the outcome, retrying');
        await sleep(Math.min(30_000, 500 * 2 ** i));
      }
    }
  }

  private async attempt(msg: QueuedMessage): Promise<Attempt | 'requeue'> {
    const all = (status: 'deferred' | 'bounced', text: string, enhanced?: string, category = 'routing'): Attempt => ({
      results: msg.envelope.to.map((rcpt) => ({ rcpt, status, enhanced, text, category })),
      reply: text,
    });
    const route = this.routes.lookup(msg.domain);
    if (route.kind === 'local') {
      if (!this.local) return all('deferred', 'local delivery is not available on this gateway (no mailbox store wired)', '4.3.2', 'local');
      try {
        const res = await this.local.deliver(msg);
        const byRcpt = new Map(res.map((r) => [r.rcpt.toLowerCase(), r]));
        return {
          mx: 'local',
          results: msg.envelope.to.map((rcpt) => {
            const r = byRcpt.get(rcpt.toLowerCase());
            return r ? { ...r, rcpt, category: r.status === 'delivered' ? 'ok' : 'local' } : { rcpt, status: 'deferred' as const, text: 'no result from local delivery', category: 'local' };
          }),
        };
      } catch (err) {
        return all('deferred', `local delivery failed: ${(err as Error).message}`, '4.3.0', 'local');
      }
    }
    let targets: Target[];
    if (route.kind === 'smtp') {
      const a = await this.mx.addresses(route.host);
      if (!a.ok) return all('deferred', `route ${route.key}: ${a.text}`, '4.4.3');
      targets = [{ host: route.host, addresses: a.addresses, port: route.port, secure: route.secure }];
    } else {
      const r = await this.mx.resolve(msg.domain);
      if (!r.ok) return all(r.permanent ? 'bounced' : 'deferred', r.text, r.enhanced, 'dns');
      targets = r.hosts.map((h) => ({ host: h.host, addresses: h.addresses, port: this.config.relay.mxPort, secure: false }));
    }
    const out = await this.dispatcher.deliver(msg.domain, targets, msg.envelope, msg.raw, this.abort.signal);
    if (out.kind === 'dead') return 'requeue';
    return out.result;
  }

  // ---- settling -----------------------------------------------------------------------------

  private async requeue(msg: QueuedMessage, reason: string): Promise<void> {
    if (this.qm.view(msg.queue)) await this.qm.requeue(msg.queue, msg.id, { reason });
  }

  private details(msg: QueuedMessage, a: Attempt, ms: number): Record<string, unknown> {
    const first = a.results.find((r) => r.code !== undefined) ?? a.results[0];
    return {
      attempt: msg.attempt,
      mx: a.mx ?? null,
      tls: a.tls ?? null,
      code: first?.code ?? null,
      reply: a.reply ?? first?.text ?? null,
      durationMs: ms,
      recipients: a.results.map((r) => ({ rcpt: r.rcpt, status: r.status, code: r.code ?? null, enhanced: r.enhanced ?? null, text: r.text ?? null, category: r.category })),
    };
  }

  private async settle(msg: QueuedMessage, a: Attempt, ms: number): Promise<void> {
    const now = this.now();
    const delivered = a.results.filter((r) => r.status === 'delivered');
    const bounced = a.results.filter((r) => r.status === 'bounced');
    const deferred = a.results.filter((r) => r.status === 'deferred');
    const details = this.details(msg, a, ms);
    if (!deferred.length) {
      if (bounced.length) await this.dsn(msg, bounced.map((r) => this.failedRcpt(r, a, 'failed')), `B${msg.attempt}`);
      await this.qm.settle(msg.queue, msg.id, delivered.length ? 'delivered' : 'bounced', details);
      return;
    }
    const next = this.retry.next(msg.attempt, msg.acceptedAt, now);
    if ('expired' in next) {
      await this.expire(msg, a, ms);
      return;
    }
    if (bounced.length) await this.dsn(msg, bounced.map((r) => this.failedRcpt(r, a, 'failed')), `B${msg.attempt}`);
    if (this.retry.warnDue(msg.acceptedAt, now) && (await this.limits.once(`sg:warned:{${msg.queue}}:${msg.id}`, this.retry.expiresAt(msg.acceptedAt) - now + 60_000))) {
      const until = this.retry.expiresAt(msg.acceptedAt);
      await this.dsn(msg, deferred.map((r) => ({ ...this.failedRcpt(r, a, 'delayed'), lastAttempt: now })), 'W', until);
    }
    await this.qm.defer(msg.queue, msg.id, next.at, { ...details, nextAt: next.at }, deferred.map((r) => r.rcpt));
  }

  /** Settles as expired: every recipient still to do fails with 4.4.7, bounced ones with their own status. */
  private async expire(msg: QueuedMessage, a: Attempt, ms: number): Promise<void> {
    const failed = a.results.filter((r) => r.status !== 'delivered');
    const rcpts: DsnRecipient[] = failed.map((r) => {
      const f = this.failedRcpt(r, a, 'failed');
      return r.status === 'deferred' ? { ...f, status: dsnStatus('expired', r.enhanced, r.code), diagnostic: f.diagnostic ?? 'delivery time expired' } : f;
    });
    await this.dsn(msg, rcpts, 'E');
    const details = { ...this.details(msg, a, ms), maxLifetime: this.config.relay.retry.maxLifetime };
    await this.qm.settle(msg.queue, msg.id, 'expired', details);
  }

  private failedRcpt(r: RecipientOutcome, a: Attempt, action: 'failed' | 'delayed'): DsnRecipient {
    const smtp = r.code !== undefined;
    const diagnostic = smtp ? [r.code, r.enhanced, r.text].filter(Boolean).join(' ') : r.text;
    return { rcpt: r.rcpt, action, status: dsnStatus(action, r.enhanced, r.code), diagnostic, smtp, remoteMta: a.mx && a.mx !== 'local' ? a.mx : undefined, lastAttempt: this.now() };
  }

  private async dsn(msg: QueuedMessage, rcpts: DsnRecipient[], tag: string, willRetryUntil?: number): Promise<void> {
    const m = buildDsn({ original: msg, recipients: rcpts, reportingMta: this.config.gateway.hostname, now: this.now(), willRetryUntil, tag });
    if (!m) return; // null sender: never a DSN
    const r = await this.qm.append(m);
    this.log.info({ messageId: msg.id, dsn: m.id, to: m.envelope.to[0], queue: r.queue, duplicate: r.duplicate, action: rcpts[0]?.action }, 'dsn queued');
  }
}

/** Builds and starts the relay (src/app.ts). */
export function startRelay(qm: QueueManager, config: Config, log: Logger, opts: RelayOptions = {}): Relay {
  const relay = new Relay(qm, config, log, opts);
  relay.start();
  return relay;
}
