// Classification of every delivery outcome: a reply (or a network error) becomes delivered,
// deferred or bounced. Rules from config/bounces.txt (reply pattern → class, first match wins)
// override the default by code: 2xx delivered, 4xx and network errors deferred, 5xx bounced.
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';

export type Status = 'delivered' | 'deferred' | 'bounced';

/** A reply from the destination, or a network error (code undefined, `error` set). */
export interface Reply {
  code?: number | undefined;
  enhanced?: string | undefined;
  text: string;
  /** Node/nodemailer error code (ECONNREFUSED, ETIMEDOUT, ...) when there was no SMTP reply. */
  error?: string | undefined;
}

export interface Classified {
  status: Status;
  /** The rule's category, or "ok" / "transient" / "permanent" / "network" by default. */
  category: string;
}

export interface BounceRule {
  status: Status;
  category: string;
  pattern: RegExp;
  /** "file:line", for messages. */
  source: string;
}

export class BounceRulesError extends Error {
  override name = 'BounceRulesError';
}

const STATUSES = new Set<Status>(['delivered', 'deferred', 'bounced']);

/** Parses bounces.txt: `<class> <category> <pattern>` per line, "#" comments, blank lines. */
export function parseRules(text: string, file = 'bounces.txt'): BounceRule[] {
  const rules: BounceRule[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    const trimmed = line.trim();
    if (!trimmed || trimmed.startsWith('#')) return;
    const m = /^(\S+)\s+(\S+)\s+(.+)$/.exec(trimmed);
    const where = `${file}:${i + 1}`;
    if (!m) throw new BounceRulesError(`${where}: expected "<class> <category> <pattern>", got ${JSON.stringify(trimmed)}`);
    const status = m[1]!.toLowerCase() as Status;
    if (!STATUSES.has(status)) throw new BounceRulesError(`${where}: expected a class of delivered, deferred or bounced, got ${JSON.stringify(m[1])}`);
    let pattern: RegExp;
    try {
      pattern = new RegExp(m[3]!, 'i');
    } catch (err) {
      throw new BounceRulesError(`${where}: expected a regular expression, got ${JSON.stringify(m[3])} (${(err as Error).message})`);
    }
    rules.push({ status, category: m[2]!, pattern, source: where });
  });
  return rules;
}

/** Splits an SMTP reply ("550-5.1.1 text\n550 5.1.1 more") into code, enhanced code and text. */
export function parseReply(response: string): Reply {
  const lines = response.split(/\r?\n/).filter(Boolean);
  const first = /^(\d{3})[ -]?(?:([245]\.\d{1,3}\.\d{1,3})\s+)?/.exec(lines[0] ?? '');
  if (!first) return { text: response.trim() };
  const text = lines.map((l) => l.replace(/^\d{3}[ -]?(?:[245]\.\d{1,3}\.\d{1,3}\s+)?/, '')).join(' ').trim();
  return { code: Number(first[1]), enhanced: first[2], text };
}

/** The reply as one line, the form rules are matched against: "550 5.1.1 No such user". */
export function replyLine(r: Reply): string {
  if (r.code === undefined) return `${r.error ?? 'ERROR'} ${r.text}`.trim();
  return [r.code, r.enhanced, r.text].filter((x) => x !== undefined && x !== '').join(' ');
}

export class Classifier {
  readonly rules: BounceRule[];
  constructor(rules: BounceRule[] = []) {
    this.rules = rules;
  }

  /** Reads the rules file; a relative path is tried against the working directory, then the install. */
  static fromFile(path: string): Classifier {
    return new Classifier(parseRules(readFileSync(locate(path), 'utf8'), path));
  }

  /** The first rule that matches, if any. */
  rule(reply: Reply): Classified | undefined {
    const line = replyLine(reply);
    for (const r of this.rules) if (r.pattern.test(line)) return { status: r.status, category: r.category };
    return undefined;
  }

  classify(reply: Reply): Classified {
    const hit = this.rule(reply);
    if (hit) return hit;
    if (reply.code === undefined) return { status: 'deferred', category: 'network' };
    if (reply.code >= 200 && reply.code < 300) return { status: 'delivered', category: 'ok' };
    if (reply.code >= 500) return { status: 'bounced', category: 'permanent' };
    return { status: 'deferred', category: 'transient' };
  }
}

function locate(path: string): string {
  if (isAbsolute(path) || existsSync(path)) return path;
  const installed = join(resolve(import.meta.dirname, '..', '..'), path);
  return existsSync(installed) ? installed : path;
}
