/**
 * The one factory of the gateway's backends, used by the gateway and the CLI alike:
 *
 *   embedded (default)   SQLite in the data directory, limits in process
 *   scale-out            DATABASE_URL → PostgreSQL for keys, usage and settings;
 *                        REDIS_URL → Redis for limits, budgets, in-flight leases and key-change
 *                        signals, shared by every instance
 *
 * The scale-out mode needs both URLs: PostgreSQL with in-process limits would let each instance
 * enforce its own limits (the multiplied-limits bug), and Redis with a local SQLite file would
 * give each instance its own keys and usage. One without the other stops the start.
 *
 * The scale-out modules (and with them pg and ioredis) are imported only in that mode, so the
 * embedded default neither loads nor needs them.
 */
import type { Config } from './config.ts';
import { ConfigError } from './config.ts';
import { NO_KEY_CHANGE_SIGNAL, type KeyChangeSignal } from './key-changes.ts';
import { MemoryRateLimiter } from './limits/memory.ts';
import type { RateLimiter } from './limits/types.ts';
import type { Logger } from './logger.ts';
import { SqliteStore } from './store/sqlite.ts';
import type { Store } from './store/types.ts';
import { MemoryCacheTier } from './cache/memory.ts';
import { SqliteCacheTier } from './cache/sqlite.ts';
import { TieredCache } from './cache/tiered.ts';
import type { CacheTier } from './cache/types.ts';

export type BackendMode = 'embedded' | 'scale-out';

/** A backend could not be opened at start (unreachable, refused, wrong schema): said in one line. */
export class BackendUnavailableError extends Error {}

/** Opens one backend, turning its failure into a BackendUnavailableError that names it. */
async function openNamed<T>(what: string, open: () => Promise<T>): Promise<T> {
  try {
    return await open();
  } catch (err) {
    throw new BackendUnavailableError(`cannot open ${what}: ${(err as Error).message}`);
  }
}

/** The durable side: what the CLI needs. */
export interface StoreBackends {
  mode: BackendMode;
  store: Store;
  keyChanges: KeyChangeSignal;
  close(): Promise<void>;
}

/** Everything a gateway instance runs on. */
export interface Backends extends StoreBackends {
  limiter: RateLimiter;
  /** The response cache: memory in front of SQLite (embedded) or Redis (scale-out). */
  cache: TieredCache;
  /**
   * Tells every instance that cache entries were purged, so they drop their memory tiers (the
   * shared tier is purged by whoever purges). Nothing to tell in the embedded mode.
   */
  cachePurges: KeyChangeSignal;
}

/** Which mode the config asks for; a half-configured scale-out is a ConfigError. */
export function backendMode(config: Pick<Config, 'databaseUrl' | 'redisUrl'>): BackendMode {
  if (config.databaseUrl && config.redisUrl) return 'scale-out';
  if (config.databaseUrl || config.redisUrl) {
    const given = config.databaseUrl ? 'DATABASE_URL' : 'REDIS_URL';
    const missing = config.databaseUrl ? 'REDIS_URL' : 'DATABASE_URL';
    throw new ConfigError(
      `${given} is set but ${missing} is not: the scale-out mode needs both (PostgreSQL for keys and usage, Redis for limits shared by every instance). Set ${missing}, or unset ${given} for the embedded SQLite mode.`,
    );
  }
  return 'embedded';
}

/** The store and key-change signal (the CLI's needs). */
export async function openStoreBackends(config: Config, logger: Logger): Promise<StoreBackends> {
  if (backendMode(config) === 'embedded') {
    const store = await openNamed('the SQLite store', () => SqliteStore.open(config.dataDir));
    return { mode: 'embedded', store, keyChanges: NO_KEY_CHANGE_SIGNAL, close: () => store.close() };
  }
  const { PostgresStore } = await import('./store/postgres.ts');
  const { RedisKeyChangeSignal } = await import('./redis-key-changes.ts');
  const store = await openNamed('the PostgreSQL store (DATABASE_URL)', () => PostgresStore.open(config.databaseUrl!, { logger }));
  let keyChanges: KeyChangeSignal;
  try {
    keyChanges = await openNamed('Redis (REDIS_URL)', () => RedisKeyChangeSignal.open(config.redisUrl!, { logger, channel: `${config.scaleOut.redisPrefix}keys` }));
  } catch (err) {
    await store.close();
    throw err;
  }
  return {
    mode: 'scale-out',
    store,
    keyChanges,
    close: async () => {
      await keyChanges.close();
      await store.close();
    },
  };
}

/**
 * The shared cache tier alone (SQLite file or Redis), for the CLI's cache commands. Running
 * instances' memory tiers are not reached: they keep their copies until they expire.
 */
export async function openSharedCache(config: Config, logger: Logger): Promise<CacheTier> {
  if (backendMode(config) === 'embedded') return openNamed('the SQLite cache', () => SqliteCacheTier.open(config.dataDir, { logger }));
  const { RedisCacheTier } = await import('./cache/redis.ts');
  return openNamed('Redis (REDIS_URL)', () => RedisCacheTier.open(config.redisUrl!, { logger, prefix: config.scaleOut.redisPrefix }));
}

/** Store, key-change signal, limiter and response cache (a gateway instance's needs). */
export async function openBackends(config: Config, logger: Logger): Promise<Backends> {
  const durable = await openStoreBackends(config, logger);
  const opened: Array<{ close(): Promise<void> }> = [];
  try {
    const limiter: RateLimiter = durable.mode === 'embedded'
      ? new MemoryRateLimiter()
      : await openNamed('Redis (REDIS_URL)', async () =>
        (await import('./limits/redis.ts')).RedisRateLimiter.open(config.redisUrl!, {
          logger,
          failOpen: config.scaleOut.limitsFailOpen,
          leaseTtlMs: config.scaleOut.leaseTtlMs,
          prefix: config.scaleOut.redisPrefix,
        }));
    opened.push(limiter);
    const memory = new MemoryCacheTier({ maxBytes: config.cache.memoryMaxBytes });
    let cache: TieredCache;
    let cachePurges: KeyChangeSignal = NO_KEY_CHANGE_SIGNAL;
    if (durable.mode === 'embedded') {
      const shared = await openNamed('the SQLite cache', () => SqliteCacheTier.open(config.dataDir, { logger }));
      cache = new TieredCache({ memory, shared, logger });
    } else {
      const { RedisCacheTier } = await import('./cache/redis.ts');
      const shared = await openNamed('Redis (REDIS_URL)', () => RedisCacheTier.open(config.redisUrl!, { logger, prefix: config.scaleOut.redisPrefix }));
      // The Redis tier is also the instances' single-flight lock.
      cache = new TieredCache({ memory, shared, lock: shared, logger });
      const { RedisKeyChangeSignal } = await import('./redis-key-changes.ts');
      const signal = await openNamed('Redis (REDIS_URL)', () =>
        RedisKeyChangeSignal.open(config.redisUrl!, { logger, channel: `${config.scaleOut.redisPrefix}cache-purge` }));
      opened.push(signal);
      // Another instance purged: drop this one's memory copies (re-read from Redis when asked).
      await signal.subscribe(() => void memory.purge());
      cachePurges = signal;
    }
    return {
      ...durable,
      limiter,
      cache,
      cachePurges,
      close: async () => {
        await cachePurges.close();
        await cache.close();
        await limiter.close();
        await durable.close();
      },
    };
  } catch (err) {
    for (const backend of opened.reverse()) await backend.close().catch(() => {});
    await durable.close();
    throw err;
  }
}
