/**
 * The embedded mode's shared cache tier: a SQLite file of its own, `cache.db` in the data
 * directory (0600, like the store's), so that entries survive a restart and the usage store
 * never waits behind cache writes.
 *
 * Where the work runs — measured on this machine (Node 24, node:sqlite, WAL, 100k entries,
 * sequential lookups by key from the page cache):
 *   body size              200 B     2 KB     50 KB
 *   read on this thread    8 µs      8 µs     11 µs   (a miss: 3-4 µs)
 *   read via a worker     ~36 µs    36 µs     40 µs   (round trip; ~30-40 µs CPU over both threads)
 *   one autocommit write   36 µs    73 µs    480 µs   (and a WAL checkpoint, fsync, now and then)
 * So reads run synchronously on the calling thread, on a connection of their own that only
 * reads: a lookup by key is a few B-tree pages, cheaper than the message round trip that would
 * move it off the thread, and a WAL reader never waits for the writer (its busy timeout is 0: a
 * lock it would have to wait for, which in WAL mode only crash recovery takes, makes a miss,
 * logged). Everything else — writes, purges, stats, the expiry sweep and the byte-budget trim —
 * runs on a worker thread with the one writing connection: a write may wait out another
 * process's lock (busy timeout) or pay for a checkpoint's fsync, and a purge or sweep may take a
 * while, none of which may stall requests. A written entry is visible to reads once its `set`
 * has resolved. The cost left on the request thread is a cold read (pages not in the OS cache,
 * one disk read per page), which the memory tier in front (tiered.ts) makes rare for hot keys.
 *
 * This module is also the worker's entry point (the thread loads this same file, which runs
 * `serveWorker` when it finds its own workerData), so that the tier stays one file.
 *
 * Expiry: entries carry expiresAt; a read at or after it is a miss, and a sweep (every
 * `sweepIntervalMs`, and from `sweep()`) deletes the expired rows. Size: the entries are held
 * under `maxBytes` (each counted as key + body bytes + a fixed overhead, as in memory.ts); past
 * it the oldest written are deleted (down to 90 %, so that not every write trims), and the file
 * gives its free pages back (auto_vacuum incremental) after a sweep or purge. The entry count
 * and byte total are kept by triggers in a one-row table, so stats and the budget check are one
 * row read whatever the file's size (a count over 20k entries of 2 KB took ~26 ms, page-cache
 * reads of the whole table), and exact whichever process wrote. A write costs ~100-170 µs on the
 * worker (one transaction each); at one write per cacheable miss, far below what the upstream
 * calls themselves allow, so writes are not batched.
 */
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { throttled, type Logger } from '../logger.ts';
import { immediateTransaction, prepareFiles } from '../store/sqlite-db.ts';
import { deserializeError, PendingCalls, serializeError, type CallResult, type SerializedError } from '../store/worker-protocol.ts';
import { entrySize } from './memory.ts';
import type { CacheEntry, CacheStats, CacheTier } from './types.ts';

export const CACHE_DB_FILE = 'cache.db';
export const DEFAULT_SQLITE_CACHE_MAX_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_SWEEP_INTERVAL_MS = 60_000;
const SCHEMA_VERSION = 1;
/** Rows deleted per statement by a sweep or a trim: short write transactions. */
const DELETE_BATCH = 1000;
/** A trim goes down to this share of the budget. */
const TRIM_TO = 0.9;
const WORKER_ROLE = 'claudcode-cache-sqlite';

export interface SqliteCacheOptions {
  /** Logs failed reads and sweeps (throttled); optional. */
  logger?: Logger;
  /** The byte budget of the entries (default 1 GiB). */
  maxBytes?: number;
  /** How often expired entries are deleted (default 60 s; 0: only when `sweep()` is called). */
  sweepIntervalMs?: number;
  /** How long a write waits for another process's lock (default 5 s). */
  busyTimeoutMs?: number;
}

export interface SweepResult {
  /** Expired entries deleted. */
  expired: number;
  /** Entries deleted to get back under the byte budget. */
  trimmed: number;
}

// ---------------------------------------------------------------------------------------------
// The worker side: the writing connection.

interface WorkerConfig {
  role: typeof WORKER_ROLE;
  dataDir: string;
  maxBytes: number;
  busyTimeoutMs: number;
}

