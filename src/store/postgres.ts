/**
 * The scale-out store: keys, usage and settings in PostgreSQL (DATABASE_URL), shared by every
 * gateway instance. Same contract as the embedded SQLite store (types.ts; test/store.test.ts runs
 * one suite over both); the schema and its migrations are in postgres-schema.ts, the usage SQL in
 * postgres-usage.ts.
 *
 * Connections: one pg.Pool (10 connections by default, application_name 'claudcode', a
 * statement timeout, and a client-side timeout a little beyond it so that a connection silently
 * lost mid-query fails the query instead of hanging it). The pool reconnects by itself: while
 * PostgreSQL is down every call rejects promptly (connection refused, or the connect timeout),
 * and the first call after it is back succeeds. An idle connection that dies is logged and
 * replaced, never an unhandled error.
 *
 * Start: `open` retries an unreachable server with backoff for a bounded time (30 s by default),
 * logging each try, then throws naming host:port/database and the cause. Authentication and
 * other refusals are not retried. Nothing logged or thrown carries the URL's credentials.
 *
 * Usage writes: `insertUsage` is one statement per batch and safe to retry whatever happened to
 * the previous attempt (postgres-usage.ts); the UsageRecorder retries a failed batch and bounds
 * its queue while the database is away.
 *
 * Every key change bumps `keys_generation` in the same statement, so a reader that sees the new
 * generation also sees the change.
 */
