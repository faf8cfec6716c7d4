/**
 * What only the PostgreSQL store has (the contract it shares with SQLite is store.test.ts):
 * versioned migrations under the advisory lock (fresh, a no-op on reopen, instances opening one
 * fresh database at once, a newer or conflicting schema refused, every earlier version migrated
 * with its rows under upstream '', its failures and latencies counted into the rollups by
 * migration 6); reports and series from the rollups (per key and over all keys) equal one
 * aggregate over the raw rows for any range, grouping (upstream and hour included) and filter,
 * and every rollup equals the raw rows aggregated afresh in JavaScript (usage-reference.ts), with
 * batches written by several stores at once; usage batches that are safe to retry, even after a COMMIT whose answer was lost; a server that
 * is unreachable at start (a bounded wait, a clear error, no credentials) or that goes away at
 * run time (calls reject, then succeed, nothing lost or doubled).
 *
 * Each suite has its own database (test/services.ts), dropped after; outages are made with a TCP
 * proxy the test takes down and brings back, and with pg_terminate_backend.
 */
import { Writable } from 'node:stream';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/logger.ts';
import { describeDatabaseUrl, PostgresStore, type PostgresOptions } from '../src/store/postgres.ts';
import { MIGRATIONS, SCHEMA_VERSION } from '../src/store/postgres-schema.ts';
import type { ReportGrouping, UsageQuery, UsageRecord, UsageRow } from '../src/store/types.ts';
import {
  expectRandomReports, expectRandomSeries, randomUsageRecords, randomUsageSpan, seededRandom, startTcpProxy, usageRecordAt, withUpstreams,
  type ReportContract, type TcpProxy,
} from './fixtures.ts';
import { createTestDatabase, POSTGRES_ADMIN_URL, services } from './services.ts';
import {
  ALL_ROLLUPS, recordFromRow, rollupReference, rollupRowsSql, seriesReference, sortRollupRows, USAGE_TABLE_COLUMNS, type RollupRow,
  type UsageTableRow,
} from './usage-reference.ts';

const HOUR = 3_600_000;
const T = Date.UTC(2026, 2, 10, 12, 0, 0); // 2026-03-10 12:00 UTC
const usage = (over: Partial<UsageRecord> = {}) => usageRecordAt({ ts: T, keyId: 'key_p' }, over);

/** A logger whose lines the test can read. */
function capturedLogger(): { logger: PostgresOptions['logger']; lines: () => Array<Record<string, unknown>>; text: () => string } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk.toString('utf8'));
      done();
    },
  });
  return {
    logger: createLogger('debug', sink),
    lines: () => chunks.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>),
    text: () => chunks.join(''),
  };
}

const silent = () => createLogger('silent');

/** The test server, as the proxies reach it and the store's messages name it. */
const SERVER = { host: new URL(POSTGRES_ADMIN_URL).hostname, port: Number(new URL(POSTGRES_ADMIN_URL).port || 5432) };
const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Databases made by this file, dropped after it (also when a test fails). */
const databases: { drop(): Promise<void> }[] = [];
async function freshDatabase(label: string): Promise<string> {
  const db = await createTestDatabase(label);
  databases.push(db);
  return db.url;
}
afterAll(async () => {
  await Promise.all(databases.map((db) => db.drop()));
});

/** A plain connection to `url`, for looking at what the store wrote; ended after `work`. */
async function withClient<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** `url` reached through `proxy` instead of directly. */
function viaProxy(url: string, proxy: TcpProxy): string {
  const u = new URL(url);
  u.host = `127.0.0.1:${proxy.port}`;
  return u.toString();
}

const NUMERIC_FIELDS = ['requests', 'errors', 'cachedRequests', 'inputTokens', 'outputTokens', 'cacheCreationTokens', 'cacheReadTokens', 'billedTokens', 'savedTokens', 'totalLatencyMs'] as const;

/** The reference: one aggregate over the raw usage rows, each counted as `requests` requests, sorted bytewise. */
const RAW_GROUP: Record<ReportGrouping, string> = {
  model: 'model',
  key: 'key_id',
  day: "to_char(to_timestamp(ts / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
  hour: `to_char(to_timestamp(ts / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:00"Z"')`,
  upstream: 'upstream',
};
async function rawReport(client: pg.Client, query: UsageQuery): Promise<UsageRow[]> {
  const where: string[] = [];
  const values: unknown[] = [];
  if (query.keyId !== undefined) where.push(`key_id = $${values.push(query.keyId)}`);
  if (query.model !== undefined) where.push(`model = $${values.push(query.model)}`);
  if (query.upstream !== undefined) where.push(`upstream = $${values.push(query.upstream)}`);
  if (query.sinceMs !== undefined) where.push(`ts >= $${values.push(query.sinceMs)}`);
  if (query.untilMs !== undefined) where.push(`ts < $${values.push(query.untilMs)}`);
  const { rows } = await client.query<Record<string, string>>(
    `SELECT ${RAW_GROUP[query.by]} AS "group", model,
       SUM(requests) AS requests,
       SUM(CASE WHEN status >= 400 OR outcome <> 'ok' THEN requests ELSE 0 END) AS errors,
       SUM(CASE WHEN cached THEN requests ELSE 0 END) AS "cachedRequests",
       SUM(input_tokens) AS "inputTokens", SUM(output_tokens) AS "outputTokens",
       SUM(cache_creation_tokens) AS "cacheCreationTokens", SUM(cache_read_tokens) AS "cacheReadTokens",
       SUM(billed_tokens) AS "billedTokens", SUM(saved_tokens) AS "savedTokens", SUM(latency_ms) AS "totalLatencyMs"
     FROM usage ${where.length ? `WHERE ${where.join(' AND ')}` : ''} GROUP BY 1, 2`,
    values,
  );
  const bytes = (s: string) => Buffer.from(s, 'utf8');
  return rows
    .map((row) => ({ group: row.group!, model: row.model!, ...Object.fromEntries(NUMERIC_FIELDS.map((f) => [f, Number(row[f])])) }) as UsageRow)
    .sort((a, b) => Buffer.compare(bytes(a.group), bytes(b.group)) || Buffer.compare(bytes(a.model), bytes(b.model)));
}

