/**
 * The scale-out key-change signal (src/redis-key-changes.ts) on the machine's Redis: a publish
 * on one instance reaches the others within a second, the subscriber survives a Redis
 * reconnect (and calls its listeners then, for what it may have missed), publishing while
 * Redis is away neither throws nor hangs, and a signalled change reloads a key's whole record on
 * another instance's KeyRegistry.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { generateKey, hashKey, KeyRegistry } from '../src/keys.ts';
import { RedisKeyChangeSignal } from '../src/redis-key-changes.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { keyRecord, startTcpProxy, tempDirs, type TcpProxy } from './fixtures.ts';
import { capturedLogger } from './limits-redis-helpers.ts';
import { REDIS_URL, services, testRedisPrefix } from './services.ts';

const tempDir = tempDirs('key-changes');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with the ms it took for `count()` to reach `n`, or rejects after `withinMs`. */
async function reaches(count: () => number, n: number, withinMs: number): Promise<number> {
  const started = Date.now();
  while (count() < n) {
    if (Date.now() - started > withinMs) throw new Error(`count is ${count()}, not ${n}, after ${withinMs} ms`);
    await sleep(10);
  }
  return Date.now() - started;
}

describe.skipIf(!services.redis)('RedisKeyChangeSignal', () => {
  const { logger, lines } = capturedLogger('info');
  const opened: RedisKeyChangeSignal[] = [];
  const proxies: TcpProxy[] = [];

  async function open(url = REDIS_URL, channel = testRedisPrefix('keys')): Promise<RedisKeyChangeSignal> {
    const signal = await RedisKeyChangeSignal.open(url, { logger, channel });
    opened.push(signal);
    return signal;
  }

  async function proxy(): Promise<TcpProxy> {
    const { hostname, port } = new URL(REDIS_URL);
    const p = await startTcpProxy({ host: hostname, port: Number(port || 6379) });
    proxies.push(p);
    return p;
  }

  afterEach(async () => {
    await Promise.all(opened.splice(0).map((s) => s.close()));
    await Promise.all(proxies.splice(0).map((p) => p.close()));
  });

  it('a publish on one instance reaches every subscriber on the channel within a second', async () => {
    const channel = testRedisPrefix('keys');
    const [publisher, a, b, elsewhere] = [await open(REDIS_URL, channel), await open(REDIS_URL, channel), await open(REDIS_URL, channel), await open()];
    const heard = { a: 0, b: 0, elsewhere: 0 };
    await a.subscribe(() => heard.a++);
    await b.subscribe(() => heard.b++);
    await elsewhere.subscribe(() => heard.elsewhere++);
    await publisher.publish();
    expect(await reaches(() => heard.a, 1, 1000)).toBeLessThan(1000);
    await reaches(() => heard.b, 1, 1000);
    await publisher.publish();
    await reaches(() => heard.a + heard.b, 4, 1000);
    await sleep(50);
    expect(heard).toEqual({ a: 2, b: 2, elsewhere: 0 });
  });

  it('survives a Redis reconnect: listeners are told at the reconnect and hear later publishes', async () => {
    const channel = testRedisPrefix('keys');
    const p = await proxy();
    const publisher = await open(REDIS_URL, channel);
    const subscriber = await open(p.url('redis'), channel);
    let heard = 0;
    await subscriber.subscribe(() => heard++);
    await publisher.publish();
    await reaches(() => heard, 1, 1000);

    await p.down();
    await publisher.publish(); // lost: nobody listening through the proxy
    await sleep(100);
    expect(heard).toBe(1);
    await p.up();
    // The reconnect itself counts as a change (one may have been missed), told once the
    // channel is subscribed again: a publish from then on is heard.
    await reaches(() => heard, 2, 3000);
    await publisher.publish();
    await reaches(() => heard, 3, 1000);
  });

  it('publishing while Redis is away neither throws nor hangs, and logs', async () => {
    const p = await proxy();
    const signal = await open(p.url('redis'));
    await p.down();
    await sleep(50);
    const started = Date.now();
    await signal.publish();
    await signal.publish();
    expect(Date.now() - started).toBeLessThan(1500);
    expect(lines.some((l) => l.msg.startsWith('Redis unreachable: key change not signalled'))).toBe(true);
    // close() works on a connection that is down.
    await signal.close();
  });

  it('a key change signalled by one instance reloads the whole record on another, its MCP servers included', async () => {
    const channel = testRedisPrefix('keys');
    const dir = tempDir();
    // Two instances: each its own store connection, registry and signal, wired as the gateway wires them.
    const stores = [await SqliteStore.open(dir), await SqliteStore.open(dir)] as const;
    const signals = [await open(REDIS_URL, channel), await open(REDIS_URL, channel)] as const;
    const registries = stores.map((store, i) => new KeyRegistry(store, undefined, signals[i]));
    try {
      for (const [i, registry] of registries.entries()) {
        // Polling too slow to matter: only the signal can bring the change in time.
        await registry.start(60_000, () => {});
        await signals[i]!.subscribe(() => void registry.refresh());
      }
      const secret = generateKey();
      const key = keyRecord({ id: 'key_mcp', hash: hashKey(secret), mcpServers: ['tavily'] });
      await stores[0].createKey(key);
      await registries[0]!.changed();
      /** Resolves once the other instance's copy of the key lists `expected` (within a second). */
      const reloaded = async (expected: string[]) => {
        const started = Date.now();
        for (;;) {
          const seen = (() => {
            try {
              return registries[1]!.authenticate({ 'x-api-key': secret }, Date.now()).mcpServers;
            } catch {
              return undefined; // not loaded yet
            }
          })();
          if (JSON.stringify(seen) === JSON.stringify(expected)) return;
          if (Date.now() - started > 1000) throw new Error(`the other instance sees ${JSON.stringify(seen)}, not ${JSON.stringify(expected)}`);
          await sleep(10);
        }
      };
      await reloaded(['tavily']);
      await stores[0].updateKey(key.id, { mcpServers: ['fetch', 'tavily'] });
      await registries[0]!.changed();
      await reloaded(['fetch', 'tavily']);
      await stores[0].updateKey(key.id, { mcpServers: [] });
      await registries[0]!.changed();
      await reloaded([]);
    } finally {
      for (const registry of registries) registry.stop();
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it('open() fails when Redis is not reachable; close() quits both connections', async () => {
    const p = await proxy();
    await p.down();
    await expect(RedisKeyChangeSignal.open(p.url('redis'), { logger })).rejects.toThrow(/is not reachable/);
    await p.up();
    const signal = await open(p.url('redis'));
    await signal.subscribe(() => {});
    await signal.close();
    await signal.close(); // idempotent
    await signal.publish(); // after close: logged, not thrown
  });
});
