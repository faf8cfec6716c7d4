/**
 * src/limits.ts in isolation: wording of waits and windows, and Limits.admit's three limits
 * (rpm sliding window, concurrency, rolling token budget incl. strict reservations) driven by
 * explicit clock values.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { InvalidRequestError, RateLimitError } from '../src/errors.ts';
import { formatWait, formatWindow } from '../src/limits/format.ts';
import { Limits } from '../src/limits/memory.ts';
import { keyRecord } from './fixtures.ts';
import { thrownBy } from './helpers.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
/** A minute boundary (midnight UTC), so bucket arithmetic stays readable. */
const T0 = Date.UTC(2026, 0, 1);

const SOFT = { checkBudget: true, reserveTokens: 0 };

/** Runs `fn`, expects a RateLimitError and returns it. */
function refusal(fn: () => unknown): RateLimitError {
  return thrownBy(fn, RateLimitError);
}

afterEach(() => {
  vi.useRealTimers();
});

describe('formatWait', () => {
  it('words seconds below a minute', () => {
    expect(formatWait(40_000)).toBe('40s');
    expect(formatWait(39_001)).toBe('40s');
    expect(formatWait(1)).toBe('1s');
    expect(formatWait(0)).toBe('0s');
    expect(formatWait(-5_000)).toBe('0s');
  });

  it('words minutes, rounding up', () => {
    expect(formatWait(15 * MINUTE)).toBe('15m');
    expect(formatWait(14 * MINUTE + 1)).toBe('15m');
    expect(formatWait(60_000)).toBe('1m');
    expect(formatWait(61_000)).toBe('2m');
    expect(formatWait(59_500)).toBe('1m');
  });

  it('words hours and minutes', () => {
    expect(formatWait(2 * HOUR + 15 * MINUTE)).toBe('2h 15m');
    expect(formatWait(2 * HOUR + 14 * MINUTE + 1_000)).toBe('2h 15m');
    expect(formatWait(HOUR)).toBe('1h 0m');
    expect(formatWait(59 * MINUTE + 30_000)).toBe('1h 0m');
    expect(formatWait(5 * HOUR)).toBe('5h 0m');
  });
});

describe('formatWindow', () => {
  it('picks the largest whole unit', () => {
    expect(formatWindow(5 * 3600)).toBe('5h rolling');
    expect(formatWindow(86400)).toBe('1d rolling');
    expect(formatWindow(2 * 86400)).toBe('2d rolling');
    expect(formatWindow(5400)).toBe('90m rolling');
    expect(formatWindow(60)).toBe('1m rolling');
    expect(formatWindow(45)).toBe('45s rolling');
  });
});

describe('Limits: requests per minute', () => {
  it('is a sliding window: the 4th of 3 rpm is refused until the oldest is 60 s old', () => {
    const limits = new Limits();
    const key = keyRecord({ rpm: 3 });
    const admitted = [0, 1_000, 2_000].map((dt) => limits.admit(key, T0 + dt, SOFT));
    expect(admitted.map((a) => a.headers['x-ratelimit-remaining'])).toEqual(['2', '1', '0']);
    for (const a of admitted) {
      expect(a.headers['x-ratelimit-limit']).toBe('3');
      // The oldest request in the log leaves at T0 + 60 s.
      expect(a.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE) / 1000));
      a.finish(0);
    }

    const err = refusal(() => limits.admit(key, T0 + 3_000, SOFT));
    expect(err.status).toBe(429);
    expect(err.type).toBe('rate_limit_error');
    expect(err.message).toMatch(/3 requests per minute/);
    expect(err.headers['retry-after']).toBe('57');
    expect(err.retryAfterSeconds).toBe(57);
    expect(err.headers['x-ratelimit-limit']).toBe('3');
    expect(err.headers['x-ratelimit-remaining']).toBe('0');
    expect(err.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE) / 1000));

    // One millisecond before the oldest is a minute old: still refused, retry in (at least) 1 s.
    expect(refusal(() => limits.admit(key, T0 + MINUTE - 1, SOFT)).headers['retry-after']).toBe('1');

    // Exactly a minute later the oldest has left; a refused request did not take a place.
    const again = limits.admit(key, T0 + MINUTE, SOFT);
    expect(again.headers['x-ratelimit-remaining']).toBe('0');
    expect(again.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE + 1_000) / 1000));
    again.finish(0);

    // Now the window holds T0+1s, T0+2s, T0+60s: the next frees when T0+1s leaves.
    const next = refusal(() => limits.admit(key, T0 + MINUTE + 500, SOFT));
    expect(next.headers['retry-after']).toBe('1');
    expect(next.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE + 1_000) / 1000));
    expect(() => limits.admit(key, T0 + MINUTE + 1_000, SOFT)).not.toThrow();
  });

  it('counts keys separately', () => {
    const limits = new Limits();
    const a = keyRecord({ id: 'key_a', rpm: 1 });
    const b = keyRecord({ id: 'key_b', rpm: 1 });
    limits.admit(a, T0, SOFT).finish(0);
    expect(() => limits.admit(a, T0 + 1, SOFT)).toThrow(RateLimitError);
    expect(() => limits.admit(b, T0 + 1, SOFT)).not.toThrow();
  });

  it('keeps counting correctly after many requests (log compaction)', () => {
    const limits = new Limits();
    const key = keyRecord({ rpm: 10 });
    // 300 requests, one every 6 s: exactly 10 per minute, so each is admitted.
    for (let i = 0; i < 300; i++) limits.admit(key, T0 + i * 6_000, SOFT).finish(0);
    const err = refusal(() => limits.admit(key, T0 + 299 * 6_000 + 1, SOFT));
    expect(err.headers['retry-after']).toBe('6');
  });
});

