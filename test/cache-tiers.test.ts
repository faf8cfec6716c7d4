/**
 * The response cache's storage: one contract suite run over every CacheTier (in-process LRU,
 * SQLite, Redis) — round trips, expiry through the caller's `now` (no sleeps), overwrite, purge
 * of everything or of one scope, stats — then what each tier has of its own (the LRU's byte
 * bound, SQLite's persistence, budget and sweep, Redis's TTLs and outages), and TieredCache:
 * memory in front of a shared tier, and single flight within an instance and across instances.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { entrySize, MemoryCacheTier } from '../src/cache/memory.ts';
import { FAILED_MARK_MS, RedisCacheTier } from '../src/cache/redis.ts';
import { CACHE_DB_FILE, SqliteCacheTier } from '../src/cache/sqlite.ts';
import type { ResponseCache } from '../src/cache/stage.ts';
import { TieredCache, type Lead, type Lookup } from '../src/cache/tiered.ts';
import type { CacheEntry, CacheStats, CacheTier } from '../src/cache/types.ts';
import { startTcpProxy, tempDirs } from './fixtures.ts';
import { capturedLogger, deleteKeys, keysUnder } from './limits-redis-helpers.ts';
import { REDIS_URL, services, testRedisPrefix } from './services.ts';

const HOUR = 3_600_000;
const tempDir = tempDirs('cache');
const { logger, lines } = capturedLogger('info');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** An entry stored at `storedAt`, living `ttlMs`. */
function entry(body: string, storedAt = Date.now(), ttlMs = HOUR, tokensSaved = 42): CacheEntry {
  return { body, storedAt, expiresAt: storedAt + ttlMs, tokensSaved };
}

const message = (text: string) => JSON.stringify({ id: 'msg_1', type: 'message', role: 'assistant', content: [{ type: 'text', text }], stop_reason: 'end_turn' });
const digest = (n: number) => n.toString(16).padStart(64, '0');

/** Retries `attempt` every 50 ms until it returns something truthy or `withinMs` passes. */
async function eventually<T>(attempt: () => Promise<T>, withinMs: number): Promise<T> {
  const started = Date.now();
  for (;;) {
    const value = await attempt();
    if (value || Date.now() - started > withinMs) return value;
    await sleep(50);
  }
}

function redisTarget(): { host: string; port: number } {
  const url = new URL(REDIS_URL);
  return { host: url.hostname, port: Number(url.port || 6379) };
}

/** Redis prefixes used here, all deleted after the file's tests. */
const prefixes: string[] = [];
function redisPrefix(): string {
  const prefix = testRedisPrefix('cache');
  prefixes.push(prefix);
  return prefix;
}
afterAll(async () => {
  if (services.redis) await Promise.all(prefixes.map((p) => deleteKeys(p)));
});

interface TierCase {
  name: string;
  available: boolean;
  open(): Promise<CacheTier>;
}

const TIERS: TierCase[] = [
  { name: 'memory', available: true, open: async () => new MemoryCacheTier() },
  { name: 'sqlite', available: true, open: () => SqliteCacheTier.open(tempDir(), { logger, sweepIntervalMs: 0 }) },
  { name: 'redis', available: services.redis, open: () => RedisCacheTier.open(REDIS_URL, { logger, prefix: redisPrefix() }) },
];