/** Requests per key, from the raw rows: what a lost or doubled write would change. */
async function rawTotals(url: string): Promise<{ rows: number; requests: number; billed: number; saved: number }> {
  return withClient(url, async (client) => {
    const { rows } = await client.query<{ rows: string; requests: string | null; billed: string | null; saved: string | null }>(
      'SELECT count(*) AS rows, SUM(requests) AS requests, SUM(billed_tokens) AS billed, SUM(saved_tokens) AS saved FROM usage',
    );
    return { rows: Number(rows[0]!.rows), requests: Number(rows[0]!.requests ?? 0), billed: Number(rows[0]!.billed ?? 0), saved: Number(rows[0]!.saved ?? 0) };
  });
}

function totalsOf(records: readonly UsageRecord[]): { rows: number; requests: number; billed: number; saved: number } {
  return {
    rows: records.length,
    requests: records.reduce((n, r) => n + (r.requests ?? 1), 0),
    billed: records.reduce((n, r) => n + r.billedTokens, 0),
    saved: records.reduce((n, r) => n + (r.savedTokens ?? 0), 0),
  };
}

/**
 * Saved tokens on the cache hits among random records (and, now and then, on others: the sums
 * must not care), drawn from their own generator so that the records' other fields stay as seeded.
 */
function withSavedTokens(records: UsageRecord[], rand: () => number): UsageRecord[] {
  return records.map((r) => (r.cached || rand() < 0.05 ? { ...r, savedTokens: Math.floor(rand() * 8000) } : r));
}

/** The summed columns the rollups had before migration 6, as a fresh aggregate of the raw rows computes them (old rollups' contents). */
const ROLLUP_COLUMNS: Record<string, string> = {
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

/** The raw usage rows, as records. */
async function storedRecords(client: pg.Client): Promise<UsageRecord[]> {
  return (await client.query<UsageTableRow>(`SELECT ${USAGE_TABLE_COLUMNS} FROM usage`)).rows.map(recordFromRow);
}

/**
 * Each rollup (per key and over all keys, hourly and daily) equals the raw rows aggregated afresh
 * in JavaScript (usage-reference.ts), group by group and column by column: the sums, the error
 * kinds and the latency histogram.
 */
async function expectRollupsExact(url: string): Promise<void> {
  await withClient(url, async (client) => {
    const records = await storedRecords(client);
    for (const rollup of ALL_ROLLUPS) {
      const { rows } = await client.query<RollupRow>(rollupRowsSql(rollup));
      const rolled = sortRollupRows(rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === 'string' && !rollup.dimensions.includes(k as never) ? Number(v) : v]))), rollup);
      expect(rolled, `${rollup.table} differs from the raw rows`).toEqual(rollupReference(records, rollup));
    }
  });
}

/** A table's primary key columns, in key order. */
async function primaryKey(url: string, table: string): Promise<string[]> {
  return withClient(url, (c) =>
    c.query<{ attname: string }>(
      `SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
       WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)`,
      [table],
    ).then((r) => r.rows.map((row) => row.attname)),
  );
}

/** Every migration's version, as a fresh database gets them. */
const ALL_VERSIONS = MIGRATIONS.map((_, i) => i + 1);

