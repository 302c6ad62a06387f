// Reads a sampling allocation profile (.heapprofile, as bench:smtp writes with
// BENCH_ALLOC_PROFILE) and prints where the bytes were allocated: the functions with the most
// bytes allocated by themselves, and their callers' chains, the heaviest first.
// Usage: node bench/lib/allocTop.ts FILE [N]
import { readFileSync } from 'node:fs';

interface Node {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: Node[];
}

const [file, n = '25'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/lib/allocTop.ts FILE.heapprofile [N]');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, 'utf8')) as { head: Node };
const name = (f: Node['callFrame']) => `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*?\/(src|bench)\//, '$1/')}:${f.lineNumber + 1}`;
const bySelf = new Map<string, number>();
const byStack = new Map<string, number>();
let total = 0;
const walk = (node: Node, stack: string[]) => {
  const here = name(node.callFrame);
  const path = [...stack, here];
  if (node.selfSize) {
    total += node.selfSize;
    bySelf.set(here, (bySelf.get(here) ?? 0) + node.selfSize);
    const key = path.slice(-6).join(' < ');
    byStack.set(key, (byStack.get(key) ?? 0) + node.selfSize);
  }
  for (const c of node.children) walk(c, path);
};
walk(profile.head, []);
const mb = (b: number) => `${(b / 1048576).toFixed(1)} MB`;
console.log(`allocated (sampled): ${mb(total)}`);
for (const [k, v] of [...bySelf].sort((a, b) => b[1] - a[1]).slice(0, Number(n))) console.log(`${mb(v).padStart(10)} ${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`);
console.log('\nheaviest chains (innermost first):');
for (const [k, v] of [...byStack].sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log(`${mb(v).padStart(10)}  ${k.split(' < ').reverse().join(' < ')}`);
