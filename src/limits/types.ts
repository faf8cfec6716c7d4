/**
 * The limits seam: requests per minute, requests in flight and a rolling token budget per key.
 * Two implementations: in process (memory.ts, the embedded default) and on Redis (redis.ts, the
 * scale-out mode, shared by every instance). The pipeline admits each request before reading its
 * body and finishes the admission exactly once; the contract suite (test/limits-contract.test.ts)
 * runs the same assertions against both.
 */
import type { BudgetBucket, KeyRecord } from '../store/types.ts';

export interface BudgetStatus {
  total: number;
  used: number;
  remaining: number;
  /** ms until requests are accepted again (when exhausted), else until the oldest usage frees. */
  resetsInMs: number;
}

/** A key's traffic now: requests in flight and admitted in the last minute (its rpm used). */
export interface KeyActivity {
  keyId: string;
  inFlight: number;
  lastMinute: number;
}

/** One request's place in its key's limits, held from admission until `finish`. */
export interface Admission {
  /** X-RateLimit-* headers for the response. */
  readonly headers: Record<string, string>;
  /**
   * Strict mode, once the body is read: reserves `tokens` (the request's worst case) until the
   * request finishes, or throws RateLimitError / InvalidRequestError as `admit` does. The
   * admission stays held either way; `finish` releases it.
   */
  reserve(tokens: number, now: number): void | Promise<void>;
  /**
   * Frees the concurrency slot and any reservation, and bills `billedTokens`. Idempotent, never
   * throws: a shared limiter that cannot be reached logs it and lets the slot's lease expire.
   */
  finish(billedTokens: number): void;
}

export interface AdmitOptions {
  /** Skip the token budget (count_tokens counts against rpm only). */
  checkBudget: boolean;
  /**
   * Strict mode: tokens to reserve until the request finishes (0 otherwise). The gateway admits
   * with 0 before it reads a body and reserves with `Admission.reserve` once it knows max_tokens.
   */
  reserveTokens?: number;
}

/** Reads recorded usage back from the store, for (re)building budgets. */
export type ReadBuckets = (range: { sinceMs: number; untilMs?: number; keyId?: string }) => Promise<BudgetBucket[]>;

export interface RateLimiter {
  /** Where the limits live, for logs and readiness (no credentials). */
  readonly description: string;
  /**
   * Checks the key's budget (already spent?), concurrency and rpm, and takes the request's place
   * in them; throws RateLimitError (429), InvalidRequestError, or LimitsUnavailableError (503)
   * when a shared limiter cannot be reached and the gateway does not fail open.
   */
  admit(key: KeyRecord, now: number, options: AdmitOptions): Promise<Admission>;
  /** The key's budget as /v1/key-status shows it. */
  budget(key: KeyRecord, now: number): Promise<BudgetStatus>;
  /**
   * At start: counts recorded usage from `sinceMs` on into the budgets. A shared limiter does so
   * once for all instances (not again while it still holds budgets).
   */
  load(readBuckets: ReadBuckets, sinceMs: number): Promise<void>;
  /**
   * After a key's window grew: counts back the usage its budget dropped while the window was
   * smaller. Idempotent, also across instances doing it at once.
   */
  restoreWindow(key: KeyRecord, now: number, readBuckets: ReadBuckets): Promise<void>;
  /**
   * Each key's requests in flight and in the last minute (the dashboard's Live page), over every
   * instance where the limits are shared. Keys with neither are left out.
   */
  activity(keyIds: readonly string[], now: number): Promise<KeyActivity[]>;
  /** Answers when the limiter is usable (readiness probes); throws otherwise. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
