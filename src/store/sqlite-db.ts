/**
 * The store's SQLite work, synchronous: one node:sqlite connection and every Store method as a
 * plain function call. It runs only inside the store's worker thread (sqlite-worker.ts), so that
 * a long report or a write waiting on another process's lock (busy_timeout) blocks that thread,
 * never the gateway's request thread; sqlite.ts is the async face the gateway holds.
 *
 * Reports and the dashboard's series read the daily and hourly rollups (schema.ts: per key, and
 * over all keys) for the whole days and hours of a range and raw usage rows only in the partial
 * hours at its edges, so that they cost about the same on a million rows as on a thousand and
 * give exactly what one aggregate over the raw rows would. Each insert adds its batch to the four
 * rollups in its own transaction. That split, the sums, the rollup upserts and the keys row
 * mapping are shared with the PostgreSQL store (sql-common.ts); what is SQLite's own
 * (placeholders, integer division, types, the batch's temporary table) is here.
 */
import { chmodSync, closeSync, constants, mkdirSync, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import { migrate } from './schema.ts';
import {
  ALL_ROLLUPS, BATCH_HOURS_COLUMNS, batchHoursSql, groupValues, KEY_COLUMNS, keyValues, PATCH_COLUMNS, patchedFields, patchValue, reportSelects,
  REPORT_SUMS, rollUpSql, rowToKey, SERIES_SUMS, seriesRow, seriesSelects,
  type KeyRow as SqlKeyRow,
} from './sql-common.ts';
import type {
  BudgetBucket, KeyPatch, KeyRecord, ReportGrouping, Store, UsageQuery, UsageRecord, UsageRow, UsageSeriesQuery, UsageSeriesRow,
} from './types.ts';

export const DB_FILE = 'claudcode.db';
export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

export interface SqliteOptions {
  /** How long a statement waits for another connection's lock before SQLITE_BUSY (default 5 s). */
  busyTimeoutMs?: number;
}

/** The Store methods that run on the database (close is the worker's own business). */
export type StoreMethod = Exclude<keyof Store, 'close' | 'description'>;

/** The Store interface with its promises taken off: what the worker thread calls. */
export type SyncStore = { [M in StoreMethod]: (...args: Parameters<Store[M]>) => Awaited<ReturnType<Store[M]>> };

/** A keys row as node:sqlite returns it: models as JSON text, disabled as 0 or 1. */
type KeyRow = SqlKeyRow<string, number>;

function keyFromRow(row: KeyRow): KeyRecord {
  return rowToKey(row, row.models === null ? null : (JSON.parse(row.models) as string[]), row.disabled === 1);
}

function toColumnValue<F extends keyof KeyPatch>(field: F, value: KeyPatch[F]): SQLInputValue {
  if (field === 'models') return value === null ? null : JSON.stringify(value);
  if (field === 'disabled') return value ? 1 : 0;
  return patchValue(field, value) as SQLInputValue;
}

/**
 * The data directory (0700 when created here) and the database file, 0600. SQLite creates the
 * -wal and -shm files with the database file's mode, so creating the file first with 0600 covers
 * all three; an existing file (and its -wal/-shm) of ours is narrowed to 0600. A file owned by
 * another user, which we may not chmod, keeps the mode its owner gave it.
 */
export function prepareFiles(dataDir: string, file: string = DB_FILE): string {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, file);
  closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600));
  for (const file of [path, `${path}-wal`, `${path}-shm`]) {
    try {
      if ((statSync(file).mode & 0o777) !== 0o600) chmodSync(file, 0o600);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'EPERM') throw err;
    }
  }
  return path;
}

/**
 * Runs one step of opening the file, again after a short pause while another connection opening
 * the same fresh file holds it: switching to WAL (and WAL recovery) can answer SQLITE_BUSY
 * without waiting through the busy timeout. This runs on the store's worker thread, where a
 * blocking pause holds up nothing else.
 */
function openingStep(step: () => void): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let attempt = 1; ; attempt++) {
    try {
      step();
      return;
    } catch (err) {
      const code = ((err as { errcode?: number }).errcode ?? 0) & 0xff; // the primary code of an extended one
      if ((code !== 5 && code !== 6) || attempt >= 50) throw err; // SQLITE_BUSY, SQLITE_LOCKED
      Atomics.wait(pause, 0, 0, 20 + Math.floor(Math.random() * 30));
    }
  }
}

/** Runs `work` in a write transaction taken at once (BEGIN IMMEDIATE), rolled back if it throws. */
export function immediateTransaction<T>(db: DatabaseSync, work: () => T): T {
  db.exec('BEGIN IMMEDIATE');
  try {
    const result = work();
    db.exec('COMMIT');
    return result;
  } catch (err) {
    if (db.isTransaction) db.exec('ROLLBACK');
    throw err;
  }
}