type Op = 'set' | 'purge' | 'stats' | 'sweep' | 'close';
interface Request {
  id: number;
  op: Op;
  args: unknown[];
}
type Response = CallResult;
type Startup = { ready: true } | { ready: false; error: SerializedError };


/**
 * Creates the tables, or recreates them when the file holds another version's (a cache may be
 * thrown away); under a write lock, so that processes opening the file together do not race.
 * `id` is the write order (a rewrite gets a new one): the trim deletes the lowest first. The
 * body is the last column, so that reading the others never walks its overflow pages. `totals`
 * is kept by triggers, so that stats and the budget check cost one row read whatever the size
 * of the file, and stay exact whichever process writes.
 */
function migrate(db: DatabaseSync): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    const { user_version: version } = db.prepare('PRAGMA user_version').get() as { user_version: number };
    if (version !== SCHEMA_VERSION) {
      db.exec(`
        DROP TABLE IF EXISTS entries;
        DROP TABLE IF EXISTS totals;
        CREATE TABLE entries (
          id INTEGER PRIMARY KEY,
          key TEXT NOT NULL UNIQUE,
          stored_at INTEGER NOT NULL,
          expires_at INTEGER NOT NULL,
          tokens_saved INTEGER NOT NULL,
          size INTEGER NOT NULL,
          body TEXT NOT NULL
        );
        CREATE INDEX entries_expires_at ON entries (expires_at);
        CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 1), entries INTEGER NOT NULL, bytes INTEGER NOT NULL);
        INSERT INTO totals VALUES (1, 0, 0);
        CREATE TRIGGER entries_added AFTER INSERT ON entries BEGIN
          UPDATE totals SET entries = entries + 1, bytes = bytes + new.size WHERE id = 1;
        END;
        CREATE TRIGGER entries_removed AFTER DELETE ON entries BEGIN
          UPDATE totals SET entries = entries - 1, bytes = bytes - old.size WHERE id = 1;
        END;
        PRAGMA user_version = ${SCHEMA_VERSION};
      `);
    }
    db.exec('COMMIT');
  } catch (err) {
    db.exec('ROLLBACK');
    throw err;
  }
}

/** The end (exclusive) of the key range of `scope`: keys are `${scope}:…`, and ';' follows ':'. */
function scopeRange(scope: string): [string, string] {
  return [`${scope}:`, `${scope};`];
}

class CacheWriter {
  private readonly db: DatabaseSync;
  private readonly maxBytes: number;
  private readonly s: Record<'remove' | 'insert' | 'oldest' | 'trim' | 'expired' | 'purgeAll' | 'purgeScope' | 'totals', StatementSync>;

