// SMTP delivery to one destination host: a pool of cached connections (nodemailer's
// SMTPConnection), each opened under a shared connection lease (limits.ts) and used for at most
// `messagesPerConnection` messages, closed after `idleTimeout` unused. A pool holding more than
// one connection asks every SHARE_CHECK_MS whether other gateway processes wait for the
// destination's leases, and closes what it holds beyond its fair share (idle connections at once,
// busy ones after their message), so one gateway that took every connection while alone does not
// keep the others' mail waiting until its own queue is empty. STARTTLS per policy:
// opportunistic by default (any certificate; plaintext when the upgrade fails), or required /
// verified. The envelope and the raw message go out unchanged (only SMTP dot-stuffing on the
// wire); every recipient gets its own result. Recipients refused with "too many recipients" are
// sent again at once in a new transaction on the same connection.
//
// Not nodemailer's pooled transport: its pool neither waits for a connection to be gone before
// opening the next one nor can take a lease shared with other gateways, and both are needed for
// a connection limit that holds across gateways.
import { isAscii } from 'node:buffer';
import { isIP } from 'node:net';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { Logger } from '../log.ts';
import type { RecipientResult } from '../message/types.ts';
import { parseReply, replyLine, type Classifier, type Reply } from './classify.ts';
import type { DestLimits, Lease, SharedLimits } from './limits.ts';
import { rcptRefusals } from './smtpClient.ts';

export type TlsMode = 'none' | 'opportunistic' | 'required' | 'verify';

export interface SmtpTarget {
  /** Host name (MX exchange or route host): SNI, certificate check, logs. */
  host: string;
  /** Addresses to connect to, in order. */
  addresses: string[];
  port: number;
  /** TLS from the first byte (smtps://). */
  secure: boolean;
  tls: TlsMode;
}

export interface PoolOptions {
  /** Our name in EHLO. */
  name: string;
  limits: DestLimits;
  leases: SharedLimits;
  classifier: Classifier;
  connectTimeout: number;
  greetingTimeout: number;
  socketTimeout: number;
  idleTimeout: number;
  log: Logger;
}

export interface RecipientOutcome extends RecipientResult {
  category: string;
}

export interface AttemptResult {
  /** False when no SMTP session could be had (refused, timed out, dropped): a dead-destination failure. */
  reached: boolean;
  results: RecipientOutcome[];
  /** "host[address]:port" that answered or was tried last. */
  mx: string;
  tls: boolean;
  /** The main reply (or error) of the attempt, one line. */
  reply: string;
}

interface Conn {
  smtp: SMTPConnection;
  lease: Lease;
  address: string;
  sent: number;
  ended: boolean;
  /** Close it after the message in progress (lease lapsed, over the fair share, pool closing). */
  retire: boolean;
  idle?: NodeJS.Timeout | undefined;
  renew?: NodeJS.Timeout | undefined;
}

interface SmtpError extends Error {
  code?: string;
  originalCode?: string;
  response?: string;
  responseCode?: number;
  command?: string;
  recipient?: string;
  rejected?: string[];
  rejectedErrors?: SmtpError[];
}

/** Thrown by acquire/send when no SMTP session exists: the whole attempt is a network failure. */
class NetworkError extends Error {
  readonly smtpError: SmtpError;
  readonly address: string;
  constructor(cause: SmtpError, address: string) {
    super(cause.message);
    this.smtpError = cause;
    this.address = address;
  }
}

const MAX_SPLITS = 50;
/** How often a pool of more than one connection compares what it holds with its fair share. */
const SHARE_CHECK_MS = 250;
const EIGHT_BIT = (raw: Buffer) => !isAscii(raw);

export class SmtpPool {
  readonly target: SmtpTarget;
  private readonly opts: PoolOptions;
  private readonly idle: Conn[] = [];
  /** Every connection up, idle or busy. */
  private readonly live = new Set<Conn>();
  private shareCheck: NodeJS.Timeout | undefined;
  /** Acquisitions waiting for a shared lease: one is called off when a connection of this pool goes idle. */
  private readonly leaseWaits = new Set<AbortController>();
  private open = 0;
  private readonly waiters: (() => void)[] = [];
  private closing = false;
  /** Set when a TLS handshake failed under the opportunistic policy: plaintext for a while. */
  private plainUntil = 0;
  private readonly log: Logger;
  private readonly nmLogger: unknown;

  constructor(target: SmtpTarget, opts: PoolOptions) {
    this.target = target;
    this.opts = opts;
    this.log = opts.log.child({ mx: `${target.host}:${target.port}` });
    this.nmLogger = this.log.isLevelEnabled('debug') ? nodemailerLogger(this.log) : false;
  }

