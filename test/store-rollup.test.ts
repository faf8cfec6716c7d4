/**
 * The SQLite store's schema and reports: reports served from the daily and hourly rollups (per key
 * and over all keys) equal one plain aggregate over the raw rows for any range, grouping (upstream
 * and UTC hour included), key, model and upstream, over records served by several upstreams and
 * by none; every rollup equals the raw rows aggregated afresh in JavaScript, error kinds and
 * latency histogram included (usage-reference.ts), and so do series; coalesced records count as
 * the requests they stand for; files created by the store before it was versioned, or at any
 * earlier version, migrate cleanly (old rows under upstream '', their failures and latencies
 * counted into the rollups by migration 8); stores opening one fresh file at once do not race. (What every store does — budget bucket filters, a coalesced record in store and admin
 * reports — is the contract suite's, store.test.ts.)
 */
import { join } from 'node:path';
import { DatabaseSync, type SQLInputValue } from 'node:sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MIGRATIONS, SCHEMA_VERSION } from '../src/store/schema.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { ReportGrouping, UsageQuery, UsageRecord, UsageRow } from '../src/store/types.ts';
import {
  expectRandomReports, expectRandomSeries, randomUsageRecords, randomUsageSpan, seededRandom, tempDirs, usageRecordAt, withUpstreams, type ReportContract,
} from './fixtures.ts';
import {
  ALL_ROLLUPS, recordFromRow, rollupReference, rollupRowsSql, seriesReference, sortRollupRows, USAGE_TABLE_COLUMNS, type RollupRow,
  type UsageTableRow,
} from './usage-reference.ts';

const HOUR = 3_600_000;
const DAY = 86_400_000;
const T = Date.UTC(2026, 2, 10, 12, 0, 0); // 2026-03-10 12:00 UTC

const tempDir = tempDirs('store-rollup');
const usage = (over: Partial<UsageRecord> = {}) => usageRecordAt({ ts: T, keyId: 'key_a' }, over);
const random = seededRandom;

/** The reference: one aggregate over the raw usage rows, each counted as `requests` requests. */
const RAW_GROUP: Record<ReportGrouping, string> = {
  model: 'model', key: 'key_id', day: "strftime('%Y-%m-%d', ts / 1000, 'unixepoch')", hour: "strftime('%Y-%m-%dT%H:00Z', ts / 1000, 'unixepoch')", upstream: 'upstream',
};
function rawReport(db: DatabaseSync, query: UsageQuery): UsageRow[] {
  const where: string[] = [];
  const params: SQLInputValue[] = [];
  if (query.keyId !== undefined) (where.push('key_id = ?'), params.push(query.keyId));
  if (query.model !== undefined) (where.push('model = ?'), params.push(query.model));
  if (query.upstream !== undefined) (where.push('upstream = ?'), params.push(query.upstream));
  if (query.sinceMs !== undefined) (where.push('ts >= ?'), params.push(query.sinceMs));
  if (query.untilMs !== undefined) (where.push('ts < ?'), params.push(query.untilMs));
  const rows = db.prepare(`
    SELECT ${RAW_GROUP[query.by]} AS "group", model,
      SUM(requests) AS requests,
      SUM(CASE WHEN status >= 400 OR outcome <> 'ok' THEN requests ELSE 0 END) AS errors,
      SUM(cached * requests) AS cachedRequests,
      SUM(input_tokens) AS inputTokens, SUM(output_tokens) AS outputTokens,
      SUM(cache_creation_tokens) AS cacheCreationTokens, SUM(cache_read_tokens) AS cacheReadTokens,
      SUM(billed_tokens) AS billedTokens, SUM(saved_tokens) AS savedTokens, SUM(latency_ms) AS totalLatencyMs
    FROM usage ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
    GROUP BY 1, 2 ORDER BY 1, 2`).all(...params);
  return rows.map((row) => ({ ...row }) as unknown as UsageRow);
}

/** The raw usage rows, as records. */
function storedRecords(db: DatabaseSync): UsageRecord[] {
  return db.prepare(`SELECT ${USAGE_TABLE_COLUMNS} FROM usage`).all().map((row) => recordFromRow(row as unknown as UsageTableRow));
}

/**
 * Each rollup table (per key and over all keys, hourly and daily) equals the raw rows aggregated
 * afresh in JavaScript (usage-reference.ts), group by group and column by column: the sums, the
 * error kinds and the latency histogram.
 */
