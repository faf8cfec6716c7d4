/**
 * What the dashboard shows, as data: the seam between the store's reports and the dashboard's
 * pages. (Implemented in overview.ts / explorer.ts; the pages fetch these as JSON.)
 */

export type OverviewRange = 'hour' | 'day' | 'week' | 'month';

/** Why requests failed, as the overview counts them. */
export type ErrorKind = 'rate_limited' | 'client_error' | 'upstream_error' | 'gateway_error' | 'client_closed' | 'upstream_cut';

/** One point of the overview's time series. */
export interface OverviewPoint {
  /** Start of the point's period (unix ms, UTC). */
  t: number;
  requests: number;
  /** Failed requests by kind (kinds with none may be absent). */
  errors: Partial<Record<ErrorKind, number>>;
  tokens: { input: number; output: number; cache_creation: number; cache_read: number };
  /** Estimated US dollars, from the catalog's prices per model. */
  costUsd: number;
  cacheHits: number;
  /** Budget tokens the cache's hits saved. */
  savedTokens: number;
  /** Latency percentiles of the period's requests (ms), estimated from a histogram; null without requests. */
  p50Ms: number | null;
  p95Ms: number | null;
}

export interface Overview {
  range: OverviewRange;
  /** `hour` points for the last hour (5-minute points would need raw rows: hour → minute points), day; `day` for week and month. */
  bucket: 'minute' | 'hour' | 'day';
  since: number;
  until: number;
  points: OverviewPoint[];
  /** The whole range, summed (percentiles over the whole range). */
  totals: Omit<OverviewPoint, 't'> & { cacheHitRate: number };
}

export type ExplorerGrouping = 'key' | 'model' | 'upstream' | 'day' | 'hour';

export interface ExplorerQuery {
  by: ExplorerGrouping;
  sinceMs: number;
  untilMs: number;
  keyId?: string;
  model?: string;
  upstream?: string;
}

export interface ExplorerRow {
  group: string;
  /** For `key`: the key's name (the group is its id). */
  label?: string;
  requests: number;
  errors: number;
  cachedRequests: number;
  inputTokens: number;
  outputTokens: number;
  cacheCreationTokens: number;
  cacheReadTokens: number;
  billedTokens: number;
  savedTokens: number;
  costUsd: number;
  avgLatencyMs: number;
}
