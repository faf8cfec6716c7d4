/**
 * Several gateway instances on the machine's real PostgreSQL and Redis behave as one gateway:
 * real `claudcode start` processes sharing a fresh database and a Redis key prefix, reached
 * through TCP proxies (fixtures.ts startTcpProxy) so that "Redis down" and "PostgreSQL down" can be
 * played without stopping the machine's shared services.
 */
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../src/fake-upstream/server.ts';
import { runCli, startGatewayProcess, type GatewayProcess } from './gateway-process.ts';
import { startTcpProxy, type TcpProxy } from './fixtures.ts';
import { MESSAGE } from './helpers.ts';
import { deleteKeys } from './limits-redis-helpers.ts';
import { createTestDatabase, REDIS_URL, services, testRedisPrefix } from './services.ts';

const ADMIN_TOKEN = 'scale-out-admin-token-0123456789';
const LEASE_TTL_MS = 2000;

let fake: FakeUpstream;
let database: Awaited<ReturnType<typeof createTestDatabase>>;
let pgProxy: TcpProxy;
let redisProxy: TcpProxy;
let env: Record<string, string>;
const instances: GatewayProcess[] = [];

async function startInstance(): Promise<GatewayProcess> {
  const instance = await startGatewayProcess(env);
  instances.push(instance);
  return instance;
}

beforeAll(async () => {
  if (!services.both) return;
  fake = await startFakeUpstream();
  database = await createTestDatabase('scaleout');
  const pg = new URL(database.url);
  pgProxy = await startTcpProxy({ host: pg.hostname, port: Number(pg.port) });
  const redis = new URL(REDIS_URL);
  redisProxy = await startTcpProxy({ host: redis.hostname, port: Number(redis.port) });
  pg.host = `127.0.0.1:${pgProxy.port}`;
  env = {
    DATABASE_URL: pg.toString(),
    REDIS_URL: `redis://127.0.0.1:${redisProxy.port}`,
    CLAUDCODE_REDIS_PREFIX: testRedisPrefix('scaleout'),
    CLAUDCODE_ADMIN_TOKEN: ADMIN_TOKEN,
    CLAUDCODE_UPSTREAM_URL: fake.url,
    CLAUDCODE_UPSTREAM_KEY: fake.apiKey,
    CLAUDCODE_STRICT_BUDGET: 'true',
    CLAUDCODE_LEASE_TTL_MS: String(LEASE_TTL_MS),
    CLAUDCODE_LOG_LEVEL: 'warn',
  };
  // Three instances starting together on one fresh database: migrations run once, under a lock.
  await Promise.all([startInstance(), startInstance(), startInstance()]);
}, 60_000);

afterAll(async () => {
  for (const instance of instances) instance.child.kill('SIGKILL');
  await Promise.all(instances.map((i) => i.exited));
  await fake?.close();
  await pgProxy?.close();
  await redisProxy?.close();
  await database?.drop();
  if (env) await deleteKeys(env.CLAUDCODE_REDIS_PREFIX!);
}, 30_000);

