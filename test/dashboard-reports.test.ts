/**
 * The dashboard's reports over a real store (SQLite in a temp directory; the store's series and
 * reports are held to the same answers on PostgreSQL by the contract suite, store.test.ts): the
 * overview's points (one per minute, hour or day of the range, starting on a boundary, zeros
 * where nothing happened), totals, costs from the catalog's prices, cache hit rate, failures by
 * kind, and latency percentiles interpolated in the histogram (checked on known distributions);
 * the explorer's groupings, labels, filters and costs; its CSV's quoting and formula neutralising.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelCatalog } from '../src/catalog.ts';
import type { ModelEntry } from '../src/config.ts';
import { explorerCsv, explorerReport } from '../src/dashboard/explorer.ts';
import { latencyPercentile, overviewReport } from '../src/dashboard/overview.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { LATENCY_BOUNDS_MS, type UsageRecord } from '../src/store/types.ts';
import { tempDirs, usageRecordAt } from './fixtures.ts';

const M = 60_000;
const H = 3_600_000;
const DAY = 86_400_000;
const D0 = Date.UTC(2026, 8, 10); // 2026-09-10 00:00 UTC
const NOW = D0 + 10 * H + 30 * M + 17_000; // 10:30:17

const tempDir = tempDirs('dashboard-reports');
const model = (id: string, prices: ModelEntry['prices']): ModelEntry => ({ id, display_name: id, created_at: '2026-01-01T00:00:00Z', prices });
const catalog = new ModelCatalog([
  model('claude-sonnet-4-6', { input: 3, output: 15, cache_write: 3.75, cache_read: 0.3 }),
  model('claude-haiku-4-5', { input: 1, output: 5, cache_write: 1.25, cache_read: 0.1 }),
]);
const none = { inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0 } as const;
const usage = (over: Partial<UsageRecord>) => usageRecordAt({ ts: NOW - M, keyId: 'key_a' }, over);

describe('latency percentiles from the histogram', () => {
  const histogram = (counts: Partial<Record<number | 'over', number>>) => {
    const h = new Array<number>(LATENCY_BOUNDS_MS.length + 1).fill(0);
    for (const [bound, n] of Object.entries(counts) as [string, number][]) h[bound === 'over' ? LATENCY_BOUNDS_MS.length : LATENCY_BOUNDS_MS.indexOf(Number(bound) as never)] = n;
    return h;
  };

  it('interpolates linearly inside the bucket the rank falls in', () => {
    // 100 requests in (1000, 2000]: spread evenly, the median is halfway and p95 near the top.
    expect(latencyPercentile(histogram({ 2000: 100 }), 0.5)).toBe(1500);
    expect(latencyPercentile(histogram({ 2000: 100 }), 0.95)).toBe(1950);
    // Half cache hits (≤ 10 ms), half in (1, 2] s: the median is the top of the first bucket.
    expect(latencyPercentile(histogram({ 10: 50, 2000: 50 }), 0.5)).toBe(10);
    expect(latencyPercentile(histogram({ 10: 50, 2000: 50 }), 0.95)).toBe(1900);
    // The first bucket starts at 0.
    expect(latencyPercentile(histogram({ 10: 4 }), 0.5)).toBe(5);
    // Empty buckets between are skipped.
    expect(latencyPercentile(histogram({ 25: 1, 60_000: 3 }), 0.5)).toBe(30_000 + 30_000 * (1 / 3));
  });

  it('answers the last bound for what is above it, and null for no requests', () => {
    expect(latencyPercentile(histogram({ 2000: 90, over: 10 }), 0.95)).toBe(300_000);
    expect(latencyPercentile(histogram({}), 0.5)).toBeNull();
  });
});

describe('the overview', () => {
  let store: SqliteStore;

  beforeAll(async () => {
    store = await SqliteStore.open(tempDir());
    const at = (t: number) => ({ ts: t });
    await store.insertUsage([
      // 10:29 (the last hour, and the day's 10:00 point, in progress)
      usage({ ...at(D0 + 10 * H + 29 * M), model: 'claude-sonnet-4-6', inputTokens: 1_000_000, outputTokens: 100_000, cacheCreationTokens: 0, cacheReadTokens: 0, latencyMs: 1500, upstream: 'anthropic-main' }),
      usage({ ...at(D0 + 10 * H + 29 * M + 5), model: 'claude-haiku-4-5', inputTokens: 2_000_000, outputTokens: 0, cacheCreationTokens: 1_000_000, cacheReadTokens: 1_000_000, latencyMs: 1500 }),
      usage({ ...at(D0 + 10 * H + 29 * M + 9), model: 'claude-sonnet-4-6', cached: true, billedTokens: 0, savedTokens: 500, latencyMs: 4, inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0 }),
      usage({ ...at(D0 + 10 * H + 29 * M + 20), model: 'claude-sonnet-4-6', status: 429, outcome: 'rejected', requests: 7, latencyMs: 7, ...none }),
      // 09:10 (the last hour, since 09:30, has it not; the day has it)
      usage({ ...at(D0 + 9 * H + 10 * M), model: 'claude-sonnet-4-6', status: 529, outcome: 'error', latencyMs: 2000, ...none, upstream: 'backup-eu' }),
      usage({ ...at(D0 + 9 * H + 11 * M), model: 'claude-sonnet-4-6', status: 200, outcome: 'upstream_cut', latencyMs: 60_000, ...none }),
      usage({ ...at(D0 + 9 * H + 12 * M), model: 'claude-sonnet-4-6', status: 499, outcome: 'client_closed', latencyMs: 500, ...none }),
      usage({ ...at(D0 + 9 * H + 13 * M), model: 'claude-sonnet-4-6', status: 500, outcome: 'error', latencyMs: 30, ...none }),
      usage({ ...at(D0 + 9 * H + 14 * M), model: 'claude-sonnet-4-6', status: 400, outcome: 'rejected', latencyMs: 3, ...none }),
      // Yesterday 11:00 and 09:00 (the day range starts at yesterday 10:00), three days ago, 29 and 31 days ago; another key.
      usage({ ...at(D0 - 13 * H), model: 'claude-haiku-4-5', keyId: 'key_b', latencyMs: 100 }),
      usage({ ...at(D0 - 15 * H), model: 'claude-haiku-4-5', keyId: 'key_b', latencyMs: 100 }),
      usage({ ...at(D0 - 3 * DAY + 5), model: 'claude-haiku-4-5', keyId: 'key_b', latencyMs: 100 }),
      usage({ ...at(D0 - 29 * DAY), model: 'claude-opus-4-6', keyId: 'key_b', latencyMs: 100 }), // a model the catalog does not price
      usage({ ...at(D0 - 31 * DAY), model: 'claude-haiku-4-5', keyId: 'key_b', latencyMs: 100 }),
    ]);
  });
  afterAll(async () => {
    await store?.close();
  });

  it('has a point per minute over the last hour, starting on a minute, the last one in progress', async () => {
    const overview = await overviewReport(store, catalog, 'hour', NOW);
    expect(overview).toMatchObject({ range: 'hour', bucket: 'minute', since: D0 + 9 * H + 30 * M, until: NOW });
    expect(overview.points).toHaveLength(61);
    expect(overview.points.map((p) => p.t)).toEqual(Array.from({ length: 61 }, (_, i) => D0 + 9 * H + 30 * M + i * M));
    const busy = overview.points.filter((p) => p.requests > 0);
    expect(busy.map((p) => [p.t, p.requests])).toEqual([[D0 + 10 * H + 29 * M, 10]]);
    expect(overview.points[0]).toEqual({
      t: D0 + 9 * H + 30 * M, requests: 0, errors: {}, tokens: { input: 0, output: 0, cache_creation: 0, cache_read: 0 }, costUsd: 0, cacheHits: 0,
      savedTokens: 0, p50Ms: null, p95Ms: null,
    });
  });

  it('adds up requests, tokens by kind, cost from the prices of each model, cache hits and what they saved, failures by kind', async () => {
    const { points, totals } = await overviewReport(store, catalog, 'hour', NOW);
    const point = points.find((p) => p.requests > 0)!;
    // sonnet: 1M input × $3 + 0.1M output × $15 = $4.5; haiku: 2M input × $1 + 1M cache writes × $1.25 + 1M cache reads × $0.1 = $3.35.
    expect(point).toMatchObject({
      requests: 10, errors: { rate_limited: 7 }, tokens: { input: 3_000_000, output: 100_000, cache_creation: 1_000_000, cache_read: 1_000_000 },
      costUsd: 7.85, cacheHits: 1, savedTokens: 500,
    });
    expect(totals).toMatchObject({ requests: 10, cacheHits: 1, cacheHitRate: 0.1, costUsd: 7.85, errors: { rate_limited: 7 } });
  });

  it('estimates p50 and p95 from the merged histograms, per point and over the range', async () => {
    // The last hour's 10 requests: 7 refusals of 1 ms each (≤ 10 ms), a cache hit of 4 ms, two of 1.5 s.
    const { points, totals } = await overviewReport(store, catalog, 'hour', NOW);
    const point = points.find((p) => p.requests > 0)!;
    expect([point.p50Ms, point.p95Ms]).toEqual([6, 1750]); // rank 5 of 8 in [0, 10]; rank 9.5 of 2 in (1000, 2000]
    expect([totals.p50Ms, totals.p95Ms]).toEqual([6, 1750]);
  });

  it('has a point per hour over the last day, and per day over the last week and month, each range starting on a boundary', async () => {
    const day = await overviewReport(store, catalog, 'day', NOW);
    expect(day).toMatchObject({ bucket: 'hour', since: D0 - 14 * H });
    expect(day.points).toHaveLength(25);
    expect(day.points.filter((p) => p.requests).map((p) => [(p.t - D0) / H, p.requests, p.errors])).toEqual([
      [-13, 1, {}],
      [9, 5, { upstream_error: 1, upstream_cut: 1, client_closed: 1, gateway_error: 1, client_error: 1 }],
      [10, 10, { rate_limited: 7 }],
    ]);
    expect(day.totals).toMatchObject({ requests: 16, errors: { rate_limited: 7, upstream_error: 1, upstream_cut: 1, client_closed: 1, gateway_error: 1, client_error: 1 } });
    expect(day.points.at(-1)!.t).toBe(D0 + 10 * H);

    const week = await overviewReport(store, catalog, 'week', NOW);
    expect(week).toMatchObject({ bucket: 'day', since: D0 - 7 * DAY });
    expect(week.points).toHaveLength(8);
    expect(week.points.map((p) => p.requests)).toEqual([0, 0, 0, 0, 1, 0, 2, 15]);

    const month = await overviewReport(store, catalog, 'month', NOW);
    expect(month).toMatchObject({ bucket: 'day', since: D0 - 30 * DAY });
    expect(month.points).toHaveLength(31);
    expect(month.totals.requests).toBe(19); // all but the record 31 days ago
    expect(month.points[1]!.costUsd).toBe(0); // claude-opus-4-6: not in this catalog, not priced
    expect(month.points[1]!.requests).toBe(1);
  });

  it('narrows to one key', async () => {
    const month = await overviewReport(store, catalog, 'month', NOW, { keyId: 'key_b' });
    expect(month.totals).toMatchObject({ requests: 4, errors: {}, cacheHits: 0, cacheHitRate: 0, p50Ms: 75, p95Ms: 98 });
    expect((await overviewReport(store, catalog, 'week', NOW, { keyId: 'key_none' })).totals).toMatchObject({ requests: 0, cacheHitRate: 0, p50Ms: null });
  });

  it('estimates percentiles close to a known distribution', async () => {
    const own = await SqliteStore.open(tempDir());
    try {
      // 1,000 requests evenly from 1 s to 20 s, and 50 slow streams of 100 s: the true p50 is about 10.5 s, p95 about 19.5 s.
      const records = Array.from({ length: 1000 }, (_, i) => usage({ ts: NOW - 2 * H + i, latencyMs: 1000 + 19 * i }));
      records.push(...Array.from({ length: 50 }, (_, i) => usage({ ts: NOW - 2 * H + i, latencyMs: 100_000 })));
      await own.insertUsage(records);
      const sorted = records.map((r) => r.latencyMs).sort((a, b) => a - b);
      const truth = (q: number) => sorted[Math.ceil(q * sorted.length) - 1]!;
      const { totals } = await overviewReport(own, catalog, 'day', NOW);
      expect(Math.abs(totals.p50Ms! - truth(0.5)) / truth(0.5)).toBeLessThan(0.05);
      expect(Math.abs(totals.p95Ms! - truth(0.95)) / truth(0.95)).toBeLessThan(0.05);
    } finally {
      await own.close();
    }
  });
});

describe('the explorer', () => {
  let store: SqliteStore;
  const keys = [{ id: 'key_a', name: 'alpha' }, { id: 'key_b', name: '=HYPERLINK("http://x","y")' }];
  const range = { sinceMs: D0, untilMs: D0 + 2 * DAY };

  beforeAll(async () => {
    store = await SqliteStore.open(tempDir());
    await store.insertUsage([
      usage({ ts: D0 + 1 * H + 5, keyId: 'key_a', model: 'claude-sonnet-4-6', inputTokens: 1_000_000, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 10, latencyMs: 100, upstream: 'anthropic-main' }),
      usage({ ts: D0 + 1 * H + 6, keyId: 'key_a', model: 'claude-haiku-4-5', inputTokens: 1_000_000, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 20, latencyMs: 300, upstream: 'backup-eu' }),
      usage({ ts: D0 + 1 * H + 7, keyId: 'key_b', model: 'claude-haiku-4-5', cached: true, billedTokens: 0, savedTokens: 77, latencyMs: 5 }),
      usage({ ts: D0 + DAY + 3 * H, keyId: 'key_b', model: 'claude-haiku-4-5', status: 429, outcome: 'rejected', requests: 4, latencyMs: 4, ...none }),
      usage({ ts: D0 + DAY + 3 * H, keyId: 'key_gone', model: 'claude-haiku-4-5', latencyMs: 1000 }),
    ]);
  });
  afterAll(async () => {
    await store?.close();
  });

  it('groups by key, labelled with the key\'s name, all models added up and priced each at its own price', async () => {
    const rows = await explorerReport(store, catalog, keys, { by: 'key', ...range });
    expect(rows.map((r) => [r.group, r.label, r.requests, r.errors, r.cachedRequests, r.billedTokens, r.savedTokens, r.costUsd, r.avgLatencyMs])).toEqual([
      ['key_a', 'alpha', 2, 0, 0, 30, 0, 4, 200],
      // The fixture's default tokens (10 input, 20 output, 1 cache write, 2 cache reads) on haiku: $0.00011145.
      ['key_b', '=HYPERLINK("http://x","y")', 5, 4, 1, 0, 77, 0.000111, 2],
      ['key_gone', undefined, 1, 0, 0, 33, 0, 0.000111, 1000],
    ]);
    expect('label' in rows[2]!).toBe(false);
  });

  it('groups by model, upstream (\'\' labelled "(none)"), UTC day and UTC hour', async () => {
    const group = async (by: 'model' | 'upstream' | 'day' | 'hour') =>
      (await explorerReport(store, catalog, keys, { by, ...range })).map((r) => [r.group, r.label, r.requests]);
    expect(await group('model')).toEqual([['claude-haiku-4-5', undefined, 7], ['claude-sonnet-4-6', undefined, 1]]);
    expect(await group('upstream')).toEqual([['', '(none)', 6], ['anthropic-main', undefined, 1], ['backup-eu', undefined, 1]]);
    expect(await group('day')).toEqual([['2026-09-10', undefined, 3], ['2026-09-11', undefined, 5]]);
    expect(await group('hour')).toEqual([['2026-09-10T01:00Z', undefined, 3], ['2026-09-11T03:00Z', undefined, 5]]);
  });

  it('narrows to a key, a model and an upstream, and to the range', async () => {
    const rows = async (query: object) => (await explorerReport(store, catalog, keys, { by: 'day', ...range, ...query })).map((r) => [r.group, r.requests]);
    expect(await rows({ keyId: 'key_b' })).toEqual([['2026-09-10', 1], ['2026-09-11', 4]]);
    expect(await rows({ model: 'claude-sonnet-4-6' })).toEqual([['2026-09-10', 1]]);
    expect(await rows({ upstream: 'backup-eu', model: 'claude-haiku-4-5' })).toEqual([['2026-09-10', 1]]);
    expect(await rows({ keyId: 'key_a', upstream: 'anthropic-main' })).toEqual([['2026-09-10', 1]]);
    expect(await rows({ sinceMs: D0 + 1 * H + 6, untilMs: D0 + DAY + 3 * H })).toEqual([['2026-09-10', 2]]);
    expect(await rows({ keyId: 'key_none' })).toEqual([]);
  });

  it('exports CSV: a header, CRLF line ends, RFC 4180 quoting, and text cells neutralised against formula injection', async () => {
    const rows = await explorerReport(store, catalog, keys, { by: 'key', ...range });
    const csv = explorerCsv(rows, 'key');
    const lines = csv.split('\r\n');
    expect(lines.at(-1)).toBe('');
    expect(lines[0]).toBe('key,name,requests,errors,cached_requests,input_tokens,output_tokens,cache_creation_tokens,cache_read_tokens,billed_tokens,saved_tokens,cost_usd,avg_latency_ms');
    expect(lines[1]).toBe('key_a,alpha,2,0,0,2000000,0,0,0,30,0,4,200');
    expect(lines[2]).toBe(`key_b,"'=HYPERLINK(""http://x"",""y"")",5,4,1,10,20,1,2,0,77,0.000111,2`);
    expect(lines[3]).toBe('key_gone,,1,0,0,10,20,1,2,33,0,0.000111,1000');

    const row = rows[0]!;
    const line = (text: string) => explorerCsv([{ ...row, group: 'g', label: text }]).split('\r\n')[1]!;
    const label = (text: string) => line(text).slice('g,'.length, -',2,0,0,2000000,0,0,0,30,0,4,200'.length);
    expect(line('x')).toBe('g,x,2,0,0,2000000,0,0,0,30,0,4,200');
    for (const [text, written] of [
      ['=1+1', "'=1+1"], ['+1', "'+1"], ['-1', "'-1"], ['@SUM(A1)', "'@SUM(A1)"], ['\tx', "'\tx"], ['\r=1', `"'\r=1"`],
      ['a,b', '"a,b"'], ['say "hi"', '"say ""hi"""'], ['two\nlines', '"two\nlines"'], ['=a,"b"', `"'=a,""b"""`],
      ['a=1', 'a=1'], [' =1', ' =1'], ['', ''],
    ] as const) {
      expect(label(text), JSON.stringify(text)).toBe(written);
    }
    // Groups are text cells too (a model or upstream name), neutralised the same way.
    expect(explorerCsv([{ ...row, group: '-model', label: undefined }]).split('\r\n')[1]!.startsWith("'-model,,")).toBe(true);
    // Without `by`: generic names; and no rows is just the header.
    expect(explorerCsv([])).toBe('group,label,requests,errors,cached_requests,input_tokens,output_tokens,cache_creation_tokens,cache_read_tokens,billed_tokens,saved_tokens,cost_usd,avg_latency_ms\r\n');
  });
});