function expectRollupsExact(db: DatabaseSync): void {
  const records = storedRecords(db);
  for (const rollup of ALL_ROLLUPS) {
    const rolled = sortRollupRows(db.prepare(rollupRowsSql(rollup)).all().map((r) => ({ ...r }) as RollupRow), rollup);
    expect(rolled, `${rollup.table} differs from the raw rows`).toEqual(rollupReference(records, rollup));
  }
}

/**
 * Saved tokens on the cache hits among random records (and, now and then, on others: the sums
 * must not care), drawn from their own generator so that the records' other fields stay as seeded.
 */
function withSavedTokens(records: UsageRecord[], rand: () => number): UsageRecord[] {
  return records.map((r) => (r.cached || rand() < 0.05 ? { ...r, savedTokens: Math.floor(rand() * 8000) } : r));
}

describe('usage reports from the rollups', () => {
  const rand = random(20260310);
  const span = randomUsageSpan(T);
  let records: UsageRecord[];
  let store: SqliteStore;
  let raw: DatabaseSync;

  beforeAll(async () => {
    const dir = tempDir();
    store = new SqliteStore(dir);
    // Rows pile up on the hour and day boundaries too, where off-by-one errors would show.
    records = withUpstreams(withSavedTokens(randomUsageRecords(rand, { count: 4000, ...span }), random(42)), random(43));
    // Out of time order, in batches of every size: the rollups merge rows across batches.
    for (let i = 0; i < records.length; ) {
      const size = 1 + Math.floor(rand() * 400);
      await store.insertUsage(records.slice(i, i + size));
      i += size;
    }
    raw = new DatabaseSync(store.path, { readOnly: true });
  });
  afterAll(async () => {
    raw.close();
    await store.close();
  });

  const contract = (): ReportContract => ({ rand, span, records, store: () => store, rawReport: (query) => rawReport(raw, query) });

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
    const all = await store.usageReport({ by: 'upstream' });
    expect([...new Set(all.map((r) => r.group))]).toEqual(['', 'anthropic-main', 'api.anthropic.com', 'backup-eu']);
    expect(all).toEqual(rawReport(raw, { by: 'upstream' }));
    // Refusals and cache hits (and records without a name) are all in '', each request in one group.
    expect(requests(all.filter((r) => r.group === ''))).toBe(requests(records.filter((r) => !r.upstream)));
    expect(all.filter((r) => r.group === '').reduce((n, r) => n + r.cachedRequests, 0)).toBe(requests(records.filter((r) => r.cached)));
    expect(requests(all)).toBe(requests(records));
    for (const range of [
      { sinceMs: T - DAY - 7, untilMs: T + DAY + 3 * HOUR + 5 }, // whole days, whole hours and partial ones
      { sinceMs: T + 1, untilMs: T + 2 * HOUR - 1 }, // partial hours and one whole hour
      { sinceMs: T - 30 * HOUR, keyId: 'key_b' },
      { untilMs: T, keyId: 'key_none' },
    ]) {
      expect(await store.usageReport({ by: 'upstream', ...range }), JSON.stringify(range)).toEqual(rawReport(raw, { by: 'upstream', ...range }));
    }
  });

  it('keeps the rollups equal to the raw rows in every summed column, saved tokens included', () => {
    const saved = records.reduce((n, r) => n + (r.savedTokens ?? 0), 0);
    expect(saved).toBeGreaterThan(0);
    expect((raw.prepare('SELECT SUM(saved_tokens) AS s FROM usage').get() as { s: number }).s).toBe(saved);
    expectRollupsExact(raw);
  });

  it('sums saved tokens in reports as the raw rows do, over whole days and their partial edges', async () => {
    const total = (rows: UsageRow[]) => rows.reduce((n, r) => n + r.savedTokens, 0);
    const inRange = (since: number, until: number) => records.filter((r) => r.ts >= since && r.ts < until).reduce((n, r) => n + (r.savedTokens ?? 0), 0);
    expect(total(await store.usageReport({ by: 'day' }))).toBe(inRange(-Infinity, Infinity));
    for (const [since, until] of [[T - DAY - 7, T + DAY + 3 * HOUR + 5], [T + 1, T + 2 * HOUR - 1], [T - 30 * HOUR, T + 40 * HOUR]]) {
      for (const by of ['model', 'key', 'day'] as const) expect(total(await store.usageReport({ by, sinceMs: since, untilMs: until }))).toBe(inRange(since!, until!));
    }
  });

  it('counts coalesced records per request, over whole hours and partial ones', async () => {
    const sums = (rows: UsageRow[]) => rows.reduce((s, r) => ({ requests: s.requests + r.requests, errors: s.errors + r.errors }), { requests: 0, errors: 0 });
    const all = sums(await store.usageReport({ by: 'key' }));
    expect(all.requests).toBe(records.reduce((n, r) => n + (r.requests ?? 1), 0));
    expect(all.requests).toBeGreaterThan(records.length);
    const partial = sums(await store.usageReport({ by: 'key', sinceMs: T + 1, untilMs: T + 2 * HOUR - 1 }));
    expect(partial.requests).toBe(records.filter((r) => r.ts >= T + 1 && r.ts < T + 2 * HOUR - 1).reduce((n, r) => n + (r.requests ?? 1), 0));
  });
});

