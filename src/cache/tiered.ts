/**
 * The cache the gateway holds: the in-process LRU (memory.ts) in front of a shared tier (SQLite
 * in the embedded mode, Redis in the scale-out mode), and single-flight, so that identical
 * requests in flight at once cost one upstream call.
 *
 * - get: memory, else the shared tier (a hit there fills memory). A shared tier that fails is a
 *   miss (logged, throttled), never an error on the request path.
 * - set: memory at once; the shared write runs in the background (not awaited by the request,
 *   errors logged).
 * - purge and stats: over both tiers, reported per tier by name. (In the scale-out mode a purge
 *   clears this instance's memory tier only; the other instances' memory tiers keep their
 *   copies until they expire or are evicted.)
 *
 * Single-flight: `lookupOrLead` answers a hit, or makes the caller the leader of its key — it
 * goes upstream and must end its lead with `publish(entry)` (cacheable answer: stored, and
 * served to everyone waiting) or `abandon()` (error, cut stream, not cacheable). Identical
 * lookups meanwhile wait for the leader, at most `waitMs` (default 60 s; or their own, or until
 * their signal aborts), and are served from its entry; if the leader abandons, or the wait runs
 * out, each waiter gets a lead of its own (unshared: nobody waits on it) and goes upstream
 * itself. The flight is registered before the shared tier is asked, so that a burst arriving
 * during that read still makes one leader.
 *
 * Across instances: without a `lock`, instances dedupe only once the first answer is stored
 * (each instance has its own leader). With one (RedisCacheTier implements CacheLock), an
 * instance's leader first claims the key in Redis (SET NX PX, refreshed while it runs, so a
 * crashed instance's claim lapses within `lockTtlMs`); an instance that finds it claimed polls
 * the shared tier every `pollMs` for the entry, goes itself if the claim is marked failed, and
 * claims it in turn if it lapsed. Redis unreachable: each instance decides alone.
 */
import { throttled, type Logger } from '../logger.ts';
import type { MemoryCacheTier } from './memory.ts';
import type { CacheEntry, CacheStats, CacheTier } from './types.ts';

export const DEFAULT_WAIT_MS = 60_000;
export const DEFAULT_LOCK_TTL_MS = 10_000;
export const DEFAULT_POLL_MS = 100;
/** A lead neither published nor abandoned by then is dropped (a bug's leak, not a slow answer). */
export const MAX_LEAD_MS = 15 * 60_000;

export type LockState = 'free' | 'held' | 'failed';

/** A per-key lock shared by the instances (RedisCacheTier); each call is best effort. */
export interface CacheLock {
  /** true: taken; false: another holds it; undefined: the lock is unreachable. */
  claim(key: string, ttlMs: number): Promise<boolean | undefined>;
  lockState(key: string): Promise<LockState | undefined>;
  refresh(key: string, ttlMs: number): Promise<void>;
  /** failed: mark it so that the waiters go themselves; else delete it. */
  release(key: string, failed: boolean): Promise<void>;
}

export interface TieredCacheOptions {
  memory: MemoryCacheTier;
  /** The shared tier; none: memory only. */
  shared?: CacheTier;
  /** Single-flight across instances (the Redis tier); none: per instance. */
  lock?: CacheLock;
  logger: Logger;
  /** How long an identical request waits for a leader's answer (default 60 s). */
  waitMs?: number;
  lockTtlMs?: number;
  pollMs?: number;
}

export interface LookupOptions {
  /** Overrides the cache's waitMs for this lookup (e.g. the request's own timeout). */
  waitMs?: number;
  /** The request went away: stop waiting (the lookup then resolves a lead of its own). */
  signal?: AbortSignal;
}

/** The right to go upstream for a key; ended exactly once (later calls do nothing). */
export interface Lead {
  readonly key: string;
  /** Whether other lookups may be waiting on this lead (false for a waiter sent on its own). */
  readonly shared: boolean;
  /** A cacheable answer: stored in both tiers and served to every waiter. */
  publish(entry: CacheEntry): void;
  /** No cacheable answer: every waiter goes upstream itself. */
  abandon(): void;
}

