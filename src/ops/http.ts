// The ops HTTP API: health for load balancers, Prometheus metrics, queue depth and the replica
// management table, a message's history, and hold / release / purge with actor and reason.
// Every call but the dashboard page and ops.open needs a bearer token from ops.tokens: a read token
// for GETs, an admin token for everything. The Host header must name this gateway (gateway.hostname,
// ops.hosts, localhost or an IP literal), so that a page in an operator's browser cannot reach the
// API by DNS rebinding. Both checks run in onRequest, before a body is read. Unknown JSON properties
// are refused, not dropped. Errors carry stable codes: { error: { code, message } }.
// Every route declares its schema, responses and error codes included; @fastify/swagger turns them
// into the OpenAPI document served at /api/openapi.json (a read token, like every /api call). Each
// route lists only the error codes it can answer with (test/ops/openapi.test.ts reaches every one).
import swagger from '@fastify/swagger';
import Fastify, { LogController, type FastifyReply, type FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import { MESSAGE_ID } from '../message/headers.ts';
import { apply, type Projected, type QueueAt, type RebuildCheck, type RebuildResult } from '../events/projection.ts';
import type { PurgeVault } from '../events/purgeVault.ts';
import type { LifecycleEvent } from '../message/types.ts';
import { QueueError, type QueueErrorCode } from '../queue/errors.ts';
import type { QueueManager } from '../queue/manager.ts';
import type { Relay } from '../relay/relay.ts';
import type { MemoryReport } from './memory.ts';
import { LiveFeed } from './live.ts';
import { GatewayMetrics } from './metrics.ts';
import { Siblings, type SiblingAnswer } from './siblings.ts';
import { AggregatorRegistry } from 'prom-client';

const VERSION = (JSON.parse(readFileSync(join(import.meta.dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;

const require = createRequire(import.meta.url);
/** The dashboard's assets, served from their npm packages. */
const ASSETS: Record<string, { file: string; type: string; what: string }> = {
  '/assets/uplot.js': { file: require.resolve('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8', what: 'uPlot (charts)' },
  '/assets/uplot.css': { file: require.resolve('uplot/dist/uPlot.min.css'), type: 'text/css; charset=utf-8', what: 'uPlot styles' },
};

/** The HTTP status of every queue error code (SG_ERR_<code>): the caller's mistakes 4xx, the queue's state 503, the rest 500. */
const STATUS: Record<QueueErrorCode, number> = {
  NOT_FOUND: 404,
  WRONG_STATE: 409,
  BAD_INPUT: 400,
  QUEUE_UNAVAILABLE: 503,
  STORAGE_FULL: 500,
  QUEUE_FULL: 500,
  TOO_MANY_QUEUES: 500,
  DIVERGED: 500,
  NODE_POLICY: 500,
  MEMBER_CONFLICT: 500,
  FENCED: 500,
  COPY_REFUSED: 500,
  COPY_MISMATCH: 500,
  COPY_ABANDONED: 500,
};

/** The error body, with the codes a route (or status) can answer with. */
function errorSchema(description: string, codes: string[]) {
  return {
    description,
    type: 'object',
    required: ['error'],
    additionalProperties: false,
    properties: { error: { type: 'object', required: ['code', 'message'], additionalProperties: false, properties: { code: { type: 'string', enum: codes }, message: { type: 'string' } } } },
  } as const;
}

/** The error responses of a route: every route checks the Host header; the others as asked. */
function errors(opts: { auth: boolean; write?: boolean; input?: boolean; extra?: Record<number, string[] | undefined> }) {
  const out: Record<number, ReturnType<typeof errorSchema>> = {};
  const add = (status: number, description: string, codes: string[]) => {
    const had = out[status]?.properties.error.properties.code.enum ?? [];
    out[status] = errorSchema(out[status]?.description ?? description, [...had, ...codes]);
  };
  if (opts.input) add(400, 'A parameter or the body does not match the schema', ['SG_ERR_BAD_REQUEST']);
  if (opts.auth) add(401, 'No token, or not one of ops.tokens', ['SG_ERR_UNAUTHORIZED']);
  add(403, 'The Host header does not name this gateway, or a write with a read token', ['SG_ERR_BAD_HOST', ...(opts.write ? ['SG_ERR_FORBIDDEN'] : [])]);
  const described: Record<number, string> = { 400: 'Refused input', 404: 'No such queue or message', 409: 'Not in a state that allows this', 503: 'Cannot be done now' };
  for (const [status, codes] of Object.entries(opts.extra ?? {})) if (codes) add(Number(status), described[Number(status)] ?? 'Error', codes);
  return out;
}

const depthSchema = {
  type: 'object',
  additionalProperties: true,
  properties: { ready: { type: 'integer' }, deferred: { type: 'integer' }, held: { type: 'integer' }, inflight: { type: 'integer' }, bytes: { type: 'integer' }, oldest: { type: ['integer', 'null'], description: 'acceptance time (ms) of the oldest live message' } },
} as const;

const queueSchema = {
  type: 'object',
  description: "A destination queue: its replica management table (status whole / degraded / closed, each replica's paths, sync state and transaction number) and depth",
  additionalProperties: true,
  properties: {
    queue: { type: 'string' },
    domain: { type: 'string' },
    status: { type: 'string' },
    txn: { type: 'integer' },
    closed: { type: 'string', description: 'why the queue takes no writes (only when closed)' },
    replicas: { type: 'array', items: { type: 'object', additionalProperties: true, properties: { node: { type: 'string' }, up: { type: 'boolean' }, sync: { type: 'string', enum: ['Sync', 'NG', 'Rebuilding'] }, txn: { type: 'integer' } } } },
    depth: depthSchema,
  },
} as const;

const eventRow = {
  type: 'object',
  additionalProperties: true,
  description: 'A lifecycle event from the queue history (docs/integration.md lists the kinds and their details)',
  properties: { id: { type: 'string' }, kind: { type: 'string' }, messageId: { type: 'string' }, txn: { type: 'integer' }, at: { type: 'integer' }, details: { type: 'object', additionalProperties: true } },
} as const;

const okSchema = (extra: Record<string, unknown>) => ({ type: 'object', additionalProperties: false, required: ['ok', 'verb'], properties: { ok: { type: 'boolean', const: true }, verb: { type: 'string' }, ...extra } }) as const;

function fail(reply: FastifyReply, status: number, code: string, message: string) {
  return reply.code(status).send({ error: { code, message } });
}

export interface OpsOptions {
  config: Config;
  queues: QueueManager;
  /** For suspend / resume of a destination and the dashboard's relay state; without it those calls answer 503. */
  relay?: Pick<Relay, 'suspend' | 'resume' | 'suspended' | 'status'>;
  /** One message's story from the event log's index (events/archive.ts); without it /api/messages/:id answers 503. */
  story?: (messageId: string) => Promise<LifecycleEvent[]>;
  /** Purges that keep the body for queue.purgeGrace, and unpurge; without it a purge drops the body and unpurge answers 503. */
  vault?: Pick<PurgeVault, 'purge' | 'unpurge'>;
  /** Rebuilds a queue's projection from the event log and compares it with the live one; without it the check answers 503. */
  rebuildCheck?: (domain: string) => Promise<RebuildCheck>;
  /** Writes a queue's state back from its events (events/projection.ts rebuildState); without it the rebuild answers 503. */
  rebuildState?: (domain: string, who: { actor: string; reason: string; token: string }) => Promise<RebuildResult>;
  /** Time travel: the queues as they stood at a moment, from the event log; without it ?at= answers 503. */
  queuesAt?: (at: number, domain?: string) => Promise<QueueAt[]>;
  /** The memory budgets (mail, history, events); without it /api/memory answers 503. */
  memory?: () => MemoryReport;
  log: Logger;
  /** The gateway's metrics (src/app.ts wires every part to them); without it, those of the queues and memory alone. */
  metrics?: GatewayMetrics;
  /** Told of every route as it is added (tests compare them with the OpenAPI document). */
  onRoute?: (route: { method: string; url: string }) => void;
}

export async function startOps(opts: OpsOptions): Promise<{ port: number; stop(): Promise<void> }> {
  const { config, queues } = opts;
  const log = opts.log.child({ component: 'ops' });
  // removeAdditional off: a body with a property the schema does not name is a 400, not trimmed
  // forceCloseConnections: the dashboard's event streams never go idle; close ends them
  const app = Fastify({ loggerInstance: log, logController: new LogController({ disableRequestLogging: true }), forceCloseConnections: true, ajv: { customOptions: { removeAdditional: false } } });
  const metrics = opts.metrics ?? standaloneMetrics(opts);
  const localQueues = (): QueuesListing => ({ totals: { ...queues.totals() }, queues: [...queues.views()].map((q) => ({ ...q.table(), depth: q.depth })) });
  const live = new LiveFeed({ config, queues, relay: opts.relay, memory: opts.memory, onReply: (fn) => metrics.onReply(fn) });
  live.start();
  const tokens = config.ops.tokens.map((t, i) => ({ key: Buffer.from(t.token), role: t.role, name: t.name ?? `token${i + 1}` }));
  const open = new Set(['/', ...Object.keys(ASSETS), ...config.ops.open.map((name) => `/${name}`)]);
  const hosts = new Set(['localhost', config.gateway.hostname.toLowerCase(), ...config.ops.hosts.map((h) => h.toLowerCase())]);

  /** The request's bearer token, if it carries a known one. */
  const tokenOf = (req: FastifyRequest) => {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    const given = m ? Buffer.from(m[1]!) : undefined;
    return given && tokens.find((t) => t.key.length === given.length && timingSafeEqual(t.key, given));
  };
  /** Who did an admin action, for its event: the token's name, and the person the caller names. */
  const who = (req: FastifyRequest) => {
    const token = tokenOf(req)?.name ?? 'open';
    const named = (req.body as { actor?: unknown } | undefined)?.actor;
    return { actor: typeof named === 'string' ? named : token, token };
  };

  app.addHook('onRequest', async (req, reply) => {
    const host = (req.headers.host ?? '').toLowerCase().replace(/:\d+$/, '');
    if (!hosts.has(host) && !isIP(host.replace(/^\[(.*)\]$/, '$1'))) {
      return fail(reply, 403, 'SG_ERR_BAD_HOST', `expected a Host header naming this gateway (${[...hosts].join(', ')} or an IP address), got ${JSON.stringify(req.headers.host ?? '')}`);
    }
    const path = req.url.split('?')[0]!;
    if (req.method === 'GET' && open.has(path)) return undefined;
    const role = tokenOf(req)?.role;
    if (!role) {
      return fail(reply, 401, 'SG_ERR_UNAUTHORIZED', tokens.length ? 'expected "Authorization: Bearer <token>" with a token from ops.tokens' : 'no ops.tokens are configured: the API is closed');
    }
    if (role !== 'admin' && req.method !== 'GET' && req.method !== 'HEAD') {
      return fail(reply, 403, 'SG_ERR_FORBIDDEN', `${req.method} ${path} needs a token with role admin, got one with role ${role}`);
    }
    return undefined;
  });

  // With gateway.workers above 1 the other workers are asked too (src/ops/siblings.ts): the
  // listings and /metrics cover them all, and an action on a queue or a message this worker does
  // not hold is passed on to the one that does (the same request, run there by app.inject).
  const siblings = new Siblings();
  const FORWARDED = 'x-streamgate-worker-forward';
  siblings.handle('queues', () => localQueues());
  const metricsJson = () => {
    metrics.collect();
    return metrics.registry.getMetricsAsJSON() as Promise<unknown> as Promise<MetricJson[]>;
  };
  siblings.handle('metrics', metricsJson);
  siblings.handle('inject', async (args) => {
    const a = args as { method: 'GET' | 'POST'; url: string; headers: Record<string, string>; payload?: string };
    const r = await app.inject({ method: a.method, url: a.url, headers: { ...a.headers, [FORWARDED]: '1' }, ...(a.payload !== undefined ? { payload: a.payload } : {}) });
    return { statusCode: r.statusCode, contentType: r.headers['content-type'], body: r.body };
  });
  /** The first other worker that answers the request with something else than "not found". */
  const forwarded = async (req: FastifyRequest): Promise<{ statusCode: number; contentType?: string; body: string } | undefined> => {
    if (!siblings.active || req.headers[FORWARDED]) return undefined;
    const headers: Record<string, string> = {};
    for (const h of ['authorization', 'host', 'content-type']) if (typeof req.headers[h] === 'string') headers[h] = req.headers[h];
    const answers = await siblings.ask('inject', { method: req.method, url: req.url, headers, ...(req.body !== undefined ? { payload: JSON.stringify(req.body) } : {}) });
    return answers.map((a) => a.value as { statusCode: number; contentType?: string; body: string } | undefined).find((v) => v && v.statusCode !== 404);
  };

  app.setErrorHandler(async (err: Error & { validation?: unknown; statusCode?: number }, req, reply) => {
    if (err instanceof QueueError && err.code === 'NOT_FOUND') {
      const there = await forwarded(req);
      if (there) return reply.code(there.statusCode).type(there.contentType ?? 'application/json').send(there.body);
    }
    if (err instanceof QueueError) return fail(reply, STATUS[err.code], `SG_ERR_${err.code}`, err.message);
    if (err.validation) return fail(reply, 400, 'SG_ERR_BAD_REQUEST', err.message);
    log.error({ err }, 'request failed');
    return fail(reply, err.statusCode ?? 500, 'SG_ERR_INTERNAL', err.message);
  });
  app.setNotFoundHandler((req, reply) => fail(reply, 404, 'SG_ERR_NO_ROUTE', `no route ${req.method} ${req.url}`));

  if (opts.onRoute) {
    const tell = opts.onRoute;
    app.addHook('onRoute', (r) => {
      for (const method of [r.method].flat()) tell({ method, url: r.url });
    });
  }
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'streamgate ops API',
        version: VERSION,
        description:
          'Health, metrics, queue depth and replica tables, message history, and admin actions. Every call but the dashboard page and ops.open needs "Authorization: Bearer <token>" with a token from ops.tokens (role read for GETs, admin for everything). Errors are { "error": { "code": "SG_ERR_…", "message": … } }; a path that is no route answers 404 SG_ERR_NO_ROUTE, an unexpected failure 500.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  /** Open routes need no token (security: []); the others answer 401 without one. */
  const access = (path: string) => (open.has(path) ? { security: [] } : {});
  const guarded = (path: string) => !open.has(path);

  // 200 ok | 200 degraded (a budget needs attention; mail is still accepted) | 503 unavailable
  const dashboard = readFileSync(join(import.meta.dirname, 'dashboard.html'), 'utf8');
  app.get('/', { schema: { summary: 'The live dashboard page', security: [], response: { 200: { description: 'HTML page', content: { 'text/html': { schema: { type: 'string' } } } }, ...errors({ auth: false }) } } }, async (_req, reply) => reply.type('text/html; charset=utf-8').send(dashboard));

  // the page's scripts and styles, from their npm packages (no CDN)
  for (const [path, asset] of Object.entries(ASSETS)) {
    const body = readFileSync(asset.file);
    app.get(path, { schema: { summary: `Dashboard asset: ${asset.what}`, security: [], response: { 200: { description: asset.type, content: { [asset.type]: { schema: { type: 'string' } } } }, ...errors({ auth: false }) } } }, async (_req, reply) => reply.type(asset.type).header('cache-control', 'max-age=3600').send(body));
  }

  app.get('/api/live', { schema: { summary: 'The dashboard\'s live data as server-sent events: "history" (the last hour of every series) once, then a "tick" frame every second', response: { 200: { description: 'text/event-stream', content: { 'text/event-stream': { schema: { type: 'string' } } } }, ...errors({ auth: true }) } } }, (req, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    res.write(`retry: 2000\nevent: history\ndata: ${JSON.stringify(live.history())}\n\nevent: tick\ndata: ${JSON.stringify(live.frame())}\n\n`);
    const off = live.subscribe((frame) => res.write(`event: tick\ndata: ${frame}\n\n`));
    req.raw.once('close', off);
  });

  const recentSchema = { type: 'object', additionalProperties: false, properties: { id: { type: 'string' }, domain: { type: 'string' }, from: { type: 'string' }, to: { type: 'array', items: { type: 'string' } }, at: { type: ['integer', 'null'] }, live: { type: 'boolean' } } } as const;
  app.get<{ Querystring: { q: string } }>('/api/messages', { schema: { summary: 'Messages by id, sender or recipient: the last 10,000 accepted by this gateway process (newest first), and a live message by its exact id', querystring: { type: 'object', additionalProperties: false, required: ['q'], properties: { q: { type: 'string', minLength: 1, maxLength: 320 } } }, response: { 200: { type: 'object', additionalProperties: false, properties: { messages: { type: 'array', items: recentSchema } } }, ...errors({ auth: true, input: true }) } } }, async (req) => {
    const q = req.query.q.trim();
    const found: { id: string; domain: string; from: string; to: string[]; at: number | null; live: boolean }[] = live.search(q).map((m) => ({ ...m, live: !!queues.view(m.domain)?.get(m.id) }));
    if (!found.length && MESSAGE_ID.test(q)) {
      for (const v of queues.views()) if (v.get(q)) found.push({ id: q, domain: v.domain, from: '', to: [], at: null, live: true });
    }
    return { messages: found };
  });

  const healthSchema = (...status: string[]) => ({ type: 'object', additionalProperties: false, properties: { status: { type: 'string', enum: status }, degraded: { type: 'array', items: { type: 'string' } }, nodes: { type: 'array', items: { type: 'object', additionalProperties: true } } } });
  app.get('/health', { schema: { summary: 'For load balancers: 200 while the queues take writes', ...access('/health'), response: { 200: { description: 'The queues take writes; degraded: a budget needs attention (mail is still accepted)', ...healthSchema('ok', 'degraded') }, 503: { description: 'The queues take no writes (the ingress door is closed)', ...healthSchema('unavailable') }, ...errors({ auth: guarded('/health') }) } } }, async (_req, reply) => {
    const writable = queues.writable;
    const degraded = opts.memory?.().degraded ?? [];
    const status = !writable ? 'unavailable' : degraded.length ? 'degraded' : 'ok';
    return reply.code(writable ? 200 : 503).send({ status, ...(degraded.length ? { degraded } : {}), nodes: queues.health().nodes });
  });

  app.get('/api/memory', { schema: { summary: 'Memory by budget on every node: mail, history, outgoing events', response: { 200: { type: 'object', additionalProperties: true }, ...errors({ auth: true, extra: { 503: ['SG_ERR_NO_BUDGETS'] } }) } } }, async (_req, reply) =>
    opts.memory ? opts.memory() : fail(reply, 503, 'SG_ERR_NO_BUDGETS', 'this gateway runs no events publisher'),
  );

  app.get('/metrics', { schema: { summary: 'Prometheus metrics', ...access('/metrics'), response: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: { type: 'string' } } } }, ...errors({ auth: guarded('/metrics') }) } } }, async (_req, reply) => {
    if (!siblings.active) return reply.type(metrics.registry.contentType).send(await metrics.text());
    const [own, others] = await Promise.all([metricsJson(), siblings.ask('metrics')]);
    const all = [own, ...others.flatMap((a) => (a.value ? [a.value as MetricJson[]] : []))].map(machineAggregation);
    return reply.type(metrics.registry.contentType).send(await AggregatorRegistry.aggregate(all).metrics());
  });

  app.get('/api/openapi.json', { schema: { summary: 'This document', response: { 200: { description: 'OpenAPI 3.1', type: 'object', additionalProperties: true }, ...errors({ auth: true }) } } }, async () => app.swagger());

  const atQuery = { type: 'object', properties: { at: { type: 'string', description: 'a past moment (ISO 8601, e.g. 2026-11-29T10:00Z): the answer is folded from the event log as it stood then' } }, additionalProperties: false } as const;
  /** The moment of ?at=, or undefined; a 400 names what came when it is no time. */
  const momentOf = (at: string | undefined): number | undefined => {
    if (at === undefined) return undefined;
    const t = /^\d{4}-\d{2}-\d{2}/.test(at) ? Date.parse(at) : NaN;
    if (Number.isNaN(t)) throw Object.assign(new Error(`querystring/at: expected a time like "2026-11-29T10:00Z", got ${JSON.stringify(at)}`), { validation: true });
    return t;
  };
  app.get<{ Querystring: { at?: string } }>(
    '/api/queues',
    {
      schema: {
        summary: 'Every queue with its table and depth, and the totals; with ?at=, what was waiting where at that moment, and why (time travel, from the event log)',
        querystring: atQuery,
        response: { 200: { type: 'object', additionalProperties: false, properties: { at: { type: 'integer' }, totals: { type: 'object', additionalProperties: true }, queues: { type: 'array', items: queueSchema } } }, ...errors({ auth: true, input: true, extra: { 503: ['SG_ERR_NO_EVENT_LOG'] } }) },
      },
    },
    async (req, reply) => {
      const at = momentOf(req.query.at);
      if (at === undefined) return mergeQueues([localQueues(), ...(await siblings.ask('queues')).flatMap(queuesOf)]);
      if (!opts.queuesAt) return fail(reply, 503, 'SG_ERR_NO_EVENT_LOG', 'the event log is off (events.archive: false): no past to travel to');
      const past = await opts.queuesAt(at);
      const totals = { queues: past.length, ready: 0, deferred: 0, held: 0, inflight: 0 };
      for (const q of past) for (const k of ['ready', 'deferred', 'held', 'inflight'] as const) totals[k] += q.depth[k];
      return { at, totals, queues: past };
    },
  );

  const domainParam = { type: 'object', properties: { domain: { type: 'string', pattern: '^[A-Za-z0-9.-]{1,253}$' } }, required: ['domain'] } as const;
  const msgParams = { type: 'object', properties: { domain: domainParam.properties.domain, id: { type: 'string', pattern: MESSAGE_ID.source } }, required: ['domain', 'id'] } as const;

  app.get<{ Params: { domain: string } }>('/api/queues/:domain', { schema: { summary: "One queue's replica table and depth", params: domainParam, response: { 200: queueSchema, ...errors({ auth: true, input: true, extra: { 404: ['SG_ERR_NOT_FOUND'] } }) } } }, async (req) => {
    const q = queues.view(req.params.domain);
    if (!q) throw new QueueError('NOT_FOUND', `no queue for ${req.params.domain}`);
    return { ...q.table(), depth: q.depth };
  });

  const liveProps = { state: { type: 'string', enum: ['ready', 'deferred', 'held', 'inflight'] }, attempts: { type: 'integer' }, nextAttemptAt: { type: ['integer', 'null'] } } as const;
  /** A message's answer: its id, where it is live (`live`), its events. */
  const storySchema = <L extends object>(live: L) => ({ type: 'object', additionalProperties: false, properties: { id: { type: 'string' }, live, events: { type: 'array', items: eventRow } } }) as const;
  const liveOf = (m: { state: string; attempts: number; nextAt: number }) => ({ state: m.state, attempts: m.attempts, nextAttemptAt: m.nextAt || null });
  app.get<{ Params: { domain: string; id: string } }>('/api/queues/:domain/messages/:id',
    {
      schema: {
        summary: "A message's history and, while it is live, its state",
        params: msgParams,
        response: {
          200: storySchema({ anyOf: [{ type: 'null' }, { type: 'object', additionalProperties: false, properties: liveProps }] }),
          ...errors({ auth: true, input: true, extra: { 404: ['SG_ERR_NOT_FOUND'] } }),
        },
      },
    }, async (req) => {
    const d = req.params.domain.toLowerCase();
    const events = opts.story ? (await opts.story(req.params.id)).filter((e) => e.domain === d) : await queues.history(req.params.domain, req.params.id);
    const q = queues.view(req.params.domain);
    const m = q?.get(req.params.id);
    if (!events.length && !m) throw new QueueError('NOT_FOUND', `no message ${req.params.id} in queue ${req.params.domain}`);
    return { id: req.params.id, live: m ? liveOf(m) : null, events };
  });

  app.get<{ Params: { id: string }; Querystring: { at?: string } }>('/api/messages/:id',
    {
      schema: {
        summary: "A message's story in every queue it went to, whatever its age: the event log's index (two lookups, no scan), and its state where it is live",
        params: { type: 'object', properties: { id: msgParams.properties.id }, required: ['id'] },
        querystring: atQuery,
        response: {
          200: storySchema({ type: 'array', items: { type: 'object', additionalProperties: false, properties: { domain: { type: 'string' }, ...liveProps } } }),
          ...errors({ auth: true, input: true, extra: { 404: ['SG_ERR_NOT_FOUND'], 503: ['SG_ERR_NO_EVENT_LOG'] } }),
        },
      },
    }, async (req, reply) => {
    if (!opts.story) return fail(reply, 503, 'SG_ERR_NO_EVENT_LOG', 'the event log is off (events.archive: false): ask the queue, GET /api/queues/:domain/messages/:id');
    const at = momentOf(req.query.at);
    const events = (await opts.story(req.params.id)).filter((e) => at === undefined || e.at <= at);
    const live = [...new Set(events.map((e) => e.domain))].flatMap((domain) => {
      if (at !== undefined) {
        // as it stood then: its events up to the moment, folded
        const view = new Map<string, Projected>();
        for (const e of events) if (e.domain === domain) apply(view, e);
        const p = view.get(req.params.id);
        return p ? [{ domain, ...liveOf({ state: p.s, attempts: p.a, nextAt: p.n }) }] : [];
      }
      const m = queues.view(domain)?.get(req.params.id);
      return m ? [{ domain, ...liveOf(m) }] : [];
    });
    if (!events.length) throw new QueueError('NOT_FOUND', `no message ${req.params.id} in the event log`);
    return { id: req.params.id, live, events };
  });

  const action = { type: 'object', properties: { reason: { type: 'string', minLength: 1, maxLength: 500 }, actor: { type: 'string', minLength: 1, maxLength: 100 } }, required: ['reason'], additionalProperties: false } as const;
  for (const verb of ['hold', 'release', 'purge'] as const) {
    app.post<{ Params: { domain: string; id: string }; Body: { reason: string; actor?: string } }>(
      `/api/queues/:domain/messages/:id/${verb}`,
      {
        schema: {
          summary: { hold: 'Hold a message: not delivered until released', release: 'Release a held message', purge: 'Remove a message without delivery or DSN' }[verb],
          params: msgParams,
          body: action,
          response: {
            200: okSchema({ id: { type: 'string' } }),
            ...errors({ auth: true, write: true, input: true, extra: { 404: ['SG_ERR_NOT_FOUND'], ...(verb === 'purge' ? {} : { 409: ['SG_ERR_WRONG_STATE'] }), 503: ['SG_ERR_QUEUE_UNAVAILABLE'] } }),
          },
        },
      },
      async (req) => {
        const { actor, token } = who(req);
        if (verb === 'purge' && opts.vault) await opts.vault.purge(req.params.domain, req.params.id, actor, req.body.reason, { token });
        else await queues[verb](req.params.domain, req.params.id, actor, req.body.reason, { token });
        log.info({ verb, queue: req.params.domain, messageId: req.params.id, actor, reason: req.body.reason }, 'admin action');
        return { ok: true, verb, id: req.params.id };
      },
    );
  }

  app.post<{ Params: { id: string }; Body: { reason: string; actor?: string } }>(
    '/api/messages/:id/unpurge',
    {
      schema: {
        summary: 'Put a purged message back into its queue, under its id, within queue.purgeGrace',
        params: { type: 'object', properties: { id: msgParams.properties.id }, required: ['id'] },
        body: action,
        response: {
          200: okSchema({ id: { type: 'string' }, domain: { type: 'string' } }),
          ...errors({ auth: true, write: true, input: true, extra: { 404: ['SG_ERR_NOT_FOUND'], 503: ['SG_ERR_NO_EVENT_LOG'] } }),
        },
      },
    },
    async (req, reply) => {
      if (!opts.vault) return fail(reply, 503, 'SG_ERR_NO_EVENT_LOG', 'purges are not kept: the event log is off (events.archive: false) or queue.purgeGrace is 0s');
      const { actor, token } = who(req);
      const domain = await opts.vault.unpurge(req.params.id, actor, req.body.reason, { token });
      log.info({ verb: 'unpurge', queue: domain, messageId: req.params.id, actor, reason: req.body.reason }, 'admin action');
      return { ok: true, verb: 'unpurge', id: req.params.id, domain };
    },
  );

  app.get<{ Params: { domain: string } }>(
    '/api/queues/:domain/rebuild-check',
    {
      schema: {
        summary: "Rebuilds the queue's projection (state, attempts and next attempt of every live message, counters) from its events alone and lists where it differs from the live one",
        params: domainParam,
        response: { 200: { type: 'object', additionalProperties: true }, ...errors({ auth: true, input: true, extra: { 404: ['SG_ERR_NOT_FOUND'], 503: ['SG_ERR_NO_EVENT_LOG'] } }) },
      },
    },
    async (req, reply) => {
      if (!queues.view(req.params.domain)) throw new QueueError('NOT_FOUND', `no queue for ${req.params.domain}`);
      if (!opts.rebuildCheck) return fail(reply, 503, 'SG_ERR_NO_EVENT_LOG', 'the event log is off (events.archive: false): the events before the trimmed ones are gone');
      return opts.rebuildCheck(req.params.domain);
    },
  );

  app.post<{ Params: { domain: string }; Body: { reason: string; actor?: string } }>(
    '/api/queues/:domain/rebuild-state',
    {
      schema: {
        summary: "Writes the queue's state (every live message's state record, the counters) back from its events alone, on every replica in sync, the queue's writes held meanwhile; recorded as a `rebuilt` event",
        params: domainParam,
        body: action,
        response: { 200: { type: 'object', additionalProperties: true }, ...errors({ auth: true, write: true, input: true, extra: { 404: ['SG_ERR_NOT_FOUND'], 409: ['SG_ERR_WRONG_STATE'], 503: ['SG_ERR_NO_EVENT_LOG'] } }) },
      },
    },
    async (req, reply) => {
      const q = queues.view(req.params.domain);
      if (!q) throw new QueueError('NOT_FOUND', `no queue for ${req.params.domain}`);
      if (!opts.rebuildState) return fail(reply, 503, 'SG_ERR_NO_EVENT_LOG', 'the event log is off (events.archive: false): the events before the trimmed ones are gone');
      const { actor, token } = who(req);
      const r = await opts.rebuildState(q.domain, { actor, token, reason: req.body.reason });
      log.warn({ verb: 'rebuild-state', queue: q.domain, actor, reason: req.body.reason, messages: r.messages, events: r.events }, 'admin action');
      return { ok: true, verb: 'rebuild-state', ...r };
    },
  );

  app.post<{ Params: { domain: string } }>('/api/queues/:domain/flush', { schema: { summary: 'Make every deferred message of the queue due now', params: domainParam, response: { 200: okSchema({ flushed: { type: 'integer' } }), ...errors({ auth: true, write: true, input: true, extra: { 404: ['SG_ERR_NOT_FOUND'] } }) } } }, async (req) => {
    const q = queues.view(req.params.domain);
    if (!q) throw new QueueError('NOT_FOUND', `no queue for ${req.params.domain}`);
    const { actor, token } = who(req);
    const flushed = await queues.flush(q.domain, actor, 'flush', { token });
    log.info({ verb: 'flush', queue: q.domain, flushed, actor }, 'admin action');
    return { ok: true, verb: 'flush', flushed };
  });

  app.post<{ Params: { domain: string }; Body: { from: string; reason: string; actor?: string } }>(
    '/api/queues/:domain/recover',
    {
      schema: {
        summary: 'Open a closed queue from one replica, as its truth from now on',
        params: domainParam,
        body: { ...action, properties: { ...action.properties, from: { type: 'string', minLength: 1, maxLength: 200 } }, required: ['from', 'reason'] },
        response: {
          200: okSchema({ messages: { type: 'integer' }, txn: { type: 'integer' } }),
          ...errors({ auth: true, write: true, input: true, extra: { 400: ['SG_ERR_BAD_INPUT'], 404: ['SG_ERR_NOT_FOUND'], 503: ['SG_ERR_QUEUE_UNAVAILABLE'] } }),
        },
      },
    },
    async (req) => {
      const { actor } = who(req);
      const r = await queues.forceRecover(req.params.domain, req.body.from, actor, req.body.reason);
      log.warn({ verb: 'recover', queue: req.params.domain, from: req.body.from, actor, reason: req.body.reason, ...r }, 'admin action');
      return { ok: true, verb: 'recover', ...r };
    },
  );

  app.post<{ Body: { node: string; reason: string; actor?: string } }>(
    '/api/nodes/drain',
    {
      schema: {
        summary: 'Drain a node of the pool: every member moves its queues off it (copied in blocks, then switched); it takes no new placement',
        body: { ...action, properties: { ...action.properties, node: { type: 'string', minLength: 1, maxLength: 300 } }, required: ['node', 'reason'] },
        response: {
          200: okSchema({ node: { type: 'string' }, queues: { type: 'integer' } }),
          ...errors({ auth: true, write: true, input: true, extra: { 400: ['SG_ERR_BAD_INPUT'], 503: ['SG_ERR_QUEUE_UNAVAILABLE'] } }),
        },
      },
    },
    async (req) => {
      const { actor, token } = who(req);
      const r = await queues.drain(req.body.node);
      log.warn({ verb: 'drain', node: r.node, actor, token, reason: req.body.reason, queues: r.queues }, 'admin action');
      return { ok: true, verb: 'drain', ...r };
    },
  );

  app.get('/api/gateways', { schema: { summary: "The pool's gateways: leases, epochs, queues, messages", response: { 200: { type: 'object', additionalProperties: false, properties: { self: { type: 'string' }, members: { type: 'array', items: { type: 'object', additionalProperties: true } } } }, ...errors({ auth: true }) } } }, async () => ({
    self: queues.gatewayId,
    members: await queues.members(),
  }));

  app.get('/api/suspended', { schema: { summary: 'The destination queues an operator suspended', response: { 200: { type: 'object', additionalProperties: false, properties: { suspended: { type: 'array', items: { type: 'object', additionalProperties: true } } } }, ...errors({ auth: true }) } } }, async () => ({ suspended: opts.relay?.suspended() ?? [] }));
  for (const verb of ['suspend', 'resume'] as const) {
    app.post<{ Params: { domain: string }; Body: { reason: string; actor?: string } }>(
      `/api/queues/:domain/${verb}`,
      {
        schema: {
          summary: verb === 'suspend' ? 'Take nothing from the queue until resumed (kept while the gateway runs)' : 'Resume a suspended queue',
          params: domainParam,
          body: action,
          response: {
            200: okSchema({ domain: { type: 'string' } }),
            ...errors({ auth: true, write: true, input: true, extra: { ...(verb === 'resume' ? { 409: ['SG_ERR_WRONG_STATE'] } : {}), 503: ['SG_ERR_NO_RELAY'] } }),
          },
        },
      },
      async (req, reply) => {
        if (!opts.relay) return fail(reply, 503, 'SG_ERR_NO_RELAY', 'this gateway runs no relay');
        const { actor, token } = who(req);
        const domain = req.params.domain.toLowerCase();
        if (verb === 'suspend') opts.relay.suspend(domain, actor, req.body.reason);
        else if (!opts.relay.resume(domain, actor, req.body.reason)) return fail(reply, 409, 'SG_ERR_WRONG_STATE', `${domain} is not suspended`);
        // the queue's history says so (a destination without a queue yet has no history)
        if (queues.view(domain)) await queues.mark(domain, verb === 'suspend' ? 'suspended' : 'resumed', { actor, token, reason: req.body.reason, before: { suspended: verb !== 'suspend' }, after: { suspended: verb === 'suspend' } });
        log.info({ verb, queue: domain, actor, reason: req.body.reason }, 'admin action');
        return { ok: true, verb, domain };
      },
    );
  }

  await app.listen({ host: config.ops.listen.host, port: config.ops.listen.port });
  const port = (app.server.address() as { port: number }).port;
  log.info({ host: config.ops.listen.host, port }, 'ops listening');
  return {
    port,
    stop: async () => {
      live.stop();
      siblings.stop();
      await app.close();
      if (!opts.metrics) metrics.stop();
    },
  };
}

/** Metrics of the queues and the memory budgets, for an ops listener started on its own (tests). */
function standaloneMetrics(opts: OpsOptions): GatewayMetrics {
  const m = new GatewayMetrics({ topDestinations: opts.config.ops.topDestinations });
  m.watchQueues(opts.queues, opts.config.queue.memoryHighWater);
  if (opts.memory) m.watchMemory(opts.memory);
  if (opts.relay) m.watchRelay(opts.relay);
  return m;
}

interface QueuesListing {
  totals: Record<string, unknown>;
  queues: unknown[];
}

const queuesOf = (a: SiblingAnswer): QueuesListing[] => (a.value ? [a.value as QueuesListing] : []);

/** The workers' listings as one: every queue, the totals summed (the oldest message the oldest of all). */
function mergeQueues(listings: QueuesListing[]): QueuesListing {
  const totals: Record<string, unknown> = {};
  for (const l of listings) {
    for (const [k, v] of Object.entries(l.totals)) {
      const cur = totals[k];
      if (k === 'oldest') totals[k] = v === null || v === undefined ? (cur ?? null) : cur === null || cur === undefined ? v : Math.min(Number(cur), Number(v));
      else if (typeof v === 'number') totals[k] = (typeof cur === 'number' ? cur : 0) + v;
      else if (!(k in totals)) totals[k] = v;
    }
  }
  return { totals, queues: listings.flatMap((l) => l.queues) };
}

/**
 * How the workers' metrics add up: counters, histograms and the gauges of what each worker holds
 * (queue depths, bytes, queues, archive lag in events) are summed; what is one shared thing seen
 * by each (a Redis node's memory, the budgets, dead destinations, the events queue) or a worst
 * case (ages, lags in seconds, the event loop's delay and GC pauses, degraded, paused) is the
 * largest of the workers'; a yes that every worker must say (a node up, a replica in sync, the
 * door open) the smallest.
 */
const MACHINE_MAX = /_(age_seconds|lag_seconds|ratio|degraded|paused|limit_bytes|used_bytes|used_memory_bytes|over_budget|dead_destinations|events_jobs)$|_eventloop_|_gc_pause_/;
const MACHINE_MIN = /_(node_up|replica_in_sync|door_open)$/;
/** A metric as getMetricsAsJSON() gives it (the fields looked at here). */
interface MetricJson {
  name: string;
  type: string;
  aggregator?: string;
}
function machineAggregation(metrics: MetricJson[]): MetricJson[] {
  return metrics.map((m) => (m.type !== 'gauge' ? m : MACHINE_MIN.test(m.name) ? { ...m, aggregator: 'min' } : MACHINE_MAX.test(m.name) ? { ...m, aggregator: 'max' } : m));
}

