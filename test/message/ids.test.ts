import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareIds, msOfEntryId, newMessageId, parseEntryId, timeOfMessageId } from '../../src/message/ids.ts';

/** The order of two stream ids as their numbers give it. */
const byNumbers = (a: string, b: string) => {
  const [am, as] = parseEntryId(a);
  const [bm, bs] = parseEntryId(b);
  return Math.sign(am - bm || as - bs);
};

test('compareIds orders stream ids by their numbers, whatever their lengths', () => {
  const ids = ['0-0', '0-1', '0-10', '9-0', '10-0', '10-2', '99-99', '100-0', '1764547200000-0', '1764547200000-9', '1764547200000-10', '1764547200001-0', '17645472000000-0'];
  for (const a of ids) for (const b of ids) assert.equal(Math.sign(compareIds(a, b)), byNumbers(a, b), `${a} against ${b}`);
  const shuffled = [...ids].reverse();
  assert.deepEqual(shuffled.sort(compareIds), ids);
});

test('compareIds agrees with the numbers on random ids', () => {
  for (let i = 0; i < 10_000; i++) {
    const id = () => `${Math.floor(Math.random() * 2 ** (Math.random() * 45))}-${Math.floor(Math.random() * 2 ** (Math.random() * 20))}`;
    const a = id();
    const b = Math.random() < 0.1 ? a : id();
    assert.equal(Math.sign(compareIds(a, b)), byNumbers(a, b), `${a} against ${b}`);
  }
});

test('compareIds reads an id that is not all digits as parseEntryId does', () => {
  for (const [a, b] of [['x-1', '2-1'], ['1-x', '1-2'], ['5', '6'], ['-1', '1-1'], ['1-2', '1-3']] as const) {
    const [am, as] = parseEntryId(a);
    const [bm, bs] = parseEntryId(b);
    assert.equal(compareIds(a, b), am - bm || as - bs, `${a} against ${b}`);
  }
});

test('msOfEntryId gives the ms parseEntryId gives, for stream ids and for any other string', () => {
  for (const id of ['0-0', '1764547200000-0', '1764547200000-42', '17645472000000-7', '5', '-1', 'x-1', '12x-3', '', '1-2-3']) {
    assert.equal(msOfEntryId(id), parseEntryId(id)[0], id);
  }
});

test('timeOfMessageId reads back the time of newMessageId, in either case, and refuses other ids', () => {
  for (const t of [0, 1, 946_684_800_000, 1_764_547_200_123, 7_258_118_399_999]) {
    const id = newMessageId(t);
    assert.equal(timeOfMessageId(id), t);
    assert.equal(timeOfMessageId(id.toLowerCase()), t);
  }
  assert.equal(timeOfMessageId('01KB2Z3U4V'), undefined, 'U is not in the alphabet');
  assert.equal(timeOfMessageId('job-123456789'), undefined);
  assert.equal(timeOfMessageId('0123é56789AB'), undefined);
  assert.equal(timeOfMessageId('short'), undefined);
});
