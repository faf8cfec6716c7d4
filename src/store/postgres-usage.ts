/**
 * The PostgreSQL store's usage SQL: the batch insert that keeps the rollups, per-minute budget
 * buckets, and reports and the dashboard's series that read the rollups (postgres-schema.ts) for
 * whole days and hours.
 *
 * A batch is one statement (UNNEST of one array per column), so it commits or fails whole and
 * costs one round trip whatever its size. Each row's primary key is a digest of the record's
 * fields (`recordId`): a batch written again, because the connection dropped before its COMMIT
 * was acknowledged, conflicts on every row it already wrote and skips them, and the rollups are
 * summed only from the rows this statement actually inserted (aggregated once per hour, key, model
 * and upstream, then added to each rollup: sql-common.ts). The rollups are upserted in key
 * order, so that instances writing overlapping groups at once take row locks in the same order
 * and cannot deadlock.
 *
 * Reports split [since, until) as the SQLite store does, with the same code (sql-common.ts):
 * whole UTC days from a daily rollup, whole hours of the partial days from an hourly one (per key
 * when by key or of one key, else over all keys), raw rows only in the partial hours at the very
 * edges, so that they equal one aggregate over the raw rows exactly.
 */
import { createHash } from 'node:crypto';
import {
  ALL_ROLLUPS, batchHoursSql, groupValues, reportSelects, REPORT_SUMS, rollUpSql, SERIES_SUMS, seriesSelects,
} from './sql-common.ts';
import type { ReportGrouping, UsageQuery, UsageRecord, UsageSeriesQuery } from './types.ts';

/** A statement and its parameters ($1, $2, ... in order). */
export interface Sql {
  text: string;
  values: unknown[];
}

/** Collects parameters and hands back their placeholders, so no input is ever spliced into SQL. */
class Params {
  readonly values: unknown[] = [];

  add(value: unknown): string {
    return `$${this.values.push(value)}`;
  }
}

/** floor(column / divisor) for BIGINT columns (PostgreSQL's integer division truncates towards zero). */
export function floorDiv(column: string, divisor: number): string {
  return `((${column} - ((${column} % ${divisor}) + ${divisor}) % ${divisor}) / ${divisor})`;
}

// --- writing ---------------------------------------------------------------------------------

/** The usage columns in insert order, with the array type each is sent as. */
const USAGE_COLUMNS = [
  ['record_id', 'uuid'], ['ts', 'bigint'], ['key_id', 'text'], ['request_id', 'text'], ['endpoint', 'text'],
  ['model', 'text'], ['status', 'int'], ['input_tokens', 'bigint'], ['output_tokens', 'bigint'],
  ['cache_creation_tokens', 'bigint'], ['cache_read_tokens', 'bigint'], ['billed_tokens', 'bigint'],
  ['latency_ms', 'bigint'], ['cached', 'boolean'], ['streamed', 'boolean'], ['outcome', 'text'], ['requests', 'int'],
  ['saved_tokens', 'bigint'], ['upstream', 'text'],
] as const;

/** Answers one row, `inserted`: how many of the batch's records were new. */
const INSERT_USAGE_SQL = `
WITH batch AS (
  SELECT * FROM UNNEST(${USAGE_COLUMNS.map(([, type], i) => `$${i + 1}::${type}[]`).join(', ')})
    AS b(${USAGE_COLUMNS.map(([name]) => name).join(', ')})
), inserted AS (
  INSERT INTO usage (${USAGE_COLUMNS.map(([name]) => name).join(', ')})
  SELECT * FROM batch
  ON CONFLICT (record_id) DO NOTHING
  RETURNING ts, key_id, model, upstream, status, outcome, cached, requests, input_tokens, output_tokens,
            cache_creation_tokens, cache_read_tokens, billed_tokens, saved_tokens, latency_ms
), batch_hours AS (
  ${batchHoursSql(floorDiv, 'inserted')}
), ${ALL_ROLLUPS.map((r) => `add_to_${r.table} AS (
  ${rollUpSql(r, floorDiv, 'batch_hours')}
)`).join(', ')}
SELECT count(*)::int AS inserted FROM inserted`;

/** PostgreSQL text cannot hold NUL; a client-chosen model name could carry one. */
function text(value: string): string {
  return typeof value === 'string' ? value.replaceAll('\u0000', '\uFFFD') : value;
}

/**
 * Counts are BIGINT: whole, and within what a JS number holds exactly. Anything else (a
 * fractional token count from a misbehaving upstream) would fail the whole batch, every retry.
 */