describe.each(TIERS)('CacheTier contract: $name', ({ available, open }) => {
  describe.skipIf(!available)('', () => {
    const opened: CacheTier[] = [];
    const openTier = async () => {
      const tier = await open();
      opened.push(tier);
      return tier;
    };
    afterEach(async () => {
      await Promise.all(opened.splice(0).map((t) => t.close()));
    });

    it('stores and returns an entry as it was given; an unknown key is a miss', async () => {
      const tier = await openTier();
      const now = Date.now();
      const stored = entry(message('hello — ünïcödé ✓ 🎉'), now, HOUR, 1234);
      await tier.set(`key_a:${digest(1)}`, stored);
      expect(await tier.get(`key_a:${digest(1)}`, now)).toEqual(stored);
      expect(await tier.get(`key_a:${digest(2)}`, now)).toBeUndefined();
      expect(await tier.get(`key_b:${digest(1)}`, now)).toBeUndefined();
      // A body that needs no parsing: text that is not JSON, with newlines and a header-like line.
      const odd = entry('1 2 3 4\nnot json\r\n', now, HOUR, 0);
      await tier.set(`key_a:${digest(3)}`, odd);
      expect(await tier.get(`key_a:${digest(3)}`, now)).toEqual(odd);
    });

    it('stores a large body (2 MB)', async () => {
      const tier = await openTier();
      const now = Date.now();
      const big = entry(message('x'.repeat(2_000_000)), now);
      await tier.set(`key_a:${digest(9)}`, big);
      expect((await tier.get(`key_a:${digest(9)}`, now))?.body).toBe(big.body);
    });

    it('serves an entry until its expiresAt and never from then on, judged by the caller\'s now', async () => {
      const tier = await openTier();
      const t = Date.now();
      const stored = entry(message('expiring'), t, 60_000);
      await tier.set(`key_a:${digest(1)}`, stored);
      expect(await tier.get(`key_a:${digest(1)}`, t)).toEqual(stored);
      expect(await tier.get(`key_a:${digest(1)}`, t + 59_999)).toEqual(stored);
      expect(await tier.get(`key_a:${digest(1)}`, t + 60_000)).toBeUndefined();
      expect(await tier.get(`key_a:${digest(1)}`, t + 10 * HOUR)).toBeUndefined();
    });

    it('overwrites an entry: the last one set is served and counted once', async () => {
      const tier = await openTier();
      const now = Date.now();
      await tier.set(`key_a:${digest(1)}`, entry(message('first'), now, HOUR, 1));
      const second = entry(message('second, longer than the first'), now + 5, HOUR, 2);
      await tier.set(`key_a:${digest(1)}`, second);
      expect(await tier.get(`key_a:${digest(1)}`, now + 5)).toEqual(second);
      const stats = await tier.stats();
      expect(stats.entries).toBe(1);
      expect(stats.bytes).toBeGreaterThanOrEqual(entrySize(`key_a:${digest(1)}`, second.body));
    });

    it('purges one scope exactly (not a scope it is a prefix of, glob characters taken literally), or everything', async () => {
      const tier = await openTier();
      const now = Date.now();
      const keys = [`key_a:${digest(1)}`, `key_a:${digest(2)}`, `key_ab:${digest(1)}`, `key_b:${digest(1)}`, `grp*:${digest(1)}`, `grpX:${digest(1)}`];
      for (const key of keys) await tier.set(key, entry(message(key), now));
      expect(await tier.purge('key_a')).toBe(2);
      expect(await tier.get(`key_a:${digest(1)}`, now)).toBeUndefined();
      expect(await tier.get(`key_ab:${digest(1)}`, now)).toBeDefined();
      expect(await tier.purge('grp*')).toBe(1);
      expect(await tier.get(`grpX:${digest(1)}`, now)).toBeDefined();
      expect(await tier.purge('nobody')).toBe(0);
      expect((await tier.stats()).entries).toBe(3);
      expect(await tier.purge()).toBe(3);
      expect(await tier.stats()).toEqual({ entries: 0, bytes: 0 });
      for (const key of keys) expect(await tier.get(key, now)).toBeUndefined();
    });

    it('counts its entries and their bytes (key + body + a fixed overhead; Redis adds its value header)', async () => {
      const tier = await openTier();
      expect(await tier.stats()).toEqual({ entries: 0, bytes: 0 });
      const now = Date.now();
      let expected = 0;
      for (let i = 0; i < 50; i++) {
        const key = `key_${i % 3}:${digest(i)}`;
        const body = message('é'.repeat(i * 10));
        expected += entrySize(key, body);
        await tier.set(key, entry(body, now));
      }
      const stats: CacheStats = await tier.stats();
      expect(stats.entries).toBe(50);
      expect(stats.bytes).toBeGreaterThanOrEqual(expected - 50 * 32);
      expect(stats.bytes).toBeLessThanOrEqual(expected + 50 * 64);
    });
  });
});

