/**
 * The in-process cache tier: an LRU bounded by bytes, in front of the shared tier (tiered.ts).
 *
 * One Map holds the entries in recency order (a Map iterates in insertion order, so re-inserting
 * on a hit moves an entry to the end and the first key is the least recently used): get, set
 * and eviction are O(1). An entry's size is its key's and body's UTF-8 length plus a fixed
 * overhead standing for the Map slot and the entry object, so that a flood of tiny entries is
 * bounded too; the total never exceeds `maxBytes` once a set returns (an entry bigger than the
 * whole budget is not kept at all). An expired entry is dropped when it is met (a get, or a walk
 * by `purge`/`sweep`), never served; `sweep` drops all of them at once.
 *
 * The sync methods (`peek`, `put`) are the hot path: a hit served from here must cost the
 * gateway less than proxying the miss, so it allocates no promise. The CacheTier methods wrap
 * them.
 */
import type { CacheEntry, CacheStats, CacheTier } from './types.ts';

/** Bytes counted per entry beyond its key and body (Map slot, entry object, numbers). */
export const ENTRY_OVERHEAD_BYTES = 128;
export const DEFAULT_MEMORY_MAX_BYTES = 256 * 1024 * 1024;

export interface MemoryCacheOptions {
  /** The byte budget (default 256 MiB). */
  maxBytes?: number;
}

interface Slot {
  entry: CacheEntry;
  size: number;
}

/** What an entry is counted as against a byte budget (shared with the SQLite tier). */
export function entrySize(key: string, body: string): number {
  return Buffer.byteLength(key) + Buffer.byteLength(body) + ENTRY_OVERHEAD_BYTES;
}

/** Whether `key` belongs to `scope` (keys are `${scope}:${digest}`). */
export function inScope(key: string, scope: string | undefined): boolean {
  return scope === undefined || (key.length > scope.length && key.startsWith(scope) && key.charCodeAt(scope.length) === 58 /* : */);
}

export class MemoryCacheTier implements CacheTier {
  readonly name = 'memory';
  readonly maxBytes: number;
  private readonly slots = new Map<string, Slot>();
  private bytes = 0;

  constructor(options: MemoryCacheOptions = {}) {
    this.maxBytes = options.maxBytes ?? DEFAULT_MEMORY_MAX_BYTES;
  }

  /** The entry if present and not expired at `now` (it becomes the most recently used); sync. */
  peek(key: string, now: number): CacheEntry | undefined {
    const slot = this.slots.get(key);
    if (slot === undefined) return undefined;
    this.slots.delete(key);
    if (now >= slot.entry.expiresAt) {
      this.bytes -= slot.size;
      return undefined;
    }
    this.slots.set(key, slot);
    return slot.entry;
  }

  /** Stores (or replaces) an entry, evicting the least recently used past the budget; sync. */
  put(key: string, entry: CacheEntry): void {
    const old = this.slots.get(key);
    if (old !== undefined) {
      this.slots.delete(key);
      this.bytes -= old.size;
    }
    const size = entrySize(key, entry.body);
    if (size > this.maxBytes) return;
    this.slots.set(key, { entry, size });
    this.bytes += size;
    if (this.bytes > this.maxBytes) this.evict();
  }

  private evict(): void {
    for (const [key, slot] of this.slots) {
      if (this.bytes <= this.maxBytes) return;
      this.slots.delete(key);
      this.bytes -= slot.size;
    }
  }

  /** Drops every entry expired at `now`; returns how many. O(n): for a timer, not a request. */
  sweep(now: number): number {
    let dropped = 0;
    for (const [key, slot] of this.slots) {
      if (now < slot.entry.expiresAt) continue;
      this.slots.delete(key);
      this.bytes -= slot.size;
      dropped++;
    }
    return dropped;
  }

  /** Removes every entry, or those of one scope; sync. */
  purgeSync(scope?: string): number {
    if (scope === undefined) {
      const count = this.slots.size;
      this.slots.clear();
      this.bytes = 0;
      return count;
    }
    let removed = 0;
    for (const [key, slot] of this.slots) {
      if (!inScope(key, scope)) continue;
      this.slots.delete(key);
      this.bytes -= slot.size;
      removed++;
    }
    return removed;
  }

  statsSync(): CacheStats {
    return { entries: this.slots.size, bytes: this.bytes };
  }

  get(key: string, now: number): Promise<CacheEntry | undefined> {
    return Promise.resolve(this.peek(key, now));
  }

  set(key: string, entry: CacheEntry): Promise<void> {
    this.put(key, entry);
    return Promise.resolve();
  }

  purge(scope?: string): Promise<number> {
    return Promise.resolve(this.purgeSync(scope));
  }

  stats(): Promise<CacheStats> {
    return Promise.resolve(this.statsSync());
  }

  close(): Promise<void> {
    this.purgeSync();
    return Promise.resolve();
  }
}
