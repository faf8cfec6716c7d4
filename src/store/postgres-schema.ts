/**
 * The PostgreSQL schema as an ordered list of migrations (the scale-out store, postgres.ts).
 * `schema_version` holds one row per migration applied; `migrate` applies the missing ones at
 * open, all in one transaction that first takes a transaction-scoped advisory lock, so that
 * instances starting together against a fresh database queue up behind the first: it migrates,
 * the others find the version current and do nothing. A failed migration rolls back whole.
 *
 * A migration's text is history: once released it never changes (a database that already ran it
 * will not run it again); a change to the schema is a new migration at the end of the list.
 *
 * Layout mirrors the SQLite store (schema.ts): keys, usage with its (key_id, ts) and (ts)
 * indexes, hourly and daily rollups per (period, key, model, upstream) and per (period, model,
 * upstream) over all keys, meta. Differences, for
 * PostgreSQL: every time and count is BIGINT (ms since the epoch, tokens); models is TEXT[] (but
 * mcp_servers is JSON text, as in SQLite); the keys generation is its own one-row table; and each
 * usage row carries `record_id`, a digest of the record's fields (postgres-usage.ts) under a
 * primary key, so that a batch written again after an unknown COMMIT outcome adds nothing twice.
 */
import type pg from 'pg';
import { floorDiv } from './postgres-usage.ts';
import { ERROR_COLUMNS, HOUR_MS, LATENCY_COLUMNS, rawSums, ROLLUP_COLUMNS, ROLLUPS, TOTAL_ROLLUPS } from './sql-common.ts';

/**
 * The advisory lock key migrations run under ("claudc" in ASCII). Advisory locks are per
 * database, so databases on one server never wait on each other.
 */
export const MIGRATION_LOCK = 0x636c61756463n;

/**
 * A rollup table of usage per (period, key, model); migration 4 adds upstream to its key. Part
 * of migration 1's text: never edit.
 */
function rollupTable(table: string, period: string): string {
  return `
CREATE TABLE ${table} (
  ${period} BIGINT NOT NULL,
  key_id TEXT NOT NULL,
  model TEXT NOT NULL,
  requests BIGINT NOT NULL,
  errors BIGINT NOT NULL,
  cached_requests BIGINT NOT NULL,
  input_tokens BIGINT NOT NULL,
  output_tokens BIGINT NOT NULL,
  cache_creation_tokens BIGINT NOT NULL,
  cache_read_tokens BIGINT NOT NULL,
  billed_tokens BIGINT NOT NULL,
  latency_ms BIGINT NOT NULL,
  PRIMARY KEY (${period}, key_id, model)
);
CREATE INDEX ${table}_key ON ${table} (key_id, ${period});
`;
}

/**
 * Migration 6, part 1: the overview's columns on the per-key rollups (failed requests by kind,
 * the latency histogram: sql-common.ts ERROR_COLUMNS and LATENCY_COLUMNS, types.ts for their
 * meaning), added with a constant default (no rewrite), then counted exactly from the raw usage
 * rows: one pass over usage (only read), aggregated per hour, key, model and upstream into a
 * temporary table, which updates the hourly rollup's rows and, added up per day, the daily one's
 * (one new version of each rollup row). Their other columns are left as they are. Built from
 * those constants, which therefore never change under it: another histogram or kind mapping is a
 * new migration (which freezes this one's lists first). Mirrors SQLite's migration 8.
 */
function rollupDetails(): string {
  const columns = [...ERROR_COLUMNS, ...LATENCY_COLUMNS];
  const update = (table: string, period: string, from: string) => `
UPDATE ${table} AS r SET ${columns.map((c) => `${c} = f.${c}`).join(', ')}
FROM ${from} AS f
WHERE r.${period} = f.p AND r.key_id = f.key_id AND r.model = f.model AND r.upstream = f.upstream;`;
  return `
${['usage_hourly', 'usage_daily'].map((table) => `ALTER TABLE ${table} ${columns.map((c) => `ADD COLUMN ${c} BIGINT NOT NULL DEFAULT 0`).join(', ')};`).join('\n')}
CREATE TEMP TABLE usage_details_by_hour ON COMMIT DROP AS
  SELECT ${floorDiv('ts', HOUR_MS)} AS p, key_id, model, upstream, ${rawSums(columns)}
  FROM usage GROUP BY 1, 2, 3, 4;
${update('usage_hourly', 'hour', 'usage_details_by_hour')}
${update('usage_daily', 'day', `(SELECT ${floorDiv('p', 24)} AS p, key_id, model, upstream, ${columns.map((c) => `SUM(${c}) AS ${c}`).join(', ')}
      FROM usage_details_by_hour GROUP BY 1, 2, 3, 4)`)}
`;
}

/**
 * Migration 6, part 2: a rollup over all keys (sql-common.ts TOTAL_ROLLUPS: per period, model and
 * upstream, every column ROLLUP_COLUMNS names), filled by adding up the per-key rollup of the same
 * period, complete by then: far fewer rows than usage, and exact as it is.
 */
