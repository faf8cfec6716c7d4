/**
 * What only the Redis limiter has to show (the shared semantics are test/limits-contract.test.ts):
 * several instances behave as one; leases free the slots of a killed instance within their TTL
 * and stay held while the request lives; load() runs once for instances starting together;
 * per-key state carries TTLs; and an outage (Redis gone, or hung) fails fast with a 503 or
 * passes unmetered when failing open, never crashes, and heals when Redis returns.
 */
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { LimitsUnavailableError, RateLimitError } from '../src/errors.ts';
import { describeRedis } from '../src/limits/redis-client.ts';
import { RedisRateLimiter, type RedisRateLimiterOptions } from '../src/limits/redis.ts';
import type { ReadBuckets } from '../src/limits/types.ts';
import type { KeyRecord } from '../src/store/types.ts';
import { keyRecord as fixtureKey, startTcpProxy, type TcpProxy } from './fixtures.ts';
import { capturedLogger, deleteKeys, keysUnder } from './limits-redis-helpers.ts';
import { freePort } from './ports.ts';
import { REDIS_URL, services, testRedisPrefix } from './services.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const SOFT = { checkBudget: true, reserveTokens: 0 };

/** The fixture key under its own id, which the Redis key names below spell out. */
const keyRecord = (over: Partial<KeyRecord> = {}): KeyRecord => fixtureKey({ id: 'key_redis', ...over });

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Retries `attempt` every 50 ms until it resolves or `withinMs` passes; returns the ms it took. */
async function eventually<T>(attempt: () => Promise<T>, withinMs: number): Promise<{ value: T; ms: number }> {
  const started = Date.now();
  for (;;) {
    try {
      return { value: await attempt(), ms: Date.now() - started };
    } catch (err) {
      if (Date.now() - started > withinMs) throw err;
      await sleep(50);
    }
  }
}

