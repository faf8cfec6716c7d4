/**
 * The Store contract, one suite run over every implementation: the embedded SQLite store (a temp
 * directory) and the PostgreSQL store (a fresh database on the machine's server, dropped after;
 * skipped, and said so, when the server is not reachable). Keys, the keys generation, meta,
 * usage rows, reports (by hour too, narrowed by model and upstream), the dashboard's series
 * (error kinds as types.ts maps them, latency buckets, periods, filters, and against a plain
 * computation on random records) and budget buckets, persistence across reopening, a second store
 * on the same data.
 *
 * What only one implementation has is tested beside it: SQLite's locking here, its rollups and
 * migrations in store-rollup.test.ts, its worker thread in store-worker.test.ts; PostgreSQL's
 * migrations, report exactness, retries and outages in store-postgres.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelCatalog } from '../src/catalog.ts';
import { createLogger } from '../src/logger.ts';
import { usageReport } from '../src/reports.ts';
import { PostgresStore } from '../src/store/postgres.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { errorKind, LATENCY_BOUNDS_MS, type KeyRecord, type Store, type UsageOutcome, type UsageRecord } from '../src/store/types.ts';
import { seededRandom, tempDirs, usageRecordAt } from './fixtures.ts';
import { randomSeriesRecords, seriesReference } from './usage-reference.ts';
import { createTestDatabase, services } from './services.ts';

const DAY = 86_400_000;
const T = Date.UTC(2026, 2, 10, 12, 0, 0); // 2026-03-10 12:00 UTC

const tempDir = tempDirs('store');
const databases: { drop(): Promise<void> }[] = [];
afterAll(async () => {
  await Promise.all(databases.map((db) => db.drop()));
});

interface Implementation {
  name: string;
  available: boolean;
  /** What `description` says of a store opened on a fresh place. */
  describes: RegExp;
  /** A fresh, empty place for a store; the function opens a store on it (as often as called). */
  fresh(): Promise<() => Promise<Store>>;
}

const IMPLEMENTATIONS: Implementation[] = [
  {
    name: 'SqliteStore',
    available: true,
    describes: /^SQLite \/.*claudcode\.db$/,
    async fresh() {
      const dir = join(tempDir(), 'nested', 'dir'); // created by the store
      return () => SqliteStore.open(dir);
    },
  },
  {
    name: 'PostgresStore',
    available: services.postgres,
    describes: /^PostgreSQL [^@\s]+:\d+\/claudcode_test_store_\w+$/, // host:port/database, no user or password
    async fresh() {
      const db = await createTestDatabase('store');
      databases.push(db);
      return () => PostgresStore.open(db.url, { logger: createLogger('silent'), connectRetryMs: 2000 });
    },
  },
];

let n = 0;
function keyRecord(over: Partial<KeyRecord> = {}): KeyRecord {
  n++;
  return {
    id: `key_${n}`,
    name: `key ${n}`,
    hash: n.toString(16).padStart(64, '0'),
    preview: `sk-cc-...${String(n).padStart(4, '0')}`,
    budgetTokens: 1000 * n,
    windowSeconds: 3600,
    rpm: 60,
    concurrent: 5,
    models: ['claude-haiku-4-5', 'claude-sonnet-4-6'],
    expiresAt: T + DAY,
    disabled: false,
    cacheTtlSeconds: null,
    cacheGroup: null,
    mcpServers: [],
    createdAt: T + n,
    updatedAt: T + n,
    ...over,
  };
}

const usage = (over: Partial<UsageRecord> = {}): UsageRecord => usageRecordAt({ ts: T, keyId: 'key_u1' }, over);

