/**
 * Maintenance mode switched at run time: through the admin API (the real SDK sees 503
 * overloaded_error with Retry-After, health and admin keep answering), followed by every instance
 * on the same store within a second (SQLite data directory; PostgreSQL + Redis where they run),
 * through the CLI (on the store, and on a running gateway process with --url), and set at start
 * by CLAUDCODE_MAINTENANCE. The switch itself (MaintenanceMode) is tested without sockets below.
 */
import Anthropic from '@anthropic-ai/sdk';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../src/fake-upstream/server.ts';
import { MAINTENANCE_META, MaintenanceMode, parseMaintenance, writeMaintenance } from '../src/maintenance.ts';
import type { MetaStore } from '../src/store/types.ts';
import { runCli, startGatewayProcess, type GatewayProcess } from './gateway-process.ts';
import { ADMIN_TOKEN, MESSAGE, startStack, type Stack } from './helpers.ts';
import { capturedLogger, deleteKeys } from './limits-redis-helpers.ts';
import { createTestDatabase, REDIS_URL, services, testRedisPrefix } from './services.ts';

/** Every instance must follow a switch within a second; the margin absorbs a loaded test machine. */
const FOLLOW_BOUND_MS = 1000 + 300;

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'claudcode-maint-'));
}

async function admin<T = any>(url: string, method: string, path: string, body?: string, token: string | null = ADMIN_TOKEN): Promise<{ status: number; json: T }> {
  const res = await fetch(`${url}/admin${path}`, {
    method,
    headers: { ...(token === null ? {} : { authorization: `Bearer ${token}` }), 'content-type': 'application/json' },
    body,
  });
  return { status: res.status, json: (await res.json()) as T };
}

const setMaintenance = (url: string, enabled: boolean) => admin(url, 'PUT', '/maintenance', JSON.stringify({ enabled }));

async function healthStatus(url: string): Promise<string> {
  const res = await fetch(`${url}/health`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { status: string }).status;
}

