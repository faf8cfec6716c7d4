/**
 * What the two SQL stores (SQLite: sqlite-db.ts; PostgreSQL: postgres.ts and postgres-usage.ts)
 * share word for word: how a keys row maps to a KeyRecord and which columns a patch may set, how
 * a batch is added to the rollups (with the dashboard's error kinds and latency histogram), and
 * how a usage report or series is split over the rollups and summed. One home, so that the
 * stores cannot drift apart; the contract suite (test/store.test.ts) holds them to the same
 * answers.
 *
 * Only what is really the same is here. What differs by dialect stays with its store, in plain
 * view: placeholders (`?` against `$n`: callers pass `param`, which records a value and returns
 * its placeholder), integer division (`floorDiv`), the types of two key columns (SQLite's JSON
 * text and 0/1, PostgreSQL's TEXT[] and boolean), day labels, collation, and the DDL
 * (schema.ts, postgres-schema.ts). `mcp_servers` is JSON text in both, so its encoding is here.
 */
import {
  ERROR_KINDS, LATENCY_BOUNDS_MS, type ErrorKind, type KeyPatch, type KeyRecord, type ReportGrouping, type SeriesBucket, type UsageFilter,
  type UsageQuery, type UsageRow, type UsageSeriesQuery, type UsageSeriesRow,
} from './types.ts';

export const MINUTE_MS = 60_000;
export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;

// --- keys ------------------------------------------------------------------------------------

/**
 * A keys row as its driver returns it. The columns whose type is the dialect's own are
 * parameters: `models` (SQLite: JSON text; PostgreSQL: TEXT[]) and `disabled` (SQLite: 0 or 1;
 * PostgreSQL: boolean).
 */
export interface KeyRow<Models, Flag> {
  id: string;
  name: string;
  key_hash: string;
  key_preview: string;
  budget_tokens: number;
  window_seconds: number;
  rpm: number;
  concurrent: number;
  models: Models | null;
  expires_at: number | null;
  disabled: Flag;
  cache_ttl_seconds: number | null;
  cache_group: string | null;
  /** JSON array text of server names, '[]' for none (both dialects). */
  mcp_servers: string;
  created_at: number;
  updated_at: number;
}

/** The keys columns in the order `keyValues` gives them, for an INSERT. */
export const KEY_COLUMNS = [
  'id', 'name', 'key_hash', 'key_preview', 'budget_tokens', 'window_seconds', 'rpm', 'concurrent', 'models',
  'expires_at', 'disabled', 'cache_ttl_seconds', 'cache_group', 'mcp_servers', 'created_at', 'updated_at',
] as const;

/** A key's values in KEY_COLUMNS order, its `models` and `disabled` already in the dialect's form. */
export function keyValues<Models, Flag>(key: KeyRecord, models: Models | null, disabled: Flag): Array<string | number | null | Models | Flag> {
  return [
    key.id, key.name, key.hash, key.preview, key.budgetTokens, key.windowSeconds, key.rpm, key.concurrent,
    models, key.expiresAt, disabled, key.cacheTtlSeconds, key.cacheGroup, mcpServersColumn(key.mcpServers), key.createdAt,
    key.updatedAt,
  ];
}

/** KeyRecord.mcpServers as its column holds it in both dialects: JSON array text. */
function mcpServersColumn(names: readonly string[]): string {
  return JSON.stringify(names);
}

/** A patch value as its column takes it, for the fields whose form is the same in both dialects. */
export function patchValue<F extends keyof KeyPatch>(field: F, value: KeyPatch[F]): unknown {
  return field === 'mcpServers' ? mcpServersColumn(value as string[]) : value;
}

