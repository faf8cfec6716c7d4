/**
 * Small test fixtures shared by the suites: seeded randomness (random.ts, which the benchmarks
 * use too), temp directories removed after the file's tests, usage records with every field
 * filled in (one at a time, or random ones with random report queries), and a TCP proxy that can
 * take a server away from its clients.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import type { UsageQuery, UsageRecord } from '../src/store/types.ts';

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
    by: pick(['model', 'key', 'day'] as const),
    ...(sinceMs === undefined ? {} : { sinceMs }),
    ...(untilMs === undefined ? {} : { untilMs }),
    ...(rand() < 0.4 ? { keyId: pick([...keys, 'key_none']) } : {}),
  };
}

/**
 * A TCP proxy on a loopback port in front of `target` (host:port), for taking a server away
 * from a client and giving it back: `down()` stops listening and cuts every open connection (the
 * client sees resets, then refused connections), `up()` listens on the same port again.
 * `dropReplies(true)` keeps forwarding what the client sends but swallows what the server
 * answers, so that a test can let a statement commit while its reply is lost.
 */
export interface TcpProxy {
  readonly port: number;
  /** The connections currently open through the proxy. */
  readonly connections: number;
  down(): Promise<void>;
  up(): Promise<void>;
  dropReplies(drop: boolean): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let dropping = false;
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
  const cut = () => {
    for (const socket of sockets) socket.destroy();
  };
  return {
    port,
    get connections() {
      return sockets.size / 2;
    },
    async down() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      cut();
      await closed;
    },
    up: () => listen(port),
    dropReplies(drop) {
      dropping = drop;
    },
    async close() {
      cut();
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
