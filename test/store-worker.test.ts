/**
 * The SQLite store's worker thread, from the request thread's side: a long report or a write
 * waiting on another process's lock leaves the event loop free; SQLite's errors (SQLITE_BUSY, a
 * constraint) come back with their codes and the store carries on; a worker that dies fails only
 * the calls it held; close() writes what was sent before it; an idle store does not keep a
 * process alive; the files are private to their owner.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DatabaseSync } from 'node:sqlite';
import type { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { MIGRATIONS } from '../src/store/schema.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { UsageRecord } from '../src/store/types.ts';
import { tempDirs, usageRecordAt } from './fixtures.ts';

const HOUR = 3_600_000;
const T = Date.UTC(2026, 2, 10, 12, 0, 0); // 2026-03-10 12:00 UTC

const tempDir = tempDirs('store-worker');
const usage = (over: Partial<UsageRecord> = {}) => usageRecordAt({ ts: T, keyId: 'key_w' }, over);

/**
 * The longest the event loop was held up while `work` ran (a 5 ms interval timer's largest gap
 * beyond its period), and how long `work` took. The timer ticks before and after the work too,
 * so that a loop blocked from the first moment of the work to its last shows in full.
 */
async function loopLag<T>(work: () => Promise<T>): Promise<{ maxLagMs: number; elapsedMs: number; result: T }> {
  const PERIOD = 5;
  let last = performance.now();
  let maxGap = 0;
  const ticker = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
  }, PERIOD);
  const pause = () => new Promise((resolve) => setTimeout(resolve, 4 * PERIOD));
  try {
    await pause();
    const began = performance.now();
    const result = await work();
    const elapsedMs = performance.now() - began;
    await pause();
    return { maxLagMs: maxGap - PERIOD, elapsedMs, result };
  } finally {
    clearInterval(ticker);
  }
}

function requestCount(rows: { requests: number }[]): number {
  return rows.reduce((sum, r) => sum + r.requests, 0);
}

/** The calls' thread, reached past `private` to make it die as a crash would. */
function workerOf(store: SqliteStore): Worker {
  return (store as unknown as { state: { thread: { worker: Worker } } }).state.thread.worker;
}

describe('the event loop while the store works', () => {
  // Loop lag allowed while the worker is busy. The old synchronous store held the loop for the
  // whole call: about a second for the reports below, 1.5 s for the lock.
  const MAX_LAG_MS = 100;

  it('stays responsive while a report aggregates 300,000 raw rows', async () => {
    // 300k rows in one hour, written straight into a file with the unversioned schema (quicker
    // than 300k inserts); opening it migrates and backfills the rollups. A range starting 1 ms
    // into that hour is read from the raw rows, the slowest kind of report.
    const dir = tempDir();
    const seed = new DatabaseSync(join(dir, 'claudcode.db'));
    seed.exec(MIGRATIONS[0]!.sql);
    seed.exec(`
      WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 299999)
      INSERT INTO usage (ts, key_id, request_id, endpoint, model, status, input_tokens, output_tokens, cache_creation_tokens,
                         cache_read_tokens, billed_tokens, latency_ms, cached, streamed, outcome)
      SELECT ${T} + i * 12, 'key_' || (i % 97), 'req_' || i, 'messages',
             CASE i % 3 WHEN 0 THEN 'claude-haiku-4-5' WHEN 1 THEN 'claude-sonnet-4-6' ELSE 'claude-opus-4-6' END,
             CASE WHEN i % 50 = 0 THEN 429 ELSE 200 END, i % 1000, i % 300, 0, 0, i % 1300, i % 5000, 0, 1, 'ok'
      FROM n`);
    seed.close();
    const store = await SqliteStore.open(dir);
    try {
      const { maxLagMs, elapsedMs, result } = await loopLag(async () => [
        await store.usageReport({ by: 'model', sinceMs: T + 1 }),
        await store.usageReport({ by: 'key', sinceMs: T + 1 }),
        await store.usageReport({ by: 'day', sinceMs: T + 1 }),
        await store.usageReport({ by: 'day', sinceMs: T + 1, keyId: 'key_5' }),
      ]);
      expect(result.map(requestCount)).toEqual([299_999, 299_999, 299_999, 3093]);
      expect(elapsedMs).toBeGreaterThan(2 * MAX_LAG_MS); // the work was long enough to show a blocked loop
      expect(maxLagMs).toBeLessThan(MAX_LAG_MS);
    } finally {
      await store.close();
    }
  });

  it('stays responsive while a write waits for another connection\'s lock', async () => {
    const dir = tempDir();
    const store = await SqliteStore.open(dir);
    const other = new DatabaseSync(join(dir, 'claudcode.db'));
    try {
      other.exec('BEGIN IMMEDIATE');
      const released = new Promise<void>((resolve) => setTimeout(() => (other.exec('COMMIT'), resolve()), 1500));
      const { maxLagMs, elapsedMs } = await loopLag(() => store.insertUsage([usage({ keyId: 'key_locked' })]));
      await released;
      expect(elapsedMs).toBeGreaterThan(1400); // it did wait for the lock
      expect(maxLagMs).toBeLessThan(MAX_LAG_MS);
      expect(requestCount(await store.usageReport({ by: 'key', keyId: 'key_locked' }))).toBe(1);
    } finally {
      other.close();
      await store.close();
    }
  });
});

