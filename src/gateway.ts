/**
 * The gateway: wires config, store, keys, limits, upstream and usage into the pipeline and one
 * Hono app, serves them (request-listener.ts: the metered routes go to the pipeline, the rest to
 * the app), and shuts down without losing usage (SIGTERM: stop accepting, let in-flight requests
 * finish within the grace period, write the usage queue, close the store).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import { Hono } from 'hono';
import { AdminAuth } from './admin-auth.ts';
import { adminRoutes, resolveAdminToken } from './admin.ts';
import { GatewayMetrics } from './metrics.ts';
import { openBackends, type Backends } from './backends.ts';
import { cacheAdminRoutes } from './cache/admin.ts';
import { CacheCounters } from './cache/stage.ts';
import { ModelCatalog, modelObject } from './catalog.ts';
import { MAX_WINDOW_SECONDS, type Config } from './config.ts';
import { MaintenanceError, NotFoundError, toErrorBody } from './errors.ts';
import { errorAnswer } from './exchange.ts';
import { dashboardRoutes } from './dashboard/routes.ts';
import { clientErrorHandler, httpServerOptions, newRequestId } from './http-server.ts';
import { KeyRegistry, keyStatusReport } from './keys.ts';
import type { RateLimiter } from './limits/types.ts';
import { accessLogger, createLogger, type Logger } from './logger.ts';
import { MaintenanceMode, maintenanceAdminRoutes } from './maintenance.ts';
import { AttachedMcpServers } from './mcp/connections.ts';
import { mcpRoutes } from './mcp/server.ts';
import { authenticateRequest, type GatewayEnv } from './app-env.ts';
import type { GatewayServices } from './pipeline.ts';
import { gatewayRequestListener, InFlight, logAccess } from './request-listener.ts';
import { setupScriptRoutes } from './setup/routes.ts';
import type { KeyRecord, Store } from './store/types.ts';
import { UpstreamPool } from './upstream/pool.ts';
import { UsageRecorder } from './usage.ts';

export interface GatewayOptions {
  /** The store, limiter and key-change signal; by default built from config (backends.ts). */
  backends?: Backends;
  logger?: Logger;
}

export interface Gateway {
  readonly app: Hono<GatewayEnv>;
  readonly services: GatewayServices;
  readonly store: Store;
  /** Set only on the first start without CLAUDCODE_ADMIN_TOKEN: print it once. */
  readonly generatedAdminToken: string | undefined;
  listen(): Promise<{ url: string; server: Server }>;
  close(): Promise<void>;
}

/** `promise`, or a rejection after `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * A key whose window grew needs usage its ledger dropped while the window was smaller (or never
 * loaded): read it back from the store before the new window takes effect.
 */
async function restoreGrownWindows(store: Store, limits: RateLimiter, next: KeyRecord[], previous: ReadonlyMap<string, KeyRecord>): Promise<void> {
  const now = Date.now();
  for (const key of next) {
    const before = previous.get(key.id);
    if (!before || key.windowSeconds <= before.windowSeconds) continue;
    await limits.restoreWindow(key, now, (range) => readBuckets(store, range));
  }
}

function readBuckets(store: Store, range: { sinceMs: number; untilMs?: number; keyId?: string }) {
  const { sinceMs, ...options } = range;
  return store.budgetBuckets(sinceMs, options);
}

