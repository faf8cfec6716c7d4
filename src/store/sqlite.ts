/**
 * The embedded store: one SQLite file (node:sqlite, no native build) in the data directory.
 * WAL mode lets the CLI write keys while a gateway process reads them.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import type { BudgetBucket, KeyPatch, KeyRecord, Store, UsageQuery, UsageRecord, UsageRow } from './types.ts';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,
  key_preview TEXT NOT NULL,
  budget_tokens INTEGER NOT NULL,
  window_seconds INTEGER NOT NULL,
  rpm INTEGER NOT NULL,
  concurrent INTEGER NOT NULL,
  models TEXT,
  expires_at INTEGER,
  disabled INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
  id INTEGER PRIMARY KEY,
  ts INTEGER NOT NULL,
  key_id TEXT NOT NULL,
  request_id TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  model TEXT NOT NULL,
  status INTEGER NOT NULL,
  input_tokens INTEGER NOT NULL,
  output_tokens INTEGER NOT NULL,
  cache_creation_tokens INTEGER NOT NULL,
  cache_read_tokens INTEGER NOT NULL,
  billed_tokens INTEGER NOT NULL,
  latency_ms INTEGER NOT NULL,
  cached INTEGER NOT NULL,
  streamed INTEGER NOT NULL,
  outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key_id, ts);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('keys_generation', '0');
`;

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

const GROUP_EXPRESSIONS = {
  model: 'model',
  key: 'key_id',
  day: "strftime('%Y-%m-%d', ts / 1000, 'unixepoch')",
} as const;

export class SqliteStore implements Store {
  readonly path: string;
  private readonly db: DatabaseSync;
  private readonly statements: {
    insertKey: StatementSync;
    getKey: StatementSync;
    listKeys: StatementSync;
    deleteKey: StatementSync;
    bumpGeneration: StatementSync;
    generation: StatementSync;
    insertUsage: StatementSync;
    budgetBuckets: StatementSync;
    getMeta: StatementSync;
    setMeta: StatementSync;
  };

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true });
    this.path = join(dataDir, 'claudcode.db');
    this.db = new DatabaseSync(this.path);
    // busy_timeout first: switching to WAL needs a lock that another process may briefly hold.
    this.db.exec('PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;');
    this.db.exec(SCHEMA);
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
        `INSERT INTO usage (ts, key_id, request_id, endpoint, model, status, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, billed_tokens, latency_ms, cached, streamed, outcome)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      budgetBuckets: this.db.prepare(
        `SELECT key_id AS keyId, ts / 60000 AS minute, SUM(billed_tokens) AS tokens
         FROM usage WHERE ts >= ? AND billed_tokens > 0 GROUP BY key_id, ts / 60000`,
      ),
      getMeta: this.db.prepare('SELECT value FROM meta WHERE name = ?'),
      setMeta: this.db.prepare(
        'INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value',
      ),
    };
  }

  private transaction<T>(work: () => T): T {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const result = work();
      this.db.exec('COMMIT');
      return result;
    } catch (err) {
      this.db.exec('ROLLBACK');
      throw err;
    }
  }

  async createKey(key: KeyRecord): Promise<void> {
    this.transaction(() => {
      this.statements.insertKey.run(
        key.id, key.name, key.hash, key.preview, key.budgetTokens, key.windowSeconds, key.rpm, key.concurrent,
        key.models === null ? null : JSON.stringify(key.models), key.expiresAt, key.disabled ? 1 : 0,
        key.createdAt, key.updatedAt,
      );
      this.statements.bumpGeneration.run();
    });
  }

  async getKey(id: string): Promise<KeyRecord | null> {
    const row = this.statements.getKey.get(id) as KeyRow | undefined;
    return row ? rowToKey(row) : null;
  }

  async listKeys(): Promise<KeyRecord[]> {
    return (this.statements.listKeys.all() as unknown as KeyRow[]).map(rowToKey);
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord | null> {
    const fields = (Object.keys(patch) as (keyof KeyPatch)[]).filter((f) => patch[f] !== undefined);
    return this.transaction(() => {
      const assignments = fields.map((f) => `${PATCH_COLUMNS[f]} = ?`);
      const values = fields.map((f) => toColumnValue(f, patch[f]));
      const result = this.db
        .prepare(`UPDATE keys SET ${[...assignments, 'updated_at = ?'].join(', ')} WHERE id = ?`)
        .run(...values, Date.now(), id);
      if (result.changes === 0) return null;
      this.statements.bumpGeneration.run();
      return rowToKey(this.statements.getKey.get(id) as unknown as KeyRow);
    });
  }

  async deleteKey(id: string): Promise<boolean> {
    return this.transaction(() => {
      const deleted = this.statements.deleteKey.run(id).changes > 0;
      if (deleted) this.statements.bumpGeneration.run();
      return deleted;
    });
  }

  async keysGeneration(): Promise<number> {
    const row = this.statements.generation.get() as { value: string };
    return Number(row.value);
  }

  async insertUsage(records: UsageRecord[]): Promise<void> {
    if (records.length === 0) return;
    this.transaction(() => {
      for (const r of records) {
        this.statements.insertUsage.run(
          r.ts, r.keyId, r.requestId, r.endpoint, r.model, r.status, r.inputTokens, r.outputTokens,
          r.cacheCreationTokens, r.cacheReadTokens, r.billedTokens, r.latencyMs, r.cached ? 1 : 0,
          r.streamed ? 1 : 0, r.outcome,
        );
      }
    });
  }

  async budgetBuckets(sinceMs: number): Promise<BudgetBucket[]> {
    return this.statements.budgetBuckets.all(sinceMs) as unknown as BudgetBucket[];
  }

  async usageReport(query: UsageQuery): Promise<UsageRow[]> {
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
    const group = GROUP_EXPRESSIONS[query.by];
    const sql = `
      SELECT ${group} AS "group", model,
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
    return this.db.prepare(sql).all(...params) as unknown as UsageRow[];
  }

  async getMeta(name: string): Promise<string | null> {
    const row = this.statements.getMeta.get(name) as { value: string } | undefined;
    return row ? row.value : null;
  }

  async setMeta(name: string, value: string): Promise<void> {
    this.statements.setMeta.run(name, value);
  }

  async close(): Promise<void> {
    if (this.db.isOpen) this.db.close();
  }
}
