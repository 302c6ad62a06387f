// The V8 flags of a gateway process (src/heap.ts): short-lived Buffers outside the heap (bodies,
// socket reads, the Cassandra driver's frames) no longer start a full mark-compact every 64 MB.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';

/** Major collections in a fresh process while 2 GB of 1 MB Buffers come and go, four alive at a time. */
function majorCollections(tuned: boolean): number {
  const heap = join(import.meta.dirname, '..', 'src', 'heap.ts');
  const script = `
    import { PerformanceObserver, constants } from 'node:perf_hooks';
    if (${tuned}) (await import(${JSON.stringify(heap)})).tuneHeap();
    let major = 0;
    new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) major++; }).observe({ entryTypes: ['gc'] });
    const alive = [];
    for (let i = 0; i < 2048; i++) {
      const b = Buffer.allocUnsafe(1024 * 1024);
      b[0] = i;
      alive.push(b);
      if (alive.length > 4) alive.shift();
      await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setTimeout(r, 50));
    process.stdout.write(String(major));`;
  return Number(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }));
}

test('a gateway process is not stopped for a full collection every 64 MB of short-lived Buffers', () => {
  const plain = majorCollections(false);
  const tuned = majorCollections(true);
  // one every 64 MB would be 32; a busy machine's timing moves both counts a little
  assert.ok(plain >= 12, `without the flags, the loop itself starts major collections (${plain})`);
  assert.ok(tuned * 4 <= plain, `with tuneHeap(): ${tuned} major collections, against ${plain} without`);
});
