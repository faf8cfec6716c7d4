/**
 * The gateway's configuration: one object, validated by zod, built from an optional JSON file
 * (named by CLAUDCODE_CONFIG) overlaid by environment variables (the environment wins).
 *
 * ANTHROPIC_BASE_URL is deliberately never read: a shell set up for Claude Code against this
 * gateway would otherwise make the gateway call itself.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { MCP_SERVER_NAME, McpServerConfig } from './mcp/types.ts';
import { TrustedProxies } from './setup/public-url.ts';
import { normalizeGatewayUrl } from './setup/templates.ts';

const TokenPrices = z.object({
  /** US dollars per million tokens. */
  input: z.number().nonnegative(),
  output: z.number().nonnegative(),
  cache_write: z.number().nonnegative(),
  cache_read: z.number().nonnegative(),
});

const ModelEntry = z.object({
  /** The public id clients send and see in /v1/models. */
  id: z.string().min(1),
  /** The id sent upstream; defaults to `id`. */
  upstream_id: z.string().min(1).optional(),
  display_name: z.string().min(1),
  created_at: z.string().default('2026-01-01T00:00:00Z'),
  description: z.string().optional(),
  prices: TokenPrices,
});
export type ModelEntry = z.infer<typeof ModelEntry>;

const Upstream = z.object({
  /**
   * What usage records, reports, logs and /health/ready call this upstream; by default its URL's
   * host (a number is appended to repeats). Never the credential.
   */
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/, 'letters, digits, ".", "_", ":" and "-", at most 64').optional(),
  url: z.url().transform((u) => u.replace(/\/+$/, '')),
  key: z.string().min(1).optional(),
  /** Lower is tried first; upstreams of equal priority share the traffic by weight. */
  priority: z.number().int().min(0).default(0),
  weight: z.number().positive().default(1),
  /** Only these models (the catalog's public ids, or upstream ids) are sent here; all by default. */
  models: z.array(z.string().min(1)).min(1).optional(),
});
export type UpstreamConfig = z.infer<typeof Upstream> & { name: string };

/** Names every upstream: its own, or its URL's host, with "-2", "-3", ... on repeats. */
function nameUpstreams(upstreams: z.infer<typeof Upstream>[]): UpstreamConfig[] {
  const seen = new Set<string>();
  return upstreams.map((u) => {
    const base = u.name ?? new URL(u.url).host;
    let name = base;
    for (let n = 2; seen.has(name); n++) name = `${base}-${n}`;
    seen.add(name);
    return { ...u, name };
  });
}

/** Parses "5h", "90m", "1d", "3600s" or a bare number of seconds. */
export function parseDuration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$/i.exec(text);
  if (!match) throw new Error(`invalid duration "${text}" (use e.g. 5h, 90m, 1d, 3600s)`);
  const value = Number(match[1]);
  const unit = (match[2] ?? 's').toLowerCase();
  const seconds = value * { s: 1, m: 60, h: 3600, d: 86400 }[unit as 's' | 'm' | 'h' | 'd'];
  if (!Number.isFinite(seconds) || seconds < 1) throw new Error(`invalid duration "${text}"`);
  return Math.round(seconds);
}

/** Whole seconds from a number or a duration text; throws a message naming what was wrong. */
function durationSeconds(value: number | string): number {
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 1) throw new Error(`invalid duration ${value} (whole seconds, at least 1)`);
    return value;
  }
  return parseDuration(value);
}

