/** Seeded randomness for tests and benchmarks (no vitest import, so a benchmark can use it too). */

/** mulberry32: a small seeded PRNG, so every run sees the same cases and a failure replays. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `count` request end times between `start` and `start + days` days, more by day than by night
 * (UTC), in time order as a gateway records them: the benchmarks' synthetic usage.
 */
export function diurnalTimestamps(count: number, start: number, days: number, rand: () => number): Float64Array {
  const DAY = 86_400_000;
  const all = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    let ts: number;
    do ts = start + Math.floor(rand() * days * DAY);
    while (rand() > 0.55 + 0.45 * Math.sin(((ts % DAY) / DAY) * 2 * Math.PI));
    all[i] = ts;
  }
  return all.sort();
}
