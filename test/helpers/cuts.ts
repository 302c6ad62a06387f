/**
 * Every way to cut `buf` into at most three pieces in order (empty ones left out), with the two
 * offsets of the cuts: a byte stream's data as TCP or a writer may deliver it.
 */
export function* everyCut(buf: Buffer): Generator<{ parts: Buffer[]; at: string }> {
  for (let i = 0; i <= buf.length; i++) {
    for (let j = i; j <= buf.length; j++) {
      yield { parts: [buf.subarray(0, i), buf.subarray(i, j), buf.subarray(j)].filter((p) => p.length), at: `${i}, ${j}` };
    }
  }
}

/** `buf` in pieces of `size` octets (the last one shorter), as large writes reach a reader. */
export function piecesOf(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < buf.length; at += size) out.push(buf.subarray(at, at + size));
  return out;
}