/** A zod schema for seconds given as a number or as "5h", "90m", ..., checked by `seconds`. */
function durationSchema(seconds: (value: number | string) => number) {
  return z.union([z.number(), z.string()]).transform((value, ctx) => {
    try {
      return seconds(value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });
}

/** Seconds, given as a number or as "5h", "90m", ... (the message names what was wrong). */
export const Duration = durationSchema(durationSeconds);

/** Budget windows: budgets are kept in one-minute buckets, so a window shorter than one is meaningless. */
export const MIN_WINDOW_SECONDS = 60;
/** A year and a day: longer windows only make start-up (which reloads a window of usage) and dates overflow. */
export const MAX_WINDOW_SECONDS = 366 * 86400;

/** A key's budget window: a Duration between one minute and 366 days. */
export const WindowDuration = durationSchema((value) => {
  const seconds = durationSeconds(value);
  if (seconds < MIN_WINDOW_SECONDS) throw new Error(`${JSON.stringify(value)} is too short for a budget window: at least 60s (budgets are counted per minute)`);
  if (seconds > MAX_WINDOW_SECONDS) throw new Error(`${JSON.stringify(value)} is too long for a budget window: at most 366d`);
  return seconds;
});

const BoolFromEnv = z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')]);

export const DEFAULT_MODELS: z.input<typeof ModelEntry>[] = [
  {
    id: 'claude-opus-4-6',
    display_name: 'Claude Opus 4.6',
    description: 'Maximum intelligence',
    created_at: '2026-02-05T00:00:00Z',
    prices: { input: 5, output: 25, cache_write: 6.25, cache_read: 0.5 },
  },
  {
    id: 'claude-sonnet-4-6',
    display_name: 'Claude Sonnet 4.6',
    description: 'Balanced',
    created_at: '2026-02-17T00:00:00Z',
    prices: { input: 3, output: 15, cache_write: 3.75, cache_read: 0.3 },
  },
  {
    id: 'claude-haiku-4-5',
    display_name: 'Claude Haiku 4.5',
    description: 'Fast and cheap',
    created_at: '2025-10-15T00:00:00Z',
    prices: { input: 1, output: 5, cache_write: 1.25, cache_read: 0.1 },
  },
];

export const ConfigSchema = z.object({
  port: z.coerce.number().int().min(0).max(65535).default(8080),
  host: z.string().min(1).default('127.0.0.1'),
  upstreams: z.array(Upstream).min(1).default([{ url: 'https://api.anthropic.com', priority: 0, weight: 1 }]).transform(nameUpstreams),
  /**
   * Upstream timeouts; each ends the attempt with a 504 api_error (mid-stream, an SSE `error`
   * event). The time to first byte is long because a non-streamed answer's first byte is its
   * last: the API sends nothing until a long (extended thinking, 32k-token) answer is complete,
   * and the official SDKs themselves allow a non-streamed request 10 minutes.
   */
  upstreamTimeouts: z
    .object({
      /** Opening a TCP (and TLS) connection. */
      connectMs: z.coerce.number().int().positive().default(10_000),
      /** From sending the request to the response's headers. */
      firstByteMs: z.coerce.number().int().positive().default(600_000),
      /** The longest silence between two chunks of a response body (a stream's events). */
      idleMs: z.coerce.number().int().positive().default(300_000),
    })
    .prefault({}),
  /**
   * The failover policy (src/upstream/pool.ts): attempts on connection errors, timeouts, 429,
   * 529, 5xx and 401, before any byte reaches the client.
   */
  failover: z
    .object({
      /** Attempts per request, across all upstreams (1 = no retries). */
      maxAttempts: z.coerce.number().int().min(1).max(20).default(4),
      /** No attempt starts (and no backoff waits past) this long after the first one started. */
      retryWithinMs: z.coerce.number().int().nonnegative().default(20_000),
      /** The pause between rounds over the upstreams doubles from this, with jitter... */
      backoffBaseMs: z.coerce.number().int().nonnegative().default(200),
      /** ...up to this. An upstream's own retry-after, when longer, wins (within retryWithinMs). */
      backoffMaxMs: z.coerce.number().int().nonnegative().default(5_000),
      /** Consecutive failures of an upstream that open its circuit breaker... */
      breakerFailures: z.coerce.number().int().min(1).default(5),
      /** ...which then skips it this long before letting one probe request through. */
      breakerCooldownMs: z.coerce.number().int().positive().default(10_000),
    })
    .prefault({}),
  adminToken: z.string().min(16, 'the admin token must be at least 16 characters').optional(),
  dataDir: z.string().min(1).default('./data'),
  /**
   * The gateway's public base URL (what clients type: https://claude.example.com), for the setup
   * scripts it serves. Unset: derived from each request's Host (and X-Forwarded-* from
   * `trustedProxies` only).
   */
  publicUrl: z
    .string()
    .transform((u, ctx) => {
      // Embedded in the setup scripts: http(s), no query, only characters a script needs no quoting for.
      try {
        return normalizeGatewayUrl(u);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    })
    .optional(),
  /**
   * Addresses (IPs or CIDR ranges) of the reverse proxies in front of the gateway, whose
   * X-Forwarded-Proto / X-Forwarded-Host the gateway believes. Anyone else's are ignored.
   */
  trustedProxies: z
    .array(z.string().min(1))
    .default([])
    .superRefine((entries, ctx) => {
      try {
        new TrustedProxies(entries);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
    }),
  databaseUrl: z.string().optional(),
  redisUrl: z.string().optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Largest request body accepted (Anthropic's own Messages API limit is 32 MB). */
  maxBodyBytes: z.coerce.number().int().positive().default(32 * 1024 * 1024),
  /**
   * How long a client has to send a request's head (line and headers) from its first byte, or
   * from connecting: an idle or trickling socket is answered 408 and closed. Node's default, 60 s
   * checked every 30 s, let a silent socket hold a connection for 90 s.
   */
  headersTimeoutMs: z.coerce.number().int().positive().default(15_000),
  /**
   * How long a client has to send a whole request, head and body (32 MiB in 120 s is 2.2 Mbit/s).
   * Covers receiving the request only: a response may stream for as long as it takes.
   */
  requestTimeoutMs: z.coerce.number().int().positive().default(120_000),
  /** Wrong admin tokens per client address: past `maxFailures` in `windowMs`, 429 without checking. */
  adminThrottle: z
    .object({
      maxFailures: z.number().int().positive().default(10),
      windowMs: z.number().int().positive().default(60_000),
      /** Addresses tracked at once; the one that failed longest ago is forgotten first. */
      maxAddresses: z.number().int().positive().default(10_000),
    })
    .prefault({}),
  /**
   * Usage records held in memory while the store cannot be written (PostgreSQL down, SQLite
   * locked), written when it can be again. Past this, the oldest are dropped (and logged).
   */
  maxQueuedUsageRecords: z.coerce.number().int().positive().default(100_000),
  /** The response cache (src/cache/): identical requests answered by the gateway itself. */
  cache: z
    .object({
      enabled: BoolFromEnv.default(true),
      /** How long an entry answers identical requests (X-Cache-TTL). */
      ttlSeconds: z.coerce.number().int().min(1).max(30 * 86400).default(3600),
      /** The in-process tier's bound; the least recently used entries leave past it. */
      memoryMaxBytes: z.coerce.number().int().positive().default(256 * 1024 * 1024),
      /** Larger requests are not cached (their key would cost more than it saves): X-Cache BYPASS. */
      maxBodyBytes: z.coerce.number().int().positive().default(4 * 1024 * 1024),
      /** Bill a hit's original tokens against the budget (default: a hit costs no budget tokens). */
      billHits: BoolFromEnv.default(false),
    })
    .prefault({}),
  /** The scale-out mode (DATABASE_URL + REDIS_URL): see backends.ts. */
  scaleOut: z
    .object({
      /**
       * Redis unreachable: refuse metered requests with 503 "limits unavailable" (false, the
       * default) or serve them unmetered by rpm, concurrency and budget (true). Usage is still
       * recorded either way.
       */
      limitsFailOpen: BoolFromEnv.default(false),
      /**
       * A request's concurrency slot is a lease in Redis with this TTL, refreshed while the
       * request lives: an instance killed with -9 frees its slots within it.
       */
      leaseTtlMs: z.coerce.number().int().min(1000).max(300_000).default(30_000),
      /** Prefix of every Redis key and channel the gateway uses (several deployments, one Redis). */
      redisPrefix: z.string().min(1).max(100).default('claudcode:'),
    })
    .prefault({}),
  /** GET /metrics (Prometheus). */
  metrics: z
    .object({
      /** Serve /metrics without the admin token (for a scraper on a private network). */
      public: BoolFromEnv.default(false),
      /** Label requests and tokens with the key's id too (one series per key: mind the cardinality). */
      perKeyLabels: BoolFromEnv.default(false),
    })
    .prefault({}),
  /** On SIGTERM: how long in-flight requests get to finish before they are cut. */
  shutdownGraceMs: z.coerce.number().int().nonnegative().default(30_000),
  /**
   * Maintenance mode (maintenance.ts): the API answers 503, admin and health stay reachable. The
   * switch lives in the store, shared by every instance and flipped at run time (PUT
   * /admin/maintenance, `claudcode maintenance on|off`). Given here (CLAUDCODE_MAINTENANCE, true
   * or false), the instance writes it to the store at start, so it holds from then on for every
   * instance; left unset (the default), the instance follows whatever the store says. Unset is
   * the default so that restarting one instance cannot undo a switch made at run time.
   */
  maintenance: BoolFromEnv.optional(),
  /** The Retry-After (seconds) of the API's 503 in maintenance mode. */
  maintenanceRetryAfterSeconds: z.coerce.number().int().min(1).max(86_400).default(60),
  /** How often each instance re-reads keys from the store (changes apply within a second). */
  keyRefreshMs: z.coerce.number().int().positive().max(1000).default(500),
  usageFlushMs: z.coerce.number().int().positive().default(200),
  budget: z
    .object({
      /** Reserve max_tokens (+ an input bound) up front so no key ever exceeds its budget. */
      strict: BoolFromEnv.default(false),
      /** How much each kind of token weighs against a budget. */
      weights: z
        .object({
          input: z.number().nonnegative().default(1),
          output: z.number().nonnegative().default(1),
          cache_creation: z.number().nonnegative().default(1),
          cache_read: z.number().nonnegative().default(1),
        })
        .prefault({}),
    })
    .prefault({}),
  /** Defaults for keys created without explicit limits. */
  keyDefaults: z
    .object({
      budgetTokens: z.number().int().positive().default(5_000_000),
      windowSeconds: WindowDuration.default(5 * 3600),
      rpm: z.number().int().positive().default(60),
      concurrent: z.number().int().positive().default(5),
    })
    .prefault({}),
  models: z.array(ModelEntry).min(1).default(DEFAULT_MODELS as z.infer<typeof ModelEntry>[]),
  /**
   * Attached MCP servers by name, in the shape of Claude Code's `.mcp.json` `mcpServers`. Keys
   * listing a server in their `mcp_servers` get its tools (src/mcp/).
   */
  mcpServers: z.record(z.string().regex(MCP_SERVER_NAME, 'letters, digits, "_" and "-", at most 32'), McpServerConfig).default({}),
  /** The MCP side of the gateway: its /mcp endpoint and the server-side tool loop. */
  mcp: z
    .object({
      /** Model turns one /v1/messages request may take in the tool loop (each billed). */
      maxTurns: z.coerce.number().int().min(1).max(50).default(8),
      /** A tool result longer than this (UTF-8 bytes) is cut, with a note saying so. */
      maxToolOutputBytes: z.coerce.number().int().min(256).default(100_000),
      /** How long one tool call may take before the model gets an error result. */
      toolTimeoutMs: z.coerce.number().int().positive().default(60_000),
      /** How long an attached server's tool list is reused before it is listed again. */
      toolListTtlMs: z.coerce.number().int().nonnegative().default(300_000),
      /**
       * Hosts (names or addresses) that `mcp_servers` URLs in requests may reach although they
       * are private, loopback or link-local (refused otherwise).
       */
      allowedPrivateHosts: z.array(z.string().min(1)).default([]),
      /** Whether requests may name MCP servers of their own (`mcp_servers`). */
      allowRequestServers: BoolFromEnv.default(true),
      /**
       * Browser origins allowed to call /mcp (the MCP spec asks servers to check Origin against
       * DNS rebinding). Requests without an Origin header (every non-browser client) pass.
       */
      allowedOrigins: z.array(z.string().min(1)).default([]),
    })
    .prefault({}),
}).superRefine((config, ctx) => {
  // Node refuses to start a server with a head deadline past the whole request's.
  if (config.headersTimeoutMs > config.requestTimeoutMs) {
    ctx.addIssue({
      code: 'custom',
      path: ['headersTimeoutMs'],
      message: `${config.headersTimeoutMs} is longer than requestTimeoutMs (${config.requestTimeoutMs}); the head is part of the request`,
    });
  }
});

export type Config = z.infer<typeof ConfigSchema>;
export type ConfigInput = z.input<typeof ConfigSchema>;

type Env = Record<string, string | undefined>;

/** An environment value, or undefined when unset or blank. */
function envValue(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

function listFromEnv(value: string | undefined): string[] | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  return value.split(',').map((s) => s.trim()).filter(Boolean);
}

/**
 * Upstream URLs and keys from the environment: one key for all URLs, or one key per URL. A URL
 * the config file also lists keeps the file's name, priority, weight and models (and its key,
 * unless the environment gives keys); keys alone replace the file's upstreams' keys.
 */
function upstreamsFromEnv(env: Env, fromFile: ConfigInput['upstreams']): ConfigInput['upstreams'] {
  const urls = listFromEnv(env.CLAUDCODE_UPSTREAM_URL);
  const keys = listFromEnv(env.CLAUDCODE_UPSTREAM_KEY) ?? listFromEnv(env.ANTHROPIC_API_KEY);
  if (!urls && !keys) return fromFile;
  const sameUrl = (a: string, b: string) => a.replace(/\/+$/, '') === b.replace(/\/+$/, '');
  const base = urls
    ? urls.map((url) => ({ ...fromFile?.find((u) => sameUrl(u.url, url)), url }))
    : (fromFile ?? [{ url: 'https://api.anthropic.com' }]);
  if (keys && keys.length > 1 && keys.length !== base.length) {
    throw new Error(`${keys.length} upstream keys for ${base.length} upstream URLs: give one key, or one per URL`);
  }
  return base.map((upstream, i) => (keys ? { ...upstream, key: keys.length === 1 ? keys[0] : keys[i] } : upstream));
}

export class ConfigError extends Error {}

/**
 * `${VAR}` and `${VAR:-default}` in the strings of `value`, replaced from the environment, as
 * Claude Code expands its `.mcp.json`: the config file can name a secret (TAVILY_API_KEY) without
 * holding it. An unset variable without a default is an error naming where it is used.
 */
export function expandEnvReferences(value: unknown, env: Env, path: string): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (_, name: string, fallback: string | undefined) => {
      const found = env[name];
      if (found !== undefined && found !== '') return found;
      if (fallback !== undefined) return fallback;
      throw new Error(`${path}: the environment variable ${name} is not set`);
    });
  }
  if (Array.isArray(value)) return value.map((item, i) => expandEnvReferences(item, env, `${path}.${i}`));
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, expandEnvReferences(v, env, `${path}.${k}`)]));
  }
  return value;
}

