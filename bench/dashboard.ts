/**
 * `npm run bench:dashboard`: how fast the dashboard's reports are on a large store. Fills a fresh
 * SQLite store and a fresh PostgreSQL database (removed afterwards) with 1,000,000 usage records
 * over the last 30 days through each store's own insert path (`insertUsage`, batches of 5,000 in
 * time order, as the usage recorder writes them; rollups kept in the same transaction), then
 * times the overview for each range (hour, day, week, month) and the explorer by key over 30
 * days: cold (the first call on a freshly opened store) and warm (median of --runs calls).
 * Checks the month overview against totals counted while generating. Prints a table and writes
 * bench/results/dashboard.json.
 *
 * The mix: 200 keys with a skewed share of the traffic, 3 models, 2 named upstreams ('' for cache
 * hits and refusals), 20 % cache hits (a few ms), about 5 % failures of every kind, 429 refusals
 * coalesced into one record per key, model and minute standing for several requests, streams and
 * plain calls with log-normal latencies (seconds to minutes). More by day than by night (UTC).
 *
 * Options: --rows N (1000000), --runs N (5), --batch N (5000), --no-postgres, --postgres-url URL
 * (default $CLAUDCODE_BENCH_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/postgres: a
 * database is created beside it and dropped), --max-minutes N (30: the bench stops itself,
 * cleaning up, if it runs longer).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { ModelCatalog } from '../src/catalog.ts';
import { DEFAULT_MODELS, type ModelEntry } from '../src/config.ts';
import type { ExplorerQuery, OverviewRange } from '../src/dashboard/data.ts';
import { explorerReport } from '../src/dashboard/explorer.ts';
import { overviewReport } from '../src/dashboard/overview.ts';
import { createLogger } from '../src/logger.ts';
import { PostgresStore } from '../src/store/postgres.ts';
import { ALL_ROLLUPS } from '../src/store/sql-common.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { errorKind, type ErrorKind, type KeyRecord, type Store, type UsageRecord } from '../src/store/types.ts';
import { diurnalTimestamps, pickWeighted, seededRandom, skewedKeyPicker } from '../test/random.ts';

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '1000000' },
    runs: { type: 'string', default: '5' },
    batch: { type: 'string', default: '5000' },
    'no-postgres': { type: 'boolean', default: false },
    'postgres-url': { type: 'string', default: process.env.CLAUDCODE_BENCH_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres' },
    'max-minutes': { type: 'string', default: '30' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log(`npm run bench:dashboard -- [options]
  --rows N            usage records to write (default 1000000)
  --runs N            warm runs per report, the median reported (default 5)
  --batch N           records per insertUsage call (default 5000)
  --no-postgres       SQLite only
  --postgres-url URL  the server to create the bench database on (default $CLAUDCODE_BENCH_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/postgres)
  --max-minutes N     stop (and clean up) after this long (default 30)`);
  process.exit(0);
}
const ROWS = Number(values.rows);
const RUNS = Number(values.runs);
const BATCH = Number(values.batch);
const TARGET_MS = 300;
const MINUTE = 60_000;
const DAY = 86_400_000;
const DAYS = 30;
const KEYS = 200;
const MODELS = [['claude-sonnet-4-6', 0.6], ['claude-haiku-4-5', 0.3], ['claude-opus-4-6', 0.1]] as const;
const UPSTREAMS = [['anthropic-main', 0.7], ['backup-eu', 0.3]] as const;
const RANGES: OverviewRange[] = ['hour', 'day', 'week', 'month'];
/** The tables whose rows the bench counts: usage and every rollup. */
const TABLES = ['usage', ...ALL_ROLLUPS.map((r) => r.table)];

/** The default catalog's models and prices. */
const CATALOG = new ModelCatalog(DEFAULT_MODELS as ModelEntry[]);

// --- the records -----------------------------------------------------------------------------

