/**
 * The SQLite store's schema and reports: reports served from the daily and hourly rollups equal
 * one plain aggregate over the raw rows for any range, grouping and key; coalesced records count
 * as the requests they stand for; files created by the store before it was versioned migrate
 * cleanly; stores opening one fresh file at once do not race.
 */
import { join } from 'node:path';
import { DatabaseSync, type SQLInputValue } from 'node:sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelCatalog } from '../src/catalog.ts';
import { usageReport } from '../src/reports.ts';
import { MIGRATIONS, SCHEMA_VERSION } from '../src/store/schema.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { UsageGrouping, UsageOutcome, UsageQuery, UsageRecord, UsageRow } from '../src/store/types.ts';
import { seededRandom, tempDirs, usageRecordAt } from './fixtures.ts';

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
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const START = T - 36 * HOUR - 1234; // three and a half days of rows, not aligned to anything
  const END = T + 48 * HOUR + 777;
  const KEYS = ['key_a', 'key_b', 'key_c', 'key_d'];
  const MODELS = ['claude-haiku-4-5', 'claude-sonnet-4-6', 'claude-opus-4-6'];
  const OUTCOMES: UsageOutcome[] = ['ok', 'ok', 'ok', 'error', 'rejected', 'client_closed', 'upstream_cut'];
  const records: UsageRecord[] = [];
  let store: SqliteStore;
  let raw: DatabaseSync;

  beforeAll(async () => {
    const dir = tempDir();
    store = new SqliteStore(dir);
    for (let i = 0; i < 4000; i++) {
      // Rows pile up on the hour and day boundaries too, where off-by-one errors would show.
      const ts = rand() < 0.15 ? Math.round((START + rand() * (END - START)) / HOUR) * HOUR + pick([-1, 0, 0, 1]) : START + Math.floor(rand() * (END - START));
      const requests = rand() < 0.2 ? 1 + Math.floor(rand() * 6) : rand() < 0.5 ? undefined : 1;
      records.push(usage({
        ts, keyId: pick(KEYS), model: pick(MODELS), status: pick([200, 200, 200, 400, 429, 500, 529]), outcome: pick(OUTCOMES),
        inputTokens: Math.floor(rand() * 5000), outputTokens: Math.floor(rand() * 900), cacheCreationTokens: Math.floor(rand() * 50),
        cacheReadTokens: Math.floor(rand() * 300), billedTokens: Math.floor(rand() * 7000), latencyMs: Math.floor(rand() * 9000),
        cached: rand() < 0.1, streamed: rand() < 0.5, ...(requests === undefined ? {} : { requests }),
      }));
    }
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
    const edge = (): number | undefined => {
      const kind = rand();
      if (kind < 0.15) return undefined;
      if (kind < 0.35) return Math.round((START + rand() * (END - START)) / HOUR) * HOUR + pick([-1, 0, 1]); // an hour boundary
      if (kind < 0.5) return Math.round((START + rand() * (END - START)) / DAY) * DAY + pick([-1, 0, 1]); // a day boundary
      if (kind < 0.65) return pick(records).ts + pick([0, 1]); // a row's own time
      return Math.floor(START - 2 * HOUR + rand() * (END - START + 4 * HOUR));
    };
    let nonEmpty = 0;
    for (let i = 0; i < 400; i++) {
      const [a, b] = [edge(), edge()];
      // Mostly ordered ranges; now and then a reversed (empty) one.
      const [sinceMs, untilMs] = a !== undefined && b !== undefined && a > b && rand() < 0.9 ? [b, a] : [a, b];
      const query: UsageQuery = {
        by: pick(['model', 'key', 'day'] as const),
        ...(sinceMs === undefined ? {} : { sinceMs }),
        ...(untilMs === undefined ? {} : { untilMs }),
        ...(rand() < 0.4 ? { keyId: pick([...KEYS, 'key_none']) } : {}),
      };
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

describe('coalesced records', () => {
  it('count as the requests they stand for in store and admin reports', async () => {
    const store = new SqliteStore(tempDir());
    try {
      await store.insertUsage([
        usage({ keyId: 'key_c', ts: T + 5_000 }),
        // Five refusals in one minute, coalesced: latency is their sum, tokens zero.
        usage({ keyId: 'key_c', ts: T + 10_000, status: 429, outcome: 'rejected', requests: 5, latencyMs: 15, inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0 }),
        usage({ keyId: 'key_c', ts: T + 20_000, cached: true, requests: 3, latencyMs: 30, billedTokens: 0 }),
      ]);
      const expected = { group: 'key_c', model: 'claude-haiku-4-5', requests: 9, errors: 5, cachedRequests: 3, totalLatencyMs: 145 };
      // Whole hour (rollups), and a partial hour (raw rows).
      expect(await store.usageReport({ by: 'key' })).toMatchObject([expected]);
      expect(await store.usageReport({ by: 'key', sinceMs: T + 1, untilMs: T + 60_000 })).toMatchObject([{ ...expected, requests: 9 }]);
      const report = await usageReport(store, new ModelCatalog([]), { by: 'key' });
      expect(report.rows).toMatchObject([{ group: 'key_c', requests: 9, errors: 5, cached_requests: 3, avg_latency_ms: Math.round(145 / 9) }]);
    } finally {
      await store.close();
    }
  });
});

describe('budgetBuckets filters', () => {
  it('narrows to one key and to [since, until)', async () => {
    const store = new SqliteStore(tempDir());
    try {
      await store.insertUsage([
        usage({ keyId: 'key_x', ts: T, billedTokens: 1 }),
        usage({ keyId: 'key_x', ts: T + 60_000, billedTokens: 2 }),
        usage({ keyId: 'key_x', ts: T + 120_000, billedTokens: 4 }),
        usage({ keyId: 'key_y', ts: T + 60_000, billedTokens: 8 }),
      ]);
      const minute = T / 60_000;
      const sorted = (buckets: { keyId: string; minute: number }[]) => [...buckets].sort((a, b) => a.keyId.localeCompare(b.keyId) || a.minute - b.minute);
      expect(sorted(await store.budgetBuckets(T))).toHaveLength(4);
      expect(sorted(await store.budgetBuckets(T, { keyId: 'key_x' }))).toEqual([
        { keyId: 'key_x', minute, tokens: 1 },
        { keyId: 'key_x', minute: minute + 1, tokens: 2 },
        { keyId: 'key_x', minute: minute + 2, tokens: 4 },
      ]);
      expect(sorted(await store.budgetBuckets(T + 1, { untilMs: T + 120_000 }))).toEqual([
        { keyId: 'key_x', minute: minute + 1, tokens: 2 },
        { keyId: 'key_y', minute: minute + 1, tokens: 8 },
      ]);
      expect(await store.budgetBuckets(T, { keyId: 'key_y', untilMs: T + 60_000 })).toEqual([]);
      expect(await store.budgetBuckets(T, { keyId: 'key_none' })).toEqual([]);
    } finally {
      await store.close();
    }
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
