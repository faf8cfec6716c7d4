/**
 * Small test fixtures shared by the suites: seeded randomness (random.ts, which the benchmarks
 * use too), temp directories removed after the file's tests, key records for the limiter suites,
 * usage records with every field filled in (one at a time, or random ones with random upstreams
 * and random report queries), and a TCP proxy that can take a server away from its clients.
 * (Free ports are in ports.ts, which the benchmarks import: it must not import vitest.)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect } from 'vitest';
import type { KeyRecord, UsageQuery, UsageRecord, UsageRow, UsageStore } from '../src/store/types.ts';
import { seriesReference } from './usage-reference.ts';

export { seededRandom } from './random.ts';

/** A function making fresh temp directories (named after `prefix`), all removed after the file's tests. */
export function tempDirs(prefix: string): () => string {
  const dirs: string[] = [];
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    const dir = mkdtempSync(join(tmpdir(), `claudcode-${prefix}-`));
    dirs.push(dir);
    return dir;
  };
}

/**
 * A key record with limits no test reaches unless it means to (a million tokens an hour, 1000
 * rpm, 1000 in flight; every model, no expiry), created 2026-01-01; `over` applied.
 */
export function keyRecord(over: Partial<KeyRecord> = {}): KeyRecord {
  const created = Date.UTC(2026, 0, 1);
  return {
    id: 'key_test',
    name: 'test',
    hash: 'ab'.repeat(32),
    preview: 'sk-cc-...abcd',
    budgetTokens: 1_000_000,
    windowSeconds: 3600,
    rpm: 1000,
    concurrent: 1000,
    models: null,
    expiresAt: null,
    disabled: false,
    cacheTtlSeconds: null,
    cacheGroup: null,
    mcpServers: [],
    createdAt: created,
    updatedAt: created,
    ...over,
  };
}

let sequence = 0;

/** A usage record of a served request at `defaults.ts`, with `over` applied; request ids are unique. */
export function usageRecordAt(defaults: Pick<UsageRecord, 'ts' | 'keyId'>, over: Partial<UsageRecord> = {}): UsageRecord {
  sequence++;
  return {
    ...defaults, requestId: `req_${sequence}`, endpoint: 'messages', model: 'claude-haiku-4-5', status: 200,
    inputTokens: 10, outputTokens: 20, cacheCreationTokens: 1, cacheReadTokens: 2, billedTokens: 33, latencyMs: 100,
    cached: false, streamed: false, outcome: 'ok', ...over,
  };
}

/**
 * What the report-exactness checks fill with random records: three and a half days around `t`
 * (aligned to nothing), four keys, three models. Spread it into randomUsageRecords' and
 * randomReportQuery's options.
 */
export function randomUsageSpan(t: number): { start: number; end: number; keys: string[]; models: string[] } {
  const HOUR = 3_600_000;
  return {
    start: t - 36 * HOUR - 1234,
    end: t + 48 * HOUR + 777,
    keys: ['key_a', 'key_b', 'key_c', 'key_d'],
    models: ['claude-haiku-4-5', 'claude-sonnet-4-6', 'claude-opus-4-6'],
  };
}

/**
 * Random usage records spread over [start, end), many of them piled on hour and day boundaries
 * (where off-by-one errors in a report's split would show), some standing for several requests,
 * with every outcome and status: the input of the report-exactness checks (store-rollup.test.ts
 * for SQLite, store-postgres.test.ts for PostgreSQL).
 */
