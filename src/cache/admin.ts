/**
 * The cache's admin routes, mounted under /admin (behind the admin token) by admin.ts:
 *
 *   GET    /admin/cache             tiers (entries, bytes each), and this instance's hits,
 *                                   misses, bypasses and tokens saved since it started
 *   DELETE /admin/cache[?key=ID]    purge everything, or the entries one key can be served
 *
 * A purge clears the shared tier and this instance's memory tier, and in the scale-out mode tells
 * the other instances (Redis pub/sub) to drop their memory tiers.
 */
import { Hono } from 'hono';
import { NotFoundError } from '../errors.ts';
import type { GatewayEnv } from '../app-env.ts';
import type { KeyChangeSignal } from '../key-changes.ts';
import type { KeyStore } from '../store/types.ts';
import { cacheScope } from './stage.ts';
import type { CacheCounters } from './stage.ts';
import type { TieredCache } from './tiered.ts';

export function cacheAdminRoutes(deps: { cache: TieredCache; counters: CacheCounters; keys: KeyStore; purges: KeyChangeSignal }): Hono<GatewayEnv> {
  const routes = new Hono<GatewayEnv>();

  routes.get('/', async (c) => {
    const { hits, misses, bypassed, tokensSaved } = deps.counters;
    return c.json({
      tiers: await deps.cache.stats(),
      since_start: { hits, misses, bypassed, tokens_saved: tokensSaved, hit_rate: hits + misses > 0 ? hits / (hits + misses) : 0 },
    });
  });

  routes.delete('/', async (c) => {
    const keyId = c.req.query('key');
    const key = keyId ? await deps.keys.getKey(keyId) : undefined;
    if (keyId && !key) throw new NotFoundError(`No key with id ${keyId}.`);
    const purged = await deps.cache.purge(key ? cacheScope(key) : undefined);
    // The other instances drop their memory copies (all of them: cheap to re-read from Redis).
    await deps.purges.publish();
    return c.json(keyId ? { key_id: keyId, purged } : { purged });
  });

  return routes;
}