import pg from 'pg';
import { StoreUnavailableError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { migrate } from './postgres-schema.ts';
import { budgetBucketsSql, insertUsageSql, usageReportSql, usageSeriesSql, type Sql } from './postgres-usage.ts';
import { KEY_COLUMNS, keyValues, PATCH_COLUMNS, patchedFields, patchValue, rowToKey, seriesRow, type KeyRow as SqlKeyRow } from './sql-common.ts';
import type { BudgetBucket, KeyPatch, KeyRecord, Store, UsageQuery, UsageRecord, UsageRow, UsageSeriesQuery, UsageSeriesRow } from './types.ts';

export interface PostgresOptions {
  logger: Logger;
  /**
   * The most usage records held while PostgreSQL is unreachable. Accepted from the factory
   * (config.scaleOut.maxQueuedUsageRecords); the UsageRecorder, which holds the queue, applies it.
   */
  maxQueuedUsage?: number;
  /** How long `open` keeps retrying an unreachable server (default 30 s). */
  connectRetryMs?: number;
  /** Server-side statement timeout (default 30 s). */
  statementTimeoutMs?: number;
  /** Pool size (default 10). */
  maxConnections?: number;
  /** How long one connection attempt may take (default 5 s). */
  connectTimeoutMs?: number;
}

const DEFAULT_CONNECT_RETRY_MS = 30_000;
const DEFAULT_STATEMENT_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_CONNECTIONS = 10;
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const FIRST_RETRY_DELAY_MS = 250;
const MAX_RETRY_DELAY_MS = 5_000;

/** Where a DATABASE_URL points, for messages; `password` only to scrub it from them. */
interface Target {
  host: string;
  port: number;
  database: string;
  password: string;
}

function parseTarget(url: string): Target {
  // WHATWG URL parsing suits postgres:// and postgresql:// URLs (pg parses them the same way);
  // libpq's key=value strings are not URLs and pg does not take them either.
  try {
    const u = new URL(url);
    const param = (name: string) => u.searchParams.get(name) ?? '';
    const user = decodeURIComponent(u.username);
    return {
      host: decodeURIComponent(u.hostname) || param('host') || 'localhost',
      port: Number(u.port || param('port') || 5432),
      database: decodeURIComponent(u.pathname.slice(1)) || param('dbname') || user || 'postgres',
      password: decodeURIComponent(u.password),
    };
  } catch {
    return { host: 'an unparsable DATABASE_URL', port: 0, database: '?', password: '' };
  }
}

/** "host:port/database" of a DATABASE_URL, without credentials: for logs and messages. */
export function describeDatabaseUrl(url: string): string {
  const { host, port, database } = parseTarget(url);
  return `${host}:${port}/${database}`;
}

/**
 * Errors that mean "the server is not there (yet)" rather than "the server said no": socket
 * errors, pg's own connection timeouts and drops, and SQLSTATE classes 08 (connection), 57P
 * (shutdown, starting up) and 53300 (too many connections). Exported for callers that decide
 * whether to retry.
 */
export function isConnectionError(err: unknown): boolean {
  const { code, message } = (err ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string') {
    if (/^E[A-Z_]+$/.test(code)) return true; // ECONNREFUSED, ECONNRESET, ETIMEDOUT, ENOTFOUND, EAI_AGAIN, ...
    if (code.startsWith('08') || code.startsWith('57P') || code === '53300') return true;
  }
  return typeof message === 'string' &&
    /Connection terminated|timeout exceeded when trying to connect|Query read timeout|connection error|not queryable/i.test(message);
}

/** A keys row as pg returns it: models as TEXT[], disabled as boolean (sql-common.ts). */
type KeyRow = SqlKeyRow<string[], boolean>;

function keyFromRow(row: KeyRow): KeyRecord {
  return rowToKey(row, row.models, row.disabled);
}

const BUMP_GENERATION = 'UPDATE keys_generation SET generation = generation + 1';

/**
 * BIGINT (int8) and NUMERIC (what SUM over BIGINT gives) arrive as strings by default; every
 * such value here (ms timestamps, token counts and their sums) is a number well inside 2^53.
 */
const TYPES: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === pg.types.builtins.INT8 || oid === pg.types.builtins.NUMERIC
      ? Number
      : pg.types.getTypeParser(oid, format as 'text')) as pg.CustomTypesConfig['getTypeParser'],
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class PostgresStore implements Store {
  readonly description: string;
  private readonly pool: pg.Pool;
  private readonly target: Target;
  private readonly logger: Logger;
  private readonly options: PostgresOptions;
  /** Client-side bound on one query: the statement timeout plus a margin for the network. */
  private readonly queryTimeoutMs: number;
  private closed: Promise<void> | undefined;

  private constructor(url: string, options: PostgresOptions) {
    this.target = parseTarget(url);
    this.description = `PostgreSQL ${describeDatabaseUrl(url)}`;
    this.logger = options.logger;
    this.options = options;
    const statementTimeoutMs = options.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS;
    this.queryTimeoutMs = statementTimeoutMs + 5_000;
    this.pool = new pg.Pool({
      connectionString: url,
      application_name: 'claudcode',
      max: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      connectionTimeoutMillis: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      idleTimeoutMillis: 30_000,
      statement_timeout: statementTimeoutMs,
      idle_in_transaction_session_timeout: 60_000,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      // An idle pool does not keep the process alive (the CLI exits when done).
      allowExitOnIdle: true,
      types: TYPES,
    });
    // A pooled connection that dies while idle (server restart, pg_terminate_backend, network)
    // is dropped by the pool; without a listener the error would crash the process.
    this.pool.on('error', (err) => {
      this.logger.warn({ store: this.description, err: this.scrub(err.message) }, 'PostgreSQL connection lost; the pool reconnects on next use');
    });
  }

  /**
   * Connects (retrying an unreachable server for up to `connectRetryMs`), brings the schema up
   * to date under the migration lock, and returns the store; rejects with a message naming the
   * server and the cause, never the credentials.
   */
  static async open(url: string, options: PostgresOptions): Promise<PostgresStore> {
    const store = new PostgresStore(url, options);
    try {
      await store.start();
    } catch (err) {
      await store.close();
      throw err;
    }
    return store;
  }

  private async start(): Promise<void> {
    const retryMs = this.options.connectRetryMs ?? DEFAULT_CONNECT_RETRY_MS;
    const began = Date.now();
    let delay = FIRST_RETRY_DELAY_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        const applied = await this.connectAndMigrate();
        this.logger.info({ store: this.description, migrationsApplied: applied }, 'PostgreSQL store ready');
        return;
      } catch (err) {
        const cause = this.scrub(err instanceof Error ? err.message : String(err));
        if (!isConnectionError(err)) {
          throw new Error(`${this.description}: ${cause}`, { cause: err });
        }
        const left = began + retryMs - Date.now();
        if (left <= 0) {
          const seconds = ((Date.now() - began) / 1000).toFixed(1);
          throw new Error(
            `${this.description} is not reachable (gave up after ${attempt} attempts in ${seconds} s): ${cause}`,
            { cause: err },
          );
        }
        const wait = Math.min(delay, left);
        this.logger.warn(
          { store: this.description, attempt, retryInMs: wait, err: cause },
          `${this.description} is not reachable (${cause}); retrying in ${wait} ms`,
        );
        await sleep(wait);
        delay = Math.min(delay * 2, MAX_RETRY_DELAY_MS);
      }
    }
  }

  /** One attempt at start: a connection, and the migrations on it. Returns the versions applied. */
  private async connectAndMigrate(): Promise<number[]> {
    const client = await this.pool.connect();
    try {
      const applied = await migrate(client);
      client.release();
      return applied;
    } catch (err) {
      client.release(err as Error); // discarded, not reused: it may be broken
      throw err;
    }
  }

  /** The URL's password out of a message, should a driver or resolver ever echo it. */
  private scrub(message: string): string {
    const { password } = this.target;
    if (!password) return message;
    return message.replaceAll(password, '***').replaceAll(encodeURIComponent(password), '***');
  }

  private async query<R extends pg.QueryResultRow>(sql: string | Sql, values?: unknown[]): Promise<R[]> {
    if (this.closed) throw new Error('the PostgreSQL store is closed');
    const { text, values: params } = typeof sql === 'string' ? { text: sql, values: values ?? [] } : sql;
    // pg reads query_timeout per query (its types omit it); migrations, on their own connection, have none.
    const config: pg.QueryConfig & { query_timeout: number } = { text, values: params, query_timeout: this.queryTimeoutMs };
    try {
      return (await this.pool.query<R>(config)).rows;
    } catch (err) {
      // Unreachable is not a gateway fault: a 503 the client may retry (the cause stays in `cause`).
      if (isConnectionError(err)) throw Object.assign(new StoreUnavailableError(), { cause: err });
      throw err;
    }
  }

  async createKey(key: KeyRecord): Promise<void> {
    await this.query(
      `WITH created AS (
         INSERT INTO keys (${KEY_COLUMNS.join(', ')})
         VALUES (${KEY_COLUMNS.map((_, i) => `$${i + 1}`).join(', ')}) RETURNING id
       )
       ${BUMP_GENERATION} WHERE EXISTS (SELECT 1 FROM created)`,
      keyValues(key, key.models, key.disabled),
    );
  }

  async getKey(id: string): Promise<KeyRecord | null> {
    const rows = await this.query<KeyRow>('SELECT * FROM keys WHERE id = $1', [id]);
    return rows[0] ? keyFromRow(rows[0]) : null;
  }

  async listKeys(): Promise<KeyRecord[]> {
    return (await this.query<KeyRow>('SELECT * FROM keys ORDER BY created_at, id COLLATE "C"')).map(keyFromRow);
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord | null> {
    const values: unknown[] = [];
    const assignments: string[] = [];
    for (const field of patchedFields(patch)) {
      assignments.push(`${PATCH_COLUMNS[field]} = $${values.push(patchValue(field, patch[field]))}`);
    }
    assignments.push(`updated_at = $${values.push(Date.now())}`);
    const rows = await this.query<KeyRow>(
      `WITH updated AS (UPDATE keys SET ${assignments.join(', ')} WHERE id = $${values.push(id)} RETURNING *),
            bumped AS (${BUMP_GENERATION} WHERE EXISTS (SELECT 1 FROM updated))
       SELECT * FROM updated`,
      values,
    );
    return rows[0] ? keyFromRow(rows[0]) : null;
  }

  async deleteKey(id: string): Promise<boolean> {
    const rows = await this.query<{ deleted: number }>(
      `WITH deleted AS (DELETE FROM keys WHERE id = $1 RETURNING id),
            bumped AS (${BUMP_GENERATION} WHERE EXISTS (SELECT 1 FROM deleted))
       SELECT count(*)::int AS deleted FROM deleted`,
      [id],
    );
    return rows[0]!.deleted > 0;
  }

  async keysGeneration(): Promise<number> {
    const rows = await this.query<{ generation: number }>('SELECT generation FROM keys_generation');
    return rows[0]!.generation;
  }

  /**
   * Writes the batch and its rollups in one statement. Rejects while PostgreSQL is unreachable;
   * retrying the same records later (alone or with newer ones) adds each record exactly once.
   */
  async insertUsage(records: UsageRecord[]): Promise<void> {
    if (records.length === 0) return;
    await this.query(insertUsageSql(records));
  }

  async budgetBuckets(sinceMs: number, options: { keyId?: string; untilMs?: number } = {}): Promise<BudgetBucket[]> {
    return this.query<BudgetBucket>(budgetBucketsSql(sinceMs, options));
  }

  async usageReport(query: UsageQuery): Promise<UsageRow[]> {
    const sql = usageReportSql(query);
    return sql ? this.query<UsageRow>(sql) : [];
  }

  async usageSeries(query: UsageSeriesQuery): Promise<UsageSeriesRow[]> {
    const sql = usageSeriesSql(query);
    return sql ? (await this.query(sql)).map((row) => seriesRow(row, query.bucket)) : [];
  }

  async getMeta(name: string): Promise<string | null> {
    const rows = await this.query<{ value: string }>('SELECT value FROM meta WHERE name = $1', [name]);
    return rows[0]?.value ?? null;
  }

  async setMeta(name: string, value: string): Promise<void> {
    await this.query('INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value', [name, value]);
  }

  async setMetaIfAbsent(name: string, value: string): Promise<string> {
    const inserted = await this.query<{ value: string }>(
      'INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING value',
      [name, value],
    );
    if (inserted[0]) return inserted[0].value;
    // Another writer's value: read in a statement of its own, whose snapshot sees that commit.
    const current = await this.getMeta(name);
    if (current === null) throw new Error(`meta ${name} was deleted while being set`);
    return current;
  }

  async ping(): Promise<void> {
    await this.query('SELECT 1');
  }

  /** Idempotent: waits for queries in flight, then ends every connection; later calls reject. */
  close(): Promise<void> {
    this.closed ??= this.pool.end();
    return this.closed;
  }
}
