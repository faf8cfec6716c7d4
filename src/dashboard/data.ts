/**
 * What the dashboard shows, as data: the seam between the store's reports and the dashboard's
 * pages. (Implemented in overview.ts / explorer.ts; the pages fetch these as JSON.)
 */
import type { GroupUsage } from '../reports.ts';
import type { ErrorKind } from '../store/types.ts';

export type OverviewRange = 'hour' | 'day' | 'week' | 'month';

/**
 * Why requests failed, as the overview counts them: derived from each record's status and
 * outcome (the mapping is documented at ERROR_KINDS in store/types.ts, where it lives because the
 * store's rollups count it). Every failed request has exactly one kind.
 */
export type { ErrorKind };

/**
 * One point of the overview's time series: one UTC minute, hour or day. Every period of the range
 * has a point (zeros where nothing happened); the last one is the period in progress, up to `until`.
 */
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
  /**
   * Latency percentiles of the period's requests (ms, whole), estimated from the store's latency
   * histogram (store/types.ts LATENCY_BOUNDS_MS) by linear interpolation inside the bucket the
   * percentile falls in (above the last bound, 300 s, the bound itself); null without requests.
   */
  p50Ms: number | null;
  p95Ms: number | null;
}

export interface Overview {
  range: OverviewRange;
  /**
   * The points' period: `minute` for the last hour (read from raw usage rows: an hour of them is
   * cheap), `hour` for the last day, `day` for the last week and month (read from the hourly and
   * daily rollups, raw rows only for the hour in progress).
   */
  bucket: 'minute' | 'hour' | 'day';
  /**
   * Start of the first point: `until` minus the range (1 h, 24 h, 7 or 30 days), floored to the
   * bucket, so that every point but the last is a whole period (unix ms, inclusive).
   */
  since: number;
  /** The time the report was made (unix ms, exclusive). */
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

/**
 * One group of the explorer, all models added up (costs priced per model first). Groups: key ids,
 * model ids, upstream names ('' for requests no upstream served: cache hits, refusals), UTC days
 * (YYYY-MM-DD) or UTC hours (YYYY-MM-DDTHH:00Z); ordered by group, bytewise (days and hours in
 * time order).
 */
export interface ExplorerRow extends GroupUsage {
  group: string;
  /** For `key`: the key's name (the group is its id; absent for a deleted key). For `upstream` '': "(none)". */
  label?: string;
}
