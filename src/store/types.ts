/**
 * The storage interface. Keys and usage live behind it; the embedded default is SQLite
 * (store/sqlite.ts, which does its I/O on a worker thread). Methods are async so that no
 * implementation blocks the request thread and a networked one (PostgreSQL) fits the same shape.
 */

export interface KeyRecord {
  id: string;
  name: string;
  /** SHA-256 of the full key, hex. The key itself is never stored. */
  hash: string;
  /** "sk-cc-...abcd": enough to recognise a key, useless to use it. */
  preview: string;
  budgetTokens: number;
  windowSeconds: number;
  rpm: number;
  concurrent: number;
  /** Public model ids this key may use; null means every model in the catalog. */
  models: string[] | null;
  /** Unix ms, or null for no expiry. */
  expiresAt: number | null;
  disabled: boolean;
  /**
   * How long the response cache keeps this key's answers, in seconds: null is the gateway's
   * default TTL, 0 turns the cache off for the key, else 1 s to 30 days (validated by KeyInput, admin.ts).
   */
  cacheTtlSeconds: number | null;
  /**
   * Whose cache entries this key shares: null scopes them to the key alone; a name
   * ([A-Za-z0-9_-]{1,64}) shares them among every key of that group.
   */
  cacheGroup: string | null;
  /**
   * The attached MCP servers (config `mcpServers`, by name) whose tools this key may use; [] (the
   * default, and what keys stored before the field read back) is none. Names are checked against
   * the config when set (KeyInput, admin.ts), not when read: a server later removed from the
   * config stays listed and is simply not there.
   */
  mcpServers: string[];
  createdAt: number;
  updatedAt: number;
}

export type KeyPatch = Partial<Pick<
  KeyRecord,
  'name' | 'budgetTokens' | 'windowSeconds' | 'rpm' | 'concurrent' | 'models' | 'expiresAt' | 'disabled' | 'cacheTtlSeconds' | 'cacheGroup' | 'mcpServers'
>>;

export type UsageOutcome = 'ok' | 'error' | 'client_closed' | 'upstream_cut' | 'rejected';

export interface UsageRecord {
  /** Unix ms when the request finished (when its tokens were spent; budgets bill by this). */
  ts: number;
  keyId: string;
  requestId: string;
  endpoint: 'messages' | 'count_tokens';
  model: string;
  status: number;
  inputTokens: number;
  outputTokens: number;
  cacheCreationTokens: number;
  cacheReadTokens: number;
  /** Tokens charged against the key's budget (weights applied). */
  billedTokens: number;
  /** Summed over the requests the record stands for (see `requests`). */
  latencyMs: number;
  cached: boolean;
  streamed: boolean;
  outcome: UsageOutcome;
  /**
   * For a request answered from the response cache (`cached: true`): the budget tokens the
   * original answer cost, which this one did not. Default 0; summed like the token counts.
   */
  savedTokens?: number;
  /**
   * How many requests this record stands for; default 1. Refusals are coalesced into one record
   * per (key, endpoint, model, status, upstream, minute) so that a client hammering a limit
   * cannot grow the store without bound; such a record's tokens and latencyMs are the sums over
   * its requests, and every report counts it as this many requests (errors, cached requests
   * likewise).
   */
  requests?: number;
  /**
   * The name of the upstream that served the request (its operator-given `name`, by default its
   * URL's host, e.g. `api.anthropic.com`). Absent or '' for a request no upstream served: a
   * refusal, a cache hit, and every record written before the field existed. Stored as ''; a
   * dimension of the rollups, so that reports can group by it (`by: 'upstream'`).
   */
  upstream?: string;
}

/** Billed tokens of one key in one minute, for rebuilding rolling budgets at start-up. */
export interface BudgetBucket {
  keyId: string;
  minute: number;
  tokens: number;
}

/** What a usage report can group by: model, key, UTC day, or the upstream that served the requests. */
export const USAGE_GROUPINGS = ['model', 'key', 'day', 'upstream'] as const;
export type UsageGrouping = (typeof USAGE_GROUPINGS)[number];

export interface UsageQuery {
  keyId?: string;
  /** Inclusive. */
  sinceMs?: number;
  /** Exclusive. */
  untilMs?: number;
  by: UsageGrouping;
}

/**
 * One group of a usage report, split by model so callers can price it. `day` groups are UTC
 * days (YYYY-MM-DD); `upstream` groups are upstream names, '' for requests no upstream served;
 * rows come ordered by group, then model (bytewise).
 */
export interface UsageRow {
  group: string;
  model: string;
  requests: number;
  errors: number;
  cachedRequests: number;
  inputTokens: number;
  outputTokens: number;
  cacheCreationTokens: number;
  cacheReadTokens: number;
  billedTokens: number;
  /** Sum of UsageRecord.savedTokens: what the group's cache hits saved. */
  savedTokens: number;
  totalLatencyMs: number;
}

/** Keys: what the admin API and the CLI change, and every instance reloads. */
export interface KeyStore {
  createKey(key: KeyRecord): Promise<void>;
  getKey(id: string): Promise<KeyRecord | null>;
  listKeys(): Promise<KeyRecord[]>;
  /** Returns the updated key, or null when there is no such key. */
  updateKey(id: string, patch: KeyPatch): Promise<KeyRecord | null>;
  deleteKey(id: string): Promise<boolean>;
  /** A number that changes whenever any key is created, changed or deleted. */
  keysGeneration(): Promise<number>;
}

/** Usage records: written in batches off the request path, read for reports and budgets. */
export interface UsageStore {
  insertUsage(records: UsageRecord[]): Promise<void>;
  /** Buckets with ts in [sinceMs, untilMs), of every key or of one. */
  budgetBuckets(sinceMs: number, options?: { keyId?: string; untilMs?: number }): Promise<BudgetBucket[]>;
  usageReport(query: UsageQuery): Promise<UsageRow[]>;
}

/** Small named settings (the admin token's hash, ...). */
export interface MetaStore {
  getMeta(name: string): Promise<string | null>;
  setMeta(name: string, value: string): Promise<void>;
  /**
   * Sets `name` only if it has no value yet and returns the value it holds afterwards, so that
   * instances starting together agree on one (the generated admin token).
   */
  setMetaIfAbsent(name: string, value: string): Promise<string>;
}

/** The durable store: SQLite (embedded) or PostgreSQL (scale-out), split by concern. */
export interface Store extends KeyStore, UsageStore, MetaStore {
  /** Where the data lives, for logs and readiness (no credentials). */
  readonly description: string;
  /** Answers when the store is reachable (readiness probes); throws otherwise. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
