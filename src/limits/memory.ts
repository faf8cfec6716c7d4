/**
 * Per-key limits in process, the embedded default's RateLimiter: requests per minute (sliding
 * log), requests in flight, and a token budget over a rolling window (one-minute buckets).
 * `Limits` is the synchronous core (its own unit tests drive it with an injected clock);
 * `MemoryRateLimiter` puts it behind the RateLimiter seam (types.ts). What a refusal says, and
 * the headers of an admission, are worded in refusals.ts, the same for the Redis limiter.
 */
import type { BudgetBucket, KeyRecord } from '../store/types.ts';
import { admittedHeaders, budgetRefusal, checkWholeBudget, concurrencyRefusal, reservedRefusal, rpmRefusal } from './refusals.ts';
import type { Admission, AdmitOptions, BudgetStatus, KeyActivity, RateLimiter, ReadBuckets } from './types.ts';

const MINUTE_MS = 60_000;

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
  /**
   * The first minute this ledger holds every billed token of: older buckets were dropped as
   * outside the window (see `used`) or never loaded from the store.
   */
  coveredFrom: number;
  private lastMinute = -Infinity;

  constructor(coveredFrom: number) {
    this.coveredFrom = coveredFrom;
  }

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
      this.coveredFrom = Math.max(this.coveredFrom, minute + 1);
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

  /** Puts back buckets older than every bucket held (read again from the store). */
  prepend(older: ReadonlyArray<{ minute: number; tokens: number }>): void {
    const newer = [...this.buckets];
    this.buckets.clear();
    for (const b of [...older].sort((x, y) => x.minute - y.minute)) {
      this.buckets.set(b.minute, (this.buckets.get(b.minute) ?? 0) + b.tokens);
      this.total += b.tokens;
    }
    for (const [minute, tokens] of newer) this.buckets.set(minute, (this.buckets.get(minute) ?? 0) + tokens);
  }

  /** When the oldest counted tokens leave the window. */
  oldestExpiry(windowMs: number): number | null {
    for (const minute of this.buckets.keys()) return (minute + 1) * MINUTE_MS + windowMs;
    return null;
  }
}

export class Limits {
  private readonly logs = new Map<string, RequestLog>();
  private readonly inFlight = new Map<string, number>();
  private readonly ledgers = new Map<string, TokenLedger>();
  /** When a finished request's tokens are billed (injected by tests). */
  private readonly clock: () => number;

  constructor(clock: () => number = () => Date.now()) {
    this.clock = clock;
  }

  /** The first minute that `load` covered: older usage was never read from the store. */
  private loadedFrom = -Infinity;

  /** Rebuilds budgets from recorded usage (at start-up), read from `sinceMs` on. */
  load(buckets: BudgetBucket[], sinceMs = -Infinity): void {
    this.loadedFrom = Math.floor(sinceMs / MINUTE_MS);
    const sorted = [...buckets].sort((a, b) => a.minute - b.minute);
    for (const b of sorted) this.ledger(b.keyId).add(b.minute, b.tokens);
  }

  /**
   * The usage a key's ledger lacks for a window of `windowSeconds` ending at `now`: the time
   * range to read again from the store after the key's window grew (older buckets were dropped
   * while the window was smaller), or null when the ledger already covers it.
   */
  missingRange(keyId: string, windowSeconds: number, now: number): { sinceMs: number; untilMs: number } | null {
    const coveredFrom = this.ledgers.get(keyId)?.coveredFrom ?? this.loadedFrom;
    const neededFrom = Math.floor((now - windowSeconds * 1000) / MINUTE_MS) - 1;
    if (neededFrom >= coveredFrom) return null;
    return { sinceMs: neededFrom * MINUTE_MS, untilMs: coveredFrom * MINUTE_MS };
  }

  /** Puts usage read from the store for a `missingRange` back into the key's ledger. */
  backfill(keyId: string, range: { sinceMs: number; untilMs: number }, buckets: ReadonlyArray<{ minute: number; tokens: number }>): void {
    const ledger = this.ledger(keyId);
    const from = Math.floor(range.sinceMs / MINUTE_MS);
    if (from >= ledger.coveredFrom) return;
    ledger.prepend(buckets.filter((b) => b.minute >= from && b.minute < ledger.coveredFrom));
    ledger.coveredFrom = from;
  }

  private ledger(keyId: string): TokenLedger {
    let ledger = this.ledgers.get(keyId);
    if (!ledger) this.ledgers.set(keyId, (ledger = new TokenLedger(this.loadedFrom)));
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
    // Usage is kept per minute, so the bucket arithmetic can overshoot by up to a minute; no
    // reset is ever further away than the window itself.
    return { total: key.budgetTokens, used, remaining, resetsInMs: Math.min(windowMs, Math.max(0, resetsAt - now)) };
  }