/** Builds the validated config from a file (CLAUDCODE_CONFIG) and the environment. */
export function loadConfig(env: Env = process.env, overrides: Partial<ConfigInput> = {}): Config {
  let fromFile: Partial<ConfigInput> = {};
  if (env.CLAUDCODE_CONFIG) {
    try {
      fromFile = JSON.parse(readFileSync(env.CLAUDCODE_CONFIG, 'utf8')) as Partial<ConfigInput>;
    } catch (err) {
      throw new ConfigError(`cannot read config file ${env.CLAUDCODE_CONFIG}: ${(err as Error).message}`);
    }
  }
  if (fromFile.mcpServers !== undefined) {
    try {
      fromFile = { ...fromFile, mcpServers: expandEnvReferences(fromFile.mcpServers, env, 'mcpServers') as ConfigInput['mcpServers'] };
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
  const fromEnv: Partial<Record<keyof ConfigInput, string | undefined>> = {
    port: env.PORT,
    host: env.HOST,
    adminToken: env.CLAUDCODE_ADMIN_TOKEN,
    dataDir: env.CLAUDCODE_DATA_DIR,
    publicUrl: env.CLAUDCODE_PUBLIC_URL,
    databaseUrl: env.DATABASE_URL,
    redisUrl: env.REDIS_URL,
    logLevel: env.CLAUDCODE_LOG_LEVEL,
    maxBodyBytes: env.CLAUDCODE_MAX_BODY_BYTES,
    headersTimeoutMs: env.CLAUDCODE_HEADERS_TIMEOUT_MS,
    requestTimeoutMs: env.CLAUDCODE_REQUEST_TIMEOUT_MS,
    maintenance: env.CLAUDCODE_MAINTENANCE,
    maintenanceRetryAfterSeconds: env.CLAUDCODE_MAINTENANCE_RETRY_AFTER,
    maxQueuedUsageRecords: env.CLAUDCODE_MAX_QUEUED_USAGE,
  };
  const merged: Record<string, unknown> = { ...fromFile };
  for (const [name, value] of Object.entries(fromEnv)) {
    const given = envValue(value);
    if (given !== undefined) merged[name] = given;
  }
  if (env.CLAUDCODE_STRICT_BUDGET) {
    merged.budget = { ...(fromFile.budget ?? {}), strict: env.CLAUDCODE_STRICT_BUDGET };
  }
  const scaleOutFromEnv = {
    limitsFailOpen: envValue(env.CLAUDCODE_LIMITS_FAIL_OPEN),
    leaseTtlMs: envValue(env.CLAUDCODE_LEASE_TTL_MS),
    redisPrefix: envValue(env.CLAUDCODE_REDIS_PREFIX),
  };
  const timeoutsFromEnv = {
    connectMs: envValue(env.CLAUDCODE_UPSTREAM_CONNECT_TIMEOUT_MS),
    firstByteMs: envValue(env.CLAUDCODE_UPSTREAM_FIRST_BYTE_TIMEOUT_MS),
    idleMs: envValue(env.CLAUDCODE_UPSTREAM_IDLE_TIMEOUT_MS),
  };
  const failoverFromEnv = {
    maxAttempts: envValue(env.CLAUDCODE_UPSTREAM_MAX_ATTEMPTS),
    retryWithinMs: envValue(env.CLAUDCODE_UPSTREAM_RETRY_WITHIN_MS),
    breakerFailures: envValue(env.CLAUDCODE_BREAKER_FAILURES),
    breakerCooldownMs: envValue(env.CLAUDCODE_BREAKER_COOLDOWN_MS),
  };
  for (const [name, value] of Object.entries(timeoutsFromEnv)) {
    if (value !== undefined) merged.upstreamTimeouts = { ...(merged.upstreamTimeouts as object | undefined), [name]: value };
  }
  for (const [name, value] of Object.entries(failoverFromEnv)) {
    if (value !== undefined) merged.failover = { ...(merged.failover as object | undefined), [name]: value };
  }
  const metricsFromEnv = { public: envValue(env.CLAUDCODE_METRICS_PUBLIC), perKeyLabels: envValue(env.CLAUDCODE_METRICS_PER_KEY_LABELS) };
  for (const [name, value] of Object.entries(metricsFromEnv)) {
    if (value !== undefined) merged.metrics = { ...(merged.metrics as object | undefined), [name]: value };
  }
  const cacheFromEnv = { enabled: envValue(env.CLAUDCODE_CACHE), ttlSeconds: envValue(env.CLAUDCODE_CACHE_TTL) };
  for (const [name, value] of Object.entries(cacheFromEnv)) {
    if (value !== undefined) merged.cache = { ...(merged.cache as object | undefined), [name]: value };
  }
  for (const [name, value] of Object.entries(scaleOutFromEnv)) {
    if (value !== undefined) merged.scaleOut = { ...(merged.scaleOut as object | undefined), [name]: value };
  }
  const proxies = listFromEnv(env.CLAUDCODE_TRUSTED_PROXIES);
  if (proxies) merged.trustedProxies = proxies;
  try {
    merged.upstreams = upstreamsFromEnv(env, fromFile.upstreams);
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  return parseConfig({ ...merged, ...overrides });
}

export function parseConfig(input: unknown): Config {
  const result = ConfigSchema.safeParse(input);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `  ${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  return result.data;
}
