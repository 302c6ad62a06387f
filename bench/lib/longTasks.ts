// node bench/lib/longTasks.ts FILE.cpuprofile [MIN_MS] — the long tasks of a CPU profile (as
// `BENCH_PROFILE=dir` writes one): every stretch of consecutive samples that are not idle, longer
// than MIN_MS (default 5), with where its time went (self time by function, the top five). A task
// here is the event loop being busy without a break, so the list is what delays replies.
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, minArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/lib/longTasks.ts FILE.cpuprofile [MIN_MS]');
  process.exit(2);
}
const minMs = Number(minArg ?? 5);
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const label = (n: ProfileNode): string => {
  const f = n.callFrame;
  const where = f.url ? `${f.url.replace(/^.*\/(node_modules|src)\//, '$1/')}:${f.lineNumber + 1}` : '';
  return `${f.functionName || '(anonymous)'} ${where}`.trim();
};

interface Task {
  start: number;
  ms: number;
  self: Map<string, number>;
}
const tasks: Task[] = [];
let current: Task | undefined;
let t = 0;
let busyMs = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const dt = (profile.timeDeltas[i] ?? 0) / 1000;
  t += dt;
  const node = byId.get(profile.samples[i]!)!;
  if (node.callFrame.functionName === '(idle)') {
    if (current && current.ms >= minMs) tasks.push(current);
    current = undefined;
    continue;
  }
  busyMs += dt;
  current ??= { start: t, ms: 0, self: new Map() };
  current.ms += dt;
  const name = label(node);
  current.self.set(name, (current.self.get(name) ?? 0) + dt);
}
if (current && current.ms >= minMs) tasks.push(current);

const total = t;
console.log(`${file}: ${(total / 1000).toFixed(1)} s profiled, busy ${((100 * busyMs) / total).toFixed(1)}%, ${tasks.length} tasks of ${minMs} ms or more`);
// where the long tasks' time went, summed over all of them
const sum = new Map<string, number>();
for (const task of tasks) for (const [k, v] of task.self) sum.set(k, (sum.get(k) ?? 0) + v);
const longMs = tasks.reduce((a, b) => a + b.ms, 0);
console.log(`\nin all long tasks (${longMs.toFixed(0)} ms), self time by function:`);
for (const [k, v] of [...sum].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`  ${v.toFixed(1).padStart(8)} ms  ${((100 * v) / longMs).toFixed(1).padStart(5)}%  ${k}`);
console.log('\nthe longest:');
for (const task of [...tasks].sort((a, b) => b.ms - a.ms).slice(0, 10)) {
  const top = [...task.self].sort((a, b) => b[1] - a[1]).slice(0, 5);
  console.log(`  at ${(task.start / 1000).toFixed(3)} s: ${task.ms.toFixed(1)} ms  ${top.map(([k, v]) => `${k} ${v.toFixed(1)}`).join(' | ')}`);
}