  constructor(config: WorkerConfig) {
    const path = prepareFiles(config.dataDir, CACHE_DB_FILE);
    this.maxBytes = config.maxBytes;
    this.db = new DatabaseSync(path, { timeout: config.busyTimeoutMs });
    try {
      // auto_vacuum takes effect only on a file without tables, so before migrate creates one.
      this.db.exec('PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
      migrate(this.db);
    } catch (err) {
      this.db.close();
      throw err;
    }
    this.s = {
      remove: this.db.prepare('DELETE FROM entries WHERE key = ?'),
      insert: this.db.prepare('INSERT INTO entries (key, stored_at, expires_at, tokens_saved, size, body) VALUES (?, ?, ?, ?, ?, ?)'),
      oldest: this.db.prepare('SELECT id, size FROM entries ORDER BY id LIMIT ?'),
      trim: this.db.prepare('DELETE FROM entries WHERE id <= ?'),
      expired: this.db.prepare('DELETE FROM entries WHERE id IN (SELECT id FROM entries WHERE expires_at <= ? LIMIT ?)'),
      purgeAll: this.db.prepare('DELETE FROM entries'),
      purgeScope: this.db.prepare('DELETE FROM entries WHERE key >= ? AND key < ?'),
      totals: this.db.prepare('SELECT entries, bytes FROM totals WHERE id = 1'),
    };
  }

  private transaction<T>(work: () => T): T {
    return immediateTransaction(this.db, work);
  }

  set(key: string, entry: CacheEntry): void {
    const size = entrySize(key, entry.body);
    this.transaction(() => {
      this.s.remove.run(key);
      if (size <= this.maxBytes) this.s.insert.run(key, entry.storedAt, entry.expiresAt, entry.tokensSaved, size, entry.body);
    });
    if (this.stats().bytes > this.maxBytes) this.trim();
  }

  /** Deletes the oldest entries until the total is under TRIM_TO of the budget. */
  private trim(): number {
    const target = this.maxBytes * TRIM_TO;
    let trimmed = 0;
    for (let bytes = this.stats().bytes; bytes > target; ) {
      const rows = this.s.oldest.all(DELETE_BATCH) as Array<{ id: number; size: number }>;
      if (rows.length === 0) break;
      let lastId = 0;
      for (const row of rows) {
        lastId = row.id;
        bytes -= row.size;
        if (bytes <= target) break;
      }
      trimmed += Number(this.s.trim.run(lastId).changes);
    }
    return trimmed;
  }

  sweep(now: number): SweepResult {
    let expired = 0;
    for (;;) {
      const deleted = Number(this.s.expired.run(now, DELETE_BATCH).changes);
      expired += deleted;
      if (deleted < DELETE_BATCH) break;
    }
    const trimmed = this.stats().bytes > this.maxBytes ? this.trim() : 0;
    if (expired + trimmed > 0) this.db.exec('PRAGMA incremental_vacuum');
    return { expired, trimmed };
  }

  purge(scope: string | undefined): number {
    const { changes } = scope === undefined ? this.s.purgeAll.run() : this.s.purgeScope.run(...scopeRange(scope));
    this.db.exec('PRAGMA incremental_vacuum');
    return Number(changes);
  }

  stats(): CacheStats {
    return this.s.totals.get() as unknown as CacheStats;
  }

  close(): void {
    this.db.close();
  }
}

/** The worker thread's body: opens the writer, then answers requests in order. */
function serveWorker(config: WorkerConfig): void {
  const port = parentPort!;
  let writer: CacheWriter;
  try {
    writer = new CacheWriter(config);
  } catch (err) {
    port.postMessage({ ready: false, error: serializeError(err) } satisfies Startup);
    port.close();
    return;
  }
  port.postMessage({ ready: true } satisfies Startup);
  port.on('message', ({ id, op, args }: Request) => {
    try {
      let value: unknown;
      if (op === 'set') writer.set(args[0] as string, args[1] as CacheEntry);
      else if (op === 'purge') value = writer.purge(args[0] as string | undefined);
      else if (op === 'stats') value = writer.stats();
      else if (op === 'sweep') value = writer.sweep(args[0] as number);
      else writer.close();
      port.postMessage({ id, ok: true, value } satisfies Response);
    } catch (err) {
      port.postMessage({ id, ok: false, error: serializeError(err) } satisfies Response);
    }
    if (op === 'close') port.close();
  });
}

if (!isMainThread && (workerData as Partial<WorkerConfig> | null)?.role === WORKER_ROLE) serveWorker(workerData as WorkerConfig);

// ---------------------------------------------------------------------------------------------
// The request thread's side.

/** The writing thread and its unanswered calls; an idle one does not keep the process alive. */
class WriterThread {
  private readonly worker: Worker;
  private readonly pending: PendingCalls;
  failure: Error | undefined;
  readonly ready: Promise<void>;
  readonly exited: Promise<void>;

  constructor(config: WorkerConfig) {
    this.worker = new Worker(new URL(import.meta.url), { workerData: config, execArgv: [] });
    this.pending = new PendingCalls(this.worker);
    this.ready = new Promise((resolve, reject) => {
      this.worker.once('message', (startup: Startup) => {
        if (startup.ready) {
          this.worker.on('message', (response: Response) => this.pending.settle(response));
          this.worker.unref();
          resolve();
        } else {
          this.failure = deserializeError(startup.error);
          reject(new Error(`cannot open the SQLite cache in ${config.dataDir}: ${startup.error.message}`));
        }
      });
      this.worker.on('error', (err) => {
        this.failure ??= new Error(`the SQLite cache's worker thread failed: ${err.message}`);
        reject(this.failure);
      });
    });
    this.ready.catch(() => undefined);
    this.exited = new Promise((resolve) => {
      this.worker.once('exit', (code) => {
        this.failure ??= new Error(`the SQLite cache's worker thread exited (exit code ${code})`);
        this.pending.rejectAll(this.failure);
        resolve();
      });
    });
  }

  call(op: Op, args: unknown[]): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    return this.pending.send((id) => ({ id, op, args }) satisfies Request);
  }

