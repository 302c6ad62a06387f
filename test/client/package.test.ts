// The client as applications get it: types that catch a wrong job at compile time (the examples
// compile, a job with a wrong field does not), and `streamgate/client` resolved through the
// package's exports (compiled JavaScript and its .d.ts), as in a project that depends on streamgate.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { after, describe, it } from 'node:test';
import { buildCli, install, ROOT, runCommand, type Installed } from '../helpers/cli.ts';

const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

/** Runs tsc; returns its output and whether it passed. */
function tsc(args: string[], cwd: string): { ok: boolean; out: string } {
  try {
    return { ok: true, out: execFileSync(process.execPath, [TSC, ...args], { cwd, encoding: 'utf8' }) };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

// A job with a recipient list that is a number, and a misspelt field of a composed message.
const WRONG = (from: string) => `import { connect, type ProducerJob } from '${from}';
const client = connect({ connection: 'redis://127.0.0.1:6379' });
export const bad: ProducerJob = { from: 'billing@example.com', to: 42, raw: 'Subject: x\\n\\nx\\n' };
export const misspelt = () => client.submit({ from: '', to: ['a@example.com'], message: { subjct: 'Invoice' } }, { id: 'inv-1' });
`;

describe('the client module for applications', () => {
  const dirs: string[] = [];
  let installed: Installed | undefined;
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    installed?.remove();
  });

  it('the examples compile, and a wrong job in one is a compile-time error naming the field', () => {
    // under node_modules so that tsc finds the project's @types as from the examples themselves
    const base = join(ROOT, 'node_modules', '.cache');
    mkdirSync(base, { recursive: true });
    const dir = mkdtempSync(join(base, 'sg-typecheck-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'wrong-job.ts'), WRONG(relative(dir, join(ROOT, 'src', 'client', 'index.ts'))));
    const files = [join(ROOT, 'examples', 'billing-producer.ts'), join(ROOT, 'examples', 'notification-consumer.ts'), join(dir, 'wrong-job.ts')];
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ extends: join(ROOT, 'tsconfig.json'), files, include: [] }));
    const r = tsc(['-p', join(dir, 'tsconfig.json'), '--noEmit', '--pretty', 'false'], dir);
    assert.equal(r.ok, false, 'the wrong job must not compile');
    const errors = r.out.split('\n').filter((l) => / error TS\d+/.test(l));
    assert.ok(errors.every((l) => l.includes('wrong-job.ts')), `only the wrong job fails:\n${r.out}`);
    assert.ok(errors.some((l) => /wrong-job\.ts\(3,\d+\): error TS2322: Type 'number' is not assignable to type 'string\[\]'/.test(l)), r.out);
    assert.ok(errors.some((l) => /wrong-job\.ts\(4,\d+\): error TS(2353|2561): .*'subjct' does not exist/.test(l)), r.out);
  });

  it('`streamgate/client` resolves through the package exports to compiled code and its types', async () => {
    buildCli();
    installed = install('local');
    const dir = installed.dir;
    writeFileSync(join(dir, 'use.mjs'), "const c = await import('streamgate/client'); console.log(JSON.stringify({ connect: typeof c.connect, submit: typeof c.StreamgateClient.prototype.submit, kinds: c.LIFECYCLE_KINDS, job: c.jobSchema.safeParse({ from: '', to: ['a@b.test'], raw: 'x' }).success }));\n");
    const r = await runCommand(process.execPath, ['use.mjs'], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { connect: string; submit: string; kinds: string[]; job: boolean };
    assert.deepEqual(out, { connect: 'function', submit: 'function', kinds: ['accepted', 'attempted', 'deferred', 'requeued', 'delivered', 'bounced', 'expired', 'held', 'released', 'purged', 'withdrawn', 'recovered', 'flushed', 'suspended', 'resumed', 'unpurged', 'rebuilt', 'adopted'], job: true });
    // the types come with it: an application's tsc sees the job type through the same export
    writeFileSync(join(dir, 'app.ts'), WRONG('streamgate/client'));
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2024', strict: true, noEmit: true, skipLibCheck: true, types: [] }, files: ['app.ts'] }));
    const t = tsc(['-p', 'tsconfig.json', '--pretty', 'false'], dir);
    assert.equal(t.ok, false);
    assert.doesNotMatch(t.out, /TS2307|Cannot find module/, t.out);
    assert.match(t.out, /app\.ts\(3,\d+\): error TS2322: Type 'number' is not assignable to type 'string\[\]'/);
  });
});