describe('Limits: concurrency', () => {
  it('refuses beyond the limit until finish() frees a slot; finish is idempotent', () => {
    const limits = new Limits();
    const key = keyRecord({ concurrent: 2 });
    const first = limits.admit(key, T0, SOFT);
    const second = limits.admit(key, T0 + 1, SOFT);
    expect(limits.inFlightCount(key.id)).toBe(2);

    const err = refusal(() => limits.admit(key, T0 + 2, SOFT));
    expect(err.status).toBe(429);
    expect(err.message).toMatch(/allows 2 at a time/);
    expect(err.headers['retry-after']).toBe('1');
    expect(err.headers['x-ratelimit-limit']).toBe('2');
    expect(err.headers['x-ratelimit-remaining']).toBe('0');
    expect(Number(err.headers['x-ratelimit-reset'])).toBe(Math.ceil((T0 + 2) / 1000) + 1);

    first.finish(0);
    first.finish(0); // a second finish must not free another slot
    expect(limits.inFlightCount(key.id)).toBe(1);
    const third = limits.admit(key, T0 + 3, SOFT);
    expect(limits.inFlightCount(key.id)).toBe(2);
    expect(() => limits.admit(key, T0 + 4, SOFT)).toThrow(/at a time/);

    second.finish(0);
    third.finish(0);
    expect(limits.inFlightCount(key.id)).toBe(0);
  });
});