/** A table's primary key columns, in key order. */
function primaryKey(db: DatabaseSync, table: string): string[] {
  return (db.prepare(`PRAGMA table_info(${table})`).all() as { name: string; pk: number }[])
    .filter((c) => c.pk > 0).sort((a, b) => a.pk - b.pk).map((c) => c.name);
}

/**
 * Status, outcome and latency of the i-th row an older claudcode wrote: every failure kind, and
 * latencies from 1 ms to several minutes (every histogram bucket), so that migration 8's counts
 * from the raw rows are checked in every column.
 */
function oldRow(i: number): { status: number; outcome: string; latency: number } {
  const shapes = [[200, 'ok'], [200, 'ok'], [200, 'ok'], [429, 'rejected'], [400, 'rejected'], [529, 'error'], [502, 'error'], [500, 'error'],
    [499, 'client_closed'], [200, 'client_closed'], [200, 'upstream_cut']] as const;
  const [status, outcome] = shapes[i % shapes.length]!;
  return { status, outcome, latency: Math.floor(Math.exp((((i * 7919) % 1000) / 1000) * Math.log(600_000))) };
}

/**
 * The schema the store created before it was versioned (user_version 0): migration 1 is that
 * schema verbatim (see schema.ts), so a file made with it alone is such an unversioned file.
 */
const UNVERSIONED_SCHEMA = MIGRATIONS[0]!.sql;

