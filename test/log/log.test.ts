import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger } from '../../src/log.ts';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { lines, destination };
}

describe('logging', () => {
  it('writes JSON lines with component child loggers and redacts secrets and bodies', () => {
    const { lines, destination } = capture();
    const log = createLogger({ level: 'info', destination });
    const smtp = log.child({ component: 'smtp' }).child({ session: 's1' });
    smtp.info({ password: 'hunter2', auth: { password: 'x', user: 'anne' }, raw: 'Subject: secret', passwordHash: '$scrypt$...' }, 'auth failed');
    smtp.debug('not at info');
    assert.equal(lines.length, 1);
    const l = lines[0]!;
    assert.equal(l.msg, 'auth failed');
    assert.equal(l.component, 'smtp');
    assert.equal(l.session, 's1');
    assert.equal(l.password, '[redacted]');
    assert.equal(l.raw, '[redacted]');
    assert.equal(l.passwordHash, '[redacted]');
    assert.deepEqual(l.auth, { password: '[redacted]', user: 'anne' });
    assert.equal(typeof l.time, 'string');
  });
});
