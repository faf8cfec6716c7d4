/**
 * Gateway keys: how they are made, stored (as a hash) and recognised on each request.
 *
 * A key is "sk-cc-" + 32 base62 characters (~190 random bits). Only its SHA-256 is stored: a
 * slow password hash buys nothing for a random secret of that size and would cost every request.
 * Lookup is by hash in a Map, then a constant-time comparison of the hashes.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { createHash, randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import type { Config } from './config.ts';
import { AuthenticationError } from './errors.ts';
import { NO_KEY_CHANGE_SIGNAL, type KeyChangeSignal } from './key-changes.ts';
import { formatWait, formatWindow } from './limits/format.ts';
import type { RateLimiter } from './limits/types.ts';
import type { KeyRecord, Store } from './store/types.ts';

export const KEY_PREFIX = 'sk-cc-';
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const KEY_BODY_LENGTH = 32;

function randomBase62(length: number): string {
  let out = '';
  for (let i = 0; i < length; i++) out += BASE62[randomInt(62)];
  return out;
}

export function hashKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

export function previewKey(key: string): string {
  return `${KEY_PREFIX}...${key.slice(-4)}`;
}

export function generateKey(): string {
  return KEY_PREFIX + randomBase62(KEY_BODY_LENGTH);
}

export interface NewKeyOptions {
  name: string;
  budgetTokens?: number;
  windowSeconds?: number;
  rpm?: number;
  concurrent?: number;
  models?: string[] | null;
  expiresAt?: number | null;
  disabled?: boolean;
  /** null (the default): the gateway's cache TTL; 0: no caching for this key. */
  cacheTtlSeconds?: number | null;
  /** null (the default): cache entries of this key alone. */
  cacheGroup?: string | null;
  /** Attached MCP servers the key may use, by name; [] (the default): none. */
  mcpServers?: string[];
}

/** Creates a key in the store and returns its record together with the secret (shown once). */
export async function createKey(
  store: Store,
  defaults: Config['keyDefaults'],
  options: NewKeyOptions,
): Promise<{ record: KeyRecord; key: string }> {
  const key = generateKey();
  const now = Date.now();
  const record: KeyRecord = {
    id: `key_${randomBytes(9).toString('base64url')}`,
    name: options.name,
    hash: hashKey(key),
    preview: previewKey(key),
    budgetTokens: options.budgetTokens ?? defaults.budgetTokens,
    windowSeconds: options.windowSeconds ?? defaults.windowSeconds,
    rpm: options.rpm ?? defaults.rpm,
    concurrent: options.concurrent ?? defaults.concurrent,
    models: options.models ?? null,
    expiresAt: options.expiresAt ?? null,
    disabled: options.disabled ?? false,
    cacheTtlSeconds: options.cacheTtlSeconds ?? null,
    cacheGroup: options.cacheGroup ?? null,
    mcpServers: options.mcpServers ?? [],
    createdAt: now,
    updatedAt: now,
  };
  await store.createKey(record);
  return { record, key };
}

/** The public view of a key: everything but the hash. */
export function describeKey(record: KeyRecord) {
  return {
    id: record.id,
    name: record.name,
    key_preview: record.preview,
    budget_tokens: record.budgetTokens,
    window_seconds: record.windowSeconds,
    rpm: record.rpm,
    concurrent: record.concurrent,
    models: record.models,
    expires_at: record.expiresAt === null ? null : new Date(record.expiresAt).toISOString(),
    disabled: record.disabled,
    /** null: the gateway's default TTL; 0: the cache is off for this key. */
    cache_ttl_seconds: record.cacheTtlSeconds,
    /** null: cache entries scoped to this key alone. */
    cache_group: record.cacheGroup,
    /** Attached MCP servers whose tools the key gets; [] for none. */
    mcp_servers: record.mcpServers,
    status: keyStatus(record, Date.now()),
    created_at: new Date(record.createdAt).toISOString(),
    updated_at: new Date(record.updatedAt).toISOString(),
  };
}

export type KeyState = 'active' | 'disabled' | 'expired';