const rand = seededRandom(20261127);
const pickKey = skewedKeyPicker(KEYS, rand);
/** A log-normal latency (ms) with the given median, clamped to [min, max]. */
function logNormal(median: number, sigma: number, min: number, max: number): number {
  const normal = Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  return Math.round(Math.min(max, Math.max(min, median * Math.exp(sigma * normal))));
}

const now = Date.now();
const start = now - DAYS * DAY;


let seq = 0;
function usageRecord(ts: number): UsageRecord {
  const roll = rand();
  const streamed = rand() < 0.7;
  const base = { ts, keyId: pickKey(), requestId: `req_${++seq}`, endpoint: 'messages', model: pickWeighted(MODELS, rand), cached: false, streamed } as const;
  const none = { inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0 };
  if (roll < 0.02) {
    // Refusals at the key's limit, coalesced per key, model and minute: stamped at the minute's end.
    const requests = 1 + Math.floor(rand() * rand() * 40);
    return { ...base, ...none, ts: Math.min(now - 1, Math.floor(ts / MINUTE) * MINUTE + MINUTE - 1), status: 429, outcome: 'rejected', requests, latencyMs: requests * (1 + Math.floor(rand() * 3)) };
  }
  const inputTokens = 200 + Math.floor(rand() * 20_000);
  const outputTokens = Math.floor(rand() * 2_000);
  const cacheReadTokens = rand() < 0.4 ? Math.floor(rand() * 50_000) : 0;
  const cacheCreationTokens = rand() < 0.1 ? Math.floor(rand() * 5_000) : 0;
  const tokens = { inputTokens, outputTokens, cacheCreationTokens, cacheReadTokens, billedTokens: inputTokens + outputTokens + cacheCreationTokens + cacheReadTokens };
  const latencyMs = streamed ? logNormal(9_000, 0.9, 400, 600_000) : logNormal(3_500, 0.7, 200, 300_000);
  const upstream = pickWeighted(UPSTREAMS, rand);
  if (roll < 0.025) return { ...base, ...none, status: 400, outcome: 'rejected', latencyMs: 1 + Math.floor(rand() * 5) };
  if (roll < 0.035) return { ...base, ...tokens, outputTokens: 0, billedTokens: 0, status: rand() < 0.7 ? 529 : 503, outcome: 'error', upstream, latencyMs };
  if (roll < 0.037) return { ...base, ...none, status: 500, outcome: 'error', upstream, latencyMs };
  if (roll < 0.045) return { ...base, ...tokens, status: 200, outcome: 'client_closed', upstream, latencyMs: Math.round(latencyMs / 2) };
  if (roll < 0.05) return { ...base, ...tokens, status: 200, outcome: 'upstream_cut', upstream, latencyMs };
  if (roll < 0.25) {
    return { ...base, ...tokens, billedTokens: 0, savedTokens: tokens.billedTokens, status: 200, outcome: 'ok', cached: true, streamed: false, latencyMs: logNormal(6, 0.6, 1, 200) };
  }
  return { ...base, ...tokens, status: 200, outcome: 'ok', upstream, latencyMs };
}

/** What the month's overview must add up to, counted while generating. */
const expected = { requests: 0, cacheHits: 0, savedTokens: 0, errors: {} as Partial<Record<ErrorKind, number>> };
function count(record: UsageRecord): void {
  const requests = record.requests ?? 1;
  expected.requests += requests;
  if (record.cached) expected.cacheHits += requests;
  expected.savedTokens += record.savedTokens ?? 0;
  const kind = errorKind(record.status, record.outcome);
  if (kind) expected.errors[kind] = (expected.errors[kind] ?? 0) + requests;
}

// --- timing --------------------------------------------------------------------------------

