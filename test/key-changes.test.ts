/**
 * The scale-out key-change signal (src/redis-key-changes.ts) on the machine's Redis: a publish
 * on one instance reaches the others within a second, the subscriber survives a Redis
 * reconnect (and calls its listeners then, for what it may have missed), and publishing while
 * Redis is away neither throws nor hangs.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { RedisKeyChangeSignal } from '../src/redis-key-changes.ts';
import { startTcpProxy, type TcpProxy } from './fixtures.ts';
import { capturedLogger } from './limits-redis-helpers.ts';
import { REDIS_URL, services, testRedisPrefix } from './services.ts';

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
