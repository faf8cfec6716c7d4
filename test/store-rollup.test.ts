/**
 * The SQLite store's schema and reports: reports served from the daily and hourly rollups equal
 * one plain aggregate over the raw rows for any range, grouping and key; coalesced records count
 * as the requests they stand for; files created by the store before it was versioned migrate
 * cleanly; stores opening one fresh file at once do not race. (What every store does — budget
 * bucket filters, a coalesced record in store and admin reports — is the contract suite's,
 * store.test.ts.)
 */
import { join } from 'node:path';
import { DatabaseSync, type SQLInputValue } from 'node:sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MIGRATIONS, SCHEMA_VERSION } from '../src/store/schema.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { UsageGrouping, UsageQuery, UsageRecord, UsageRow } from '../src/store/types.ts';
import { randomReportQuery, randomUsageRecords, randomUsageSpan, seededRandom, tempDirs, usageRecordAt } from './fixtures.ts';

const HOUR = 3_600_000;
const DAY = 86_400_000;
const T = Date.UTC(2026, 2, 10, 12, 0, 0); // 2026-03-10 12:00 UTC

const tempDir = tempDirs('store-rollup');
const usage = (over: Partial<UsageRecord> = {}) => usageRecordAt({ ts: T, keyId: 'key_a' }, over);
const random = seededRandom;

/** The reference: one aggregate over the raw usage rows, each counted as `requests` requests. */
const RAW_GROUP: Record<UsageGrouping, string> = { model: 'model', key: 'key_id', day: "strftime('%Y-%m-%d', ts / 1000, 'unixepoch')" };
function rawReport(db: DatabaseSync, query: UsageQuery): UsageRow[] {
  const where: string[] = [];
  const params: SQLInputValue[] = [];
  if (query.keyId !== undefined) (where.push('key_id = ?'), params.push(query.keyId));
  if (query.sinceMs !== undefined) (where.push('ts >= ?'), params.push(query.sinceMs));
  if (query.untilMs !== undefined) (where.push('ts < ?'), params.push(query.untilMs));
  const rows = db.prepare(`
    SELECT ${RAW_GROUP[query.by]} AS "group", model,
      SUM(requests) AS requests,
      SUM(CASE WHEN status >= 400 OR outcome <> 'ok' THEN requests ELSE 0 END) AS errors,
      SUM(cached * requests) AS cachedRequests,
      SUM(input_tokens) AS inputTokens, SUM(output_tokens) AS outputTokens,
      SUM(cache_creation_tokens) AS cacheCreationTokens, SUM(cache_read_tokens) AS cacheReadTokens,
      SUM(billed_tokens) AS billedTokens, SUM(latency_ms) AS totalLatencyMs
    FROM usage ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
    GROUP BY 1, 2 ORDER BY 1, 2`).all(...params);
  return rows.map((row) => ({ ...row }) as unknown as UsageRow);
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
    records = randomUsageRecords(rand, { count: 4000, ...span });
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

  it('equals the raw aggregate for random ranges, groupings and keys', async () => {
    let nonEmpty = 0;
    for (let i = 0; i < 400; i++) {
      const query = randomReportQuery(rand, { ...span, records });
      const expected = rawReport(raw, query);
      expect(await store.usageReport(query), JSON.stringify(query)).toEqual(expected);
      if (expected.length) nonEmpty++;
    }
    expect(nonEmpty).toBeGreaterThan(300);
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
      insertOld.run(ts, i % 3 ? 'key_old' : 'key_gone', `req_old_${i}`, 'messages', i % 2 ? 'claude-haiku-4-5' : 'claude-sonnet-4-6',
        i % 7 ? 200 : 429, i, 2 * i, 1, 0, 3 * i + 1, 50 + i, i % 11 ? 0 : 1, 1, i % 7 ? 'ok' : 'rejected');
    }
    expect((old.prepare('PRAGMA user_version').get() as { user_version: number }).user_version).toBe(0);
    old.close();

    const store = new SqliteStore(dir);
    try {
      expect(await store.getKey('key_old')).toMatchObject({ name: 'old', budgetTokens: 1000, models: ['claude-haiku-4-5'] });
      expect(await store.keysGeneration()).toBe(7);
      expect(await store.getMeta('admin_token_sha256')).toBe('abc');
      const raw = new DatabaseSync(store.path, { readOnly: true });
      try {
        expect((raw.prepare('PRAGMA user_version').get() as { user_version: number }).user_version).toBe(SCHEMA_VERSION);
        expect(raw.prepare('SELECT DISTINCT requests FROM usage').all().map((r) => ({ ...r }))).toEqual([{ requests: 1 }]);
        // The backfilled rollups answer as the raw rows do, and new rows add to them.
        for (const by of ['model', 'key', 'day'] as const) {
          for (const range of [{}, { sinceMs: T - 5 * HOUR - 17 }, { sinceMs: T - DAY, untilMs: T + 3 * HOUR + 5 }]) {
            expect(await store.usageReport({ by, ...range })).toEqual(rawReport(raw, { by, ...range }));
          }
        }
        await store.insertUsage([usage({ keyId: 'key_old', ts: T + 10, requests: 4 })]);
        expect(await store.usageReport({ by: 'day' })).toEqual(rawReport(raw, { by: 'day' }));
      } finally {
        raw.close();
      }
    } finally {
      await store.close();
    }
  });

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
