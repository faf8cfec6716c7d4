/**
 * The RateLimiter contract (src/limits/types.ts), run against every implementation: in process
 * (MemoryRateLimiter) and on Redis (RedisRateLimiter, on the machine's Redis, skipped without
 * it). Same assertions, same injected clock (no test sleeps for window arithmetic): rpm sliding
 * window, concurrency, the soft budget, strict reservations, budget() numbers, load() and
 * restoreWindow(). Ported from test/limits.test.ts, which keeps the in-process core's own tests.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidRequestError, RateLimitError } from '../src/errors.ts';
import { formatWait } from '../src/limits/format.ts';
import { MemoryRateLimiter } from '../src/limits/memory.ts';
import { RedisRateLimiter } from '../src/limits/redis.ts';
import type { Admission, RateLimiter, ReadBuckets } from '../src/limits/types.ts';
import { createLogger } from '../src/logger.ts';
import type { BudgetBucket, KeyRecord } from '../src/store/types.ts';
import { keyRecord } from './fixtures.ts';
import { deleteKeys } from './limits-redis-helpers.ts';
import { REDIS_URL, services, testRedisPrefix } from './services.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
/** A minute boundary (midnight UTC), so bucket arithmetic stays readable. */
const T0 = Date.UTC(2026, 0, 1);
const M0 = T0 / MINUTE;

const SOFT = { checkBudget: true, reserveTokens: 0 };
const strict = (reserveTokens: number) => ({ checkBudget: true, reserveTokens });

/** Awaits `work`, expects it to fail with `type` and returns the error. */
async function rejection<T extends Error>(work: Promise<unknown> | (() => unknown), type: new (...args: never[]) => T): Promise<T> {
  const promise = typeof work === 'function' ? Promise.resolve().then(work) : work;
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(type);
  return err as T;
}

const refusal = (work: Promise<unknown> | (() => unknown)) => rejection(work, RateLimitError);

/** A usage store holding what the limiter billed, read back as budget buckets. */
class FakeUsage {
  readonly records: Array<{ keyId: string; ts: number; tokens: number }> = [];
  reads = 0;

  readonly read: ReadBuckets = async ({ sinceMs, untilMs, keyId }) => {
    this.reads++;
    const buckets = new Map<string, BudgetBucket>();
    for (const r of this.records) {
      if (r.ts < sinceMs || (untilMs !== undefined && r.ts >= untilMs) || (keyId !== undefined && r.keyId !== keyId)) continue;
      const minute = Math.floor(r.ts / MINUTE);
      const id = `${r.keyId} ${minute}`;
      const b = buckets.get(id) ?? { keyId: r.keyId, minute, tokens: 0 };
      b.tokens += r.tokens;
      buckets.set(id, b);
    }
    // Any order: the limiters must not rely on the store's.
    return [...buckets.values()].reverse();
  };
}

interface Harness {
  limiter: RateLimiter;
  /** The injected clock: when finish() bills. */
  now: number;
  usage: FakeUsage;
  /** A request admitted and finished at `at`, billing `tokens` (into the limiter and the store). */
  bill(key: KeyRecord, tokens: number, at: number): Promise<void>;
  close(): Promise<void>;
}

interface Implementation {
  name: string;
  available: boolean;
  open(clock: () => number): Promise<{ limiter: RateLimiter; cleanup(): Promise<void> }>;
}

const logger = createLogger('silent');

const IMPLEMENTATIONS: Implementation[] = [
  {
    name: 'MemoryRateLimiter',
    available: true,
    open: async (clock) => ({ limiter: new MemoryRateLimiter({ clock }), cleanup: async () => {} }),
  },
  {
    name: 'RedisRateLimiter',
    available: services.redis,
    open: async (clock) => {
      const prefix = testRedisPrefix('contract');
      // Leases far longer than any test holds one on the injected clock.
      const limiter = await RedisRateLimiter.open(REDIS_URL, { logger, failOpen: false, leaseTtlMs: 10 * MINUTE, prefix, clock });
      return {
        limiter,
        cleanup: async () => {
          await limiter.close();
          await deleteKeys(prefix);
        },
      };
    },
  },
];