  get connections(): number {
    return this.open;
  }

  /** Updates the addresses (a new DNS answer) for connections opened from now on. */
  setAddresses(addresses: string[]): void {
    this.target.addresses = addresses;
  }

  /** One delivery attempt of one message to its recipients through this host. */
  async send(envelope: { from: string; to: string[] }, raw: Buffer, signal?: AbortSignal): Promise<AttemptResult> {
    for (let tries = 0; ; tries++) {
      let conn: Conn;
      try {
        conn = await this.acquire(signal);
      } catch (err) {
        if (err instanceof NetworkError) return this.networkResult(err.smtpError, `${this.target.host}[${err.address}]:${this.target.port}`, envelope.to);
        throw err; // aborted
      }
      const mx = `${this.target.host}[${conn.address}]:${this.target.port}`;
      const reused = conn.sent > 0;
      try {
        const { results, reply } = await this.transaction(conn, envelope, raw);
        conn.sent++;
        this.release(conn);
        return { reached: true, results, mx, tls: conn.smtp.secure, reply };
      } catch (err) {
        this.destroy(conn);
        const e = err instanceof NetworkError ? err.smtpError : (err as SmtpError);
        // A cached connection the server had closed meanwhile: try once more on a fresh one.
        if (reused && tries === 0 && !e.responseCode) continue;
        return this.networkResult(e, mx, envelope.to);
      }
    }
  }

  private networkResult(e: SmtpError, mx: string, rcpts: string[]): AttemptResult {
    const reply: Reply = e.responseCode ? { ...parseReply(e.response ?? ''), error: e.code } : { error: e.originalCode ?? e.code ?? 'ERROR', text: e.message };
    // No session: deferred, unless a rule in bounces.txt says otherwise (never delivered).
    const rule = this.opts.classifier.rule(reply);
    const status = rule && rule.status !== 'delivered' ? rule.status : 'deferred';
    const text = replyLine(reply);
    return {
      reached: false,
      mx,
      tls: false,
      reply: text,
      results: rcpts.map((rcpt) => ({ rcpt, status, code: reply.code, enhanced: reply.enhanced, text, category: rule?.category ?? 'network' })),
    };
  }

  // ---- one message on one connection ----------------------------------------------------------

  private async transaction(conn: Conn, envelope: { from: string; to: string[] }, raw: Buffer): Promise<{ results: RecipientOutcome[]; reply: string }> {
    const done = new Map<string, RecipientOutcome>();
    let pending = envelope.to;
    let mainReply = '';
    for (let round = 0; pending.length && round < MAX_SPLITS; round++) {
      const r = await this.sendOnce(conn, { from: envelope.from, to: pending }, raw);
      mainReply ||= r.reply;
      const split: string[] = [];
      for (const o of r.outcomes) {
        if (o.category === 'too-many-recipients' && r.accepted > 0) split.push(o.rcpt);
        else done.set(o.rcpt, o);
      }
      pending = split;
      if (r.needsReset) await this.reset(conn);
    }
    for (const rcpt of pending) done.set(rcpt, { rcpt, status: 'deferred', code: 452, enhanced: '4.5.3', text: 'too many recipients (split limit reached)', category: 'too-many-recipients' });
    return { results: envelope.to.map((rcpt) => done.get(rcpt)!), reply: mainReply };
  }

  private sendOnce(conn: Conn, envelope: { from: string; to: string[] }, raw: Buffer): Promise<{ outcomes: RecipientOutcome[]; accepted: number; reply: string; needsReset: boolean }> {
    const classify = (response: string, rcpt: string): RecipientOutcome => {
      const reply = parseReply(response);
      const c = this.opts.classifier.classify(reply);
      return { rcpt, status: c.status, code: reply.code, enhanced: reply.enhanced, text: reply.text, category: c.category };
    };
    return new Promise((resolve, reject) => {
      conn.smtp.send({ from: envelope.from || false, to: envelope.to, size: raw.length, use8BitMime: EIGHT_BIT(raw) }, raw, (err, info) => {
        if (!err && info) {
          const rejected = new Map((info.rejectedErrors ?? []).map((e) => [(e as SmtpError).recipient ?? '', e as SmtpError]));
          const outcomes = envelope.to.map((rcpt) => {
            const rej = rejected.get(rcpt);
            return rej ? classify(rej.response ?? '', rcpt) : classify(info.response, rcpt);
          });
          resolve({ outcomes, accepted: info.accepted.length, reply: replyLine(parseReply(info.response)), needsReset: false });
          return;
        }
        const e = err as SmtpError;
        if ((e.code === 'EENVELOPE' || e.code === 'EMESSAGE') && (e.response || e.rejectedErrors?.length)) {
          // EMESSAGE (the data refused) carries no RCPT rejections: the adapter reads them (smtpClient.ts).
          const own = e.rejectedErrors ?? rcptRefusals(conn.smtp);
          const perRcpt = new Map(own.map((x) => [x.recipient ?? '', x]));
          const outcomes = envelope.to.map((rcpt) => {
            const mine = perRcpt.get(rcpt);
            return classify(mine?.response ?? e.response ?? '', rcpt);
          });
          resolve({ outcomes, accepted: 0, reply: replyLine(parseReply(e.response ?? e.rejectedErrors?.[0]?.response ?? '')), needsReset: e.code === 'EENVELOPE' });
          return;
        }
        reject(new NetworkError(e, conn.address));
      });
    });
  }

