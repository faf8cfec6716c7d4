/**
 * What a limiter says: the 429 and 400 refusals (wording, Retry-After, X-RateLimit-* headers) and
 * the X-RateLimit-* headers of an admitted request. Both limiters build them here from their own
 * numbers: memory.ts from its request log and token ledger, redis.ts from what a Lua script
 * returns. One home, so that a client cannot tell the two apart (the contract suite,
 * test/limits-contract.test.ts, checks the same text and headers against both).
 *
 * Times are Unix ms; header times are Unix seconds, rounded up.
 */
import { InvalidRequestError, RateLimitError } from '../errors.ts';
import type { KeyRecord } from '../store/types.ts';
import { formatWait } from './format.ts';

/** X-RateLimit-*-Tokens: the key's budget, what is left of it, and when it next grows. */
function tokenHeaders(key: KeyRecord, remaining: number, resetAt: number): Record<string, string> {
  return {
    'x-ratelimit-limit-tokens': String(key.budgetTokens),
    'x-ratelimit-remaining-tokens': String(Math.max(0, remaining)),
    'x-ratelimit-reset-tokens': String(Math.ceil(resetAt / 1000)),
  };
}

/**
 * The headers of an admitted request: rpm (`recent` requests in the minute before this one,
 * the oldest leaving it at `rpmResetAt`) and tokens (`used` in the window, the oldest leaving
 * it at `oldestTokensAt`, or null when none are counted).
 */
export function admittedHeaders(
  key: KeyRecord,
  now: number,
  counts: { recent: number; rpmResetAt: number; used: number; oldestTokensAt: number | null },
): Record<string, string> {
  const windowEnd = now + key.windowSeconds * 1000;
  return {
    'x-ratelimit-limit': String(key.rpm),
    'x-ratelimit-remaining': String(key.rpm - counts.recent - 1),
    'x-ratelimit-reset': String(Math.ceil(counts.rpmResetAt / 1000)),
    ...tokenHeaders(key, key.budgetTokens - counts.used, Math.min(counts.oldestTokensAt ?? windowEnd, windowEnd)),
  };
}

/** Strict mode: a request whose worst case (`wanted`) exceeds the whole budget; waiting never helps, so a 400. */
export function checkWholeBudget(key: KeyRecord, wanted: number): void {
  if (wanted > key.budgetTokens) {
    throw new InvalidRequestError(
      `This request may use up to ${wanted} tokens (max_tokens plus an input bound), more than this key's whole budget of ${key.budgetTokens}. Lower max_tokens.`,
    );
  }
}

/** The budget refusals' headers: the budget in both the plain and the -Tokens headers, reset after `wait` ms. */
function budgetHeaders(key: KeyRecord, now: number, used: number, wait: number): Record<string, string> {
  return {
    'x-ratelimit-limit': String(key.budgetTokens),
    'x-ratelimit-remaining': String(Math.max(0, key.budgetTokens - used)),
    'x-ratelimit-reset': String(Math.ceil((now + wait) / 1000)),
    ...tokenHeaders(key, key.budgetTokens - used, now + wait),
  };
}

/**
 * Strict mode: the request would fit what is left of the budget (`used` of it spent) but for
 * the `reserved` tokens other requests in flight hold; they end soon, so retry in a second.
 */
export function reservedRefusal(key: KeyRecord, now: number, used: number, reserved: number): RateLimitError {
  return new RateLimitError(
    `Token budget exceeded: requests in flight hold ${reserved} of the ${key.budgetTokens - used} tokens left. Retry when they finish.`,
    1,
    budgetHeaders(key, now, used, 1000),
  );
}

/**
 * The budget is spent (`used`), or has too little left for the `wanted` tokens of a strict
 * request (0 in soft mode); enough of it frees at `freesAt` (at least a second, at most a window away).
 */
export function budgetRefusal(key: KeyRecord, now: number, wanted: number, used: number, freesAt: number): RateLimitError {
  const wait = Math.max(1000, Math.min(key.windowSeconds * 1000, freesAt - now));
  const detail = wanted > 0 && used < key.budgetTokens
    ? ` This request may use up to ${wanted} tokens (max_tokens plus an input bound) and ${key.budgetTokens - used} remain.`
    : '';
  return new RateLimitError(`Token budget exceeded.${detail} Resets in ${formatWait(wait)}.`, wait / 1000, budgetHeaders(key, now, used, wait));
}

/** Every concurrency slot of the key is taken. */
export function concurrencyRefusal(key: KeyRecord, now: number): RateLimitError {
  return new RateLimitError(`Too many concurrent requests: this key allows ${key.concurrent} at a time.`, 1, {
    'x-ratelimit-limit': String(key.concurrent),
    'x-ratelimit-remaining': '0',
    'x-ratelimit-reset': String(Math.ceil(now / 1000) + 1),
  });
}

/** The key's rpm is used up until `resetAt`, when the oldest request of the minute leaves it. */
export function rpmRefusal(key: KeyRecord, now: number, resetAt: number): RateLimitError {
  return new RateLimitError(`Rate limit exceeded: this key allows ${key.rpm} requests per minute.`, (resetAt - now) / 1000, {
    'x-ratelimit-limit': String(key.rpm),
    'x-ratelimit-remaining': '0',
    'x-ratelimit-reset': String(Math.ceil(resetAt / 1000)),
  });
}