  inFlightCount(keyId: string): number {
    return this.inFlight.get(keyId) ?? 0;
  }

  activity(keyIds: readonly string[], now: number): KeyActivity[] {
    const active: KeyActivity[] = [];
    for (const keyId of keyIds) {
      const inFlight = this.inFlight.get(keyId) ?? 0;
      const lastMinute = this.logs.get(keyId)?.count(now) ?? 0;
      if (inFlight > 0 || lastMinute > 0) active.push({ keyId, inFlight, lastMinute });
    }
    return active;
  }

  /**
   * Throws when `wanted` more tokens do not fit the key's budget. Soft mode (`wanted` 0) refuses
   * only a budget already spent; strict mode also counts what requests in flight have reserved.
   */
  private checkBudget(key: KeyRecord, ledger: TokenLedger, now: number, wanted: number): void {
    const windowMs = key.windowSeconds * 1000;
    const used = ledger.used(now, windowMs);
    checkWholeBudget(key, wanted);
    const refused = wanted > 0 ? used + ledger.reserved + wanted > key.budgetTokens : used >= key.budgetTokens;
    if (!refused) return;
    // Only other requests' reservations in the way: they end soon, the window need not move.
    if (wanted > 0 && used + wanted <= key.budgetTokens) throw reservedRefusal(key, now, used, ledger.reserved);
    throw budgetRefusal(key, now, wanted, used, ledger.freesAt(now, windowMs, key.budgetTokens - Math.max(1, wanted)));
  }

  /** Checks every limit for one request and takes its place, or throws RateLimitError. */
  admit(key: KeyRecord, now: number, options: AdmitOptions): Admission {
    const windowMs = key.windowSeconds * 1000;
    const reserveTokens = options.reserveTokens ?? 0;
    const ledger = this.ledger(key.id);
    if (options.checkBudget) this.checkBudget(key, ledger, now, reserveTokens);
    const used = ledger.used(now, windowMs);

    const inFlight = this.inFlightCount(key.id);
    if (inFlight >= key.concurrent) throw concurrencyRefusal(key, now);

    const log = this.log(key.id);
    const recent = log.count(now);
    if (recent >= key.rpm) throw rpmRefusal(key, now, log.nextExpiry(now));

    log.push(now);
    this.inFlight.set(key.id, inFlight + 1);
    ledger.reserved += reserveTokens;
    const headers = admittedHeaders(key, now, {
      recent,
      rpmResetAt: log.nextExpiry(now),
      used,
      oldestTokensAt: ledger.oldestExpiry(windowMs),
    });

    let finished = false;
    let reserved = reserveTokens;
    return {
      headers,
      reserve: (tokens: number, at: number) => {
        if (finished || tokens <= 0) return;
        this.checkBudget(key, ledger, at, tokens);
        ledger.reserved += tokens;
        reserved += tokens;
      },
      finish: (billedTokens: number) => {
        if (finished) return;
        finished = true;
        const left = (this.inFlight.get(key.id) ?? 1) - 1;
        if (left > 0) this.inFlight.set(key.id, left);
        else this.inFlight.delete(key.id);
        ledger.reserved -= reserved;
        this.bill(key.id, billedTokens, this.clock());
      },
    };
  }
}

/** The in-process limiter behind the RateLimiter seam. */
export class MemoryRateLimiter implements RateLimiter {
  readonly description = 'in process';
  readonly limits: Limits;

  constructor(options: { clock?: () => number } = {}) {
    this.limits = new Limits(options.clock);
  }

  async admit(key: KeyRecord, now: number, options: AdmitOptions): Promise<Admission> {
    return this.limits.admit(key, now, options);
  }

  async budget(key: KeyRecord, now: number): Promise<BudgetStatus> {
    return this.limits.budget(key, now);
  }

  async load(readBuckets: ReadBuckets, sinceMs: number): Promise<void> {
    this.limits.load(await readBuckets({ sinceMs }), sinceMs);
  }

  async restoreWindow(key: KeyRecord, now: number, readBuckets: ReadBuckets): Promise<void> {
    const range = this.limits.missingRange(key.id, key.windowSeconds, now);
    if (range) this.limits.backfill(key.id, range, await readBuckets({ ...range, keyId: key.id }));
  }

  async activity(keyIds: readonly string[], now: number): Promise<KeyActivity[]> {
    return this.limits.activity(keyIds, now);
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {}
}
