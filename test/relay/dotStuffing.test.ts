// What the relay sends as DATA, as nodemailer's DataStream writes it: a dot that starts a line
// doubled, a bare CR or a bare LF made CRLF (a dot after a bare CR doubled too, so that no
// receiver can read "\r.\r" as the end), and the final "." line; the same bytes whatever the cuts
// between the writes. The project patches DataStream's scan (patches/nodemailer+*.patch: a
// regular expression finds where the rules apply, instead of a test of every byte), so these
// tests hold the patched scan to the rules; the unpatched library passes them too.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import DataStream from 'nodemailer/lib/smtp-connection/data-stream';
import { everyCut, piecesOf } from '../helpers/cuts.ts';

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

/** The rules above applied to the whole message at once, byte by byte. */
function reference(input: Buffer): Buffer {
  const out: number[] = [];
  let prev: number | undefined;
  for (const byte of input) {
    if (prev === CR && byte !== LF) out.push(...(byte === DOT ? [LF, DOT] : [LF]));
    else if (byte === LF && prev !== CR) out.push(CR);
    else if (byte === DOT && (prev === LF || prev === undefined)) out.push(DOT);
    out.push(byte);
    prev = byte;
  }
  const end = prev === LF ? '.\r\n' : prev === CR ? '\n.\r\n' : '\r\n.\r\n';
  return Buffer.concat([Buffer.from(out), Buffer.from(end)]);
}

/** The message written to a DataStream in `parts`, one write each; what it gives out. */
async function stuffed(parts: Buffer[]): Promise<Buffer> {
  const s = new DataStream();
  const out: Buffer[] = [];
  s.on('data', (d: Buffer) => out.push(d));
  const ended = new Promise((resolve) => s.once('end', resolve));
  for (const p of parts) s.write(p);
  s.end();
  await ended;
  return Buffer.concat(out);
}

const texts = [
  'Subject: a\r\n\r\nline\r\n.\r\n..\r\nend',
  '.starts\r\nwith a dot\r\n',
  'bare\nLF\n.dot after it\n',
  'bare\rCR\r.dot after it\r',
  'mixed\r\r\n\n\r.\n.\r\n.',
  '\r\n.\r\n',
  'no line end at all',
  '..\r\n...\r\n.\n.\r.',
  'x\r',
  '\n',
];

describe('dot-stuffing of the relay\'s DATA', () => {
  it('follows the rules for each whole message', async () => {
    for (const text of texts) {
      const buf = Buffer.from(text, 'latin1');
      assert.deepEqual((await stuffed([buf])).toString('latin1'), reference(buf).toString('latin1'), JSON.stringify(text));
    }
  });

  it('gives the same bytes wherever the message is cut, in two or three writes', async () => {
    for (const text of texts) {
      const buf = Buffer.from(text, 'latin1');
      const want = reference(buf).toString('latin1');
      for (const { parts, at } of everyCut(buf)) assert.equal((await stuffed(parts)).toString('latin1'), want, `${JSON.stringify(text)} cut at ${at}`);
    }
  });

  it('follows the rules for every message of up to 6 bytes of CR, LF, dot and a letter, whole and cut in two', async () => {
    const alphabet = [CR, LF, DOT, 0x61];
    let count = 0;
    for (let len = 0; len <= 6; len++) {
      for (let code = 0; code < alphabet.length ** len; code++) {
        const buf = Buffer.from(Array.from({ length: len }, (_, k) => alphabet[Math.floor(code / alphabet.length ** k) % alphabet.length]!));
        const want = reference(buf);
        for (let cut = 0; cut <= len; cut++) {
          const got = await stuffed([buf.subarray(0, cut), buf.subarray(cut)].filter((p) => p.length));
          if (!got.equals(want)) assert.fail(`${JSON.stringify(buf.toString('latin1'))} cut at ${cut}: ${JSON.stringify(got.toString('latin1'))}, want ${JSON.stringify(want.toString('latin1'))}`);
          count++;
        }
      }
    }
    assert.equal(count, 36_409); // sum over len 0..6 of 4^len * (len + 1)
  });

  it('stuffs a long message in 64 KB writes as at once', async () => {
    const line = `${'y'.repeat(60)}\r\n`;
    const buf = Buffer.from(`${line.repeat(2000)}.one\r\n${line.repeat(2000)}.two\n${line.repeat(5)}\r.three\r\n`, 'latin1');
    assert.ok((await stuffed(piecesOf(buf, 65_536))).equals(reference(buf)));
  });
});
