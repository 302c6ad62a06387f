// Figures over several runs, for the benchmarks that repeat themselves (BENCH_RUNS).

/** The median of the numbers (NaN left out); of an even count the lower of the two middle ones; NaN when none. */
export function median(xs: number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)]! : NaN;
}