describe('Limits: token budget (soft mode)', () => {
  it('bills via finish, reports the budget, refuses once used ≥ budget and frees after the window', () => {
    vi.useFakeTimers();
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 1000, windowSeconds: 2 * 3600 });
    const windowMs = 2 * HOUR;

    expect(limits.budget(key, T0)).toEqual({ total: 1000, used: 0, remaining: 1000, resetsInMs: 0 });

    vi.setSystemTime(T0 + 10_000);
    const first = limits.admit(key, T0 + 10_000, SOFT);
    expect(first.headers['x-ratelimit-limit-tokens']).toBe('1000');
    expect(first.headers['x-ratelimit-remaining-tokens']).toBe('1000');
    first.finish(600); // billed at Date.now() = T0 + 10 s, in the minute starting at T0
    first.finish(600); // idempotent: billed once
    expect(limits.budget(key, T0 + 20_000)).toEqual({
      total: 1000,
      used: 600,
      remaining: 400,
      // Billing is per minute: the tokens leave when their minute is a whole window old (here
      // 2h 40s away), but no reset is reported further away than the window itself.
      resetsInMs: windowMs,
    });
    expect(limits.budget(key, T0 + 2 * MINUTE).resetsInMs).toBe(T0 + MINUTE + windowMs - (T0 + 2 * MINUTE));

    // Soft mode admits while anything is left, even if the request then overshoots.
    vi.setSystemTime(T0 + 30 * MINUTE);
    const second = limits.admit(key, T0 + 30 * MINUTE, SOFT);
    expect(second.headers['x-ratelimit-remaining-tokens']).toBe('400');
    expect(second.headers['x-ratelimit-reset-tokens']).toBe(String((T0 + MINUTE + windowMs) / 1000));
    second.finish(500);

    const now = T0 + 31 * MINUTE;
    const status = limits.budget(key, now);
    expect(status.used).toBe(1100);
    expect(status.remaining).toBe(0);
    // Exhausted: resets when enough has left the window, i.e. the first 600 tokens.
    expect(status.resetsInMs).toBe(T0 + MINUTE + windowMs - now);

    const err = refusal(() => limits.admit(key, now, SOFT));
    expect(err.status).toBe(429);
    expect(err.message).toBe('Token budget exceeded. Resets in 1h 30m.');
    expect(err.message).toMatch(/^Token budget exceeded\. Resets in \d+h \d+m\.$/);
    expect(err.headers['retry-after']).toBe(String(90 * 60));
    expect(err.headers['x-ratelimit-limit']).toBe('1000');
    expect(err.headers['x-ratelimit-remaining']).toBe('0');
    expect(err.headers['x-ratelimit-reset']).toBe(String((T0 + MINUTE + windowMs) / 1000));
    expect(err.headers['x-ratelimit-limit-tokens']).toBe('1000');
    expect(err.headers['x-ratelimit-remaining-tokens']).toBe('0');

    // A millisecond before the first bucket leaves: still refused, told to wait a second.
    const late = refusal(() => limits.admit(key, T0 + MINUTE + windowMs - 1, SOFT));
    expect(late.message).toBe('Token budget exceeded. Resets in 1s.');

    // Once it has left, 500 of 1000 are used and requests are admitted again.
    const freed = T0 + MINUTE + windowMs;
    expect(limits.budget(key, freed)).toMatchObject({ used: 500, remaining: 500 });
    const third = limits.admit(key, freed, SOFT);
    expect(third.headers['x-ratelimit-remaining-tokens']).toBe('500');
    third.finish(0);

    // And after the second bucket's window, nothing is used.
    expect(limits.budget(key, T0 + 31 * MINUTE + windowMs)).toEqual({ total: 1000, used: 0, remaining: 1000, resetsInMs: 0 });
  });

  it('words a short wait in minutes', () => {
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
    limits.bill(key.id, 1000, T0 + 5_000);
    const err = refusal(() => limits.admit(key, T0 + 15 * MINUTE, SOFT));
    // Frees at T0 + 1 min + 1 h: 46 minutes after T0 + 15 min.
    expect(err.message).toMatch(/^Token budget exceeded\. Resets in \d+m\.$/);
    expect(err.message).toBe('Token budget exceeded. Resets in 46m.');
    expect(err.headers['retry-after']).toBe(String(46 * 60));
  });

  it('frees only as much as needed to get below the budget', () => {
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
    limits.bill(key.id, 100, T0);
    limits.bill(key.id, 950, T0 + 10 * MINUTE);
    limits.bill(key.id, 200, T0 + 20 * MINUTE);
    // 1250 used; dropping 100 leaves 1150, dropping 950 more leaves 200: the 10-minute bucket decides.
    const err = refusal(() => limits.admit(key, T0 + 30 * MINUTE, SOFT));
    expect(err.headers['retry-after']).toBe(String((11 * MINUTE + HOUR - 30 * MINUTE) / 1000));
  });

  it('does not check the budget when checkBudget is false (count_tokens)', () => {
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 10 });
    limits.bill(key.id, 50, T0);
    expect(() => limits.admit(key, T0 + 1, SOFT)).toThrow(/Token budget exceeded/);
    const admission = limits.admit(key, T0 + 1, { checkBudget: false, reserveTokens: 0 });
    expect(admission.headers['x-ratelimit-remaining-tokens']).toBe('0');
  });

  it('ignores non-positive bills', () => {
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 10 });
    limits.bill(key.id, 0, T0);
    limits.bill(key.id, -5, T0);
    expect(limits.budget(key, T0)).toMatchObject({ used: 0, remaining: 10 });
  });
});

