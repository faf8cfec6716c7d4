/** Usage reports for the admin API and the CLI: grouped token counts with cost estimates. */
import type { ModelCatalog } from './catalog.ts';
import { USAGE_GROUPINGS, type Store, type UsageGrouping } from './store/types.ts';

/** Whether `by` (the admin API's `?by=`, the CLI's `--by`) names a grouping: model, key, day or upstream. */
export function isUsageGrouping(by: string): by is UsageGrouping {
  return (USAGE_GROUPINGS as readonly string[]).includes(by);
}

/** The groupings for messages: "model, key, day or upstream". */
export const USAGE_GROUPINGS_TEXT = `${USAGE_GROUPINGS.slice(0, -1).join(', ')} or ${USAGE_GROUPINGS.at(-1)}`;

export interface UsageReportQuery {
  keyId?: string;
  sinceMs?: number;
  untilMs?: number;
  by: UsageGrouping;
}

export interface UsageReportRow {
  /** The model, key id, UTC day (YYYY-MM-DD) or upstream name; by upstream, '' is the requests no upstream served. */
  group: string;
  requests: number;
  errors: number;
  cached_requests: number;
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
  billed_tokens: number;
  /** Budget tokens the cache hits among `cached_requests` saved (what their original answers cost). */
  tokens_saved: number;
  avg_latency_ms: number;
  cost_usd: number;
}

export interface UsageReport {
  by: UsageGrouping;
  since: string | null;
  until: string | null;
  key_id: string | null;
  rows: UsageReportRow[];
  totals: Omit<UsageReportRow, 'group'>;
}

function emptyRow(group: string): UsageReportRow {
  return {
    group, requests: 0, errors: 0, cached_requests: 0, input_tokens: 0, output_tokens: 0,
    cache_creation_input_tokens: 0, cache_read_input_tokens: 0, billed_tokens: 0, tokens_saved: 0, avg_latency_ms: 0, cost_usd: 0,
  };
}

export async function usageReport(store: Store, catalog: ModelCatalog, query: UsageReportQuery): Promise<UsageReport> {
  const rows = await store.usageReport(query);
  const groups = new Map<string, UsageReportRow & { latencyTotal: number }>();
  const totals = { ...emptyRow('total'), latencyTotal: 0 };
  for (const r of rows) {
    let row = groups.get(r.group);
    if (!row) groups.set(r.group, (row = { ...emptyRow(r.group), latencyTotal: 0 }));
    const usage = {
      input_tokens: Number(r.inputTokens),
      output_tokens: Number(r.outputTokens),
      cache_creation_input_tokens: Number(r.cacheCreationTokens),
      cache_read_input_tokens: Number(r.cacheReadTokens),
    };
    const cost = catalog.cost(r.model, usage);
    for (const target of [row, totals]) {
      target.requests += Number(r.requests);
      target.errors += Number(r.errors);
      target.cached_requests += Number(r.cachedRequests);
      target.input_tokens += usage.input_tokens;
      target.output_tokens += usage.output_tokens;
      target.cache_creation_input_tokens += usage.cache_creation_input_tokens;
      target.cache_read_input_tokens += usage.cache_read_input_tokens;
      target.billed_tokens += Number(r.billedTokens);
      target.tokens_saved += Number(r.savedTokens);
      target.latencyTotal += Number(r.totalLatencyMs);
      target.cost_usd += cost;
    }
  }
  const finish = ({ latencyTotal, ...row }: UsageReportRow & { latencyTotal: number }): UsageReportRow => ({
    ...row,
    avg_latency_ms: row.requests ? Math.round(latencyTotal / row.requests) : 0,
    cost_usd: Math.round(row.cost_usd * 1e6) / 1e6,
  });
  const { group: _total, ...totalRow } = finish(totals);
  return {
    by: query.by,
    since: query.sinceMs === undefined ? null : new Date(query.sinceMs).toISOString(),
    until: query.untilMs === undefined ? null : new Date(query.untilMs).toISOString(),
    key_id: query.keyId ?? null,
    rows: [...groups.values()].map(finish),
    totals: totalRow,
  };
}
