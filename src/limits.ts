/**
 * Per-key limits, in process: requests per minute (sliding log), requests in flight, and a token
 * budget over a rolling window (one-minute buckets). `Limits.admit` checks all three before a
 * request goes upstream; the returned admission is finished exactly once when the request is
 * over, which frees the concurrency slot and bills the tokens upstream reported.
 */
import { InvalidRequestError, RateLimitError } from './errors.ts';
import type { KeyRecord, BudgetBucket } from './store/types.ts';

const MINUTE_MS = 60_000;

/** "2h 15m", "15m", "40s": how the spec words a wait. Minutes round up. */
export function formatWait(ms: number): string {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.ceil(seconds / 60);
  const hours = Math.floor(minutes / 60);
  return hours > 0 ? `${hours}h ${minutes % 60}m` : `${minutes}m`;
}

/** "5h rolling", "90m rolling", "1d rolling". */
export function formatWindow(seconds: number): string {
  if (seconds % 86400 === 0) return `${seconds / 86400}d rolling`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h rolling`;
  if (seconds % 60 === 0) return `${seconds / 60}m rolling`;
  return `${seconds}s rolling`;
}

/** Timestamps of the requests admitted in the last minute, oldest first, in a compacting queue. */
class RequestLog {
  private times: number[] = [];
  private head = 0;

  count(now: number): number {
    const cutoff = now - MINUTE_MS;
    while (this.head < this.times.length && this.times[this.head]! <= cutoff) this.head++;
    if (this.head > 64 && this.head * 2 > this.times.length) {
      this.times = this.times.slice(this.head);
      this.head = 0;
    }
    return this.times.length - this.head;
  }

  /** When the oldest logged request leaves the window (or now + 1 min for an empty log). */
  nextExpiry(now: number): number {
    return this.head < this.times.length ? this.times[this.head]! + MINUTE_MS : now + MINUTE_MS;
  }

  push(now: number): void {
    this.times.push(now);
  }
}

/** Billed tokens of one key per minute, oldest first, plus what strict mode has reserved. */
class TokenLedger {
  /** minute → tokens; insertion order is time order because tokens are billed as they happen. */
  readonly buckets = new Map<number, number>();
  total = 0;
  reserved = 0;
  private lastMinute = -Infinity;

  add(minute: number, tokens: number): void {
    // A clock that stepped back bills into the newest bucket so the order stays sorted.
    const at = Math.max(minute, this.lastMinute);
    this.buckets.set(at, (this.buckets.get(at) ?? 0) + tokens);
    this.lastMinute = at;
    this.total += tokens;
  }

  /** Drops the buckets wholly outside the window ending at `now`; returns tokens still inside. */
  used(now: number, windowMs: number): number {
    for (const [minute, tokens] of this.buckets) {
      if ((minute + 1) * MINUTE_MS + windowMs > now) break;
      this.buckets.delete(minute);
      this.total -= tokens;
    }
    return this.total;
  }

  /** When enough of today's usage has left the window for `used` to fall to `target` or below. */
  freesAt(now: number, windowMs: number, target: number): number {
    let remaining = this.total;
    for (const [minute, tokens] of this.buckets) {
      if (remaining <= target) break;
      remaining -= tokens;
      if (remaining <= target) return (minute + 1) * MINUTE_MS + windowMs;
    }
    return remaining <= target ? now : now + windowMs;
  }

  /** When the oldest counted tokens leave the window. */
  oldestExpiry(windowMs: number): number | null {
    for (const minute of this.buckets.keys()) return (minute + 1) * MINUTE_MS + windowMs;
    return null;
  }
}

export interface BudgetStatus {
  total: number;
  used: number;
  remaining: number;
  /** ms until requests are accepted again (when exhausted), else until the oldest usage frees. */
  resetsInMs: number;
}

export interface Admission {
  /** X-RateLimit-* headers for the response. */
  readonly headers: Record<string, string>;
  /** Frees the concurrency slot and any reservation, and bills `billedTokens`. Idempotent. */
  finish(billedTokens: number): void;
}

export interface AdmitOptions {
  /** Skip the token budget (count_tokens counts against rpm only). */
  checkBudget: boolean;
  /** Strict mode: tokens to reserve until the request finishes (0 otherwise). */
  reserveTokens: number;
}

export class Limits {
  private readonly logs = new Map<string, RequestLog>();
  private readonly inFlight = new Map<string, number>();
  private readonly ledgers = new Map<string, TokenLedger>();

  /** Rebuilds budgets from recorded usage (at start-up). */
  load(buckets: BudgetBucket[]): void {
    const sorted = [...buckets].sort((a, b) => a.minute - b.minute);
    for (const b of sorted) this.ledger(b.keyId).add(b.minute, b.tokens);
  }

  private ledger(keyId: string): TokenLedger {
    let ledger = this.ledgers.get(keyId);
    if (!ledger) this.ledgers.set(keyId, (ledger = new TokenLedger()));
    return ledger;
  }

  private log(keyId: string): RequestLog {
    let log = this.logs.get(keyId);
    if (!log) this.logs.set(keyId, (log = new RequestLog()));
    return log;
  }

  bill(keyId: string, tokens: number, now: number): void {
    if (tokens > 0) this.ledger(keyId).add(Math.floor(now / MINUTE_MS), tokens);
  }

  budget(key: KeyRecord, now: number): BudgetStatus {
    const windowMs = key.windowSeconds * 1000;
    const ledger = this.ledgers.get(key.id);
    const used = ledger ? ledger.used(now, windowMs) : 0;
    const remaining = Math.max(0, key.budgetTokens - used);
    let resetsAt = now;
    if (ledger) {
      resetsAt = remaining > 0
        ? (ledger.oldestExpiry(windowMs) ?? now)
        : ledger.freesAt(now, windowMs, key.budgetTokens - 1);
    }
    return { total: key.budgetTokens, used, remaining, resetsInMs: Math.max(0, resetsAt - now) };
  }

  inFlightCount(keyId: string): number {
    return this.inFlight.get(keyId) ?? 0;
  }

  /** Checks every limit for one request and takes its place, or throws RateLimitError. */
  admit(key: KeyRecord, now: number, options: AdmitOptions): Admission {
    const windowMs = key.windowSeconds * 1000;
    const tokenHeaders = (remaining: number, resetAt: number) => ({
      'x-ratelimit-limit-tokens': String(key.budgetTokens),
      'x-ratelimit-remaining-tokens': String(Math.max(0, remaining)),
      'x-ratelimit-reset-tokens': String(Math.ceil(resetAt / 1000)),
    });

    const ledger = this.ledger(key.id);
    const used = ledger.used(now, windowMs);
    if (options.checkBudget) {
      const wanted = options.reserveTokens;
      if (wanted > key.budgetTokens) {
        // Waiting would never help, so this is not a 429 an SDK would retry.
        throw new InvalidRequestError(
          `This request may use up to ${wanted} tokens (max_tokens plus an input bound), more than this key's whole budget of ${key.budgetTokens}. Lower max_tokens.`,
        );
      }
      // Soft mode admits while anything is left; strict mode only when the reservation fits.
      const refused = wanted > 0 ? used + ledger.reserved + wanted > key.budgetTokens : used >= key.budgetTokens;
      if (refused) {
        const budgetHeaders = (wait: number) => ({
          'x-ratelimit-limit': String(key.budgetTokens),
          'x-ratelimit-remaining': String(Math.max(0, key.budgetTokens - used)),
          'x-ratelimit-reset': String(Math.ceil((now + wait) / 1000)),
          ...tokenHeaders(key.budgetTokens - used, now + wait),
        });
        if (wanted > 0 && used + wanted <= key.budgetTokens) {
          // Only other requests' reservations are in the way: they end soon, the window need not move.
          throw new RateLimitError(
            `Token budget exceeded: requests in flight hold ${ledger.reserved} of the ${key.budgetTokens - used} tokens left. Retry when they finish.`,
            1,
            budgetHeaders(1000),
          );
        }
        const freesAt = ledger.freesAt(now, windowMs, key.budgetTokens - Math.max(1, wanted));
        const wait = Math.max(1000, freesAt - now);
        const detail = wanted > 0 && used < key.budgetTokens
          ? ` This request may use up to ${wanted} tokens (max_tokens plus an input bound) and ${key.budgetTokens - used} remain.`
          : '';
        throw new RateLimitError(`Token budget exceeded.${detail} Resets in ${formatWait(wait)}.`, wait / 1000, budgetHeaders(wait));
      }
    }

    const inFlight = this.inFlightCount(key.id);
    if (inFlight >= key.concurrent) {
      throw new RateLimitError(
        `Too many concurrent requests: this key allows ${key.concurrent} at a time.`,
        1,
        {
          'x-ratelimit-limit': String(key.concurrent),
          'x-ratelimit-remaining': '0',
          'x-ratelimit-reset': String(Math.ceil(now / 1000) + 1),
        },
      );
    }

    const log = this.log(key.id);
    const recent = log.count(now);
    if (recent >= key.rpm) {
      const resetAt = log.nextExpiry(now);
      throw new RateLimitError(
        `Rate limit exceeded: this key allows ${key.rpm} requests per minute.`,
        (resetAt - now) / 1000,
        {
          'x-ratelimit-limit': String(key.rpm),
          'x-ratelimit-remaining': '0',
          'x-ratelimit-reset': String(Math.ceil(resetAt / 1000)),
        },
      );
    }

    log.push(now);
    this.inFlight.set(key.id, inFlight + 1);
    ledger.reserved += options.reserveTokens;
    const remainingTokens = key.budgetTokens - used;
    const headers = {
      'x-ratelimit-limit': String(key.rpm),
      'x-ratelimit-remaining': String(key.rpm - recent - 1),
      'x-ratelimit-reset': String(Math.ceil(log.nextExpiry(now) / 1000)),
      ...tokenHeaders(remainingTokens, ledger.oldestExpiry(windowMs) ?? now + windowMs),
    };

    let finished = false;
    return {
      headers,
      finish: (billedTokens: number) => {
        if (finished) return;
        finished = true;
        const left = (this.inFlight.get(key.id) ?? 1) - 1;
        if (left > 0) this.inFlight.set(key.id, left);
        else this.inFlight.delete(key.id);
        ledger.reserved -= options.reserveTokens;
        this.bill(key.id, billedTokens, Date.now());
      },
    };
  }
}
