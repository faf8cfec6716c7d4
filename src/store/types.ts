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

/**
 * What a usage report can group by in the CLI and the admin API: model, key, UTC day, or the
 * upstream that served the requests.
 */
export const USAGE_GROUPINGS = ['model', 'key', 'day', 'upstream'] as const;
export type UsageGrouping = (typeof USAGE_GROUPINGS)[number];

/** What the store's usageReport groups by: those, and the UTC hour (the dashboard's explorer). */
export const REPORT_GROUPINGS = [...USAGE_GROUPINGS, 'hour'] as const;
export type ReportGrouping = (typeof REPORT_GROUPINGS)[number];

/** Narrows reports and series to one key, model and/or upstream ('' is the requests no upstream served). */
export interface UsageFilter {
  keyId?: string;
  model?: string;
  upstream?: string;
}

export interface UsageQuery extends UsageFilter {
  /** Inclusive. */
  sinceMs?: number;
  /** Exclusive. */
  untilMs?: number;
  by: ReportGrouping;
}

/**
 * One group of a usage report, split by model so callers can price it. `day` groups are UTC
 * days (YYYY-MM-DD), `hour` groups UTC hours (YYYY-MM-DDTHH:00Z); `upstream` groups are upstream
 * names, '' for requests no upstream served; rows come ordered by group, then model (bytewise).
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

/**
 * Why a failed request failed, as the dashboard counts it. A record failed when its status is
 * 400 or more or its outcome is not `ok` (what reports count as `errors`); its kind comes from
 * status and outcome, the first rule that matches:
 * - outcome `client_closed`, or status 499 → `client_closed` (the client went away);
 * - outcome `upstream_cut` → `upstream_cut` (the upstream's stream ended early);
 * - status 429 → `rate_limited` (the key's limits, or an upstream's 429 relayed);
 * - status 500 → `gateway_error` (a fault of the gateway's own);
 * - any other 5xx → `upstream_error` (502/503/504 the gateway answers for an upstream that failed
 *   or was unreachable, an upstream's 5xx or 529 relayed);
 * - any other 4xx → `client_error` (the request was refused or invalid);
 * - anything else (a failed outcome under a success status: not written today) → `gateway_error`.
 * So every failed request has exactly one kind, and a group's kinds add up to its errors. The SQL
 * form the rollups sum is ERROR_KIND_SQL (sql-common.ts), held to this one by the contract suite.
 */
export const ERROR_KINDS = ['rate_limited', 'client_error', 'upstream_error', 'gateway_error', 'client_closed', 'upstream_cut'] as const;
export type ErrorKind = (typeof ERROR_KINDS)[number];

/** The kind of a record's failure (see ERROR_KINDS), or null for a request that succeeded. */
export function errorKind(status: number, outcome: UsageOutcome): ErrorKind | null {
  if (status < 400 && outcome === 'ok') return null;
  if (outcome === 'client_closed' || status === 499) return 'client_closed';
  if (outcome === 'upstream_cut') return 'upstream_cut';
  if (status === 429) return 'rate_limited';
  if (status === 500) return 'gateway_error';
  if (status >= 500) return 'upstream_error';
  if (status >= 400) return 'client_error';
  return 'gateway_error';
}

/**
 * The latency histogram's buckets: upper bounds in ms, inclusive; one more bucket holds what is
 * above the last. Steps of at most 2.5× from cache hits (≤ 10 ms) to long streams (5 min), and
 * at most 1.75× between 2 and 30 s where most API calls end, so that a percentile interpolated
 * inside a bucket (dashboard/overview.ts) is close. A record standing for several requests
 * (`requests` > 1, its latencyMs their sum) puts all of them in the bucket of their mean.
 * The rollups hold one column per bucket (schema.ts migration 8, postgres-schema.ts migration 6):
 * changing the bounds is a new migration, never an edit here.
 */
export const LATENCY_BOUNDS_MS = [
  10, 25, 50, 100, 250, 500, 1000, 2000, 3500, 5000, 7500, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000,
] as const;

/** The histogram bucket of `requests` requests whose latencies sum to `latencyMs`: an index into LATENCY_BOUNDS_MS, or its length for above the last. */
export function latencyBucket(latencyMs: number, requests = 1): number {
  const i = LATENCY_BOUNDS_MS.findIndex((bound) => latencyMs <= bound * requests);
  return i === -1 ? LATENCY_BOUNDS_MS.length : i;
}

/** The period of a usage series' points. */
export type SeriesBucket = 'minute' | 'hour' | 'day';

export interface UsageSeriesQuery extends UsageFilter {
  /** Inclusive. */
  sinceMs: number;
  /** Exclusive. */
  untilMs: number;
  bucket: SeriesBucket;
}

/**
 * Usage of one model in one period of a series: the UsageRow sums, and what only the dashboard
 * needs, failures by kind and the latency histogram. Periods are UTC minutes, hours or days; a
 * period cut by the series' range holds only what is inside it. Rows come ordered by t, then
 * model (bytewise); periods without usage have no row.
 */
export interface UsageSeriesRow extends Omit<UsageRow, 'group'> {
  /** Start of the period (unix ms). */
  t: number;
  /** Failed requests by kind; they add up to `errors`. */
  errorKinds: Record<ErrorKind, number>;
  /** Requests per latency bucket (LATENCY_BOUNDS_MS, then the one above); they add up to `requests`. */
  latency: number[];
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
  /**
   * Usage per period and model over [sinceMs, untilMs), with failures by kind and latency
   * histograms (the dashboard's overview). Whole days and hours come from the rollups, like
   * reports; minute periods come from raw rows only, so they suit short ranges (the last hour).
   */
  usageSeries(query: UsageSeriesQuery): Promise<UsageSeriesRow[]>;
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
