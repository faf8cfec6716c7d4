/**
 * `npm run bench:report`: how long usage reports take on a large store. Fills a temporary store
 * with 1,000,000 usage rows through SqliteStore (about 30 days, 200 keys with a skewed share of
 * the traffic, 3 models, a realistic mix of statuses), then times `usageReport` for each grouping
 * over all time, since 7 days and since 24 hours ago (ranges whose edges are partial hours, read
 * from raw rows), and for one key. For a before/after figure it times the aggregate SQL the store
 * ran before the hourly rollup (one GROUP BY over the raw rows) on the same file, and checks that
 * both give the same rows. Medians of a few runs; the temporary directory is removed at the end.
 *
 * Options: --rows N (default 1000000), --runs N (default 5; the old query runs min(N, 3) times).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DatabaseSync, type SQLInputValue } from 'node:sqlite';
import { parseArgs } from 'node:util';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { ReportGrouping, UsageQuery, UsageRecord, UsageRow } from '../src/store/types.ts';
import { diurnalTimestamps, pickWeighted, seededRandom, skewedKeyPicker } from '../test/random.ts';

const { values } = parseArgs({ options: { rows: { type: 'string', default: '1000000' }, runs: { type: 'string', default: '5' } } });
const ROWS = Number(values.rows);
const RUNS = Number(values.runs);
const DAY = 86_400_000;
const DAYS = 30;
const KEYS = 200;
const MODELS = [
  ['claude-sonnet-4-6', 0.6],
  ['claude-haiku-4-5', 0.3],
  ['claude-opus-4-6', 0.1],
] as const;
const BATCH = 5000;

// Deterministic, so runs are comparable.
const rand = seededRandom(42);

const pickKey = skewedKeyPicker(KEYS, rand);
const pickModel = (): string => pickWeighted(MODELS, rand);

const now = Date.now();
const start = now - DAYS * DAY;
let seq = 0;


function usageRecord(ts: number): UsageRecord {
  const roll = rand();
  const base = {
    ts, keyId: pickKey(), requestId: `req_${++seq}`, endpoint: rand() < 0.05 ? 'count_tokens' : 'messages',
    model: pickModel(), cached: false, streamed: rand() < 0.7,
  } as const;
  if (roll < 0.04) {
    return { ...base, status: 429, outcome: 'rejected', inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0, latencyMs: 1 };
  }
  const inputTokens = 200 + Math.floor(rand() * 20_000);
  const outputTokens = Math.floor(rand() * 2_000);
  const cacheReadTokens = rand() < 0.4 ? Math.floor(rand() * 50_000) : 0;
  const cacheCreationTokens = rand() < 0.1 ? Math.floor(rand() * 5_000) : 0;
  const tokens = { inputTokens, outputTokens, cacheCreationTokens, cacheReadTokens, billedTokens: inputTokens + outputTokens + cacheCreationTokens + cacheReadTokens };
  const latencyMs = 300 + Math.floor(rand() * 20_000);
  if (roll < 0.05) return { ...base, ...tokens, status: 529, outcome: 'error', outputTokens: 0, billedTokens: 0, latencyMs };
  if (roll < 0.06) return { ...base, ...tokens, status: 400, outcome: 'error', outputTokens: 0, billedTokens: 0, latencyMs: 200 };
  if (roll < 0.07) return { ...base, ...tokens, status: 200, outcome: rand() < 0.5 ? 'client_closed' : 'upstream_cut', latencyMs };
  return { ...base, ...tokens, status: 200, outcome: 'ok', cached: rand() < 0.02, latencyMs };
}

/** The aggregate the store ran before the rollup: one GROUP BY over the raw usage rows. */
const OLD_GROUP: Record<ReportGrouping, string> = {
  model: 'model',
  key: 'key_id',
  day: "strftime('%Y-%m-%d', ts / 1000, 'unixepoch')",
  hour: "strftime('%Y-%m-%dT%H:00Z', ts / 1000, 'unixepoch')", // no such grouping then either
  upstream: 'upstream', // no such grouping then; the same aggregate over today's column
};
function oldReport(db: DatabaseSync, query: UsageQuery): UsageRow[] {
  const where: string[] = [];
  const params: SQLInputValue[] = [];
  if (query.keyId !== undefined) {
    where.push('key_id = ?');
    params.push(query.keyId);
  }
  if (query.sinceMs !== undefined) {
    where.push('ts >= ?');
    params.push(query.sinceMs);
  }
  if (query.untilMs !== undefined) {
    where.push('ts < ?');
    params.push(query.untilMs);
  }
  const sql = `
    SELECT ${OLD_GROUP[query.by]} AS "group", model,
      COUNT(*) AS requests,
      SUM(CASE WHEN status >= 400 OR outcome <> 'ok' THEN 1 ELSE 0 END) AS errors,
      SUM(cached) AS cachedRequests,
      SUM(input_tokens) AS inputTokens,
      SUM(output_tokens) AS outputTokens,
      SUM(cache_creation_tokens) AS cacheCreationTokens,
      SUM(cache_read_tokens) AS cacheReadTokens,
      SUM(billed_tokens) AS billedTokens,
      SUM(latency_ms) AS totalLatencyMs
    FROM usage ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
    GROUP BY 1, 2 ORDER BY 1, 2`;
  return db.prepare(sql).all(...params) as unknown as UsageRow[];
}

