/**
 * The SQLite schema as an ordered list of migrations. `PRAGMA user_version` holds how many have
 * been applied; `migrate` applies the missing ones at open, all in one BEGIN IMMEDIATE
 * transaction, so that two processes opening the same file at once cannot both migrate (the
 * second waits for the write lock, then finds the version current and does nothing) and a
 * failed migration leaves the file as it was.
 *
 * A migration's text is history: once released it never changes (a database that already ran it
 * will not run it again); a change to the schema is a new migration at the end of the list.
 */
import type { DatabaseSync } from 'node:sqlite';
import { DAY_MS, ERROR_COLUMNS, HOUR_MS, LATENCY_COLUMNS, rawSums, ROLLUP_COLUMNS, ROLLUPS, TOTAL_ROLLUPS } from './sql-common.ts';

/**
 * A rollup table of usage per (period, key, model), filled from the rows already in usage. Its
 * text is part of migration 3: a different layout is a new migration, not an edit here (as
 * migration 6 is: `rollupWithUpstream`).
 */
function rollupTable(table: string, period: string, periodMs: number): string {
  return `
CREATE TABLE ${table} (
  ${period} INTEGER NOT NULL,
  key_id TEXT NOT NULL,
  model TEXT NOT NULL,
  requests INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  cached_requests INTEGER NOT NULL,
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  cache_creation_tokens INTEGER NOT NULL,
  cache_read_tokens INTEGER NOT NULL,
  billed_tokens INTEGER NOT NULL,
  latency_ms INTEGER NOT NULL,
  PRIMARY KEY (${period}, key_id, model)
) WITHOUT ROWID;
CREATE INDEX ${table}_key ON ${table} (key_id, ${period});
INSERT INTO ${table} (${period}, key_id, model, requests, errors, cached_requests, input_tokens, output_tokens,
                      cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms)
SELECT ts / ${periodMs} - (ts % ${periodMs} < 0), key_id, model,
  SUM(requests),
  SUM(CASE WHEN status >= 400 OR outcome <> 'ok' THEN requests ELSE 0 END),
  SUM(CASE WHEN cached THEN requests ELSE 0 END),
  SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_tokens), SUM(cache_read_tokens),
  SUM(billed_tokens), SUM(latency_ms)
FROM usage GROUP BY 1, 2, 3;
`;
}

/**
 * Migration 6's rebuild of a rollup with `upstream` in its primary key, which a WITHOUT ROWID
 * table cannot change in place: a new table, filled from the old one's rows (every one of them
 * upstream '': no request before this migration recorded one), the old one dropped (its index
 * with it), the new one renamed and indexed as before. Part of migration 6's text: never edit.
 */
function rollupWithUpstream(table: string, period: string): string {
  return `
CREATE TABLE ${table}_new (
  ${period} INTEGER NOT NULL,
  key_id TEXT NOT NULL,
  model TEXT NOT NULL,
  upstream TEXT NOT NULL DEFAULT '',
  requests INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  cached_requests INTEGER NOT NULL,
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  cache_creation_tokens INTEGER NOT NULL,
  cache_read_tokens INTEGER NOT NULL,
  billed_tokens INTEGER NOT NULL,
  latency_ms INTEGER NOT NULL,
  saved_tokens INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (${period}, key_id, model, upstream)
) WITHOUT ROWID;
INSERT INTO ${table}_new (${period}, key_id, model, upstream, requests, errors, cached_requests, input_tokens, output_tokens,
                          cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms, saved_tokens)
SELECT ${period}, key_id, model, '', requests, errors, cached_requests, input_tokens, output_tokens,
       cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms, saved_tokens
FROM ${table};
DROP TABLE ${table};
ALTER TABLE ${table}_new RENAME TO ${table};
CREATE INDEX ${table}_key ON ${table} (key_id, ${period});
`;
}

/**
 * Migration 8, part 1: the overview's columns on the per-key rollups (failed requests by kind,
 * the latency histogram: sql-common.ts ERROR_COLUMNS and LATENCY_COLUMNS, types.ts for their
 * meaning), 0 by default, then counted exactly from the raw usage rows: one pass over usage,
 * aggregated per hour, key, model and upstream into a temporary table, which updates the hourly
 * rollup's rows and, added up per day, the daily one's. Their other columns are left as they are.
 * Built from those constants, which therefore never change under it: another histogram or kind
 * mapping is a new migration (which freezes this one's lists first).
 */
