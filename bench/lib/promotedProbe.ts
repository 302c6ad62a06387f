// Imported into the gateway's process (`node --import`) by bench:smtp with
// BENCH_PROMOTED_PROFILE=dir, in either mode: a sampling heap profile of the allocations that
// outlive the young generation. Those a scavenge frees are dropped from it; those promoted to the
// old generation stay, also once a mark-compact has freed them: what the scavenges copy and the
// mark-compacts collect. Written to dir/promoted-PID.heapprofile every 5 s (the profile so far);
// read it with `node bench/lib/allocTop.ts FILE`.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

const dir = process.env.BENCH_PROMOTED_PROFILE;
if (dir) {
  const session = new Session();
  session.connect();
  session.post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: false });
  setInterval(() => {
    session.post('HeapProfiler.getSamplingProfile', (err, res) => {
      if (!err) writeFileSync(join(dir, `promoted-${process.pid}.heapprofile`), JSON.stringify(res.profile));
    });
  }, 5000).unref();
}
