// Every id the gateway makes, with its encoder and decoder, in one place:
//   message ids     newMessageId() / timeOfMessageId(): 10 characters of accept time and 10 of
//                   randomness in Crockford base 32, sortable (a producer's job id may stand in);
//   stream ids      "ms-seq", the ids of live and history stream entries, chosen by the gateway
//                   (IdGen) so both replicas get the same ones: parseEntryId, compareIds, idAfter,
//                   lowestCursor;
//   event ids       eventId() / histIdOf(): `${gateway}/${domain}/${history id}`, a lifecycle
//                   event's id and its BullMQ job id.
// A submission (one SMTP transaction or producer job) is known by the message id its copies share.
import { randomBytes } from 'node:crypto';

// ---- message ids -------------------------------------------------------------------------------

const B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
/** Character code -> its value in B32 (either case), or -1. */
const B32_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < B32.length; i++) {
  B32_VALUE[B32.charCodeAt(i)] = i;
  B32_VALUE[B32.toLowerCase().charCodeAt(i)] = i;
}

// Random bytes are drawn from the system in blocks: one call per 409 ids, not one per id.
let pool = Buffer.alloc(0);
let poolAt = 0;

/** A sortable message id: 10 characters of time, 10 of randomness (Crockford base 32). */
export function newMessageId(now = Date.now()): string {
  let t = '';
  let n = now;
  for (let i = 0; i < 10; i++) {
    t = B32[n % 32] + t;
    n = Math.floor(n / 32);
  }
  if (poolAt + 10 > pool.length) {
    pool = randomBytes(4096);
    poolAt = 0;
  }
  let s = '';
  for (let i = 0; i < 10; i++) s += B32[pool[poolAt++]! & 31];
  return t + s;
}

/** The time encoded in the first 10 characters of a newMessageId(), or undefined. */
export function timeOfMessageId(id: string): number | undefined {
  if (id.length < 10) return undefined;
  let t = 0;
  for (let i = 0; i < 10; i++) {
    const c = id.charCodeAt(i);
    const v = c < 128 ? B32_VALUE[c]! : -1;
    if (v < 0) return undefined;
    t = t * 32 + v;
  }
  return t;
}

// ---- stream ids (live and history entries) -----------------------------------------------------

/** The [ms, seq] of a stream id "ms-seq". */
export const parseEntryId = (id: string): [number, number] => {
  const dash = id.indexOf('-');
  return [Number(id.slice(0, dash)), Number(id.slice(dash + 1))];
};

/** The number written in `id` from `from` to `to` (digits only), or NaN. */
function digitsAt(id: string, from: number, to: number): number {
  if (from >= to) return NaN;
  let v = 0;
  for (let i = from; i < to; i++) {
    const d = id.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return NaN;
    v = v * 10 + d;
  }
  return v;
}

/** The ms of a stream id "ms-seq", read in place (once per event archived); as parseEntryId() for any other form. */
export function msOfEntryId(id: string): number {
  const ms = digitsAt(id, 0, id.indexOf('-'));
  return Number.isNaN(ms) ? parseEntryId(id)[0] : ms;
}

/**
 * Orders two stream ids "ms-seq" (negative: a is lower). Called for every event (the publisher's
 * and the archive's cursors), so it reads the digits in place and allocates nothing; an id that is
 * not all digits around its dash is read as parseEntryId() reads it.
 */
export function compareIds(a: string, b: string): number {
  if (a === b) return 0;
  const da = a.indexOf('-');
  const db = b.indexOf('-');
  let am = digitsAt(a, 0, da);
  let as = digitsAt(a, da + 1, a.length);
  let bm = digitsAt(b, 0, db);
  let bs = digitsAt(b, db + 1, b.length);
  if (Number.isNaN(am + as + bm + bs)) [[am, as], [bm, bs]] = [parseEntryId(a), parseEntryId(b)];
  return am - bm || as - bs;
}

/** The lower of two positions a consumer has reached; undefined while either has none. */
export function lowestCursor(...ids: (string | undefined)[]): string | undefined {
  let low: string | undefined;
  for (const id of ids) {
    if (!id) return undefined;
    if (!low || compareIds(id, low) < 0) low = id;
  }
  return low;
}

/** The lowest stream id above `id`: the first one XTRIM MINID keeps when everything up to `id` may go. */
export function idAfter(id: string): string {
  const [ms, seq] = parseEntryId(id);
  return `${ms}-${seq + 1}`;
}

/** Strictly increasing stream ids "ms-seq" chosen by the gateway, identical on both replicas. */
export class IdGen {
  private ms: number;
  private seq: number;
  constructor(ms = 0, seq = -1) {
    this.ms = ms;
    this.seq = seq;
  }

  /** Continues after the highest of the given ids (absent ones ignored). */
  static after(...ids: (string | undefined)[]): IdGen {
    const g = new IdGen();
    for (const id of ids) if (id) g.advance(id);
    return g;
  }

  /** Moves past `id` if it is above the last id handed out. */
  advance(id: string): void {
    const [ms, seq] = parseEntryId(id);
    if (ms > this.ms || (ms === this.ms && seq > this.seq)) {
      this.ms = ms;
      this.seq = seq;
    }
  }

  /** Reserves `n` consecutive ids and returns the first. The clock going back never makes ids go back. */
  next(now: number, n = 1): string {
    if (now > this.ms) {
      this.ms = now;
      this.seq = -1;
    }
    const first = this.seq + 1;
    this.seq += n;
    return `${this.ms}-${first}`;
  }
}

// ---- event ids ---------------------------------------------------------------------------------

/**
 * The id of a lifecycle event: `${gateway}/${domain}/${history entry id}`, unique and stable;
 * consumers deduplicate on it, and it is the BullMQ job id, which may not contain ":". A domain is
 * written with every character outside letters, digits and `.-_[]` percent-encoded, so an
 * address literal such as `[ipv6:2001:db8::1]` becomes `[ipv6%3A2001%3Adb8%3A%3A1]`; a domain
 * name is unchanged. The gateway id has none of them (gateway.id).
 */
export function eventId(gateway: string, domain: string, histId: string): string {
  return `${gateway}/${domain.replace(/[^A-Za-z0-9._[\]-]/g, (c) => encodeURIComponent(c).replace(/[!'()*]/g, (x) => `%${x.charCodeAt(0).toString(16).toUpperCase()}`))}/${histId}`;
}

/** The history entry id ("ms-seq") at the end of an event id. */
export function histIdOf(eventId: string): string {
  return eventId.slice(eventId.lastIndexOf('/') + 1);
}

/** The destination domain an event id names (eventId(): the gateway id has no "/", the domain is percent-encoded). */
export function domainOfEventId(eventId: string): string {
  return decodeURIComponent(eventId.slice(eventId.indexOf('/') + 1, eventId.lastIndexOf('/')));
}
