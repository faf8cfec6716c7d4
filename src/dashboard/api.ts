/**
 * The dashboard's JSON API (/dashboard/api/...), behind a session (routes.ts checks it, and the
 * CSRF token on every change). The pages fetch these; nothing here is reachable without a
 * session, and nothing here ever returns key material except the one answer that creates a key.
 *
 *   GET    overview?range=hour|day|week|month   time series and totals (data.ts Overview)
 *   GET    keys                                 every key with its budget used/total, and the
 *                                               catalog's models and the MCP server names
 *   POST   keys                                 create (the admin API's fields) → the key, once
 *   PATCH  keys/:id                             change any of those fields
 *   POST   keys/:id/disable, keys/:id/enable
 *   DELETE keys/:id
 *   GET    usage?by=&since=&until=&key=&model=&upstream=[&format=csv]
 *   GET    live                                 in flight (this instance; per key over all of them),
 *                                               requests per key in the last minute, upstreams'
 *                                               breakers, maintenance
 *
 * Key changes go through the admin API's validation (validateKeyInput) and end with
 * `keys.changed()`, so every instance follows within a second, as with the admin API and CLI.
 */
import { Hono } from 'hono';
import { KeyChanges, parseTime, readJsonBody } from '../admin.ts';
import type { BackendMode } from '../backends.ts';
import type { ModelCatalog } from '../catalog.ts';
import type { Config } from '../config.ts';
import { InvalidRequestError } from '../errors.ts';
import { describeKey, keyStatus, type KeyRegistry } from '../keys.ts';
import { formatWait, formatWindow } from '../limits/format.ts';
import type { RateLimiter } from '../limits/types.ts';
import { describeMaintenance, type MaintenanceState } from '../maintenance.ts';
import type { KeyRecord, Store } from '../store/types.ts';
import type { UpstreamState } from '../upstream/pool.ts';
import type { ExplorerGrouping, ExplorerQuery, ExplorerRow, Overview, OverviewRange } from './data.ts';
import type { DashboardEnv } from './routes.ts';

/** The reports behind the overview and the explorer (overview.ts, explorer.ts). */
export interface DashboardReports {
  overview(range: OverviewRange, now: number): Promise<Overview>;
  explorer(query: ExplorerQuery, keys: KeyRecord[]): Promise<ExplorerRow[]>;
  csv(rows: ExplorerRow[], by: ExplorerGrouping): string;
}

export interface DashboardApiDeps {
  config: Config;
  store: Store;
  keys: KeyRegistry;
  limits: RateLimiter;
  catalog: ModelCatalog;
  reports: DashboardReports;
  /** The upstreams' circuit breakers (closed / open / half-open), as this instance sees them. */
  upstreams: () => UpstreamState[];
  maintenance: () => MaintenanceState;
  mode: BackendMode;
  /** Responses this instance is writing now (the gateway's own count). */
  inFlight: () => number;
  clock: () => number;
}

const RANGES: readonly OverviewRange[] = ['hour', 'day', 'week', 'month'];
const GROUPINGS: readonly ExplorerGrouping[] = ['key', 'model', 'upstream', 'day', 'hour'];
/** The explorer's default span, and the longest it reads at once. */
const DEFAULT_SINCE = '7d';
const MAX_EXPLORER_SPAN_MS = 400 * 86_400_000;

/**
 * Per-key live use as the limiter counts it (RateLimiter.activity: across every instance in the
 * scale-out mode, from Redis). Keys without traffic read as 0.
 */
async function perKeyUsage(limits: RateLimiter, keys: KeyRecord[], now: number): Promise<Map<string, { rpmUsed: number; inFlight: number }>> {
  const usage = new Map<string, { rpmUsed: number; inFlight: number }>();
  for (const key of keys) usage.set(key.id, { rpmUsed: 0, inFlight: 0 });
  for (const a of await limits.activity(keys.map((k) => k.id), now)) usage.set(a.keyId, { rpmUsed: a.lastMinute, inFlight: a.inFlight });
  return usage;
}

