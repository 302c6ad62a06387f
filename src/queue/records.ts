// The one codec for what the Lua scripts write and the gateway reads: key names, the state
// record of a live message, the meta hash fields, live and history stream entries. The scripts'
// side of the same layout is described in lua/includes/queueWrite.lua.

/** A live message's state, as the gateway speaks of it; the state record codes it in one letter. */
export type MessageState = 'ready' | 'deferred' | 'held' | 'inflight';

const STATE_CODES: Record<string, MessageState> = { r: 'ready', d: 'deferred', h: 'held', f: 'inflight' };

/** The keys of one queue, all under one hash tag: live stream, history stream, meta and state hashes. */
export type QueueKeys = [live: string, hist: string, meta: string, state: string];

export function queueKeys(queueName: string): QueueKeys {
  const tag = `sg:{${queueName}}`;
  return [`${tag}:live`, `${tag}:hist`, `${tag}:meta`, `${tag}:state`];
}

/** Per live message, in the state hash (JSON {e, s, a, n, b, r}): entry id, state, attempts, next attempt ms, bytes, remaining recipients. */
export interface StateRecord {
  entryId: string;
  state: MessageState;
  attempts: number;
  nextAt: number;
  bytes: number;
  remaining?: string[] | undefined;
}

export function decodeState(json: string | Buffer): StateRecord {
  const r = JSON.parse(json.toString()) as { e: string; s: string; a: number; n: number; b: number; r?: string[] };
  const state = STATE_CODES[r.s];
  if (!state) throw new Error(`state record: expected a state of r, d, h or f, got ${JSON.stringify(r.s)}`);
  return { entryId: r.e, state, attempts: r.a, nextAt: r.n, bytes: r.b, remaining: r.r };
}

/** What recovery reads of a replica's meta hash: its transaction number, the write set of its last write, the highest ids. */
export interface MetaRecord {
  txn: number;
  /** Node ids of the replicas its last write went to; undefined for a record older than the field. */
  members: string[] | undefined;
  lastEntry: string | undefined;
  lastHist: string | undefined;
}

export const META_FIELDS = ['txn', 'members', 'lastEntry', 'lastHist'] as const;

/** Decodes HMGET meta txn members lastEntry lastHist; undefined when the hash does not exist (an empty replica). */
export function decodeMeta(values: (string | null)[]): MetaRecord | undefined {
  const [txn, members, lastEntry, lastHist] = values;
  if (txn == null) return undefined;
  return { txn: Number(txn), members: members == null ? undefined : members.split(',').filter(Boolean), lastEntry: lastEntry ?? undefined, lastHist: lastHist ?? undefined };
}

/** Live stream entry fields, in the order appendMessages writes them: m f r a meta raw. */
export const LIVE_MSG_ID_INDEX = 1;

/** A live stream entry as the gateway reads it. */
export interface LiveEntry {
  from: string;
  to: string[];
  acceptedAt: number;
  meta: Record<string, unknown>;
  raw: Buffer;
}

/** Decodes a live stream entry's fields (m f r a meta raw: message id, sender, recipients JSON, accepted ms, meta JSON, body). */
export function decodeLiveEntry(fields: Buffer[]): LiveEntry {
  const f = new Map<string, Buffer>();
  for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i]!.toString(), fields[i + 1]!);
  return {
    from: f.get('f')?.toString() ?? '',
    to: JSON.parse(f.get('r')?.toString() ?? '[]') as string[],
    acceptedAt: Number(f.get('a')?.toString() ?? 0),
    meta: JSON.parse(f.get('meta')?.toString() ?? '{}') as Record<string, unknown>,
    raw: f.get('raw') ?? Buffer.alloc(0),
  };
}

/** One history stream entry: t kind, m message id, x txn, at ms, d details (JSON). */
export interface HistoryEntry {
  histId: string;
  kind: string;
  messageId: string;
  txn: number;
  at: number;
  /** The details as stored (JSON): what the event log writes, unparsed. */
  detailsJson: string;
  /** The details, parsed on first use. */
  readonly details: Record<string, unknown>;
}

export function decodeHistory([histId, f]: [string, string[]]): HistoryEntry {
  const get = (k: string) => f[f.indexOf(k) + 1]!;
  const detailsJson = get('d');
  let details: Record<string, unknown> | undefined;
  return {
    histId,
    kind: get('t'),
    messageId: get('m'),
    txn: Number(get('x')),
    at: Number(get('at')),
    detailsJson,
    get details() {
      return (details ??= JSON.parse(detailsJson) as Record<string, unknown>);
    },
  };
}


