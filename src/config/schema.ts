// The configuration schema: every option, its type and its default. config/streamgate.example.yaml
// documents the same options for operators; test/config/example.test.ts keeps the two in step.
import { isIP } from 'node:net';
import { z } from 'zod';
import { parseDuration, parseListen, parseSize } from './units.ts';

/** events.batch when the configuration says nothing: events per BullMQ job. */
export const DEFAULT_EVENTS_BATCH = 100;

const fail = (ctx: z.RefinementCtx, message: string) => {
  ctx.addIssue({ code: 'custom', message });
  return z.NEVER;
};

/** A duration string ("20m", "5d") parsed to milliseconds. */
export const duration = (def: string) =>
  z
    .string()
    .transform((s, ctx) => parseDuration(s) ?? fail(ctx, `expected a duration like "2s", "20m" or "5d", got ${JSON.stringify(s)}`))
    .prefault(def);

/** A size string ("25MB") or a whole number of bytes, parsed to bytes. */
export const size = (def: string) =>
  z
    .union([z.string(), z.number().int().nonnegative()])
    .transform((s, ctx) =>
      typeof s === 'number' ? s : (parseSize(s) ?? fail(ctx, `expected a size like "512KB" or "25MB", got ${JSON.stringify(s)}`)),
    )
    .prefault(def);

/** "host:port" to listen on. */
export const listen = (def: string) =>
  z
    .string()
    .transform((s, ctx) => parseListen(s) ?? fail(ctx, `expected "host:port" (IPv6 as "[::1]:port"), got ${JSON.stringify(s)}`))
    .prefault(def);

const redisUrl = z.string().regex(/^rediss?:\/\/[^\s]+$/, 'expected a redis:// URL');
const domain = z
  .string()
  .regex(/^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/i, 'expected a domain name')
  .transform((s) => s.toLowerCase());
const cidr = z.string().regex(/^[0-9a-fA-F:.]+(\/\d{1,3})?$/, 'expected an address or CIDR range like "127.0.0.0/8"');
const consistency = z.enum(['any', 'one', 'two', 'three', 'quorum', 'all', 'local_quorum', 'each_quorum', 'local_one']);
const count = (def: number) => z.number().int().nonnegative().default(def);

const opsToken = z.string().min(16, 'expected a token of at least 16 characters');

const redisNode = z.union([
  redisUrl.transform((url) => ({ url, standby: undefined as string | undefined, name: undefined as string | undefined })),
  z.strictObject({
    url: redisUrl,
    standby: redisUrl.optional(),
    // the node's name in tables, logs, metrics and placement records; default host:port
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/, 'expected a node name of letters, digits, ".", "_", ":" or "-"').optional(),
  }),
]);

const authLimits = z
  .strictObject({
    perConnection: count(3), // failed AUTH attempts before 421 and disconnect
    perClient: count(10), // failed attempts per client address within `window`
    window: duration('15m'),
    delay: duration('3s'), // delay before each reply once a client has failed
  })
  .prefault({});

const tls = z
  .strictObject({
    key: z.string().optional(), // PEM file; the embedded default generates a self-signed pair
    cert: z.string().optional(),
  })
  .prefault({});

const destinationLimits = z.strictObject({
  connections: z.number().int().positive().optional(),
  ratePerSecond: z.number().nonnegative().optional(),
  messagesPerConnection: z.number().int().positive().optional(),
});

const timeWindow = z.string().regex(/^([01]\d|2[0-3]):[0-5]\d-(([01]\d|2[0-3]):[0-5]\d|24:00)$/, 'expected "HH:MM-HH:MM"');

/** A Redis node's identity: host:port of its url (credentials and database left out). */
export function redisNodeId(url: string): string {
  const u = new URL(url);
  return `${u.hostname.includes(':') && !u.hostname.startsWith('[') ? `[${u.hostname}]` : u.hostname}:${u.port || '6379'}`;
}

/** The most gateway processes one `streamgate start` runs (gateway.workers). */
export const MAX_WORKERS = 64;

