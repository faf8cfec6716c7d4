/**
 * The usage aggregates as plain JavaScript over records, the reference the store suites hold the
 * SQL to (store.test.ts, store-rollup.test.ts, store-postgres.test.ts): series per period and
 * model, and every rollup table's rows. Failure kinds and latency buckets come from types.ts'
 * `errorKind` and `latencyBucket`, not from the SQL under test, so a drift between the two shows.
 */
import { ALL_ROLLUPS, ERROR_COLUMNS, LATENCY_COLUMNS, ROLLUP_COLUMNS, type Rollup } from '../src/store/sql-common.ts';
import {
  ERROR_KINDS, errorKind, LATENCY_BOUNDS_MS, latencyBucket, type ErrorKind, type UsageOutcome, type UsageRecord, type UsageSeriesQuery,
  type UsageSeriesRow,
} from '../src/store/types.ts';

const PERIOD_MS = { minute: 60_000, hour: 3_600_000, day: 86_400_000 } as const;

/** floor(a / b) for integers, as the stores compute periods (negative times too). */
const floorDiv = (a: number, b: number) => Math.floor(a / b);

/** Bytewise order, as the stores sort text. */
export const bytewise = (a: string, b: string) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));

/** What one record adds to an aggregate, per rollup column. */
function contribution(r: UsageRecord): Record<string, number> {
  const requests = r.requests ?? 1;
  const kind = errorKind(r.status, r.outcome);
  const out: Record<string, number> = {
    requests,
    errors: kind ? requests : 0,
    cached_requests: r.cached ? requests : 0,
    input_tokens: r.inputTokens,
    output_tokens: r.outputTokens,
    cache_creation_tokens: r.cacheCreationTokens,
    cache_read_tokens: r.cacheReadTokens,
    billed_tokens: r.billedTokens,
    saved_tokens: r.savedTokens ?? 0,
    latency_ms: r.latencyMs,
  };
  ERROR_KINDS.forEach((k, i) => (out[ERROR_COLUMNS[i]!] = k === kind ? requests : 0));
  const bucket = latencyBucket(r.latencyMs, requests);
  LATENCY_COLUMNS.forEach((c, i) => (out[c] = i === bucket ? requests : 0));
  return out;
}

function addInto(target: Record<string, number>, add: Record<string, number>): void {
  for (const [column, n] of Object.entries(add)) target[column] = (target[column] ?? 0) + n;
}

/** A usage series as `usageSeries` must answer it, computed from the records. */
export function seriesReference(records: readonly UsageRecord[], query: UsageSeriesQuery): UsageSeriesRow[] {
  const periodMs = PERIOD_MS[query.bucket];
  const groups = new Map<string, { t: number; model: string; sums: Record<string, number> }>();
  for (const r of records) {
    if (r.ts < query.sinceMs || r.ts >= query.untilMs) continue;
    if (query.keyId !== undefined && r.keyId !== query.keyId) continue;
    if (query.model !== undefined && r.model !== query.model) continue;
    if (query.upstream !== undefined && (r.upstream ?? '') !== query.upstream) continue;
    const t = floorDiv(r.ts, periodMs) * periodMs;
    const id = `${t}\u0000${r.model}`;
    let group = groups.get(id);
    if (!group) groups.set(id, (group = { t, model: r.model, sums: {} }));
    addInto(group.sums, contribution(r));
  }
  return [...groups.values()]
    .sort((a, b) => a.t - b.t || bytewise(a.model, b.model))
    .map(({ t, model, sums }) => ({
      t, model, requests: sums['requests']!, errors: sums['errors']!, cachedRequests: sums['cached_requests']!, inputTokens: sums['input_tokens']!,
      outputTokens: sums['output_tokens']!, cacheCreationTokens: sums['cache_creation_tokens']!, cacheReadTokens: sums['cache_read_tokens']!,
      billedTokens: sums['billed_tokens']!, savedTokens: sums['saved_tokens']!, totalLatencyMs: sums['latency_ms']!,
      errorKinds: Object.fromEntries(ERROR_KINDS.map((k, i) => [k, sums[ERROR_COLUMNS[i]!]!])) as Record<ErrorKind, number>,
      latency: LATENCY_COLUMNS.map((c) => sums[c]!),
    }));
}

/** One rollup row as the tests read it: `p` (the period), the rollup's dimensions, and every rollup column. */
export type RollupRow = Record<string, string | number>;

/** A rollup's rows as they must be, from the records, sorted by period then dimensions (bytewise). */
export function rollupReference(records: readonly UsageRecord[], rollup: Rollup): RollupRow[] {
  const groups = new Map<string, RollupRow & Record<string, number>>();
  for (const r of records) {
    const p = floorDiv(r.ts, rollup.periodMs);
    const dims: Record<string, string> = { key_id: r.keyId, model: r.model, upstream: r.upstream ?? '' };
    const id = [p, ...rollup.dimensions.map((d) => dims[d])].join('\u0000');
    let group = groups.get(id);
    if (!group) groups.set(id, (group = { p, ...Object.fromEntries(rollup.dimensions.map((d) => [d, dims[d]!])) } as RollupRow & Record<string, number>));
    addInto(group, contribution(r));
  }
  return sortRollupRows([...groups.values()], rollup);
}