export function randomUsageRecords(
  rand: () => number,
  options: { count: number; start: number; end: number; keys: readonly string[]; models: readonly string[] },
): UsageRecord[] {
  const HOUR = 3_600_000;
  const { count, start, end, keys, models } = options;
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const outcomes = ['ok', 'ok', 'ok', 'error', 'rejected', 'client_closed', 'upstream_cut'] as const;
  const records: UsageRecord[] = [];
  for (let i = 0; i < count; i++) {
    const ts = rand() < 0.15 ? Math.round((start + rand() * (end - start)) / HOUR) * HOUR + pick([-1, 0, 0, 1]) : start + Math.floor(rand() * (end - start));
    const requests = rand() < 0.2 ? 1 + Math.floor(rand() * 6) : rand() < 0.5 ? undefined : 1;
    records.push(usageRecordAt({ ts, keyId: pick(keys) }, {
      model: pick(models), status: pick([200, 200, 200, 400, 429, 500, 529]), outcome: pick(outcomes),
      inputTokens: Math.floor(rand() * 5000), outputTokens: Math.floor(rand() * 900), cacheCreationTokens: Math.floor(rand() * 50),
      cacheReadTokens: Math.floor(rand() * 300), billedTokens: Math.floor(rand() * 7000), latencyMs: Math.floor(rand() * 9000),
      cached: rand() < 0.1, streamed: rand() < 0.5, ...(requests === undefined ? {} : { requests }),
    }));
  }
  return records;
}

/** The upstream names `withUpstreams` gives records (names as operators give them, and a default: a URL's host). */
export const RANDOM_UPSTREAMS = ['anthropic-main', 'api.anthropic.com', 'backup-eu'] as const;

/**
 * The upstream that served each random record, drawn from its own generator so that the records'
 * other fields stay as seeded: none for refusals and cache hits (left out or '', both mean none),
 * else one of RANDOM_UPSTREAMS, or now and then none (as rows written before the field read).
 */
export function withUpstreams(records: UsageRecord[], rand: () => number): UsageRecord[] {
  return records.map((r) => {
    const none = r.outcome === 'rejected' || r.cached || rand() < 0.1;
    if (none) return rand() < 0.5 ? r : { ...r, upstream: '' };
    return { ...r, upstream: RANDOM_UPSTREAMS[Math.floor(rand() * RANDOM_UPSTREAMS.length)]! };
  });
}

/**
 * A random report query over records spread on [start, end): edges unbounded, on hour and day
 * boundaries (±1 ms), on a record's own time, or anywhere; mostly ordered, now and then reversed
 * (an empty range); sometimes for one key (or one with no rows).
 */
export function randomReportQuery(
  rand: () => number,
  options: { start: number; end: number; keys: readonly string[]; records: readonly UsageRecord[] },
): UsageQuery {
  const HOUR = 3_600_000;
  const DAY = 86_400_000;
  const { start, end, keys, records } = options;
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const edge = (): number | undefined => {
    const kind = rand();
    if (kind < 0.15) return undefined;
    if (kind < 0.35) return Math.round((start + rand() * (end - start)) / HOUR) * HOUR + pick([-1, 0, 1]);
    if (kind < 0.5) return Math.round((start + rand() * (end - start)) / DAY) * DAY + pick([-1, 0, 1]);
    if (kind < 0.65) return pick(records).ts + pick([0, 1]);
    return Math.floor(start - 2 * HOUR + rand() * (end - start + 4 * HOUR));
  };
  const [a, b] = [edge(), edge()];
  const [sinceMs, untilMs] = a !== undefined && b !== undefined && a > b && rand() < 0.9 ? [b, a] : [a, b];
  return {
    by: pick(['model', 'key', 'day', 'upstream'] as const),
    ...(sinceMs === undefined ? {} : { sinceMs }),
    ...(untilMs === undefined ? {} : { untilMs }),
    ...(rand() < 0.4 ? { keyId: pick([...keys, 'key_none']) } : {}),
  };
}

/** What the report contract checks a store against (see `expectRandomReports`). */
export interface ReportContract {
  rand: () => number;
  span: ReturnType<typeof randomUsageSpan>;
  records: readonly UsageRecord[];
  /** The store answering the i-th query (several instances may share one database). */
  store: (i: number) => Pick<UsageStore, 'usageReport' | 'usageSeries'>;
  /** The report aggregated straight from the raw usage rows. */
  rawReport: (query: UsageQuery) => UsageRow[] | Promise<UsageRow[]>;
}

/**
 * The rollup contract every store's suite runs: `rounds` random report queries, each equal to
 * the raw aggregate; `narrowed` adds hourly groups and model and upstream filters. Returns how
 * many answers were not empty (so a suite can tell the queries hit data).
 */
