// The Cassandra client of the mailbox store: one cassandra-driver Client per process, built from
// `config.cassandra`, plus the consistency levels and the one error type of src/mailbox.
// The client connects without a keyspace (the keyspace may not exist yet); every statement names
// its table as `keyspace.table`.
import cassandra from 'cassandra-driver';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';

export type MailboxErrorCode =
  | 'STORE_UNAVAILABLE' // Cassandra did not answer or refused: try again later (SMTP 451 4.3.0, POP3 [SYS/TEMP])
  | 'BAD_INPUT' // an address or mailbox name that is not acceptable
  | 'NOT_FOUND' // no such user
  | 'EXISTS' // the user exists already
  | 'BODY_INCOMPLETE'; // a message row whose body chunks are missing

export class MailboxError extends Error {
  override name = 'MailboxError';
  readonly code: MailboxErrorCode;
  constructor(code: MailboxErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** Wraps a driver error as STORE_UNAVAILABLE (the caller defers); MailboxErrors pass through. */
export function storeError(what: string, err: unknown): MailboxError {
  if (err instanceof MailboxError) return err;
  let reason = err instanceof Error ? err.message : String(err);
  const inner = (err as { innerErrors?: Record<string, unknown> } | undefined)?.innerErrors;
  if (inner && typeof inner === 'object' && Object.keys(inner).length > 0) {
    // NoHostAvailableError: one line per host instead of the driver's inspected error objects
    reason = `no host answered (${Object.entries(inner).map(([host, e]) => `${host}: ${e instanceof Error ? e.message : String(e)}`).join('; ')})`;
  }
  return new MailboxError('STORE_UNAVAILABLE', `${what}: ${reason}`, { cause: err });
}

type Level = Config['cassandra']['consistency'];
const { consistencies } = cassandra.types;
const LEVELS: Record<Level, number> = {
  any: consistencies.any,
  one: consistencies.one,
  two: consistencies.two,
  three: consistencies.three,
  quorum: consistencies.quorum,
  all: consistencies.all,
  local_quorum: consistencies.localQuorum,
  each_quorum: consistencies.eachQuorum,
  local_one: consistencies.localOne,
};

export interface Consistency {
  read: number;
  write: number;
  /** For the one lightweight transaction (the POP3 mailbox lease): SERIAL, so a lock holds across data centers. */
  serial: number;
}

/** Read and write levels from configuration; `any` and `each_quorum` cannot read, so reads use `one`/`quorum`. */
export function consistencyFrom(config: Config): Consistency {
  const c = config.cassandra;
  let read = c.readConsistency ?? c.consistency;
  if (read === 'any') read = 'one';
  if (read === 'each_quorum') read = 'quorum';
  const write = c.writeConsistency ?? c.consistency;
  return {
    read: LEVELS[read],
    write: LEVELS[write],
    serial: consistencies.serial,
  };
}

export interface ClientOptions {
  /** Milliseconds to wait for a TCP connection; default 5000. */
  connectTimeoutMs?: number;
  /** Milliseconds a request may take before the driver gives up on the host; default 12000. */
  readTimeoutMs?: number;
}

/** The port of a "host:port" contact point ("[::1]:port" for IPv6); 9042 without one. */
function contactPort(cp: string | undefined): number {
  const m = /:(\d+)$/.exec(cp ?? '');
  return m && !(cp ?? '').replace(/^\[.*\]/, '').slice(0, -m[0].length).includes(':') ? Number(m[1]) : 9042;
}

/** A Client for `config.cassandra`; it reconnects by itself (0.5 s growing to 10 s between tries). */
export function createClient(config: Config, log: Logger, opts: ClientOptions = {}): cassandra.Client {
  const c = config.cassandra;
  const client = new cassandra.Client({
    contactPoints: c.contactPoints,
    localDataCenter: c.localDataCenter,
    queryOptions: { prepare: true, consistency: consistencyFrom(config).read, fetchSize: 1000 },
    socketOptions: { connectTimeout: opts.connectTimeoutMs ?? 5000, readTimeout: opts.readTimeoutMs ?? 12_000 },
    // the port of the nodes the driver discovers (a local cluster's nodes share one port)
    protocolOptions: { maxSchemaAgreementWaitSeconds: 10, port: contactPort(c.contactPoints[0]) },
    policies: { reconnection: new cassandra.policies.reconnection.ExponentialReconnectionPolicy(500, 10_000, false) },
    pooling: { coreConnectionsPerHost: { [cassandra.types.distance.local]: 1, [cassandra.types.distance.remote]: 1 } },
    refreshSchemaDelay: 200,
    // A blob (or uuid) in a row is a view into the response the driver read, not a copy of it:
    // body chunks go to a socket and are dropped, event blocks are parsed at once, and nothing
    // keeps such a value past its response (the paging TimeUUID is replaced page by page). A copy
    // per chunk was about a third of the driver's time serving POP3 (bench:mailbox).
    encoding: { copyBuffer: false },
  });
  client.on('log', (level: string, className: string, message: string) => {
    if (level === 'error') log.warn({ driver: className, detail: message }, 'cassandra driver error');
    else if (level === 'warning') log.debug({ driver: className, detail: message }, 'cassandra driver warning');
  });
  client.on('hostDown', (host: { address: string }) => log.warn({ host: host.address }, 'cassandra host down'));
  client.on('hostUp', (host: { address: string }) => log.info({ host: host.address }, 'cassandra host up'));
  // cassandra-driver 4.10 replaces its Host objects when the control connection re-initializes
  // after an outage (control-connection.js, NODEJS-632) but never shuts the replaced ones down:
  // their pools go on reconnecting (and holding sockets) for ever. Shut them down here.
  client.on('hostRemove', (host: { shutdown?: (waitForPending: boolean) => Promise<void> }) => {
    void host.shutdown?.(false)?.catch(() => {});
  });
  return client;
}
