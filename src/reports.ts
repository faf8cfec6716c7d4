/** Usage reports for the admin API and the CLI: grouped token counts with cost estimates. */
import type { ModelCatalog } from './catalog.ts';
import { USAGE_GROUPINGS, type Store, type UsageGrouping, type UsageRow } from './store/types.ts';

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

/** One group's usage, all its models added up and each priced at its own rate. */
export type GroupUsage = Omit<UsageRow, 'group' | 'model' | 'totalLatencyMs'> & {
  costUsd: number;
  /** Mean latency of the group's requests (ms, whole); 0 without requests. */
  avgLatencyMs: number;
};

/**
 * The store's report rows (one per group and model) added up per group, in the store's order,
 * and over all of them: what the admin report, the CLI and the dashboard's explorer show.
 */
export function sumByGroup(rows: readonly UsageRow[], catalog: ModelCatalog): { groups: Map<string, GroupUsage>; totals: GroupUsage } {
  type Sums = Omit<GroupUsage, 'avgLatencyMs'> & { latencyMs: number };
  const empty = (): Sums => ({
    requests: 0, errors: 0, cachedRequests: 0, inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0,
    billedTokens: 0, savedTokens: 0, costUsd: 0, latencyMs: 0,
  });
  const sums = new Map<string, Sums>();
  const all = empty();
  for (const r of rows) {
    let group = sums.get(r.group);
    if (!group) sums.set(r.group, (group = empty()));
    const cost = catalog.cost(r.model, {
      input_tokens: r.inputTokens,
      output_tokens: r.outputTokens,
      cache_creation_input_tokens: r.cacheCreationTokens,
      cache_read_input_tokens: r.cacheReadTokens,
    });
    for (const target of [group, all]) {
      target.requests += r.requests;
      target.errors += r.errors;
      target.cachedRequests += r.cachedRequests;
      target.inputTokens += r.inputTokens;
      target.outputTokens += r.outputTokens;
      target.cacheCreationTokens += r.cacheCreationTokens;
      target.cacheReadTokens += r.cacheReadTokens;
      target.billedTokens += r.billedTokens;
      target.savedTokens += r.savedTokens;
      target.latencyMs += r.totalLatencyMs;
      target.costUsd += cost;
    }
  }
  const finish = ({ latencyMs, ...group }: Sums): GroupUsage => ({
    ...group,
    costUsd: Math.round(group.costUsd * 1e6) / 1e6,
    avgLatencyMs: group.requests ? Math.round(latencyMs / group.requests) : 0,
  });
  return { groups: new Map([...sums].map(([name, group]) => [name, finish(group)])), totals: finish(all) };
}

/** A group's usage as the admin API and the CLI name its fields. */
function reportRow(u: GroupUsage): Omit<UsageReportRow, 'group'> {
  return {
    requests: u.requests, errors: u.errors, cached_requests: u.cachedRequests,
    input_tokens: u.inputTokens, output_tokens: u.outputTokens,
    cache_creation_input_tokens: u.cacheCreationTokens, cache_read_input_tokens: u.cacheReadTokens,
    billed_tokens: u.billedTokens, tokens_saved: u.savedTokens, avg_latency_ms: u.avgLatencyMs, cost_usd: u.costUsd,
  };
}

export async function usageReport(store: Store, catalog: ModelCatalog, query: UsageReportQuery): Promise<UsageReport> {
  const { groups, totals } = sumByGroup(await store.usageReport(query), catalog);
  return {
    by: query.by,
    since: query.sinceMs === undefined ? null : new Date(query.sinceMs).toISOString(),
    until: query.untilMs === undefined ? null : new Date(query.untilMs).toISOString(),
    key_id: query.keyId ?? null,
    rows: [...groups].map(([group, u]) => ({ group, ...reportRow(u) })),
    totals: reportRow(totals),
  };
}
