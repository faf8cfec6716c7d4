/**
 * The dashboard's overview (data.ts `Overview`): requests, tokens by kind, cost, cache hits and
 * what they saved, failures by kind and latency percentiles, per minute, hour or day over the
 * last hour, day, week or month, and over the whole range.
 *
 * One store call (`usageSeries`) gives every period's sums per model, already split by error
 * kind and with its latency histogram; the store reads its rollups for whole days and hours and
 * raw rows only for the hour in progress (the last-hour range reads raw rows: one hour of them).
 * Here the models are priced and added up, empty periods filled in, and percentiles estimated
 * from the merged histograms. The range starts on a period boundary, so that every point but the
 * last (the period in progress) is a whole period, comparable with its neighbours.
 */
import type { ModelCatalog } from '../catalog.ts';
import {
  ERROR_KINDS, LATENCY_BOUNDS_MS, type ErrorKind, type SeriesBucket, type UsageFilter, type UsageSeriesRow, type UsageStore,
} from '../store/types.ts';
import type { Overview, OverviewPoint, OverviewRange } from './data.ts';

const MINUTE_MS = 60_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;

/** Each range: how far back it reaches, and the period of its points. */
export const OVERVIEW_RANGES: Record<OverviewRange, { spanMs: number; bucket: SeriesBucket }> = {
  hour: { spanMs: HOUR_MS, bucket: 'minute' },
  day: { spanMs: DAY_MS, bucket: 'hour' },
  week: { spanMs: 7 * DAY_MS, bucket: 'day' },
  month: { spanMs: 30 * DAY_MS, bucket: 'day' },
};

const BUCKET_MS: Record<SeriesBucket, number> = { minute: MINUTE_MS, hour: HOUR_MS, day: DAY_MS };

/**
 * The latency below which a fraction `q` (0..1) of a histogram's requests fall (ms), assuming
 * latencies spread evenly inside each bucket (from the bucket's lower bound, 0 for the first, to
 * its upper bound); for the bucket above the last bound, that bound, all that is known of it.
 * Null for an empty histogram. The histogram is counts per bucket of LATENCY_BOUNDS_MS, then one.
 */
export function latencyPercentile(histogram: readonly number[], q: number): number | null {
  const total = histogram.reduce((sum, n) => sum + n, 0);
  if (total <= 0) return null;
  const rank = q * total;
  let below = 0;
  for (const [i, count] of histogram.entries()) {
    if (count > 0 && below + count >= rank) {
      const lower = i === 0 ? 0 : LATENCY_BOUNDS_MS[i - 1]!;
      const upper = LATENCY_BOUNDS_MS[i];
      if (upper === undefined) return lower;
      return lower + ((upper - lower) * (rank - below)) / count;
    }
    below += count;
  }
  return LATENCY_BOUNDS_MS.at(-1)!; // not reached: the last non-empty bucket holds the rank
}

/** A point's sums while they are added up: the point, and its merged histogram. */
interface Accumulator {
  point: OverviewPoint;
  errors: Record<ErrorKind, number>;
  latency: number[];
}

function accumulator(t: number): Accumulator {
  return {
    point: {
      t, requests: 0, errors: {}, tokens: { input: 0, output: 0, cache_creation: 0, cache_read: 0 }, costUsd: 0, cacheHits: 0,
      savedTokens: 0, p50Ms: null, p95Ms: null,
    },
    errors: Object.fromEntries(ERROR_KINDS.map((kind) => [kind, 0])) as Record<ErrorKind, number>,
    latency: new Array<number>(LATENCY_BOUNDS_MS.length + 1).fill(0),
  };
}

function add(target: Accumulator, row: UsageSeriesRow, cost: number): void {
  const { point } = target;
  point.requests += row.requests;
  point.tokens.input += row.inputTokens;
  point.tokens.output += row.outputTokens;
  point.tokens.cache_creation += row.cacheCreationTokens;
  point.tokens.cache_read += row.cacheReadTokens;
  point.costUsd += cost;
  point.cacheHits += row.cachedRequests;
  point.savedTokens += row.savedTokens;
  for (const kind of ERROR_KINDS) target.errors[kind] += row.errorKinds[kind];
  row.latency.forEach((n, i) => (target.latency[i]! += n));
}

/** The point as the overview shows it: kinds with failures only, cost to the micro-dollar, percentiles. */
function finish({ point, errors, latency }: Accumulator): OverviewPoint {
  const p50 = latencyPercentile(latency, 0.5);
  const p95 = latencyPercentile(latency, 0.95);
  return {
    ...point,
    errors: Object.fromEntries(ERROR_KINDS.filter((kind) => errors[kind] > 0).map((kind) => [kind, errors[kind]])),
    costUsd: Math.round(point.costUsd * 1e6) / 1e6,
    p50Ms: p50 === null ? null : Math.round(p50),
    p95Ms: p95 === null ? null : Math.round(p95),
  };
}

/**
 * The overview of `range` up to `now` (unix ms), of every key or of those `filter` names (one
 * key, model or upstream). Costs are the catalog's prices per model (0 for a model it does not
 * price); the cache hit rate is cache hits over requests (0 without requests).
 */
export async function overviewReport(
  store: Pick<UsageStore, 'usageSeries'>,
  catalog: ModelCatalog,
  range: OverviewRange,
  now: number,
  filter: UsageFilter = {},
): Promise<Overview> {
  const { spanMs, bucket } = OVERVIEW_RANGES[range];
  const periodMs = BUCKET_MS[bucket];
  const since = Math.floor((now - spanMs) / periodMs) * periodMs;
  const until = now;
  const rows = await store.usageSeries({ ...filter, sinceMs: since, untilMs: until, bucket });

  const points: Accumulator[] = [];
  for (let t = since; t < until; t += periodMs) points.push(accumulator(t));
  const totals = accumulator(since);
  for (const row of rows) {
    const cost = catalog.cost(row.model, {
      input_tokens: row.inputTokens,
      output_tokens: row.outputTokens,
      cache_creation_input_tokens: row.cacheCreationTokens,
      cache_read_input_tokens: row.cacheReadTokens,
    });
    const point = points[Math.round((row.t - since) / periodMs)];
    if (point) add(point, row, cost); // always: the store's periods are the points'
    add(totals, row, cost);
  }
  const { t: _t, ...whole } = finish(totals);
  return {
    range,
    bucket,
    since,
    until,
    points: points.map(finish),
    totals: { ...whole, cacheHitRate: whole.requests ? whole.cacheHits / whole.requests : 0 },
  };
}