describe.each(IMPLEMENTATIONS)('$name', (impl) => {
  describe.skipIf(!impl.available)('the Store contract', () => {
    let open: () => Promise<Store>;
    let store: Store;

    beforeAll(async () => {
      open = await impl.fresh();
      store = await open();
    });
    afterAll(async () => {
      await store?.close();
    });

    describe('keys', () => {
      it('round-trips a key record exactly', async () => {
        const key = keyRecord();
        await store.createKey(key);
        expect(await store.getKey(key.id)).toEqual(key);
        const open = keyRecord({ models: null, expiresAt: null, disabled: true });
        await store.createKey(open);
        expect(await store.getKey(open.id)).toEqual(open);
        const none = keyRecord({ models: [], budgetTokens: 9_000_000_000_000, windowSeconds: 30 * 86_400 });
        await store.createKey(none);
        expect(await store.getKey(none.id)).toEqual(none);
        expect(await store.getKey('key_nope')).toBeNull();
      });

      it('round-trips the cache settings: a TTL, 0 (off), null (default); a group or null', async () => {
        const variants = [
          keyRecord({ cacheTtlSeconds: 3600, cacheGroup: 'team-a' }),
          keyRecord({ cacheTtlSeconds: 0, cacheGroup: null }),
          keyRecord({ cacheTtlSeconds: null, cacheGroup: 'Shared_Group-01' }),
          keyRecord({ cacheTtlSeconds: 30 * 86_400, cacheGroup: 'g'.repeat(64) }),
          keyRecord({ cacheTtlSeconds: 1, cacheGroup: null }),
        ];
        for (const key of variants) await store.createKey(key);
        for (const key of variants) expect(await store.getKey(key.id)).toEqual(key);
        const listed = new Map((await store.listKeys()).map((k) => [k.id, k]));
        for (const key of variants) expect(listed.get(key.id)).toEqual(key);
        // The plain record (no cache settings) reads back null, not undefined or 0.
        const plain = keyRecord();
        await store.createKey(plain);
        const back = await store.getKey(plain.id);
        expect(back).toEqual(plain);
        expect(back!.cacheTtlSeconds).toBeNull();
        expect(back!.cacheGroup).toBeNull();
      });

      it('patches the cache settings like any field: set, to 0, to null, and leaves them when not patched', async () => {
        const key = keyRecord();
        await store.createKey(key);
        const set = await store.updateKey(key.id, { cacheTtlSeconds: 600, cacheGroup: 'grp' });
        expect(set).toEqual({ ...key, cacheTtlSeconds: 600, cacheGroup: 'grp', updatedAt: set!.updatedAt });
        // Other fields patched: the cache settings stay.
        const other = await store.updateKey(key.id, { rpm: 3, name: 'other' });
        expect(other).toMatchObject({ rpm: 3, name: 'other', cacheTtlSeconds: 600, cacheGroup: 'grp' });
        const off = await store.updateKey(key.id, { cacheTtlSeconds: 0 });
        expect(off).toMatchObject({ cacheTtlSeconds: 0, cacheGroup: 'grp' });
        expect(await store.getKey(key.id)).toEqual(off);
        const cleared = await store.updateKey(key.id, { cacheTtlSeconds: null, cacheGroup: null });
        expect(cleared).toEqual({ ...key, rpm: 3, name: 'other', cacheTtlSeconds: null, cacheGroup: null, updatedAt: cleared!.updatedAt });
        expect(await store.getKey(key.id)).toEqual(cleared);
        // undefined means "not patched", unlike null.
        await store.updateKey(key.id, { cacheGroup: 'again' });
        expect(await store.updateKey(key.id, { cacheGroup: undefined, cacheTtlSeconds: undefined, rpm: 4 })).toMatchObject({ cacheGroup: 'again', cacheTtlSeconds: null, rpm: 4 });
        expect(await store.updateKey('key_nope', { cacheTtlSeconds: 5 })).toBeNull();
      });

      it('round-trips and patches the attached MCP servers: a list, [] (none), untouched when not patched', async () => {
        const variants = [
          keyRecord({ mcpServers: ['tavily'] }),
          keyRecord({ mcpServers: ['fetch', 'tavily', 'A_b-9'] }),
          keyRecord({ mcpServers: [] }),
        ];
        for (const key of variants) await store.createKey(key);
        for (const key of variants) expect(await store.getKey(key.id)).toEqual(key);
        const listed = new Map((await store.listKeys()).map((k) => [k.id, k]));
        for (const key of variants) expect(listed.get(key.id)).toEqual(key);

        const key = variants[0]!;
        const set = await store.updateKey(key.id, { mcpServers: ['fetch', 'tavily'] });
        expect(set).toEqual({ ...key, mcpServers: ['fetch', 'tavily'], updatedAt: set!.updatedAt });
        expect(await store.getKey(key.id)).toEqual(set);
        // Other fields patched (and undefined): the list stays.
        expect(await store.updateKey(key.id, { rpm: 2, mcpServers: undefined })).toMatchObject({ rpm: 2, mcpServers: ['fetch', 'tavily'] });
        const cleared = await store.updateKey(key.id, { mcpServers: [], cacheGroup: 'g' });
        expect(cleared).toEqual({ ...key, rpm: 2, cacheGroup: 'g', mcpServers: [], updatedAt: cleared!.updatedAt });
        expect(await store.getKey(key.id)).toEqual(cleared);
        // A patch of the list is a key change like any other.
        const generation = await store.keysGeneration();
        await store.updateKey(key.id, { mcpServers: ['tavily'] });
        expect(await store.keysGeneration()).not.toBe(generation);
        expect((await store.getKey(key.id))!.mcpServers).toEqual(['tavily']);
      });

      it('lists keys in creation order', async () => {
        const later = keyRecord({ createdAt: T + 10_000 });
        const earlier = keyRecord({ createdAt: T - 10_000 });
        await store.createKey(later);
        await store.createKey(earlier);
        const ids = (await store.listKeys()).map((k) => k.id);
        expect(ids.indexOf(earlier.id)).toBeLessThan(ids.indexOf(later.id));
        expect(ids).toContain(later.id);
        expect(ids.at(-1)).toBe(later.id);
      });

      it('updates only the patched fields and stamps updatedAt', async () => {
        const key = keyRecord();
        await store.createKey(key);
        const before = Date.now();
        const updated = await store.updateKey(key.id, { rpm: 7, models: ['claude-opus-4-6'], disabled: true, expiresAt: null, name: undefined });
        expect(updated).toEqual({ ...key, rpm: 7, models: ['claude-opus-4-6'], disabled: true, expiresAt: null, updatedAt: updated!.updatedAt });
        expect(updated!.updatedAt).toBeGreaterThanOrEqual(before);
        expect(await store.getKey(key.id)).toEqual(updated);

        const again = await store.updateKey(key.id, { models: null, disabled: false, budgetTokens: 5, windowSeconds: 60, concurrent: 1, name: 'renamed' });
        expect(again).toMatchObject({ models: null, disabled: false, budgetTokens: 5, windowSeconds: 60, concurrent: 1, name: 'renamed', rpm: 7 });
        expect(await store.updateKey('key_nope', { rpm: 1 })).toBeNull();
      });

      it('deletes keys', async () => {
        const key = keyRecord();
        await store.createKey(key);
        expect(await store.deleteKey(key.id)).toBe(true);
        expect(await store.getKey(key.id)).toBeNull();
        expect(await store.deleteKey(key.id)).toBe(false);
        expect((await store.listKeys()).map((k) => k.id)).not.toContain(key.id);
      });

      it('refuses a second key with the same hash', async () => {
        const key = keyRecord();
        await store.createKey(key);
        await expect(store.createKey(keyRecord({ hash: key.hash }))).rejects.toThrow(/unique/i);
      });

      it('changes keysGeneration on every write, and only on writes', async () => {
        const seen: number[] = [await store.keysGeneration()];
        const changed = async () => {
          const g = await store.keysGeneration();
          expect(seen).not.toContain(g);
          seen.push(g);
        };
        const unchanged = async () => expect(await store.keysGeneration()).toBe(seen.at(-1));

        const key = keyRecord();
        await store.createKey(key);
        await changed();
        await store.updateKey(key.id, { rpm: 99 });
        await changed();
        await store.updateKey(key.id, { disabled: true });
        await changed();
        await store.updateKey(key.id, {});
        await changed();
        await store.deleteKey(key.id);
        await changed();

        // Reads and failed writes leave it alone.
        await store.listKeys();
        await store.getKey(key.id);
        await unchanged();
        await store.updateKey('key_nope', { rpm: 1 });
        await unchanged();
        await store.deleteKey('key_nope');
        await unchanged();
        const dup = keyRecord();
        await store.createKey(dup);
        await changed();
        await expect(store.createKey({ ...keyRecord(), hash: dup.hash })).rejects.toThrow();
        await unchanged();
      });
    });

    describe('meta and health', () => {
      it('keeps meta values', async () => {
        expect(await store.getMeta('nothing')).toBeNull();
        await store.setMeta('thing', 'one');
        await store.setMeta('thing', 'two');
        expect(await store.getMeta('thing')).toBe('two');
      });

      it('sets a meta value only if absent, and answers the value held', async () => {
        expect(await store.setMetaIfAbsent('first', 'a')).toBe('a');
        expect(await store.setMetaIfAbsent('first', 'b')).toBe('a');
        expect(await store.getMeta('first')).toBe('a');
        await store.setMeta('first', 'c');
        expect(await store.setMetaIfAbsent('first', 'd')).toBe('c');
      });

      it('answers ping and describes where the data lives, without credentials', async () => {
        await store.ping();
        expect(store.description).toMatch(impl.describes);
      });
    });

    describe('usage', () => {
      beforeAll(async () => {
        await store.insertUsage([
          usage({ keyId: 'key_u1', model: 'claude-haiku-4-5', ts: T }),
          usage({ keyId: 'key_u1', model: 'claude-haiku-4-5', ts: T + 30_000, status: 429, outcome: 'rejected', inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0 }),
          usage({ keyId: 'key_u1', model: 'claude-sonnet-4-6', ts: T + 61_000, cached: true, billedTokens: 0, savedTokens: 33 }),
          usage({ keyId: 'key_u2', model: 'claude-haiku-4-5', ts: T + DAY, outcome: 'upstream_cut', inputTokens: 100, outputTokens: 1, billedTokens: 104, latencyMs: 50 }),
          usage({ keyId: 'key_u2', model: 'claude-haiku-4-5', ts: T - DAY, endpoint: 'count_tokens', billedTokens: 0, latencyMs: 10 }),
        ]);
        await store.insertUsage([]);
      });

      it('groups by model', async () => {
        const rows = await store.usageReport({ by: 'model' });
        expect(rows).toEqual([
          {
            group: 'claude-haiku-4-5', model: 'claude-haiku-4-5', requests: 4, errors: 2, cachedRequests: 0,
            inputTokens: 120, outputTokens: 41, cacheCreationTokens: 3, cacheReadTokens: 6, billedTokens: 137, savedTokens: 0, totalLatencyMs: 260,
          },
          {
            group: 'claude-sonnet-4-6', model: 'claude-sonnet-4-6', requests: 1, errors: 0, cachedRequests: 1,
            inputTokens: 10, outputTokens: 20, cacheCreationTokens: 1, cacheReadTokens: 2, billedTokens: 0, savedTokens: 33, totalLatencyMs: 100,
          },
        ]);
      });

      it('groups by key (split by model) and filters by key', async () => {
        const rows = await store.usageReport({ by: 'key' });
        expect(rows.map((r) => [r.group, r.model, r.requests, r.billedTokens])).toEqual([
          ['key_u1', 'claude-haiku-4-5', 2, 33],
          ['key_u1', 'claude-sonnet-4-6', 1, 0],
          ['key_u2', 'claude-haiku-4-5', 2, 104],
        ]);
        const only = await store.usageReport({ by: 'key', keyId: 'key_u2' });
        expect(only.map((r) => [r.group, r.requests, r.inputTokens])).toEqual([['key_u2', 2, 110]]);
        expect(await store.usageReport({ by: 'key', keyId: 'key_none' })).toEqual([]);
      });

      it('groups by UTC day', async () => {
        const rows = await store.usageReport({ by: 'day' });
        expect(rows.map((r) => [r.group, r.model, r.requests])).toEqual([
          ['2026-03-09', 'claude-haiku-4-5', 1],
          ['2026-03-10', 'claude-haiku-4-5', 2],
          ['2026-03-10', 'claude-sonnet-4-6', 1],
          ['2026-03-11', 'claude-haiku-4-5', 1],
        ]);
      });

      it('filters by since (inclusive) and until (exclusive)', async () => {
        const count = async (q: { sinceMs?: number; untilMs?: number; keyId?: string }) =>
          (await store.usageReport({ by: 'key', ...q })).reduce((sum, r) => sum + r.requests, 0);
        expect(await count({})).toBe(5);
        expect(await count({ sinceMs: T })).toBe(4);
        expect(await count({ sinceMs: T + 1 })).toBe(3);
        expect(await count({ untilMs: T })).toBe(1);
        expect(await count({ untilMs: T + 1 })).toBe(2);
        expect(await count({ sinceMs: T, untilMs: T + DAY })).toBe(3);
        expect(await count({ sinceMs: T, untilMs: T + DAY, keyId: 'key_u2' })).toBe(0);
        expect(await count({ sinceMs: T + DAY, untilMs: T })).toBe(0);
      });

      it('gives per-minute budget buckets of billed tokens', async () => {
        const buckets = await store.budgetBuckets(T - 1);
        const sorted = [...buckets].sort((a, b) => a.keyId.localeCompare(b.keyId) || a.minute - b.minute);
        // Zero-billed rows (429, cache hit, count_tokens) and rows before `since` leave no bucket.
        expect(sorted).toEqual([
          { keyId: 'key_u1', minute: Math.floor(T / 60_000), tokens: 33 },
          { keyId: 'key_u2', minute: Math.floor((T + DAY) / 60_000), tokens: 104 },
        ]);
        await store.insertUsage([usage({ keyId: 'key_b', ts: T + 1_000, billedTokens: 5 }), usage({ keyId: 'key_b', ts: T + 59_999, billedTokens: 6 }), usage({ keyId: 'key_b', ts: T + 60_000, billedTokens: 7 })]);
        const b = (await store.budgetBuckets(T)).filter((x) => x.keyId === 'key_b').sort((x, y) => x.minute - y.minute);
        expect(b).toEqual([
          { keyId: 'key_b', minute: T / 60_000, tokens: 11 },
          { keyId: 'key_b', minute: T / 60_000 + 1, tokens: 7 },
        ]);
        expect(await store.budgetBuckets(T + 2 * DAY)).toEqual([]);
      });

      it('narrows budget buckets to one key and to [since, until)', async () => {
        await store.insertUsage([
          usage({ keyId: 'key_x', ts: T, billedTokens: 1 }),
          usage({ keyId: 'key_x', ts: T + 60_000, billedTokens: 2 }),
          usage({ keyId: 'key_x', ts: T + 120_000, billedTokens: 4 }),
          usage({ keyId: 'key_y', ts: T + 60_000, billedTokens: 8 }),
        ]);
        const minute = T / 60_000;
        const sorted = (buckets: { keyId: string; minute: number }[]) =>
          buckets.filter((b) => b.keyId === 'key_x' || b.keyId === 'key_y').sort((a, b) => a.keyId.localeCompare(b.keyId) || a.minute - b.minute);
        expect(sorted(await store.budgetBuckets(T))).toHaveLength(4);
        expect(await store.budgetBuckets(T, { keyId: 'key_x' }).then(sorted)).toEqual([
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
      });

      it('counts coalesced records as the requests they stand for, over whole hours and partial ones, in store and admin reports', async () => {
        await store.insertUsage([
          usage({ keyId: 'key_c', ts: T + 5_000 }),
          // Five refusals in one minute, coalesced: latency is their sum, tokens zero.
          usage({ keyId: 'key_c', ts: T + 10_000, status: 429, outcome: 'rejected', requests: 5, latencyMs: 15, inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0 }),
          usage({ keyId: 'key_c', ts: T + 20_000, cached: true, requests: 3, latencyMs: 30, billedTokens: 0, savedTokens: 99 }),
        ]);
        const expected = { group: 'key_c', model: 'claude-haiku-4-5', requests: 9, errors: 5, cachedRequests: 3, savedTokens: 99, totalLatencyMs: 145 };
        expect(await store.usageReport({ by: 'key', keyId: 'key_c' })).toMatchObject([expected]);
        expect(await store.usageReport({ by: 'key', keyId: 'key_c', sinceMs: T + 1, untilMs: T + 60_000 })).toMatchObject([expected]);
        const report = await usageReport(store, new ModelCatalog([]), { by: 'key', keyId: 'key_c' });
        expect(report.rows).toMatchObject([{ group: 'key_c', requests: 9, errors: 5, cached_requests: 3, tokens_saved: 99, avg_latency_ms: Math.round(145 / 9) }]);
      });

      it('sums saved tokens by model, key and UTC day, over whole days, whole hours and partial ones, in store and admin reports', async () => {
        const H = 3_600_000;
        const D0 = Date.UTC(2026, 4, 1); // a day of its own: the other tests' rows are in March
        // Cache hits (saved tokens, nothing billed) and served requests (nothing saved, by default) over three days.
        await store.insertUsage([
          usage({ keyId: 'key_s1', model: 'claude-haiku-4-5', ts: D0 + 5 * H + 17, cached: true, billedTokens: 0, savedTokens: 100 }),
          usage({ keyId: 'key_s1', model: 'claude-haiku-4-5', ts: D0 + 5 * H + 1_000, billedTokens: 40 }),
          usage({ keyId: 'key_s1', model: 'claude-sonnet-4-6', ts: D0 + 23 * H + 59 * 60_000, cached: true, billedTokens: 0, savedTokens: 7, requests: 2 }),
          usage({ keyId: 'key_s2', model: 'claude-haiku-4-5', ts: D0 + DAY + 12 * H, cached: true, billedTokens: 0, savedTokens: 1000 }),
          usage({ keyId: 'key_s2', model: 'claude-haiku-4-5', ts: D0 + 2 * DAY + 1, cached: true, billedTokens: 0, savedTokens: 5 }),
          usage({ keyId: 'key_s2', model: 'claude-haiku-4-5', ts: D0 + 2 * DAY + 2 * H, billedTokens: 50 }),
        ]);
        const since = D0;
        const until = D0 + 3 * DAY;
        const saved = async (by: 'model' | 'key' | 'day', range: { sinceMs?: number; untilMs?: number } = {}) =>
          (await store.usageReport({ by, sinceMs: since, untilMs: until, ...range })).map((r) => [r.group, r.model, r.savedTokens, r.billedTokens]);
        expect(await saved('model')).toEqual([
          ['claude-haiku-4-5', 'claude-haiku-4-5', 1105, 90],
          ['claude-sonnet-4-6', 'claude-sonnet-4-6', 7, 0],
        ]);
        expect(await saved('key')).toEqual([
          ['key_s1', 'claude-haiku-4-5', 100, 40],
          ['key_s1', 'claude-sonnet-4-6', 7, 0],
          ['key_s2', 'claude-haiku-4-5', 1005, 50],
        ]);
        expect(await saved('day')).toEqual([
          ['2026-05-01', 'claude-haiku-4-5', 100, 40],
          ['2026-05-01', 'claude-sonnet-4-6', 7, 0],
          ['2026-05-02', 'claude-haiku-4-5', 1000, 0],
          ['2026-05-03', 'claude-haiku-4-5', 5, 50],
        ]);
        // Edges inside hours and days: the raw rows of the partial hours, the hourly rollup of the
        // partial days and the daily rollup of the whole day between add up to the same.
        expect(await saved('key', { sinceMs: D0 + 5 * H + 18, untilMs: D0 + 2 * DAY + 2 })).toEqual([
          ['key_s1', 'claude-haiku-4-5', 0, 40],
          ['key_s1', 'claude-sonnet-4-6', 7, 0],
          ['key_s2', 'claude-haiku-4-5', 1005, 0],
        ]);
        expect(await saved('day', { sinceMs: D0 + 5 * H + 17, untilMs: D0 + 5 * H + 18 })).toEqual([['2026-05-01', 'claude-haiku-4-5', 100, 0]]);
        expect((await store.usageReport({ by: 'key', keyId: 'key_s2', sinceMs: D0 + DAY, untilMs: D0 + 2 * DAY })).map((r) => r.savedTokens)).toEqual([1000]);
        // The cache hits are counted as cached requests, as before.
        expect((await store.usageReport({ by: 'key', keyId: 'key_s1', sinceMs: since, untilMs: until })).map((r) => r.cachedRequests)).toEqual([1, 2]);

        const report = await usageReport(store, new ModelCatalog([]), { by: 'key', sinceMs: since, untilMs: until });
        expect(report.rows.map((r) => [r.group, r.tokens_saved, r.cached_requests, r.billed_tokens])).toEqual([
          ['key_s1', 107, 3, 40],
          ['key_s2', 1005, 2, 50],
        ]);
        expect(report.totals).toMatchObject({ tokens_saved: 1112, cached_requests: 5, billed_tokens: 90, requests: 7 });
        const byDay = await usageReport(store, new ModelCatalog([]), { by: 'day', sinceMs: since, untilMs: until });
        expect(byDay.rows.map((r) => [r.group, r.tokens_saved])).toEqual([['2026-05-01', 107], ['2026-05-02', 1000], ['2026-05-03', 5]]);
        expect(byDay.totals.tokens_saved).toBe(1112);
        const empty = await usageReport(store, new ModelCatalog([]), { by: 'model', keyId: 'key_none' });
        expect(empty.totals.tokens_saved).toBe(0);
      });

      it('groups by upstream, \'\' for requests none served, records differing only by upstream kept apart, over whole days, whole hours and partial ones, in store and admin reports', async () => {
        const H = 3_600_000;
        const D0 = Date.UTC(2026, 5, 1); // June: a range of its own
        const refused = { status: 429, outcome: 'rejected', inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0 } as const;
        await store.insertUsage([
          // Two records alike but for the upstream (same minute, key and model): two groups, not one.
          usage({ keyId: 'key_up1', ts: D0 + 5 * H + 17, upstream: 'anthropic-main', billedTokens: 10 }),
          usage({ keyId: 'key_up1', ts: D0 + 5 * H + 17, upstream: 'api.anthropic.com', billedTokens: 20 }),
          usage({ keyId: 'key_up1', ts: D0 + 5 * H + 1_000, upstream: 'anthropic-main', model: 'claude-sonnet-4-6', billedTokens: 40 }),
          // Refusals and cache hits reach no upstream: left out, or ''.
          usage({ keyId: 'key_up1', ts: D0 + 5 * H + 2_000, ...refused, requests: 3 }),
          usage({ keyId: 'key_up2', ts: D0 + DAY + 12 * H, cached: true, billedTokens: 0, savedTokens: 33, upstream: '' }),
          usage({ keyId: 'key_up2', ts: D0 + 2 * DAY + 1, upstream: 'backup-eu', billedTokens: 80 }),
        ]);
        const since = D0;
        const until = D0 + 3 * DAY;
        const rows = async (range: { sinceMs?: number; untilMs?: number; keyId?: string } = {}, by: 'upstream' | 'key' = 'upstream') =>
          (await store.usageReport({ by, sinceMs: since, untilMs: until, ...range })).map((r) => [r.group, r.model, r.requests, r.billedTokens]);
        expect(await rows()).toEqual([
          ['', 'claude-haiku-4-5', 4, 0],
          ['anthropic-main', 'claude-haiku-4-5', 1, 10],
          ['anthropic-main', 'claude-sonnet-4-6', 1, 40],
          ['api.anthropic.com', 'claude-haiku-4-5', 1, 20],
          ['backup-eu', 'claude-haiku-4-5', 1, 80],
        ]);
        // Edges inside hours and days: raw rows, the hourly rollup and the daily one add up the same.
        expect(await rows({ sinceMs: D0 + 5 * H + 18, untilMs: D0 + 2 * DAY + 2 })).toEqual([
          ['', 'claude-haiku-4-5', 4, 0],
          ['anthropic-main', 'claude-sonnet-4-6', 1, 40],
          ['backup-eu', 'claude-haiku-4-5', 1, 80],
        ]);
        expect(await rows({ sinceMs: D0 + 5 * H, untilMs: D0 + 6 * H, keyId: 'key_up1' })).toEqual([
          ['', 'claude-haiku-4-5', 3, 0],
          ['anthropic-main', 'claude-haiku-4-5', 1, 10],
          ['anthropic-main', 'claude-sonnet-4-6', 1, 40],
          ['api.anthropic.com', 'claude-haiku-4-5', 1, 20],
        ]);
        expect(await rows({ sinceMs: D0 + DAY, untilMs: D0 + 2 * DAY, keyId: 'key_up2' })).toEqual([['', 'claude-haiku-4-5', 1, 0]]);
        // The other groupings add the upstreams up.
        expect(await rows({ keyId: 'key_up1' }, 'key')).toEqual([['key_up1', 'claude-haiku-4-5', 5, 30], ['key_up1', 'claude-sonnet-4-6', 1, 40]]);

        const report = await usageReport(store, new ModelCatalog([]), { by: 'upstream', sinceMs: since, untilMs: until });
        expect(report.by).toBe('upstream');
        expect(report.rows.map((r) => [r.group, r.requests, r.errors, r.cached_requests, r.billed_tokens, r.tokens_saved])).toEqual([
          ['', 4, 3, 1, 0, 33],
          ['anthropic-main', 2, 0, 0, 50, 0],
          ['api.anthropic.com', 1, 0, 0, 20, 0],
          ['backup-eu', 1, 0, 0, 80, 0],
        ]);
        expect(report.totals).toMatchObject({ requests: 8, errors: 3, billed_tokens: 150, tokens_saved: 33 });
      });

      it('orders report rows by group, then model, bytewise', async () => {
        const models = ['claude-b', 'Claude-a', 'claude_c', 'claude-\u00e9', 'claude-B'];
        await store.insertUsage(models.map((model) => usage({ keyId: 'key_order', model, billedTokens: 0 })));
        const bytewise = [...models].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
        expect((await store.usageReport({ by: 'model', keyId: 'key_order' })).map((r) => r.model)).toEqual(bytewise);
        expect((await store.usageReport({ by: 'key', keyId: 'key_order' })).map((r) => r.model)).toEqual(bytewise);
      });

      it('rolls back a batch that fails part-way', async () => {
        const bad = { ...usage({ keyId: 'key_rollback' }), model: null as unknown as string };
        await expect(store.insertUsage([usage({ keyId: 'key_rollback' }), bad])).rejects.toThrow();
        expect(await store.usageReport({ by: 'key', keyId: 'key_rollback' })).toEqual([]);
      });
    });

    describe('usage series, and reports by hour and narrowed by model or upstream', () => {
      const H = 3_600_000;
      const M = 60_000;
      const D0 = Date.UTC(2026, 7, 1); // August 2026: a range of its own
      const noTokens = { inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0 } as const;

      it('counts every failed request under exactly the kind types.ts errorKind gives its status and outcome', async () => {
        const statuses = [200, 201, 206, 400, 401, 403, 404, 408, 413, 429, 499, 500, 501, 502, 503, 504, 529];
        const outcomes: UsageOutcome[] = ['ok', 'error', 'rejected', 'client_closed', 'upstream_cut'];
        const records = statuses.flatMap((status) => outcomes.map((outcome) => usage({
          keyId: 'key_kinds', ts: D0 + 5 * M, model: `m.${status}.${outcome}`, status, outcome, ...noTokens, requests: 3,
        })));
        await store.insertUsage(records);
        for (const bucket of ['minute', 'hour', 'day'] as const) {
          const rows = await store.usageSeries({ sinceMs: D0, untilMs: D0 + DAY, bucket, keyId: 'key_kinds' });
          expect(rows).toHaveLength(records.length);
          for (const row of rows) {
            const [, status, outcome] = row.model.split('.') as [string, string, UsageOutcome];
            const kind = errorKind(Number(status), outcome);
            expect(row.errors, row.model).toBe(kind ? 3 : 0);
            expect(Object.entries(row.errorKinds).filter(([, n]) => n > 0), row.model).toEqual(kind ? [[kind, 3]] : []);
          }
        }
        // The documented rules, spelled out.
        const kindOf = (status: number, outcome: UsageOutcome) => errorKind(status, outcome);
        expect([kindOf(200, 'ok'), kindOf(429, 'rejected'), kindOf(429, 'error'), kindOf(400, 'rejected'), kindOf(404, 'error'), kindOf(499, 'client_closed'),
          kindOf(200, 'client_closed'), kindOf(200, 'upstream_cut'), kindOf(502, 'error'), kindOf(503, 'rejected'), kindOf(529, 'error'), kindOf(500, 'error'),
          kindOf(200, 'error')]).toEqual([null, 'rate_limited', 'rate_limited', 'client_error', 'client_error', 'client_closed', 'client_closed', 'upstream_cut',
          'upstream_error', 'upstream_error', 'upstream_error', 'gateway_error', 'gateway_error']);
      });

      it('puts requests in latency buckets by their mean, bounds inclusive, coalesced records with their multiplicity', async () => {
        const at = (i: number) => D0 + DAY + i * M;
        await store.insertUsage([
          usage({ keyId: 'key_lat', ts: at(0), latencyMs: 10 }), // ≤ 10
          usage({ keyId: 'key_lat', ts: at(0), latencyMs: 11 }), // ≤ 25
          usage({ keyId: 'key_lat', ts: at(1), latencyMs: 4 * 250, requests: 4, status: 429, outcome: 'rejected', ...noTokens }), // mean 250: ≤ 250, ×4
          usage({ keyId: 'key_lat', ts: at(1), latencyMs: 4 * 250 + 1, requests: 4, status: 429, outcome: 'rejected', ...noTokens }), // mean 250.25: ≤ 500, ×4
          usage({ keyId: 'key_lat', ts: at(2), latencyMs: 300_000 }), // the last bound
          usage({ keyId: 'key_lat', ts: at(2), latencyMs: 300_001 }), // above it
          usage({ keyId: 'key_lat', ts: at(2), latencyMs: 0 }),
        ]);
        const [row] = await store.usageSeries({ sinceMs: D0 + DAY, untilMs: D0 + 2 * DAY, bucket: 'day', keyId: 'key_lat' });
        const expected = new Array(LATENCY_BOUNDS_MS.length + 1).fill(0);
        for (const [bound, n] of [[10, 2], [25, 1], [250, 4], [500, 4], [300_000, 1]] as const) expected[LATENCY_BOUNDS_MS.indexOf(bound)] += n;
        expected[LATENCY_BOUNDS_MS.length] = 1;
        expect(row).toMatchObject({ t: D0 + DAY, requests: 13, errors: 8, errorKinds: { rate_limited: 8 }, totalLatencyMs: 10 + 11 + 2001 + 600_001 });
        expect(row!.latency).toEqual(expected);
        // Minute by minute, from the raw rows, the same counts.
        const minutes = await store.usageSeries({ sinceMs: D0 + DAY, untilMs: D0 + DAY + H, bucket: 'minute', keyId: 'key_lat' });
        expect(minutes.map((r) => [r.t, r.requests])).toEqual([[at(0), 2], [at(1), 8], [at(2), 3]]);
        expect(minutes.reduce((sum, r) => sum.map((n, i) => n + r.latency[i]!), new Array(expected.length).fill(0))).toEqual(expected);
      });

      it('gives one row per period and model, periods starting on UTC minutes, hours and days, over whole days, whole hours and partial ones', async () => {
        const D1 = D0 + 2 * DAY;
        await store.insertUsage([
          usage({ keyId: 'key_per', ts: D1 + 5 * H + 17, model: 'claude-haiku-4-5', upstream: 'anthropic-main', billedTokens: 10 }),
          usage({ keyId: 'key_per', ts: D1 + 5 * H + 17, model: 'claude-sonnet-4-6', cached: true, billedTokens: 0, savedTokens: 40 }),
          usage({ keyId: 'key_per2', ts: D1 + 5 * H + 61_000, model: 'claude-haiku-4-5', upstream: 'backup-eu', billedTokens: 20 }),
          usage({ keyId: 'key_per', ts: D1 + DAY + 12 * H, model: 'claude-haiku-4-5', status: 529, outcome: 'error', upstream: 'backup-eu', billedTokens: 0 }),
        ]);
        const series = (bucket: 'minute' | 'hour' | 'day', since: number, until: number, filter = {}) =>
          store.usageSeries({ sinceMs: since, untilMs: until, bucket, ...filter }).then((rows) => rows.map((r) => [r.t, r.model, r.requests, r.billedTokens, r.savedTokens, r.errors]));
        expect(await series('day', D1, D1 + 2 * DAY)).toEqual([
          [D1, 'claude-haiku-4-5', 2, 30, 0, 0],
          [D1, 'claude-sonnet-4-6', 1, 0, 40, 0],
          [D1 + DAY, 'claude-haiku-4-5', 1, 0, 0, 1],
        ]);
        // Partial edges: only what is inside the range, under the period's start.
        expect(await series('day', D1 + 5 * H + 18, D1 + DAY + 12 * H + 1)).toEqual([[D1, 'claude-haiku-4-5', 1, 20, 0, 0], [D1 + DAY, 'claude-haiku-4-5', 1, 0, 0, 1]]);
        expect(await series('hour', D1, D1 + DAY)).toEqual([[D1 + 5 * H, 'claude-haiku-4-5', 2, 30, 0, 0], [D1 + 5 * H, 'claude-sonnet-4-6', 1, 0, 40, 0]]);
        expect(await series('minute', D1 + 5 * H, D1 + 6 * H)).toEqual([
          [D1 + 5 * H, 'claude-haiku-4-5', 1, 10, 0, 0],
          [D1 + 5 * H, 'claude-sonnet-4-6', 1, 0, 40, 0],
          [D1 + 5 * H + M, 'claude-haiku-4-5', 1, 20, 0, 0],
        ]);
        // Narrowed to a key, a model, an upstream ('' is none).
        expect(await series('day', D1, D1 + 2 * DAY, { keyId: 'key_per2' })).toEqual([[D1, 'claude-haiku-4-5', 1, 20, 0, 0]]);
        expect(await series('day', D1, D1 + 2 * DAY, { model: 'claude-sonnet-4-6' })).toEqual([[D1, 'claude-sonnet-4-6', 1, 0, 40, 0]]);
        expect(await series('hour', D1, D1 + 2 * DAY, { upstream: 'backup-eu' })).toEqual([[D1 + 5 * H, 'claude-haiku-4-5', 1, 20, 0, 0], [D1 + DAY + 12 * H, 'claude-haiku-4-5', 1, 0, 0, 1]]);
        expect(await series('day', D1, D1 + 2 * DAY, { upstream: '', keyId: 'key_per' })).toEqual([[D1, 'claude-sonnet-4-6', 1, 0, 40, 0]]);
        expect(await series('day', D1 + DAY, D1)).toEqual([]);
        expect(await series('minute', D1 + 3 * DAY, D1 + 4 * DAY)).toEqual([]);
      });

      it('reports by UTC hour (YYYY-MM-DDTHH:00Z) and narrowed to a model or an upstream', async () => {
        const D1 = D0 + 2 * DAY; // the rows of the test above
        const rows = (query: object) => store.usageReport({ by: 'hour', sinceMs: D1, untilMs: D1 + 2 * DAY, ...query }).then((r) => r.map((x) => [x.group, x.model, x.requests]));
        expect(await rows({})).toEqual([
          ['2026-08-03T05:00Z', 'claude-haiku-4-5', 2],
          ['2026-08-03T05:00Z', 'claude-sonnet-4-6', 1],
          ['2026-08-04T12:00Z', 'claude-haiku-4-5', 1],
        ]);
        expect(await rows({ keyId: 'key_per', sinceMs: D1 + 5 * H + 18 })).toEqual([['2026-08-04T12:00Z', 'claude-haiku-4-5', 1]]);
        expect(await rows({ model: 'claude-haiku-4-5', upstream: 'backup-eu' })).toEqual([['2026-08-03T05:00Z', 'claude-haiku-4-5', 1], ['2026-08-04T12:00Z', 'claude-haiku-4-5', 1]]);
        const byKey = await store.usageReport({ by: 'key', sinceMs: D1, untilMs: D1 + 2 * DAY, upstream: 'anthropic-main' });
        expect(byKey.map((r) => [r.group, r.model, r.requests, r.billedTokens])).toEqual([['key_per', 'claude-haiku-4-5', 1, 10]]);
        const byModel = await store.usageReport({ by: 'model', sinceMs: D1, untilMs: D1 + 2 * DAY, model: 'claude-sonnet-4-6' });
        expect(byModel.map((r) => [r.group, r.requests, r.savedTokens])).toEqual([['claude-sonnet-4-6', 1, 40]]);
      });

      it('gives series equal to a plain computation over random records, for random ranges, buckets and filters', async () => {
        const rand = seededRandom(20260801);
        const start = Date.UTC(2027, 0, 10, 7, 13); // 2027: nothing else there
        const end = start + 3 * DAY + 5 * H;
        const keys = ['key_r1', 'key_r2', 'key_r3'];
        const models = ['claude-haiku-4-5', 'claude-sonnet-4-6'];
        const records = randomSeriesRecords(rand, { count: 1500, start, end, keys, models });
        for (let i = 0; i < records.length; i += 250) await store.insertUsage(records.slice(i, i + 250));
        const edge = () => (rand() < 0.3 ? Math.round((start + rand() * (end - start)) / H) * H + [-1, 0, 1][Math.floor(rand() * 3)]! : start - H + Math.floor(rand() * (end - start + 2 * H)));
        for (let i = 0; i < 40; i++) {
          const [a, b] = [edge(), edge()].sort((x, y) => x - y) as [number, number];
          const bucket = (['minute', 'hour', 'day'] as const)[i % 3]!;
          const query = {
            sinceMs: bucket === 'minute' ? a : Math.min(a, start - DAY), untilMs: b, bucket,
            ...(rand() < 0.3 ? { keyId: keys[Math.floor(rand() * keys.length)]! } : {}),
            ...(rand() < 0.2 ? { model: models[1]! } : {}),
            ...(rand() < 0.2 ? { upstream: ['', 'backup-eu'][Math.floor(rand() * 2)]! } : {}),
          };
          const expected = seriesReference(records, query);
          expect(await store.usageSeries(query), JSON.stringify(query)).toEqual(expected);
        }
        // The whole span: every request once, failures all with a kind, every request in a latency bucket.
        const all = await store.usageSeries({ sinceMs: start, untilMs: end, bucket: 'day' });
        const requests = records.reduce((n, r) => n + (r.requests ?? 1), 0);
        expect(all.reduce((n, r) => n + r.requests, 0)).toBe(requests);
        expect(all.reduce((n, r) => n + r.latency.reduce((x, y) => x + y, 0), 0)).toBe(requests);
        for (const r of all) expect(Object.values(r.errorKinds).reduce((x, y) => x + y, 0)).toBe(r.errors);
      });
    });

    describe('persistence and sharing', () => {
      it('keeps keys, usage, meta and the generation across reopening', async () => {
        const openOwn = await impl.fresh();
        const first = await openOwn();
        const key = keyRecord({ cacheTtlSeconds: 900, cacheGroup: 'kept', mcpServers: ['tavily', 'fetch'] });
        await first.createKey(key);
        await first.insertUsage([usage({ keyId: key.id, billedTokens: 77 }), usage({ keyId: key.id, cached: true, billedTokens: 0, savedTokens: 77 })]);
        await first.setMeta('admin_token_sha256', 'abc');
        const generation = await first.keysGeneration();
        expect(first.description).toMatch(impl.describes);
        await first.close();
        await first.close(); // idempotent
        await expect(first.getKey(key.id)).rejects.toThrow(/closed/);

        const second = await openOwn();
        try {
          expect(second.description).toBe(first.description);
          expect(await second.getKey(key.id)).toEqual(key);
          expect(await second.keysGeneration()).toBe(generation);
          expect(await second.getMeta('admin_token_sha256')).toBe('abc');
          expect(await second.usageReport({ by: 'key' })).toMatchObject([{ group: key.id, requests: 2, cachedRequests: 1, billedTokens: 77, savedTokens: 77 }]);
          await second.updateKey(key.id, { rpm: 1 });
          expect(await second.keysGeneration()).not.toBe(generation);
        } finally {
          await second.close();
        }
      });

      it('sees writes made through another store on the same data', async () => {
        const other = await open();
        try {
          const before = await store.keysGeneration();
          const key = keyRecord();
          await other.createKey(key);
          expect(await store.getKey(key.id)).toEqual(key);
          expect(await store.keysGeneration()).not.toBe(before);
          await other.insertUsage([usage({ keyId: 'key_other', billedTokens: 3 })]);
          expect(await store.usageReport({ by: 'key', keyId: 'key_other' })).toMatchObject([{ requests: 1, billedTokens: 3 }]);
        } finally {
          await other.close();
        }
      });

      it('agrees on one value when stores set the same meta at once', async () => {
        const others = await Promise.all([open(), open()]);
        try {
          const all = [store, ...others];
          const answers = await Promise.all(all.flatMap((s, i) => [0, 1, 2].map((j) => s.setMetaIfAbsent('admin_token_sha256_race', `v${i}.${j}`))));
          expect(new Set(answers).size).toBe(1);
          expect(await store.getMeta('admin_token_sha256_race')).toBe(answers[0]);
        } finally {
          await Promise.all(others.map((s) => s.close()));
        }
      });
    });
  });
});

describe('SqliteStore locking', () => {
  // Parallel `claudcode usage` runs on one data dir used to fail about 1 in 30 with "database is
  // locked": the WAL pragma ran before busy_timeout was set. The timeout is now set at open.
  it('opening waits for a lock another connection holds briefly', async () => {
    const own = mkdtempSync(join(tmpdir(), 'claudcode-store-lock-'));
    await new SqliteStore(own).close();
    const holder = new Worker(
      `const { DatabaseSync } = require('node:sqlite');
       const { parentPort, workerData } = require('node:worker_threads');
       const db = new DatabaseSync(workerData.path);
       db.exec("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO meta (name, value) VALUES ('lock', '1');");
       parentPort.postMessage('locked');
       setTimeout(() => { db.exec('COMMIT'); db.close(); }, 300);`,
      { eval: true, workerData: { path: join(own, 'claudcode.db') } },
    );
    const exited = new Promise((resolve) => holder.once('exit', resolve));
    try {
      await new Promise((resolve, reject) => {
        holder.once('message', resolve);
        holder.once('error', reject);
      });
      const opened = new SqliteStore(own);
      expect(await opened.getMeta('lock')).toBe('1');
      await opened.close();
    } finally {
      await exited;
      rmSync(own, { recursive: true, force: true });
    }
  });
});