describe('failed calls', () => {
  it('a write that outwaits busy_timeout rejects with SQLITE_BUSY; the same batch succeeds later', async () => {
    const dir = tempDir();
    const store = await SqliteStore.open(dir, { busyTimeoutMs: 150 });
    const other = new DatabaseSync(join(dir, 'claudcode.db'));
    try {
      other.exec('BEGIN IMMEDIATE');
      const batch = [usage({ keyId: 'key_busy' }), usage({ keyId: 'key_busy' })];
      const began = performance.now();
      await expect(store.insertUsage(batch)).rejects.toMatchObject({ code: 'ERR_SQLITE_ERROR', errcode: 5, message: 'database is locked' });
      expect(performance.now() - began).toBeGreaterThanOrEqual(140);
      // Reads go on under the other connection's write lock (WAL).
      expect(await store.usageReport({ by: 'key', keyId: 'key_busy' })).toEqual([]);
      other.exec('COMMIT');
      await store.insertUsage(batch); // what the usage recorder does with a kept batch
      expect(requestCount(await store.usageReport({ by: 'key', keyId: 'key_busy' }))).toBe(2);
    } finally {
      if (other.isTransaction) other.exec('ROLLBACK');
      other.close();
      await store.close();
    }
  });

  it('a constraint error carries its SQLite code and leaves the store working', async () => {
    const store = new SqliteStore(tempDir());
    try {
      const key = {
        id: 'key_1', name: 'one', hash: 'a'.repeat(64), preview: 'sk-cc-...aaaa', budgetTokens: 1, windowSeconds: 60, rpm: 1,
        concurrent: 1, models: null, expiresAt: null, disabled: false, cacheTtlSeconds: null, cacheGroup: null, mcpServers: [], createdAt: T, updatedAt: T,
      };
      await store.createKey(key);
      const failure = await store.createKey({ ...key, id: 'key_2' }).catch((err: unknown) => err);
      expect(failure).toBeInstanceOf(Error);
      expect(failure).toMatchObject({ code: 'ERR_SQLITE_ERROR', errcode: 2067, message: expect.stringMatching(/UNIQUE constraint failed: keys.key_hash/) });
      expect((await store.listKeys()).map((k) => k.id)).toEqual(['key_1']);
      // Arguments that cannot cross to the worker reject too, without harm.
      await expect(store.setMeta('x', (() => 'y') as unknown as string)).rejects.toThrow(/could not be cloned/);
      await store.setMeta('x', 'y');
      expect(await store.getMeta('x')).toBe('y');
    } finally {
      await store.close();
    }
  });

  it('a worker that dies fails the calls it held; a new one serves the next calls', async () => {
    const dir = tempDir();
    const store = await SqliteStore.open(dir);
    const other = new DatabaseSync(join(dir, 'claudcode.db'));
    try {
      await store.insertUsage([usage({ keyId: 'key_before' })]);
      // Hold the worker in a write waiting for a lock, with a read queued behind it, and kill
      // the thread: it ends as soon as the wait returns, before the queued read can run.
      other.exec('BEGIN IMMEDIATE');
      const blocked = store.insertUsage([usage({ keyId: 'key_blocked' })]).catch(() => {});
      const held = store.usageReport({ by: 'key' });
      await new Promise((resolve) => setTimeout(resolve, 50));
      const stopped = workerOf(store).terminate();
      setTimeout(() => other.exec('COMMIT'), 100);
      await expect(held).rejects.toThrow(/^the SQLite store's worker thread exited unexpectedly \(exit code 1\)$/);
      await Promise.all([blocked, stopped]);
      expect(requestCount(await store.usageReport({ by: 'key', keyId: 'key_before' }))).toBe(1);
      await store.insertUsage([usage({ keyId: 'key_after' })]);
      expect(requestCount(await store.usageReport({ by: 'key', keyId: 'key_after' }))).toBe(1);
    } finally {
      if (other.isTransaction) other.exec('ROLLBACK');
      other.close();
      await store.close();
    }
  });

  it('a store that cannot open fails its calls with the reason, and opens once the cause is gone', async () => {
    const dir = tempDir();
    const dataDir = join(dir, 'data');
    writeFileSync(dataDir, 'not a directory');
    const store = new SqliteStore(dataDir);
    try {
      await expect(store.getMeta('x')).rejects.toThrow(`cannot open the SQLite store in ${dataDir}: EEXIST`);
      await expect(SqliteStore.open(dataDir)).rejects.toThrow(/cannot open the SQLite store/);
      rmSync(dataDir);
      expect(await store.getMeta('x')).toBeNull();
    } finally {
      await store.close();
    }
  });
});

describe('closing', () => {
  it('close() writes what was sent before it; later calls reject', async () => {
    const dir = tempDir();
    const store = new SqliteStore(dir);
    const writes = [store.insertUsage([usage({ keyId: 'key_close' })]), store.setMeta('closing', 'yes')];
    await Promise.all([store.close(), store.close()]);
    await Promise.all(writes);
    await expect(store.getMeta('closing')).rejects.toThrow('the SQLite store is closed');
    const reopened = new SqliteStore(dir);
    try {
      expect(await reopened.getMeta('closing')).toBe('yes');
      expect(requestCount(await reopened.usageReport({ by: 'key' }))).toBe(1);
    } finally {
      await reopened.close();
    }
  });

  it('an idle store does not keep a process alive; a closing one finishes first', () => {
    const dir = tempDir();
    const storeUrl = new URL('../src/store/sqlite.ts', import.meta.url).href;
    const run = (script: string) =>
      spawnSync(process.execPath, ['--input-type=module', '-e', `import { SqliteStore } from ${JSON.stringify(storeUrl)};\n${script}`], {
        encoding: 'utf8',
        timeout: 15_000,
        env: { ...process.env, DATA_DIR: dir },
      });
    // Never closed: the process still ends when its work is done.
    const open = run(`const store = new SqliteStore(process.env.DATA_DIR); await store.setMeta('left', 'open'); console.log('done');`);
    expect(open.stderr).toBe('');
    expect([open.status, open.stdout.trim()]).toEqual([0, 'done']);
    // close() with a write still in flight and nothing else keeping the process alive.
    const closed = run(`const store = new SqliteStore(process.env.DATA_DIR); void store.setMeta('closed', 'yes'); await store.close(); console.log('closed');`);
    expect(closed.stderr).toBe('');
    expect([closed.status, closed.stdout.trim()]).toEqual([0, 'closed']);
    const check = new DatabaseSync(join(dir, 'claudcode.db'), { readOnly: true });
    expect(check.prepare('SELECT name, value FROM meta WHERE name IN (?, ?) ORDER BY name').all('closed', 'left').map((r) => ({ ...r }))).toEqual([
      { name: 'closed', value: 'yes' },
      { name: 'left', value: 'open' },
    ]);
    check.close();
  });
});

describe.skipIf(process.platform === 'win32')('file modes', () => {
  const mode = (path: string) => statSync(path).mode & 0o777;

  it('creates the data directory 0700 and the database, -wal and -shm 0600', async () => {
    const dataDir = join(tempDir(), 'nested', 'data');
    const store = await SqliteStore.open(dataDir);
    try {
      await store.insertUsage([usage()]);
      expect(mode(join(dataDir, '..'))).toBe(0o700);
      expect(mode(dataDir)).toBe(0o700);
      for (const file of ['claudcode.db', 'claudcode.db-wal', 'claudcode.db-shm']) {
        expect(existsSync(join(dataDir, file)), file).toBe(true);
        expect(mode(join(dataDir, file)), file).toBe(0o600);
      }
    } finally {
      await store.close();
    }
  });

  it('narrows an existing database (and its -wal, -shm) to 0600, and leaves an existing directory alone', async () => {
    const dataDir = join(tempDir(), 'data');
    mkdirSync(dataDir, { mode: 0o755 });
    chmodSync(dataDir, 0o755);
    const db = join(dataDir, 'claudcode.db');
    const old = new DatabaseSync(db);
    old.exec('PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);');
    for (const file of [db, `${db}-wal`, `${db}-shm`]) chmodSync(file, 0o644);
    const store = await SqliteStore.open(dataDir);
    try {
      for (const file of [db, `${db}-wal`, `${db}-shm`]) expect(mode(file), file).toBe(0o600);
      expect(mode(dataDir)).toBe(0o755);
    } finally {
      old.close();
      await store.close();
    }
  });
});