describe('MemoryCacheTier', () => {
  it('holds its byte bound while 100k distinct entries go in, evicting the least recently used', () => {
    const maxBytes = 4 * 1024 * 1024;
    const tier = new MemoryCacheTier({ maxBytes });
    const now = Date.now();
    const hot = `key_hot:${digest(0)}`;
    tier.put(hot, entry(message('hot'), now));
    let peak = 0;
    const started = performance.now();
    for (let i = 1; i <= 100_000; i++) {
      tier.put(`key_${i % 7}:${digest(i)}`, entry(message('y'.repeat(i % 997)), now));
      if (i % 50 === 0) expect(tier.peek(hot, now)).toBeDefined(); // used now and then: never the oldest
      peak = Math.max(peak, tier.statsSync().bytes);
    }
    const ms = performance.now() - started;
    const stats = tier.statsSync();
    console.info(`[memory tier] 100k puts into ${maxBytes} B: peak ${peak} B (${((peak / maxBytes) * 100).toFixed(2)} %), ${stats.entries} entries kept, ${((ms * 1000) / 100_000).toFixed(2)} µs per put+peek`);
    expect(peak).toBeLessThanOrEqual(maxBytes);
    expect(peak).toBeGreaterThan(maxBytes * 0.99);
    expect(stats.entries).toBeGreaterThan(1000);
    expect(stats.entries).toBeLessThan(100_000);
    expect(tier.peek(`key_1:${digest(1)}`, now)).toBeUndefined(); // the oldest went first
    expect(tier.peek(`key_${100_000 % 7}:${digest(100_000)}`, now)).toBeDefined();
  });

  it('evicts in recency order: a read entry outlives an older unread one', () => {
    const now = Date.now();
    const a = entry('a'.repeat(100), now);
    const size = entrySize('s:a', a.body);
    const tier = new MemoryCacheTier({ maxBytes: size * 3 });
    tier.put('s:a', a);
    tier.put('s:b', entry('b'.repeat(100), now));
    tier.put('s:c', entry('c'.repeat(100), now));
    expect(tier.peek('s:a', now)).toBeDefined();
    tier.put('s:d', entry('d'.repeat(100), now));
    expect(tier.peek('s:b', now)).toBeUndefined();
    expect(['s:a', 's:c', 's:d'].every((k) => tier.peek(k, now))).toBe(true);
    expect(tier.statsSync()).toEqual({ entries: 3, bytes: size * 3 });
  });

  it('drops an expired entry when met and in a sweep, and keeps nothing bigger than its whole budget', () => {
    const now = Date.now();
    const tier = new MemoryCacheTier({ maxBytes: 10_000 });
    tier.put('s:short', entry('x', now, 1000));
    tier.put('s:long', entry('y', now, 5000));
    tier.put('s:later', entry('z', now, 9000));
    expect(tier.peek('s:short', now + 1000)).toBeUndefined();
    expect(tier.statsSync().entries).toBe(2);
    expect(tier.sweep(now + 5000)).toBe(1);
    expect(tier.statsSync()).toEqual({ entries: 1, bytes: entrySize('s:later', 'z') });
    tier.put('s:huge', entry('h'.repeat(20_000), now));
    expect(tier.peek('s:huge', now)).toBeUndefined();
    expect(tier.statsSync().entries).toBe(1);
  });
});

