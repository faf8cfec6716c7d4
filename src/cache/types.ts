/**
 * The response cache's seams. An identical request seen within the TTL is answered by the
 * gateway itself: exact matching only (a canonical form of everything that shapes the answer,
 * key.ts), scoped per tenant. Entries hold the final message; a streaming hit replays it as SSE
 * (replay.ts), a streamed miss is reassembled into it as it passes (accumulate.ts).
 *
 * Tiers: an in-process LRU bounded by bytes (memory.ts) in front of a shared tier — SQLite in the
 * embedded mode (survives a restart), Redis in the scale-out mode (one instance's entry serves
 * another). `TieredCache` (tiered.ts) puts them together.
 */

/** One cached answer. */
export interface CacheEntry {
  /** The final message as JSON text (what a non-streamed request gets as its body). */
  body: string;
  /** Unix ms when it was stored (for `Age`). */
  storedAt: number;
  /** Unix ms after which it is not served. */
  expiresAt: number;
  /** Budget tokens the original request was billed (X-Tokens-Saved). */
  tokensSaved: number;
}

export interface CacheStats {
  entries: number;
  bytes: number;
}

/** One storage tier. Keys are `${scope}:${digest}`, so a scope can be purged on its own. */
export interface CacheTier {
  readonly name: string;
  /** The entry, if present and not expired at `now`. */
  get(key: string, now: number): Promise<CacheEntry | undefined>;
  set(key: string, entry: CacheEntry): Promise<void>;
  /** Removes every entry (no scope) or those of one scope; returns how many. */
  purge(scope?: string): Promise<number>;
  stats(): Promise<CacheStats>;
  close(): Promise<void>;
}
