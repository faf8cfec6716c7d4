/**
 * The scale-out RateLimiter: rpm, concurrency and token budgets kept in Redis, shared by every
 * gateway instance, so that N instances enforce one limit rather than N. Same semantics as the
 * in-process limiter (memory.ts), checked by the same contract suite
 * (test/limits-contract.test.ts):
 *
 * - Every check-and-change is one Lua script run atomically on the server (redis-scripts.ts,
 *   where the data layout is described): one round trip to admit, one to finish, one per strict
 *   reservation, one for a budget status.
 * - rpm is an exact sliding window (a sorted set of admission times): the 11th request in 60 s
 *   on an rpm-10 key is refused whichever instance it reaches.
 * - A concurrency slot is a lease with a TTL (`leaseTtlMs`), refreshed every TTL/3 while the
 *   request lives; an instance killed with -9 stops refreshing and its slots (and strict
 *   reservations) free within the TTL.
 * - Token budgets are one-minute buckets, pruned as they leave the window; every key's data
 *   carries a TTL, so an idle key's state expires.
 *
 * Time is the caller's `now` (and `clock` for billing and lease refreshes), never Redis TIME:
 * the instances' clocks must be roughly in sync (NTP); a clock off by s seconds shifts that
 * instance's view of the windows by s.
 *
 * Redis unreachable: a command fails within `commandTimeoutMs` (redis-client.ts), and `admit`
 * then throws LimitsUnavailableError (503), or, with `failOpen`, admits unmetered (no limits,
 * no billing) and warns at most every few seconds. `finish` never throws: it logs, and sends
 * again when Redis is back what it could not send — the release of the slot (also for an
 * admission whose answer was lost, so no slot stays taken by a request that was refused) and,
 * when it certainly never reached Redis, the bill. Until then the slot's lease expires by itself.
 * A bill sent but unanswered (Redis hung, then the connection dropped) may be missing from the
 * shared budget; the usage store has it.
 *
 * Budgets from the store: `load` fills them once per deployment (a marker set with SET NX; the
 * other instances wait for it). Limitation: a Redis that loses its data while instances run (a
 * restart without persistence, an eviction) forgets the budgets until they are loaded again —
 * at the next instance start, or at once when the instances reconnect after a Redis restart and
 * find the marker gone (see `reconnected`). A FLUSHALL without a reconnect is noticed only at
 * the next start. Run Redis with `maxmemory-policy noeviction` so that nothing is evicted.
 */
import { createHash, randomBytes } from 'node:crypto';
import { ReplyError } from 'ioredis';
import { LimitsUnavailableError, type RateLimitError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { BudgetBucket, KeyRecord } from '../store/types.ts';
import { connectRedis, describeRedis, quitRedis, throttled, type Redis } from './redis-client.ts';
import { ADD_OLDER, ADMIT, BUDGET, FINISH, REFRESH, RESERVE, SWAP_MARKER } from './redis-scripts.ts';
import { admittedHeaders, budgetRefusal, checkWholeBudget, concurrencyRefusal, reservedRefusal, rpmRefusal } from './refusals.ts';
import type { Admission, AdmitOptions, BudgetStatus, KeyActivity, RateLimiter, ReadBuckets } from './types.ts';

const MINUTE_MS = 60_000;
/** Budget data outlives its window by this much, so a bucket is pruned before it expires. */
const BUDGET_TTL_SLACK_MS = 2 * MINUTE_MS;
/** How long a loading instance holds the load marker before another may take over. */
const LOAD_LEASE_MS = 30_000;
/** At most this many FINISH calls wait for Redis to come back; the oldest are dropped. */
const MAX_RETRIES = 10_000;
/** Buckets per ADD_OLDER call (keeps each script short and its argument list small). */
const BUCKETS_PER_CALL = 500;

export interface RedisRateLimiterOptions {
  logger: Logger;
  /** Redis unreachable: admit unmetered (true) or refuse with 503 (false). */
  failOpen: boolean;
  /** A concurrency slot's lease; refreshed every third of it while the request lives. */
  leaseTtlMs: number;
  /** Prefix of every key (several deployments, one Redis); default 'claudcode:'. */
  prefix?: string;
  /** When a finished request's tokens are billed and leases are refreshed (injected by tests). */
  clock?: () => number;
  /** How long a Redis command may take before Redis counts as unreachable; default 1000 ms. */
  commandTimeoutMs?: number;
}

/**
 * A Lua script run by EVALSHA, loaded at start and after each reconnect; EVAL if Redis lost it
 * in between (EVAL after a failed EVALSHA may run after a later command: rare, and harmless for
 * these scripts).
 */
class Script {
  readonly source: string;
  readonly sha: string;

  constructor(source: string) {
    this.source = source;
    this.sha = createHash('sha1').update(source).digest('hex');
  }

  async run(redis: Redis, keys: string[], args: Array<string | number>): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!(err instanceof ReplyError) || !(err as Error).message.startsWith('NOSCRIPT')) throw err;
      return redis.eval(this.source, keys.length, ...keys, ...args);
    }
  }
}

