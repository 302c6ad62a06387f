// Loads the one YAML configuration file, applies environment overrides and validates the result
// once. Every failure becomes a ConfigError whose message is one line naming the key, what was
// expected and what was given; the CLI turns it into exit status 2.
//
// Environment overrides: STREAMGATE_<KEY>__<KEY>... sets the option at that path, keys matched
// without regard to case; the value is read as YAML, so numbers, booleans and lists work:
//   STREAMGATE_SMTP__LISTEN=0.0.0.0:25   STREAMGATE_QUEUE__BLOCKSIZE=500
//   STREAMGATE_DOMAINS__LOCAL='[a.test, b.test]'   STREAMGATE_ROUTES__DEST.TEST=smtp://10.0.0.5:25
// STREAMGATE_CONFIG names the file itself when --config is not given; STREAMGATE_OPS_TOKEN (for the
// queue CLI) and STREAMGATE_DEBUG are not options.
import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { configSchema, type Config } from './schema.ts';

export class ConfigError extends Error {
  override name = 'ConfigError';
  readonly exitCode = 2;
}

const ENV_PREFIX = 'STREAMGATE_';
const ENV_RESERVED = new Set(['STREAMGATE_CONFIG', 'STREAMGATE_TEST_CASSANDRA', 'STREAMGATE_OPS_TOKEN', 'STREAMGATE_DEBUG']);

type Tree = Record<string, unknown>;
const isTree = (v: unknown): v is Tree => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The option tree with every default filled in: the catalogue of known key names. */
let defaultsCache: Tree | undefined;
function defaults(): Tree {
  defaultsCache ??= configSchema.parse({}) as unknown as Tree;
  return defaultsCache;
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  const s = JSON.stringify(value);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function formatIssue(issue: z.core.$ZodIssue, input: unknown): string {
  const path = issue.path.map(String).join('.') || '(top level)';
  switch (issue.code) {
    case 'unrecognized_keys':
      return `${[...issue.path.map(String), issue.keys[0]].join('.')}: unknown option (known here: ${knownKeys(issue.path).join(', ')})`;
    case 'invalid_type':
      return `${path}: expected ${issue.expected}, got ${describe(issue.input ?? valueAt(input, issue.path))}`;
    case 'invalid_union':
      return `${path}: expected one of its allowed forms, got ${describe(valueAt(input, issue.path))}`;
    case 'invalid_value':
      return `${path}: expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}, got ${describe(issue.input ?? valueAt(input, issue.path))}`;
    default: {
      const msg = issue.message.startsWith('expected') ? issue.message : `${issue.message}`;
      const given = issue.message.includes(', got ') ? '' : `, got ${describe(issue.input ?? valueAt(input, issue.path))}`;
      return `${path}: ${msg}${given}`;
    }
  }
}

function valueAt(tree: unknown, path: PropertyKey[]): unknown {
  let cur = tree;
  for (const k of path) cur = isTree(cur) || Array.isArray(cur) ? (cur as Tree)[k as string] : undefined;
  return cur;
}

function knownKeys(path: PropertyKey[]): string[] {
  const at = valueAt(defaults(), path);
  return isTree(at) ? Object.keys(at) : [];
}

/** Applies STREAMGATE_* variables to the raw tree (in place). */
export function applyEnv(raw: Tree, env: NodeJS.ProcessEnv): void {
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || ENV_RESERVED.has(name) || value === undefined) continue;
    const segments = name.slice(ENV_PREFIX.length).split('__');
    let node: Tree = raw;
    let known: unknown = defaults();
    for (const [i, seg] of segments.entries()) {
      const candidates = [...Object.keys(node), ...(isTree(known) ? Object.keys(known) : [])];
      const key = candidates.find((k) => k.toLowerCase() === seg.toLowerCase());
      const inOpenMap = isTree(known) && Object.keys(known).length === 0; // records: routes, windows, ...
      if (key === undefined && !inOpenMap) {
        throw new ConfigError(`${name}: unknown option ${segments.slice(0, i + 1).join('.').toLowerCase()}`);
      }
      const k = key ?? seg.toLowerCase();
      if (i === segments.length - 1) {
        node[k] = parseEnvValue(name, value);
      } else {
        if (!isTree(node[k])) node[k] = {};
        node = node[k] as Tree;
        known = isTree(known) ? known[k] : undefined;
      }
    }
  }
}

function parseEnvValue(name: string, value: string): unknown {
  try {
    return parseYaml(value);
  } catch (err) {
    throw new ConfigError(`${name}: expected a YAML value, got ${describe(value)} (${(err as Error).message.split('\n')[0]})`);
  }
}

/** A key left empty in YAML (`tls:`) means "not given": the default applies. */
function dropNulls(tree: unknown): unknown {
  if (Array.isArray(tree)) return tree.map(dropNulls);
  if (!isTree(tree)) return tree;
  const out: Tree = {};
  for (const [k, v] of Object.entries(tree)) if (v !== null) out[k] = dropNulls(v);
  return out;
}

/** Validates a raw tree; throws ConfigError with one line for the first problem. */
export function validateConfig(raw: unknown, source = 'configuration'): Config {
  const result = configSchema.safeParse(dropNulls(raw ?? {}), { reportInput: true });
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  throw new ConfigError(`${source}: ${formatIssue(issue, raw)}`);
}

export interface LoadOptions {
  path?: string | undefined;
  env?: NodeJS.ProcessEnv;
}

export function loadConfig(opts: LoadOptions = {}): { config: Config; path: string | undefined } {
  const env = opts.env ?? process.env;
  const path = opts.path ?? env.STREAMGATE_CONFIG;
  let raw: unknown = {};
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new ConfigError(`${path}: cannot read the configuration file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    try {
      raw = parseYaml(text) ?? {};
    } catch (err) {
      const e = err as YAMLParseError;
      throw new ConfigError(`${path}: not valid YAML: ${e.message.split('\n')[0]}`);
    }
    if (!isTree(raw)) throw new ConfigError(`${path}: expected a mapping of options at the top level, got ${describe(raw)}`);
  }
  applyEnv(raw as Tree, env);
  return { config: validateConfig(raw, path ?? 'configuration'), path };
}