function median(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function timed<T>(work: () => Promise<T>): Promise<{ ms: number; result: T }> {
  const began = performance.now();
  const result = await work();
  return { ms: performance.now() - began, result };
}

interface Timing {
  store: string;
  report: string;
  points: number;
  coldMs: number;
  warmMs: number;
}

const keys: Pick<KeyRecord, 'id' | 'name'>[] = Array.from({ length: KEYS }, (_, i) => ({ id: `key_${String(i).padStart(3, '0')}`, name: `team ${i}` }));
const explorerQuery: ExplorerQuery = { by: 'key', sinceMs: now - DAYS * DAY, untilMs: now };

/** Times every report on a store: the first call on a freshly opened one, then the median of RUNS calls. */
async function timeReports(name: string, open: () => Promise<Store>): Promise<Timing[]> {
  const reports: [string, (store: Store) => Promise<number>][] = [
    ...RANGES.map((range): [string, (store: Store) => Promise<number>] => [
      `overview, last ${range}`,
      async (store) => (await overviewReport(store, CATALOG, range, now)).points.length,
    ]),
    ['explorer by key, 30 days', async (store) => (await explorerReport(store, CATALOG, keys, explorerQuery)).length],
  ];
  const timings: Timing[] = [];
  for (const [report, run] of reports) {
    const store = await open();
    try {
      const cold = await timed(() => run(store));
      const warm: number[] = [];
      for (let i = 0; i < RUNS; i++) warm.push((await timed(() => run(store))).ms);
      timings.push({ store: name, report, points: cold.result, coldMs: cold.ms, warmMs: median(warm) });
    } finally {
      await store.close();
    }
  }
  return timings;
}

/** The month's overview against the generated totals: a wrong report must not look fast. */
async function check(name: string, store: Store): Promise<void> {
  const { totals } = await overviewReport(store, CATALOG, 'month', now);
  const got = { requests: totals.requests, cacheHits: totals.cacheHits, savedTokens: totals.savedTokens, errors: totals.errors };
  const sortKeys = (o: object) => JSON.stringify(Object.fromEntries(Object.entries(o).sort()));
  if (sortKeys({ ...got, errors: sortKeys(got.errors) }) !== sortKeys({ ...expected, errors: sortKeys(expected.errors) })) {
    throw new Error(`${name}: the month's overview ${JSON.stringify(got)} differs from the records written ${JSON.stringify(expected)}`);
  }
}

interface Fill {
  seconds: number;
  recordsPerSecond: number;
}

async function fill(name: string, store: Store, batches: UsageRecord[][]): Promise<Fill> {
  process.stdout.write(`${name}: inserting ${ROWS.toLocaleString('en-US')} records through insertUsage (batches of ${BATCH}) ... `);
  const began = performance.now();
  for (const batch of batches) await store.insertUsage(batch);
  const seconds = (performance.now() - began) / 1000;
  console.log(`${seconds.toFixed(1)} s (${Math.round(ROWS / seconds).toLocaleString('en-US')} records/s)`);
  return { seconds, recordsPerSecond: Math.round(ROWS / seconds) };
}

// --- run ------------------------------------------------------------------------------------

const cleanups: (() => Promise<void> | void)[] = [];
async function cleanUp(): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) await Promise.resolve(cleanup()).catch((err: unknown) => console.error('cleanup:', err));
}
const watchdog = setTimeout(() => {
  console.error(`\nstopped: over --max-minutes ${values['max-minutes']}`);
  void cleanUp().finally(() => process.exit(2));
}, Number(values['max-minutes']) * 60_000);
watchdog.unref();

