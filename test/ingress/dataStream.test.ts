// The end of DATA and the removal of escape dots, as smtp-server's stream parser does them (with
// the search patched in patches/smtp-server+*.patch), under every way TCP may cut the bytes: the
// message handed on and the commands read after it are the same as when the whole exchange is
// read at once, and the same as RFC 5321 4.5.2 says (the data ends at the first CRLF "." CRLF, or
// at once with a "." line first; a line's leading dot is taken off where two start it).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { everyCut, piecesOf } from '../helpers/cuts.ts';

/** What the exchange `wire` (DATA's content onwards) carries: the message, and the command lines after it. */
function reference(wire: string): { data: string; commands: string[] } {
  const end = wire.startsWith('.\r\n') ? -2 : wire.indexOf('\r\n.\r\n');
  assert.notEqual(end, -1, 'the test text has an end of data');
  const data = wire.slice(0, end + 2).replace(/^\.\./, '.').replace(/\n\.\./g, '\n.');
  const commands = wire.slice(end + 5).split('\r\n').slice(0, -1);
  return { data, commands };
}

/** Feeds `chunks` to the parser in data mode, one write each; the message and the command lines after it. */
async function feed(chunks: Buffer[]): Promise<{ data: string; commands: string[] }> {
  const s = new SMTPStream();
  const commands: string[] = [];
  s.oncommand = (cmd: Buffer, next: () => void) => {
    commands.push(cmd.toString('latin1'));
    next();
  };
  const ds = s.startDataMode();
  const got: Buffer[] = [];
  ds.on('data', (d: Buffer) => got.push(d));
  const ended = new Promise((resolve) => ds.once('end', resolve));
  for (const c of chunks) s.write(c);
  await ended;
  s.continue();
  await new Promise<void>((resolve) => s.end(resolve));
  return { data: Buffer.concat(got).toString('latin1'), commands };
}

const texts = [
  'Subject: a\r\n\r\nline\r\n.\r\nQUIT\r\n',
  '.\r\nNOOP\r\n',
  '..\r\n.\r\nNOOP\r\n',
  '..x\r\nnext\r\n.\r\nRSET\r\nQUIT\r\n',
  'a\r\n..\r\n...\r\n.x\r\n.\r\nQUIT\r\n',
  'a\r\n..\r\n.\r\nMAIL FROM:<x@y>\r\n',
  '\r\n.\r\nNOOP\r\n',
  'a\n..b\n.\r\nc\r\n.\r\nQUIT\r\n',
  'x\r\n.\n..\r\n.\r\n\r\n.\r\nNOOP\r\n',
  'dots.in.the.middle\r\n.end\r\n.\r\n.\r\nNOOP\r\n',
];

describe('end of DATA and escape dots under every cut', () => {
  it('matches RFC 5321 read at once', async () => {
    for (const text of texts) {
      assert.deepEqual(await feed([Buffer.from(text, 'latin1')]), reference(text), JSON.stringify(text));
    }
  });

  it('gives the same message and commands wherever the bytes are cut, in two or three writes', async () => {
    for (const text of texts) {
      const want = reference(text);
      const buf = Buffer.from(text, 'latin1');
      for (const { parts, at } of everyCut(buf)) assert.deepEqual(await feed(parts), want, `${JSON.stringify(text)} cut at ${at}`);
    }
  });

  it('finds the end in a long message as in a short one, escape dots far apart and across 64 KB writes', async () => {
    const line = `${'x'.repeat(70)}\r\n`;
    const body = `${line.repeat(3000)}..first\r\n${line.repeat(3000)}..second\r\n${line.repeat(10)}`;
    const text = `${body}.\r\nQUIT\r\n`;
    const got = await feed(piecesOf(Buffer.from(text, 'latin1'), 65_536));
    assert.deepEqual(got.commands, ['QUIT']);
    assert.equal(got.data, body.replace(/\n\.\./g, '\n.'));
  });
});