export async function createGateway(config: Config, options: GatewayOptions = {}): Promise<Gateway> {
  const logger = options.logger ?? createLogger(config.logLevel);
  const backends = options.backends ?? (await openBackends(config, logger));
  const { store, limiter: limits, keyChanges, cache } = backends;
  const catalog = new ModelCatalog(config.models);
  // Windows are capped at MAX_WINDOW_SECONDS; a key stored before the cap cannot make the
  // start-up load read further back than that.
  const longestWindow = Math.min(MAX_WINDOW_SECONDS, Math.max(config.keyDefaults.windowSeconds, ...(await store.listKeys()).map((k) => k.windowSeconds)));
  const loadFrom = Date.now() - longestWindow * 1000 - 60_000;
  await limits.load((range) => readBuckets(store, range), loadFrom);
  const keys = new KeyRegistry(store, (next, previous) => restoreGrownWindows(store, limits, next, previous), keyChanges);
  const keyRefreshFailed = (err: unknown) => logger.error({ err }, 'key refresh failed');
  await keys.start(config.keyRefreshMs, keyRefreshFailed);
  // Another instance or the CLI changed keys: reload now rather than at the next poll.
  await keyChanges.subscribe(() => void keys.refresh().catch(keyRefreshFailed));
  // While the store is down every flush fails (5 a second): one log line per 5 s says so.
  let writeFailures = 0;
  let writeFailureLoggedAt = 0;
  const usage = new UsageRecorder(store, {
    flushMs: config.usageFlushMs,
    onError: (err) => {
      writeFailures++;
      if (Date.now() - writeFailureLoggedAt < 5000) return;
      logger.error({ err, failures: writeFailures, queued: usage.pending }, 'usage write failed; the records stay queued and are retried');
      writeFailureLoggedAt = Date.now();
      writeFailures = 0;
    },
    maxQueued: config.maxQueuedUsageRecords,
    onDrop: (dropped, queued) => logger.error({ dropped, queued }, 'usage queue full while the store cannot be written: oldest records dropped'),
  });
  // Prometheus metrics: counters move at the pipeline's and the pool's own bookkeeping; gauges
  // read state when scraped.
  const metrics = new GatewayMetrics({
    perKeyLabels: config.metrics.perKeyLabels,
    sources: { inFlight: () => inFlight.count, cacheStats: () => cache.stats(), upstreams: () => upstream.states() },
  });
  const upstream = new UpstreamPool(config, { logger, onAttempt: (name, result, seconds) => metrics.upstreamAttempt(name, result, seconds) });
  const admin = await resolveAdminToken(store, config.adminToken);
  // One admin token check for the admin API, /metrics and the dashboard (one throttle).
  const adminAuth = new AdminAuth(config, admin.hash, logger);
  // The switch lives in the store (every instance follows it); CLAUDCODE_MAINTENANCE, when given, sets it.
  const maintenance = new MaintenanceMode(store, { logger });
  await maintenance.start(config.maintenance);
  const cacheCounters = new CacheCounters();
  // Attached MCP servers (config mcpServers): connected on first use, for the keys that list them.
  const mcp = new AttachedMcpServers(config.mcpServers, {
    logger,
    toolTimeoutMs: config.mcp.toolTimeoutMs,
    maxToolOutputBytes: config.mcp.maxToolOutputBytes,
    toolListTtlMs: config.mcp.toolListTtlMs,
  });
  const services: GatewayServices = { config, logger, keys, limits, catalog, upstream, usage, cache, cacheCounters, mcp, metrics };

  if (!config.upstreams.some((u) => u.key)) {
    logger.warn('no upstream credential configured (ANTHROPIC_API_KEY or CLAUDCODE_UPSTREAM_KEY): upstream calls go out without one');
  }

  const app = new Hono<GatewayEnv>();

  // Responses still being written (streams included), so shutdown can wait for them to end.
  const inFlight = new InFlight();
  const accessLog = accessLogger(logger);

  // Every route of the app (the metered ones are served by request-listener.ts, alike).
  app.use('*', async (c, next) => {
    inFlight.track(c.env.outgoing);
    const requestId = newRequestId();
    const startedAt = Date.now();
    c.set('requestId', requestId);
    c.set('startedAt', startedAt);
    c.set('keyId', undefined);
    // Set before the handler runs: responses made with c.json carry these.
    c.header('x-request-id', requestId);
    c.header('request-id', requestId);
    await next();
    logAccess(accessLog, { requestId, method: c.req.method, route: c.req.routePath, status: c.res.status, startedAt, keyId: c.get('keyId') });
  });

  app.onError((err, c) => {
    // The client went away mid-request: nobody is there to read an answer, and nothing failed.
    if (c.req.raw.signal.aborted) return c.body(null, 499 as 400);
    const answer = errorAnswer(err, c.get('requestId'), c.env.incoming, logger);
    return c.body(answer.body, answer.status as 400, answer.headers);
  });

  app.notFound((c) => {
    const err = new NotFoundError(`Not found: ${c.req.method} ${c.req.path}`);
    return c.json(toErrorBody(err, c.get('requestId')), 404);
  });

  // Prometheus scrapes here: behind the admin token unless the operator made it public.
  if (!config.metrics.public) app.use('/metrics', adminAuth.bearer('Metrics'));
  app.get('/metrics', async (c) => {
    const { contentType, body } = await metrics.render();
    return c.body(body, 200, { 'content-type': contentType });
  });

  const health = (c: { json: (body: unknown) => Response }) =>
    c.json({ status: maintenance.enabled ? 'maintenance' : 'ok' });
  app.get('/health', health);
  app.get('/healthz', health);
  // Client setup scripts (no auth, no secret in them; not /v1, so maintenance mode leaves them be).
  app.route('/', setupScriptRoutes(config));

  // Readiness: can this instance serve? The store and the limiter must answer (each within a
  // second); no auth, so it names no hosts or credentials.
  app.get('/health/ready', async (c) => {
    const probe = async (check: () => Promise<void>) => {
      try {
        await withTimeout(check(), 1000);
        return { ok: true };
      } catch (err) {
        return { ok: false, error: (err as Error).message.slice(0, 200) };
      }
    };
    const [storeState, limitsState] = await Promise.all([probe(() => store.ping()), probe(() => limits.ping())]);
    const inMaintenance = maintenance.enabled;
    const ready = storeState.ok && limitsState.ok && !inMaintenance;
    return c.json(
      {
        status: ready ? 'ready' : inMaintenance ? 'maintenance' : 'not_ready',
        mode: backends.mode,
        store: storeState,
        limits: limitsState,
        // Each upstream's circuit (closed / open / half-open); informative: a breaker opens
        // on this instance's traffic only, and failover keeps serving while any is closed.
        upstreams: upstream.states(),
      },
      ready ? 200 : 503,
    );
  });

  const api = new Hono<GatewayEnv>();
  api.use('*', async (_c, next) => {
    if (maintenance.enabled) throw new MaintenanceError(config.maintenanceRetryAfterSeconds);
    await next();
  });
  // POST /messages and /messages/count_tokens: served before the app (request-listener.ts).

  api.get('/models', (c) => {
    const key = authenticateRequest(c, keys);
    const models = catalog.visibleTo(key);
    const limit = Math.min(1000, Math.max(1, Number(c.req.query('limit') ?? 20) || 20));
    const afterId = c.req.query('after_id');
    const beforeId = c.req.query('before_id');
    let start = 0;
    let end = models.length;
    if (afterId) start = models.findIndex((m) => m.id === afterId) + 1;
    if (beforeId) end = Math.max(0, models.findIndex((m) => m.id === beforeId));
    const page = beforeId ? models.slice(Math.max(start, end - limit), end) : models.slice(start, Math.min(end, start + limit));
    const hasMore = beforeId ? end - limit > start : start + limit < end;
    return c.json({
      data: page.map(modelObject),
      has_more: hasMore,
      first_id: page[0]?.id ?? null,
      last_id: page.at(-1)?.id ?? null,
    });
  });

  api.get('/models/:id', (c) => {
    const key = authenticateRequest(c, keys);
    const model = catalog.visibleTo(key).find((m) => m.id === c.req.param('id'));
    if (!model) throw new NotFoundError(`model: ${c.req.param('id')}`);
    return c.json(modelObject(model));
  });

  api.get('/key-status', async (c) => {
    const now = Date.now();
    const key = authenticateRequest(c, keys, now);
    return c.json(await keyStatusReport(key, limits, now));
  });

  // SDKs given a base URL that already ends in /v1 call /v1/v1/...: answer there too.
  app.route('/v1', api);
  app.route('/v1/v1', api);
  // The gateway as an MCP server; its ask_claude tool calls /v1/messages here over loopback.
  let selfUrl: string | undefined;
  app.route('/mcp', mcpRoutes({ ...services, store, selfUrl: () => selfUrl }));
  app.route(
    '/admin',
    adminRoutes({
      config, store, keys, catalog, auth: adminAuth, logger,
      mount: [
        ['/cache', cacheAdminRoutes({ cache, counters: cacheCounters, keys: store, purges: backends.cachePurges })],
        ['/maintenance', maintenanceAdminRoutes(maintenance)],
      ],
    }),
  );

  // The operator's web dashboard: admin token → session cookie (src/dashboard/).
  app.route(
    '/dashboard',
    dashboardRoutes({
      config, store, keys, limits, catalog, auth: adminAuth, adminTokenHash: admin.hash, logger,
      upstreams: () => upstream.states(),
      maintenance: () => maintenance.state,
      mode: backends.mode,
      inFlight: () => inFlight.count,
    }),
  );

  let server: Server | undefined;
  let closing: Promise<void> | undefined;

  return {
    app,
    services,
    store,
    generatedAdminToken: admin.generated,
    listen() {
      return new Promise((resolve, reject) => {
        // Timeouts and head limits (http-server.ts) bound what a slow or idle client can hold.
        const listener = gatewayRequestListener({
          services,
          app: getRequestListener(app.fetch, { hostname: config.host }),
          maintenance,
          inFlight,
          accessLog,
        });
        const s = createServer(httpServerOptions(config), listener);
        s.listen(config.port, config.host, () => {
          const info = s.address() as AddressInfo;
          const host = info.family === 'IPv6' ? `[${info.address}]` : info.address;
          // Listening on every address (0.0.0.0, ::): the gateway reaches itself on loopback.
          const loopback = info.address === '0.0.0.0' ? '127.0.0.1' : info.address === '::' ? '[::1]' : host;
          selfUrl = `http://${loopback}:${info.port}`;
          resolve({ url: `http://${host}:${info.port}`, server: s });
        });
        s.on('clientError', clientErrorHandler(config, logger));
        s.once('error', reject);
        server = s;
      });
    },
    close() {
      closing ??= (async () => {
        if (server) {
          const s = server;
          const closed = new Promise<void>((resolve) => s.close(() => resolve()));
          const drained = inFlight.idle();
          // Idle keep-alive connections are closed at once; responses in flight get the grace period.
          s.closeIdleConnections();
          const grace = new Promise<void>((resolve) => setTimeout(resolve, config.shutdownGraceMs).unref());
          await Promise.race([drained, grace]);
          // Past the grace period, cut what is left; cut streams record their usage as they close.
          s.closeAllConnections();
          await Promise.all([drained, closed]);
        }
        keys.stop();
        maintenance.stop();
        await usage.close();
        await upstream.close();
        await mcp.close();
        await backends.close();
      })();
      return closing;
    },
  };
}
