/**
 * The gateway's configuration: one object, validated by zod, built from an optional JSON file
 * (named by CLAUDCODE_CONFIG) overlaid by environment variables (the environment wins).
 *
 * ANTHROPIC_BASE_URL is deliberately never read: a shell set up for Claude Code against this
 * gateway would otherwise make the gateway call itself.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';

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
  url: z.url().transform((u) => u.replace(/\/+$/, '')),
  key: z.string().min(1).optional(),
});
export type UpstreamConfig = z.infer<typeof Upstream>;

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
  upstreams: z.array(Upstream).min(1).default([{ url: 'https://api.anthropic.com' }]),
  adminToken: z.string().min(16, 'the admin token must be at least 16 characters').optional(),
  dataDir: z.string().min(1).default('./data'),
  databaseUrl: z.string().optional(),
  redisUrl: z.string().optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Largest request body accepted (Anthropic's own Messages API limit is 32 MB). */
  maxBodyBytes: z.coerce.number().int().positive().default(32 * 1024 * 1024),
  /** How long an upstream may stay silent (headers or between body chunks) before 502. */
  upstreamTimeoutMs: z.coerce.number().int().positive().default(600_000),
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
  /** On SIGTERM: how long in-flight requests get to finish before they are cut. */
  shutdownGraceMs: z.coerce.number().int().nonnegative().default(30_000),
  /** Maintenance mode: the API answers 503, admin stays reachable. */
  maintenance: BoolFromEnv.default(false),
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

/** Upstream URLs and keys from the environment: one key for all URLs, or one key per URL. */
function upstreamsFromEnv(env: Env, fromFile: ConfigInput['upstreams']): ConfigInput['upstreams'] {
  const urls = listFromEnv(env.CLAUDCODE_UPSTREAM_URL);
  const keys = listFromEnv(env.CLAUDCODE_UPSTREAM_KEY) ?? listFromEnv(env.ANTHROPIC_API_KEY);
  if (!urls && !keys) return fromFile;
  const baseUrls = urls ?? fromFile?.map((u) => u.url) ?? ['https://api.anthropic.com'];
  if (keys && keys.length > 1 && keys.length !== baseUrls.length) {
    throw new Error(`${keys.length} upstream keys for ${baseUrls.length} upstream URLs: give one key, or one per URL`);
  }
  return baseUrls.map((url, i) => ({
    url,
    key: keys ? (keys.length === 1 ? keys[0] : keys[i]) : fromFile?.[i]?.key,
  }));
}

export class ConfigError extends Error {}

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
  const fromEnv: Partial<Record<keyof ConfigInput, string | undefined>> = {
    port: env.PORT,
    host: env.HOST,
    adminToken: env.CLAUDCODE_ADMIN_TOKEN,
    dataDir: env.CLAUDCODE_DATA_DIR,
    databaseUrl: env.DATABASE_URL,
    redisUrl: env.REDIS_URL,
    logLevel: env.CLAUDCODE_LOG_LEVEL,
    maxBodyBytes: env.CLAUDCODE_MAX_BODY_BYTES,
    headersTimeoutMs: env.CLAUDCODE_HEADERS_TIMEOUT_MS,
    requestTimeoutMs: env.CLAUDCODE_REQUEST_TIMEOUT_MS,
    maintenance: env.CLAUDCODE_MAINTENANCE,
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
  const cacheFromEnv = { enabled: envValue(env.CLAUDCODE_CACHE), ttlSeconds: envValue(env.CLAUDCODE_CACHE_TTL) };
  for (const [name, value] of Object.entries(cacheFromEnv)) {
    if (value !== undefined) merged.cache = { ...(merged.cache as object | undefined), [name]: value };
  }
  for (const [name, value] of Object.entries(scaleOutFromEnv)) {
    if (value !== undefined) merged.scaleOut = { ...(merged.scaleOut as object | undefined), [name]: value };
  }
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
