// `npm test`: the whole suite against real servers. Installs what a clean machine lacks
// (redis-server, swaks, curl, openssl, docker-compose for `config -q`, haproxy for `haproxy -c`, chromium for the dashboard's
// browser tests, promtool (Debian's prometheus) for the alert rules, tmux for `streamgate top`, Java
// and Maven through apt-get as root; Cassandra's jars from Maven Central),
// starts one Cassandra node shared by every test file, runs node's test runner over test/, and
// stops the node. Arguments are passed on to the runner (`npm test -- test/queue`).
import { spawn } from 'node:child_process';
import { ensureTools } from '../src/services/tools.ts';
import { startTestCassandra } from '../test/helpers/cassandra.ts';

const say = (line) => console.error(`streamgate test: ${line}`);
try {
  ensureTools(['redis-server', 'java', 'mvn', 'swaks', 'curl', 'openssl', 'docker-compose', 'haproxy', 'chromium', 'promtool', 'tmux'], say);
} catch (err) {
  say(err.message);
  process.exit(1);
}

const args = process.argv.slice(2);
const files = args.filter((a) => !a.startsWith('-'));
const flags = args.filter((a) => a.startsWith('-'));
const targets = files.length ? files.map((f) => (f.endsWith('.ts') ? f : `${f.replace(/\/$/, '')}/**/*.test.ts`)) : ['test/**/*.test.ts'];

let cassandra;
if (!process.env.STREAMGATE_TEST_CASSANDRA) {
  const t0 = Date.now();
  say('starting a Cassandra node for this run');
  try {
    cassandra = await startTestCassandra();
  } catch (err) {
    say(`Cassandra did not start: ${err.message}`);
    process.exit(1);
  }
  process.env.STREAMGATE_TEST_CASSANDRA = cassandra.contactPoint;
  say(`Cassandra answers on ${cassandra.contactPoint} after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

const child = spawn(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=600000', ...flags, ...targets], { stdio: 'inherit', env: process.env });
const stop = async () => {
  if (cassandra) await cassandra.stop().catch(() => {});
};
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => child.kill(sig));
child.on('exit', async (code, signal) => {
  await stop();
  process.exit(code ?? (signal ? 1 : 0));
});
