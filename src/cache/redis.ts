/**
 * The scale-out mode's shared cache tier: entries in Redis, so that an answer one instance got
 * serves every instance.
 *
 * - An entry is one Redis string under `${prefix}cache:${key}` (keys are `${scope}:${digest}`),
 *   written with PX = expiresAt - storedAt, so Redis drops it by itself when it expires; a read
 *   also checks expiresAt against the caller's `now`. The value is a short header line
 *   (`1 storedAt expiresAt tokensSaved`) then the body as is: no JSON escaping of a body that is
 *   JSON already, and one GET per lookup.
 * - The request path never waits long and never throws: with Redis down a command fails at once
 *   (no offline queue), with Redis hung it fails after `commandTimeoutMs` (default 500 ms: a
 *   cache lookup should not hold a miss back for a whole second); `get` then resolves undefined
 *   (a miss) and `set` does nothing, each failure logged at most every few seconds. The client
 *   reconnects by itself (redis-client.ts), so the tier heals without being reopened.
 * - stats() is counted on demand, not kept: SCAN over the prefix with STRLEN per key (pipelined),
 *   O(entries) and approximate (keys written or expiring during the scan may or may not count;
 *   bytes are the stored values' lengths plus the key, plus the same fixed overhead as the other
 *   tiers). Counters kept with INCRBY on set would drift as Redis expires keys on its own. It is
 *   an admin call: it rejects when Redis is unreachable, as purge does.
 * - purge(scope) SCANs `${prefix}cache:${scope}:*` and UNLINKs each batch (freed in the
 *   background by Redis); it counts the keys removed.
 * - It is also the instances' CacheLock (tiered.ts): a short lock per key, SET NX PX under
 *   `${prefix}cache-lock:${key}` holding this instance's token, refreshed while its leader
 *   runs, so that identical requests reaching different instances at once make one upstream
 *   call; the others poll for the entry. Released with a compare-and-delete (Lua), or turned
 *   into a "failed" mark for FAILED_MARK_MS when the leader got nothing cacheable, which sends
 *   the waiters upstream themselves.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../logger.ts';
import { connectRedis, describeRedis, quitRedis, throttled, type Redis } from '../limits/redis-client.ts';
import { ENTRY_OVERHEAD_BYTES } from './memory.ts';
import type { CacheLock, LockState } from './tiered.ts';
import type { CacheEntry, CacheStats, CacheTier } from './types.ts';

const SCAN_COUNT = 1000;
const FORMAT = '1';
/** A lock's value after its leader got no cacheable answer, kept this long. */
const FAILED = 'failed';
export const FAILED_MARK_MS = 2000;
const REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
const RELEASE = `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])`;

export interface RedisCacheOptions {
  logger: Logger;
  /** Prefix of every key (several deployments, one Redis); default 'claudcode:'. */
  prefix?: string;
  /** How long a command may take before it counts as failed; default 500 ms. */
  commandTimeoutMs?: number;
}

/** `text` with Redis glob's special characters escaped, for a MATCH pattern. */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}

export function encodeEntry(entry: CacheEntry): string {
  return `${FORMAT} ${entry.storedAt} ${entry.expiresAt} ${entry.tokensSaved}\n${entry.body}`;
}

/** The entry in `value`, or undefined when it is not one this version wrote. */
export function decodeEntry(value: string): CacheEntry | undefined {
  const newline = value.indexOf('\n');
  if (newline < 0) return undefined;
  const [format, storedAt, expiresAt, tokensSaved] = value.slice(0, newline).split(' ').map(Number);
  if (format !== Number(FORMAT) || !Number.isFinite(storedAt) || !Number.isFinite(expiresAt) || !Number.isFinite(tokensSaved)) return undefined;
  return { body: value.slice(newline + 1), storedAt: storedAt!, expiresAt: expiresAt!, tokensSaved: tokensSaved! };
}

export class RedisCacheTier implements CacheTier, CacheLock {
  readonly name = 'redis';
  readonly description: string;
  private readonly redis: Redis;
  private readonly prefix: string;
  private readonly logger: Logger;
  private readonly warn = throttled(5000);
  /** This instance's lock token: a claim is released only by the instance that holds it. */
  private readonly token = randomBytes(8).toString('hex');

  private constructor(redis: Redis, url: string, options: RedisCacheOptions) {
    this.redis = redis;
    this.description = describeRedis(url);
    this.prefix = options.prefix ?? 'claudcode:';
    this.logger = options.logger;
  }