describe('SqliteCacheTier', () => {
  it('keeps its entries across a close and a reopen, in a 0600 file of its own', async () => {
    const dir = tempDir();
    const now = Date.now();
    const first = await SqliteCacheTier.open(dir, { logger, sweepIntervalMs: 0 });
    const stored = entry(message('persisted'), now, HOUR, 77);
    await first.set(`key_a:${digest(1)}`, stored);
    const before = await first.stats();
    await first.close();
    await first.close(); // idempotent
    expect(await first.get(`key_a:${digest(1)}`, now)).toBeUndefined(); // closed: a miss, not a throw

    for (const file of [CACHE_DB_FILE, `${CACHE_DB_FILE}-wal`, `${CACHE_DB_FILE}-shm`]) {
      try {
        expect(statSync(join(dir, file)).mode & 0o777).toBe(0o600);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    const second = await SqliteCacheTier.open(dir, { logger, sweepIntervalMs: 0 });
    try {
      expect(second.path).toBe(join(dir, CACHE_DB_FILE));
      expect(statSync(second.path).mode & 0o777).toBe(0o600);
      expect(await second.get(`key_a:${digest(1)}`, now)).toEqual(stored);
      expect(await second.stats()).toEqual(before);
    } finally {
      await second.close();
    }
  });

  it('reads on the calling thread in microseconds; a write is readable once set resolves', async () => {
    const tier = await SqliteCacheTier.open(tempDir(), { logger, sweepIntervalMs: 0 });
    try {
      const now = Date.now();
      const body = message('r'.repeat(2000));
      await Promise.all(Array.from({ length: 5000 }, (_, i) => tier.set(`key_${i % 5}:${digest(i)}`, entry(body, now))));
      for (let i = 0; i < 1000; i++) tier.read(`key_${i % 5}:${digest(i)}`, now); // warm
      let started = performance.now();
      for (let i = 0; i < 5000; i++) expect(tier.read(`key_${i % 5}:${digest(i)}`, now)).toBeDefined();
      const hitUs = ((performance.now() - started) * 1000) / 5000;
      started = performance.now();
      for (let i = 0; i < 5000; i++) tier.read(`key_x:${digest(i)}`, now);
      const missUs = ((performance.now() - started) * 1000) / 5000;
      console.info(`[sqlite tier] synchronous read, 5000 entries of 2 KB: hit ${hitUs.toFixed(1)} µs, miss ${missUs.toFixed(1)} µs`);
      expect(hitUs).toBeLessThan(500);
    } finally {
      await tier.close();
    }
  });

  it('a sweep deletes the expired entries (and only those)', async () => {
    const tier = await SqliteCacheTier.open(tempDir(), { logger, sweepIntervalMs: 0 });
    try {
      const t = Date.now();
      for (let i = 0; i < 2500; i++) await tier.set(`key_a:${digest(i)}`, entry(message(`e${i}`), t, i < 2200 ? 1000 : HOUR));
      expect((await tier.stats()).entries).toBe(2500);
      expect(await tier.sweep(t + 999)).toEqual({ expired: 0, trimmed: 0 });
      expect(await tier.sweep(t + 1000)).toEqual({ expired: 2200, trimmed: 0 });
      const stats = await tier.stats();
      expect(stats.entries).toBe(300);
      expect(tier.read(`key_a:${digest(2300)}`, t + 1000)).toBeDefined();
    } finally {
      await tier.close();
    }
  });

  it('the periodic sweep runs by itself', async () => {
    const tier = await SqliteCacheTier.open(tempDir(), { logger, sweepIntervalMs: 50 });
    try {
      await tier.set(`key_a:${digest(1)}`, entry(message('soon gone'), Date.now() - 10_000, 5000));
      await tier.set(`key_a:${digest(2)}`, entry(message('stays'), Date.now(), HOUR));
      expect(await eventually(async () => (await tier.stats()).entries === 1, 3000)).toBe(true);
    } finally {
      await tier.close();
    }
  });

  it('holds its byte budget: past it the oldest written go first', async () => {
    const maxBytes = 256 * 1024;
    const tier = await SqliteCacheTier.open(tempDir(), { logger, sweepIntervalMs: 0, maxBytes });
    try {
      const now = Date.now();
      const body = message('b'.repeat(1000));
      let peak = 0;
      for (let i = 0; i < 1000; i++) {
        await tier.set(`key_a:${digest(i)}`, entry(body, now));
        if (i % 25 === 0) peak = Math.max(peak, (await tier.stats()).bytes);
      }
      const stats = await tier.stats();
      expect(Math.max(peak, stats.bytes)).toBeLessThanOrEqual(maxBytes);
      expect(stats.bytes).toBeGreaterThan(maxBytes * 0.85);
      expect(tier.read(`key_a:${digest(0)}`, now)).toBeUndefined();
      expect(tier.read(`key_a:${digest(999)}`, now)).toBeDefined();
      // A rewrite counts as new: the rewritten entry outlives those written after it first.
      const oldest = 1000 - stats.entries;
      await tier.set(`key_a:${digest(oldest)}`, entry(body, now));
      for (let i = 1000; i < 1030; i++) await tier.set(`key_a:${digest(i)}`, entry(body, now)); // past the 10 % left by the last trim
      expect(tier.read(`key_a:${digest(oldest)}`, now)).toBeDefined();
      expect(tier.read(`key_a:${digest(oldest + 1)}`, now)).toBeUndefined();
    } finally {
      await tier.close();
    }
  });

  it('a writer thread that dies is replaced at the next write; reads never needed it', async () => {
    const tier = await SqliteCacheTier.open(tempDir(), { logger, sweepIntervalMs: 0 });
    try {
      const now = Date.now();
      await tier.set(`key_a:${digest(1)}`, entry(message('before'), now));
      const thread = (tier as unknown as { state: { writer: { worker: import('node:worker_threads').Worker; exited: Promise<void> } } }).state.writer;
      await thread.worker.terminate();
      await thread.exited;
      expect(tier.read(`key_a:${digest(1)}`, now)).toBeDefined();
      await tier.set(`key_a:${digest(2)}`, entry(message('after'), now));
      expect(tier.read(`key_a:${digest(2)}`, now)).toBeDefined();
      expect((await tier.stats()).entries).toBe(2);
    } finally {
      await tier.close();
    }
    await expect(tier.set(`key_a:${digest(3)}`, entry(message('closed'), Date.now()))).rejects.toThrow('closed');
  });

  it('fails to open, naming the directory, where it cannot create its file', async () => {
    const file = join(tempDir(), 'not-a-dir');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(file, '');
    await expect(SqliteCacheTier.open(file, { logger })).rejects.toThrow(`cannot open the SQLite cache in ${file}`);
  });
});

describe.skipIf(!services.redis)('RedisCacheTier', () => {
  it('writes one string per entry under the prefix, expiring with it in Redis', async () => {
    const prefix = redisPrefix();
    const tier = await RedisCacheTier.open(REDIS_URL, { logger, prefix });
    const redis = new Redis(REDIS_URL);
    try {
      const now = Date.now();
      await tier.set(`key_a:${digest(1)}`, entry(message('ttl'), now, 60_000));
      await tier.set(`key_a:${digest(2)}`, entry(message('already expired'), now, 0)); // not written
      expect(await keysUnder(prefix)).toEqual([`${prefix}cache:key_a:${digest(1)}`]);
      const ttl = await redis.pttl(`${prefix}cache:key_a:${digest(1)}`);
      expect(ttl).toBeGreaterThan(55_000);
      expect(ttl).toBeLessThanOrEqual(60_000);
      // Redis drops it by itself.
      await tier.set(`key_a:${digest(3)}`, entry(message('short'), now, 100));
      await sleep(200);
      expect(await redis.exists(`${prefix}cache:key_a:${digest(3)}`)).toBe(0);
      // A value of another format is a miss, not an error.
      await redis.set(`${prefix}cache:key_a:${digest(4)}`, '{"not":"ours"}');
      expect(await tier.get(`key_a:${digest(4)}`, now)).toBeUndefined();
    } finally {
      redis.disconnect();
      await tier.close();
    }
  });

  it('an outage makes reads misses within a second and writes no-ops, never throws, and heals by itself', async () => {
    const proxy = await startTcpProxy(redisTarget());
    const tier = await RedisCacheTier.open(proxy.url('redis'), { logger, prefix: redisPrefix() });
    try {
      const now = Date.now();
      const stored = entry(message('before'), now);
      await tier.set(`key_a:${digest(1)}`, stored);
      expect(await tier.get(`key_a:${digest(1)}`, now)).toEqual(stored);
      const logged = lines.length;

      await proxy.down();
      await sleep(50);
      let started = Date.now();
      expect(await tier.get(`key_a:${digest(1)}`, now)).toBeUndefined();
      await tier.set(`key_a:${digest(2)}`, entry(message('during'), now));
      expect(Date.now() - started).toBeLessThan(1000);
      for (let i = 0; i < 50; i++) expect(await tier.get(`key_a:${digest(1)}`, now)).toBeUndefined();
      await expect(tier.stats()).rejects.toThrow();
      await expect(tier.purge()).rejects.toThrow();
      const warnings = lines.slice(logged).filter((l) => l.msg.includes('unreachable: cache'));
      expect(warnings.length).toBeGreaterThan(0);
      expect(warnings.length).toBeLessThanOrEqual(2); // throttled
      expect(JSON.stringify(warnings)).not.toContain('before'); // no bodies in logs

      // Redis hung: a read waits out the command timeout (500 ms), no longer.
      await proxy.up();
      expect(await eventually(async () => (await tier.get(`key_a:${digest(1)}`, now)) !== undefined, 5000)).toBe(true);
      proxy.hang();
      started = Date.now();
      expect(await tier.get(`key_a:${digest(1)}`, now)).toBeUndefined();
      const hungMs = Date.now() - started;
      expect(hungMs).toBeGreaterThanOrEqual(400);
      expect(hungMs).toBeLessThan(1000);
      proxy.resume();

      started = Date.now();
      expect(await eventually(async () => (await tier.get(`key_a:${digest(1)}`, now)) !== undefined, 5000)).toBe(true);
      await tier.set(`key_a:${digest(3)}`, entry(message('after'), now));
      expect(await tier.get(`key_a:${digest(3)}`, now)).toBeDefined();
      expect(await tier.get(`key_a:${digest(2)}`, now)).toBeUndefined(); // the write during the outage was dropped
    } finally {
      await tier.close();
      await proxy.close();
    }
  });

  it('open() fails quickly, naming the Redis, when nothing listens', async () => {
    const proxy = await startTcpProxy(redisTarget());
    await proxy.down();
    const started = Date.now();
    await expect(RedisCacheTier.open(`redis://:pw@127.0.0.1:${proxy.port}`, { logger })).rejects.toThrow(`Redis 127.0.0.1:${proxy.port} is not reachable (cache)`);
    expect(Date.now() - started).toBeLessThan(3000);
    await proxy.close();
  });

  it('is a lock per key: claimed once, refreshed and released only by its holder, marked failed on request', async () => {
    const prefix = redisPrefix();
    const a = await RedisCacheTier.open(REDIS_URL, { logger, prefix });
    const b = await RedisCacheTier.open(REDIS_URL, { logger, prefix });
    const redis = new Redis(REDIS_URL);
    try {
      const key = `key_a:${digest(1)}`;
      expect(await a.lockState(key)).toBe('free');
      expect(await a.claim(key, 300)).toBe(true);
      expect(await b.claim(key, 300)).toBe(false);
      expect(await b.lockState(key)).toBe('held');
      await b.release(key, false); // not b's: nothing happens
      await b.refresh(key, 10_000);
      expect(await redis.pttl(`${prefix}cache-lock:${key}`)).toBeLessThanOrEqual(300);
      await a.refresh(key, 10_000);
      expect(await redis.pttl(`${prefix}cache-lock:${key}`)).toBeGreaterThan(9000);
      await a.release(key, true);
      expect(await b.lockState(key)).toBe('failed');
      expect(await b.claim(key, 300)).toBe(false);
      expect(await redis.pttl(`${prefix}cache-lock:${key}`)).toBeLessThanOrEqual(FAILED_MARK_MS);
      await redis.del(`${prefix}cache-lock:${key}`);
      expect(await b.claim(key, 300)).toBe(true);
      await b.release(key, false);
      expect(await a.lockState(key)).toBe('free');
      // Locks are not entries: stats and purge leave them alone.
      expect(await a.claim(key, 5000)).toBe(true);
      expect(await a.stats()).toEqual({ entries: 0, bytes: 0 });
      expect(await a.purge()).toBe(0);
      expect(await a.lockState(key)).toBe('held');
    } finally {
      redis.disconnect();
      await Promise.all([a.close(), b.close()]);
    }
  });
});

/** A shared tier over a MemoryCacheTier whose reads take `delayMs` and which counts them; failing on demand. */
class SlowTier implements CacheTier {
  readonly name = 'slow';
  readonly inner = new MemoryCacheTier();
  reads = 0;
  failing = false;
  private readonly delayMs: number;
  constructor(delayMs: number) {
    this.delayMs = delayMs;
  }
  async get(key: string, now: number) {
    this.reads++;
    await sleep(this.delayMs);
    if (this.failing) throw new Error('shared tier down');
    return this.inner.get(key, now);
  }
  async set(key: string, e: CacheEntry) {
    await sleep(this.delayMs);
    if (this.failing) throw new Error('shared tier down');
    return this.inner.set(key, e);
  }
  purge(scope?: string) {
    return this.inner.purge(scope);
  }
  stats() {
    return this.inner.stats();
  }
  close() {
    return this.inner.close();
  }
}

const leads = (results: Lookup[]): Lead[] => results.flatMap((r) => ('lead' in r ? [r.lead] : []));
const hits = (results: Lookup[]) => results.flatMap((r) => ('hit' in r ? [r] : []));

describe('TieredCache', () => {
  it('fits the pipeline stage\'s ResponseCache', () => {
    const cache: ResponseCache = new TieredCache({ memory: new MemoryCacheTier(), logger });
    expect(cache).toBeDefined();
  });

  it('a shared hit fills memory; a set lands in memory at once and in the shared tier in the background', async () => {
    const shared = new SlowTier(5);
    const cache = new TieredCache({ memory: new MemoryCacheTier(), shared, logger });
    const now = Date.now();
    const stored = entry(message('shared'), now);
    await shared.inner.set(`key_a:${digest(1)}`, stored);

    expect(await cache.lookupOrLead(`key_a:${digest(1)}`, now)).toEqual({ hit: stored, from: 'shared' });
    expect(cache.memory.peek(`key_a:${digest(1)}`, now)).toEqual(stored);
    expect(await cache.lookupOrLead(`key_a:${digest(1)}`, now)).toEqual({ hit: stored, from: 'memory' });
    expect(shared.reads).toBe(1);

    const fresh = entry(message('fresh'), now);
    cache.set(`key_a:${digest(2)}`, fresh);
    expect(await cache.get(`key_a:${digest(2)}`, now)).toEqual(fresh);
    expect(await shared.inner.get(`key_a:${digest(2)}`, now)).toBeUndefined(); // not yet: not awaited
    await sleep(30);
    expect(await shared.inner.get(`key_a:${digest(2)}`, now)).toEqual(fresh);

    expect(await cache.stats()).toEqual({
      memory: { entries: 2, bytes: entrySize(`key_a:${digest(1)}`, stored.body) + entrySize(`key_a:${digest(2)}`, fresh.body) },
      slow: await shared.inner.stats(),
    });
    expect(await cache.purge('key_a')).toEqual({ memory: 2, slow: 2 });
    expect(await cache.get(`key_a:${digest(1)}`, now)).toBeUndefined();
  });

  it('a failing shared tier is a miss and a dropped write, logged, never an error', async () => {
    const shared = new SlowTier(1);
    shared.failing = true;
    const cache = new TieredCache({ memory: new MemoryCacheTier(), shared, logger });
    const now = Date.now();
    const logged = lines.length;
    const found = await cache.lookupOrLead(`key_a:${digest(1)}`, now);
    expect('lead' in found).toBe(true);
    if ('lead' in found) found.lead.publish(entry(message('kept in memory'), now));
    await sleep(20);
    expect(await cache.get(`key_a:${digest(1)}`, now)).toBeDefined();
    expect(lines.slice(logged).some((l) => l.msg === 'cache: shared tier read failed')).toBe(true);
  });

  it('single flight: 20 identical lookups at once make one leader, and the others are served its answer', async () => {
    const shared = new SlowTier(10);
    const cache = new TieredCache({ memory: new MemoryCacheTier(), shared, logger });
    const now = Date.now();
    const key = `key_a:${digest(1)}`;
    const pending = Array.from({ length: 20 }, () => cache.lookupOrLead(key, now));
    const settled: Lookup[] = [];
    pending.forEach((p) => void p.then((r) => settled.push(r)));
    // An identical request of another tenant is another flight.
    const other = await cache.lookupOrLead(`key_b:${digest(1)}`, now);
    expect('lead' in other).toBe(true);
    expect(cache.inFlight).toBe(2);
    // The leader's lookup settles once the shared tier has answered; the others wait on.
    await eventually(async () => settled.length > 0, 5000);
    await sleep(30);
    expect(settled).toHaveLength(1);
    const [lead] = leads(settled);
    expect(lead).toBeDefined();
    expect(lead!.shared).toBe(true);
    expect(shared.reads).toBe(2); // one per flight, not one per lookup

    const answer = entry(message('the one answer'), now, HOUR, 99);
    lead!.publish(answer);
    lead!.publish(entry(message('ignored'), now)); // once
    lead!.abandon(); // after publish: nothing
    const results = await Promise.all(pending);
    expect(leads(results)).toHaveLength(1);
    const served = hits(results);
    expect(served).toHaveLength(19);
    for (const r of served) expect(r).toEqual({ hit: answer, from: 'flight' });
    expect(cache.inFlight).toBe(1);
    expect(await cache.lookupOrLead(key, now)).toEqual({ hit: answer, from: 'memory' });
    await sleep(30);
    expect(await shared.inner.get(key, now)).toEqual(answer);
    if ('lead' in other) other.lead.abandon();
    expect(cache.inFlight).toBe(0);
  });

  it('a leader that fails releases its waiters, each to go upstream itself', async () => {
    const cache = new TieredCache({ memory: new MemoryCacheTier(), shared: new SlowTier(5), logger });
    const now = Date.now();
    const key = `key_a:${digest(1)}`;
    const first = await cache.lookupOrLead(key, now);
    if (!('lead' in first)) throw new Error('expected a lead');
    const waiting = Array.from({ length: 19 }, () => cache.lookupOrLead(key, now));
    await sleep(20);
    first.lead.abandon();
    const results = await Promise.all(waiting);
    const own = leads(results);
    expect(own).toHaveLength(19);
    expect(own.every((l) => !l.shared && l.key === key)).toBe(true);
    expect(cache.inFlight).toBe(0);
    // A waiter's own answer is stored like any other.
    const answer = entry(message('from a released waiter'), now);
    own[3]!.publish(answer);
    own[4]!.abandon();
    expect(await cache.lookupOrLead(key, now)).toEqual({ hit: answer, from: 'memory' });
  });

  it('a waiter waits at most its waitMs, or until its request goes away', async () => {
    const cache = new TieredCache({ memory: new MemoryCacheTier(), logger, waitMs: 5000 });
    const now = Date.now();
    const key = `key_a:${digest(1)}`;
    const first = await cache.lookupOrLead(key, now);
    if (!('lead' in first)) throw new Error('expected a lead');
    let started = Date.now();
    const timedOut = await cache.lookupOrLead(key, now, { waitMs: 100 });
    expect('lead' in timedOut && !timedOut.lead.shared).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(90);
    expect(Date.now() - started).toBeLessThan(1000);

    const gone = new AbortController();
    started = Date.now();
    const aborted = cache.lookupOrLead(key, now, { signal: gone.signal });
    setTimeout(() => gone.abort(), 50);
    expect('lead' in (await aborted)).toBe(true);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(cache.inFlight).toBe(1); // the leader still runs
    first.lead.publish(entry(message('late'), now));
    expect('hit' in (await cache.lookupOrLead(key, now))).toBe(true);
  });

  it('close() abandons the flights still running', async () => {
    const cache = new TieredCache({ memory: new MemoryCacheTier(), logger });
    const now = Date.now();
    await cache.lookupOrLead(`key_a:${digest(1)}`, now);
    const waiter = cache.lookupOrLead(`key_a:${digest(1)}`, now);
    await cache.close();
    expect('lead' in (await waiter)).toBe(true);
  });

  describe.each([
    { name: 'SQLite', available: true, open: () => SqliteCacheTier.open(tempDir(), { logger, sweepIntervalMs: 0 }) },
    { name: 'Redis', available: services.redis, open: () => RedisCacheTier.open(REDIS_URL, { logger, prefix: redisPrefix() }) },
  ])('over the real $name tier', ({ available, open }) => {
    it.skipIf(!available)('publishes to the shared tier, where a fresh instance (a restart, another instance) finds it', async () => {
      const shared = await open();
      const cache = new TieredCache({ memory: new MemoryCacheTier(), shared, logger });
      const now = Date.now();
      const key = `key_a:${digest(7)}`;
      const pending = Array.from({ length: 20 }, () => cache.lookupOrLead(key, now));
      const first = await Promise.race(pending);
      if (!('lead' in first)) throw new Error('expected a lead');
      const answer = entry(message('shared answer'), now);
      first.lead.publish(answer);
      const results = await Promise.all(pending);
      expect(leads(results)).toHaveLength(1);
      expect(hits(results)).toHaveLength(19);
      await eventually(async () => (await shared.get(key, now)) !== undefined, 2000);
      const fresh = new TieredCache({ memory: new MemoryCacheTier(), shared, logger });
      expect(await fresh.lookupOrLead(key, now)).toEqual({ hit: answer, from: 'shared' });
      expect((await fresh.stats()).memory!.entries).toBe(1);
      await cache.close(); // closes the shared tier too
    });
  });

  describe.skipIf(!services.redis)('across instances, with the Redis lock', () => {
    /** `count` gateway instances sharing one Redis prefix: each its own memory, connection and lock. */
    async function instances(count: number, options: { lockTtlMs?: number; waitMs?: number } = {}) {
      const prefix = redisPrefix();
      const caches: TieredCache[] = [];
      for (let i = 0; i < count; i++) {
        const tier = await RedisCacheTier.open(REDIS_URL, { logger, prefix });
        caches.push(new TieredCache({ memory: new MemoryCacheTier(), shared: tier, lock: tier, logger, pollMs: 20, ...options }));
      }
      return { prefix, caches, close: () => Promise.all(caches.map((c) => c.close())) };
    }

    it('identical requests on three instances at once make one upstream call', async () => {
      const { caches, close } = await instances(3);
      try {
        const now = Date.now();
        const key = `key_a:${digest(1)}`;
        const pending = caches.flatMap((c) => Array.from({ length: 10 }, () => c.lookupOrLead(key, now)));
        const settled: Lookup[] = [];
        pending.forEach((p) => void p.then((r) => settled.push(r)));
        await eventually(async () => settled.length > 0, 5000);
        await sleep(100); // the other instances poll (every 20 ms) meanwhile and find nothing
        const [lead] = leads(settled);
        expect(settled).toHaveLength(1);
        const answer = entry(message('once for all'), now);
        lead!.publish(answer);
        const results = await Promise.all(pending);
        expect(leads(results)).toHaveLength(1);
        expect(hits(results)).toHaveLength(29);
        for (const r of hits(results)) expect(r.hit).toEqual(answer);
        expect(caches.map((c) => c.inFlight)).toEqual([0, 0, 0]);
      } finally {
        await close();
      }
    });

    it('a leader that fails sends the other instances upstream; a lapsed claim (a crashed instance) is taken over', async () => {
      const { prefix, caches, close } = await instances(2, { lockTtlMs: 300 });
      const redis = new Redis(REDIS_URL);
      try {
        const now = Date.now();
        const key = `key_a:${digest(1)}`;
        const first = await caches[0]!.lookupOrLead(key, now);
        if (!('lead' in first)) throw new Error('expected a lead');
        const elsewhere = caches[1]!.lookupOrLead(key, now);
        await sleep(100);
        first.lead.abandon();
        const released = await elsewhere;
        expect('lead' in released).toBe(true);
        if ('lead' in released) released.lead.abandon();

        // A claim nobody refreshes (its instance died) lapses; then the waiting instance leads.
        const other = `key_a:${digest(2)}`;
        await redis.set(`${prefix}cache-lock:${other}`, 'dead-instance', 'PX', 300);
        const started = Date.now();
        const took = await caches[1]!.lookupOrLead(other, now);
        expect('lead' in took).toBe(true);
        expect(Date.now() - started).toBeGreaterThanOrEqual(250);
        expect(Date.now() - started).toBeLessThan(2000);
        expect(await redis.get(`${prefix}cache-lock:${other}`)).not.toBe('dead-instance');
        // Held past its TTL while the leader runs: refreshed.
        await sleep(500);
        expect(await redis.exists(`${prefix}cache-lock:${other}`)).toBe(1);
        if ('lead' in took) took.lead.publish(entry(message('after the takeover'), now));
        expect(await eventually(async () => (await redis.exists(`${prefix}cache-lock:${other}`)) === 0, 2000)).toBe(true);
        expect(await caches[0]!.lookupOrLead(other, now)).toMatchObject({ from: 'shared' });
      } finally {
        redis.disconnect();
        await close();
      }
    });
  });
});
