// Where a benchmark's own process spends its CPU, stage by stage: V8's sampling profiler (the
// inspector's Profiler domain, in this process's main thread) runs around a piece of work, and
// each sample is charged to the stage of the innermost frame on its stack that belongs to one
// (by the frame's source file: src/ingress → SMTP ingress, src/queue and ioredis → queue, …);
// Node's internals (streams, sockets, buffers) are charged to the stage that called them. GC and
// V8's own work are shown apart, idle time is left out.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}

export interface Profile {
  nodes: ProfileNode[];
  samples?: number[];
  timeDeltas?: number[];
}

/** Stage names by the source path they match, first match wins. */
const STAGES: [RegExp, string][] = [
  [/\/bench\/|\/nodemailer\/.*smtp-connection/, 'load generator'],
  [/\/src\/ingress\/|\/smtp-server\//, 'SMTP ingress'],
  [/\/src\/queue\/|\/ioredis\/|\/@ioredis\/|\/redis-parser\/|\/denque\/|\/standard-as-callback\//, 'queue (Redis replicas)'],
  [/\/src\/relay\/|\/p-queue\//, 'relay'],
  [/\/src\/mailbox\/delivery/, 'local delivery'],
  [/\/src\/mailbox\//, 'mailbox store'],
  [/\/cassandra-driver\//, 'Cassandra driver'],
  [/\/src\/pop3\//, 'POP3'],
  [/\/src\/events\/|\/bullmq\//, 'events'],
  [/\/src\//, 'other gateway code'],
];

function stageOf(node: ProfileNode): string | undefined {
  const { functionName, url } = node.callFrame;
  if (functionName === '(garbage collector)') return 'GC';
  if (functionName === '(idle)') return 'idle';
  if (functionName === '(program)') return 'V8 (compiler, runtime)';
  if (!url) return undefined;
  for (const [re, name] of STAGES) if (re.test(url)) return name;
  return undefined;
}

/** The profile's nodes by id, and each node's parent. */
function tree(profile: Profile): { byId: Map<number, ProfileNode>; parent: Map<number, number> } {
  const parent = new Map<number, number>();
  const byId = new Map<number, ProfileNode>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  return { byId, parent };
}

/** CPU milliseconds per stage in one profile, idle left out. */
export function stagesOf(profile: Profile): Map<string, number> {
  const { byId, parent } = tree(profile);
  const stage = new Map<number, string>();
  const resolve = (id: number): string => {
    const known = stage.get(id);
    if (known) return known;
    let s = stageOf(byId.get(id)!);
    if (!s) {
      const p = parent.get(id);
      s = p === undefined ? 'Node internals' : resolve(p);
    }
    stage.set(id, s);
    return s;
  };
  const out = new Map<string, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    // timeDeltas[i + 1] is the time from sample i to the next: the time sample i stands for
    const us = deltas[i + 1] ?? 0;
    const s = resolve(samples[i]!);
    if (s === 'idle') continue;
    out.set(s, (out.get(s) ?? 0) + us / 1000);
  }
  return out;
}

/**
 * The share of the profile's busy time (idle left out) whose stack holds a frame from a source
 * path matching `re` anywhere, not only innermost: all the work a part of the code started
 * synchronously. Work done later for it (replies parsed by the Redis client it called) is not
 * reached through the stack, so this is a lower bound of that part's cost.
 */
export function stackShare(profile: Profile, re: RegExp): number {
  const { byId, parent } = tree(profile);
  const hit = new Map<number, boolean>();
  const under = (id: number): boolean => {
    const known = hit.get(id);
    if (known !== undefined) return known;
    const p = parent.get(id);
    const h = re.test(byId.get(id)!.callFrame.url) || (p !== undefined && under(p));
    hit.set(id, h);
    return h;
  };
  let busy = 0;
  let mine = 0;
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const id = samples[i]!;
    if (byId.get(id)!.callFrame.functionName === '(idle)') continue;
    const us = deltas[i + 1] ?? 0;
    busy += us;
    if (under(id)) mine += us;
  }
  return busy ? mine / busy : 0;
}

/** A sampling profiler for this process's main thread. */
export class StageProfiler {
  private readonly session = new Session();
  private started = false;

  async start(): Promise<void> {
    if (!this.started) {
      this.session.connect();
      await this.session.post('Profiler.enable');
      await this.session.post('Profiler.setSamplingInterval', { interval: 1000 });
      this.started = true;
    }
    await this.session.post('Profiler.start');
  }

  /**
   * Stops sampling and returns ms per stage since start(); with `saveAs`, also writes the profile
   * there (a .cpuprofile for Chrome's DevTools or any profile viewer).
   */
  async stop(saveAs?: string): Promise<Map<string, number>> {
    return stagesOf(await this.stopProfile(saveAs));
  }

  /** Stops sampling and returns the profile itself (written to `saveAs` too, when given). */
  async stopProfile(saveAs?: string): Promise<Profile> {
    const { profile } = await this.session.post('Profiler.stop');
    if (saveAs) writeFileSync(saveAs, JSON.stringify(profile));
    return profile as Profile;
  }
}

/** "SMTP ingress 412 ms (31%), queue 300 ms (23%), …", largest first. */
export function formatStages(stages: Map<string, number>, per?: { unit: string; count: number }): string {
  const total = [...stages.values()].reduce((a, b) => a + b, 0);
  const parts = [...stages].sort((a, b) => b[1] - a[1]).map(([name, ms]) => {
    const share = total > 0 ? Math.round((100 * ms) / total) : 0;
    const perUnit = per && per.count > 0 ? `, ${(ms / per.count).toFixed(1)} ms/${per.unit}` : '';
    return `${name} ${ms.toFixed(0)} ms (${share}%${perUnit})`;
  });
  return `${total.toFixed(0)} ms in all: ${parts.join('; ')}`;
}