/** The record a keys row holds, its `models` and `disabled` decoded from the dialect's form by the caller. */
export function rowToKey(row: KeyRow<unknown, unknown>, models: string[] | null, disabled: boolean): KeyRecord {
  return {
    id: row.id,
    name: row.name,
    hash: row.key_hash,
    preview: row.key_preview,
    budgetTokens: row.budget_tokens,
    windowSeconds: row.window_seconds,
    rpm: row.rpm,
    concurrent: row.concurrent,
    models,
    expiresAt: row.expires_at,
    disabled,
    cacheTtlSeconds: row.cache_ttl_seconds,
    cacheGroup: row.cache_group,
    mcpServers: JSON.parse(row.mcp_servers) as string[],
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** The only columns an update may set, by patch field: SQL is never built from a caller's names. */
export const PATCH_COLUMNS: Record<keyof KeyPatch, string> = {
  name: 'name',
  budgetTokens: 'budget_tokens',
  windowSeconds: 'window_seconds',
  rpm: 'rpm',
  concurrent: 'concurrent',
  models: 'models',
  expiresAt: 'expires_at',
  disabled: 'disabled',
  cacheTtlSeconds: 'cache_ttl_seconds',
  cacheGroup: 'cache_group',
  mcpServers: 'mcp_servers',
};

/** The fields a patch sets (those not undefined), among PATCH_COLUMNS only. */
export function patchedFields(patch: KeyPatch): (keyof KeyPatch)[] {
  return (Object.keys(PATCH_COLUMNS) as (keyof KeyPatch)[]).filter((field) => patch[field] !== undefined);
}

// --- usage reports ---------------------------------------------------------------------------

/**
 * The rollups, coarsest first: a report reads each whole day of its range from a daily rollup,
 * each whole hour of the partial days at its edges from an hourly one, and raw usage rows only in
 * the partial hours at its very edges. Days are UTC days, whole numbers of hours, so the parts
 * tile [since, until) exactly and the report equals one aggregate over the raw rows. A report
 * grouped by a period skips the rollups coarser than it (by hour: no daily rollup; by minute:
 * raw rows only).
 *
 * Two sets, kept alike in the same transaction as every usage write: per key (`ROLLUPS`: period,
 * key, model, upstream), for reports by key or of one key; and over all keys (`TOTAL_ROLLUPS`:
 * period, model, upstream), for everything else (the overview, reports by model, upstream, day or
 * hour), whose size then depends on the models and upstreams in use, not on the number of keys.
 */
export interface Rollup {
  table: 'usage_daily' | 'usage_hourly' | 'usage_daily_total' | 'usage_hourly_total';
  period: 'day' | 'hour';
  periodMs: number;
  /** The columns it is keyed by besides its period: its primary key is (period, ...these). */
  dimensions: readonly ('key_id' | 'model' | 'upstream')[];
}

/**
 * The columns the per-key rollups are keyed by besides their period (schema.ts,
 * postgres-schema.ts): their primary key is (period, ...these).
 */
export const ROLLUP_DIMENSIONS = ['key_id', 'model', 'upstream'] as const;
/** The columns the rollups over all keys are keyed by besides their period. */
export const TOTAL_DIMENSIONS = ['model', 'upstream'] as const;

export const ROLLUPS = [
  { table: 'usage_daily', period: 'day', periodMs: DAY_MS, dimensions: ROLLUP_DIMENSIONS },
  { table: 'usage_hourly', period: 'hour', periodMs: HOUR_MS, dimensions: ROLLUP_DIMENSIONS },
] as const satisfies readonly Rollup[];
export const TOTAL_ROLLUPS = [
  { table: 'usage_daily_total', period: 'day', periodMs: DAY_MS, dimensions: TOTAL_DIMENSIONS },
  { table: 'usage_hourly_total', period: 'hour', periodMs: HOUR_MS, dimensions: TOTAL_DIMENSIONS },
] as const satisfies readonly Rollup[];
/** Every rollup a usage write adds to, per-key ones first. */
export const ALL_ROLLUPS: readonly Rollup[] = [...ROLLUPS, ...TOTAL_ROLLUPS];

export type PartTable = 'usage' | Rollup['table'];

export interface ReportPart {
  table: PartTable;
  column: 'ts' | Rollup['period'];
  /** [from, to) in the table's column's unit (ms for usage); undefined is unbounded. */
  from: number | undefined;
  to: number | undefined;
}

/** Splits [since, until) into whole periods of each of `rollups` from `level` on, and raw rows for the rest. */
function reportParts(since: number | undefined, until: number | undefined, rollups: readonly Rollup[], level: number): ReportPart[] {
  const rollup = rollups[level];
  if (!rollup) {
    if (since !== undefined && until !== undefined && since >= until) return [];
    return [{ table: 'usage', column: 'ts', from: since, to: until }];
  }
  const first = since === undefined ? undefined : Math.ceil(since / rollup.periodMs);
  const end = until === undefined ? undefined : Math.floor(until / rollup.periodMs);
  if (first !== undefined && end !== undefined && first >= end) return reportParts(since, until, rollups, level + 1);
  return [
    { table: rollup.table, column: rollup.period, from: first, to: end },
    ...(first === undefined ? [] : reportParts(since, first * rollup.periodMs, rollups, level + 1)),
    ...(end === undefined ? [] : reportParts(end * rollup.periodMs, until, rollups, level + 1)),
  ];
}

/** The rollups' summed columns (schema.ts, postgres-schema.ts), and the UsageRow field each becomes in a report. */
export const SUMMED_COLUMNS = {
  requests: 'requests',
  errors: 'errors',
  cached_requests: 'cachedRequests',
  input_tokens: 'inputTokens',
  output_tokens: 'outputTokens',
  cache_creation_tokens: 'cacheCreationTokens',
  cache_read_tokens: 'cacheReadTokens',
  billed_tokens: 'billedTokens',
  saved_tokens: 'savedTokens',
  latency_ms: 'totalLatencyMs',
} as const satisfies Record<string, Exclude<keyof UsageRow, 'group' | 'model'>>;
export type SummedColumn = keyof typeof SUMMED_COLUMNS;
export const SUMMED = Object.keys(SUMMED_COLUMNS) as SummedColumn[];

/** The rollup column of each error kind's count (types.ts ERROR_KINDS). */
export const ERROR_COLUMNS = ERROR_KINDS.map((kind) => `err_${kind}` as const);
/** The rollup column of each latency bucket's count: lat_le_<bound ms>, then lat_over (types.ts LATENCY_BOUNDS_MS). */
export const LATENCY_COLUMNS = [...LATENCY_BOUNDS_MS.map((bound) => `lat_le_${bound}` as const), 'lat_over' as const];
/** Every column a rollup sums: the report's, then the series' own (error kinds, latency histogram). */
export const ROLLUP_COLUMNS = [...SUMMED, ...ERROR_COLUMNS, ...LATENCY_COLUMNS];
export type RollupColumn = (typeof ROLLUP_COLUMNS)[number];

/**
 * A usage row's error kind in SQL (the same in both dialects), NULL for a request that
 * succeeded: types.ts `errorKind`, rule for rule (the contract suite compares them).
 */
export const ERROR_KIND_SQL = `CASE WHEN status < 400 AND outcome = 'ok' THEN NULL
    WHEN outcome = 'client_closed' OR status = 499 THEN 'client_closed'
    WHEN outcome = 'upstream_cut' THEN 'upstream_cut'
    WHEN status = 429 THEN 'rate_limited'
    WHEN status = 500 THEN 'gateway_error'
    WHEN status >= 500 THEN 'upstream_error'
    WHEN status >= 400 THEN 'client_error'
    ELSE 'gateway_error' END`;

/**
 * A latency bucket's count over raw rows: the requests of each row whose mean latency
 * (latency_ms / requests) is within the bucket, compared as latency_ms <= bound * requests so
 * that no division rounds (BIGINT: a large coalesced count times 300000 overflows a 32-bit int).
 */
function latencySum(i: number): string {
  const requests = 'CAST(requests AS BIGINT)';
  const lower = i === 0 ? undefined : `latency_ms > ${LATENCY_BOUNDS_MS[i - 1]} * ${requests}`;
  const upper = i === LATENCY_BOUNDS_MS.length ? undefined : `latency_ms <= ${LATENCY_BOUNDS_MS[i]} * ${requests}`;
  return `SUM(CASE WHEN ${[lower, upper].filter(Boolean).join(' AND ')} THEN requests ELSE 0 END)`;
}

/**
 * Each rollup column over raw usage rows, as the rollups hold it: each row counts as `requests`
 * requests (errors, cache hits, error kinds and latency buckets likewise). Keyed by every rollup
 * column, so that a new one cannot be left out of the rollups or the raw parts of a report.
 */
const RAW_SUM_OF: Record<RollupColumn, string> = {
  requests: 'SUM(requests)',
  errors: "SUM(CASE WHEN status >= 400 OR outcome <> 'ok' THEN requests ELSE 0 END)",
  cached_requests: 'SUM(CASE WHEN cached THEN requests ELSE 0 END)',
  input_tokens: 'SUM(input_tokens)',
  output_tokens: 'SUM(output_tokens)',
  cache_creation_tokens: 'SUM(cache_creation_tokens)',
  cache_read_tokens: 'SUM(cache_read_tokens)',
  billed_tokens: 'SUM(billed_tokens)',
  saved_tokens: 'SUM(saved_tokens)',
  latency_ms: 'SUM(latency_ms)',
  ...(Object.fromEntries(ERROR_KINDS.map((kind, i) => [ERROR_COLUMNS[i], `SUM(CASE WHEN ${ERROR_KIND_SQL} = '${kind}' THEN requests ELSE 0 END)`])) as
    Record<(typeof ERROR_COLUMNS)[number], string>),
  ...(Object.fromEntries(LATENCY_COLUMNS.map((column, i) => [column, latencySum(i)])) as Record<(typeof LATENCY_COLUMNS)[number], string>),
};
/** The given rollup columns over raw usage rows, in their order, each named as its column. */
export function rawSums(columns: readonly RollupColumn[]): string {
  return columns.map((c) => `${RAW_SUM_OF[c]} AS ${c}`).join(',\n  ');
}
/** Every rollup column over raw usage rows, in ROLLUP_COLUMNS order (rollup inserts rely on it). */
export const RAW_SUMS = rawSums(ROLLUP_COLUMNS);
/** The parts' sums of a report added up, named as UsageRow fields (quoted: both dialects keep the case). */
export const REPORT_SUMS = Object.entries(SUMMED_COLUMNS).map(([c, field]) => `SUM(${c}) AS "${field}"`).join(', ');
/** The parts' sums of a series added up, each named as its column. */
export const SERIES_SUMS = ROLLUP_COLUMNS.map((c) => `SUM(${c}) AS ${c}`).join(', ');

/** floor(column / divisor) in a dialect's SQL (both truncate integer division towards zero). */
export type FloorDiv = (column: string, divisor: number) => string;

// --- adding a batch to the rollups -----------------------------------------------------------

/**
 * A written batch aggregated once per (hour, key, model, upstream), every rollup column summed
 * from its raw rows (RAW_SUMS): what each rollup's upsert then reads, instead of evaluating the
 * error kinds and latency buckets of every raw row once per rollup. Hours tile days, and sums of
 * sums are the sums, so the rollups stay exactly what one aggregate over the raw rows gives.
 * `from` is the batch's rows (a table and its WHERE clause, or a CTE).
 */
export function batchHoursSql(floorDiv: FloorDiv, from: string): string {
  return `SELECT ${floorDiv('ts', HOUR_MS)} AS hour, ${ROLLUP_DIMENSIONS.join(', ')}, ${RAW_SUMS}
    FROM ${from} GROUP BY 1, 2, 3, 4`;
}

/** The columns of batchHoursSql's rows, for a table that holds them. */
export const BATCH_HOURS_COLUMNS = ['hour', ...ROLLUP_DIMENSIONS, ...ROLLUP_COLUMNS] as const;

/**
 * Adds a batch's hours (`batch`: rows as batchHoursSql gives them) to a rollup, per its period
 * and dimensions, in key order: instances writing overlapping groups at once take row locks in
 * the same order and cannot deadlock (PostgreSQL); the same text serves SQLite (`WHERE true`:
 * what SQLite's grammar needs between an INSERT's SELECT and its ON CONFLICT).
 */
export function rollUpSql(rollup: Rollup, floorDiv: FloorDiv, batch: string): string {
  const { table, period, periodMs, dimensions } = rollup;
  const keyColumns = [period, ...dimensions].join(', ');
  const positions = Array.from({ length: dimensions.length + 1 }, (_, i) => i + 1).join(', ');
  const hours = periodMs / HOUR_MS;
  return `INSERT INTO ${table} (${keyColumns}, ${ROLLUP_COLUMNS.join(', ')})
    SELECT ${hours === 1 ? 'hour' : floorDiv('hour', hours)}, ${dimensions.join(', ')}, ${ROLLUP_COLUMNS.map((c) => `SUM(${c})`).join(', ')}
    FROM ${batch} WHERE true GROUP BY ${positions} ORDER BY ${positions}
    ON CONFLICT (${keyColumns}) DO UPDATE SET ${ROLLUP_COLUMNS.map((c) => `${c} = ${table}.${c} + excluded.${c}`).join(', ')}`;
}

/**
 * What a report part groups by (yielded as `g`): a dimension, or a period (g is the period's
 * number: floor(ms / period)). Series group by their bucket; reports by their grouping.
 */
export type PartGrouping = ReportGrouping | SeriesBucket;

const PERIOD_MS: Partial<Record<PartGrouping, number>> = { day: DAY_MS, hour: HOUR_MS, minute: MINUTE_MS };

/**
 * Per part table, the SQL of `g` for each grouping that table can serve: the model, the key id,
 * the upstream name ('' for requests no upstream served), or the UTC day, hour or minute number.
 */
export type GroupValues = Record<PartTable, Partial<Record<PartGrouping, string>>>;

export function groupValues(floorDiv: FloorDiv): GroupValues {
  const dimensions = { model: 'model', key: 'key_id', upstream: 'upstream' };
  const totals = { model: 'model', upstream: 'upstream' };
  return {
    usage: { ...dimensions, day: floorDiv('ts', DAY_MS), hour: floorDiv('ts', HOUR_MS), minute: floorDiv('ts', MINUTE_MS) },
    usage_hourly: { ...dimensions, day: floorDiv('hour', 24), hour: 'hour' },
    usage_daily: { ...dimensions, day: 'day' },
    usage_hourly_total: { ...totals, day: floorDiv('hour', 24), hour: 'hour' },
    usage_daily_total: { ...totals, day: 'day' },
  };
}

/**
 * The rollups a query reads: per key when it groups by key or is of one key, else those over all
 * keys; of those, the ones whose period divides the grouping's (all, for a dimension).
 */
function rollupsFor(by: PartGrouping, filter: UsageFilter): Rollup[] {
  const rollups: readonly Rollup[] = by === 'key' || filter.keyId !== undefined ? ROLLUPS : TOTAL_ROLLUPS;
  const periodMs = PERIOD_MS[by];
  return periodMs === undefined ? [...rollups] : rollups.filter((r) => periodMs % r.periodMs === 0);
}

/**
 * One SELECT per part of the range, each yielding `g`, model and the part's sums of `columns`;
 * none for an empty range. `param` records a value and returns its placeholder, in the order the
 * placeholders appear. The caller's outer query adds the parts up per (g, model) and labels g.
 */
function partSelects(
  range: UsageFilter & { sinceMs?: number | undefined; untilMs?: number | undefined },
  by: PartGrouping,
  group: GroupValues,
  param: (value: string | number) => string,
  columns: readonly RollupColumn[],
): string[] {
  return reportParts(range.sinceMs, range.untilMs, rollupsFor(by, range), 0).map((part) => {
    const where: string[] = [];
    if (range.keyId !== undefined) where.push(`key_id = ${param(range.keyId)}`);
    if (range.model !== undefined) where.push(`model = ${param(range.model)}`);
    if (range.upstream !== undefined) where.push(`upstream = ${param(range.upstream)}`);
    if (part.from !== undefined) where.push(`${part.column} >= ${param(part.from)}`);
    if (part.to !== undefined) where.push(`${part.column} < ${param(part.to)}`);
    const g = group[part.table][by];
    if (g === undefined) throw new Error(`${part.table} cannot be grouped by ${by}`); // rollupsFor keeps this from happening
    const sums = part.table === 'usage' ? rawSums(columns) : columns.map((c) => `SUM(${c}) AS ${c}`).join(', ');
    return `SELECT ${g} AS g, model, ${sums}
       FROM ${part.table} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} GROUP BY 1, 2`;
  });
}

/** A report's part SELECTs (the UsageRow sums): see partSelects. */
export function reportSelects(query: UsageQuery, group: GroupValues, param: (value: string | number) => string): string[] {
  return partSelects(query, query.by, group, param, SUMMED);
}

/** A series' part SELECTs (every rollup column): see partSelects. */
export function seriesSelects(query: UsageSeriesQuery, group: GroupValues, param: (value: string | number) => string): string[] {
  return partSelects(query, query.bucket, group, param, ROLLUP_COLUMNS);
}

/** A series row as both stores' outer query gives it (g, model, SERIES_SUMS), in its API shape. */
export function seriesRow(row: Record<string, unknown>, bucket: SeriesBucket): UsageSeriesRow {
  const n = (column: string) => Number(row[column] ?? 0);
  return {
    t: n('g') * PERIOD_MS[bucket]!,
    model: String(row['model']),
    ...(Object.fromEntries(Object.entries(SUMMED_COLUMNS).map(([column, field]) => [field, n(column)])) as Omit<UsageRow, 'group' | 'model'>),
    errorKinds: Object.fromEntries(ERROR_KINDS.map((kind, i) => [kind, n(ERROR_COLUMNS[i]!)])) as Record<ErrorKind, number>,
    latency: LATENCY_COLUMNS.map(n),
  };
}