export function keyStatus(record: KeyRecord, now: number): KeyState {
  if (record.disabled) return 'disabled';
  if (record.expiresAt !== null && record.expiresAt <= now) return 'expired';
  return 'active';
}

/** The calling key's own view of itself: GET /v1/key-status and the MCP tool key_status. */
export async function keyStatusReport(key: KeyRecord, limits: RateLimiter, now: number) {
  const budget = await limits.budget(key, now);
  return {
    key: key.preview,
    status: keyStatus(key, now),
    budget: {
      total_tokens: budget.total,
      used_tokens: budget.used,
      remaining_tokens: budget.remaining,
      window: formatWindow(key.windowSeconds),
      resets_in: formatWait(budget.resetsInMs),
    },
    rate_limit: { rpm: key.rpm, concurrent: key.concurrent },
  };
}

/** Pulls the presented key out of `x-api-key` or `Authorization: Bearer`. */
export function presentedKey(headers: IncomingHttpHeaders): string | null {
  const apiKey = headers['x-api-key'];
  if (typeof apiKey === 'string' && apiKey) return apiKey.trim();
  const auth = headers.authorization;
  if (auth) {
    const match = /^Bearer\s+(.+)$/i.exec(auth.trim());
    if (match?.[1]) return match[1].trim();
  }
  return null;
}

/**
 * An in-memory copy of every key, indexed by hash, kept fresh by polling the store's key
 * generation so that a change made by the CLI or another instance applies within a second.
 */
export class KeyRegistry {
  private byHash = new Map<string, KeyRecord>();
  private generation = -1;
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> | undefined;
  private readonly store: Store;
  private readonly beforeReload: ((next: KeyRecord[], previous: ReadonlyMap<string, KeyRecord>) => Promise<void>) | undefined;
  private readonly signal: KeyChangeSignal;

  /**
   * `beforeReload` runs with the new key records before they take effect (e.g. to rebuild the
   * budget of a key whose window grew), so no request sees a key its limits are not ready for.
   * `signal` tells the other instances when this one changed keys (`changed`).
   */
  constructor(
    store: Store,
    beforeReload?: (next: KeyRecord[], previous: ReadonlyMap<string, KeyRecord>) => Promise<void>,
    signal: KeyChangeSignal = NO_KEY_CHANGE_SIGNAL,
  ) {
    this.store = store;
    this.beforeReload = beforeReload;
    this.signal = signal;
  }

  /** After this instance changed keys in the store: reload them here and tell the others. */
  async changed(): Promise<void> {
    await this.refresh();
    await this.signal.publish();
  }

  async start(refreshMs: number, onError: (err: unknown) => void): Promise<void> {
    await this.refresh();
    this.timer = setInterval(() => {
      this.refresh().catch(onError);
    }, refreshMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Reloads every key if anything changed since the last load. */
  refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        const generation = await this.store.keysGeneration();
        if (generation === this.generation) return;
        const keys = await this.store.listKeys();
        if (this.beforeReload && this.generation !== -1) {
          await this.beforeReload(keys, new Map([...this.byHash.values()].map((k) => [k.id, k])));
        }
        this.byHash = new Map(keys.map((k) => [k.hash, k]));
        this.generation = generation;
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  /** The active key for a request's headers, or an AuthenticationError. */
  authenticate(headers: IncomingHttpHeaders, now: number): KeyRecord {
    const presented = presentedKey(headers);
    if (!presented) {
      throw new AuthenticationError('Missing API key: send it in the x-api-key header or as Authorization: Bearer.');
    }
    const hash = hashKey(presented);
    const record = this.byHash.get(hash);
    if (!record || !timingSafeEqual(Buffer.from(record.hash, 'hex'), Buffer.from(hash, 'hex'))) {
      throw new AuthenticationError('invalid x-api-key');
    }
    const state = keyStatus(record, now);
    if (state === 'disabled') throw new AuthenticationError('This API key has been disabled.');
    if (state === 'expired') throw new AuthenticationError('This API key has expired.');
    return record;
  }
}

