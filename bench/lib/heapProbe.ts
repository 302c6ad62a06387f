// Imported into the gateway's process (`node --import`) by bench:smtp, in either mode, when one of
// these is set to a directory; a sampling heap profile written there every 5 s (the profile so
// far), read with `node bench/lib/allocTop.ts FILE`:
//   BENCH_ALLOC_PROFILE=dir     every allocation, also those the GC collected since: where the
//                               per-message garbage comes from (alloc-PID.heapprofile)
//   BENCH_PROMOTED_PROFILE=dir  the allocations that outlive the young generation: those a scavenge
//                               frees are dropped, those promoted stay, also once a mark-compact has
//                               freed them: what the scavenges copy (promoted-PID.heapprofile)
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

const dir = process.env.BENCH_ALLOC_PROFILE ?? process.env.BENCH_PROMOTED_PROFILE;
if (dir) {
  const all = !!process.env.BENCH_ALLOC_PROFILE;
  const session = new Session();
  session.connect();
  session.post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: all });
  setInterval(() => {
    session.post('HeapProfiler.getSamplingProfile', (err, res) => {
      if (!err) writeFileSync(join(dir, `${all ? 'alloc' : 'promoted'}-${process.pid}.heapprofile`), JSON.stringify(res.profile));
    });
  }, 5000).unref();
}