  private reset(conn: Conn): Promise<void> {
    return new Promise((resolve) => {
      if (conn.ended) return resolve();
      conn.smtp.reset((err) => {
        if (err) conn.retire = true;
        resolve();
      });
    });
  }

  // ---- the pool -------------------------------------------------------------------------------

  private async acquire(signal?: AbortSignal): Promise<Conn> {
    for (;;) {
      signal?.throwIfAborted();
      if (this.closing) throw new Error('pool closing');
      const c = this.idle.pop();
      if (c) {
        clearTimeout(c.idle);
        if (!c.ended) return c;
        continue;
      }
      // one lease is asked for at a time: while it waits (every one held, or this gateway at its
      // fair share) the other messages wait here for a connection, rather than each asking the
      // pool's nodes every LEASE_POLL; a connection of this pool that goes idle calls the wait
      // off, and the message takes it
      if (this.open < this.opts.limits.connections && !this.leaseWaits.size) {
        this.open++;
        let lease: Lease;
        const wait = new AbortController();
        const abort = () => wait.abort();
        signal?.addEventListener('abort', abort, { once: true });
        this.leaseWaits.add(wait);
        try {
          lease = await this.opts.leases.acquireLease(this.opts.limits.key, this.opts.limits.connections, wait.signal);
        } catch (err) {
          this.gone();
          if (wait.signal.aborted && !signal?.aborted) continue;
          throw err;
        } finally {
          this.leaseWaits.delete(wait);
          signal?.removeEventListener('abort', abort);
          this.waiters.shift()?.(); // the next may ask for a lease now
        }
        try {
          return await this.connect(lease);
        } catch (err) {
          await this.opts.leases.releaseLease(lease);
          this.gone();
          throw err;
        }
      }
      await new Promise<void>((resolve) => {
        const wake = () => {
          signal?.removeEventListener('abort', wake);
          resolve();
        };
        this.waiters.push(wake);
        signal?.addEventListener('abort', wake, { once: true });
      });
    }
  }

  private gone(): void {
    this.open--;
    this.waiters.shift()?.();
  }