const results: { fills: Record<string, Fill>; rollupRows: Record<string, Record<string, number>>; timings: Timing[] } = { fills: {}, rollupRows: {}, timings: [] };
try {
  process.stdout.write(`generating ${ROWS.toLocaleString('en-US')} usage records over ${DAYS} days ... `);
  const batches: UsageRecord[][] = [];
  const times = diurnalTimestamps(ROWS, start, DAYS, rand);
  for (let done = 0; done < ROWS; done += BATCH) {
    const batch = Array.from(times.subarray(done, done + BATCH), usageRecord);
    batch.forEach(count);
    batches.push(batch);
  }
  console.log(`${expected.requests.toLocaleString('en-US')} requests`);

  // SQLite
  const dir = mkdtempSync(join(tmpdir(), 'claudcode-bench-dashboard-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'data');
  {
    const store = await SqliteStore.open(dataDir);
    try {
      results.fills['SQLite'] = await fill('SQLite', store, batches);
      await check('SQLite', store);
    } finally {
      await store.close();
    }
    const { DatabaseSync } = await import('node:sqlite');
    const raw = new DatabaseSync(join(dataDir, 'claudcode.db'), { readOnly: true });
    const rows = (table: string) => (raw.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
    results.rollupRows['SQLite'] = Object.fromEntries(TABLES.map((table) => [table, rows(table)]));
    raw.close();
    results.timings.push(...(await timeReports('SQLite', () => SqliteStore.open(dataDir))));
  }

  // PostgreSQL
  if (!values['no-postgres']) {
    const adminUrl = values['postgres-url'];
    const database = `claudcode_bench_dashboard_${randomBytes(4).toString('hex')}`;
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${database}`);
    await admin.end();
    cleanups.push(async () => {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      } finally {
        await client.end();
      }
    });
    const url = new URL(adminUrl);
    url.pathname = `/${database}`;
    const open = () => PostgresStore.open(url.toString(), { logger: createLogger('silent'), statementTimeoutMs: 120_000 });
    const store = await open();
    try {
      results.fills['PostgreSQL'] = await fill('PostgreSQL', store, batches);
      await check('PostgreSQL', store);
    } finally {
      await store.close();
    }
    const client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
    try {
      await client.query('VACUUM ANALYZE'); // as autovacuum would, soon after a bulk load
      const rows = async (table: string) => Number((await client.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n);
      const counts: Record<string, number> = {};
      for (const table of TABLES) counts[table] = await rows(table);
      results.rollupRows['PostgreSQL'] = counts;
    } finally {
      await client.end();
    }
    results.timings.push(...(await timeReports('PostgreSQL', open)));
  }

  // Report
  for (const [store, counts] of Object.entries(results.rollupRows)) {
    console.log(`${store} rows: ${Object.entries(counts).map(([table, n]) => `${table} ${n.toLocaleString('en-US')}`).join(', ')}`);
  }
  console.log();
  const table = [['store', 'report', 'points/rows', 'cold (ms)', `warm, median of ${RUNS} (ms)`]];
  for (const t of results.timings) table.push([t.store, t.report, String(t.points), t.coldMs.toFixed(1), t.warmMs.toFixed(1)]);
  const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
  for (const [i, row] of table.entries()) {
    console.log(row.map((cell, c) => (c < 2 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
    if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  }
  const month = results.timings.filter((t) => t.report === 'overview, last month');
  const over = month.filter((t) => Math.max(t.coldMs, t.warmMs) >= TARGET_MS);
  console.log(`\nthe 30-day overview: ${over.length ? `OVER the ${TARGET_MS} ms target on ${over.map((t) => t.store).join(', ')}` : `under ${TARGET_MS} ms on ${month.map((t) => t.store).join(' and ')}, cold and warm`}; totals checked against the records written; Node ${process.version}`);

  const out = join(dirname(fileURLToPath(import.meta.url)), 'results', 'dashboard.json');
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify({
    date: new Date().toISOString(), node: process.version, cpu: cpus()[0]?.model, cores: cpus().length, records: ROWS, requests: expected.requests,
    days: DAYS, keys: KEYS, batch: BATCH, runs: RUNS, targetMs: TARGET_MS, ...results,
  }, null, 2)}\n`);
  console.log(`written to ${out}`);
  if (over.length) process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  await cleanUp();
}
