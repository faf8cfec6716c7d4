/**
 * The store's SQLite work, synchronous: one node:sqlite connection and every Store method as a
 * plain function call. It runs only inside the store's worker thread (sqlite-worker.ts), so that
 * a long report or a write waiting on another process's lock (busy_timeout) blocks that thread,
 * never the gateway's request thread; sqlite.ts is the async face the gateway holds.
 *
 * Reports read the daily and hourly rollups (schema.ts) for the whole days and hours of a range
 * and raw usage rows only in the partial hours at its edges, so that they cost about the same on
 * a million rows as on a thousand and give exactly what one aggregate over the raw rows would.
 */
import { chmodSync, closeSync, constants, mkdirSync, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import { DAY_MS, HOUR_MS, migrate } from './schema.ts';
import type { BudgetBucket, KeyPatch, KeyRecord, Store, UsageGrouping, UsageQuery, UsageRecord, UsageRow } from './types.ts';

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

interface KeyRow {
  id: string;
  name: string;
  key_hash: string;
  key_preview: string;
  budget_tokens: number;
  window_seconds: number;
  rpm: number;
  concurrent: number;
  models: string | null;
  expires_at: number | null;
  disabled: number;
  created_at: number;
  updated_at: number;
}

function rowToKey(row: KeyRow): KeyRecord {
  return {
    id: row.id,
    name: row.name,
    hash: row.key_hash,
    preview: row.key_preview,
    budgetTokens: row.budget_tokens,
    windowSeconds: row.window_seconds,
    rpm: row.rpm,
    concurrent: row.concurrent,
    models: row.models === null ? null : (JSON.parse(row.models) as string[]),
    expiresAt: row.expires_at,
    disabled: row.disabled === 1,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

const PATCH_COLUMNS: Record<keyof KeyPatch, string> = {
  name: 'name',
  budgetTokens: 'budget_tokens',
  windowSeconds: 'window_seconds',
  rpm: 'rpm',
  concurrent: 'concurrent',
  models: 'models',
  expiresAt: 'expires_at',
  disabled: 'disabled',
};

function toColumnValue(field: keyof KeyPatch, value: unknown): SQLInputValue {
  if (field === 'models') return value === null ? null : JSON.stringify(value);
  if (field === 'disabled') return value ? 1 : 0;
  return value as SQLInputValue;
}

/**
 * The data directory (0700 when created here) and the database file, 0600. SQLite creates the
 * -wal and -shm files with the database file's mode, so creating the file first with 0600 covers
 * all three; an existing file (and its -wal/-shm) of ours is narrowed to 0600. A file owned by
 * another user, which we may not chmod, keeps the mode its owner gave it.
 */
function prepareFiles(dataDir: string): string {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, DB_FILE);
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
 * The rollups, coarsest first: a report reads each whole day of its range from usage_daily, each
 * whole hour of the partial days at its edges from usage_hourly, and raw usage rows only in the
 * partial hours at its very edges. Days are UTC days, whole numbers of hours, so the parts tile
 * [since, until) exactly.
 */
const ROLLUPS = [
  { table: 'usage_daily', period: 'day', periodMs: DAY_MS },
  { table: 'usage_hourly', period: 'hour', periodMs: HOUR_MS },
] as const;

interface ReportPart {
  table: 'usage' | (typeof ROLLUPS)[number]['table'];
  column: 'ts' | (typeof ROLLUPS)[number]['period'];
  /** [from, to) in the table's column's unit (ms for usage); undefined is unbounded. */
  from: number | undefined;
  to: number | undefined;
}

/** Splits [since, until) into whole periods of each rollup in turn, and raw rows for the rest. */
function reportParts(since: number | undefined, until: number | undefined, level = 0): ReportPart[] {
  const rollup = ROLLUPS[level];
  if (!rollup) {
    if (since !== undefined && until !== undefined && since >= until) return [];
    return [{ table: 'usage', column: 'ts', from: since, to: until }];
  }
  const first = since === undefined ? undefined : Math.ceil(since / rollup.periodMs);
  const end = until === undefined ? undefined : Math.floor(until / rollup.periodMs);
  if (first !== undefined && end !== undefined && first >= end) return reportParts(since, until, level + 1);
  return [
    { table: rollup.table, column: rollup.period, from: first, to: end },
    ...(first === undefined ? [] : reportParts(since, first * rollup.periodMs, level + 1)),
    ...(end === undefined ? [] : reportParts(end * rollup.periodMs, until, level + 1)),
  ];
}

/** floor(column / divisor) in SQLite, whose integer division truncates towards zero. */
function floorDiv(column: string, divisor: number): string {
  return `(${column} / ${divisor} - (${column} % ${divisor} < 0))`;
}

/**
 * Each part yields a grouping value `g` (the model, the key id, or the UTC day number) and its
 * sums; the outer query adds the parts up per (g, model) and labels g.
 */
const GROUP_VALUE: Record<ReportPart['table'], Record<UsageGrouping, string>> = {
  usage: { model: 'model', key: 'key_id', day: floorDiv('ts', DAY_MS) },
  usage_hourly: { model: 'model', key: 'key_id', day: floorDiv('hour', 24) },
  usage_daily: { model: 'model', key: 'key_id', day: 'day' },
};
const GROUP_LABEL: Record<UsageGrouping, string> = {
  model: 'g',
  key: 'g',
  day: "strftime('%Y-%m-%d', g * 86400, 'unixepoch')",
};

/** The rollups' summed columns (schema.ts), and the UsageRow field each becomes in a report. */
const SUMMED_COLUMNS = {
  requests: 'requests',
  errors: 'errors',
  cached_requests: 'cachedRequests',
  input_tokens: 'inputTokens',
  output_tokens: 'outputTokens',
  cache_creation_tokens: 'cacheCreationTokens',
  cache_read_tokens: 'cacheReadTokens',
  billed_tokens: 'billedTokens',
  latency_ms: 'totalLatencyMs',
} as const satisfies Record<string, Exclude<keyof UsageRow, 'group' | 'model'>>;
const SUMMED = Object.keys(SUMMED_COLUMNS);

/** The summed columns over raw usage rows, as the rollups hold them (errors, cache hits per request). */
const RAW_SUMS = `SUM(requests) AS requests,
  SUM(CASE WHEN status >= 400 OR outcome <> 'ok' THEN requests ELSE 0 END) AS errors,
  SUM(CASE WHEN cached THEN requests ELSE 0 END) AS cached_requests,
  SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,
  SUM(cache_creation_tokens) AS cache_creation_tokens, SUM(cache_read_tokens) AS cache_read_tokens,
  SUM(billed_tokens) AS billed_tokens, SUM(latency_ms) AS latency_ms`;
const ROLLUP_SUMS = SUMMED.map((c) => `SUM(${c}) AS ${c}`).join(', ');
const REPORT_COLUMNS = Object.entries(SUMMED_COLUMNS).map(([c, field]) => `SUM(${c}) AS ${field}`).join(', ');

/**
 * Adds the batch just inserted (usage ids first..last: the write lock is held, so they are all
 * ours) to a rollup, aggregated per (period, key, model). Aggregating the stored rows with the
 * same sums a raw report uses keeps the rollups exact by construction.
 */
function rollUpSql(table: string, period: string, periodMs: number): string {
  return `INSERT INTO ${table} (${period}, key_id, model, ${SUMMED.join(', ')})
    SELECT ${floorDiv('ts', periodMs)}, key_id, model, ${RAW_SUMS}
    FROM usage WHERE id BETWEEN ? AND ? GROUP BY 1, 2, 3
    ON CONFLICT (${period}, key_id, model) DO UPDATE SET ${SUMMED.map((c) => `${c} = ${c} + excluded.${c}`).join(', ')}`;
}

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
    rollUps: StatementSync[];
    getMeta: StatementSync;
    setMeta: StatementSync;
  };

  constructor(dataDir: string, options: SqliteOptions = {}) {
    this.path = prepareFiles(dataDir);
    // The busy timeout is set at open, before anything below that may need a lock.
    this.db = new DatabaseSync(this.path, { timeout: options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS });
    try {
      this.db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
      migrate(this.db);
    } catch (err) {
      this.db.close();
      throw err;
    }
    this.statements = {
      insertKey: this.db.prepare(
        `INSERT INTO keys (id, name, key_hash, key_preview, budget_tokens, window_seconds, rpm, concurrent, models, expires_at, disabled, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      getKey: this.db.prepare('SELECT * FROM keys WHERE id = ?'),
      listKeys: this.db.prepare('SELECT * FROM keys ORDER BY created_at, id'),
      deleteKey: this.db.prepare('DELETE FROM keys WHERE id = ?'),
      bumpGeneration: this.db.prepare(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'keys_generation'",
      ),
      generation: this.db.prepare("SELECT value FROM meta WHERE name = 'keys_generation'"),
      insertUsage: this.db.prepare(
        `INSERT INTO usage (ts, key_id, request_id, endpoint, model, status, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms, cached, streamed, outcome, requests)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      rollUps: ROLLUPS.map((r) => this.db.prepare(rollUpSql(r.table, r.period, r.periodMs))),
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
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const result = work();
      this.db.exec('COMMIT');
      return result;
    } catch (err) {
      if (this.db.isTransaction) this.db.exec('ROLLBACK');
      throw err;
    }
  }

  createKey(key: KeyRecord): void {
    this.transaction(() => {
      this.statements.insertKey.run(
        key.id, key.name, key.hash, key.preview, key.budgetTokens, key.windowSeconds, key.rpm, key.concurrent,
        key.models === null ? null : JSON.stringify(key.models), key.expiresAt, key.disabled ? 1 : 0,
        key.createdAt, key.updatedAt,
      );
      this.statements.bumpGeneration.run();
    });
  }

  getKey(id: string): KeyRecord | null {
    const row = this.statements.getKey.get(id) as KeyRow | undefined;
    return row ? rowToKey(row) : null;
  }

  listKeys(): KeyRecord[] {
    return (this.statements.listKeys.all() as unknown as KeyRow[]).map(rowToKey);
  }

  updateKey(id: string, patch: KeyPatch): KeyRecord | null {
    const fields = (Object.keys(patch) as (keyof KeyPatch)[]).filter((f) => patch[f] !== undefined);
    return this.transaction(() => {
      const assignments = fields.map((f) => `${PATCH_COLUMNS[f]} = ?`);
      const values = fields.map((f) => toColumnValue(f, patch[f]));
      const result = this.statement(`UPDATE keys SET ${[...assignments, 'updated_at = ?'].join(', ')} WHERE id = ?`)
        .run(...values, Date.now(), id);
      if (result.changes === 0) return null;
      this.statements.bumpGeneration.run();
      return rowToKey(this.statements.getKey.get(id) as unknown as KeyRow);
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
          r.streamed ? 1 : 0, r.outcome, r.requests ?? 1,
        ).lastInsertRowid;
        first ??= last;
      }
      for (const rollUp of this.statements.rollUps) rollUp.run(first!, last);
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
    const selects: string[] = [];
    const params: SQLInputValue[] = [];
    for (const part of reportParts(query.sinceMs, query.untilMs)) {
      const where: string[] = [];
      if (query.keyId !== undefined) {
        where.push('key_id = ?');
        params.push(query.keyId);
      }
      if (part.from !== undefined) {
        where.push(`${part.column} >= ?`);
        params.push(part.from);
      }
      if (part.to !== undefined) {
        where.push(`${part.column} < ?`);
        params.push(part.to);
      }
      selects.push(
        `SELECT ${GROUP_VALUE[part.table][query.by]} AS g, model, ${part.table === 'usage' ? RAW_SUMS : ROLLUP_SUMS}
         FROM ${part.table} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} GROUP BY 1, 2`,
      );
    }
    if (selects.length === 0) return []; // an empty range
    const sql = `SELECT ${GROUP_LABEL[query.by]} AS "group", model, ${REPORT_COLUMNS}
      FROM (${selects.join(' UNION ALL ')}) GROUP BY g, model ORDER BY 1, 2`;
    return this.statement(sql).all(...params) as unknown as UsageRow[];
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