/** floor(column / divisor) in SQLite, whose integer division truncates towards zero. */
function floorDiv(column: string, divisor: number): string {
  return `(${column} / ${divisor} - (${column} % ${divisor} < 0))`;
}

/** Each report part yields a grouping value `g` (sql-common.ts); the outer query labels it. */
const GROUP_VALUE = groupValues(floorDiv);
const GROUP_LABEL: Record<ReportGrouping, string> = {
  model: 'g',
  key: 'g',
  day: "strftime('%Y-%m-%d', g * 86400, 'unixepoch')",
  hour: "strftime('%Y-%m-%dT%H:00Z', g * 3600, 'unixepoch')",
  upstream: 'g',
};

/**
 * The batch just inserted (usage ids first..last: the write lock is held, so they are all ours),
 * aggregated per hour, key, model and upstream into a temporary table of the connection
 * (sql-common.ts batchHoursSql), from which every rollup is then upserted; emptied after, all in
 * the insert's transaction. Aggregating the stored rows with the same sums a raw report uses
 * keeps the rollups exact by construction.
 */
const BATCH_TABLE = 'temp.usage_batch_hours';

export class SqliteDatabase implements SyncStore {
  readonly path: string;
  private readonly db: DatabaseSync;
  /** Statements built from a query's shape (report parts, optional filters), by SQL text. */
  private readonly prepared = new Map<string, StatementSync>();
  private readonly statements: {
    insertKey: StatementSync;
    getKey: StatementSync;
    listKeys: StatementSync;
    deleteKey: StatementSync;
    bumpGeneration: StatementSync;
    generation: StatementSync;
    insertUsage: StatementSync;
    batchHours: StatementSync;
    rollUps: StatementSync[];
    clearBatch: StatementSync;
    getMeta: StatementSync;
    setMeta: StatementSync;
  };