export const configSchema = z
  .strictObject({
    gateway: z
      .strictObject({
        id: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'expected letters, digits, "_", "." or "-"').default('gw1'),
        hostname: z.string().regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/, 'expected a host name').default('localhost'), // name used in banners, Received headers, DSNs
        lease: duration('10s'), // membership lease on the pool, renewed every third of it; a process whose id is held by a live member refuses to start
        adoption: z
          .strictObject({
            every: duration('1s'), // how often each member looks for members whose lease lapsed
            grace: duration('0s'), // how long a lapsed member's queues wait before they are adopted (a restart with its id in that time takes them back)
          })
          .prefault({}),
        // gateway processes under one `streamgate start` (node:cluster), sharing the SMTP, submission,
        // POP3 and ops listeners; with more than 1 each is a member of the pool of its own, id
        // `<id>-1` … `<id>-N`, with its own queues; "auto": one per core (os.availableParallelism)
        workers: z
          .unknown()
          .transform((v, ctx): number | 'auto' =>
            v === 'auto' || (typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_WORKERS) ? v : fail(ctx, `expected a whole number from 1 to ${MAX_WORKERS} or "auto", got ${JSON.stringify(v)}`),
          )
          .prefault(1),
        dataDir: z.string().default('.streamgate'), // local state: generated TLS pair, service data, pid files
      })
      .prefault({}),
    log: z
      .strictObject({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        pretty: z.enum(['auto', 'always', 'never']).default('auto'), // auto: pretty when stdout is a terminal
      })
      .prefault({}),
    smtp: z
      .strictObject({
        listen: listen('127.0.0.1:2525'),
        maxMessageSize: size('25MB'),
        maxRecipients: z.number().int().positive().default(100),
        maxConnections: z.number().int().positive().default(1000),
        maxConnectionsPerClient: z.number().int().positive().default(50),
        maxMessagesPerConnection: z.number().int().positive().default(1000),
        commandTimeout: duration('5m'), // RFC 5321 4.5.3.2 asks at least 5 minutes
        // time budget of one DATA transfer, plus one second for every `minDataRate` bytes received
        // (Postfix's per-request deadline): a client that trickles slower is cut off (421 4.4.2)
        dataTimeout: duration('10m'),
        minDataRate: size('1KB'), // bytes per second while DATA arrives; 0: dataTimeout is the whole budget
        maxCommandLength: z.number().int().min(512).default(2048), // octets per command line (RFC 5321: 512 + extensions; AUTH needs more); beyond: 500 5.5.2
        maxLineLength: z.number().int().nonnegative().default(1000), // octets per message line incl. CRLF (RFC 5321 4.5.3.1.6); 0 = no limit (552 5.6.0 beyond)
        maxHeaderSize: size('100KB'), // octets of a message's header section (Postfix header_size_limit); 0 = no limit (552 5.3.4 beyond)
        maxHops: z.number().int().nonnegative().default(50), // Received headers at which a message is refused as a loop (Postfix hopcount_limit; 554 5.4.0); 0 = no limit
        // while the queues cannot be written: refuse = answer new connections 421 4.3.2;
        // close = stop listening (a load balancer moves traffic elsewhere) until they can
        whenUnwritable: z.enum(['refuse', 'close']).default('refuse'),
        // addresses of load balancers (HAProxy `send-proxy`) whose connections to the SMTP and
        // submission listeners begin with a PROXY protocol v1 header naming the real client: that
        // client's address is then the one trusted networks, limits and logs see. Exact addresses,
        // no ranges; a connection from any other address is taken as it comes. Default none.
        proxyProtocol: z.array(z.string().refine((a) => isIP(a) !== 0, 'expected an IP address such as "10.5.0.10" (no range)')).default([]),
        auth: authLimits,
        // error replies (4xx/5xx) and junk commands, as Postfix's smtpd does
        errors: z
          .strictObject({
            junkCommands: count(100), // NOOP, RSET, VRFY, HELP per connection before each one counts as an error (smtpd_junk_command_limit)
            softLimit: count(10), // errors on a connection after which each command waits `sleep` (smtpd_soft_error_limit)
            hardLimit: count(20), // errors on a connection, then 421 4.7.0 and disconnect (smtpd_hard_error_limit)
            sleep: duration('1s'), // smtpd_error_sleep_time
            perClient: count(100), // errors per client within `window`, then 421 4.7.0, also to new connections; 0: off
            window: duration('10m'),
          })
          .prefault({}),
        maxBytesInFlight: size('512MB'), // message bytes held by all DATA transfers together; beyond: 452 4.3.1
      })
      .prefault({}),
    submission: z
      .strictObject({
        listen: listen('127.0.0.1:2587'),
        implicitTls: z.boolean().default(false), // true: TLS from the first byte (port 465 style)
        // who may use which envelope sender (Postfix smtpd_sender_login_maps): sender address or
        // "@domain" → the logins that own it. A login owns its own address; any other sender of an
        // authenticated session gets 553 5.7.1
        senderLogins: z.record(z.string().regex(/^[^\s@]*@[^\s@]+$/, 'expected an address or "@domain"'), z.array(z.string().email('expected a login (an e-mail address)'))).default({}),
      })
      .prefault({}),
    tls,
    users: z
      .array(z.strictObject({ address: z.string().email('expected an e-mail address'), passwordHash: z.string() }))
      .default([]), // submission users besides the mailbox store: scrypt hashes from `streamgate user hash`
    pop3: z
      .strictObject({
        listen: listen('127.0.0.1:1110'),
        // USER/PASS and AUTH PLAIN send the password in clear: tls-or-trusted = only under STLS or
        // from networks.trusted; always; never = never on an unencrypted connection (STLS first)
        plaintextAuth: z.enum(['tls-or-trusted', 'always', 'never']).default('tls-or-trusted'),
        maxConnections: z.number().int().positive().default(1000), // in total; beyond: -ERR [SYS/TEMP] and closed
        maxConnectionsPerClient: z.number().int().positive().default(50), // per client address (IPv6: per networks.ipv6Prefix)
        // the autologout timer (RFC 1939 asks at least 10 minutes): a whole command must arrive
        // within it, however the bytes trickle in; then the connection is closed without a response
        idleTimeout: duration('10m'),
        lockLease: duration('5m'), // a crashed session's mailbox lock expires after this
        pageSize: z.number().int().positive().default(100),
        auth: authLimits,
      })
      .prefault({}),
    ops: z
      .strictObject({
        listen: listen('127.0.0.1:8025'),
        // bearer tokens: "token" (role admin) or { token, role: read | admin, name }; read: every
        // GET, admin: every call. No token: only the dashboard page and ops.open answer (401).
        // `name` (default "token<N>", its place in the list) is the actor recorded in the history
        // for the token's admin actions; the token itself never is
        tokens: z
          .array(z.union([opsToken.transform((token) => ({ token, role: 'admin' as const, name: undefined })), z.strictObject({ token: opsToken, role: z.enum(['read', 'admin']), name: z.string().regex(/^[A-Za-z0-9_.@-]{1,64}$/, 'expected 1 to 64 letters, digits, "_", ".", "@" or "-"').optional() })]))
          .default([]),
        open: z.array(z.enum(['health', 'metrics'])).default(['health']), // answered without a token
        // names the Host header may carry besides gateway.hostname, "localhost" and IP literals
        // (any other name is refused, 403: no DNS rebinding from a page in an operator's browser)
        hosts: z.array(z.string().regex(/^[A-Za-z0-9.-]+$/, 'expected a host name')).default([]),
        // destinations with a label of their own in /metrics (the busiest by recent volume and
        // depth); the others count under queue="other", so a scrape stays this size at any count of queues
        topDestinations: z.number().int('expected a whole number of destinations').min(1, 'expected at least 1 destination').max(1000, 'expected at most 1000 destinations (each is a series of every per-destination metric)').default(20),
      })
      .prefault({}),
    redis: z
      .strictObject({
        nodes: z
          .array(redisNode)
          .min(2, 'expected at least two nodes (a replica pair)')
          .prefault(['redis://127.0.0.1:6381', 'redis://127.0.0.1:6382', 'redis://127.0.0.1:6383']),
        maxmemory: size('1GB'), // set on the nodes `services up` starts
        persistence: z.enum(['none', 'aof']).default('none'), // for the nodes `services up` starts
      })
      .prefault({}),
    cassandra: z
      .strictObject({
        contactPoints: z.array(z.string()).min(1).default(['127.0.0.1:9042']),
        localDataCenter: z.string().default('datacenter1'),
        keyspace: z.string().regex(/^[a-z][a-z0-9_]{0,47}$/, 'expected a lower-case CQL identifier').default('streamgate'),
        replicationStrategy: z.enum(['SimpleStrategy', 'NetworkTopologyStrategy']).default('SimpleStrategy'),
        replicationFactor: z.number().int().positive().default(1),
        consistency: consistency.default('one'),
        readConsistency: consistency.optional(), // defaults to `consistency`
        writeConsistency: consistency.optional(),
        chunkSize: size('64KB'), // bodies above this are split into chunks of this size
        bucketSize: z.number().int().positive().default(10000), // messages per mailbox partition
        heap: z.string().regex(/^\d+[mg]$/i, 'expected a JVM heap size like "512m"').default('512m'), // each local node
        // the JIT of each local node: c1 = the quick compiler only (-XX:TieredStopAtLevel=1), for a
        // node sharing a few cores with the gateway and Redis; full = C1 then C2, the JVM's default
        jit: z.enum(['c1', 'full']).default('c1'),
        // what `services up` starts when the first contact point is on loopback: `nodes` Cassandra
        // nodes (1 to 3) on that address and the next ones (127.0.0.1, .2, .3), same ports, one
        // cluster; set replicationFactor to at most this
        local: z
          .strictObject({ nodes: z.number().int().min(1, 'expected 1 to 3 local nodes').max(3, 'expected 1 to 3 local nodes (127.0.0.1 to 127.0.0.3)').default(1) })
          .prefault({}),
      })
      .superRefine((c, ctx) => {
        const host = (c.contactPoints[0] ?? '').replace(/:\d+$/, '');
        if (c.local.nodes > 1 && !/^127\.\d+\.\d+\.([1-9]\d*)$/.test(host)) {
          ctx.addIssue({ code: 'custom', path: ['local', 'nodes'], message: `expected a first contact point on IPv4 loopback (127.0.0.x:port) for ${c.local.nodes} local nodes, got ${JSON.stringify(c.contactPoints[0])}` });
        } else if (c.local.nodes > 1 && Number(host.split('.')[3]) + c.local.nodes - 1 > 254) {
          ctx.addIssue({ code: 'custom', path: ['local', 'nodes'], message: `expected room for ${c.local.nodes} addresses after ${host}` });
        }
      })
      .prefault({}),
    domains: z
      .strictObject({
        local: z.array(domain).default(['example.test']), // delivered into Cassandra mailboxes
        relay: z.array(domain).default([]), // accepted from anyone and relayed
        // the mailbox that mail for <postmaster> and postmaster@ every local domain goes to
        // (RFC 5321 4.5.1: always accepted); "" = postmaster@ the first local domain
        postmaster: z.union([z.literal(''), z.string().email('expected an e-mail address')]).default(''),
      })
      .prefault({}),
    networks: z
      .strictObject({
        trusted: z.array(cidr).default(['127.0.0.0/8', '::1/128']),
        // IPv6 clients are counted per network of this many bits by every per-client limit
        // (connections, failed logins, errors): a client owns a whole /64 and can rotate through it
        ipv6Prefix: z.number().int().min(16).max(128).default(64),
      })
      .prefault({}),
    // Static routes: a domain, "*.domain" (its subdomains) or "*" (everything else, a smarthost)
    // → "local" (mailbox delivery) or smtp://host:port (smtps:// for TLS from the first byte).
    // The most specific match wins; unrouted domains go to their MX hosts.
    routes: z
      .record(
        z.union([z.literal('*'), domain]),
        z.union([z.literal('local'), z.string().regex(/^smtps?:\/\/[^\s/]+(:\d+)?\/?$/, 'expected "local" or smtp://host:port')]),
      )
      .default({}),
    queue: z
      .strictObject({
        writeConcern: z.enum(['all', 'one']).default('all'),
        timeout: duration('2s'), // per replica call
        heartbeat: z.strictObject({ every: duration('1s'), missed: z.number().int().positive().default(3) }).prefault({}),
        rebuildAfter: duration('10s'), // grace before a queue is rebuilt on the spare
        blockSize: z.number().int().min(1).max(100000).default(1000), // entries per block when copying or recovering
        recoveryParallel: z.number().int().min(1).max(256).default(8), // queues recovered (at start) or adopted at once
        maxQueues: z.number().int().min(1).default(10000), // destination queues per gateway (adopted ones included); mail for one more domain gets 452 4.3.1
        idleDelete: duration('1h'), // an empty queue with no event for this long is deleted (keys on both replicas, placement, memory)
        maxLength: z.number().int().positive().default(1000000), // live messages per queue
        // share of each node's maxmemory the budgets below may use together (mail + history, and
        // events too when events.redis is a pool node); a configuration whose budgets add up to
        // more is refused at start. Redis's own maxmemory (noeviction) stays the hard wall.
        memoryHighWater: z.number().gt(0).max(1).default(0.9),
        // share of each pool node's maxmemory for queued mail (message bytes + a per-message
        // overhead, counted by the queue scripts' meta hashes): beyond it appends get 452 4.3.1.
        // History and events are not counted here: they cannot turn mail away.
        mailBudget: z.number().gt(0).max(1).default(0.6),
        // share of each pool node's maxmemory for the history streams of all queues together:
        // beyond it the oldest events across queues are trimmed (never past the events cursor)
        historyBudget: z.number().gt(0).max(1).default(0.15),
        historyMaxLength: z.number().int().positive().default(100000), // events kept per queue history stream
        // a purged message's body is kept this long (in Cassandra, with the event log) so that
        // `streamgate queue unpurge ID` can put it back; after it, the body is gone and the event
        // stays. "0s": a purge drops the body at once. Needs events.archive
        purgeGrace: duration('7d'),
      })
      .prefault({}),
    relay: z
      .strictObject({
        retry: z
          .strictObject({
            schedule: z.array(z.string().transform((s, ctx) => parseDuration(s) ?? fail(ctx, `expected a duration like "5m", got ${JSON.stringify(s)}`))).min(1).prefault(['5m', '10m', '20m', '40m', '1h']),
            jitter: z.number().min(0).max(1).default(0.1),
            maxLifetime: duration('5d'),
            warnAfter: duration('4h'), // "0s" turns delay warnings off
          })
          .prefault({}),
        limits: z
          .strictObject({
            default: z
              .strictObject({
                connections: z.number().int().positive().default(10),
                ratePerSecond: z.number().nonnegative().default(0), // 0 = unlimited
                messagesPerConnection: z.number().int().positive().default(100),
              })
              .prefault({}),
            destinations: z.record(z.string(), destinationLimits).default({}), // per domain or MX host
          })
          .prefault({}),
        // a destination MTA that failed `failures` connections in a row is dead for `suspend` (doubling, at most 8×), then one probe
        deadDestination: z.strictObject({ failures: z.number().int().positive().default(5), suspend: duration('5m') }).prefault({}),
        windows: z.record(domain, z.array(timeWindow).min(1)).default({}),
        connectTimeout: duration('30s'),
        greetingTimeout: duration('30s'),
        socketTimeout: duration('5m'),
        bounceRules: z.string().default('config/bounces.txt'), // reply pattern → class, first match wins
        mxPort: z.number().int().min(1).max(65535).default(25), // port of MX-routed deliveries (25 but in tests)
        // STARTTLS per destination domain or MX host ("*.domain" too): none | opportunistic (try it,
        // any certificate, plaintext if it fails) | required (TLS, any certificate) | verify (TLS,
        // certificate valid for the host). Unlisted destinations: opportunistic.
        tlsPolicy: z.record(z.string(), z.enum(['none', 'opportunistic', 'required', 'verify'])).default({}),
        timezone: z.string().default('UTC'), // IANA zone the delivery windows are read in
        idleTimeout: duration('2s'), // an idle cached connection is closed after this (Postfix: 2s)
        connectionLease: duration('30s'), // a shared connection lease lapses this long after its gateway stops renewing it
      })
      .prefault({}),
    events: z
      .strictObject({
        queue: z.string().default('streamgate-events'), // BullMQ queue lifecycle events go to
        producerQueue: z.string().default('streamgate-submit'), // BullMQ queue producers add messages to
        // the Redis lifecycle events and producer jobs live on: a Redis of its own by default
        // (`services up` starts it when it is on this machine); may name a pool node
        redis: redisUrl.default('redis://127.0.0.1:6384'),
        // share of the events Redis's maxmemory for the events queue's jobs (waiting, completed, failed)
        budget: z.number().gt(0).max(1).default(0.8),
        // when the events budget is full: stop = stop publishing, the durable cursor stays, and
        // the events follow once a consumer drains the queue (nothing lost); drop = drop the
        // oldest undelivered event jobs (counted) and go on
        whenFull: z.enum(['stop', 'drop']).default('stop'),
        // every history event archived into Cassandra (the event log) before Redis trims it;
        // queue.historyMaxLength is then kept below what the archive confirmed. false: the history
        // is cut at queue.historyMaxLength as it is written, and what is cut is gone
        archive: z.boolean().default(true),
        // N (2 to 1000; 100 by default): up to N events of one queue per job (named "batch", data
        // { events: [...] }, each event with its own id inside): fewer jobs, less CPU per event;
        // false: one BullMQ job per event (named by its kind, the event as data, the event id as
        // job id), for consumers that read the jobs themselves and want one per event
        batch: z
          .unknown()
          .optional()
          .transform((v, ctx): false | number => (v === undefined ? DEFAULT_EVENTS_BATCH : v === false ? false : typeof v === 'number' && Number.isInteger(v) && v >= 2 && v <= 1000 ? v : fail(ctx, `expected false (one job per event) or a whole number of events per job from 2 to 1000, got ${JSON.stringify(v)}`))),
      })
      .prefault({}),
  })
  .superRefine((c, ctx) => {
    const q = c.queue;
    const shared = c.redis.nodes.some((n) => redisNodeId(n.url) === redisNodeId(c.events.redis));
    const parts = shared ? [q.mailBudget, q.historyBudget, c.events.budget] : [q.mailBudget, q.historyBudget];
    const sum = parts.reduce((a, b) => a + b, 0);
    if (sum > q.memoryHighWater + 1e-9) {
      ctx.addIssue({
        code: 'custom',
        path: ['queue', 'mailBudget'],
        message: `expected ${shared ? 'queue.mailBudget + queue.historyBudget + events.budget' : 'queue.mailBudget + queue.historyBudget'} at most queue.memoryHighWater (${q.memoryHighWater})${shared ? ` (events.redis is the pool node ${redisNodeId(c.events.redis)}: the three budgets share its memory)` : ''}, got ${parts.join(' + ')} = ${+sum.toFixed(4)}`,
      });
    }
    if (!shared && c.events.budget > q.memoryHighWater + 1e-9) {
      ctx.addIssue({ code: 'custom', path: ['events', 'budget'], message: `expected at most queue.memoryHighWater (${q.memoryHighWater}), got ${c.events.budget}` });
    }
  });

export type Config = z.output<typeof configSchema>;