function median(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function time<T>(runs: number, work: () => T | Promise<T>): Promise<{ ms: number; result: T }> {
  const samples: number[] = [];
  let result!: T;
  for (let i = 0; i < runs; i++) {
    const began = performance.now();
    result = await work();
    samples.push(performance.now() - began);
  }
  return { ms: median(samples), result };
}

const dir = mkdtempSync(join(tmpdir(), 'claudcode-bench-report-'));
try {
  const store = await SqliteStore.open(join(dir, 'data'));
  process.stdout.write(`inserting ${ROWS.toLocaleString('en-US')} usage rows through SqliteStore (batches of ${BATCH}) ... `);
  const insertBegan = performance.now();
  const times = diurnalTimestamps(ROWS, start, DAYS, rand);
  for (let done = 0; done < ROWS; done += BATCH) {
    await store.insertUsage(Array.from(times.subarray(done, done + BATCH), usageRecord));
  }
  const insertSeconds = (performance.now() - insertBegan) / 1000;
  console.log(`${insertSeconds.toFixed(1)} s (${Math.round(ROWS / insertSeconds).toLocaleString('en-US')} rows/s)`);

  const raw = new DatabaseSync(store.path, { readOnly: true });
  const count = (table: string) => (raw.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n.toLocaleString('en-US');
  console.log(`rollups: usage_daily ${count('usage_daily')} rows, usage_hourly ${count('usage_hourly')} rows\n`);

  const busiest = (raw.prepare('SELECT key_id AS k FROM usage GROUP BY key_id ORDER BY COUNT(*) DESC LIMIT 1').get() as { k: string }).k;
  const scenarios: [string, UsageQuery][] = [
    ['by model, all time', { by: 'model' }],
    ['by key, all time', { by: 'key' }],
    ['by day, all time', { by: 'day' }],
    ['by model, since 7 days', { by: 'model', sinceMs: now - 7 * DAY }],
    ['by key, since 7 days', { by: 'key', sinceMs: now - 7 * DAY }],
    ['by day, since 7 days', { by: 'day', sinceMs: now - 7 * DAY }],
    ['by model, since 24 h', { by: 'model', sinceMs: now - DAY }],
    ['by key, since 24 h', { by: 'key', sinceMs: now - DAY }],
    ['by key, 7 days to 24 h ago', { by: 'key', sinceMs: now - 7 * DAY + 1234, untilMs: now - DAY - 4321 }],
    [`by day, one key (busiest), all time`, { by: 'day', keyId: busiest }],
    [`by model, one key (busiest), since 24 h`, { by: 'model', keyId: busiest, sinceMs: now - DAY }],
    ['by day, one key (quiet), since 7 days', { by: 'day', keyId: 'key_199', sinceMs: now - 7 * DAY }],
  ];

  const table: string[][] = [['report', 'rows', 'old raw SQL (ms)', 'SqliteStore (ms)', 'speed-up']];
  let mismatches = 0;
  for (const [name, query] of scenarios) {
    const before = await time(Math.min(RUNS, 3), () => oldReport(raw, query));
    const after = await time(RUNS, () => store.usageReport(query));
    if (JSON.stringify(before.result.map((r) => ({ ...r }))) !== JSON.stringify(after.result)) {
      mismatches++;
      console.error(`MISMATCH: ${name}`);
    }
    table.push([name, String(after.result.length), before.ms.toFixed(1), after.ms.toFixed(1), `${(before.ms / after.ms).toFixed(0)}×`]);
  }
  raw.close();
  await store.close();

  const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
  for (const [i, row] of table.entries()) {
    console.log(row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
    if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  }
  console.log(`\nmedians of ${RUNS} runs (old query: ${Math.min(RUNS, 3)}); Node ${process.version}; results ${mismatches ? `DIFFER in ${mismatches} reports` : 'identical to the old query in every report'}`);
  if (mismatches) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