function int(value: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) return value; // NOT NULL / type errors reject the batch
  return Math.max(-Number.MAX_SAFE_INTEGER, Math.min(Number.MAX_SAFE_INTEGER, Math.round(value)));
}

/** The record as stored, in USAGE_COLUMNS order after record_id. */
function storedFields(r: UsageRecord): unknown[] {
  return [
    int(r.ts), text(r.keyId), text(r.requestId), text(r.endpoint), text(r.model), int(r.status),
    int(r.inputTokens), int(r.outputTokens), int(r.cacheCreationTokens), int(r.cacheReadTokens), int(r.billedTokens),
    int(r.latencyMs), r.cached, r.streamed, text(r.outcome), int(r.requests ?? 1), int(r.savedTokens ?? 0),
    text(r.upstream ?? ''),
  ];
}

/**
 * A record's identity: the first 128 bits of SHA-256 over every stored field, as a UUID. Two
 * records share it only if every field is equal, which for distinct requests cannot happen
 * (request ids are unique; a coalesced refusal row carries its first request's id, its time and
 * its count) and for a batch sent twice always does.
 */
export function recordId(fields: readonly unknown[]): string {
  const hex = createHash('sha256').update(JSON.stringify(fields)).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** The batch insert: one array per column. */
export function insertUsageSql(records: readonly UsageRecord[]): Sql {
  const columns: unknown[][] = USAGE_COLUMNS.map(() => []);
  for (const record of records) {
    const fields = storedFields(record);
    columns[0]!.push(recordId(fields));
    fields.forEach((value, i) => columns[i + 1]!.push(value));
  }
  return { text: INSERT_USAGE_SQL, values: columns };
}

// --- reading ---------------------------------------------------------------------------------

/** Billed tokens per key per minute in [since, until), only rows that billed any. */
export function budgetBucketsSql(sinceMs: number, options: { keyId?: string; untilMs?: number }): Sql {
  const p = new Params();
  const where = [`ts >= ${p.add(sinceMs)}`, 'billed_tokens > 0'];
  if (options.untilMs !== undefined) where.push(`ts < ${p.add(options.untilMs)}`);
  if (options.keyId !== undefined) where.push(`key_id = ${p.add(options.keyId)}`);
  return {
    text: `SELECT key_id AS "keyId", ${floorDiv('ts', 60_000)} AS minute, SUM(billed_tokens) AS tokens
      FROM usage WHERE ${where.join(' AND ')} GROUP BY 1, 2`,
    values: p.values,
  };
}

/** Each report part yields a grouping value `g` (sql-common.ts); the outer query labels it. */
const GROUP_VALUE = groupValues(floorDiv);
const GROUP_LABEL: Record<ReportGrouping, string> = {
  model: 'g',
  key: 'g',
  day: `to_char(to_timestamp(g * 86400) AT TIME ZONE 'UTC', 'YYYY-MM-DD')`,
  hour: `to_char(to_timestamp(g * 3600) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:00"Z"')`,
  upstream: 'g',
};
/** Reports order by group, then model, bytewise (as SQLite's BINARY collation does), whatever the database's collation. */
const GROUP_ORDER: Record<ReportGrouping, string> = { model: 'g COLLATE "C"', key: 'g COLLATE "C"', day: 'g', hour: 'g', upstream: 'g COLLATE "C"' };

/** The report, or undefined for an empty range. */
export function usageReportSql(query: UsageQuery): Sql | undefined {
  const p = new Params();
  const selects = reportSelects(query, GROUP_VALUE, (value) => p.add(value));
  if (selects.length === 0) return undefined;
  return {
    text: `SELECT ${GROUP_LABEL[query.by]} AS "group", model, ${REPORT_SUMS}
      FROM (${selects.join(' UNION ALL ')}) AS parts
      GROUP BY g, model ORDER BY ${GROUP_ORDER[query.by]}, model COLLATE "C"`,
    values: p.values,
  };
}

/** A usage series (sql-common.ts `seriesRow` shapes its rows), or undefined for an empty range. */
export function usageSeriesSql(query: UsageSeriesQuery): Sql | undefined {
  const p = new Params();
  const selects = seriesSelects(query, GROUP_VALUE, (value) => p.add(value));
  if (selects.length === 0) return undefined;
  return {
    text: `SELECT g, model, ${SERIES_SUMS}
      FROM (${selects.join(' UNION ALL ')}) AS parts
      GROUP BY g, model ORDER BY g, model COLLATE "C"`,
    values: p.values,
  };
}