describe.skipIf(!services.redis)('RedisRateLimiter', () => {
  const opened: RedisRateLimiter[] = [];
  const prefixes: string[] = [];
  const { logger, lines } = capturedLogger('info');

  /** A limiter on `prefix` (a fresh one by default), closed and cleaned up after the test. */
  async function open(options: Partial<RedisRateLimiterOptions> & { prefix?: string; url?: string } = {}): Promise<RedisRateLimiter> {
    const prefix = options.prefix ?? testRedisPrefix('limits');
    if (!prefixes.includes(prefix)) prefixes.push(prefix);
    const limiter = await RedisRateLimiter.open(options.url ?? REDIS_URL, { logger, failOpen: false, leaseTtlMs: 30_000, ...options, prefix });
    opened.push(limiter);
    return limiter;
  }

  afterEach(async () => {
    await Promise.all(opened.splice(0).map((l) => l.close()));
    await Promise.all(prefixes.splice(0).map((p) => deleteKeys(p)));
  });

  describe('instances behave as one', () => {
    it('rpm 10 across two instances: exactly 10 of 30 requests are admitted', async () => {
      const prefix = testRedisPrefix('limits');
      const [a, b] = [await open({ prefix }), await open({ prefix })];
      const key = keyRecord({ rpm: 10 });
      const now = Date.now();
      const results = await Promise.allSettled(Array.from({ length: 30 }, (_, i) => (i % 2 ? a : b).admit(key, now + i, SOFT)));
      const admitted = results.filter((r) => r.status === 'fulfilled');
      expect(admitted).toHaveLength(10);
      for (const r of results) {
        if (r.status === 'fulfilled') r.value.finish(0);
        else expect((r.reason as Error).message).toBe('Rate limit exceeded: this key allows 10 requests per minute.');
      }
      // Both instances admitted some: the window really was shared.
      const remaining = admitted.map((r) => (r as PromiseFulfilledResult<{ headers: Record<string, string> }>).value.headers['x-ratelimit-remaining']);
      expect(new Set(remaining).size).toBe(10);
    });

    it('concurrency 2 across two instances', async () => {
      const prefix = testRedisPrefix('limits');
      const [a, b] = [await open({ prefix }), await open({ prefix })];
      const key = keyRecord({ concurrent: 2 });
      const now = Date.now();
      const first = await a.admit(key, now, SOFT);
      const second = await b.admit(key, now, SOFT);
      await expect(a.admit(key, now, SOFT)).rejects.toThrow('this key allows 2 at a time');
      await expect(b.admit(key, now, SOFT)).rejects.toThrow('this key allows 2 at a time');
      first.finish(0);
      const third = await b.admit(key, now + 1, SOFT);
      await expect(a.admit(key, now + 1, SOFT)).rejects.toBeInstanceOf(RateLimitError);
      second.finish(0);
      third.finish(0);
    });

    it('a budget billed on one instance refuses on the other; strict reservations are shared', async () => {
      const prefix = testRedisPrefix('limits');
      const [a, b] = [await open({ prefix }), await open({ prefix })];
      const key = keyRecord({ budgetTokens: 1000 });
      const now = Date.now();
      const spent = await a.admit(key, now, SOFT);
      spent.finish(400);
      await sleep(20); // finish is sent without waiting; give it its round trip
      expect(await b.budget(key, now + 1)).toMatchObject({ used: 400, remaining: 600 });

      const held = await a.admit(key, now + 2, { checkBudget: true, reserveTokens: 500 });
      await expect(b.admit(key, now + 3, { checkBudget: true, reserveTokens: 200 })).rejects.toThrow(
        'Token budget exceeded: requests in flight hold 500 of the 600 tokens left. Retry when they finish.',
      );
      held.finish(600);
      await sleep(20);
      await expect(b.admit(key, now + 4, SOFT)).rejects.toThrow(/^Token budget exceeded\. Resets in /);
    });

    it('restoreWindow on two instances at once adds the usage once', async () => {
      const prefix = testRedisPrefix('limits');
      const [a, b] = [await open({ prefix }), await open({ prefix })];
      const now = Date.now();
      const key = keyRecord({ budgetTokens: 10_000, windowSeconds: 5 * 3600 });
      const read: ReadBuckets = async () => {
        await sleep(30);
        return [{ keyId: key.id, minute: Math.floor((now - 3 * HOUR) / MINUTE), tokens: 700 }];
      };
      await Promise.all([a.restoreWindow(key, now, read), b.restoreWindow(key, now, read), a.restoreWindow(key, now, read)]);
      expect(await b.budget(key, now)).toMatchObject({ used: 700 });
    });
  });

  describe('leases', () => {
    it("a killed instance's slots and reservations free within the lease TTL; a living one keeps its own", async () => {
      const prefix = testRedisPrefix('limits');
      const ttl = 800;
      const alive = await open({ prefix, leaseTtlMs: ttl });
      const killed = await open({ prefix, leaseTtlMs: ttl });
      const other = await open({ prefix, leaseTtlMs: ttl });
      const slots = keyRecord({ id: 'key_slots', concurrent: 2 });
      const budget = keyRecord({ id: 'key_budget', budgetTokens: 1000 });
      const clock = () => Date.now();

      const kept = await alive.admit(slots, clock(), SOFT);
      await killed.admit(slots, clock(), SOFT);
      await killed.admit(budget, clock(), { checkBudget: true, reserveTokens: 800 });
      await expect(other.admit(slots, clock(), SOFT)).rejects.toThrow(/at a time/);
      await expect(other.admit(budget, clock(), { checkBudget: true, reserveTokens: 300 })).rejects.toThrow(/hold 800/);

      // Killed: its connection closes and nobody refreshes or finishes its admissions.
      const killedAt = Date.now();
      await killed.close();
      const freed = await eventually(() => other.admit(slots, clock(), SOFT), 2 * ttl);
      // Within the TTL, plus the polling's slack.
      expect(Date.now() - killedAt).toBeLessThan(ttl + 400);
      const reserved = await eventually(() => other.admit(budget, clock(), { checkBudget: true, reserveTokens: 1000 }), 2 * ttl);
      reserved.value.finish(0);

      // Two TTLs later the living instance's lease (refreshed every TTL/3) still holds its slot.
      await sleep(2 * ttl);
      await expect(other.admit(slots, clock(), SOFT)).rejects.toThrow(/at a time/);
      kept.finish(0);
      freed.value.finish(0);
      await sleep(20);
      (await other.admit(slots, clock(), SOFT)).finish(0);
    });
  });

  describe('load', () => {
    it('runs once for instances starting together, not again while Redis holds the budgets, again after Redis lost them', async () => {
      const prefix = testRedisPrefix('limits');
      const now = Date.now();
      const key = keyRecord({ budgetTokens: 10_000 });
      const read = vi.fn<ReadBuckets>(async () => {
        await sleep(150);
        return [
          { keyId: key.id, minute: Math.floor((now - 10 * MINUTE) / MINUTE), tokens: 300 },
          { keyId: key.id, minute: Math.floor((now - 5 * MINUTE) / MINUTE), tokens: 200 },
          { keyId: 'key_else', minute: Math.floor((now - 5 * MINUTE) / MINUTE), tokens: 5 },
        ];
      });
      const starting = await Promise.all([open({ prefix }), open({ prefix }), open({ prefix })]);
      await Promise.all(starting.map((l) => l.load(read, now - HOUR)));
      expect(read).toHaveBeenCalledTimes(1);
      for (const l of starting) expect(await l.budget(key, now)).toMatchObject({ used: 500 });

      const later = await open({ prefix });
      await later.load(read, now - HOUR);
      expect(read).toHaveBeenCalledTimes(1);

      // Redis restarted empty: the next instance to start loads again.
      await deleteKeys(prefix);
      const afterLoss = await open({ prefix });
      await afterLoss.load(read, now - HOUR);
      expect(read).toHaveBeenCalledTimes(2);
      expect(await later.budget(key, now)).toMatchObject({ used: 500 });
    });

    it('takes over from a loader that died, without counting twice what it had loaded', async () => {
      const prefix = testRedisPrefix('limits');
      const now = Date.now();
      const key = keyRecord({ budgetTokens: 10_000 });
      const buckets = [{ keyId: key.id, minute: Math.floor((now - 10 * MINUTE) / MINUTE), tokens: 300 }];
      const first = await open({ prefix });
      // A loader that got as far as this key, then died holding the marker for 300 ms.
      await first.restoreWindow(key, now, async () => buckets);
      const redis = new Redis(REDIS_URL);
      await redis.set(`${prefix}limits:loaded`, 'loading ghost', 'PX', 300);
      redis.disconnect();
      const started = Date.now();
      const read = vi.fn<ReadBuckets>(async () => buckets);
      await first.load(read, now - HOUR);
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
      expect(read).toHaveBeenCalledTimes(1);
      expect(await first.budget(key, now)).toMatchObject({ used: 300 });
    });

    it('loads again by itself when it reconnects to a Redis that lost its data', async () => {
      const proxy = await startTcpProxy(redisTarget());
      try {
        const prefix = testRedisPrefix('limits');
        const limiter = await open({ prefix, url: proxy.url('redis') });
        const now = Date.now();
        const key = keyRecord({ budgetTokens: 10_000 });
        const read = vi.fn<ReadBuckets>(async () => [{ keyId: key.id, minute: Math.floor((now - 10 * MINUTE) / MINUTE), tokens: 300 }]);
        await limiter.load(read, now - HOUR);
        await deleteKeys(prefix); // a restart without persistence…
        await proxy.down(); // …drops every connection
        await proxy.up();
        const { value } = await eventually(async () => {
          const status = await limiter.budget(key, now);
          if (status.used !== 300) throw new Error(`used ${status.used}`);
          return status;
        }, 5000);
        expect(value.used).toBe(300);
        expect(read).toHaveBeenCalledTimes(2);
      } finally {
        await proxy.close();
      }
    });
  });

  it("keeps every key's state bounded: TTLs on all of it, buckets pruned as they leave the window", async () => {
    const prefix = testRedisPrefix('limits');
    const limiter = await open({ prefix, leaseTtlMs: 10_000 });
    const key = keyRecord({ budgetTokens: 1000, windowSeconds: 120 });
    const now = Date.now();
    const held = await limiter.admit(key, now, { checkBudget: true, reserveTokens: 100 });
    (await limiter.admit(key, now, SOFT)).finish(50);
    await sleep(20);
    const redis = new Redis(REDIS_URL);
    try {
      const keys = (await keysUnder(prefix)).sort();
      expect(keys.map((k) => k.slice(prefix.length))).toEqual(['limits:{key_redis}:lease', 'limits:{key_redis}:min', 'limits:{key_redis}:res', 'limits:{key_redis}:rpm', 'limits:{key_redis}:tok']);
      const ttls = Object.fromEntries(await Promise.all(keys.map(async (k) => [k.slice(prefix.length + 'limits:{key_redis}:'.length), await redis.pttl(k)])));
      expect(ttls.rpm).toBeGreaterThan(MINUTE);
      expect(ttls.rpm).toBeLessThanOrEqual(MINUTE + 5000);
      expect(ttls.lease).toBeGreaterThan(10_000);
      expect(ttls.lease).toBeLessThanOrEqual(15_000);
      expect(ttls.res).toBeGreaterThan(10_000);
      expect(ttls.tok).toBeGreaterThan(120_000);
      expect(ttls.tok).toBeLessThanOrEqual(120_000 + 2 * MINUTE);
      expect(Math.abs(ttls.min - ttls.tok)).toBeLessThan(1000); // set together

      held.finish(0);
      // Once the minute has left the window, its bucket is gone, not just ignored.
      expect(await limiter.budget(key, now + 4 * MINUTE)).toMatchObject({ used: 0 });
      expect(await redis.zcard(`${prefix}limits:{key_redis}:min`)).toBe(0);
      expect(await redis.hkeys(`${prefix}limits:{key_redis}:tok`)).toEqual(expect.arrayContaining(['t', 'c']));
      expect(await redis.hlen(`${prefix}limits:{key_redis}:tok`)).toBe(2);
      expect(await redis.hlen(`${prefix}limits:{key_redis}:res`)).toBe(0);
    } finally {
      redis.disconnect();
    }
  });

  it('names its Redis without credentials', async () => {
    expect(describeRedis('redis://user:secret@cache.internal:6380/2')).toBe('Redis cache.internal:6380');
    expect(describeRedis('rediss://:secret@cache.internal')).toBe('Redis cache.internal:6379');
    const limiter = await open();
    expect(limiter.description).toBe(`Redis ${new URL(REDIS_URL).hostname}:${new URL(REDIS_URL).port || '6379'}`);
  });

  describe('Redis unreachable', () => {
    let proxy: TcpProxy;

    beforeAll(async () => {
      proxy = await startTcpProxy(redisTarget());
    });

    afterAll(async () => {
      await proxy.close();
    });

    it('fails fast with a 503 (or unmetered when failing open), never crashes, and heals by itself', async () => {
      await proxy.up();
      const prefix = testRedisPrefix('limits');
      const closed = await open({ prefix, url: proxy.url('redis') });
      const failOpen = await open({ prefix, url: proxy.url('redis'), failOpen: true });
      const key = keyRecord({ budgetTokens: 1000, rpm: 100, concurrent: 1 });
      const openKey = keyRecord({ id: 'key_open', rpm: 100 });
      const before = await closed.admit(key, Date.now(), SOFT);
      const beforeOpen = await failOpen.admit(openKey, Date.now(), SOFT);
      const warnings = lines.length;

      await proxy.down();
      await sleep(50);
      let started = Date.now();
      const err = await closed.admit(key, Date.now(), SOFT).then(() => undefined, (e: unknown) => e);
      expect(Date.now() - started).toBeLessThan(1000);
      expect(err).toBeInstanceOf(LimitsUnavailableError);
      expect(err).toMatchObject({ status: 503, type: 'api_error', message: 'Limits unavailable: the gateway cannot reach its rate-limit store. Try again shortly.' });
      await expect(closed.ping()).rejects.toThrow(/Redis not reachable/);
      await expect(closed.budget(key, Date.now())).rejects.toBeInstanceOf(LimitsUnavailableError);
      await expect(Promise.resolve(before.reserve(100, Date.now()))).rejects.toBeInstanceOf(LimitsUnavailableError);
      expect(() => before.finish(10)).not.toThrow();

      // Failing open: admitted unmetered, nothing to reserve or finish.
      const unmetered = await failOpen.admit(openKey, Date.now(), { checkBudget: true, reserveTokens: 10 });
      expect(unmetered.headers).toEqual({});
      await unmetered.reserve(500, Date.now());
      unmetered.finish(100);
      await beforeOpen.reserve(100, Date.now()); // an earlier admission's reservation passes too
      beforeOpen.finish(5);

      // A flood of refusals logs a warning every few seconds, not one per request.
      for (let i = 0; i < 20; i++) await closed.admit(key, Date.now(), SOFT).catch(() => {});
      const outageLines = lines.slice(warnings).filter((l) => l.msg.startsWith('Redis unreachable:'));
      expect(outageLines.length).toBeGreaterThan(0);
      expect(outageLines.length).toBeLessThanOrEqual(4);

      // Redis back: the same limiters work again, without being re-created. The finish sent
      // during the outage is sent again: the slot is freed (well before its 30 s lease would
      // expire) and the 10 tokens billed.
      await proxy.up();
      started = Date.now();
      const { value } = await eventually(() => closed.admit(key, Date.now(), SOFT), 5000);
      value.finish(0);
      expect(Date.now() - started).toBeLessThan(3000);
      await closed.ping();
      expect(await closed.budget(key, Date.now())).toMatchObject({ used: 10 });
      const metered = await failOpen.admit(openKey, Date.now(), SOFT);
      expect(metered.headers['x-ratelimit-limit']).toBe('100');
      metered.finish(0);
    });

    it('a Redis that stops answering fails the admission within the command timeout, and the refused request keeps no slot', async () => {
      await proxy.up();
      const limiter = await open({ url: proxy.url('redis') });
      const key = keyRecord({ concurrent: 1 });
      (await limiter.admit(key, Date.now(), SOFT)).finish(0);
      proxy.hang();
      try {
        const started = Date.now();
        await expect(limiter.admit(key, Date.now(), SOFT)).rejects.toBeInstanceOf(LimitsUnavailableError);
        const took = Date.now() - started;
        expect(took).toBeGreaterThanOrEqual(900);
        expect(took).toBeLessThan(2000);
        await expect(limiter.ping()).rejects.toThrow(/Redis not reachable/);
      } finally {
        proxy.resume();
      }
      // The refused admission's script runs late, once Redis answers again, and its release
      // right after it: the key's only slot is free at once, not after the lease TTL.
      (await limiter.admit(key, Date.now(), SOFT)).finish(0);
    });

    it('open() fails quickly, naming the Redis, when nothing listens', async () => {
      const port = await freePort(); // freed again: nothing listens on it
      const started = Date.now();
      await expect(RedisRateLimiter.open(`redis://:pw@127.0.0.1:${port}`, { logger, failOpen: false, leaseTtlMs: 30_000 })).rejects.toThrow(
        `Redis 127.0.0.1:${port} is not reachable`,
      );
      expect(Date.now() - started).toBeLessThan(3000);
    });
  });
});

function redisTarget(): { host: string; port: number } {
  const url = new URL(REDIS_URL);
  return { host: url.hostname, port: Number(url.port || 6379) };
}