  private async connect(lease: Lease): Promise<Conn> {
    const t = this.target;
    const mode: TlsMode = t.tls === 'opportunistic' && Date.now() < this.plainUntil ? 'none' : t.tls;
    let last: NetworkError | undefined;
    for (const address of t.addresses) {
      const servername = isIP(t.host) ? undefined : t.host;
      const smtp = new SMTPConnection({
        host: address,
        port: t.port,
        secure: t.secure,
        servername,
        name: this.opts.name,
        connectionTimeout: this.opts.connectTimeout,
        greetingTimeout: this.opts.greetingTimeout,
        socketTimeout: this.opts.socketTimeout,
        ignoreTLS: mode === 'none',
        requireTLS: mode === 'required' || mode === 'verify',
        opportunisticTLS: mode === 'opportunistic',
        tls: { rejectUnauthorized: mode === 'verify', servername },
        logger: this.nmLogger as false,
      });
      try {
        await new Promise<void>((resolve, reject) => {
          smtp.once('error', reject);
          // a close before the greeting comes to this callback as its argument, not as 'error'
          smtp.connect((err?: Error) => {
            smtp.removeListener('error', reject);
            if (err) reject(err);
            else resolve();
          });
        });
      } catch (err) {
        smtp.close();
        const e = err as SmtpError;
        last = new NetworkError(e, address);
        if (e.code === 'ETLS' && t.tls === 'opportunistic' && mode === 'opportunistic') {
          this.plainUntil = Date.now() + 3_600_000;
          this.log.warn({ address, err: e.message }, 'TLS failed, plaintext for an hour (opportunistic)');
          return this.connect(lease);
        }
        this.log.debug({ address, err: e.message, code: e.originalCode ?? e.code }, 'connect failed');
        continue;
      }
      const conn: Conn = { smtp, lease, address, sent: 0, ended: false, retire: false };
      this.live.add(conn);
      smtp.on('error', (err: Error) => this.log.debug({ address, err: err.message }, 'connection error'));
      smtp.once('end', () => {
        conn.ended = true;
        this.live.delete(conn);
        clearTimeout(conn.idle);
        clearInterval(conn.renew);
        const i = this.idle.indexOf(conn);
        if (i >= 0) this.idle.splice(i, 1);
        void this.opts.leases.releaseLease(conn.lease).finally(() => this.gone());
      });
      if (lease.shared) {
        conn.renew = setInterval(() => {
          void this.opts.leases.renewLease(lease, this.opts.limits.connections).then((ok) => {
            if (!ok) conn.retire = true;
          });
        }, Math.max(100, Math.floor(this.opts.leases.leaseMsValue / 3)));
        conn.renew.unref();
        this.watchShare();
      }
      this.log.debug({ address, tls: smtp.secure }, 'connected');
      return conn;
    }
    throw last ?? new NetworkError(Object.assign(new Error(`no address for ${t.host}`), { code: 'EDNS' }), '');
  }

  /** Checks the fair share every SHARE_CHECK_MS while the pool holds more than one shared lease. */
  private watchShare(): void {
    if (this.shareCheck || this.live.size < 2) return;
    this.shareCheck = setTimeout(() => {
      this.shareCheck = undefined;
      void this.giveBackExcess().finally(() => {
        if (!this.closing) this.watchShare();
      });
    }, SHARE_CHECK_MS);
    this.shareCheck.unref();
  }

  /** Closes the connections held beyond the fair share: idle ones now, busy ones after their message. */
  private async giveBackExcess(): Promise<void> {
    const excess = await this.opts.leases.excessLeases(this.opts.limits.key, this.opts.limits.connections).catch(() => 0);
    let n = excess - [...this.live].filter((c) => c.retire).length;
    if (n <= 0) return;
    this.log.debug({ excess }, 'over the fair share of the destination\'s connections: closing some');
    for (const c of this.idle.splice(0, n)) {
      clearTimeout(c.idle);
      c.retire = true;
      c.smtp.quit();
      n--;
    }
    for (const c of this.live) {
      if (n <= 0) break;
      if (c.retire || !c.lease.shared) continue;
      c.retire = true;
      n--;
    }
  }

  private release(conn: Conn): void {
    if (conn.ended) return;
    if (this.closing || conn.retire || conn.sent >= this.opts.limits.messagesPerConnection) {
      conn.smtp.quit();
      return;
    }
    const waiter = this.waiters.shift();
    this.idle.push(conn);
    conn.idle = setTimeout(() => {
      const i = this.idle.indexOf(conn);
      if (i >= 0) this.idle.splice(i, 1);
      conn.smtp.quit();
    }, this.opts.idleTimeout);
    conn.idle.unref();
    if (waiter) return waiter();
    if (!this.leaseWaits.size) return; // the common case: nobody waits for a lease
    const [leaseWait] = this.leaseWaits;
    this.leaseWaits.delete(leaseWait!);
    leaseWait!.abort();
  }

  private destroy(conn: Conn): void {
    if (!conn.ended) conn.smtp.close();
  }

  /** Closes every connection (QUIT), waiting for them to be gone for up to `waitMs`. */
  async close(waitMs = 5000): Promise<void> {
    this.closing = true;
    clearTimeout(this.shareCheck);
    for (const c of this.idle.splice(0)) {
      clearTimeout(c.idle);
      c.smtp.quit();
    }
    for (const w of this.waiters.splice(0)) w();
    const deadline = Date.now() + waitMs;
    while (this.open > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }
}

/** nodemailer's bunyan-style logger calls, at debug level on our logger. */
function nodemailerLogger(log: Logger) {
  const at = (level: 'debug' | 'trace') => (obj: object, msg: string, ...args: unknown[]) => {
    let i = 0;
    log[level]({ ...obj }, String(msg).replace(/%[sdj]/g, () => String(args[i++])));
  };
  return { trace: at('trace'), debug: at('trace'), info: at('debug'), warn: at('debug'), error: at('debug'), fatal: at('debug') };
}
