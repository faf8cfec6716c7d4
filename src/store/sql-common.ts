/**
 * What the two SQL stores (SQLite: sqlite-db.ts; PostgreSQL: postgres.ts and postgres-usage.ts)
 * share word for word: how a keys row maps to a KeyRecord and which columns a patch may set, and
 * how a usage report is split over the rollups and summed. One home, so that the stores cannot
 * drift apart; the contract suite (test/store.test.ts) holds them to the same answers.
 *
 * Only what is really the same is here. What differs by dialect stays with its store, in plain
 * view: placeholders (`?` against `$n`: callers pass `param`, which records a value and returns
 * its placeholder), integer division (`floorDiv`), the types of two key columns (SQLite's JSON
 * text and 0/1, PostgreSQL's TEXT[] and boolean), day labels, collation, and the DDL
 * (schema.ts, postgres-schema.ts). `mcp_servers` is JSON text in both, so its encoding is here.
 */
import type { KeyPatch, KeyRecord, UsageGrouping, UsageQuery, UsageRow } from './types.ts';

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
 * The rollups, coarsest first: a report reads each whole day of its range from usage_daily, each
 * whole hour of the partial days at its edges from usage_hourly, and raw usage rows only in the
 * partial hours at its very edges. Days are UTC days, whole numbers of hours, so the parts tile
 * [since, until) exactly and the report equals one aggregate over the raw rows.
 */
export const ROLLUPS = [
  { table: 'usage_daily', period: 'day', periodMs: DAY_MS },
  { table: 'usage_hourly', period: 'hour', periodMs: HOUR_MS },
] as const;

export interface ReportPart {
  table: 'usage' | (typeof ROLLUPS)[number]['table'];
  column: 'ts' | (typeof ROLLUPS)[number]['period'];
  /** [from, to) in the table's column's unit (ms for usage); undefined is unbounded. */
  from: number | undefined;
  to: number | undefined;
}

/** Splits [since, until) into whole periods of each rollup in turn, and raw rows for the rest. */
function reportParts(since: number | undefined, until: number | undefined, level = 0): ReportPart[] {
  const rollup = ROLLUPS[level];
  if (!rollup) {
    if (since !== undefined && until !== undefined && since >= until) return [];
    return [{ table: 'usage', column: 'ts', from: since, to: until }];
  }
  const first = since === undefined ? undefined : Math.ceil(since / rollup.periodMs);
  const end = until === undefined ? undefined : Math.floor(until / rollup.periodMs);
  if (first !== undefined && end !== undefined && first >= end) return reportParts(since, until, level + 1);
  return [
    { table: rollup.table, column: rollup.period, from: first, to: end },
    ...(first === undefined ? [] : reportParts(since, first * rollup.periodMs, level + 1)),
    ...(end === undefined ? [] : reportParts(end * rollup.periodMs, until, level + 1)),
  ];
}

/**
 * The columns a rollup is keyed by besides its period (schema.ts, postgres-schema.ts): its
 * primary key is (period, ...these), and both stores' rollup upserts group and conflict on them.
 */
export const ROLLUP_DIMENSIONS = ['key_id', 'model', 'upstream'] as const;
/** The rollup columns a rollup upsert groups by, as positions: the period, then ROLLUP_DIMENSIONS. */
export const ROLLUP_GROUP_BY = Array.from({ length: ROLLUP_DIMENSIONS.length + 1 }, (_, i) => i + 1).join(', ');

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

/**
 * Each summed column over raw usage rows, as the rollups hold it: each row counts as `requests`
 * requests (errors and cache hits likewise). Keyed by SUMMED_COLUMNS, so that a new summed column
 * cannot be left out of the rollups or the raw parts of a report.
 */
const RAW_SUM_OF: Record<SummedColumn, string> = {
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
};
/** The summed columns over raw usage rows, in SUMMED order (rollup inserts rely on it). */
export const RAW_SUMS = SUMMED.map((c) => `${RAW_SUM_OF[c]} AS ${c}`).join(',\n  ');
/** The summed columns over a rollup's rows. */
export const ROLLUP_SUMS = SUMMED.map((c) => `SUM(${c}) AS ${c}`).join(', ');
/** The parts' sums added up, named as UsageRow fields (quoted: both dialects keep the case). */
export const REPORT_SUMS = Object.entries(SUMMED_COLUMNS).map(([c, field]) => `SUM(${c}) AS "${field}"`).join(', ');

/** floor(column / divisor) in a dialect's SQL (both truncate integer division towards zero). */
export type FloorDiv = (column: string, divisor: number) => string;

/**
 * Per part table, the SQL of a report's grouping value `g`: the model, the key id, the UTC day
 * number, or the upstream name ('' for requests no upstream served).
 */
export type GroupValues = Record<ReportPart['table'], Record<UsageGrouping, string>>;

export function groupValues(floorDiv: FloorDiv): GroupValues {
  return {
    usage: { model: 'model', key: 'key_id', day: floorDiv('ts', DAY_MS), upstream: 'upstream' },
    usage_hourly: { model: 'model', key: 'key_id', day: floorDiv('hour', 24), upstream: 'upstream' },
    usage_daily: { model: 'model', key: 'key_id', day: 'day', upstream: 'upstream' },
  };
}

/**
 * One SELECT per part of the query's range, each yielding `g`, model and the part's sums; none
 * for an empty range. `param` records a value and returns its placeholder, in the order the
 * placeholders appear. The caller's outer query adds the parts up per (g, model) and labels g.
 */
export function reportSelects(query: UsageQuery, group: GroupValues, param: (value: string | number) => string): string[] {
  return reportParts(query.sinceMs, query.untilMs).map((part) => {
    const where: string[] = [];
    if (query.keyId !== undefined) where.push(`key_id = ${param(query.keyId)}`);
    if (part.from !== undefined) where.push(`${part.column} >= ${param(part.from)}`);
    if (part.to !== undefined) where.push(`${part.column} < ${param(part.to)}`);
    return `SELECT ${group[part.table][query.by]} AS g, model, ${part.table === 'usage' ? RAW_SUMS : ROLLUP_SUMS}
       FROM ${part.table} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} GROUP BY 1, 2`;
  });
}