describe.each(IMPLEMENTATIONS)('RateLimiter contract: $name', (impl) => {
  describe.skipIf(!impl.available)('with an injected clock', () => {
    let h: Harness;

    beforeEach(async () => {
      const usage = new FakeUsage();
      const state = { now: T0 };
      const { limiter, cleanup } = await impl.open(() => state.now);
      h = {
        limiter,
        get now() {
          return state.now;
        },
        set now(t: number) {
          state.now = t;
        },
        usage,
        async bill(key, tokens, at) {
          state.now = at;
          const admission = await limiter.admit(key, at, { checkBudget: false, reserveTokens: 0 });
          admission.finish(tokens);
          if (tokens > 0) usage.records.push({ keyId: key.id, ts: at, tokens });
        },
        close: cleanup,
      };
    });

    afterEach(async () => {
      await h.close();
    });

    describe('requests per minute', () => {
      it('is a sliding window: the 4th of 3 rpm is refused until the oldest is 60 s old', async () => {
        const { limiter } = h;
        const key = keyRecord({ rpm: 3 });
        const admitted: Admission[] = [];
        for (const dt of [0, 1_000, 2_000]) admitted.push(await limiter.admit(key, T0 + dt, SOFT));
        expect(admitted.map((a) => a.headers['x-ratelimit-remaining'])).toEqual(['2', '1', '0']);
        for (const a of admitted) {
          expect(a.headers['x-ratelimit-limit']).toBe('3');
          // The oldest request in the window leaves at T0 + 60 s.
          expect(a.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE) / 1000));
          a.finish(0);
        }

        const err = await refusal(limiter.admit(key, T0 + 3_000, SOFT));
        expect(err.status).toBe(429);
        expect(err.type).toBe('rate_limit_error');
        expect(err.message).toBe('Rate limit exceeded: this key allows 3 requests per minute.');
        expect(err.headers['retry-after']).toBe('57');
        expect(err.retryAfterSeconds).toBe(57);
        expect(err.headers['x-ratelimit-limit']).toBe('3');
        expect(err.headers['x-ratelimit-remaining']).toBe('0');
        expect(err.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE) / 1000));

        // One millisecond before the oldest is a minute old: still refused, retry in (at least) 1 s.
        expect((await refusal(limiter.admit(key, T0 + MINUTE - 1, SOFT))).headers['retry-after']).toBe('1');

        // Exactly a minute later the oldest has left; a refused request did not take a place.
        const again = await limiter.admit(key, T0 + MINUTE, SOFT);
        expect(again.headers['x-ratelimit-remaining']).toBe('0');
        expect(again.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE + 1_000) / 1000));
        again.finish(0);

        // Now the window holds T0+1s, T0+2s, T0+60s: the next frees when T0+1s leaves.
        const next = await refusal(limiter.admit(key, T0 + MINUTE + 500, SOFT));
        expect(next.headers['retry-after']).toBe('1');
        expect(next.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE + 1_000) / 1000));
        (await limiter.admit(key, T0 + MINUTE + 1_000, SOFT)).finish(0);
      });

      it('counts keys separately', async () => {
        const a = keyRecord({ id: 'key_a', rpm: 1 });
        const b = keyRecord({ id: 'key_b', rpm: 1 });
        (await h.limiter.admit(a, T0, SOFT)).finish(0);
        await refusal(h.limiter.admit(a, T0 + 1, SOFT));
        (await h.limiter.admit(b, T0 + 1, SOFT)).finish(0);
      });

      it('stays exact over many requests', async () => {
        const key = keyRecord({ rpm: 10 });
        // 300 requests, one every 6 s: exactly 10 per minute, so each is admitted.
        for (let i = 0; i < 300; i++) (await h.limiter.admit(key, T0 + i * 6_000, SOFT)).finish(0);
        const err = await refusal(h.limiter.admit(key, T0 + 299 * 6_000 + 1, SOFT));
        expect(err.headers['retry-after']).toBe('6');
      });

      it('counts a request refused by a later limit only when it was admitted (count_tokens counts too)', async () => {
        const key = keyRecord({ rpm: 2, budgetTokens: 10 });
        await h.bill(key, 50, T0); // one place taken, budget spent
        await refusal(h.limiter.admit(key, T0 + 1, SOFT)); // refused for the budget: no place
        (await h.limiter.admit(key, T0 + 2, { checkBudget: false, reserveTokens: 0 })).finish(0);
        expect((await refusal(h.limiter.admit(key, T0 + 3, { checkBudget: false, reserveTokens: 0 }))).message).toMatch(/2 requests per minute/);
      });
    });

    describe('activity', () => {
      it('counts each key\'s requests in flight and in the last minute, leaving idle keys out', async () => {
        const a = keyRecord({ id: 'key_activity_a', rpm: 100, concurrent: 5 });
        const b = keyRecord({ id: 'key_activity_b', rpm: 100, concurrent: 5 });
        const idle = keyRecord({ id: 'key_activity_idle' });
        const held = [await h.limiter.admit(a, T0, SOFT), await h.limiter.admit(a, T0 + 10, SOFT)];
        (await h.limiter.admit(b, T0 + 20, SOFT)).finish(0);
        const byKey = async (at: number) => Object.fromEntries((await h.limiter.activity([a.id, b.id, idle.id], at)).map((x) => [x.keyId, x]));
        expect(await byKey(T0 + 30)).toEqual({
          [a.id]: { keyId: a.id, inFlight: 2, lastMinute: 2 },
          [b.id]: { keyId: b.id, inFlight: 0, lastMinute: 1 },
        });
        held[0]!.finish(0);
        expect((await byKey(T0 + 40))[a.id]).toEqual({ keyId: a.id, inFlight: 1, lastMinute: 2 });
        // A minute later only what is still in flight is left.
        expect(await byKey(T0 + MINUTE + 25)).toEqual({ [a.id]: { keyId: a.id, inFlight: 1, lastMinute: 0 } });
        held[1]!.finish(0);
        expect(await h.limiter.activity([a.id, b.id, idle.id], T0 + MINUTE + 30)).toEqual([]);
      });
    });

    describe('concurrency', () => {
      it('refuses beyond the limit until finish() frees a slot; finish is idempotent', async () => {
        const { limiter } = h;
        const key = keyRecord({ concurrent: 2 });
        const first = await limiter.admit(key, T0, SOFT);
        const second = await limiter.admit(key, T0 + 1, SOFT);

        const err = await refusal(limiter.admit(key, T0 + 2, SOFT));
        expect(err.status).toBe(429);
        expect(err.message).toBe('Too many concurrent requests: this key allows 2 at a time.');
        expect(err.headers['retry-after']).toBe('1');
        expect(err.headers['x-ratelimit-limit']).toBe('2');
        expect(err.headers['x-ratelimit-remaining']).toBe('0');
        expect(Number(err.headers['x-ratelimit-reset'])).toBe(Math.ceil((T0 + 2) / 1000) + 1);

        first.finish(0);
        first.finish(0); // a second finish must not free another slot
        const third = await limiter.admit(key, T0 + 3, SOFT);
        await expect(limiter.admit(key, T0 + 4, SOFT)).rejects.toThrow(/at a time/);

        second.finish(0);
        third.finish(0);
        const both = [await limiter.admit(key, T0 + 5, SOFT), await limiter.admit(key, T0 + 6, SOFT)];
        await refusal(limiter.admit(key, T0 + 7, SOFT));
        for (const a of both) a.finish(0);
      });

      it('a request refused for concurrency takes no rpm place', async () => {
        const key = keyRecord({ concurrent: 1, rpm: 2 });
        const held = await h.limiter.admit(key, T0, SOFT);
        await refusal(h.limiter.admit(key, T0 + 1, SOFT));
        await refusal(h.limiter.admit(key, T0 + 2, SOFT));
        held.finish(0);
        const second = await h.limiter.admit(key, T0 + 3, SOFT);
        expect(second.headers['x-ratelimit-remaining']).toBe('0');
        second.finish(0);
      });
    });

    describe('token budget (soft mode)', () => {
      it('bills via finish, reports the budget, refuses once used ≥ budget and frees after the window', async () => {
        const { limiter } = h;
        const key = keyRecord({ budgetTokens: 1000, windowSeconds: 2 * 3600 });
        const windowMs = 2 * HOUR;

        expect(await limiter.budget(key, T0)).toEqual({ total: 1000, used: 0, remaining: 1000, resetsInMs: 0 });

        h.now = T0 + 10_000;
        const first = await limiter.admit(key, T0 + 10_000, SOFT);
        expect(first.headers['x-ratelimit-limit-tokens']).toBe('1000');
        expect(first.headers['x-ratelimit-remaining-tokens']).toBe('1000');
        // Nothing counted: the token reset is a window away.
        expect(first.headers['x-ratelimit-reset-tokens']).toBe(String(Math.ceil((T0 + 10_000 + windowMs) / 1000)));
        first.finish(600); // billed at the clock, T0 + 10 s, in the minute starting at T0
        first.finish(600); // idempotent: billed once
        expect(await limiter.budget(key, T0 + 20_000)).toEqual({
          total: 1000,
          used: 600,
          remaining: 400,
          // Billing is per minute: the tokens leave when their minute is a whole window old (here
          // 2h 40s away), but no reset is reported further away than the window itself.
          resetsInMs: windowMs,
        });
        expect((await limiter.budget(key, T0 + 2 * MINUTE)).resetsInMs).toBe(T0 + MINUTE + windowMs - (T0 + 2 * MINUTE));

        // Soft mode admits while anything is left, even if the request then overshoots.
        h.now = T0 + 30 * MINUTE;
        const second = await limiter.admit(key, T0 + 30 * MINUTE, SOFT);
        expect(second.headers['x-ratelimit-remaining-tokens']).toBe('400');
        expect(second.headers['x-ratelimit-reset-tokens']).toBe(String((T0 + MINUTE + windowMs) / 1000));
        second.finish(500);

        const now = T0 + 31 * MINUTE;
        const status = await limiter.budget(key, now);
        expect(status.used).toBe(1100);
        expect(status.remaining).toBe(0);
        // Exhausted: resets when enough has left the window, i.e. the first 600 tokens.
        expect(status.resetsInMs).toBe(T0 + MINUTE + windowMs - now);

        const err = await refusal(limiter.admit(key, now, SOFT));
        expect(err.status).toBe(429);
        expect(err.message).toBe('Token budget exceeded. Resets in 1h 30m.');
        expect(err.headers['retry-after']).toBe(String(90 * 60));
        expect(err.headers['x-ratelimit-limit']).toBe('1000');
        expect(err.headers['x-ratelimit-remaining']).toBe('0');
        expect(err.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE + windowMs) / 1000));
        expect(err.headers['x-ratelimit-limit-tokens']).toBe('1000');
        expect(err.headers['x-ratelimit-remaining-tokens']).toBe('0');
        expect(err.headers['x-ratelimit-reset-tokens']).toBe(String((T0 + MINUTE + windowMs) / 1000));

        // A millisecond before the first bucket leaves: still refused, told to wait a second.
        const late = await refusal(limiter.admit(key, T0 + MINUTE + windowMs - 1, SOFT));
        expect(late.message).toBe('Token budget exceeded. Resets in 1s.');

        // Once it has left, 500 of 1000 are used and requests are admitted again.
        const freed = T0 + MINUTE + windowMs;
        expect(await limiter.budget(key, freed)).toMatchObject({ used: 500, remaining: 500 });
        const third = await limiter.admit(key, freed, SOFT);
        expect(third.headers['x-ratelimit-remaining-tokens']).toBe('500');
        expect(third.headers['x-ratelimit-reset-tokens']).toBe(String((T0 + 31 * MINUTE + windowMs) / 1000));
        third.finish(0);

        // And after the second bucket's window, nothing is used.
        expect(await limiter.budget(key, T0 + 31 * MINUTE + windowMs)).toEqual({ total: 1000, used: 0, remaining: 1000, resetsInMs: 0 });
      });

      it('words a short wait in minutes', async () => {
        const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
        await h.bill(key, 1000, T0 + 5_000);
        const err = await refusal(h.limiter.admit(key, T0 + 15 * MINUTE, SOFT));
        // Frees at T0 + 1 min + 1 h: 46 minutes after T0 + 15 min.
        expect(err.message).toBe('Token budget exceeded. Resets in 46m.');
        expect(err.headers['retry-after']).toBe(String(46 * 60));
      });

      it('frees only as much as needed to get below the budget', async () => {
        const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
        await h.bill(key, 100, T0);
        await h.bill(key, 950, T0 + 10 * MINUTE);
        await h.bill(key, 200, T0 + 20 * MINUTE);
        // 1250 used; dropping 100 leaves 1150, dropping 950 more leaves 200: the 10-minute bucket decides.
        const err = await refusal(h.limiter.admit(key, T0 + 30 * MINUTE, SOFT));
        expect(err.headers['retry-after']).toBe(String((11 * MINUTE + HOUR - 30 * MINUTE) / 1000));
        expect(await h.limiter.budget(key, T0 + 30 * MINUTE)).toEqual({ total: 1000, used: 1250, remaining: 0, resetsInMs: 11 * MINUTE + HOUR - 30 * MINUTE });
      });

      it('does not check the budget when checkBudget is false (count_tokens)', async () => {
        const key = keyRecord({ budgetTokens: 10 });
        await h.bill(key, 50, T0);
        await expect(h.limiter.admit(key, T0 + 1, SOFT)).rejects.toThrow(/Token budget exceeded/);
        const admission = await h.limiter.admit(key, T0 + 1, { checkBudget: false, reserveTokens: 0 });
        expect(admission.headers['x-ratelimit-remaining-tokens']).toBe('0');
        admission.finish(0);
      });

      it('ignores non-positive bills', async () => {
        const key = keyRecord({ budgetTokens: 10 });
        await h.bill(key, 0, T0);
        await h.bill(key, -5, T0);
        expect(await h.limiter.budget(key, T0)).toMatchObject({ used: 0, remaining: 10 });
      });

      it('keeps each key its own budget and window', async () => {
        const a = keyRecord({ id: 'key_a', budgetTokens: 100, windowSeconds: 3600 });
        const b = keyRecord({ id: 'key_b', budgetTokens: 100, windowSeconds: 60 });
        await h.bill(a, 100, T0);
        await h.bill(b, 100, T0);
        await refusal(h.limiter.admit(a, T0 + 2 * MINUTE, SOFT));
        (await h.limiter.admit(b, T0 + 2 * MINUTE, SOFT)).finish(0);
        expect(await h.limiter.budget(b, T0 + 2 * MINUTE)).toEqual({ total: 100, used: 0, remaining: 100, resetsInMs: 0 });
      });
    });

    describe('strict reservations', () => {
      it('refuses a reservation larger than what is available and releases reservations on finish', async () => {
        const { limiter } = h;
        const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });

        const a = await limiter.admit(key, T0, strict(300));
        // Only a reservation in flight is in the way: a short retry, not the whole window.
        const held = await refusal(limiter.admit(key, T0, strict(800)));
        expect(held.status).toBe(429);
        expect(held.message).toBe('Token budget exceeded: requests in flight hold 300 of the 1000 tokens left. Retry when they finish.');
        expect(held.headers['retry-after']).toBe('1');
        // Nothing is billed yet, so the headers show the whole budget unused.
        expect(held.headers['x-ratelimit-remaining']).toBe('1000');
        expect(held.headers['x-ratelimit-reset']).toBe(String(Math.ceil((T0 + 1000) / 1000)));

        // Exactly what is available fits.
        const b = await limiter.admit(key, T0, strict(700));
        await expect(limiter.admit(key, T0, strict(1))).rejects.toThrow(/requests in flight hold 1000/);

        // Finishing bills the real usage and releases the reservation.
        a.finish(100);
        b.finish(650);
        expect(await limiter.budget(key, T0)).toMatchObject({ used: 750, remaining: 250 });
        const c = await limiter.admit(key, T0, strict(250));
        c.finish(0);
        // Billed usage in the way: the refusal names what remains and when the window frees it.
        const spent = await refusal(limiter.admit(key, T0, strict(251)));
        expect(spent.message).toBe(
          'Token budget exceeded. This request may use up to 251 tokens (max_tokens plus an input bound) and 250 remain. Resets in 1h 0m.',
        );
        (await limiter.admit(key, T0, strict(250))).finish(0);
      });

      it('refuses a reservation larger than the whole budget with a 400, since waiting never helps', async () => {
        const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600, concurrent: 1 });
        const caught = await rejection(h.limiter.admit(key, T0, strict(1001)), InvalidRequestError);
        expect(caught.status).toBe(400);
        expect(caught.message).toBe(
          "This request may use up to 1001 tokens (max_tokens plus an input bound), more than this key's whole budget of 1000. Lower max_tokens.",
        );
        // It took no slot.
        (await h.limiter.admit(key, T0, SOFT)).finish(0);
      });

      it('a reservation refused for rpm or concurrency is not kept', async () => {
        const key = keyRecord({ budgetTokens: 1000, concurrent: 1 });
        const a = await h.limiter.admit(key, T0, strict(400));
        await expect(h.limiter.admit(key, T0, strict(400))).rejects.toThrow(/at a time/);
        a.finish(0);
        // Had the refused request kept its 400, only 600 would be available.
        (await h.limiter.admit(key, T0, strict(1000))).finish(0);
      });

      it('Admission.reserve after the body is read: the same refusals, released on finish', async () => {
        const { limiter } = h;
        const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
        const reserve = (admission: Admission, tokens: number, at = T0) => Promise.resolve().then(() => admission.reserve(tokens, at));

        const a = await limiter.admit(key, T0, strict(0));
        const b = await limiter.admit(key, T0, strict(0));
        await reserve(a, 600);
        const held = await refusal(reserve(b, 500));
        expect(held.message).toBe('Token budget exceeded: requests in flight hold 600 of the 1000 tokens left. Retry when they finish.');
        const whole = await rejection(reserve(b, 1001), InvalidRequestError);
        expect(whole.status).toBe(400);
        await reserve(b, 0); // nothing to reserve
        await reserve(b, 400);
        await expect(limiter.admit(key, T0, strict(1))).rejects.toThrow(/requests in flight hold 1000/);
        // A reservation adds to what the admission holds already.
        await refusal(reserve(a, 1));

        a.finish(100);
        // a's 600 are released, its 100 billed: 100 used, b holds 400.
        const c = await limiter.admit(key, T0, strict(500));
        await refusal(reserve(c, 1));
        c.finish(0);
        b.finish(0);
        expect(await limiter.budget(key, T0)).toMatchObject({ used: 100, remaining: 900 });
        (await limiter.admit(key, T0, strict(900))).finish(0);
        // A finished admission reserves nothing.
        await reserve(a, 900);
        (await limiter.admit(key, T0, strict(900))).finish(0);
      });
    });

    describe('budget(): resets never exceed the window', () => {
      it('a fresh key on a 5h window reads at most 5h 0m, in the status and in a refusal', async () => {
        const key = keyRecord({ budgetTokens: 100, windowSeconds: 5 * 3600 });
        await h.bill(key, 150, T0 + 59_000);
        const status = await h.limiter.budget(key, T0 + 59_000);
        expect(status).toEqual({ total: 100, used: 150, remaining: 0, resetsInMs: 5 * HOUR });
        expect(formatWait(status.resetsInMs)).toBe('5h 0m');
        const err = await refusal(h.limiter.admit(key, T0 + 59_000, SOFT));
        expect(err.message).toBe('Token budget exceeded. Resets in 5h 0m.');
        expect(err.headers['retry-after']).toBe(String(5 * 3600));
      });
    });

    describe('load', () => {
      it('rebuilds budgets from recorded buckets, in any order, per key, from sinceMs on', async () => {
        const { limiter, usage } = h;
        const k1 = keyRecord({ id: 'key_1', budgetTokens: 1000, windowSeconds: 3600 });
        const k2 = keyRecord({ id: 'key_2', budgetTokens: 1000, windowSeconds: 3600 });
        usage.records.push(
          { keyId: 'key_1', ts: T0 + 10 * MINUTE + 5_000, tokens: 700 },
          { keyId: 'key_2', ts: T0, tokens: 5 },
          { keyId: 'key_1', ts: T0 + 1_000, tokens: 300 },
          { keyId: 'key_1', ts: T0 + 2_000, tokens: 100 },
          // Before sinceMs: not loaded.
          { keyId: 'key_2', ts: T0 - 2 * HOUR, tokens: 900 },
        );
        await limiter.load(usage.read, T0 - HOUR);
        expect(usage.reads).toBe(1);
        const now = T0 + 11 * MINUTE;
        expect(await limiter.budget(k1, now)).toEqual({ total: 1000, used: 1100, remaining: 0, resetsInMs: MINUTE + HOUR - 11 * MINUTE });
        expect(await limiter.budget(k2, now)).toMatchObject({ used: 5, remaining: 995 });
        await expect(limiter.admit(k1, now, SOFT)).rejects.toThrow(/^Token budget exceeded\. Resets in 50m\.$/);
        // The older bucket leaves first.
        expect(await limiter.budget(k1, T0 + MINUTE + HOUR)).toMatchObject({ used: 700, remaining: 300 });
        expect(await limiter.budget(k1, T0 + 11 * MINUTE + HOUR)).toMatchObject({ used: 0, remaining: 1000 });
      });

      it('adds new bills to what was loaded', async () => {
        const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
        h.usage.records.push({ keyId: key.id, ts: T0, tokens: 400 });
        await h.limiter.load(h.usage.read, T0 - HOUR);
        await h.bill(key, 250, T0 + MINUTE);
        expect(await h.limiter.budget(key, T0 + 2 * MINUTE)).toMatchObject({ used: 650, remaining: 350 });
      });
    });

    describe('restoreWindow', () => {
      it('brings back usage from before the load when a window grows, once', async () => {
        const { limiter, usage } = h;
        const now = T0 + 10 * HOUR;
        const short = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
        usage.records.push({ keyId: short.id, ts: now - 3 * HOUR, tokens: 500 }, { keyId: short.id, ts: now - 30 * MINUTE, tokens: 200 });
        h.now = now;
        await limiter.load(usage.read, now - HOUR - MINUTE);
        expect(await limiter.budget(short, now)).toMatchObject({ used: 200 });

        const long = { ...short, windowSeconds: 5 * 3600 };
        await limiter.restoreWindow(long, now, usage.read);
        expect(await limiter.budget(long, now)).toMatchObject({ used: 700, remaining: 300 });
        const reads = usage.reads;
        await limiter.restoreWindow(long, now, usage.read);
        expect(usage.reads).toBe(reads); // nothing missing any more: not even read
        expect(await limiter.budget(long, now)).toMatchObject({ used: 700 });
        // The restored usage leaves the grown window on time.
        expect(await limiter.budget(long, now + 2 * HOUR + MINUTE)).toMatchObject({ used: 200 });
      });

      it('brings back usage the smaller window had dropped', async () => {
        const { limiter, usage } = h;
        const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
        await limiter.load(usage.read, T0 - HOUR);
        await h.bill(key, 100, T0);
        await h.bill(key, 40, T0 + 90 * MINUTE);
        // Two hours on, the first bill has left the 1h window.
        expect(await limiter.budget(key, T0 + 2 * HOUR)).toMatchObject({ used: 40 });
        const grown = { ...key, windowSeconds: 3 * 3600 };
        await limiter.restoreWindow(grown, T0 + 2 * HOUR, usage.read);
        expect(await limiter.budget(grown, T0 + 2 * HOUR)).toMatchObject({ used: 140, remaining: 860 });
        await limiter.restoreWindow(grown, T0 + 2 * HOUR, usage.read);
        expect(await limiter.budget(grown, T0 + 2 * HOUR)).toMatchObject({ used: 140 });
        await refusal(limiter.admit(grown, T0 + 2 * HOUR, strict(861)));
      });

      it('a key never billed since the load gets its older usage back', async () => {
        const { limiter, usage } = h;
        const key = keyRecord({ id: 'key_quiet', budgetTokens: 1000, windowSeconds: 3600 });
        usage.records.push({ keyId: key.id, ts: T0 - 3 * HOUR, tokens: 300 });
        await limiter.load(usage.read, T0 - HOUR - MINUTE);
        expect(await limiter.budget(key, T0)).toMatchObject({ used: 0 });
        const grown = { ...key, windowSeconds: 4 * 3600 };
        await limiter.restoreWindow(grown, T0, usage.read);
        expect(await limiter.budget(grown, T0)).toMatchObject({ used: 300 });
        // A window that did not reach that far back would not have brought it.
        const other = keyRecord({ id: 'key_other', budgetTokens: 1000, windowSeconds: 3600 });
        usage.records.push({ keyId: other.id, ts: T0 - 3 * HOUR, tokens: 300 });
        await limiter.restoreWindow({ ...other, windowSeconds: 2 * 3600 }, T0, usage.read);
        expect(await limiter.budget({ ...other, windowSeconds: 2 * 3600 }, T0)).toMatchObject({ used: 0 });
      });
    });

    it('answers ping and describes itself', async () => {
      await h.limiter.ping();
      expect(h.limiter.description).toMatch(/^(in process|Redis 127\.0\.0\.1:\d+)$/);
    });
  });
});