describe.skipIf(!services.postgres)('PostgreSQL store', () => {
  describe('schema migrations', () => {
    it('migrates a fresh database, and reopening it is a no-op', async () => {
      const url = await freshDatabase('pg_migrate');
      const log = capturedLogger();
      const first = await PostgresStore.open(url, { logger: log.logger });
      await first.close();
      const versions = () => withClient(url, (c) => c.query('SELECT version, name, applied_at FROM schema_version ORDER BY version').then((r) => r.rows));
      const applied = await versions();
      expect(applied.map((r) => [r.version, r.name])).toEqual(MIGRATIONS.map((m, i) => [i + 1, m.name]));
      const tables = await withClient(url, (c) =>
        c.query<{ tablename: string }>("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").then((r) => r.rows.map((x) => x.tablename)),
      );
      expect(tables).toEqual(['keys', 'keys_generation', 'meta', 'schema_version', 'usage', 'usage_daily', 'usage_daily_total', 'usage_hourly', 'usage_hourly_total']);
      const indexes = await withClient(url, (c) =>
        c.query<{ indexdef: string }>("SELECT indexdef FROM pg_indexes WHERE tablename = 'usage'").then((r) => r.rows.map((x) => x.indexdef)),
      );
      expect(indexes.join('\n')).toMatch(/usage_key_ts ON public\.usage USING btree \(key_id, ts\)/);
      expect(indexes.join('\n')).toMatch(/usage_ts ON public\.usage USING btree \(ts\)/);

      const second = await PostgresStore.open(url, { logger: log.logger });
      await second.close();
      expect(await versions()).toEqual(applied);
      expect(log.lines().filter((l) => l.msg === 'PostgreSQL store ready').map((l) => l.migrationsApplied)).toEqual([ALL_VERSIONS, []]);
      // The columns of the later migrations: nullable cache settings and mcp_servers NOT NULL DEFAULT '[]' on keys, saved_tokens NOT NULL DEFAULT 0
      // and upstream NOT NULL DEFAULT '' on usage and both rollups, whose primary keys hold upstream.
      const columns = await withClient(url, (c) =>
        c.query<{ table_name: string; column_name: string; data_type: string; is_nullable: string; column_default: string | null }>(
          `SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns
           WHERE table_schema = 'public' AND column_name IN ('cache_ttl_seconds', 'cache_group', 'mcp_servers', 'saved_tokens', 'upstream') ORDER BY 1, 2`,
        ).then((r) => r.rows),
      );
      expect(columns).toEqual([
        { table_name: 'keys', column_name: 'cache_group', data_type: 'text', is_nullable: 'YES', column_default: null },
        { table_name: 'keys', column_name: 'cache_ttl_seconds', data_type: 'bigint', is_nullable: 'YES', column_default: null },
        { table_name: 'keys', column_name: 'mcp_servers', data_type: 'text', is_nullable: 'NO', column_default: "'[]'::text" },
        ...['usage', 'usage_daily', 'usage_daily_total', 'usage_hourly', 'usage_hourly_total'].flatMap((table_name) => [
          { table_name, column_name: 'saved_tokens', data_type: 'bigint', is_nullable: 'NO', column_default: '0' },
          // The totals' upstream is part of their key from the start: no default.
          { table_name, column_name: 'upstream', data_type: 'text', is_nullable: 'NO', column_default: table_name.endsWith('_total') ? null : "''::text" },
        ]),
      ]);
      expect(await primaryKey(url, 'usage_hourly')).toEqual(['hour', 'key_id', 'model', 'upstream']);
      expect(await primaryKey(url, 'usage_daily')).toEqual(['day', 'key_id', 'model', 'upstream']);
      expect(await primaryKey(url, 'usage_hourly_total')).toEqual(['hour', 'model', 'upstream']);
      expect(await primaryKey(url, 'usage_daily_total')).toEqual(['day', 'model', 'upstream']);
    });

    it('stores opening one fresh database at once all succeed, and migrate it once', async () => {
      for (let round = 0; round < 3; round++) {
        const url = await freshDatabase('pg_race');
        const log = capturedLogger();
        const stores = await Promise.all(Array.from({ length: 5 }, () => PostgresStore.open(url, { logger: log.logger })));
        try {
          expect(await Promise.all(stores.map((s) => s.keysGeneration()))).toEqual([0, 0, 0, 0, 0]);
          await Promise.all(stores.map((s, i) => s.insertUsage([usage({ keyId: `key_${i}` })])));
          expect((await stores[0]!.usageReport({ by: 'key' })).map((r) => [r.group, r.requests])).toEqual(
            [0, 1, 2, 3, 4].map((i) => [`key_${i}`, 1]),
          );
        } finally {
          await Promise.all(stores.map((s) => s.close()));
        }
        const migrated = log.lines().filter((l) => l.msg === 'PostgreSQL store ready').map((l) => l.migrationsApplied);
        expect(migrated.filter((m) => (m as number[]).length > 0)).toEqual([ALL_VERSIONS]);
        expect(migrated).toHaveLength(5);
        expect(await withClient(url, (c) => c.query('SELECT count(*)::int AS n FROM schema_version').then((r) => r.rows[0].n))).toBe(SCHEMA_VERSION);
      }
    });

    /**
     * A database as an earlier claudcode left it at schema `version`: migration 1 with keys, meta
     * and usage on it (the rollups kept as that store kept them: the sums of the raw rows), then
     * migrations 2..version, each recorded in schema_version as `migrate` records it. From version
     * 2 on, one key has cache settings. Answers how many usage rows it wrote.
     */
    async function databaseAtVersion(url: string, version: number): Promise<number> {
      return withClient(url, async (c) => {
        await c.query('BEGIN');
        await c.query(`CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`);
        const apply = async (v: number) => {
          await c.query(MIGRATIONS[v - 1]!.sql);
          await c.query('INSERT INTO schema_version (version, name) VALUES ($1, $2)', [v, MIGRATIONS[v - 1]!.name]);
        };
        await apply(1);
        const insertKey = `INSERT INTO keys (id, name, key_hash, key_preview, budget_tokens, window_seconds, rpm, concurrent, models, expires_at, disabled, created_at, updated_at)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`;
        await c.query(insertKey, ['key_old', 'old', 'f'.repeat(64), 'sk-cc-...ffff', 1000, 3600, 60, 5, ['claude-haiku-4-5'], T + 86_400_000, true, T, T + 1]);
        await c.query(insertKey, ['key_plain', 'plain', 'e'.repeat(64), 'sk-cc-...eeee', 2000, 7200, 6, 2, null, null, false, T + 2, T + 2]);
        await c.query("UPDATE keys_generation SET generation = 7; INSERT INTO meta (name, value) VALUES ('admin_token_sha256', 'abc')");
        await c.query(
          `INSERT INTO usage (record_id, ts, key_id, request_id, endpoint, model, status, input_tokens, output_tokens, cache_creation_tokens,
                              cache_read_tokens, billed_tokens, latency_ms, cached, streamed, outcome, requests)
           SELECT gen_random_uuid(), $1::bigint - 86400000 + (i * 576007) % 172800000, CASE WHEN i % 3 = 0 THEN 'key_plain' ELSE 'key_old' END,
                  'req_old_' || i, 'messages', CASE WHEN i % 2 = 0 THEN 'claude-sonnet-4-6' ELSE 'claude-haiku-4-5' END,
                  (ARRAY[200, 200, 200, 429, 400, 529, 502, 500, 499, 200, 200])[i % 11 + 1], i, 2 * i, 1, 0, 3 * i + 1,
                  floor(exp(((i * 7919) % 1000) / 1000.0 * ln(600000)))::bigint, i % 11 = 0, true,
                  (ARRAY['ok', 'ok', 'ok', 'rejected', 'rejected', 'error', 'error', 'error', 'client_closed', 'client_closed', 'upstream_cut'])[i % 11 + 1],
                  CASE WHEN i % 13 = 0 THEN 4 ELSE 1 END
           FROM generate_series(0, 299) AS i`,
          [T],
        );
        const sums = Object.entries(ROLLUP_COLUMNS).filter(([column]) => column !== 'saved_tokens');
        for (const [table, period, ms] of [['usage_hourly', 'hour', HOUR], ['usage_daily', 'day', 24 * HOUR]] as const) {
          await c.query(
            `INSERT INTO ${table} (${period}, key_id, model, ${sums.map(([column]) => column).join(', ')})
             SELECT floor(ts::numeric / ${ms})::bigint, key_id, model, ${sums.map(([, sum]) => sum).join(', ')} FROM usage GROUP BY 1, 2, 3`,
          );
        }
        for (let v = 2; v <= version; v++) await apply(v);
        if (version >= 2) await c.query("UPDATE keys SET cache_ttl_seconds = 600, cache_group = 'kept' WHERE id = 'key_plain'");
        await c.query('COMMIT');
        return 300;
      });
    }

    it.each(Array.from({ length: SCHEMA_VERSION - 1 }, (_, i) => i + 1))(
      'migrates a database at schema version %i to the current one, keeping its keys, meta and usage; old keys read back with no cache settings and no MCP servers, old usage with nothing saved and no upstream',
      async (version) => {
        const url = await freshDatabase(`pg_from_v${version}`);
        const rows = await databaseAtVersion(url, version);
        const log = capturedLogger();
        const store = await PostgresStore.open(url, { logger: log.logger });
        try {
          expect(log.lines().filter((l) => l.msg === 'PostgreSQL store ready').map((l) => l.migrationsApplied)).toEqual([ALL_VERSIONS.slice(version)]);
          expect(await store.getKey('key_old')).toEqual({
            id: 'key_old', name: 'old', hash: 'f'.repeat(64), preview: 'sk-cc-...ffff', budgetTokens: 1000, windowSeconds: 3600, rpm: 60,
            concurrent: 5, models: ['claude-haiku-4-5'], expiresAt: T + 86_400_000, disabled: true, cacheTtlSeconds: null, cacheGroup: null,
            mcpServers: [], createdAt: T, updatedAt: T + 1,
          });
          const cached = version >= 2 ? { cacheTtlSeconds: 600, cacheGroup: 'kept' } : { cacheTtlSeconds: null, cacheGroup: null };
          expect(await store.getKey('key_plain')).toMatchObject({ models: null, expiresAt: null, disabled: false, ...cached, mcpServers: [] });
          expect((await store.listKeys()).map((k) => [k.id, k.mcpServers])).toEqual([['key_old', []], ['key_plain', []]]);
          expect(await store.keysGeneration()).toBe(7);
          expect(await store.getMeta('admin_token_sha256')).toBe('abc');

          const totals = await rawTotals(url);
          expect(totals).toMatchObject({ rows, saved: 0 });
          // Old rows served no named upstream: '' in usage and in the rollups, whose keys now hold it.
          for (const table of ['usage', 'usage_hourly', 'usage_daily']) {
            expect(await withClient(url, (c) => c.query(`SELECT DISTINCT upstream FROM ${table}`).then((r) => r.rows))).toEqual([{ upstream: '' }]);
          }
          expect(await primaryKey(url, 'usage_hourly')).toEqual(['hour', 'key_id', 'model', 'upstream']);
          await expectRollupsExact(url);
          // The old rows' failures and latencies are in the rollups (counted from them by migration 6), and series read them exactly.
          const kinds = await withClient(url, (c) => c.query(
            'SELECT SUM(err_upstream_error) AS upstream, SUM(err_client_closed) AS closed, SUM(lat_le_10) AS fast, SUM(lat_over) AS slow FROM usage_daily_total',
          ).then((r) => r.rows[0] as Record<string, string>));
          expect(Object.values(kinds).every((n) => Number(n) > 0), JSON.stringify(kinds)).toBe(true);
          const old = await withClient(url, storedRecords);
          for (const query of [
            { sinceMs: T - 48 * HOUR, untilMs: T + 48 * HOUR, bucket: 'day' as const },
            { sinceMs: T - 19 * HOUR + 17, untilMs: T + 3 * HOUR + 5, bucket: 'hour' as const },
            { sinceMs: T - 24 * HOUR, untilMs: T + 24 * HOUR, bucket: 'day' as const, keyId: 'key_old' },
            { sinceMs: T - HOUR - 5, untilMs: T + HOUR, bucket: 'minute' as const },
          ]) {
            expect(await store.usageSeries(query), JSON.stringify(query)).toEqual(seriesReference(old, query));
          }
          await withClient(url, async (client) => {
            for (const by of ['model', 'key', 'day', 'upstream'] as const) {
              for (const range of [{}, { sinceMs: T - 5 * HOUR - 17 }, { sinceMs: T - 24 * HOUR, untilMs: T + 3 * HOUR + 5 }]) {
                const report = await store.usageReport({ by, ...range });
                expect(report).toEqual(await rawReport(client, { by, ...range }));
                expect(report.length).toBeGreaterThan(0);
                expect(report.every((r) => r.savedTokens === 0)).toBe(true);
                if (by === 'upstream') expect(report.every((r) => r.group === '')).toBe(true);
              }
            }
          });
          expect((await store.usageReport({ by: 'upstream' })).reduce((n, r) => n + r.requests, 0)).toBe(totals.requests);
          // The migrated database takes the new fields: an upstream beside old rows of the same hour, key and model.
          await store.insertUsage([
            usage({ keyId: 'key_old', ts: T + 10, cached: true, billedTokens: 0, savedTokens: 55 }),
            usage({ keyId: 'key_old', ts: T - 24 * HOUR + 1 }),
            usage({ keyId: 'key_old', ts: T + 20, model: 'claude-haiku-4-5', upstream: 'anthropic-main', billedTokens: 70 }),
          ]);
          await expectRollupsExact(url);
          expect((await store.usageReport({ by: 'key', keyId: 'key_old' })).reduce((n, r) => n + r.savedTokens, 0)).toBe(55);
          const byUpstream = await store.usageReport({ by: 'upstream', sinceMs: T - 24 * HOUR });
          expect(byUpstream).toEqual(await withClient(url, (client) => rawReport(client, { by: 'upstream', sinceMs: T - 24 * HOUR })));
          expect(byUpstream.filter((r) => r.group !== '')).toMatchObject([{ group: 'anthropic-main', model: 'claude-haiku-4-5', requests: 1, billedTokens: 70 }]);
          expect(await store.updateKey('key_old', { cacheTtlSeconds: 0, cacheGroup: 'g1' })).toMatchObject({ cacheTtlSeconds: 0, cacheGroup: 'g1', name: 'old' });
          // Old keys' MCP servers are the column's default, '[]', and take a list like new keys.
          expect(await withClient(url, (c) => c.query('SELECT DISTINCT mcp_servers FROM keys').then((r) => r.rows))).toEqual([{ mcp_servers: '[]' }]);
          expect(await store.updateKey('key_plain', { mcpServers: ['tavily'] })).toMatchObject({ mcpServers: ['tavily'], name: 'plain' });
          expect((await store.getKey('key_plain'))!.mcpServers).toEqual(['tavily']);
        } finally {
          await store.close();
        }
        // Reopening applies nothing more.
        const again = capturedLogger();
        await (await PostgresStore.open(url, { logger: again.logger })).close();
        expect(again.lines().filter((l) => l.msg === 'PostgreSQL store ready').map((l) => l.migrationsApplied)).toEqual([[]]);
      },
    );

    it('refuses a database migrated by a newer claudcode', async () => {
      const url = await freshDatabase('pg_newer');
      await (await PostgresStore.open(url, { logger: silent() })).close();
      await withClient(url, (c) => c.query("INSERT INTO schema_version (version, name) VALUES ($1, 'from the future')", [SCHEMA_VERSION + 1]));
      await expect(PostgresStore.open(url, { logger: silent() })).rejects.toThrow(
        `the PostgreSQL store's schema is version ${SCHEMA_VERSION + 1}, newer than this claudcode knows (${SCHEMA_VERSION})`,
      );
    });

    it('rolls a failed migration back whole, and says which one failed', async () => {
      const url = await freshDatabase('pg_conflict');
      await withClient(url, (c) => c.query('CREATE TABLE keys (something TEXT)'));
      const began = Date.now();
      await expect(PostgresStore.open(url, { logger: silent(), connectRetryMs: 10_000 })).rejects.toThrow(
        /schema migration 1 \(keys, keys_generation, .*\) failed: relation "keys" already exists/,
      );
      expect(Date.now() - began).toBeLessThan(2000); // not retried: the server answered
      const left = await withClient(url, (c) =>
        c.query<{ tablename: string }>("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").then((r) => r.rows.map((x) => x.tablename)),
      );
      expect(left).toEqual(['keys']); // schema_version and the rest rolled back with it
    });
  });

  describe('reports from the rollups', () => {
    const rand = seededRandom(20260311);
    const span = randomUsageSpan(T);
    let records: UsageRecord[];
    let url: string;
    let stores: PostgresStore[];
    let raw: pg.Client;

    beforeAll(async () => {
      url = await freshDatabase('pg_rollup');
      stores = await Promise.all([0, 1, 2].map(() => PostgresStore.open(url, { logger: silent() })));
      records = withUpstreams(withSavedTokens(randomUsageRecords(rand, { count: 4000, ...span }), seededRandom(43)), seededRandom(44));
      // Out of time order, in batches of every size, three stores writing at once: the rollups
      // merge rows across batches and across concurrent writers into the same groups.
      const batches: UsageRecord[][] = [];
      for (let i = 0; i < records.length; ) {
        const size = 1 + Math.floor(rand() * 300);
        batches.push(records.slice(i, i + size));
        i += size;
      }
      await Promise.all(stores.map(async (store, s) => {
        for (let b = s; b < batches.length; b += stores.length) await store.insertUsage(batches[b]!);
      }));
      raw = new pg.Client({ connectionString: url });
      await raw.connect();
    });
    afterAll(async () => {
      await raw?.end();
      await Promise.all((stores ?? []).map((s) => s.close()));
    });

    it('keeps the rollups equal to the raw rows, in every summed column (saved tokens included)', async () => {
      expect(totalsOf(records).saved).toBeGreaterThan(0);
      expect(await rawTotals(url)).toEqual(totalsOf(records));
      await expectRollupsExact(url);
    });

    const contract = (): ReportContract => ({ rand, span, records, store: (i) => stores[i % 3]!, rawReport: (query) => rawReport(raw, query) });

    it('equals the raw aggregate for random ranges, groupings and keys', async () => {
      expect(await expectRandomReports(contract(), 400, false)).toBeGreaterThan(300);
    });

    it('equals the raw aggregate by UTC hour, and narrowed to a model or an upstream, for random ranges', async () => {
      expect(await expectRandomReports(contract(), 300, true)).toBeGreaterThan(150);
    });

    it('gives series equal to the raw records for random ranges, buckets and filters', async () => {
      await expectRandomSeries(contract(), 60);
    });

    it('groups by upstream from the rollups as the raw rows do: a group per name, and \'\' for requests no upstream served', async () => {
      const requests = (rows: readonly { requests?: number }[]) => rows.reduce((n, r) => n + (r.requests ?? 1), 0);
      const all = await stores[0]!.usageReport({ by: 'upstream' });
      expect([...new Set(all.map((r) => r.group))]).toEqual(['', 'anthropic-main', 'api.anthropic.com', 'backup-eu']);
      expect(all).toEqual(await rawReport(raw, { by: 'upstream' }));
      expect(requests(all.filter((r) => r.group === ''))).toBe(requests(records.filter((r) => !r.upstream)));
      expect(requests(all)).toBe(requests(records));
      for (const range of [
        { sinceMs: T - 24 * HOUR - 7, untilMs: T + 27 * HOUR + 5 },
        { sinceMs: T + 1, untilMs: T + 2 * HOUR - 1 },
        { sinceMs: T - 30 * HOUR, keyId: 'key_b' },
      ]) {
        expect(await stores[1]!.usageReport({ by: 'upstream', ...range }), JSON.stringify(range)).toEqual(await rawReport(raw, { by: 'upstream', ...range }));
      }
    });

    it('gives budget buckets equal to the raw rows', async () => {
      const since = T - 5 * HOUR - 7;
      const until = T + 3 * HOUR + 11;
      const expected = new Map<string, number>();
      for (const r of records) {
        if (r.ts < since || r.ts >= until || r.billedTokens <= 0) continue;
        const k = `${r.keyId}|${Math.floor(r.ts / 60_000)}`;
        expected.set(k, (expected.get(k) ?? 0) + r.billedTokens);
      }
      const buckets = await stores[0]!.budgetBuckets(since, { untilMs: until });
      expect(new Map(buckets.map((b) => [`${b.keyId}|${b.minute}`, b.tokens]))).toEqual(expected);
      for (const b of buckets) expect(typeof b.minute === 'number' && typeof b.tokens === 'number').toBe(true);
    });
  });

  describe('report order in a database with a linguistic collation', () => {
    it('is bytewise all the same', async () => {
      // en-US sorts "a B claude_c Claude-a claude-b"; reports must not.
      const name = `claudcode_test_pg_icu_${Date.now().toString(36)}`;
      await withClient(POSTGRES_ADMIN_URL, (c) => c.query(`CREATE DATABASE ${name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'`));
      databases.push({ drop: () => withClient(POSTGRES_ADMIN_URL, (c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)).then(() => undefined) });
      const u = new URL(POSTGRES_ADMIN_URL);
      u.pathname = `/${name}`;
      const store = await PostgresStore.open(u.toString(), { logger: silent() });
      try {
        const names = ['claude_c', 'Claude-a', 'claude-b', 'B', 'a'];
        await store.insertUsage(names.map((model, i) => usage({ keyId: names[(i + 2) % names.length]!, model })));
        const bytewise = [...names].sort();
        expect((await store.usageReport({ by: 'model' })).map((r) => r.model)).toEqual(bytewise);
        expect((await store.usageReport({ by: 'key' })).map((r) => r.group)).toEqual(bytewise);
        for (const [i, id] of bytewise.entries()) {
          await store.createKey({
            id, name: id, hash: `hash_${i}`, preview: 'p', budgetTokens: 1, windowSeconds: 1, rpm: 1, concurrent: 1,
            models: null, expiresAt: null, disabled: false, cacheTtlSeconds: null, cacheGroup: null, mcpServers: [], createdAt: T, updatedAt: T,
          });
        }
        expect((await store.listKeys()).map((k) => k.id)).toEqual(bytewise);
      } finally {
        await store.close();
      }
    });
  });

  describe('usage batches written more than once', () => {
    let url: string;
    let store: PostgresStore;
    beforeAll(async () => {
      url = await freshDatabase('pg_retry');
      store = await PostgresStore.open(url, { logger: silent() });
    });
    afterAll(async () => {
      await store?.close();
    });

    it('count once: the same batch twice, a batch with new records after old ones, a record twice in one batch', async () => {
      const batch = [usage({ ts: T + 1 }), usage({ ts: T + HOUR + 2, requests: 4, status: 429, outcome: 'rejected' }), usage({ ts: T + 1, billedTokens: 7, cached: true, savedTokens: 70 })];
      await store.insertUsage(batch);
      await store.insertUsage(batch);
      expect(await rawTotals(url)).toEqual(totalsOf(batch));
      const newer = [usage({ ts: T + 5 }), usage({ ts: T + 2 * HOUR })];
      await store.insertUsage([...batch, ...newer]);
      const twice = usage({ ts: T + 9, billedTokens: 1000 });
      await store.insertUsage([twice, twice, { ...twice }]);
      const all = [...batch, ...newer, twice];
      expect(await rawTotals(url)).toEqual(totalsOf(all));
      await expectRollupsExact(url);
      const requests = (await store.usageReport({ by: 'key' })).reduce((n, r) => n + r.requests, 0);
      expect(requests).toBe(totalsOf(all).requests);
      const hourly = (await store.usageReport({ by: 'key', sinceMs: T, untilMs: T + HOUR })).reduce((n, r) => n + r.billedTokens, 0);
      expect(hourly).toBe([batch[0]!, batch[2]!, newer[0]!, twice].reduce((n, r) => n + r.billedTokens, 0));
    });

    it('keep records apart that differ in any field, even with one request id', async () => {
      const before = await rawTotals(url);
      const a = usage({ ts: T + 3 * HOUR });
      const variants = [
        a, { ...a, ts: a.ts + 1 }, { ...a, billedTokens: a.billedTokens + 1 }, { ...a, requests: 2 }, { ...a, cached: true }, { ...a, savedTokens: 9 },
        { ...a, upstream: 'anthropic-main' }, { ...a, upstream: 'backup-eu' },
      ];
      await store.insertUsage(variants);
      const after = await rawTotals(url);
      expect(after.rows - before.rows).toBe(variants.length);
    });

    it('store what PostgreSQL text and BIGINT cannot take as given, rather than failing the batch on every retry', async () => {
      await store.insertUsage([usage({ keyId: 'key_odd', model: 'bad\u0000model', inputTokens: 1.5, latencyMs: 2.4, savedTokens: 3.6 })]);
      expect(await store.usageReport({ by: 'key', keyId: 'key_odd' })).toMatchObject([{ model: 'bad\uFFFDmodel', inputTokens: 2, totalLatencyMs: 2, savedTokens: 4 }]);
    });
  });

  describe('where the store says it is', () => {
    it('names host, port and database, never the user or password', () => {
      expect(describeDatabaseUrl('postgres://claudcode:pw@db.internal:6543/gateway?sslmode=require')).toBe('db.internal:6543/gateway');
      expect(describeDatabaseUrl('postgresql://u:p%40ss@10.0.0.5/claudcode')).toBe('10.0.0.5:5432/claudcode');
      expect(describeDatabaseUrl('postgres://app@[::1]:5433')).toBe('[::1]:5433/app');
      expect(describeDatabaseUrl('postgres:///claudcode?host=/var/run/postgresql')).toBe('/var/run/postgresql:5432/claudcode');
      expect(describeDatabaseUrl('not a url with secret')).not.toMatch(/secret/);
    });
  });

  describe('an unreachable server at start', () => {
    it('is retried for connectRetryMs, logged each time, then refused naming the server, never the password', async () => {
      const log = capturedLogger();
      const began = Date.now();
      const opening = PostgresStore.open('postgres://claudcode:s3cret-pw%21@127.0.0.1:1/claudcode', { logger: log.logger, connectRetryMs: 700 });
      const err = await opening.then(() => undefined, (e: unknown) => e as Error);
      const elapsed = Date.now() - began;
      expect(err).toBeInstanceOf(Error);
      expect(err!.message).toMatch(/^PostgreSQL 127\.0\.0\.1:1\/claudcode is not reachable \(gave up after \d+ attempts in \d+\.\d s\): connect ECONNREFUSED 127\.0\.0\.1:1$/);
      expect(elapsed).toBeGreaterThanOrEqual(650);
      expect(elapsed).toBeLessThan(3000);
      const retries = log.lines().filter((l) => l.level === 40);
      expect(retries.length).toBeGreaterThanOrEqual(2);
      for (const line of retries) expect(line.msg).toMatch(/^PostgreSQL 127\.0\.0\.1:1\/claudcode is not reachable \(connect ECONNREFUSED 127\.0\.0\.1:1\); retrying in \d+ ms$/);
      expect(log.text() + err!.message + String((err as Error & { stack?: string }).stack)).not.toMatch(/s3cret/);
    });

    it('is waited for when it comes up within the time', async () => {
      const url = await freshDatabase('pg_late');
      const proxy = await startTcpProxy(SERVER);
      try {
        await proxy.down();
        const log = capturedLogger();
        const opening = PostgresStore.open(viaProxy(url, proxy), { logger: log.logger, connectRetryMs: 10_000 });
        await new Promise((resolve) => setTimeout(resolve, 600));
        await proxy.up();
        const store = await opening;
        try {
          expect(await store.keysGeneration()).toBe(0);
        } finally {
          await store.close();
        }
        expect(log.lines().filter((l) => l.level === 40).length).toBeGreaterThanOrEqual(2);
      } finally {
        await proxy.close();
      }
    });

    it('is not retried when the server answers no (a missing database)', async () => {
      const u = new URL(POSTGRES_ADMIN_URL);
      u.pathname = '/claudcode_test_no_such_database';
      const began = Date.now();
      await expect(PostgresStore.open(u.toString(), { logger: silent(), connectRetryMs: 10_000 })).rejects.toThrow(
        new RegExp(`^PostgreSQL ${escapeRegExp(`${SERVER.host}:${SERVER.port}`)}/claudcode_test_no_such_database: database "claudcode_test_no_such_database" does not exist$`),
      );
      expect(Date.now() - began).toBeLessThan(2000);
    });
  });

  describe('a server that goes away at run time', () => {
    it('fails calls while it is away and loses or doubles nothing when it is back', async () => {
      const url = await freshDatabase('pg_outage');
      const proxy = await startTcpProxy(SERVER);
      const log = capturedLogger();
      const store = await PostgresStore.open(viaProxy(url, proxy), { logger: log.logger, connectTimeoutMs: 1000 });
      try {
        const written = [usage(), usage()];
        await store.insertUsage(written);
        await Promise.all([store.ping(), store.ping(), store.keysGeneration()]); // several pooled connections

        await proxy.down();
        // What the recorder does: the batch fails, is kept, and is sent again with newer records.
        let queued: UsageRecord[] = [];
        for (let attempt = 0; attempt < 3; attempt++) {
          queued = [...queued, usage({ ts: T + attempt })];
          const began = Date.now();
          await expect(store.insertUsage(queued)).rejects.toThrow();
          expect(Date.now() - began).toBeLessThan(1500);
        }
        await expect(store.ping()).rejects.toThrow();
        await expect(store.usageReport({ by: 'key' })).rejects.toThrow();

        await proxy.up();
        await store.insertUsage(queued);
        await store.ping();
        written.push(...queued);
        expect(await rawTotals(url)).toEqual(totalsOf(written));
        expect((await store.usageReport({ by: 'key' })).reduce((n, r) => n + r.requests, 0)).toBe(written.length);
        await expectRollupsExact(url);
      } finally {
        await store.close();
        await proxy.close();
      }
      // Idle connections cut by the outage were logged, not thrown.
      expect(log.text()).toMatch(/PostgreSQL connection lost/);
    });

    it('does not double a batch whose COMMIT went through but whose answer was lost', async () => {
      const url = await freshDatabase('pg_lost_reply');
      const proxy = await startTcpProxy(SERVER);
      const store = await PostgresStore.open(viaProxy(url, proxy), { logger: silent() });
      try {
        const batch = [usage({ billedTokens: 10 }), usage({ ts: T + HOUR, billedTokens: 20, requests: 3 })];
        proxy.dropReplies(true);
        const writing = store.insertUsage(batch);
        const failed = writing.then(() => false, () => true);
        // The statement commits on the server; its answer never reaches the store.
        for (let i = 0; i < 100 && (await rawTotals(url)).rows < batch.length; i++) await new Promise((resolve) => setTimeout(resolve, 20));
        expect(await rawTotals(url)).toEqual(totalsOf(batch));
        await proxy.down(); // the connection drops: the outcome is unknown to the store
        expect(await failed).toBe(true);
        proxy.dropReplies(false);
        await proxy.up();
        await store.insertUsage(batch); // the recorder's retry
        expect(await rawTotals(url)).toEqual(totalsOf(batch));
        await expectRollupsExact(url);
        expect(await store.usageReport({ by: 'key' })).toMatchObject([{ requests: 4, billedTokens: 30 }]);
      } finally {
        await store.close();
        await proxy.close();
      }
    });

    it('replaces connections the server terminates, without an unhandled error', async () => {
      const url = await freshDatabase('pg_terminate');
      const log = capturedLogger();
      const store = await PostgresStore.open(url, { logger: log.logger });
      const database = new URL(url).pathname.slice(1);
      try {
        await Promise.all([store.ping(), store.ping(), store.ping()]);
        const terminated = await withClient(POSTGRES_ADMIN_URL, (c) =>
          c.query<{ n: number }>(
            "SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = 'claudcode'",
            [database],
          ).then((r) => r.rows[0]!.n),
        );
        expect(terminated).toBeGreaterThanOrEqual(1);
        // The pool hears of the terminations (each connection's socket closes) and drops them.
        const lost = () => log.lines().filter((l) => /PostgreSQL connection lost/.test(String(l.msg))).length;
        for (let i = 0; i < 100 && lost() < terminated; i++) await new Promise((resolve) => setTimeout(resolve, 20));
        expect(lost()).toBe(terminated);
        const batch = [usage(), usage()];
        await store.insertUsage(batch);
        expect(await rawTotals(url)).toEqual(totalsOf(batch));
      } finally {
        await store.close();
      }
    });
  });

  describe('setMetaIfAbsent across instances', () => {
    it('settles every race on one value', async () => {
      const url = await freshDatabase('pg_meta');
      const stores = await Promise.all([0, 1, 2, 3].map(() => PostgresStore.open(url, { logger: silent() })));
      try {
        for (let round = 0; round < 10; round++) {
          const answers = await Promise.all(stores.flatMap((s, i) => [0, 1, 2].map((j) => s.setMetaIfAbsent(`admin_token_${round}`, `s${i}c${j}`))));
          expect(new Set(answers).size).toBe(1);
          expect(await stores[3]!.getMeta(`admin_token_${round}`)).toBe(answers[0]);
        }
      } finally {
        await Promise.all(stores.map((s) => s.close()));
      }
    });
  });
});
