// src/relay/smtpClient.ts is the one place that reads nodemailer's internals. This test fails when
// the nodemailer installed is not the one the adapter was checked against: its version, and what
// the adapter relies on, on a real SMTP conversation: data refused after one recipient was refused
// at RCPT gives an EMESSAGE error without that refusal, and the adapter still finds it. And what
// the project's patch of it (patches/nodemailer+*.patch) promises: a message sent from memory
// leaves with its final "." in one write to the socket, where the library wrote them apart.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { rcptRefusals } from '../../src/relay/smtpClient.ts';
import { countSends } from '../helpers/sends.ts';
import { startSmtpSink, type SmtpSink } from '../helpers/smtpSink.ts';

const CHECKED = '10.6.0';

describe('nodemailer adapter (smtpClient.ts)', () => {
  let sink: SmtpSink;
  before(async () => {
    sink = await startSmtpSink({ hideStartTls: true });
  });
  after(() => sink.close());

  it('is pinned to the exact nodemailer version it was checked against, and that version is installed', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { dependencies: Record<string, string> };
    assert.equal(pkg.dependencies.nodemailer, CHECKED, 'package.json pins nodemailer to the version smtpClient.ts was checked against');
    const path = createRequire(import.meta.url).resolve('nodemailer/package.json');
    assert.equal((JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version, CHECKED, 'the installed nodemailer is the checked one');
  });

  it('finds the RCPT refusals of a transaction whose data was refused', async () => {
    sink.answer('gone@adapter.test', { code: 550, text: '5.1.1 no such user' });
    sink.dataAnswer = { code: 554, text: '5.6.0 content refused' };
    const smtp = new SMTPConnection({ host: sink.host, port: sink.port, ignoreTLS: true, logger: false });
    try {
      await new Promise<void>((resolve, reject) => {
        smtp.once('error', reject);
        smtp.connect(() => resolve());
      });
      const err = await new Promise<Error & { code?: string; rejectedErrors?: unknown[] }>((resolve) => {
        smtp.send({ from: 'a@adapter.test', to: ['ok@adapter.test', 'gone@adapter.test'] }, Buffer.from('Subject: x\r\n\r\nbody\r\n'), (e) => resolve(e as Error));
      });
      assert.equal(err.code, 'EMESSAGE', 'the data refused');
      assert.equal(err.rejectedErrors, undefined, 'the error itself does not carry the RCPT refusal (else the adapter is not needed)');
      const refusals = rcptRefusals(smtp);
      assert.deepEqual(
        refusals.map((r) => [r.recipient, r.responseCode]),
        [['gone@adapter.test', 550]],
      );
      assert.match(refusals[0]!.response ?? '', /^550 5\.1\.1 no such user/);
    } finally {
      sink.dataAnswer = undefined;
      smtp.close();
    }
  });

  it('writes a message held in memory and its final dot to the socket at once', async () => {
    const smtp = new SMTPConnection({ host: sink.host, port: sink.port, ignoreTLS: true, logger: false });
    try {
      await new Promise<void>((resolve, reject) => {
        smtp.once('error', reject);
        smtp.connect(() => resolve());
      });
      // what each system call of the socket carried
      const sent: string[] = [];
      countSends((smtp as unknown as { _socket: Socket })._socket, (bytes) => sent.push(bytes));
      const body = `Subject: one write\r\n\r\n${'.line\r\n'.repeat(200)}`;
      for (let i = 0; i < 2; i++) {
        await new Promise<void>((resolve, reject) => {
          smtp.send({ from: 'a@adapter.test', to: ['ok@adapter.test'] }, Buffer.from(body), (e) => (e ? reject(e) : resolve()));
        });
      }
      const withBody = sent.filter((w) => w.includes('Subject: one write'));
      assert.equal(withBody.length, 2, 'each message in one write');
      for (const w of withBody) assert.ok(w.endsWith('..line\r\n.\r\n'), 'the message, dot-stuffed, with its final dot in the same write');
      assert.ok(!sent.includes('.\r\n'), 'no write of the final dot alone');
      assert.equal(sink.messages.filter((m) => m.raw.toString().includes('Subject: one write')).length, 2, 'both delivered');
    } finally {
      smtp.close();
    }
  });
});