export function sortRollupRows(rows: RollupRow[], rollup: Rollup): RollupRow[] {
  return rows.sort((a, b) => Number(a['p']) - Number(b['p']) || rollup.dimensions.reduce((c, d) => c || bytewise(String(a[d]), String(b[d])), 0));
}

/** The SELECT that reads a rollup table in RollupRow shape (sort the rows with sortRollupRows). */
export function rollupRowsSql(rollup: Rollup): string {
  return `SELECT ${rollup.period} AS p, ${rollup.dimensions.join(', ')}, ${ROLLUP_COLUMNS.join(', ')} FROM ${rollup.table}`;
}

/** A usage table row as either driver returns it (PostgreSQL: BIGINT as number or string, booleans; SQLite: 0/1). */
export interface UsageTableRow {
  ts: number | string;
  key_id: string;
  model: string;
  upstream: string;
  status: number;
  outcome: string;
  requests: number | string;
  cached: boolean | number;
  input_tokens: number | string;
  output_tokens: number | string;
  cache_creation_tokens: number | string;
  cache_read_tokens: number | string;
  billed_tokens: number | string;
  saved_tokens: number | string;
  latency_ms: number | string;
}

/** The columns a UsageTableRow needs. */
export const USAGE_TABLE_COLUMNS = 'ts, key_id, model, upstream, status, outcome, requests, cached, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, billed_tokens, saved_tokens, latency_ms';

/** A stored usage row as the record the reference aggregates. */
export function recordFromRow(row: UsageTableRow): UsageRecord {
  return {
    ts: Number(row.ts), keyId: row.key_id, requestId: '', endpoint: 'messages', model: row.model, upstream: row.upstream,
    status: Number(row.status), outcome: row.outcome as UsageOutcome, requests: Number(row.requests), cached: Boolean(row.cached), streamed: false,
    inputTokens: Number(row.input_tokens), outputTokens: Number(row.output_tokens), cacheCreationTokens: Number(row.cache_creation_tokens),
    cacheReadTokens: Number(row.cache_read_tokens), billedTokens: Number(row.billed_tokens), savedTokens: Number(row.saved_tokens),
    latencyMs: Number(row.latency_ms),
  };
}

/** Every rollup, for loops over them. */
export { ALL_ROLLUPS };

/**
 * Random usage records for the series and histogram checks: every status and outcome pairing,
 * coalesced records, latencies from a few ms to beyond the last bucket bound (and on bounds
 * exactly, times `requests`, where an off-by-one would show), over [start, end), some upstreams.
 */
export function randomSeriesRecords(
  rand: () => number,
  options: { count: number; start: number; end: number; keys: readonly string[]; models: readonly string[] },
): UsageRecord[] {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const statuses = [200, 200, 200, 200, 201, 400, 401, 404, 413, 429, 429, 499, 500, 502, 503, 504, 529];
  const outcomes: UsageOutcome[] = ['ok', 'ok', 'ok', 'ok', 'error', 'rejected', 'client_closed', 'upstream_cut'];
  const records: UsageRecord[] = [];
  for (let i = 0; i < options.count; i++) {
    const requests = rand() < 0.2 ? 2 + Math.floor(rand() * 9) : 1;
    const latencyKind = rand();
    const mean = latencyKind < 0.15
      ? pick(LATENCY_BOUNDS_MS) + pick([0, 0, 1])
      : latencyKind < 0.2 ? 300_001 + Math.floor(rand() * 500_000) : Math.floor(Math.exp(rand() * Math.log(200_000)));
    const ts = rand() < 0.1
      ? Math.round((options.start + rand() * (options.end - options.start)) / 3_600_000) * 3_600_000 + pick([-1, 0, 1])
      : options.start + Math.floor(rand() * (options.end - options.start));
    records.push({
      ts, keyId: pick(options.keys), requestId: `req_series_${i}`, endpoint: 'messages', model: pick(options.models),
      status: pick(statuses), outcome: pick(outcomes), requests, cached: rand() < 0.2, streamed: rand() < 0.5,
      inputTokens: Math.floor(rand() * 5000), outputTokens: Math.floor(rand() * 900), cacheCreationTokens: Math.floor(rand() * 50),
      cacheReadTokens: Math.floor(rand() * 300), billedTokens: Math.floor(rand() * 7000), savedTokens: rand() < 0.2 ? Math.floor(rand() * 7000) : 0,
      latencyMs: mean * requests - (rand() < 0.5 ? 0 : Math.floor(rand() * requests)),
      ...(rand() < 0.6 ? { upstream: pick(['anthropic-main', 'backup-eu']) } : rand() < 0.5 ? { upstream: '' } : {}),
    });
  }
  return records;
}