function totalRollup(table: string, period: string, perKey: string): string {
  return `
CREATE TABLE ${table} (
  ${period} BIGINT NOT NULL,
  model TEXT NOT NULL,
  upstream TEXT NOT NULL,
  ${ROLLUP_COLUMNS.map((c) => `${c} BIGINT NOT NULL DEFAULT 0,`).join('\n  ')}
  PRIMARY KEY (${period}, model, upstream)
);
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
    name: 'keys, keys_generation, usage with hourly and daily rollups, meta',
    sql: `
CREATE TABLE keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,
  key_preview TEXT NOT NULL,
  budget_tokens BIGINT NOT NULL,
  window_seconds BIGINT NOT NULL,
  rpm BIGINT NOT NULL,
  concurrent BIGINT NOT NULL,
  models TEXT[],
  expires_at BIGINT,
  disabled BOOLEAN NOT NULL DEFAULT FALSE,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE TABLE keys_generation (
  only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
  generation BIGINT NOT NULL
);
INSERT INTO keys_generation (only_row, generation) VALUES (TRUE, 0);
CREATE TABLE usage (
  record_id UUID PRIMARY KEY,
  ts BIGINT NOT NULL,
  key_id TEXT NOT NULL,
  request_id TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  model TEXT NOT NULL,
  status INTEGER NOT NULL,
  input_tokens BIGINT NOT NULL,
  output_tokens BIGINT NOT NULL,
  cache_creation_tokens BIGINT NOT NULL,
  cache_read_tokens BIGINT NOT NULL,
  billed_tokens BIGINT NOT NULL,
  latency_ms BIGINT NOT NULL,
  cached BOOLEAN NOT NULL,
  streamed BOOLEAN NOT NULL,
  outcome TEXT NOT NULL,
  requests INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX usage_key_ts ON usage (key_id, ts);
CREATE INDEX usage_ts ON usage (ts);
${rollupTable('usage_hourly', 'hour')}
${rollupTable('usage_daily', 'day')}
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
`,
  },
  {
    // Per-key response-cache settings (KeyRecord.cacheTtlSeconds, cacheGroup). NULL, what every
    // existing key reads back, is the gateway's default TTL and entries scoped to the key alone.
    name: 'keys.cache_ttl_seconds and keys.cache_group',
    sql: `
ALTER TABLE keys ADD COLUMN cache_ttl_seconds BIGINT;
ALTER TABLE keys ADD COLUMN cache_group TEXT;
`,
  },
  {
    // The budget tokens a cache hit saved (UsageRecord.savedTokens), summed in the rollups like
    // the other token counts. Rows written before it saved nothing, so 0 keeps the rollups exact.
    // A constant default: no table rewrite.
    name: 'usage.saved_tokens, summed in usage_hourly and usage_daily',
    sql: `
ALTER TABLE usage ADD COLUMN saved_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN saved_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN saved_tokens BIGINT NOT NULL DEFAULT 0;
`,
  },
  {
    // The upstream that served each request (UsageRecord.upstream; '' for none), and a dimension
    // of the rollups, so that a report by upstream reads them like any other. Every existing row
    // served no named upstream: '' (a constant default, so no table rewrite). The rollups' primary
    // keys gain upstream: their rows stay as they are (one per period, key and model, each now
    // upstream ''), and only their primary key index is rebuilt; usage is not rewritten or
    // reindexed.
    name: 'usage.upstream, a dimension of usage_hourly and usage_daily',
    sql: `
ALTER TABLE usage ADD COLUMN upstream TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_hourly ADD COLUMN upstream TEXT NOT NULL DEFAULT '',
  DROP CONSTRAINT usage_hourly_pkey, ADD PRIMARY KEY (hour, key_id, model, upstream);
ALTER TABLE usage_daily ADD COLUMN upstream TEXT NOT NULL DEFAULT '',
  DROP CONSTRAINT usage_daily_pkey, ADD PRIMARY KEY (day, key_id, model, upstream);
`,
  },
  {
    // The attached MCP servers a key may use (KeyRecord.mcpServers): JSON array text of names, as
    // in the SQLite store (sql-common.ts encodes it for both). '[]', what every existing key reads
    // back, is none; a constant default, so no table rewrite.
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

/**
 * Brings the database to SCHEMA_VERSION on `client` (a connection of its own, not in a
 * transaction); refuses a database migrated by a newer claudcode. Returns the versions applied.
 */
export async function migrate(client: pg.PoolClient): Promise<number[]> {
  await client.query('BEGIN');
  try {
    // Migrations may rewrite large tables: no statement timeout for them.
    await client.query('SET LOCAL statement_timeout = 0');
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK.toString()]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_version (
      version INTEGER PRIMARY KEY,
      name TEXT NOT NULL,
      applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )`);
    const { rows } = await client.query<{ version: number }>('SELECT COALESCE(MAX(version), 0)::int AS version FROM schema_version');
    const from = rows[0]!.version;
    if (from > SCHEMA_VERSION) {
      throw new Error(
        `the PostgreSQL store's schema is version ${from}, newer than this claudcode knows (${SCHEMA_VERSION}): upgrade claudcode`,
      );
    }
    const applied: number[] = [];
    for (let version = from + 1; version <= SCHEMA_VERSION; version++) {
      const migration = MIGRATIONS[version - 1]!;
      try {
        // No parameters: the simple query protocol, which runs several statements in one call.
        await client.query(migration.sql);
      } catch (err) {
        // Reworded in place so that PostgreSQL's fields (code, detail, ...) stay on the error.
        if (err instanceof Error) err.message = `schema migration ${version} (${migration.name}) failed: ${err.message}`;
        throw err;
      }
      await client.query('INSERT INTO schema_version (version, name) VALUES ($1, $2)', [version, migration.name]);
      applied.push(version);
    }
    await client.query('COMMIT');
    return applied;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined); // the connection may be gone
    throw err;
  }
}