/** Polls `/health` of `url` until it reports `status`; returns how long that took (ms), failing past the bound. */
async function followed(url: string, status: 'maintenance' | 'ok', boundMs = FOLLOW_BOUND_MS): Promise<number> {
  const started = Date.now();
  while (Date.now() - started <= boundMs) {
    if ((await healthStatus(url)) === status) return Date.now() - started;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${url} did not report ${status} within ${boundMs} ms`);
}

async function createMessage(client: Anthropic): Promise<unknown> {
  return client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }).catch((e: unknown) => e);
}

/** The SDK's error for a maintenance refusal, checked. */
function expectMaintenanceError(err: unknown, retryAfter = '60'): void {
  expect(err).toBeInstanceOf(Anthropic.InternalServerError);
  const apiError = err as InstanceType<typeof Anthropic.APIError>;
  expect(apiError.status).toBe(503);
  expect(apiError.type).toBe('overloaded_error');
  expect(apiError.message).toMatch(/maintenance/);
  expect(apiError.headers?.get('retry-after')).toBe(retryAfter);
}

describe('maintenance through the admin API', () => {
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    stack = await startStack();
    ({ key } = await stack.newKey());
  });
  afterAll(() => stack.close());
  afterEach(async () => {
    await setMaintenance(stack.url, false);
  });

  it('PUT on: /v1 answers 503 overloaded_error with Retry-After, health says so, admin answers; PUT off serves again', async () => {
    const client = stack.client(key);
    expect(await admin(stack.url, 'GET', '/maintenance')).toEqual({ status: 200, json: { enabled: false, since: null, by: null } });
    expect((await createMessage(client)) as Anthropic.Message).toMatchObject({ type: 'message' });

    const before = Date.now();
    const on = await setMaintenance(stack.url, true);
    expect(on).toMatchObject({ status: 200, json: { enabled: true, by: 'admin-api' } });
    expect(Date.parse(on.json.since)).toBeGreaterThanOrEqual(before - 1);
    expect(await admin(stack.url, 'GET', '/maintenance')).toEqual({ status: 200, json: on.json });

    // At once on the instance that switched, without waiting for a poll.
    const upstreamCalls = stack.fake.requests.length;
    expectMaintenanceError(await createMessage(client));
    // The /v1/v1 alias, and a streamed request.
    expectMaintenanceError(await createMessage(stack.client(key, { baseURL: `${stack.url}/v1` })));
    const stream = client.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] });
    expectMaintenanceError(await stream.finalMessage().catch((e: unknown) => e));
    // Every other /v1 route, with or without a key.
    for (const [method, path] of [
      ['GET', '/v1/models'],
      ['GET', '/v1/models/claude-haiku-4-5'],
      ['GET', '/v1/key-status'],
      ['POST', '/v1/messages/count_tokens'],
      ['GET', '/v1/v1/key-status'],
    ] as const) {
      const res = await fetch(`${stack.url}${path}`, {
        method,
        headers: { 'x-api-key': key, 'content-type': 'application/json' },
        body: method === 'POST' ? JSON.stringify({ model: 'claude-haiku-4-5', messages: [MESSAGE] }) : undefined,
      });
      expect({ path, status: res.status, retryAfter: res.headers.get('retry-after') }).toEqual({ path, status: 503, retryAfter: '60' });
      expect(await res.json()).toMatchObject({ type: 'error', error: { type: 'overloaded_error' } });
    }
    expect((await fetch(`${stack.url}/v1/key-status`)).status).toBe(503);
    expect(stack.fake.requests.length).toBe(upstreamCalls);

    expect(await healthStatus(stack.url)).toBe('maintenance');
    expect(await (await fetch(`${stack.url}/healthz`)).json()).toEqual({ status: 'maintenance' });
    const ready = await fetch(`${stack.url}/health/ready`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ status: 'maintenance', store: { ok: true }, limits: { ok: true } });
    expect((await admin(stack.url, 'GET', '/keys')).status).toBe(200);

    const off = await setMaintenance(stack.url, false);
    expect(off).toMatchObject({ status: 200, json: { enabled: false, by: 'admin-api' } });
    expect((await createMessage(client)) as Anthropic.Message).toMatchObject({ type: 'message' });
    expect(await healthStatus(stack.url)).toBe('ok');
    expect((await fetch(`${stack.url}/health/ready`)).status).toBe(200);
  });

  it('switching on again keeps the time it was switched on', async () => {
    const first = await setMaintenance(stack.url, true);
    await new Promise((r) => setTimeout(r, 10));
    const again = await setMaintenance(stack.url, true);
    expect(again.json).toEqual(first.json);
  });

  it('refuses bad bodies with 400 invalid_request_error, and callers without the admin token with 401', async () => {
    for (const body of ['not json', '', '{}', '[]', 'null', '{"enabled":"yes"}', '{"enabled":1}', '{"enabled":true,"extra":1}']) {
      const res = await admin(stack.url, 'PUT', '/maintenance', body);
      expect({ body, status: res.status, type: res.json.type, errorType: res.json.error?.type }).toEqual({
        body,
        status: 400,
        type: 'error',
        errorType: 'invalid_request_error',
      });
    }
    expect((await admin(stack.url, 'PUT', '/maintenance', '{"enabled":"yes"}')).json.error.message).toMatch(/enabled/);
    for (const token of [null, 'wrong-token-0123456789']) {
      for (const [method, body] of [['GET', undefined], ['PUT', '{"enabled":true}']] as const) {
        const res = await admin(stack.url, method, '/maintenance', body, token);
        expect(res).toMatchObject({ status: 401, json: { type: 'error', error: { type: 'authentication_error' } } });
      }
    }
    expect(await admin(stack.url, 'GET', '/maintenance')).toMatchObject({ json: { enabled: false } });
    expect(await healthStatus(stack.url)).toBe('ok');
  });
});

describe('maintenanceRetryAfterSeconds', () => {
  it('sets the Retry-After of the 503', async () => {
    const stack = await startStack({ config: { maintenance: true, maintenanceRetryAfterSeconds: 7 } });
    try {
      const { key } = await stack.newKey();
      expectMaintenanceError(await createMessage(stack.client(key)), '7');
    } finally {
      await stack.close();
    }
  });
});

describe('every instance on the store follows within a second', () => {
  it('two gateways on one SQLite data directory', async () => {
    const dataDir = tempDir();
    const a = await startStack({ dataDir });
    const b = await startStack({ dataDir });
    try {
      const { key } = await a.newKey();
      await b.gateway.services.keys.refresh();
      expect(await healthStatus(b.url)).toBe('ok');

      await setMaintenance(a.url, true);
      await followed(b.url, 'maintenance');
      expectMaintenanceError(await createMessage(b.client(key)));
      expect(await admin(b.url, 'GET', '/maintenance')).toMatchObject({ json: { enabled: true, by: 'admin-api' } });

      await setMaintenance(b.url, false);
      await followed(a.url, 'ok');
      expect((await createMessage(a.client(key))) as Anthropic.Message).toMatchObject({ type: 'message' });
    } finally {
      await a.close();
      await b.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  describe.skipIf(!services.both)('PostgreSQL and Redis (scale-out)', () => {
    let database: Awaited<ReturnType<typeof createTestDatabase>>;
    const redisPrefix = testRedisPrefix('maintenance');
    const stacks: Stack[] = [];

    beforeAll(async () => {
      database = await createTestDatabase('maintenance');
    });
    afterAll(async () => {
      for (const s of stacks) await s.close();
      await database?.drop();
      await deleteKeys(redisPrefix);
    });

    it('two gateways on one PostgreSQL database; CLAUDCODE_MAINTENANCE given at start sets it for both', async () => {
      const config = { databaseUrl: database.url, redisUrl: REDIS_URL, scaleOut: { redisPrefix } };
      const a = await startStack({ config });
      stacks.push(a);
      const b = await startStack({ config });
      stacks.push(b);
      const { key } = await a.newKey();
      await b.gateway.services.keys.refresh();

      await setMaintenance(b.url, true);
      await followed(a.url, 'maintenance');
      expectMaintenanceError(await createMessage(a.client(key)));
      await setMaintenance(a.url, false);
      await followed(b.url, 'ok');
      expect((await createMessage(b.client(key))) as Anthropic.Message).toMatchObject({ type: 'message' });

      // A third instance started with the switch given turns it on for the running ones.
      const c = await startStack({ config: { ...config, maintenance: true } });
      stacks.push(c);
      expect(await healthStatus(c.url)).toBe('maintenance');
      await followed(a.url, 'maintenance');
      await followed(b.url, 'maintenance');
      expect(await admin(a.url, 'GET', '/maintenance')).toMatchObject({ json: { enabled: true, by: 'config' } });
    });
  });
});

describe('CLAUDCODE_MAINTENANCE at start', () => {
  it('given, it is written to the store; unset, an instance follows the store', async () => {
    const dataDir = tempDir();
    const stacks: Stack[] = [];
    try {
      const on = await startStack({ dataDir, config: { maintenance: true } });
      stacks.push(on);
      expect(await healthStatus(on.url)).toBe('maintenance');
      expect(parseMaintenance(await on.gateway.store.getMeta(MAINTENANCE_META))).toMatchObject({ enabled: true, by: 'config' });

      // Unset: takes what the store says at start.
      const follower = await startStack({ dataDir });
      stacks.push(follower);
      expect(await healthStatus(follower.url)).toBe('maintenance');

      // Given false: switches it off for the running instances too.
      const off = await startStack({ dataDir, config: { maintenance: false } });
      stacks.push(off);
      expect(await healthStatus(off.url)).toBe('ok');
      await followed(follower.url, 'ok');
      await followed(on.url, 'ok');
    } finally {
      for (const s of stacks) await s.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('claudcode maintenance', () => {
  let fake: FakeUpstream;
  beforeAll(async () => {
    fake = await startFakeUpstream();
  });
  afterAll(() => fake.close());

  it('on, off and status on the configured store; a gateway on that data directory follows', async () => {
    const dataDir = tempDir();
    const stack = await startStack({ dataDir });
    const cli = (...args: string[]) => runCli(['maintenance', ...args], { CLAUDCODE_DATA_DIR: dataDir });
    try {
      expect(await cli('status')).toEqual({ code: 0, stdout: 'maintenance mode: off\n', stderr: '' });

      const on = await cli('on');
      expect(on).toMatchObject({ code: 0, stderr: '' });
      expect(on.stdout).toMatch(/^maintenance mode: on since \d{4}-\d\d-\d\dT[\d:.]+Z \(by cli\)\n$/);
      await followed(stack.url, 'maintenance');
      expect((await cli('status')).stdout).toBe(on.stdout);
      const status = JSON.parse((await cli('status', '--json')).stdout);
      expect(status).toMatchObject({ enabled: true, by: 'cli' });

      const off = await cli('off');
      expect(off.stdout).toMatch(/^maintenance mode: off since .* \(by cli\)\n$/);
      await followed(stack.url, 'ok');

      const bad = await cli('maybe');
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/^claudcode: unknown maintenance command "maybe" \(on, off or status\)\n$/);
    } finally {
      await stack.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('with --url on a running gateway process (started with CLAUDCODE_MAINTENANCE=true)', async () => {
    const dataDir = tempDir();
    let gateway: GatewayProcess | undefined;
    try {
      gateway = await startGatewayProcess({
        CLAUDCODE_DATA_DIR: dataDir,
        CLAUDCODE_ADMIN_TOKEN: ADMIN_TOKEN,
        CLAUDCODE_UPSTREAM_URL: fake.url,
        CLAUDCODE_UPSTREAM_KEY: fake.apiKey,
        CLAUDCODE_MAINTENANCE: 'true',
        CLAUDCODE_LOG_LEVEL: 'warn',
      });
      const cli = (...args: string[]) => runCli(['maintenance', ...args, '--url', gateway!.url, '--admin-token', ADMIN_TOKEN], {});
      expect(await healthStatus(gateway.url)).toBe('maintenance');
      const status = await cli('status');
      expect(status).toMatchObject({ code: 0, stderr: '' });
      expect(status.stdout).toMatch(/^maintenance mode: on since .* \(by config\)\n$/);

      const off = await cli('off');
      expect(off.stdout).toMatch(/^maintenance mode: off since .* \(by admin-api\)\n$/);
      expect(await healthStatus(gateway.url)).toBe('ok');
      expect(JSON.parse((await cli('on', '--json')).stdout)).toMatchObject({ enabled: true, by: 'admin-api' });
      expect(await healthStatus(gateway.url)).toBe('maintenance');

      const wrong = await runCli(['maintenance', 'off', '--url', gateway.url, '--admin-token', 'wrong-token-0123456789'], {});
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toMatch(/^claudcode: 401: Admin API: missing or wrong admin token/);
      expect(await healthStatus(gateway.url)).toBe('maintenance');
      // The process wrote it to the store: the CLI on the store sees it.
      expect((await runCli(['maintenance', 'status'], { CLAUDCODE_DATA_DIR: dataDir })).stdout).toMatch(/^maintenance mode: on /);
    } finally {
      gateway?.child.kill('SIGTERM');
      await gateway?.exited;
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

/** A meta store in memory that can be made to fail, and whose reads can be held back. */
class FakeMetaStore implements MetaStore {
  readonly values = new Map<string, string>();
  failing = false;
  reads = 0;
  /** Set: the next read waits for it before answering with what the store held when it began. */
  hold: Promise<void> | undefined;

  async getMeta(name: string): Promise<string | null> {
    this.reads++;
    if (this.failing) throw new Error('store unreachable');
    const value = this.values.get(name) ?? null;
    const hold = this.hold;
    this.hold = undefined;
    if (hold) await hold;
    return value;
  }
  async setMeta(name: string, value: string): Promise<void> {
    if (this.failing) throw new Error('store unreachable');
    this.values.set(name, value);
  }
  async setMetaIfAbsent(name: string, value: string): Promise<string> {
    if (!this.values.has(name)) this.values.set(name, value);
    return this.values.get(name)!;
  }
}

describe('MaintenanceMode (without sockets)', () => {
  const modes: MaintenanceMode[] = [];
  afterEach(() => {
    for (const m of modes.splice(0)) m.stop();
  });
  function mode(store: MetaStore, pollMs = 20) {
    const { logger, lines } = capturedLogger();
    const m = new MaintenanceMode(store, { logger, pollMs });
    modes.push(m);
    return { mode: m, lines };
  }
  const until = async (check: () => boolean) => {
    for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 5));
    expect(check()).toBe(true);
  };

  it('a store outage keeps the last known state and is logged once every few seconds', async () => {
    const store = new FakeMetaStore();
    await writeMaintenance(store, true, 'cli', 1000);
    const { mode: m, lines } = mode(store);
    await m.start(undefined);
    expect(m.state).toEqual({ enabled: true, since: 1000, by: 'cli' });
    store.failing = true;
    const readsAtOutage = store.reads;
    await until(() => store.reads >= readsAtOutage + 5);
    expect(m.enabled).toBe(true);
    expect(lines.filter((l) => /unreadable/.test(l.msg))).toHaveLength(1);
    store.failing = false;
    await writeMaintenance(store, false, 'cli', 2000);
    await until(() => !m.enabled);
    expect(m.state).toEqual({ enabled: false, since: 2000, by: 'cli' });
  });

  it('an unreadable value keeps the last known state', async () => {
    const store = new FakeMetaStore();
    const { mode: m, lines } = mode(store);
    await m.start(true);
    store.values.set(MAINTENANCE_META, '{"enabled":"sort of"}');
    const reads = store.reads;
    await until(() => store.reads >= reads + 3);
    expect(m.enabled).toBe(true);
    expect(lines.some((l) => /unreadable/.test(l.msg))).toBe(true);
  });

  it('a poll that read the store before a local switch does not undo it', async () => {
    const store = new FakeMetaStore();
    const { mode: m } = mode(store, 1_000_000);
    await m.start(undefined);
    let release!: () => void;
    store.hold = new Promise((r) => (release = r));
    const staleRead = m.refresh();
    await m.set(true, 'admin-api');
    release();
    await staleRead;
    expect(m.enabled).toBe(true);
  });

  it('logs each switch it sees once', async () => {
    const store = new FakeMetaStore();
    const { mode: m, lines } = mode(store);
    await m.start(undefined);
    await writeMaintenance(store, true, 'cli');
    await until(() => m.enabled);
    await m.refresh();
    expect(lines.filter((l) => /maintenance mode on/.test(l.msg))).toHaveLength(1);
  });
});