function rollupDetails(): string {
  const columns = [...ERROR_COLUMNS, ...LATENCY_COLUMNS];
  const update = (table: string, period: string, from: string) => `
UPDATE ${table} SET ${columns.map((c) => `${c} = f.${c}`).join(', ')}
FROM ${from} AS f
WHERE ${table}.${period} = f.p AND ${table}.key_id = f.key_id AND ${table}.model = f.model AND ${table}.upstream = f.upstream;`;
  return `
${['usage_hourly', 'usage_daily'].flatMap((table) => columns.map((c) => `ALTER TABLE ${table} ADD COLUMN ${c} INTEGER NOT NULL DEFAULT 0;`)).join('\n')}
CREATE TEMP TABLE usage_details_by_hour AS
  SELECT ts / ${HOUR_MS} - (ts % ${HOUR_MS} < 0) AS p, key_id, model, upstream, ${rawSums(columns)}
  FROM usage GROUP BY 1, 2, 3, 4;
${update('usage_hourly', 'hour', 'temp.usage_details_by_hour')}
${update('usage_daily', 'day', `(SELECT p / 24 - (p % 24 < 0) AS p, key_id, model, upstream, ${columns.map((c) => `SUM(${c}) AS ${c}`).join(', ')}
      FROM temp.usage_details_by_hour GROUP BY 1, 2, 3, 4)`)}
DROP TABLE temp.usage_details_by_hour;
`;
}

/**
 * Migration 8, part 2: a rollup over all keys (sql-common.ts TOTAL_ROLLUPS: per period, model and
 * upstream, every column ROLLUP_COLUMNS names), filled by adding up the per-key rollup of the same
 * period, complete by then: far fewer rows than usage, and exact as it is.
 */
function totalRollup(table: string, period: string, perKey: string): string {
  return `
CREATE TABLE ${table} (
  ${period} INTEGER NOT NULL,
  model TEXT NOT NULL,
  upstream TEXT NOT NULL,
  ${ROLLUP_COLUMNS.map((c) => `${c} INTEGER NOT NULL DEFAULT 0,`).join('\n  ')}
  PRIMARY KEY (${period}, model, upstream)
) WITHOUT ROWID;
INSERT INTO ${table} (${period}, model, upstream, ${ROLLUP_COLUMNS.join(', ')})
SELECT ${period}, model, upstream, ${ROLLUP_COLUMNS.map((c) => `SUM(${c})`).join(', ')} FROM ${perKey} GROUP BY 1, 2, 3;
`;
}