  /** Connects (failing fast, naming the Redis, when it cannot). */
  static async open(url: string, options: RedisCacheOptions): Promise<RedisCacheTier> {
    const redis = await connectRedis(url, { logger: options.logger, role: 'cache', commandTimeoutMs: options.commandTimeoutMs ?? 500 });
    return new RedisCacheTier(redis, url, options);
  }

  private entryKey(key: string): string {
    return `${this.prefix}cache:${key}`;
  }

  private lockKey(key: string): string {
    return `${this.prefix}cache-lock:${key}`;
  }

  private logFailure(what: string, err: unknown): void {
    this.warn((suppressed) =>
      this.logger.warn({ err: { message: (err as Error).message }, suppressed }, `${this.description} unreachable: cache ${what} skipped`));
  }

  /** A miss (undefined) too when Redis is unreachable; never rejects. */
  async get(key: string, now: number): Promise<CacheEntry | undefined> {
    let value: string | null;
    try {
      value = await this.redis.get(this.entryKey(key));
    } catch (err) {
      this.logFailure('read', err);
      return undefined;
    }
    if (value === null) return undefined;
    const entry = decodeEntry(value);
    return entry === undefined || now >= entry.expiresAt ? undefined : entry;
  }

  /** Does nothing when Redis is unreachable (logged); never rejects. */
  async set(key: string, entry: CacheEntry): Promise<void> {
    const ttl = Math.floor(entry.expiresAt - entry.storedAt);
    if (ttl <= 0) return;
    try {
      await this.redis.set(this.entryKey(key), encodeEntry(entry), 'PX', ttl);
    } catch (err) {
      this.logFailure('write', err);
    }
  }

  /** Each batch of keys matching `pattern`, as SCAN finds them. */
  private async *scan(pattern: string): AsyncGenerator<string[]> {
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_COUNT);
      cursor = next;
      if (keys.length > 0) yield keys;
    } while (cursor !== '0');
  }

  private pattern(scope: string | undefined): string {
    return `${globEscape(`${this.prefix}cache:`)}${scope === undefined ? '' : `${globEscape(scope)}:`}*`;
  }

  async purge(scope?: string): Promise<number> {
    let removed = 0;
    for await (const keys of this.scan(this.pattern(scope))) removed += await this.redis.unlink(...keys);
    return removed;
  }

  async stats(): Promise<CacheStats> {
    let entries = 0;
    let bytes = 0;
    for await (const keys of this.scan(this.pattern(undefined))) {
      const lengths = await Promise.all(keys.map((k) => this.redis.strlen(k)));
      keys.forEach((k, i) => {
        if (lengths[i]! === 0) return; // expired since the scan saw it
        entries++;
        bytes += k.length - this.prefix.length - 'cache:'.length + lengths[i]! + ENTRY_OVERHEAD_BYTES;
      });
    }
    return { entries, bytes };
  }

  /**
   * Takes the upstream lock of `key` for `ttlMs` when it is free: true if taken, false when
   * another holds it (or its last holder failed, within FAILED_MARK_MS), undefined when Redis is
   * unreachable (the caller then decides alone).
   */
  async claim(key: string, ttlMs: number): Promise<boolean | undefined> {
    try {
      return (await this.redis.set(this.lockKey(key), this.token, 'PX', Math.max(1, Math.ceil(ttlMs)), 'NX')) === 'OK';
    } catch (err) {
      this.logFailure('lock', err);
      return undefined;
    }
  }

  /** Who holds the lock of `key`; undefined when Redis is unreachable. */
  async lockState(key: string): Promise<LockState | undefined> {
    try {
      const value = await this.redis.get(this.lockKey(key));
      return value === null ? 'free' : value === FAILED ? 'failed' : 'held';
    } catch (err) {
      this.logFailure('lock', err);
      return undefined;
    }
  }

  /** Extends this instance's lock of `key` to `ttlMs` from now, if it still holds it. */
  async refresh(key: string, ttlMs: number): Promise<void> {
    try {
      await this.redis.eval(REFRESH, 1, this.lockKey(key), this.token, Math.max(1, Math.ceil(ttlMs)));
    } catch (err) {
      this.logFailure('lock refresh', err);
    }
  }

  /**
   * Ends this instance's lock of `key`: deleted after a result was stored (the waiters find the
   * entry), or turned into a short "failed" mark, which sends the waiters upstream themselves.
   */
  async release(key: string, failed: boolean): Promise<void> {
    try {
      await this.redis.eval(RELEASE, 1, this.lockKey(key), this.token, failed ? FAILED : '', FAILED_MARK_MS);
    } catch (err) {
      this.logFailure('unlock', err);
    }
  }

  async close(): Promise<void> {
    await quitRedis(this.redis);
  }
}