interface BatchedCall {
  script: Script;
  keys: string[];
  args: Array<string | number>;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

/**
 * The limiter's scripts (admit, reserve and finish on the hot path, and the rest so that order
 * holds: a finish is never overtaken by a later budget read), sent as one pipeline per turn of
 * the event loop: one socket write and one read for every request that arrived in the same poll phase,
 * where a command each cost a write syscall each (the largest cost in the scale-out profile).
 * ioredis's own auto-pipelining batches only within one callback (process.nextTick), and each
 * request arrives in its own. A lone call goes out as it would have; at low load nothing waits
 * longer than the rest of the current poll phase.
 */
class ScriptBatcher {
  private readonly redis: Redis;
  private readonly timeoutMs: number;
  private queue: BatchedCall[] = [];
  private scheduled = false;

  constructor(redis: Redis, timeoutMs: number) {
    this.redis = redis;
    this.timeoutMs = timeoutMs;
  }

  run(script: Script, keys: string[], args: Array<string | number>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.queue.push({ script, keys, args, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /**
   * Resolves once every call queued so far has been handed to the connection, so that a command
   * issued after it reaches Redis after them (a read never overtakes an earlier finish).
   */
  sent(): Promise<void> {
    // The flush was scheduled with setImmediate before this one: immediates run in order.
    return this.scheduled ? new Promise((resolve) => setImmediate(resolve)) : Promise.resolve();
  }

  private flush(): void {
    this.scheduled = false;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 1) {
      const call = batch[0]!;
      call.script.run(this.redis, call.keys, call.args).then(call.resolve, call.reject);
      return;
    }
    const pipeline = this.redis.pipeline();
    for (const call of batch) pipeline.evalsha(call.script.sha, call.keys.length, ...call.keys, ...call.args);
    // A pipeline's commands are not bound by ioredis's commandTimeout: bound them here.
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      for (const call of batch) call.reject(new Error('Command timed out'));
    }, this.timeoutMs);
    timer.unref();
    pipeline.exec().then(
      (results) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        batch.forEach((call, i) => {
          const [err, value] = results?.[i] ?? [new Error('no reply'), undefined];
          if (!err) call.resolve(value);
          else if (err instanceof ReplyError && err.message.startsWith('NOSCRIPT')) {
            call.script.run(this.redis, call.keys, call.args).then(call.resolve, call.reject);
          } else call.reject(err);
        });
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        for (const call of batch) call.reject(err);
      },
    );
  }
}

const SCRIPTS = {
  admit: new Script(ADMIT),
  reserve: new Script(RESERVE),
  finish: new Script(FINISH),
  budget: new Script(BUDGET),
  addOlder: new Script(ADD_OLDER),
  refresh: new Script(REFRESH),
  swapMarker: new Script(SWAP_MARKER),
};

