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
