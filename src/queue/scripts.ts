// Loads lua/: one script per file named `<name>-<numberOfKeys>.lua`, `--@include "x"` lines
// expanded once from lua/includes/x.lua, and registers each on an ioredis client with
// defineCommand (EVALSHA, falling back to EVAL when the node does not know the script yet).
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { corkForTurn } from '../net/turn.ts';

export const LUA_DIR = join(import.meta.dirname, '..', '..', 'lua');

export interface ScriptSource {
  name: string;
  numberOfKeys: number;
  lua: string;
}

let cache: ScriptSource[] | undefined;

export function loadScripts(dir = LUA_DIR): ScriptSource[] {
  if (cache && dir === LUA_DIR) return cache;
  const out: ScriptSource[] = [];
  for (const file of readdirSync(dir)) {
    const m = /^([A-Za-z]+)-(\d+)\.lua$/.exec(file);
    if (!m) continue;
    const body = readFileSync(join(dir, file), 'utf8');
    const lua = body.replace(/^--@include "([A-Za-z]+)"$/gm, (_, inc: string) => readFileSync(join(dir, 'includes', `${inc}.lua`), 'utf8'));
    out.push({ name: m[1]!, numberOfKeys: Number(m[2]), lua });
  }
  if (dir === LUA_DIR) cache = out;
  return out;
}

/** Registers every script on the client as a command named like the file (without the key count). */
export function defineScripts(client: Redis, dir = LUA_DIR): void {
  for (const s of loadScripts(dir)) {
    if (!(s.name in client)) client.defineCommand(s.name, { numberOfKeys: s.numberOfKeys, lua: s.lua });
  }
}

export type ScriptName = 'appendMessages' | 'takeMessages' | 'settleMessages' | 'deferMessage' | 'holdMessage' | 'markQueue' | 'trimHistory' | 'rebuildState' | 'liveIndex' | 'historyBlock' | 'claimQueue' | 'memberLease' | 'ownerEpoch' | 'queueOwner' | 'failureCount' | 'deadDestination' | 'markOnce' | 'rateLimit' | 'connectionLease';

export type ScriptArg = string | number | Buffer;

/**
 * Runs a script registered by defineScripts: its keys then its arguments, in the order its
 * header states; `buffers` asks for the reply's strings as Buffers (message bodies). The scripts
 * run in one turn of the event loop leave for the node in one write (corkForTurn()).
 */
export function runScript<T = unknown[]>(client: Redis, name: ScriptName, args: ScriptArg[], opts: { buffers?: boolean } = {}): Promise<T> {
  const fn = (client as unknown as Record<string, ((...a: ScriptArg[]) => Promise<T>) | undefined>)[opts.buffers ? `${name}Buffer` : name];
  if (!fn) throw new Error(`script ${name} is not defined on this client`);
  // the queue writes of one turn come from many callbacks (each SMTP session's end of data, each
  // delivery's reply, each batch): without this each was a write of its own to each replica, about
  // 1.3 system calls per message per replica under bench:relay, each waking the node's process
  if (client.stream) corkForTurn(client.stream);
  return fn.apply(client, args);
}