  /** Lets the calls already sent finish, then ends the thread; held (ref) until it has. */
  async close(): Promise<void> {
    this.pending.hold();
    if (!this.failure) await this.call('close', []).catch(() => undefined);
    else await this.worker.terminate();
    await this.exited;
  }
}

interface EntryRow {
  stored_at: number;
  expires_at: number;
  tokens_saved: number;
  body: string;
}

export class SqliteCacheTier implements CacheTier {
  readonly name = 'sqlite';
  readonly path: string;
  private readonly reader: DatabaseSync;
  private readonly select: StatementSync;
  private readonly config: WorkerConfig;
  /** The writing thread; one that died is replaced at the next call. (Mutable state in one object.) */
  private readonly state: { writer: WriterThread };
  private readonly logger: Logger | undefined;
  private readonly warn = throttled(5000);
  private readonly timer: NodeJS.Timeout | undefined;
  private closed: Promise<void> | undefined;

  private constructor(config: WorkerConfig, writer: WriterThread, options: SqliteCacheOptions) {
    this.path = join(config.dataDir, CACHE_DB_FILE);
    this.config = config;
    this.state = { writer };
    this.logger = options.logger;
    this.reader = new DatabaseSync(this.path, { timeout: 0 });
    this.reader.exec('PRAGMA query_only = ON');
    this.select = this.reader.prepare('SELECT stored_at, expires_at, tokens_saved, body FROM entries WHERE key = ?');
    const every = options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS;
    if (every > 0) {
      this.timer = setInterval(() => {
        this.sweep(Date.now()).catch((err: unknown) => this.logFailure('sweep', err));
      }, every);
      this.timer.unref();
    }
  }

  /**
   * Opens (creating if need be) `cache.db` in `dataDir` once the writer has created or migrated
   * it; rejects, naming the directory, when it cannot.
   */
  static async open(dataDir: string, options: SqliteCacheOptions = {}): Promise<SqliteCacheTier> {
    const config: WorkerConfig = {
      role: WORKER_ROLE,
      dataDir,
      maxBytes: options.maxBytes ?? DEFAULT_SQLITE_CACHE_MAX_BYTES,
      busyTimeoutMs: options.busyTimeoutMs ?? 5000,
    };
    const writer = new WriterThread(config);
    try {
      await writer.ready;
      return new SqliteCacheTier(config, writer, options);
    } catch (err) {
      await writer.close();
      throw err;
    }
  }

  private logFailure(what: string, err: unknown): void {
    this.warn((suppressed) => this.logger?.warn({ err: { message: (err as Error).message }, suppressed }, `SQLite cache: ${what} failed`));
  }

  /** The entry if present and not expired at `now`; synchronous (see the header). A failed read is a miss. */
  read(key: string, now: number): CacheEntry | undefined {
    if (this.closed) return undefined;
    let row: EntryRow | undefined;
    try {
      row = this.select.get(key) as EntryRow | undefined;
    } catch (err) {
      this.logFailure('a read', err);
      return undefined;
    }
    if (row === undefined || now >= row.expires_at) return undefined;
    return { body: row.body, storedAt: row.stored_at, expiresAt: row.expires_at, tokensSaved: row.tokens_saved };
  }

  get(key: string, now: number): Promise<CacheEntry | undefined> {
    return Promise.resolve(this.read(key, now));
  }

  private call(op: Exclude<Op, 'close'>, args: unknown[]): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error('the SQLite cache is closed'));
    if (this.state.writer.failure) this.state.writer = new WriterThread(this.config);
    return this.state.writer.call(op, args);
  }

  /** Resolves once the entry is written (and readable); rejects with the write's error. */
  async set(key: string, entry: CacheEntry): Promise<void> {
    await this.call('set', [key, entry]);
  }

  async purge(scope?: string): Promise<number> {
    return (await this.call('purge', [scope])) as number;
  }

  /** Exact (kept by triggers, one row read on the writer's thread). Expired rows not yet swept count. */
  async stats(): Promise<CacheStats> {
    return (await this.call('stats', [])) as CacheStats;
  }

  /** Deletes the entries expired at `now`, then trims to the budget if need be. */
  async sweep(now: number): Promise<SweepResult> {
    return (await this.call('sweep', [now])) as SweepResult;
  }

  /** Idempotent: lets the writes already made finish, then closes both connections. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      if (this.timer) clearInterval(this.timer);
      this.reader.close();
      await this.state.writer.close();
    })();
    return this.closed;
  }
}