async function admin<T = any>(instance: GatewayProcess, method: string, path: string, body?: unknown): Promise<{ status: number; json: T }> {
  const res = await fetch(`${instance.url}/admin${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as T };
}

async function createKey(instance: GatewayProcess, fields: Record<string, unknown>): Promise<{ id: string; key: string }> {
  const { status, json } = await admin<{ id: string; key: string }>(instance, 'POST', '/keys', { name: 'scale-out', ...fields });
  expect(status).toBe(201);
  return json;
}

/** One Messages request; the status (and the error type for refusals). */
async function send(instance: GatewayProcess, key: string, headers: Record<string, string> = {}, body: Record<string, unknown> = {}) {
  const res = await fetch(`${instance.url}/v1/messages`, {
    method: 'POST',
    // Limits are the point here, not the response cache (its own test below asks for it).
    headers: { 'x-api-key': key, 'content-type': 'application/json', 'x-no-cache': 'true', ...headers },
    body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [MESSAGE], ...body }),
  });
  const text = await res.text();
  const type = res.status >= 400 ? ((JSON.parse(text) as { error?: { type?: string } }).error?.type ?? '') : '';
  return { status: res.status, type, text };
}

/** Polls `check` every 50 ms until it holds or `withinMs` passes; returns how long it took. */
async function within(withinMs: number, check: () => Promise<boolean>): Promise<number> {
  const started = Date.now();
  while (Date.now() - started <= withinMs) {
    if (await check()) return Date.now() - started;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`not within ${withinMs} ms`);
}

const spread = <T>(n: number, fn: (instance: GatewayProcess, i: number) => Promise<T>) =>
  Promise.all(Array.from({ length: n }, (_, i) => fn(instances[i % 3]!, i)));

describe.skipIf(!services.both)('three gateway instances on PostgreSQL and Redis', () => {
  it('a key created through one instance works on the others within a second', async () => {
    const { key } = await createKey(instances[0]!, {});
    for (const other of instances.slice(1, 3)) {
      await within(1000, async () => (await send(other, key)).status === 200);
    }
  });

  it('the CLI works on the shared store: a key it creates works on every instance within a second; usage covers them all', async () => {
    const created = await runCli(['keys', 'create', '--name', 'from-cli', '--json'], env);
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    const { key, id } = JSON.parse(created.stdout) as { key: string; id: string };
    for (const instance of instances) {
      await within(1000, async () => (await send(instance, key)).status === 200);
    }
    const listed = await runCli(['keys', 'list', '--json'], env);
    expect((JSON.parse(listed.stdout) as { id: string }[]).map((k) => k.id)).toContain(id);
    let report: any;
    await within(5000, async () => {
      report = JSON.parse((await runCli(['usage', '--key', id, '--json'], env)).stdout);
      return report.totals.requests === instances.length;
    });
    const disabled = await runCli(['keys', 'disable', id], env);
    expect(disabled.code).toBe(0);
    for (const instance of instances) {
      await within(1000, async () => (await send(instance, key)).status === 401);
    }
  });

  it('response cache: a MISS on one instance is a HIT on another', async () => {
    const { key } = await createKey(instances[0]!, {});
    await within(1000, async () => (await fetch(`${instances[2]!.url}/v1/key-status`, { headers: { 'x-api-key': key } })).status === 200);
    const cached = { 'x-no-cache': 'false' };
    const first = await fetch(`${instances[0]!.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'content-type': 'application/json', ...cached },
      body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 25, messages: [MESSAGE] }),
    });
    expect(first.headers.get('x-cache')).toBe('MISS');
    const firstBody = await first.text();
    // The entry reaches Redis just after the answer (the write is not awaited by the request).
    await new Promise((r) => setTimeout(r, 300));
    for (const other of instances.slice(1, 3)) {
      const res = await fetch(`${other.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': key, 'content-type': 'application/json', ...cached },
        body: JSON.stringify({ messages: [MESSAGE], max_tokens: 25, model: 'claude-haiku-4-5' }),
      });
      expect(res.headers.get('x-cache')).toBe('HIT');
      expect(await res.text()).toBe(firstBody);
    }
    // One upstream call in all.
    expect(fake.requests.filter((r) => r.path === '/v1/messages' && r.body.includes('"max_tokens":25'))).toHaveLength(1);

    // A purge through one instance reaches the others' memory copies too.
    expect((await admin(instances[0]!, 'DELETE', '/cache')).status).toBe(200);
    await new Promise((r) => setTimeout(r, 200));
    const after = await fetch(`${instances[1]!.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'content-type': 'application/json', ...cached },
      body: JSON.stringify({ messages: [MESSAGE], max_tokens: 25, model: 'claude-haiku-4-5' }),
    });
    expect(after.headers.get('x-cache')).toBe('MISS');
    await after.text();
  });

  it('rpm 10: of 30 requests spread over the instances, exactly 10 are admitted', async () => {
    const { key } = await createKey(instances[1]!, { rpm: 10, concurrent: 100, budget_tokens: 10_000_000 });
    await within(1000, async () => (await fetch(`${instances[2]!.url}/v1/key-status`, { headers: { 'x-api-key': key } })).status === 200);
    const results = await spread(30, (instance) => send(instance, key));
    expect(results.filter((r) => r.status === 200)).toHaveLength(10);
    expect(results.filter((r) => r.status === 429 && r.type === 'rate_limit_error')).toHaveLength(20);
  });

  it('concurrency 2: of 6 slow requests spread over the instances, exactly 2 run', async () => {
    const { key } = await createKey(instances[2]!, { concurrent: 2, budget_tokens: 10_000_000 });
    await within(1000, async () => (await fetch(`${instances[0]!.url}/v1/key-status`, { headers: { 'x-api-key': key } })).status === 200);
    const results = await spread(6, (instance) => send(instance, key, { 'x-fake-output-tokens': '40', 'x-fake-event-delay-ms': '25' }, { stream: true, max_tokens: 50 }));
    expect(results.filter((r) => r.status === 200)).toHaveLength(2);
    expect(results.filter((r) => r.status === 429)).toHaveLength(4);
  });

  it('strict mode: 24 concurrent requests spread over the instances never exceed a small budget; every instance sees the same usage', async () => {
    const budget = 6000;
    const { key, id } = await createKey(instances[0]!, { budget_tokens: budget, concurrent: 50, rpm: 1000 });
    await within(1000, async () => (await fetch(`${instances[1]!.url}/v1/key-status`, { headers: { 'x-api-key': key } })).status === 200);
    const results = await spread(24, (instance) => send(instance, key, { 'x-fake-output-tokens': '300', 'x-fake-event-delay-ms': '1' }, { stream: true, max_tokens: 300 }));
    const served = results.filter((r) => r.status === 200).length;
    expect(served).toBeGreaterThan(0);
    expect(served + results.filter((r) => r.status === 429).length).toBe(24);

    // One report holds every instance's usage (served requests are written within a flush;
    // refusals are counted per minute, when it ends).
    let report: any;
    await within(5000, async () => {
      report = (await admin(instances[2]!, 'GET', `/usage?by=key&key=${id}`)).json;
      return report.totals.requests - report.totals.errors === served;
    });
    const billed = report.totals.billed_tokens as number;
    expect(billed).toBeGreaterThan(0);
    expect(billed).toBeLessThanOrEqual(budget);
    // Every instance reads exactly that as the key's used tokens (the last bills reach Redis just
    // after their responses end, so allow them a moment).
    let used: number[] = [];
    await within(2000, async () => {
      used = await Promise.all(instances.slice(0, 3).map(async (instance) => {
        const res = await fetch(`${instance.url}/v1/key-status`, { headers: { 'x-api-key': key } });
        return ((await res.json()) as { budget: { used_tokens: number } }).budget.used_tokens;
      }));
      return used.every((u) => u === billed);
    });
    expect(used).toEqual([billed, billed, billed]);
  });

  it('a key disabled through one instance is refused by all within a second', async () => {
    const { key, id } = await createKey(instances[0]!, {});
    await within(1000, async () => (await send(instances[2]!, key)).status === 200);
    expect((await admin(instances[1]!, 'POST', `/keys/${id}/disable`)).status).toBe(200);
    for (const instance of instances.slice(0, 3)) {
      await within(1000, async () => (await send(instance, key)).status === 401);
    }
  });

  it('an instance killed with -9 while holding slots frees them within the lease TTL', async () => {
    const doomed = await startInstance();
    const { key } = await createKey(instances[0]!, { concurrent: 1, budget_tokens: 10_000_000 });
    await within(1000, async () => (await fetch(`${doomed.url}/v1/key-status`, { headers: { 'x-api-key': key } })).status === 200);
    // A long stream through the doomed instance holds the key's only slot.
    const stream = await fetch(`${doomed.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'content-type': 'application/json', 'x-fake-output-tokens': '2000', 'x-fake-event-delay-ms': '20' },
      body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 2000, stream: true, messages: [MESSAGE] }),
    });
    expect(stream.status).toBe(200);
    const holding = stream.text().catch(() => '');
    expect((await send(instances[1]!, key)).status).toBe(429);
    doomed.child.kill('SIGKILL');
    await doomed.exited;
    await holding;
    const freedAfter = await within(LEASE_TTL_MS + 3000, async () => (await send(instances[1]!, key)).status === 200);
    expect(freedAfter).toBeLessThanOrEqual(LEASE_TTL_MS + 3000);
  });

  it('Redis down mid-traffic: clear 503s, readiness says so, then recovery without a restart', async () => {
    const { key } = await createKey(instances[0]!, { rpm: 10_000, concurrent: 100, budget_tokens: 10_000_000 });
    await within(1000, async () => (await send(instances[1]!, key)).status === 200);
    await redisProxy.down();
    try {
      const during = await spread(6, (instance) => send(instance, key));
      for (const r of during) {
        expect(r.status).toBe(503);
        expect(r.type).toBe('api_error');
        expect(r.text).toMatch(/Limits unavailable/);
      }
      const ready = await fetch(`${instances[0]!.url}/health/ready`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({ status: 'not_ready', limits: { ok: false }, store: { ok: true } });
      expect((await fetch(`${instances[0]!.url}/health`)).status).toBe(200);
    } finally {
      await redisProxy.up();
    }
    for (const instance of instances.slice(0, 3)) {
      await within(15_000, async () => (await send(instance, key)).status === 200);
    }
    for (const instance of instances.slice(0, 3)) expect(instance.child.exitCode).toBeNull();
  });

  it('PostgreSQL down for a while: requests are served and no usage is lost', async () => {
    const { key, id } = await createKey(instances[1]!, { rpm: 10_000, concurrent: 100, budget_tokens: 10_000_000 });
    await within(1000, async () => (await send(instances[2]!, key)).status === 200);
    const client = (instance: GatewayProcess) => new Anthropic({ apiKey: key, baseURL: instance.url, maxRetries: 0 });
    await pgProxy.down();
    let served = 0;
    try {
      const results = await spread(12, (instance) => client(instance).messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }));
      served = results.length;
      const ready = await fetch(`${instances[0]!.url}/health/ready`);
      expect(await ready.json()).toMatchObject({ store: { ok: false } });
      // Key changes cannot be saved meanwhile: a clear 503, not a gateway fault.
      const refused = await admin(instances[0]!, 'POST', '/keys', { name: 'during-outage' });
      expect(refused.status).toBe(503);
      expect(refused.json).toMatchObject({ error: { type: 'api_error', message: expect.stringMatching(/store is unreachable/) } });
      await new Promise((r) => setTimeout(r, 1000)); // several failed flushes
    } finally {
      await pgProxy.up();
    }
    expect(served).toBe(12);
    await within(15_000, async () => (await admin(instances[0]!, 'GET', `/usage?by=key&key=${id}`)).json.totals.requests === 12 + 1);
    for (const instance of instances.slice(0, 3)) expect(instance.child.exitCode).toBeNull();
  });
});
