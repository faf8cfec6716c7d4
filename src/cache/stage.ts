/**
 * The pipeline's cache stage, between resolving the model and going upstream:
 *
 *   BYPASS  not cacheable (caching off, `X-No-Cache: true`, a body too large to key cheaply, an
 *           unparsable body) — the request goes upstream and nothing is stored
 *   HIT     an identical request's answer is within its TTL — answered here (JSON, or replayed as
 *           SSE), no upstream call, no budget tokens (unless configured)
 *   MISS    the request goes upstream; if it is the first of identical requests in flight it
 *           leads (single flight: the others wait for its answer), and a complete successful
 *           answer is stored
 *
 * What the stage acquires (a lead) is released exactly once through `release`, which the
 * pipeline runs when the request finishes, whatever happened.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Config } from '../config.ts';
import type { KeyRecord } from '../store/types.ts';
import { cacheKey } from './key.ts';
import type { CacheEntry } from './types.ts';

/** What the stage needs from the cache: entries, and single flight among identical requests. */
export interface ResponseCache {
  /**
   * The entry for `key`, or the lead for it (this request goes upstream and publishes or
   * abandons), waiting first for a leader already in flight.
   */
  lookupOrLead(key: string, now: number): Promise<{ hit: CacheEntry } | { lead: CacheLead }>;
}

export interface CacheLead {
  /** The answer, complete and successful: store it and serve the waiters from it. */
  publish(entry: CacheEntry): void;
  /** No cacheable answer: the waiters go upstream themselves. */
  abandon(): void;
}

export interface CacheDecision {
  status: 'HIT' | 'MISS' | 'BYPASS';
  /** X-Cache and friends, for the response. */
  headers: Record<string, string>;
  /** On a HIT. */
  entry?: CacheEntry;
  /** On a MISS: store the final message body, billed `tokensSaved`. Once; later calls do nothing. */
  store(body: string, tokensSaved: number): void;
  /** Releases the lead (waiters go upstream) unless `store` published. Idempotent. */
  release(): void;
}

/** This instance's cache decisions since it started (the admin API's cache stats). */
export class CacheCounters {
  hits = 0;
  misses = 0;
  bypassed = 0;
  tokensSaved = 0;
}

const NOTHING = () => {};

function bypass(ttlSeconds: number): CacheDecision {
  return { status: 'BYPASS', headers: { 'x-cache': 'BYPASS', 'x-cache-ttl': String(ttlSeconds) }, store: NOTHING, release: NOTHING };
}

export const NOT_CACHEABLE: CacheDecision = { status: 'BYPASS', headers: {}, store: NOTHING, release: NOTHING };

/**
 * The entries a key may be served: its own, or — when the operator put it in a group — its
 * group's. (Key ids are `key_…`, group scopes `group-…`: they never meet, and neither holds a
 * colon, so a scope is never a prefix of another one's `scope:digest` keys.)
 */
export function cacheScope(key: KeyRecord): string {
  return key.cacheGroup ? `group-${key.cacheGroup}` : key.id;
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value.join(',') : value;
}

/** Decides HIT, MISS or BYPASS for a Messages request whose body and model are known. */
export async function consultCache(
  counters: CacheCounters,
  cache: ResponseCache,
  config: Config['cache'],
  key: KeyRecord,
  request: { body: Buffer; upstreamModel: string },
  headers: IncomingHttpHeaders,
  now: number,
): Promise<CacheDecision> {
  if (!config.enabled) return NOT_CACHEABLE;
  // A key's own TTL wins; 0 turns the cache off for it.
  const ttlSeconds = key.cacheTtlSeconds ?? config.ttlSeconds;
  if (ttlSeconds === 0) {
    counters.bypassed++;
    return { ...NOT_CACHEABLE, headers: { 'x-cache': 'BYPASS' } };
  }
  if (header(headers, 'x-no-cache')?.trim().toLowerCase() === 'true' || request.body.byteLength > config.maxBodyBytes) {
    counters.bypassed++;
    return bypass(ttlSeconds);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(request.body.toString('utf8'));
  } catch {
    counters.bypassed++;
    return bypass(ttlSeconds);
  }
  const digest = cacheKey({
    body: parsed,
    upstreamModel: request.upstreamModel,
    anthropicVersion: header(headers, 'anthropic-version'),
    anthropicBeta: header(headers, 'anthropic-beta'),
    scope: cacheScope(key),
  });
  const found = await cache.lookupOrLead(digest, now);
  if ('hit' in found) {
    const entry = found.hit;
    counters.hits++;
    counters.tokensSaved += entry.tokensSaved;
    return {
      status: 'HIT',
      entry,
      headers: {
        'x-cache': 'HIT',
        'x-cache-ttl': String(Math.max(0, Math.ceil((entry.expiresAt - now) / 1000))),
        'x-tokens-saved': String(entry.tokensSaved),
        age: String(Math.max(0, Math.floor((now - entry.storedAt) / 1000))),
      },
      store: NOTHING,
      release: NOTHING,
    };
  }
  const lead = found.lead;
  counters.misses++;
  let settled = false;
  return {
    status: 'MISS',
    headers: { 'x-cache': 'MISS', 'x-cache-ttl': String(ttlSeconds) },
    store(body, tokensSaved) {
      if (settled) return;
      settled = true;
      const storedAt = Date.now();
      lead.publish({ body, storedAt, expiresAt: storedAt + ttlSeconds * 1000, tokensSaved });
    },
    release() {
      if (settled) return;
      settled = true;
      lead.abandon();
    },
  };
}