export type Lookup = { hit: CacheEntry; from: 'memory' | 'shared' | 'flight' } | { lead: Lead };

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** One key's flight: its leader and the lookups waiting for it. */
class Flight implements Lead {
  readonly key: string;
  readonly shared: boolean;
  private readonly cache: TieredCache;
  private readonly waiters = new Set<(entry: CacheEntry | undefined) => void>();
  private settled = false;
  private locked = false;
  private refresher: NodeJS.Timeout | undefined;
  private readonly deadline: NodeJS.Timeout | undefined;

  constructor(cache: TieredCache, key: string, shared: boolean) {
    this.cache = cache;
    this.key = key;
    this.shared = shared;
    if (shared) {
      this.deadline = setTimeout(() => this.abandon(), MAX_LEAD_MS);
      this.deadline.unref();
    }
  }

  /** Resolves the leader's entry, or undefined if it abandons, the wait runs out or `signal` aborts. */
  wait(waitMs: number, signal: AbortSignal | undefined): Promise<CacheEntry | undefined> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (entry: CacheEntry | undefined) => {
        this.waiters.delete(done);
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve(entry);
      };
      const onAbort = () => done(undefined);
      if (signal?.aborted) return resolve(undefined);
      this.waiters.add(done);
      timer = setTimeout(() => done(undefined), waitMs);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Holds the instances' lock until the lead ends, refreshing it every third of its TTL. */
  holdLock(lock: CacheLock, ttlMs: number): void {
    this.locked = true;
    this.refresher = setInterval(() => void lock.refresh(this.key, ttlMs), Math.max(1, Math.floor(ttlMs / 3)));
    this.refresher.unref();
  }

  /** Ends the flight: unregistered, timers stopped, waiters answered. False if it had ended. */
  private settle(entry: CacheEntry | undefined): boolean {
    if (this.settled) return false;
    this.settled = true;
    clearTimeout(this.deadline);
    clearInterval(this.refresher);
    this.cache.unregister(this);
    for (const waiter of [...this.waiters]) waiter(entry);
    return true;
  }

  /** Serves the waiters an entry found in the shared tier (nothing to store). */
  serve(entry: CacheEntry): void {
    this.settle(entry);
  }

  publish(entry: CacheEntry): void {
    if (!this.settle(entry)) return;
    const stored = this.cache.store(this.key, entry);
    if (this.locked) void stored.then(() => this.cache.lock?.release(this.key, false));
  }

  abandon(): void {
    if (!this.settle(undefined)) return;
    if (this.locked) void this.cache.lock?.release(this.key, true);
  }
}

export class TieredCache {
  readonly memory: MemoryCacheTier;
  readonly shared: CacheTier | undefined;
  readonly lock: CacheLock | undefined;
  private readonly logger: Logger;
  private readonly waitMs: number;
  private readonly lockTtlMs: number;
  private readonly pollMs: number;
  private readonly flights = new Map<string, Flight>();
  private readonly warn = throttled(5000);

  constructor(options: TieredCacheOptions) {
    this.memory = options.memory;
    this.shared = options.shared;
    this.lock = options.lock;
    this.logger = options.logger;
    this.waitMs = options.waitMs ?? DEFAULT_WAIT_MS;
    this.lockTtlMs = options.lockTtlMs ?? DEFAULT_LOCK_TTL_MS;
    this.pollMs = options.pollMs ?? DEFAULT_POLL_MS;
  }

  /** Keys with a leader in this process now. */
  get inFlight(): number {
    return this.flights.size;
  }

  private logFailure(what: string, err: unknown): void {
    this.warn((suppressed) => this.logger.warn({ err: { message: (err as Error).message }, suppressed, tier: this.shared?.name }, `cache: shared tier ${what} failed`));
  }

  private async sharedGet(key: string, now: number): Promise<CacheEntry | undefined> {
    if (!this.shared) return undefined;
    try {
      const entry = await this.shared.get(key, now);
      if (entry) this.memory.put(key, entry);
      return entry;
    } catch (err) {
      this.logFailure('read', err);
      return undefined;
    }
  }