/** One key's Redis keys; the `{id}` hash tag keeps them in one slot. */
interface KeyKeys {
  rpm: string;
  lease: string;
  res: string;
  tok: string;
  min: string;
}

/** FINISH's ARGV: admission id, tokens, minute, now, window ms, budget keys' ttl ms. */
type FinishArgs = [string, number, string, number, number, number];

function finishArgs(id: string, tokens: number, now: number, windowMs: number): FinishArgs {
  return [id, tokens, String(Math.floor(now / MINUTE_MS)), now, windowMs, windowMs + BUDGET_TTL_SLACK_MS];
}

function finishKeys(keys: KeyKeys): string[] {
  return [keys.lease, keys.res, keys.tok, keys.min];
}

/** The admission given while Redis is unreachable and the gateway fails open: no limits. */
function unmetered(): Admission {
  return { headers: {}, reserve: () => {}, finish: () => {} };
}

/**
 * The 429 for a budget refusal, in the wording memory.ts uses too (refusals.ts), from a script's
 * reply: {1, used, reserved} (reservations in the way) or {2, used, freesAt}.
 */
function budgetRefusalOf(key: KeyRecord, now: number, wanted: number, reply: number[]): RateLimitError {
  return reply[0] === 1 ? reservedRefusal(key, now, reply[1]!, reply[2]!) : budgetRefusal(key, now, wanted, reply[1]!, reply[2]!);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One request's place: its lease, refreshed by the limiter while it lives. */
class RedisAdmission implements Admission {
  readonly headers: Record<string, string>;
  readonly id: string;
  readonly keys: KeyKeys;
  private readonly limiter: RedisRateLimiter;
  private readonly key: KeyRecord;
  private finished = false;

  constructor(limiter: RedisRateLimiter, key: KeyRecord, keys: KeyKeys, id: string, headers: Record<string, string>) {
    this.limiter = limiter;
    this.key = key;
    this.keys = keys;
    this.id = id;
    this.headers = headers;
  }

  async reserve(tokens: number, now: number): Promise<void> {
    if (this.finished || tokens <= 0) return;
    checkWholeBudget(this.key, tokens);
    await this.limiter.reserveFor(this.key, this.keys, this.id, tokens, now);
  }

  finish(billedTokens: number): void {
    if (this.finished) return;
    this.finished = true;
    this.limiter.finishFor(this, this.key, billedTokens);
  }
}

export class RedisRateLimiter implements RateLimiter {
  readonly description: string;
  private readonly redis: Redis;
  private readonly logger: Logger;
  private readonly failOpen: boolean;
  private readonly leaseTtlMs: number;
  private readonly prefix: string;
  private readonly clock: () => number;
  /** Admission ids are this instance's id and a counter: unique without a random call each. */
  private readonly instanceId = randomBytes(6).toString('base64url');
  private sequence = 0;
  /** Admissions in flight on this instance, whose leases the refresher keeps alive. */
  private readonly live = new Map<string, RedisAdmission>();
  private refresher: NodeJS.Timeout | undefined;
  private readonly warnUnavailable = throttled(5000);
  private readonly warnFinish = throttled(5000);
  private readonly warnRefresh = throttled(5000);
  /** FINISH calls to send again once Redis is back (see sendFinish). */
  private readonly retries: Array<{ keys: KeyKeys; keyId: string; args: FinishArgs }> = [];
  /** What `load` was last asked, to load again when Redis comes back without its data. */
  private lastLoad: { readBuckets: ReadBuckets; spanMs: number } | undefined;
  private closed = false;
  /** Every script call, batched per turn of the event loop (in order: a finish is never overtaken). */
  private readonly hot: ScriptBatcher;

  private constructor(redis: Redis, url: string, options: RedisRateLimiterOptions) {
    this.redis = redis;
    this.hot = new ScriptBatcher(redis, options.commandTimeoutMs ?? 1000);
    this.description = describeRedis(url);
    this.logger = options.logger;
    this.failOpen = options.failOpen;
    this.leaseTtlMs = options.leaseTtlMs;
    this.prefix = options.prefix ?? 'claudcode:';
    this.clock = options.clock ?? (() => Date.now());
    // Connected already (open): every later 'ready' is a reconnect.
    redis.on('ready', () => void this.reconnected());
  }

  static async open(url: string, options: RedisRateLimiterOptions): Promise<RedisRateLimiter> {
    const redis = await connectRedis(url, { logger: options.logger, role: 'limits', commandTimeoutMs: options.commandTimeoutMs });
    const limiter = new RedisRateLimiter(redis, url, options);
    try {
      await limiter.loadScripts();
    } catch (err) {
      redis.disconnect();
      throw err;
    }
    return limiter;
  }

  private async loadScripts(): Promise<void> {
    await Promise.all(Object.values(SCRIPTS).map((s) => this.redis.script('LOAD', s.source)));
  }

  private keysOf(keyId: string): KeyKeys {
    const base = `${this.prefix}limits:{${keyId}}:`;
    return { rpm: `${base}rpm`, lease: `${base}lease`, res: `${base}res`, tok: `${base}tok`, min: `${base}min` };
  }

  private get markerKey(): string {
    return `${this.prefix}limits:loaded`;
  }

  /** Redis failed a request's admission or reservation: 503, or unmetered when failing open. */
  private unavailable(err: unknown, during: string): void {
    const outage = !(err instanceof ReplyError);
    this.warnUnavailable((suppressed) => {
      const what = outage ? 'Redis unreachable' : 'Redis limits script failed';
      const then = this.failOpen ? 'requests pass unmetered (fail-open)' : 'requests are refused with 503';
      this.logger[outage ? 'warn' : 'error']({ err, during, suppressed }, `${what}: ${then}`);
    });
    if (!this.failOpen) throw new LimitsUnavailableError();
  }

  async admit(key: KeyRecord, now: number, options: AdmitOptions): Promise<Admission> {
    const reserveTokens = options.reserveTokens ?? 0;
    if (options.checkBudget) checkWholeBudget(key, reserveTokens);
    const windowMs = key.windowSeconds * 1000;
    const keys = this.keysOf(key.id);
    const id = `${this.instanceId}.${(this.sequence++).toString(36)}`;
    let reply: number[];
    try {
      reply = (await this.hot.run(SCRIPTS.admit, [keys.rpm, keys.lease, keys.res, keys.tok, keys.min], [
        now,
        windowMs,
        key.budgetTokens,
        options.checkBudget ? 1 : 0,
        reserveTokens,
        key.concurrent,
        key.rpm,
        id,
        now + this.leaseTtlMs,
        this.leaseTtlMs + 5000,
      ])) as number[];
    } catch (err) {
      // The script may yet run (an answer lost, not a request): release what it would take.
      if (!(err instanceof ReplyError)) this.sendFinish(keys, finishArgs(id, 0, now, windowMs), key.id);
      this.unavailable(err, 'admit');
      return unmetered();
    }
    switch (reply[0]) {
      case 1:
      case 2:
        throw budgetRefusalOf(key, now, reserveTokens, reply);
      case 3:
        throw concurrencyRefusal(key, now);
      case 4:
        throw rpmRefusal(key, now, reply[1]!);
    }
    const [, recent, rpmResetAt, used, oldestTokens] = reply as [number, number, number, number, number];
    const headers = admittedHeaders(key, now, { recent, rpmResetAt, used, oldestTokensAt: oldestTokens >= 0 ? oldestTokens : null });
    const admission = new RedisAdmission(this, key, keys, id, headers);
    if (!this.closed) {
      this.live.set(id, admission);
      this.startRefresher();
    }
    return admission;
  }

  /** Admission.reserve, past the checks that need no Redis. */
  async reserveFor(key: KeyRecord, keys: KeyKeys, id: string, tokens: number, now: number): Promise<void> {
    let reply: number[];
    try {
      reply = (await this.hot.run(SCRIPTS.reserve, [keys.lease, keys.res, keys.tok, keys.min], [
        now,
        key.windowSeconds * 1000,
        key.budgetTokens,
        tokens,
        id,
        now + this.leaseTtlMs,
        this.leaseTtlMs + 5000,
      ])) as number[];
    } catch (err) {
      this.unavailable(err, 'reserve');
      return;
    }
    if (reply[0] !== 0) throw budgetRefusalOf(key, now, tokens, reply);
  }

  /** Admission.finish: one script, fire and forget; a failure is logged, never thrown. */
  finishFor(admission: RedisAdmission, key: KeyRecord, billedTokens: number): void {
    this.live.delete(admission.id);
    const tokens = Number.isFinite(billedTokens) ? Math.max(0, Math.ceil(billedTokens)) : 0;
    this.sendFinish(admission.keys, finishArgs(admission.id, tokens, this.clock(), key.windowSeconds * 1000), key.id);
  }

  /**
   * Runs FINISH; when Redis cannot be reached, queues it for when Redis is back. Releasing a
   * lease and a reservation is safe to repeat, so that part is always retried (an instance need
   * not wait a lease TTL for a slot a lost answer left taken); the bill only when the command
   * certainly never left this process (no connection), since a bill sent but unanswered may
   * have counted already.
   */
  private sendFinish(keys: KeyKeys, args: FinishArgs, keyId: string): void {
    this.hot.run(SCRIPTS.finish, finishKeys(keys), args).catch((err: unknown) => {
      if (err instanceof ReplyError) {
        this.logger.error({ err, keyId }, 'Redis limits script failed at the end of a request');
        return;
      }
      const neverSent = /enableOfflineQueue/.test((err as Error).message);
      const billed = args[1];
      if (this.retries.length >= MAX_RETRIES) this.retries.shift();
      this.retries.push({ keys, keyId, args: neverSent ? args : [args[0], 0, ...args.slice(2)] as FinishArgs });
      if (billed === 0) return;
      this.warnFinish((suppressed) =>
        this.logger.warn(
          { err, keyId, billedTokens: billed, suppressed },
          neverSent
            ? 'Redis unreachable at the end of a request: its tokens are billed to the shared budget when Redis is back'
            : 'Redis did not answer at the end of a request: its tokens may be missing from the shared budget (the usage store has them)',
        ),
      );
    });
  }

  /** Redis is back: what failed while it was away is sent again (and queued again if it fails). */
  private flushRetries(): void {
    for (const { keys, keyId, args } of this.retries.splice(0)) this.sendFinish(keys, args, keyId);
  }

  /**
   * One timer for every live admission (not one each): every TTL/3 it refreshes the leases this
   * instance holds, one script per key, and stops once none are left.
   */
  private startRefresher(): void {
    if (this.refresher) return;
    this.refresher = setInterval(() => this.refreshLeases(), Math.max(50, Math.floor(this.leaseTtlMs / 3)));
    this.refresher.unref();
  }

  private stopRefresher(): void {
    clearInterval(this.refresher);
    this.refresher = undefined;
  }

  private refreshLeases(): void {
    if (this.live.size === 0) return this.stopRefresher();
    const byKey = new Map<string, { keys: KeyKeys; ids: string[] }>();
    for (const admission of this.live.values()) {
      const group = byKey.get(admission.keys.lease);
      if (group) group.ids.push(admission.id);
      else byKey.set(admission.keys.lease, { keys: admission.keys, ids: [admission.id] });
    }
    const expiry = this.clock() + this.leaseTtlMs;
    for (const { keys, ids } of byKey.values()) {
      this.hot.run(SCRIPTS.refresh, [keys.lease, keys.res], [expiry, this.leaseTtlMs + 5000, ...ids]).catch((err: unknown) => {
        this.warnRefresh((suppressed) =>
          this.logger.warn({ err, suppressed }, 'Redis unreachable: cannot refresh concurrency leases (slots held longer than the lease TTL may be given to others)'),
        );
      });
    }
  }

  async budget(key: KeyRecord, now: number): Promise<BudgetStatus> {
    const windowMs = key.windowSeconds * 1000;
    const keys = this.keysOf(key.id);
    let reply: number[];
    try {
      reply = (await this.hot.run(SCRIPTS.budget, [keys.tok, keys.min], [now, windowMs, key.budgetTokens])) as number[];
    } catch (err) {
      this.logger.warn({ err }, 'Redis unreachable: cannot read a budget');
      throw new LimitsUnavailableError();
    }
    const [used, resetsAt] = reply as [number, number];
    // As memory.ts: no reset is ever reported further away than the window itself.
    return {
      total: key.budgetTokens,
      used,
      remaining: Math.max(0, key.budgetTokens - used),
      resetsInMs: Math.min(windowMs, Math.max(0, resetsAt - now)),
    };
  }

  /**
   * Puts `buckets` (one key's usage from the store) into the key's budget where it lacks them:
   * only minutes in [fromMinute, covered) count, so doing it twice, or on two instances at
   * once, adds them once. Newest first, one call per BUCKETS_PER_CALL, each covering down to its
   * oldest minute, so that a call cut short by an outage leaves a consistent `covered`.
   */
  private async addOlder(keys: KeyKeys, fromMinute: number, buckets: ReadonlyArray<{ minute: number; tokens: number }>, ttlMs: number): Promise<void> {
    const sorted = buckets
      .map((b) => ({ minute: Math.floor(Number(b.minute)), tokens: Math.round(Number(b.tokens)) }))
      .filter((b) => b.minute >= fromMinute && b.tokens > 0)
      .sort((a, b) => b.minute - a.minute);
    const ttl = Math.max(BUDGET_TTL_SLACK_MS, Math.ceil(ttlMs));
    for (let i = 0; i === 0 || i < sorted.length; i += BUCKETS_PER_CALL) {
      const chunk = sorted.slice(i, i + BUCKETS_PER_CALL);
      const last = i + BUCKETS_PER_CALL >= sorted.length;
      const from = last ? fromMinute : chunk[chunk.length - 1]!.minute;
      await this.hot.run(SCRIPTS.addOlder, [keys.tok, keys.min], [from, ttl, ...chunk.flatMap((b) => [b.minute, b.tokens])]);
    }
  }

  /**
   * Loads recorded usage into the shared budgets, once per deployment: the first instance sets
   * the marker (SET NX, as a lease it refreshes while loading) and loads; the others wait for
   * it to say done. A loader that dies lets the marker expire and another takes over; what the
   * dead one had loaded is not added twice (addOlder only adds what a key lacks).
   */
  async load(readBuckets: ReadBuckets, sinceMs: number): Promise<void> {
    this.lastLoad = { readBuckets, spanMs: Math.max(0, this.clock() - sinceMs) };
    const marker = this.markerKey;
    const token = `loading ${this.instanceId}`;
    for (;;) {
      if ((await this.redis.set(marker, token, 'PX', LOAD_LEASE_MS, 'NX')) === 'OK') break;
      const state = await this.redis.get(marker);
      if (state?.startsWith('done')) return;
      if (state !== null) await sleep(100);
    }
    // Hold the marker while loading (reading a large store may take a while).
    const renew = setInterval(() => {
      this.hot.run(SCRIPTS.swapMarker, [marker], [token, token, LOAD_LEASE_MS]).catch(() => {});
    }, LOAD_LEASE_MS / 3);
    renew.unref();
    try {
      const buckets = await readBuckets({ sinceMs });
      const byKey = new Map<string, BudgetBucket[]>();
      for (const b of buckets) {
        const list = byKey.get(b.keyId);
        if (list) list.push(b);
        else byKey.set(b.keyId, [b]);
      }
      const fromMinute = Math.floor(sinceMs / MINUTE_MS);
      const ttlMs = this.clock() - sinceMs + BUDGET_TTL_SLACK_MS;
      for (const [keyId, list] of byKey) await this.addOlder(this.keysOf(keyId), fromMinute, list, ttlMs);
      const done = `done ${new Date().toISOString()} from ${new Date(sinceMs).toISOString()} by ${this.instanceId}`;
      await this.hot.run(SCRIPTS.swapMarker, [marker], [token, done, 0]);
      this.logger.info({ keys: byKey.size, buckets: buckets.length }, 'loaded recorded usage into the shared budgets');
    } catch (err) {
      await this.hot.run(SCRIPTS.swapMarker, [marker], [token, '', 0]).catch(() => {});
      throw err;
    } finally {
      clearInterval(renew);
    }
  }

  /**
   * After a reconnect, to a Redis that may have restarted: without its script cache (loaded
   * again, so that no call falls back to EVAL, which could run after a later call), or without
   * its data (no load marker: the budgets are loaded again). Then what finish could not send
   * goes out.
   */
  private async reconnected(): Promise<void> {
    try {
      await this.loadScripts();
      const last = this.lastLoad;
      if (last && !this.closed && (await this.redis.exists(this.markerKey)) === 0) {
        this.logger.warn('Redis came back without the shared budgets (restarted without persistence?): loading them again from the usage store');
        await this.load(last.readBuckets, this.clock() - last.spanMs);
      }
    } catch (err) {
      this.logger.error({ err }, 'after reconnecting to Redis: reloading scripts or budgets failed (budgets are loaded again at the next start)');
    }
    this.flushRetries();
  }

  async restoreWindow(key: KeyRecord, now: number, readBuckets: ReadBuckets): Promise<void> {
    const keys = this.keysOf(key.id);
    const windowMs = key.windowSeconds * 1000;
    const neededFrom = Math.floor((now - windowMs) / MINUTE_MS) - 1;
    // No budget data at all: Redis holds nothing of this key, so the store has all of it.
    const covered = await this.redis.hget(keys.tok, 'c');
    if (covered !== null && neededFrom >= Number(covered)) return;
    const range = covered === null ? { sinceMs: neededFrom * MINUTE_MS } : { sinceMs: neededFrom * MINUTE_MS, untilMs: Number(covered) * MINUTE_MS };
    const buckets = await readBuckets({ ...range, keyId: key.id });
    await this.addOlder(keys, neededFrom, buckets, windowMs + BUDGET_TTL_SLACK_MS);
  }

  /**
   * Two counts per key: the rpm set's last minute, and the leases not yet expired (a killed
   * instance's slots stop counting when their lease runs out). Sent as plain commands, which
   * ioredis's auto-pipelining queues behind the finishes already sent (an explicit pipeline
   * would overtake them).
   */
  async activity(keyIds: readonly string[], now: number): Promise<KeyActivity[]> {
    await this.hot.sent();
    let counts: Array<[number, number]>;
    try {
      counts = await Promise.all(
        keyIds.map((keyId) => {
          const keys = this.keysOf(keyId);
          return Promise.all([this.redis.zcount(keys.rpm, `(${now - 60_000}`, '+inf'), this.redis.zcount(keys.lease, `(${now}`, '+inf')]);
        }),
      );
    } catch (err) {
      this.logger.warn({ err }, 'Redis unreachable: cannot read key activity');
      throw new LimitsUnavailableError();
    }
    const active: KeyActivity[] = [];
    keyIds.forEach((keyId, i) => {
      const [lastMinute, inFlight] = counts[i]!;
      if (inFlight > 0 || lastMinute > 0) active.push({ keyId, inFlight, lastMinute });
    });
    return active;
  }

  async ping(): Promise<void> {
    try {
      await this.redis.ping();
    } catch {
      throw new Error(`Redis not reachable (connection ${this.redis.status})`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopRefresher();
    this.live.clear();
    await quitRedis(this.redis);
  }
}