export interface Migration {
  /** What the migration does, for the error message if it fails. */
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    // Exactly the schema the store created before it was versioned (those files are at
    // user_version 0): IF NOT EXISTS makes this a no-op on them and the whole schema on a new file.
    name: 'keys, usage and meta',
    sql: `
CREATE TABLE IF NOT EXISTS keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,
  key_preview TEXT NOT NULL,
  budget_tokens INTEGER NOT NULL,
  window_seconds INTEGER NOT NULL,
  rpm INTEGER NOT NULL,
  concurrent INTEGER NOT NULL,
  models TEXT,
  expires_at INTEGER,
  disabled INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
  id INTEGER PRIMARY KEY,
  ts INTEGER NOT NULL,
  key_id TEXT NOT NULL,
  request_id TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  model TEXT NOT NULL,
  status INTEGER NOT NULL,
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  cache_creation_tokens INTEGER NOT NULL,
  cache_read_tokens INTEGER NOT NULL,
  billed_tokens INTEGER NOT NULL,
  latency_ms INTEGER NOT NULL,
  cached INTEGER NOT NULL,
  streamed INTEGER NOT NULL,
  outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key_id, ts);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('keys_generation', '0');
`,
  },
  {
    // Coalesced refusals: one row may stand for several requests (UsageRecord.requests).
    name: 'usage.requests',
    sql: 'ALTER TABLE usage ADD COLUMN requests INTEGER NOT NULL DEFAULT 1;',
  },
  {
    // Totals per (hour, key, model) and per (UTC day, key, model), kept in the same transaction
    // as every usage insert, so that a report reads one row per group and day (per group and
    // hour in the partial days at the edges of its range, raw rows only in the partial hours)
    // instead of one per request. Periods are floor(ts / period) (the expression floors negative
    // ts too); errors and cached requests are counted per request, as reports count them.
    name: 'usage_hourly and usage_daily rollups, backfilled from usage',
    sql: rollupTable('usage_hourly', 'hour', HOUR_MS) + rollupTable('usage_daily', 'day', DAY_MS),
  },
  {
    // Per-key response-cache settings (KeyRecord.cacheTtlSeconds, cacheGroup). NULL, what every
    // existing key reads back, is the gateway's default TTL and entries scoped to the key alone.
    name: 'keys.cache_ttl_seconds and keys.cache_group',
    sql: `
ALTER TABLE keys ADD COLUMN cache_ttl_seconds INTEGER;
ALTER TABLE keys ADD COLUMN cache_group TEXT;
`,
  },
  {
    // The budget tokens a cache hit saved (UsageRecord.savedTokens), summed in the rollups like
    // the other token counts. Rows written before it saved nothing, so 0 keeps the rollups exact.
    name: 'usage.saved_tokens, summed in usage_hourly and usage_daily',
    sql: `
ALTER TABLE usage ADD COLUMN saved_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN saved_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN saved_tokens INTEGER NOT NULL DEFAULT 0;
`,
  },
  {
    // The upstream that served each request (UsageRecord.upstream; '' for none), and a dimension
    // of the rollups, so that a report by upstream reads them like any other. Existing rows served
    // no named upstream: '' on usage (a constant default: no rewrite of the big table) and on the
    // rollups, which are rebuilt with upstream in their key by copying their own rows, one per
    // period, key and model (far fewer than usage rows), not re-aggregated from usage.
    name: 'usage.upstream, a dimension of usage_hourly and usage_daily',
    sql: `ALTER TABLE usage ADD COLUMN upstream TEXT NOT NULL DEFAULT '';
${rollupWithUpstream('usage_hourly', 'hour')}${rollupWithUpstream('usage_daily', 'day')}`,
  },
  {
    // The attached MCP servers a key may use (KeyRecord.mcpServers): a JSON array of names. '[]',
    // what every existing key reads back, is none.
    name: 'keys.mcp_servers',
    sql: "ALTER TABLE keys ADD COLUMN mcp_servers TEXT NOT NULL DEFAULT '[]';",
  },
  {
    // What the dashboard's overview needs per period and cannot get from the sums: failed
    // requests by kind and a latency histogram (rollupDetails), exact for the rows already
    // stored; and rollups over all keys (totalRollup), so that the overview and reports not by
    // key read a few rows per period however many keys there are.
    name: 'error kinds and latency histogram in the rollups, counted from usage; usage_hourly_total and usage_daily_total',
    sql: rollupDetails() +
      TOTAL_ROLLUPS.map((r, i) => totalRollup(r.table, r.period, ROLLUPS[i]!.table)).join(''),
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

function userVersion(db: DatabaseSync): number {
  return Number((db.prepare('PRAGMA user_version').get() as { user_version: number }).user_version);
}

/** Brings the file to SCHEMA_VERSION; refuses a file written by a newer claudcode. */
export function migrate(db: DatabaseSync): void {
  // The common case (already current) takes no write lock.
  if (userVersion(db) === SCHEMA_VERSION) return;
  db.exec('BEGIN IMMEDIATE');
  try {
    const from = userVersion(db);
    if (from > SCHEMA_VERSION) {
      throw new Error(
        `the store's schema is version ${from}, newer than this claudcode knows (${SCHEMA_VERSION}): upgrade claudcode`,
      );
    }
    for (let version = from + 1; version <= SCHEMA_VERSION; version++) {
      const migration = MIGRATIONS[version - 1]!;
      try {
        db.exec(migration.sql);
      } catch (err) {
        // Reworded in place so that the SQLite code (errcode, errstr) stays on the error.
        if (err instanceof Error) err.message = `schema migration ${version} (${migration.name}) failed: ${err.message}`;
        throw err;
      }
    }
    // user_version lives in the file header and commits with the migrations.
    db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    db.exec('COMMIT');
  } catch (err) {
    if (db.isTransaction) db.exec('ROLLBACK');
    throw err;
  }
}