  constructor(dataDir: string, options: SqliteOptions = {}) {
    this.path = prepareFiles(dataDir);
    // The busy timeout is set at open, before anything below that may need a lock.
    this.db = new DatabaseSync(this.path, { timeout: options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS });
    try {
      openingStep(() => this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;'));
      openingStep(() => migrate(this.db));
      this.db.exec(`CREATE TEMP TABLE IF NOT EXISTS ${BATCH_TABLE.slice('temp.'.length)} (${BATCH_HOURS_COLUMNS.join(', ')})`);
    } catch (err) {
      this.db.close();
      throw err;
    }
    this.statements = {
      insertKey: this.db.prepare(
        `INSERT INTO keys (${KEY_COLUMNS.join(', ')}) VALUES (${KEY_COLUMNS.map(() => '?').join(', ')})`,
      ),
      getKey: this.db.prepare('SELECT * FROM keys WHERE id = ?'),
      listKeys: this.db.prepare('SELECT * FROM keys ORDER BY created_at, id'),
      deleteKey: this.db.prepare('DELETE FROM keys WHERE id = ?'),
      bumpGeneration: this.db.prepare(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'keys_generation'",
      ),
      generation: this.db.prepare("SELECT value FROM meta WHERE name = 'keys_generation'"),
      insertUsage: this.db.prepare(
        `INSERT INTO usage (ts, key_id, request_id, endpoint, model, status, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms, cached, streamed, outcome, requests, saved_tokens, upstream)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      batchHours: this.db.prepare(`INSERT INTO ${BATCH_TABLE} (${BATCH_HOURS_COLUMNS.join(', ')}) ${batchHoursSql(floorDiv, 'usage WHERE id BETWEEN ? AND ?')}`),
      rollUps: ALL_ROLLUPS.map((r) => this.db.prepare(rollUpSql(r, floorDiv, BATCH_TABLE))),
      clearBatch: this.db.prepare(`DELETE FROM ${BATCH_TABLE}`),
      getMeta: this.db.prepare('SELECT value FROM meta WHERE name = ?'),
      setMeta: this.db.prepare(
        'INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value',
      ),
    };
  }

  private statement(sql: string): StatementSync {
    let statement = this.prepared.get(sql);
    if (!statement) this.prepared.set(sql, (statement = this.db.prepare(sql)));
    return statement;
  }

  private transaction<T>(work: () => T): T {
    return immediateTransaction(this.db, work);
  }

  createKey(key: KeyRecord): void {
    this.transaction(() => {
      this.statements.insertKey.run(...keyValues(key, key.models === null ? null : JSON.stringify(key.models), key.disabled ? 1 : 0));
      this.statements.bumpGeneration.run();
    });
  }

  getKey(id: string): KeyRecord | null {
    const row = this.statements.getKey.get(id) as KeyRow | undefined;
    return row ? keyFromRow(row) : null;
  }

  listKeys(): KeyRecord[] {
    return (this.statements.listKeys.all() as unknown as KeyRow[]).map(keyFromRow);
  }

  updateKey(id: string, patch: KeyPatch): KeyRecord | null {
    const fields = patchedFields(patch);
    return this.transaction(() => {
      const assignments = fields.map((f) => `${PATCH_COLUMNS[f]} = ?`);
      const values = fields.map((f) => toColumnValue(f, patch[f]));
      const result = this.statement(`UPDATE keys SET ${[...assignments, 'updated_at = ?'].join(', ')} WHERE id = ?`)
        .run(...values, Date.now(), id);
      if (result.changes === 0) return null;
      this.statements.bumpGeneration.run();
      return keyFromRow(this.statements.getKey.get(id) as unknown as KeyRow);
    });
  }

  deleteKey(id: string): boolean {
    return this.transaction(() => {
      const deleted = this.statements.deleteKey.run(id).changes > 0;
      if (deleted) this.statements.bumpGeneration.run();
      return deleted;
    });
  }

  keysGeneration(): number {
    const row = this.statements.generation.get() as { value: string };
    return Number(row.value);
  }

  insertUsage(records: UsageRecord[]): void {
    if (records.length === 0) return;
    this.transaction(() => {
      let first: number | bigint | undefined;
      let last: number | bigint = 0;
      for (const r of records) {
        last = this.statements.insertUsage.run(
          r.ts, r.keyId, r.requestId, r.endpoint, r.model, r.status, r.inputTokens, r.outputTokens,
          r.cacheCreationTokens, r.cacheReadTokens, r.billedTokens, r.latencyMs, r.cached ? 1 : 0,
          r.streamed ? 1 : 0, r.outcome, r.requests ?? 1, r.savedTokens ?? 0, r.upstream ?? '',
        ).lastInsertRowid;
        first ??= last;
      }
      this.statements.batchHours.run(first!, last);
      for (const rollUp of this.statements.rollUps) rollUp.run();
      this.statements.clearBatch.run();
    });
  }

  budgetBuckets(sinceMs: number, options: { keyId?: string; untilMs?: number } = {}): BudgetBucket[] {
    const where = ['ts >= ?', 'billed_tokens > 0'];
    const params: SQLInputValue[] = [sinceMs];
    if (options.untilMs !== undefined) {
      where.push('ts < ?');
      params.push(options.untilMs);
    }
    if (options.keyId !== undefined) {
      where.push('key_id = ?');
      params.push(options.keyId);
    }
    const sql = `SELECT key_id AS keyId, ts / 60000 AS minute, SUM(billed_tokens) AS tokens
      FROM usage WHERE ${where.join(' AND ')} GROUP BY key_id, ts / 60000`;
    return this.statement(sql).all(...params) as unknown as BudgetBucket[];
  }

  usageReport(query: UsageQuery): UsageRow[] {
    const params: SQLInputValue[] = [];
    const selects = reportSelects(query, GROUP_VALUE, (value) => (params.push(value), '?'));
    if (selects.length === 0) return []; // an empty range
    const sql = `SELECT ${GROUP_LABEL[query.by]} AS "group", model, ${REPORT_SUMS}
      FROM (${selects.join(' UNION ALL ')}) GROUP BY g, model ORDER BY 1, 2`;
    return this.statement(sql).all(...params) as unknown as UsageRow[];
  }

  usageSeries(query: UsageSeriesQuery): UsageSeriesRow[] {
    const params: SQLInputValue[] = [];
    const selects = seriesSelects(query, GROUP_VALUE, (value) => (params.push(value), '?'));
    if (selects.length === 0) return [];
    const sql = `SELECT g, model, ${SERIES_SUMS}
      FROM (${selects.join(' UNION ALL ')}) GROUP BY g, model ORDER BY 1, 2`;
    return this.statement(sql).all(...params).map((row) => seriesRow(row, query.bucket));
  }

  getMeta(name: string): string | null {
    const row = this.statements.getMeta.get(name) as { value: string } | undefined;
    return row ? row.value : null;
  }

  setMetaIfAbsent(name: string, value: string): string {
    this.statement('INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING').run(name, value);
    return this.getMeta(name)!;
  }

  ping(): void {
    this.statement('SELECT 1').get();
  }

  setMeta(name: string, value: string): void {
    this.statements.setMeta.run(name, value);
  }

  close(): void {
    if (this.db.isOpen) this.db.close();
  }
}
