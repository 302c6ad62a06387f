// Where a benchmark's CPU goes, process by process, read from /proc (Linux): a process's own CPU
// seconds, a process tree's (its children's, dead ones included: reaped children's times count in
// their parent's), the pid listening on a loopback port, the children of a process, the machine.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** /proc/PID/stat's fields after the command name: [0] state, [1] ppid, … [11] utime, [12] stime, [13] cutime, [14] cstime. */
function statFields(pid: number | string): string[] | undefined {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** CPU seconds a process has used (utime + stime), 0 when it cannot be read. */
export function procCpu(pid: number | undefined): number {
  const f = pid ? statFields(pid) : undefined;
  return f ? (Number(f[11]) + Number(f[12])) / 100 : 0;
}

/** The pid listening on a loopback TCP port (ss), for the CPU breakdown. */
export function pidOnPort(port: number): number | undefined {
  try {
    const m = /pid=(\d+)/.exec(execFileSync('ss', ['-ltnpH', `sport = :${port}`]).toString());
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function allStats(): Map<number, string[]> {
  const stats = new Map<number, string[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const f = statFields(name);
    if (f) stats.set(Number(name), f);
  }
  return stats;
}

/** The live children of a process. */
export function childrenOf(pid: number): number[] {
  return [...allStats()].filter(([, f]) => Number(f[1]) === pid).map(([p]) => p);
}

/** CPU seconds of a process and all its descendants, dead ones included (reaped children's times count in their parent's). */
export function treeCpu(root: number | undefined): number {
  if (!root) return 0;
  const stats = allStats();
  const tree = new Set([root]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, f] of stats) {
      if (!tree.has(pid) && tree.has(Number(f[1]))) {
        tree.add(pid);
        grew = true;
      }
    }
  }
  let ticks = 0;
  for (const pid of tree) {
    const f = stats.get(pid);
    if (f) ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  }
  return ticks / 100;
}

/** CPU seconds the whole machine has used, all cores (user, nice, system, irq, softirq). */
export function machineCpu(): number {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]!) / 100;
  } catch {
    return 0; // not Linux
  }
}

const SHARED_POOL = /^(Native-Transpor|MutationStage|ReadStage|CounterMutation|ViewMutationSta|RequestResponse|SharedPool-Work|Mutation|Read).*$/;

/**
 * CPU seconds of each thread group of a process (/proc/PID/task/TID/stat), threads named alike
 * counted together: for Cassandra, "MutationStage", "Native-Transport-Requests",
 * "COMMIT-LOG-ALLOCATOR", "MemtableFlushWriter", "CompactionExecutor", the JVM's GC threads...
 */
export function threadCpu(pid: number | undefined): Map<string, number> {
  // Cassandra's shared-pool workers rename themselves after the stage they run at the moment
  // (a read, a mutation, a native-transport request): their CPU is counted under one name
  const out = new Map<string, number>();
  if (!pid) return out;
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const t of tasks) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const name = st.slice(st.indexOf('(') + 1, st.lastIndexOf(')')).replace(/[\s:#_-]*\d+$/, '').replace(/^(GC Thread|G1 Conc|G1 Refine|C[12] CompilerThre).*/, '$1').replace(SHARED_POOL, 'request stages');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      out.set(name, (out.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) / 100);
    } catch { /* ended meanwhile */ }
  }
  return out;
}

/** "MutationStage 0.41 s, ..." for the thread groups that used CPU between two threadCpu() readings, busiest first. */
export function threadCpuSince(before: Map<string, number>, after: Map<string, number>, top = 8): string {
  const d = [...after].map(([k, v]) => [k, v - (before.get(k) ?? 0)] as const).filter(([, v]) => v >= 0.01).sort((a, b) => b[1] - a[1]);
  const total = d.reduce((a, [, v]) => a + v, 0);
  return `${total.toFixed(2)} s: ${d.slice(0, top).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}${d.length > top ? ', …' : ''}`;
}
