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

/** One of `items` at random, each with its share (the shares add up to 1). */
export function pickWeighted<T>(items: readonly (readonly [T, number])[], rand: () => number): T {
  let target = rand();
  for (const [item, share] of items) if ((target -= share) < 0) return item;
  return items[0]![0];
}

/**
 * Key ids `key_000` … for synthetic usage, drawn with key i's share of the traffic proportional
 * to 1 / (i + 1)^0.8: a few busy keys, a long tail.
 */
export function skewedKeyPicker(keys: number, rand: () => number): () => string {
  const cumulative = Array.from({ length: keys }, (_, i) => 1 / (i + 1) ** 0.8).map(((sum) => (w: number) => (sum += w))(0));
  const total = cumulative.at(-1)!;
  return () => {
    const target = rand() * total;
    let low = 0;
    let high = keys - 1;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (cumulative[mid]! < target) low = mid + 1;
      else high = mid;
    }
    return `key_${String(low).padStart(3, '0')}`;
  };
}