export function dashboardApi(deps: DashboardApiDeps): Hono<DashboardEnv> {
  const { store, keys, limits, catalog, reports, clock } = deps;
  const mcpServerNames = Object.keys(deps.config.mcpServers);
  const api = new Hono<DashboardEnv>();

  const keyView = async (record: KeyRecord, now: number) => {
    const budget = await limits.budget(record, now);
    return {
      ...describeKey(record),
      budget: {
        total_tokens: budget.total,
        used_tokens: budget.used,
        remaining_tokens: budget.remaining,
        window: formatWindow(record.windowSeconds),
        resets_in: formatWait(budget.resetsInMs),
      },
    };
  };

  const changes = new KeyChanges(deps);

  api.get('/overview', async (c) => {
    const range = c.req.query('range') ?? 'day';
    if (!(RANGES as readonly string[]).includes(range)) throw new InvalidRequestError(`range: expected ${RANGES.join(', ')}`);
    return c.json(await reports.overview(range as OverviewRange, clock()));
  });

  api.get('/keys', async (c) => {
    const now = clock();
    const records = (await store.listKeys()).sort((a, b) => a.name.localeCompare(b.name) || a.createdAt - b.createdAt);
    return c.json({
      data: await Promise.all(records.map((r) => keyView(r, now))),
      models: catalog.models.map((m) => m.id),
      mcp_servers: mcpServerNames,
      defaults: {
        budget_tokens: deps.config.keyDefaults.budgetTokens,
        window: formatWindow(deps.config.keyDefaults.windowSeconds),
        rpm: deps.config.keyDefaults.rpm,
        concurrent: deps.config.keyDefaults.concurrent,
      },
    });
  });

  api.post('/keys', async (c) => {
    const { record, key } = await changes.create(await readJsonBody(c.req.raw));
    return c.json({ ...(await keyView(record, clock())), key }, 201);
  });

  api.patch('/keys/:id', async (c) => c.json(await keyView(await changes.update(c.req.param('id'), await readJsonBody(c.req.raw)), clock())));
  api.post('/keys/:id/disable', async (c) => c.json(await keyView(await changes.setDisabled(c.req.param('id'), true), clock())));
  api.post('/keys/:id/enable', async (c) => c.json(await keyView(await changes.setDisabled(c.req.param('id'), false), clock())));

  api.delete('/keys/:id', async (c) => {
    const id = c.req.param('id');
    await changes.remove(id);
    return c.json({ id, deleted: true });
  });

  api.get('/usage', async (c) => {
    const now = clock();
    const by = c.req.query('by') || 'key';
    if (!(GROUPINGS as readonly string[]).includes(by)) throw new InvalidRequestError(`by: expected ${GROUPINGS.join(', ')}`);
    const sinceMs = parseTime(c.req.query('since') || DEFAULT_SINCE, 'since', now)!;
    const untilMs = parseTime(c.req.query('until'), 'until', now) ?? now;
    if (untilMs <= sinceMs) throw new InvalidRequestError('until: must be later than since');
    if (untilMs - sinceMs > MAX_EXPLORER_SPAN_MS) throw new InvalidRequestError('since: at most 400 days before until');
    const format = c.req.query('format') ?? 'json';
    if (format !== 'json' && format !== 'csv') throw new InvalidRequestError('format: expected json or csv');
    const query: ExplorerQuery = {
      by: by as ExplorerGrouping,
      sinceMs,
      untilMs,
      keyId: c.req.query('key') || undefined,
      model: c.req.query('model') || undefined,
      // The explorer labels requests no upstream served "(none)": that label selects them.
      upstream: upstreamFilter(c.req.query('upstream')),
    };
    const rows = await reports.explorer(query, await store.listKeys());
    if (format === 'csv') {
      const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
      const filename = `claudcode-usage-by-${query.by}-${day(sinceMs)}-to-${day(untilMs)}.csv`;
      return c.body(reports.csv(rows, query.by), 200, {
        'content-type': 'text/csv; charset=utf-8',
        'content-disposition': `attachment; filename="${filename}"`,
      });
    }
    return c.json({
      by: query.by,
      since: new Date(sinceMs).toISOString(),
      until: new Date(untilMs).toISOString(),
      filters: { key: query.keyId ?? null, model: query.model ?? null, upstream: query.upstream ?? null },
      rows,
    });
  });

  api.get('/live', async (c) => {
    const now = clock();
    const records = (await store.listKeys()).sort((a, b) => a.name.localeCompare(b.name));
    const perKey = await perKeyUsage(limits, records, now);
    return c.json({
      at: new Date(now).toISOString(),
      mode: deps.mode,
      // The gateway counts every response it is writing, this one included: not this one.
      in_flight: Math.max(0, deps.inFlight() - 1),
      maintenance: describeMaintenance(deps.maintenance()),
      upstreams: deps.upstreams(),
      keys: records.map((r) => ({
        id: r.id,
        name: r.name,
        status: keyStatus(r, now),
        rpm: r.rpm,
        concurrent: r.concurrent,
        rpm_used: perKey.get(r.id)?.rpmUsed ?? 0,
        in_flight: perKey.get(r.id)?.inFlight ?? 0,
      })),
    });
  });

  return api;
}

/** The explorer's upstream filter: none when absent or empty, '' (no upstream) for "(none)". */
function upstreamFilter(value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  return value === '(none)' ? '' : value;
}