describe('schema migrations', () => {
  it('migrates a file created by the unversioned store, keeping its keys, meta and usage', async () => {
    const dir = tempDir();
    const old = new DatabaseSync(join(dir, 'claudcode.db'));
    old.exec('PRAGMA journal_mode = WAL;');
    old.exec(UNVERSIONED_SCHEMA);
    old.prepare(
      `INSERT INTO keys (id, name, key_hash, key_preview, budget_tokens, window_seconds, rpm, concurrent, models, expires_at, disabled, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run('key_old', 'old', 'f'.repeat(64), 'sk-cc-...abcd', 1000, 3600, 60, 5, '["claude-haiku-4-5"]', null, 0, T, T);
    old.exec("UPDATE meta SET value = '7' WHERE name = 'keys_generation'; INSERT INTO meta (name, value) VALUES ('admin_token_sha256', 'abc');");
    const insertOld = old.prepare(
      `INSERT INTO usage (ts, key_id, request_id, endpoint, model, status, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms, cached, streamed, outcome)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const rand = random(7);
    for (let i = 0; i < 500; i++) {
      const ts = T - DAY + Math.floor(rand() * 2 * DAY);
      const { status, outcome, latency } = oldRow(i);
      insertOld.run(ts, i % 3 ? 'key_old' : 'key_gone', `req_old_${i}`, 'messages', i % 2 ? 'claude-haiku-4-5' : 'claude-sonnet-4-6',
        status, i, 2 * i, 1, 0, 3 * i + 1, latency, i % 11 ? 0 : 1, 1, outcome);
    }
    expect((old.prepare('PRAGMA user_version').get() as { user_version: number }).user_version).toBe(0);
    old.close();

    const store = new SqliteStore(dir);
    try {
      expect(await store.getKey('key_old')).toMatchObject({ name: 'old', budgetTokens: 1000, models: ['claude-haiku-4-5'], cacheTtlSeconds: null, cacheGroup: null, mcpServers: [] });
      expect(await store.keysGeneration()).toBe(7);
      expect(await store.getMeta('admin_token_sha256')).toBe('abc');
      const raw = new DatabaseSync(store.path, { readOnly: true });
      try {
        expect((raw.prepare('PRAGMA user_version').get() as { user_version: number }).user_version).toBe(SCHEMA_VERSION);
        expect(raw.prepare('SELECT DISTINCT requests, saved_tokens FROM usage').all().map((r) => ({ ...r }))).toEqual([{ requests: 1, saved_tokens: 0 }]);
        expectRollupsExact(raw);
        // The backfilled rollups answer as the raw rows do, and new rows add to them.
        for (const by of ['model', 'key', 'day', 'upstream'] as const) {
          for (const range of [{}, { sinceMs: T - 5 * HOUR - 17 }, { sinceMs: T - DAY, untilMs: T + 3 * HOUR + 5 }]) {
            expect(await store.usageReport({ by, ...range })).toEqual(rawReport(raw, { by, ...range }));
          }
        }
        await store.insertUsage([usage({ keyId: 'key_old', ts: T + 10, requests: 4 }), usage({ keyId: 'key_old', ts: T + 20, cached: true, savedTokens: 321 })]);
        expect(await store.usageReport({ by: 'day' })).toEqual(rawReport(raw, { by: 'day' }));
        expectRollupsExact(raw);
      } finally {
        raw.close();
      }
    } finally {
      await store.close();
    }
  });

  /**
   * A file as an earlier claudcode left it at schema `version`: keys, meta and usage written with
   * the first schema (coalesced rows, too, once version 2 has `requests`), then the migrations up
   * to `version` applied as that claudcode applied them (migration 3 backfilling the rollups).
   * From version 4 on, one key has cache settings. Returns the usage rows written.
   */
  function fileAtVersion(dir: string, version: number): number {
    const db = new DatabaseSync(join(dir, 'claudcode.db'));
    db.exec('PRAGMA journal_mode = WAL;');
    db.exec(MIGRATIONS[0]!.sql);
    const insertKey = db.prepare(
      `INSERT INTO keys (id, name, key_hash, key_preview, budget_tokens, window_seconds, rpm, concurrent, models, expires_at, disabled, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    insertKey.run('key_old', 'old', 'f'.repeat(64), 'sk-cc-...ffff', 1000, 3600, 60, 5, '["claude-haiku-4-5"]', T + DAY, 1, T, T + 1);
    insertKey.run('key_plain', 'plain', 'e'.repeat(64), 'sk-cc-...eeee', 2000, 7200, 6, 2, null, null, 0, T + 2, T + 2);
    db.exec("UPDATE meta SET value = '7' WHERE name = 'keys_generation'; INSERT INTO meta (name, value) VALUES ('admin_token_sha256', 'abc');");
    const insertOld = db.prepare(
      `INSERT INTO usage (ts, key_id, request_id, endpoint, model, status, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms, cached, streamed, outcome)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const rand = random(100 + version);
    let rows = 0;
    for (let i = 0; i < 300; i++, rows++) {
      const { status, outcome, latency } = oldRow(i);
      insertOld.run(T - DAY + Math.floor(rand() * 2 * DAY), i % 3 ? 'key_old' : 'key_plain', `req_v${version}_${i}`, 'messages',
        i % 2 ? 'claude-haiku-4-5' : 'claude-sonnet-4-6', status, i, 2 * i, 1, 0, 3 * i + 1, latency, i % 11 ? 0 : 1, 1, outcome);
    }
    for (let v = 2; v <= version; v++) {
      db.exec(MIGRATIONS[v - 1]!.sql);
      if (v === 2 && version >= 2) {
        db.prepare(
          `INSERT INTO usage (ts, key_id, request_id, endpoint, model, status, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms, cached, streamed, outcome, requests)
           VALUES (?, 'key_old', 'req_coalesced', 'messages', 'claude-haiku-4-5', 429, 0, 0, 0, 0, 0, 12, 0, 0, 'rejected', 4)`,
        ).run(T + 5 * HOUR + 3);
        rows++;
      }
    }
    const keyColumns = db.prepare('PRAGMA table_info(keys)').all().map((c) => c.name);
    if (keyColumns.includes('cache_ttl_seconds')) db.exec("UPDATE keys SET cache_ttl_seconds = 600, cache_group = 'kept' WHERE id = 'key_plain'");
    db.exec(`PRAGMA user_version = ${version}`);
    db.close();
    return rows;
  }

  it.each(Array.from({ length: SCHEMA_VERSION }, (_, v) => v))(
    'migrates a file at schema version %i to the current one, keeping its keys, meta and usage; old keys read back with no cache settings and no MCP servers, old usage with nothing saved and no upstream',
    async (version) => {
      const dir = tempDir();
      const rows = fileAtVersion(dir, version);
      const store = new SqliteStore(dir);
      try {
        expect(await store.getKey('key_old')).toEqual({
          id: 'key_old', name: 'old', hash: 'f'.repeat(64), preview: 'sk-cc-...ffff', budgetTokens: 1000, windowSeconds: 3600, rpm: 60,
          concurrent: 5, models: ['claude-haiku-4-5'], expiresAt: T + DAY, disabled: true, cacheTtlSeconds: null, cacheGroup: null,
          mcpServers: [], createdAt: T, updatedAt: T + 1,
        });
        const cached = version >= 4 ? { cacheTtlSeconds: 600, cacheGroup: 'kept' } : { cacheTtlSeconds: null, cacheGroup: null };
        expect(await store.getKey('key_plain')).toMatchObject({ models: null, expiresAt: null, disabled: false, ...cached, mcpServers: [] });
        expect((await store.listKeys()).map((k) => [k.id, k.mcpServers])).toEqual([['key_old', []], ['key_plain', []]]);
        expect(await store.keysGeneration()).toBe(7);
        expect(await store.getMeta('admin_token_sha256')).toBe('abc');

        const raw = new DatabaseSync(store.path, { readOnly: true });
        try {
          expect((raw.prepare('PRAGMA user_version').get() as { user_version: number }).user_version).toBe(SCHEMA_VERSION);
          expect(raw.prepare('SELECT count(*) AS n, SUM(saved_tokens) AS saved FROM usage').get()).toEqual({ n: rows, saved: 0 });
          // Old rows served no named upstream: '' in usage and in the rollups, whose keys now hold it.
          expect(raw.prepare('SELECT DISTINCT upstream FROM usage').all().map((r) => ({ ...r }))).toEqual([{ upstream: '' }]);
          for (const [table, period] of [['usage_hourly', 'hour'], ['usage_daily', 'day']] as const) {
            expect(primaryKey(raw, table)).toEqual([period, 'key_id', 'model', 'upstream']);
            expect(raw.prepare(`SELECT DISTINCT upstream FROM ${table}`).all().map((r) => ({ ...r }))).toEqual([{ upstream: '' }]);
            expect(raw.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL`).all(table).map((r) => r.name)).toEqual([`${table}_key`]);
          }
          expectRollupsExact(raw);
          // The old rows' failures and latencies are in the rollups (counted from them by migration 8), and series read them exactly.
          const daily = raw.prepare('SELECT SUM(err_upstream_error) AS upstream, SUM(err_client_closed) AS closed, SUM(lat_le_10) AS fast, SUM(lat_over) AS slow FROM usage_daily_total').get() as Record<string, number>;
          expect(Object.values(daily).every((n) => n > 0), JSON.stringify(daily)).toBe(true);
          const old = storedRecords(raw);
          for (const query of [
            { sinceMs: T - 2 * DAY, untilMs: T + 2 * DAY, bucket: 'day' as const },
            { sinceMs: T - DAY + 5 * HOUR + 17, untilMs: T + 3 * HOUR + 5, bucket: 'hour' as const },
            { sinceMs: T - DAY, untilMs: T + DAY, bucket: 'day' as const, keyId: 'key_old' },
            { sinceMs: T - HOUR - 5, untilMs: T + HOUR, bucket: 'minute' as const },
          ]) {
            expect(await store.usageSeries(query), JSON.stringify(query)).toEqual(seriesReference(old, query));
          }
          const requests = (raw.prepare('SELECT SUM(requests) AS n FROM usage').get() as { n: number }).n;
          for (const by of ['model', 'key', 'day', 'upstream'] as const) {
            for (const range of [{}, { sinceMs: T - 5 * HOUR - 17 }, { sinceMs: T - DAY, untilMs: T + 3 * HOUR + 5 }]) {
              const report = await store.usageReport({ by, ...range });
              expect(report).toEqual(rawReport(raw, { by, ...range }));
              expect(report.every((r) => r.savedTokens === 0)).toBe(true);
              if (by === 'upstream') expect(report.every((r) => r.group === '')).toBe(true);
            }
          }
          expect((await store.usageReport({ by: 'upstream' })).reduce((n, r) => n + r.requests, 0)).toBe(requests);
          // The migrated file takes the new fields: an upstream beside old rows of the same hour, key and model.
          await store.insertUsage([
            usage({ keyId: 'key_old', ts: T + 10, cached: true, billedTokens: 0, savedTokens: 55 }),
            usage({ keyId: 'key_old', ts: T - DAY + 1 }),
            usage({ keyId: 'key_old', ts: T + 20, model: 'claude-haiku-4-5', upstream: 'anthropic-main', billedTokens: 70 }),
          ]);
          expectRollupsExact(raw);
          expect(await store.usageReport({ by: 'key', keyId: 'key_old', sinceMs: T, untilMs: T + HOUR })).toEqual(rawReport(raw, { by: 'key', keyId: 'key_old', sinceMs: T, untilMs: T + HOUR }));
          expect((await store.usageReport({ by: 'key', keyId: 'key_old' })).reduce((n, r) => n + r.savedTokens, 0)).toBe(55);
          const byUpstream = await store.usageReport({ by: 'upstream', sinceMs: T - DAY });
          expect(byUpstream).toEqual(rawReport(raw, { by: 'upstream', sinceMs: T - DAY }));
          expect(byUpstream.filter((r) => r.group !== '')).toMatchObject([{ group: 'anthropic-main', model: 'claude-haiku-4-5', requests: 1, billedTokens: 70 }]);
          expect(byUpstream.filter((r) => r.group === '').reduce((n, r) => n + r.requests, 0)).toBe(
            (raw.prepare("SELECT SUM(requests) AS n FROM usage WHERE upstream = '' AND ts >= ?").get(T - DAY) as { n: number }).n,
          );
          expect(await store.updateKey('key_old', { cacheTtlSeconds: 0, cacheGroup: 'g1' })).toMatchObject({ cacheTtlSeconds: 0, cacheGroup: 'g1', name: 'old' });
          // Old keys' MCP servers are the column's default, '[]', and take a list like new keys.
          expect(raw.prepare('SELECT DISTINCT mcp_servers FROM keys').all().map((r) => ({ ...r }))).toEqual([{ mcp_servers: '[]' }]);
          expect(await store.updateKey('key_plain', { mcpServers: ['tavily'] })).toMatchObject({ mcpServers: ['tavily'], name: 'plain' });
          expect((await store.getKey('key_plain'))!.mcpServers).toEqual(['tavily']);
        } finally {
          raw.close();
        }
      } finally {
        await store.close();
      }
    },
  );

  it('refuses a file from a newer claudcode', async () => {
    const dir = tempDir();
    const newer = new DatabaseSync(join(dir, 'claudcode.db'));
    newer.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    newer.close();
    await expect(SqliteStore.open(dir)).rejects.toThrow(`the store's schema is version ${SCHEMA_VERSION + 1}, newer than this claudcode knows`);
  });

  it('stores opening one fresh file at once all succeed, and migrate it once', async () => {
    for (let round = 0; round < 4; round++) {
      const dir = tempDir();
      const stores = Array.from({ length: 3 }, () => new SqliteStore(dir));
      try {
        expect(await Promise.all(stores.map((s) => s.keysGeneration()))).toEqual([0, 0, 0]);
        await Promise.all(stores.map((s, i) => s.insertUsage([usage({ keyId: `key_${i}` })])));
        expect((await stores[0]!.usageReport({ by: 'key' })).map((r) => [r.group, r.requests])).toEqual([['key_0', 1], ['key_1', 1], ['key_2', 1]]);
      } finally {
        await Promise.all(stores.map((s) => s.close()));
      }
      const raw = new DatabaseSync(join(dir, 'claudcode.db'), { readOnly: true });
      expect((raw.prepare('PRAGMA user_version').get() as { user_version: number }).user_version).toBe(SCHEMA_VERSION);
      expect((raw.prepare("SELECT value FROM meta WHERE name = 'keys_generation'").get() as { value: string }).value).toBe('0');
      raw.close();
    }
  });
});