describe('Limits: strict reservations', () => {
  it('refuses a reservation larger than what is available and releases reservations on finish', () => {
    vi.useFakeTimers();
    vi.setSystemTime(T0);
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
    const strict = (reserveTokens: number) => ({ checkBudget: true, reserveTokens });

    const a = limits.admit(key, T0, strict(300));
    // Only a reservation in flight is in the way: a short retry, not the whole window.
    const held = refusal(() => limits.admit(key, T0, strict(800)));
    expect(held.status).toBe(429);
    expect(held.message).toBe('Token budget exceeded: requests in flight hold 300 of the 1000 tokens left. Retry when they finish.');
    expect(held.headers['retry-after']).toBe('1');
    // Nothing is billed yet, so the headers show the whole budget unused.
    expect(held.headers['x-ratelimit-remaining']).toBe('1000');

    // Exactly what is available fits.
    const b = limits.admit(key, T0, strict(700));
    expect(() => limits.admit(key, T0, strict(1))).toThrow(/requests in flight hold 1000/);

    // Finishing bills the real usage and releases the reservation.
    a.finish(100);
    b.finish(650);
    expect(limits.budget(key, T0)).toMatchObject({ used: 750, remaining: 250 });
    const c = limits.admit(key, T0, strict(250));
    c.finish(0);
    // Billed usage in the way: the refusal names what remains and when the window frees it.
    const spent = refusal(() => limits.admit(key, T0, strict(251)));
    expect(spent.message).toMatch(/^Token budget exceeded\. This request may use up to 251 tokens .* and 250 remain\. Resets in 1h 0m\.$/);
    expect(() => limits.admit(key, T0, strict(250))).not.toThrow();
  });

  it('refuses a reservation larger than the whole budget with a 400, since waiting never helps', () => {
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 1000, windowSeconds: 3600 });
    const caught = thrownBy(() => limits.admit(key, T0, { checkBudget: true, reserveTokens: 1001 }), InvalidRequestError);
    expect(caught.status).toBe(400);
    expect(caught.message).toMatch(/up to 1001 tokens .* whole budget of 1000\. Lower max_tokens\./);
    expect(limits.inFlightCount(key.id)).toBe(0);
  });

  it('a reservation refused for rpm or concurrency is not kept', () => {
    vi.useFakeTimers();
    vi.setSystemTime(T0);
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 1000, concurrent: 1 });
    const a = limits.admit(key, T0, { checkBudget: true, reserveTokens: 400 });
    expect(() => limits.admit(key, T0, { checkBudget: true, reserveTokens: 400 })).toThrow(/at a time/);
    a.finish(0);
    // Had the refused request kept its 400, only 600 would be available.
    expect(() => limits.admit(key, T0, { checkBudget: true, reserveTokens: 1000 })).not.toThrow();
  });
});

describe('Limits: resets_in never exceeds the window', () => {
  it('a fresh key on a 5h window reads at most 5h 0m, in the status and in a refusal', () => {
    vi.useFakeTimers();
    const limits = new Limits();
    const key = keyRecord({ budgetTokens: 100, windowSeconds: 5 * 3600 });
    vi.setSystemTime(T0 + 59_000);
    limits.admit(key, T0 + 59_000, SOFT).finish(150);
    const status = limits.budget(key, T0 + 59_000);
    expect(formatWait(status.resetsInMs)).toBe('5h 0m');
    const err = refusal(() => limits.admit(key, T0 + 59_000, SOFT));
    expect(err.message).toBe('Token budget exceeded. Resets in 5h 0m.');
    expect(Number(err.headers['retry-after'])).toBeLessThanOrEqual(5 * 3600);
  });
});

describe('Limits.load', () => {
  it('rebuilds budgets from recorded buckets, in any order, per key', () => {
    const limits = new Limits();
    const m0 = T0 / MINUTE;
    const k1 = keyRecord({ id: 'key_1', budgetTokens: 1000, windowSeconds: 3600 });
    const k2 = keyRecord({ id: 'key_2', budgetTokens: 1000, windowSeconds: 3600 });
    limits.load([
      { keyId: 'key_1', minute: m0 + 10, tokens: 700 },
      { keyId: 'key_2', minute: m0, tokens: 5 },
      { keyId: 'key_1', minute: m0, tokens: 400 },
    ]);
    const now = T0 + 11 * MINUTE;
    expect(limits.budget(k1, now)).toEqual({ total: 1000, used: 1100, remaining: 0, resetsInMs: MINUTE + HOUR - 11 * MINUTE });
    expect(limits.budget(k2, now)).toMatchObject({ used: 5, remaining: 995 });
    expect(() => limits.admit(k1, now, SOFT)).toThrow(/^Token budget exceeded\. Resets in 50m\.$/);
    // The older bucket leaves first (the buckets were sorted, not billed into the newest one).
    expect(limits.budget(k1, T0 + MINUTE + HOUR)).toMatchObject({ used: 700, remaining: 300 });
    expect(limits.budget(k1, T0 + 11 * MINUTE + HOUR)).toMatchObject({ used: 0, remaining: 1000 });
  });
});