export async function expectRandomReports(c: ReportContract, rounds: number, narrowed: boolean): Promise<number> {
  let nonEmpty = 0;
  for (let i = 0; i < rounds; i++) {
    const query: UsageQuery = { ...randomReportQuery(c.rand, { ...c.span, records: c.records }) };
    if (narrowed) {
      if (i % 3 === 0) query.by = 'hour';
      if (c.rand() < 0.4) query.model = c.span.models[Math.floor(c.rand() * c.span.models.length)]!;
      if (c.rand() < 0.4) query.upstream = ['', 'anthropic-main', 'backup-eu', 'none-such'][Math.floor(c.rand() * 4)]!;
    }
    const expected = await c.rawReport(query);
    expect(await c.store(i).usageReport(query), JSON.stringify(query)).toEqual(expected);
    if (expected.length) nonEmpty++;
  }
  return nonEmpty;
}

/** The series half of the contract: `rounds` random series queries, each equal to the reference. */
export async function expectRandomSeries(c: ReportContract, rounds: number): Promise<void> {
  const DAY = 86_400_000;
  for (let i = 0; i < rounds; i++) {
    const { sinceMs, untilMs, keyId } = randomReportQuery(c.rand, { ...c.span, records: c.records });
    const bucket = (['minute', 'hour', 'day'] as const)[i % 3]!;
    const query = {
      sinceMs: sinceMs ?? c.span.start - DAY, untilMs: untilMs ?? c.span.end + DAY, bucket, ...(keyId === undefined ? {} : { keyId }),
      ...(c.rand() < 0.2 ? { model: c.span.models[0]! } : {}), ...(c.rand() < 0.2 ? { upstream: '' } : {}),
    };
    expect(await c.store(i).usageSeries(query), JSON.stringify(query)).toEqual(seriesReference(c.records, query));
  }
}

/**
 * A TCP proxy on a loopback port in front of `target` (host:port), for outage tests that take a
 * server away from its clients without stopping it:
 * - `down()` stops listening and cuts every open connection (the client sees resets, then
 *   refused connections); `up()` listens on the same port again (while up, it only ends a hang).
 * - `hang()` keeps every connection open but forwards nothing either way, on connections opened
 *   meanwhile too (a server that stopped answering); `resume()` forwards again, nothing lost.
 * - `dropReplies(true)` keeps forwarding what the client sends but swallows what the server
 *   answers, so that a test can let a statement commit while its reply is lost.
 * - `close()`: down for good (safe to call whatever state it is in, and again).
 */
export interface TcpProxy {
  /** The port clients connect to; the same across down() and up(). */
  readonly port: number;
  /** The connections currently open through the proxy. */
  readonly connections: number;
  /** The proxy's address as a URL, e.g. redis://127.0.0.1:40123 for a Redis target. */
  url(scheme: string): string;
  down(): Promise<void>;
  up(): Promise<void>;
  hang(): void;
  resume(): void;
  dropReplies(drop: boolean): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let dropping = false;
  let hung = false;
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => undefined); // a cut connection's resets are the point
      socket.on('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (chunk: Buffer) => upstream.write(chunk));
    upstream.on('data', (chunk: Buffer) => {
      if (!dropping) client.write(chunk);
    });
    if (hung) for (const socket of [client, upstream]) socket.pause();
  });
  const listen = (port: number) => new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  await listen(0);
  const port = (server.address() as AddressInfo).port;
  const resume = () => {
    hung = false;
    for (const socket of sockets) socket.resume();
  };
  const down = async () => {
    const closed = server.listening ? new Promise<void>((resolve) => server.close(() => resolve())) : undefined;
    for (const socket of sockets) socket.destroy();
    await closed;
  };
  return {
    port,
    get connections() {
      return sockets.size / 2;
    },
    url: (scheme) => `${scheme}://127.0.0.1:${port}`,
    down,
    async up() {
      resume();
      if (!server.listening) await listen(port);
    },
    hang() {
      hung = true;
      for (const socket of sockets) socket.pause();
    },
    resume,
    dropReplies(drop) {
      dropping = drop;
    },
    close: down,
  };
}