  /** The entry from memory, else from the shared tier (filling memory); a miss on any failure. */
  get(key: string, now: number): Promise<CacheEntry | undefined> {
    const entry = this.memory.peek(key, now);
    return entry ? Promise.resolve(entry) : this.sharedGet(key, now);
  }

  /** Stores in memory now; the returned promise (which never rejects) settles when the shared tier has it. */
  store(key: string, entry: CacheEntry): Promise<void> {
    this.memory.put(key, entry);
    if (!this.shared) return Promise.resolve();
    return this.shared.set(key, entry).catch((err: unknown) => this.logFailure('write', err));
  }

  /** Stores an entry (the shared write is not awaited). */
  set(key: string, entry: CacheEntry): void {
    void this.store(key, entry);
  }

  /** @internal Called by a flight as it ends. */
  unregister(flight: Flight): void {
    if (this.flights.get(flight.key) === flight) this.flights.delete(flight.key);
  }

  /** A hit, or the lead of `key` (see the header). Never rejects. */
  async lookupOrLead(key: string, now: number, options: LookupOptions = {}): Promise<Lookup> {
    const cached = this.memory.peek(key, now);
    if (cached) return { hit: cached, from: 'memory' };
    const waitMs = options.waitMs ?? this.waitMs;
    const running = this.flights.get(key);
    if (running) {
      const entry = await running.wait(waitMs, options.signal);
      return entry ? { hit: entry, from: 'flight' } : { lead: new Flight(this, key, false) };
    }
    const flight = new Flight(this, key, true);
    this.flights.set(key, flight);
    const started = Date.now();
    const entry = await this.sharedGet(key, now);
    if (entry) {
      flight.serve(entry);
      return { hit: entry, from: 'shared' };
    }
    if (!this.lock) return { lead: flight };
    return this.leadAcrossInstances(flight, this.lock, now, started + waitMs, options.signal);
  }

  /** Claims `flight`'s key for the instances, or waits for the instance that has it. */
  private async leadAcrossInstances(flight: Flight, lock: CacheLock, now: number, deadline: number, signal: AbortSignal | undefined): Promise<Lookup> {
    const started = Date.now();
    for (;;) {
      const claimed = await lock.claim(flight.key, this.lockTtlMs);
      if (claimed) flight.holdLock(lock, this.lockTtlMs);
      if (claimed !== false) return { lead: flight };
      for (;;) {
        if (signal?.aborted || Date.now() + this.pollMs > deadline) return { lead: flight };
        await sleep(this.pollMs);
        const at = now + (Date.now() - started);
        let entry = await this.sharedGet(flight.key, at);
        if (entry) {
          flight.serve(entry);
          return { hit: entry, from: 'shared' };
        }
        const state = await lock.lockState(flight.key);
        if (state === undefined || state === 'failed') return { lead: flight };
        if (state === 'free') {
          // The leader ended: stored its answer just now, or lapsed without one.
          entry = await this.sharedGet(flight.key, at);
          if (entry) {
            flight.serve(entry);
            return { hit: entry, from: 'shared' };
          }
          break;
        }
      }
    }
  }

  /** Removes every entry (or one scope's) from both tiers; how many each removed, by tier name. */
  async purge(scope?: string): Promise<Record<string, number>> {
    const removed: Record<string, number> = { [this.memory.name]: this.memory.purgeSync(scope) };
    if (this.shared) removed[this.shared.name] = await this.shared.purge(scope);
    return removed;
  }

  /** Each tier's entries and bytes, by tier name. */
  async stats(): Promise<Record<string, CacheStats>> {
    const stats: Record<string, CacheStats> = { [this.memory.name]: this.memory.statsSync() };
    if (this.shared) stats[this.shared.name] = await this.shared.stats();
    return stats;
  }

  /** Abandons the flights still running, then closes both tiers. */
  async close(): Promise<void> {
    for (const flight of [...this.flights.values()]) flight.abandon();
    await Promise.all([this.memory.close(), this.shared?.close()]);
  }
}
