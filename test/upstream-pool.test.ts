/**
 * The failover policy's parts on their own: the circuit breaker's states on a moved clock, the
 * reading of retry-after, the backoff's bounds, and the pool's order (priority, then weight).
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config.ts';
import { startFakeUpstream } from '../src/fake-upstream/server.ts';
import { createLogger } from '../src/logger.ts';
import { CircuitBreaker } from '../src/upstream/breaker.ts';
import { backoffMs, countsAsFailure, retryAfterMs, statusVerdict } from '../src/upstream/policy.ts';
import { UpstreamPool } from '../src/upstream/pool.ts';
import { seededRandom } from './random.ts';

describe('CircuitBreaker', () => {
  it('opens after the threshold of consecutive failures, half-opens after the cooldown, lets one probe through', () => {
    const breaker = new CircuitBreaker({ failureThreshold: 3, cooldownMs: 1000 });
    let now = 0;
    breaker.failure(now);
    breaker.failure(now);
    breaker.success(); // a success in between resets the count
    breaker.failure(now);
    breaker.failure(now);
    expect(breaker.state(now)).toBe('closed');
    expect(breaker.tryAcquire(now)).toBe(true);
    breaker.failure(now);
    expect(breaker.state(now)).toBe('open');
    expect(breaker.tryAcquire(now + 999)).toBe(false);

    now += 1000;
    expect(breaker.state(now)).toBe('half-open');
    expect(breaker.tryAcquire(now)).toBe(true);
    expect(breaker.tryAcquire(now)).toBe(false); // one probe at a time
    breaker.failure(now); // the probe failed: open again, for a whole cooldown
    expect(breaker.state(now + 999)).toBe('open');

    now += 1000;
    expect(breaker.tryAcquire(now)).toBe(true);
    breaker.abandoned(); // the probe's client went away: no verdict, the next may probe
    expect(breaker.tryAcquire(now)).toBe(true);
    breaker.success();
    expect(breaker.state(now)).toBe('closed');
  });
});

describe('failover policy', () => {
  it('retries 429, 529 and 5xx, skips the upstream on 401, and relays everything else', () => {
    expect([200, 400, 403, 404, 413].map(statusVerdict)).toEqual(['final', 'final', 'final', 'final', 'final']);
    expect([429, 500, 502, 503, 529].map(statusVerdict)).toEqual(['retry', 'retry', 'retry', 'retry', 'retry']);
    expect(statusVerdict(401)).toBe('skip');
    expect(countsAsFailure(429)).toBe(false);
    expect(countsAsFailure(529)).toBe(true);
    expect(countsAsFailure(401)).toBe(true);
    expect(countsAsFailure(400)).toBe(false);
  });

  it('reads retry-after-ms, retry-after seconds and HTTP dates', () => {
    const now = Date.parse('2026-11-27T00:00:00Z');
    expect(retryAfterMs({ 'retry-after-ms': '1500', 'retry-after': '9' }, now)).toBe(1500);
    expect(retryAfterMs({ 'retry-after': '2' }, now)).toBe(2000);
    expect(retryAfterMs({ 'retry-after': 'Fri, 27 Nov 2026 00:00:03 GMT' }, now)).toBe(3000);
    expect(retryAfterMs({ 'retry-after': 'Fri, 26 Nov 2026 23:00:00 GMT' }, now)).toBe(0);
    expect(retryAfterMs({ 'retry-after': 'soon' }, now)).toBeUndefined();
    expect(retryAfterMs({ 'retry-after': '-1' }, now)).toBeUndefined();
    expect(retryAfterMs({}, now)).toBeUndefined();
  });

  it('backs off exponentially with jitter, keeping at least half of each pause, up to the cap', () => {
    const options = { backoffBaseMs: 100, backoffMaxMs: 1000 };
    const random = seededRandom(7);
    for (let round = 1; round <= 8; round++) {
      const ceiling = Math.min(1000, 100 * 2 ** (round - 1));
      for (let i = 0; i < 50; i++) {
        const pause = backoffMs(round, options, random);
        expect(pause).toBeGreaterThanOrEqual(ceiling / 2);
        expect(pause).toBeLessThanOrEqual(ceiling);
      }
    }
  });
});

describe('UpstreamPool order', () => {
  it('tries lower priorities first and shares equal priorities by weight', async () => {
    const fakes = await Promise.all([0, 1, 2].map(() => startFakeUpstream()));
    const [heavy, light, backup] = fakes as [typeof fakes[0], typeof fakes[0], typeof fakes[0]];
    const config = parseConfig({
      upstreams: [
        { name: 'heavy', url: heavy.url, key: heavy.apiKey, weight: 3 },
        { name: 'light', url: light.url, key: light.apiKey, weight: 1 },
        { name: 'backup', url: backup.url, key: backup.apiKey, priority: 1 },
      ],
    });
    const pool = new UpstreamPool(config, { logger: createLogger('silent'), random: seededRandom(42) });
    try {
      const served = new Map<string, number>();
      const signal = new AbortController().signal;
      const body = JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] });
      for (let i = 0; i < 400; i++) {
        const reply = await pool.send({ method: 'POST', path: '/v1/messages', headers: {}, body, signal });
        expect(reply.statusCode).toBe(200);
        served.set(reply.upstream, (served.get(reply.upstream) ?? 0) + 1);
      }
      expect(served.get('backup')).toBeUndefined();
      const heavyShare = served.get('heavy')! / 400;
      // 3:1 is 75%; 400 seeded draws stay well within ±10 points.
      expect(heavyShare).toBeGreaterThan(0.65);
      expect(heavyShare).toBeLessThan(0.85);
    } finally {
      await pool.close();
      await Promise.all(fakes.map((f) => f.close()));
    }
  });

  it('stops at once when the client goes away during a backoff pause', async () => {
    const fake = await startFakeUpstream({ fault: { status: 529 } });
    const config = parseConfig({
      upstreams: [{ url: fake.url, key: fake.apiKey }],
      failover: { maxAttempts: 10, backoffBaseMs: 5000, backoffMaxMs: 5000, retryWithinMs: 60_000 },
    });
    const pool = new UpstreamPool(config, { logger: createLogger('silent') });
    try {
      const controller = new AbortController();
      const body = JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] });
      const sent = pool.send({ method: 'POST', path: '/v1/messages', headers: {}, body, signal: controller.signal });
      while (fake.requests.length === 0) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 50));
      const abortedAt = Date.now();
      controller.abort();
      await expect(sent).rejects.toBeDefined();
      expect(Date.now() - abortedAt).toBeLessThan(1000);
      expect(fake.requests).toHaveLength(1);
    } finally {
      await pool.close();
      await fake.close();
    }
  });
});
