/**
 * The admin HTTP API (/admin/...) against a real gateway and the fake upstream.
 */
import Anthropic, { APIError } from '@anthropic-ai/sdk';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashKey } from '../src/keys.ts';
import { ADMIN_TOKEN, MESSAGE, startStack, type Stack } from './helpers.ts';

/**
 * Attached MCP servers a key may list (`mcp_servers`). Only their names matter here: nothing
 * starts or reaches them.
 */
const MCP_SERVERS = { tavily: { command: 'node', args: ['x.js'] }, fetch: { type: 'http' as const, url: 'http://127.0.0.1:1/mcp' } };

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ config: { mcpServers: MCP_SERVERS } });
});
afterAll(() => stack.close());

interface Reply<T = any> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  body: T;
}

async function admin<T = any>(
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
  path: string,
  body?: unknown,
  options: { token?: string | null; raw?: string } = {},
): Promise<Reply<T>> {
  const token = options.token === undefined ? ADMIN_TOKEN : options.token;
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  const payload = options.raw ?? (body === undefined ? undefined : JSON.stringify(body));
  if (payload !== undefined) headers['content-type'] = 'application/json';
  const res = await request(`${stack.url}/admin${path}`, { method, headers, body: payload });
  const text = await res.body.text();
  let parsed: unknown = undefined;
  try {
    parsed = JSON.parse(text);
  } catch {
    // leave undefined
  }
  return { status: res.statusCode, headers: res.headers, text, body: parsed as T };
}

function expectError(reply: Reply, status: number, type: string, message?: RegExp): void {
  expect({ status: reply.status, type: reply.body?.type, errorType: reply.body?.error?.type }).toEqual({ status, type: 'error', errorType: type });
  expect(typeof reply.body.error.message).toBe('string');
  if (message) expect(reply.body.error.message).toMatch(message);
}

async function createKey(input: Record<string, unknown>) {
  const reply = await admin('POST', '/keys', input);
  expect(reply.status).toBe(201);
  return reply.body as { id: string; key: string } & Record<string, unknown>;
}

describe('admin authentication', () => {
  it('refuses requests without the admin token, in Anthropic error shape', async () => {
    for (const [method, path] of [['GET', '/keys'], ['POST', '/keys'], ['GET', '/usage'], ['DELETE', '/keys/key_x'], ['GET', '/keys/key_x']] as const) {
      const reply = await admin(method, path, method === 'POST' ? { name: 'x' } : undefined, { token: null });
      expectError(reply, 401, 'authentication_error', /admin token/);
      expect(reply.headers['x-request-id']).toMatch(/^req_cc_/);
    }
    expectError(await admin('GET', '/keys', undefined, { token: 'wrong-token-0123456789' }), 401, 'authentication_error');
    expectError(await admin('GET', '/keys', undefined, { token: `${ADMIN_TOKEN}x` }), 401, 'authentication_error');
    // The x-api-key header is not the admin token's place.
    const res = await request(`${stack.url}/admin/keys`, { headers: { 'x-api-key': ADMIN_TOKEN } });
    expect(res.statusCode).toBe(401);
    await res.body.text();
    // Nothing was created by the refused POST.
    expect((await admin('GET', '/keys')).body.data).toEqual([]);
  });

  it('does not accept a gateway key as admin token', async () => {
    const { key } = await stack.newKey({ name: 'not-admin' });
    expectError(await admin('GET', '/keys', undefined, { token: key }), 401, 'authentication_error');
  });
});

describe('admin keys', () => {
  it('creates a key, shows the secret once and never its hash', async () => {
    const created = await createKey({
      name: 'team-a',
      models: ['claude-haiku-4-5'],
      rpm: 7,
      concurrent: 2,
      budget_tokens: 1000,
      window: '2h',
      expires_at: '2099-01-01T00:00:00Z',
    });
    expect(created.key).toMatch(/^sk-cc-[0-9A-Za-z]{32}$/);
    expect(created).toMatchObject({
      id: expect.stringMatching(/^key_/),
      name: 'team-a',
      key_preview: `sk-cc-...${created.key.slice(-4)}`,
      models: ['claude-haiku-4-5'],
      rpm: 7,
      concurrent: 2,
      budget_tokens: 1000,
      window_seconds: 7200,
      expires_at: '2099-01-01T00:00:00.000Z',
      disabled: false,
      status: 'active',
    });
    const hash = hashKey(created.key);
    expect(JSON.stringify(created)).not.toContain(hash);

    const one = await admin('GET', `/keys/${created.id}`);
    expect(one.status).toBe(200);
    const { key: _secret, ...withoutSecret } = created;
    expect(one.body).toEqual(withoutSecret);
    const list = await admin('GET', '/keys');
    expect(list.status).toBe(200);
    expect(list.body.data.map((k: { id: string }) => k.id)).toContain(created.id);
    for (const text of [one.text, list.text]) {
      expect(text).not.toContain(created.key);
      expect(text).not.toContain(created.key.slice(6));
      expect(text).not.toContain(hash);
      expect(text).not.toMatch(/"(key|hash|key_hash)"\s*:/);
    }

    // The key works right away.
    const message = await stack.client(created.key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 16, messages: [MESSAGE] });
    expect(message.type).toBe('message');
  });

  it('applies key defaults', async () => {
    const created = await createKey({ name: 'defaults' });
    expect(created).toMatchObject({ models: null, rpm: 60, concurrent: 5, budget_tokens: 5_000_000, window_seconds: 18000, expires_at: null });
    // No cache settings: the gateway's default TTL, entries of this key alone.
    expect(created.cache_ttl_seconds).toBeNull();
    expect(created.cache_group).toBeNull();
    // No attached MCP servers.
    expect(created.mcp_servers).toEqual([]);
  });

  it('rejects invalid input with 400 invalid_request_error naming the field', async () => {
    const cases: [unknown, RegExp][] = [
      [{}, /name/],
      [{ name: '   ' }, /name/],
      [{ name: 'x', rpm: 0 }, /rpm/],
      [{ name: 'x', rpm: 1.5 }, /rpm/],
      [{ name: 'x', rpm: '10' }, /rpm/],
      [{ name: 'x', concurrent: -1 }, /concurrent/],
      [{ name: 'x', budget_tokens: 0 }, /budget_tokens/],
      [{ name: 'x', window: '5w' }, /window: invalid duration/],
      [{ name: 'x', models: ['gpt-4o'] }, /models: unknown model "gpt-4o"/],
      [{ name: 'x', models: [] }, /models/],
      [{ name: 'x', expires_at: 'tomorrow' }, /expires_at/],
      [{ name: 'x', surprise: true }, /surprise|Unrecognized/i],
      [[], /body|expected object/i],
    ];
    const before = (await admin('GET', '/keys')).body.data.length;
    for (const [body, message] of cases) {
      const reply = await admin('POST', '/keys', body);
      expectError(reply, 400, 'invalid_request_error', message);
    }
    expectError(await admin('POST', '/keys', undefined, { raw: '{"name": ' }), 400, 'invalid_request_error', /not valid JSON/);
    // None of the refused requests created a key.
    expect((await admin('GET', '/keys')).body.data.length).toBe(before);
  });

  it('answers 404 not_found_error for an unknown id on every key route', async () => {
    const id = 'key_doesnotexist';
    expectError(await admin('GET', `/keys/${id}`), 404, 'not_found_error', new RegExp(id));
    expectError(await admin('PATCH', `/keys/${id}`, { rpm: 5 }), 404, 'not_found_error');
    expectError(await admin('POST', `/keys/${id}/disable`), 404, 'not_found_error');
    expectError(await admin('POST', `/keys/${id}/enable`), 404, 'not_found_error');
    expectError(await admin('DELETE', `/keys/${id}`), 404, 'not_found_error');
  });

  it('patches, disables, enables and deletes keys, each taking effect on the next request', async () => {
    const created = await createKey({ name: 'lifecycle', rpm: 100 });
    const client = stack.client(created.key);
    const ask = (model = 'claude-sonnet-4-6') => client.messages.create({ model, max_tokens: 8, messages: [MESSAGE] });
    await expect(ask()).resolves.toMatchObject({ type: 'message' });

    // Restrict the models: the next request for another model is refused.
    const patched = await admin('PATCH', `/keys/${created.id}`, { models: ['claude-haiku-4-5'], name: 'renamed' });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ id: created.id, name: 'renamed', models: ['claude-haiku-4-5'], rpm: 100 });
    expect(patched.text).not.toContain(created.key);
    const denied = await ask().catch((err: unknown) => err);
    expect(denied).toBeInstanceOf(Anthropic.PermissionDeniedError);
    expect((denied as APIError).status).toBe(403);
    await expect(ask('claude-haiku-4-5')).resolves.toMatchObject({ type: 'message' });
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['claude-haiku-4-5']);

    // Validation applies to PATCH too; a refused PATCH changes nothing.
    expectError(await admin('PATCH', `/keys/${created.id}`, { rpm: 'ten' }), 400, 'invalid_request_error', /rpm/);
    expectError(await admin('PATCH', `/keys/${created.id}`, { models: ['claude-opus-9'] }), 400, 'invalid_request_error', /unknown model/);
    expect((await admin('GET', `/keys/${created.id}`)).body).toMatchObject({ rpm: 100, models: ['claude-haiku-4-5'] });

    // Lower the rpm: it applies to the very next requests.
    expect((await admin('PATCH', `/keys/${created.id}`, { rpm: 1, models: null })).body).toMatchObject({ rpm: 1, models: null });
    const responses = await Promise.allSettled([ask(), ask()]);
    const limited = responses.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason as unknown);
    // The key already made requests within this minute, so at most one more can pass.
    expect(limited.length).toBeGreaterThanOrEqual(1);
    expect(limited[0]).toBeInstanceOf(Anthropic.RateLimitError);
    expect((await admin('PATCH', `/keys/${created.id}`, { rpm: 1000 })).status).toBe(200);

    const disabled = await admin('POST', `/keys/${created.id}/disable`);
    expect(disabled.status).toBe(200);
    expect(disabled.body).toMatchObject({ disabled: true, status: 'disabled' });
    await expect(ask()).rejects.toBeInstanceOf(Anthropic.AuthenticationError);

    const enabled = await admin('POST', `/keys/${created.id}/enable`);
    expect(enabled.body).toMatchObject({ disabled: false, status: 'active' });
    await expect(ask()).resolves.toMatchObject({ type: 'message' });

    // An expiry in the past makes the key expired.
    const expired = await admin('PATCH', `/keys/${created.id}`, { expires_at: '2000-01-01T00:00:00Z' });
    expect(expired.body).toMatchObject({ status: 'expired', expires_at: '2000-01-01T00:00:00.000Z' });
    await expect(ask()).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
    expect((await admin('PATCH', `/keys/${created.id}`, { expires_at: null })).body).toMatchObject({ status: 'active', expires_at: null });

    const deleted = await admin('DELETE', `/keys/${created.id}`);
    expect(deleted.status).toBe(200);
    expect(deleted.body).toEqual({ id: created.id, deleted: true });
    await expect(ask()).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
    expectError(await admin('GET', `/keys/${created.id}`), 404, 'not_found_error');
    expect((await admin('GET', '/keys')).body.data.map((k: { id: string }) => k.id)).not.toContain(created.id);
  });

  it('a budget lowered by PATCH applies to the next request', async () => {
    const created = await createKey({ name: 'budget' });
    const client = stack.client(created.key);
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 32, messages: [MESSAGE] }, { headers: { 'x-fake-output-tokens': '20' } });
    expect((await admin('PATCH', `/keys/${created.id}`, { budget_tokens: 10 })).status).toBe(200);
    const err = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 8, messages: [MESSAGE] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    expect((err as APIError).message).toMatch(/Token budget exceeded\. Resets in /);
  });
});

describe('admin key MCP servers', () => {
  it('takes mcp_servers of configured servers on create and PATCH (duplicates dropped, [] clears) and shows them everywhere', async () => {
    const created = await createKey({ name: 'mcp', mcp_servers: ['tavily', 'fetch', 'tavily'] });
    expect(created.mcp_servers).toEqual(['tavily', 'fetch']);
    expect((await admin('GET', `/keys/${created.id}`)).body.mcp_servers).toEqual(['tavily', 'fetch']);
    const listed = (await admin('GET', '/keys')).body.data.find((k: { id: string }) => k.id === created.id);
    expect(listed.mcp_servers).toEqual(['tavily', 'fetch']);
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ mcpServers: ['tavily', 'fetch'] });
    // The gateway's own copy of the key has them at once.
    await stack.gateway.services.keys.refresh();
    expect(stack.gateway.services.keys.authenticate({ 'x-api-key': created.key }, Date.now()).mcpServers).toEqual(['tavily', 'fetch']);

    const changed = await admin('PATCH', `/keys/${created.id}`, { mcp_servers: ['fetch'] });
    expect(changed.status).toBe(200);
    expect(changed.body).toMatchObject({ mcp_servers: ['fetch'], name: 'mcp' });
    expect(stack.gateway.services.keys.authenticate({ 'x-api-key': created.key }, Date.now()).mcpServers).toEqual(['fetch']);
    // Another field patched: the list stays.
    expect((await admin('PATCH', `/keys/${created.id}`, { rpm: 3 })).body).toMatchObject({ rpm: 3, mcp_servers: ['fetch'] });
    const cleared = await admin('PATCH', `/keys/${created.id}`, { mcp_servers: [] });
    expect(cleared.body.mcp_servers).toEqual([]);
    expect((await admin('GET', `/keys/${created.id}`)).body.mcp_servers).toEqual([]);
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ mcpServers: [] });
    expect(stack.gateway.services.keys.authenticate({ 'x-api-key': created.key }, Date.now()).mcpServers).toEqual([]);
  });

  it('refuses unknown or malformed mcp_servers with 400 naming them and the configured servers, changing nothing', async () => {
    const { id } = await createKey({ name: 'mcp-bounds', mcp_servers: ['tavily'] });
    const before = (await admin('GET', '/keys')).body.data.length;
    const unknown = await admin('POST', '/keys', { name: 'x', mcp_servers: ['tavily', 'github'] });
    expectError(unknown, 400, 'invalid_request_error', /^mcp_servers: unknown MCP server "github"; configured: tavily, fetch$/);
    const several = await admin('PATCH', `/keys/${id}`, { mcp_servers: ['nope', 'fetch', 'Tavily', 'nope'] });
    expectError(several, 400, 'invalid_request_error', /^mcp_servers: unknown MCP servers "nope", "Tavily"; configured: tavily, fetch$/);
    for (const mcp_servers of ['tavily', null, [1], { tavily: true }]) {
      expectError(await admin('PATCH', `/keys/${id}`, { mcp_servers }), 400, 'invalid_request_error', /^mcp_servers\b/);
    }
    expect((await admin('GET', '/keys')).body.data.length).toBe(before);
    expect((await admin('GET', `/keys/${id}`)).body.mcp_servers).toEqual(['tavily']);
  });
});

describe('admin key cache settings', () => {
  it('takes cache_ttl as seconds, a duration, 0 (off) or null (default), and cache_group as a name or null; shows them everywhere', async () => {
    const created = await createKey({ name: 'cached', cache_ttl: '1h', cache_group: 'team-x' });
    expect(created).toMatchObject({ cache_ttl_seconds: 3600, cache_group: 'team-x' });
    expect((await admin('GET', `/keys/${created.id}`)).body).toMatchObject({ cache_ttl_seconds: 3600, cache_group: 'team-x' });
    const listed = (await admin('GET', '/keys')).body.data.find((k: { id: string }) => k.id === created.id);
    expect(listed).toMatchObject({ cache_ttl_seconds: 3600, cache_group: 'team-x' });
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ cacheTtlSeconds: 3600, cacheGroup: 'team-x' });

    for (const [cache_ttl, seconds] of [[600, 600], ['90m', 5400], ['30d', 30 * 86400], [30 * 86400, 30 * 86400], ['45', 45], [1, 1], [0, 0], ['0', 0], [null, null]] as const) {
      const reply = await admin('PATCH', `/keys/${created.id}`, { cache_ttl });
      expect(reply.status, JSON.stringify(cache_ttl)).toBe(200);
      expect(reply.body.cache_ttl_seconds).toBe(seconds);
      expect(reply.body.cache_group).toBe('team-x'); // untouched
      expect((await stack.gateway.store.getKey(created.id))!.cacheTtlSeconds).toBe(seconds);
    }
    const other = await admin('PATCH', `/keys/${created.id}`, { cache_ttl: 0, rpm: 9 });
    expect(other.body).toMatchObject({ cache_ttl_seconds: 0, rpm: 9, cache_group: 'team-x' });
    // Patching other fields leaves the cache settings as they are.
    expect((await admin('PATCH', `/keys/${created.id}`, { rpm: 10 })).body).toMatchObject({ cache_ttl_seconds: 0, cache_group: 'team-x' });
    for (const cache_group of ['A_b-9', 'g'.repeat(64), null]) {
      expect((await admin('PATCH', `/keys/${created.id}`, { cache_group })).body).toMatchObject({ cache_group, cache_ttl_seconds: 0 });
    }
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ cacheTtlSeconds: 0, cacheGroup: null });

    const off = await createKey({ name: 'no-cache', cache_ttl: 0, cache_group: null });
    expect(off).toMatchObject({ cache_ttl_seconds: 0, cache_group: null });
  });

  it('refuses a bad cache_ttl or cache_group with 400 naming the field, on create and update, changing nothing', async () => {
    const { id } = await createKey({ name: 'cache-bounds', cache_ttl: '2h', cache_group: 'kept' });
    const before = (await admin('GET', '/keys')).body.data.length;
    const cases: [unknown, unknown, RegExp][] = [
      ['cache_ttl', '31d', /^cache_ttl: "31d" is too long for a cache TTL: at most 30d/],
      ['cache_ttl', 30 * 86400 + 1, /^cache_ttl: .*too long for a cache TTL: at most 30d/],
      ['cache_ttl', '100000000000d', /^cache_ttl: .*at most 30d/],
      ['cache_ttl', -1, /^cache_ttl: invalid duration -1/],
      ['cache_ttl', 1.5, /^cache_ttl: invalid duration 1\.5/],
      ['cache_ttl', 'soon', /^cache_ttl: invalid duration "soon"/],
      ['cache_ttl', '0s', /^cache_ttl: invalid duration "0s"/],
      ['cache_ttl', '', /^cache_ttl: /],
      ['cache_ttl', true, /^cache_ttl: expected seconds, a duration like "1h", 0 \(cache off\) or null/],
      ['cache_ttl', {}, /^cache_ttl: /],
      ['cache_group', '', /^cache_group: expected a name of 1 to 64 letters, digits/],
      ['cache_group', 'has space', /^cache_group: expected a name/],
      ['cache_group', 'g'.repeat(65), /^cache_group: expected a name/],
      ['cache_group', 'émoji', /^cache_group: expected a name/],
      ['cache_group', 'a/b', /^cache_group: expected a name/],
      ['cache_group', 5, /^cache_group: /],
      ['cache_group', ['a'], /^cache_group: /],
    ];
    for (const [field, value, message] of cases) {
      expectError(await admin('POST', '/keys', { name: 'bad-cache', [field as string]: value }), 400, 'invalid_request_error', message);
      expectError(await admin('PATCH', `/keys/${id}`, { [field as string]: value }), 400, 'invalid_request_error', message);
    }
    expect((await admin('GET', '/keys')).body.data.length).toBe(before);
    expect((await admin('GET', `/keys/${id}`)).body).toMatchObject({ cache_ttl_seconds: 7200, cache_group: 'kept' });
  });
});

describe('admin usage', () => {
  it('reports the tokens cache hits saved per group and in the totals', async () => {
    const created = await createKey({ name: 'saved-tokens' });
    const now = Date.now();
    const base = {
      endpoint: 'messages' as const, status: 200, inputTokens: 10, outputTokens: 20, cacheCreationTokens: 0, cacheReadTokens: 0,
      latencyMs: 5, streamed: false, outcome: 'ok' as const, keyId: created.id,
    };
    await stack.gateway.store.insertUsage([
      { ...base, ts: now - 1000, requestId: 'req_saved_1', model: 'claude-haiku-4-5', billedTokens: 30, cached: false },
      { ...base, ts: now - 900, requestId: 'req_saved_2', model: 'claude-haiku-4-5', billedTokens: 0, cached: true, savedTokens: 30 },
      { ...base, ts: now - 800, requestId: 'req_saved_3', model: 'claude-sonnet-4-6', billedTokens: 0, cached: true, savedTokens: 70, requests: 2 },
    ]);
    const byModel = await admin('GET', `/usage?by=model&key=${created.id}`);
    expect(byModel.status).toBe(200);
    expect(byModel.body.rows.map((r: Record<string, unknown>) => [r.group, r.requests, r.cached_requests, r.billed_tokens, r.tokens_saved])).toEqual([
      ['claude-haiku-4-5', 2, 1, 30, 30],
      ['claude-sonnet-4-6', 2, 2, 0, 70],
    ]);
    expect(byModel.body.totals).toMatchObject({ requests: 4, cached_requests: 3, billed_tokens: 30, tokens_saved: 100 });
    const byKey = await admin('GET', `/usage?by=key&key=${created.id}`);
    expect(byKey.body.rows).toEqual([expect.objectContaining({ group: created.id, tokens_saved: 100 })]);
    const byDay = await admin('GET', `/usage?by=day&key=${created.id}&since=1d`);
    expect(byDay.body.totals.tokens_saved).toBe(100);
    // Requests that saved nothing report 0, not a missing field.
    const none = await admin('GET', '/usage?by=key&key=key_nobody');
    expect(none.body.totals.tokens_saved).toBe(0);
  });

  it('reports by upstream, \'\' for the requests no upstream served (refusals, cache hits)', async () => {
    const created = await createKey({ name: 'by-upstream' });
    const now = Date.now();
    const base = {
      endpoint: 'messages' as const, status: 200, inputTokens: 10, outputTokens: 20, cacheCreationTokens: 0, cacheReadTokens: 0,
      latencyMs: 5, streamed: false, outcome: 'ok' as const, keyId: created.id, model: 'claude-haiku-4-5', cached: false, billedTokens: 30,
    };
    await stack.gateway.store.insertUsage([
      { ...base, ts: now - 1000, requestId: 'req_up_1', upstream: 'anthropic-main' },
      { ...base, ts: now - 900, requestId: 'req_up_2', upstream: 'anthropic-main', model: 'claude-sonnet-4-6' },
      { ...base, ts: now - 800, requestId: 'req_up_3', upstream: 'api.anthropic.com' },
      { ...base, ts: now - 700, requestId: 'req_up_4', status: 429, outcome: 'rejected', inputTokens: 0, outputTokens: 0, billedTokens: 0, requests: 3 },
      { ...base, ts: now - 600, requestId: 'req_up_5', cached: true, billedTokens: 0, savedTokens: 30, upstream: '' },
    ]);
    const reply = await admin('GET', `/usage?by=upstream&key=${created.id}&since=1h`);
    expect(reply.status).toBe(200);
    expect(reply.body).toMatchObject({ by: 'upstream', key_id: created.id });
    expect(reply.body.rows.map((r: Record<string, unknown>) => [r.group, r.requests, r.errors, r.cached_requests, r.billed_tokens, r.tokens_saved])).toEqual([
      ['', 4, 3, 1, 0, 30],
      ['anthropic-main', 2, 0, 0, 60, 0],
      ['api.anthropic.com', 1, 0, 0, 30, 0],
    ]);
    expect(reply.body.totals).toMatchObject({ requests: 7, billed_tokens: 90, tokens_saved: 30 });
    expectError(await admin('GET', '/usage?by=upstreams'), 400, 'invalid_request_error', /^by: expected model, key, day or upstream$/);
  });

  it('reports what requests through the SDK used, by model, key and day', async () => {
    const created = await createKey({ name: 'usage', rpm: 100 });
    const client = stack.client(created.key);
    stack.fake.reset();
    const a = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 64, messages: [MESSAGE] }, { headers: { 'x-fake-output-tokens': '11' } });
    const b = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 64, messages: [MESSAGE, { role: 'assistant', content: 'Hi' }, MESSAGE] }, { headers: { 'x-fake-output-tokens': '13' } });
    const stream = client.messages.stream({ model: 'claude-sonnet-4-6', max_tokens: 64, messages: [MESSAGE] }, { headers: { 'x-fake-output-tokens': '5' } });
    const c = await stream.finalMessage();
    // A refused request is recorded as an error with nothing billed.
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 64, messages: [MESSAGE] }, { headers: { 'x-fake-status': '529' } }).catch(() => undefined);
    await stack.gateway.services.usage.flush();

    const haikuIn = a.usage.input_tokens + b.usage.input_tokens;
    const haikuOut = a.usage.output_tokens + b.usage.output_tokens;
    expect(haikuOut).toBe(24);
    expect(c.usage.output_tokens).toBe(5);

    const byModel = await admin('GET', `/usage?by=model&key=${created.id}&since=24h`);
    expect(byModel.status).toBe(200);
    expect(byModel.body).toMatchObject({ by: 'model', key_id: created.id, until: null });
    expect(Date.now() - Date.parse(byModel.body.since)).toBeGreaterThanOrEqual(24 * 3600 * 1000);
    expect(Date.now() - Date.parse(byModel.body.since)).toBeLessThan(24 * 3600 * 1000 + 60_000);
    const haiku = byModel.body.rows.find((r: { group: string }) => r.group === 'claude-haiku-4-5');
    const sonnet = byModel.body.rows.find((r: { group: string }) => r.group === 'claude-sonnet-4-6');
    expect(byModel.body.rows).toHaveLength(2);
    expect(haiku).toMatchObject({
      requests: 3,
      errors: 1,
      input_tokens: haikuIn,
      output_tokens: haikuOut,
      billed_tokens: haikuIn + haikuOut,
      cost_usd: Math.round(((haikuIn * 1 + haikuOut * 5) / 1e6) * 1e6) / 1e6,
    });
    expect(sonnet).toMatchObject({
      requests: 1,
      errors: 0,
      input_tokens: c.usage.input_tokens,
      output_tokens: 5,
      billed_tokens: c.usage.input_tokens + 5,
    });
    expect(byModel.body.totals).toMatchObject({
      requests: 4,
      errors: 1,
      input_tokens: haikuIn + c.usage.input_tokens,
      output_tokens: 29,
      billed_tokens: haikuIn + c.usage.input_tokens + 29,
    });
    // The usage the fake upstream reported is exactly what the report shows.
    const reported = stack.fake.totalReported();
    expect(reported.input_tokens).toBe(byModel.body.totals.input_tokens);
    expect(reported.output_tokens).toBe(byModel.body.totals.output_tokens);

    const byKey = await admin('GET', `/usage?by=key&key=${created.id}`);
    expect(byKey.body.rows).toEqual([expect.objectContaining({ group: created.id, requests: 4, billed_tokens: byModel.body.totals.billed_tokens })]);

    const byDay = await admin('GET', `/usage?by=day&key=${created.id}&since=1d`);
    expect(byDay.body.rows).toEqual([expect.objectContaining({ group: new Date().toISOString().slice(0, 10), requests: 4 })]);

    // Filters: a future `since` or a past `until` leaves nothing; other keys are not included.
    const future = await admin('GET', `/usage?key=${created.id}&since=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`);
    expect(future.body.rows).toEqual([]);
    expect(future.body.totals.requests).toBe(0);
    const past = await admin('GET', `/usage?key=${created.id}&until=2020-01-01T00:00:00Z`);
    expect(past.body.rows).toEqual([]);
    const all = await admin('GET', '/usage?by=key');
    expect(all.body.rows.length).toBeGreaterThan(1);
    expect(all.body.totals.requests).toBeGreaterThan(4);
  });

  it('rejects bad report parameters', async () => {
    expectError(await admin('GET', '/usage?by=week'), 400, 'invalid_request_error', /by/);
    expectError(await admin('GET', '/usage?since=yesterday-ish'), 400, 'invalid_request_error', /since/);
    expectError(await admin('GET', '/usage?until=nope'), 400, 'invalid_request_error', /until/);
  });

  it('reads since=0h as now, and refuses a duration or date out of range with 400 naming the parameter', async () => {
    for (const zero of ['0h', '0d', '0m']) {
      const before = Date.now();
      const reply = await admin('GET', `/usage?since=${zero}`);
      expect(reply.status).toBe(200);
      expect(Date.parse(reply.body.since)).toBeGreaterThanOrEqual(before);
      expect(reply.body.totals.requests).toBe(0);
    }
    expectError(await admin('GET', '/usage?since=100000000000d'), 400, 'invalid_request_error', /^since: "100000000000d" is out of range/);
    expectError(await admin('GET', '/usage?until=99999999999999h'), 400, 'invalid_request_error', /^until: .*out of range/);
    expectError(await admin('GET', `/usage?since=${encodeURIComponent('+275760-09-13T00:00:00Z')}`), 400, 'invalid_request_error', /^since: .*out of range/);
    expectError(await admin('GET', '/usage?since=1e400h'), 400, 'invalid_request_error', /^since: expected an ISO date/);
  });
});

describe('admin key windows', () => {
  it('accepts a window from one minute to 366 days', async () => {
    expect((await createKey({ name: 'short-window', window: '1m' })).window_seconds).toBe(60);
    expect((await createKey({ name: 'long-window', window: 366 * 86400 })).window_seconds).toBe(366 * 86400);
  });

  it('refuses a window under a minute or over 366 days with 400 naming the field, on create and update', async () => {
    const { id } = await createKey({ name: 'window-bounds', window: '5h' });
    for (const window of ['100000000000d', '367d', 366 * 86400 + 1, 1e15]) {
      expectError(await admin('POST', '/keys', { name: 'too-long', window }), 400, 'invalid_request_error', /^window: .*too long for a budget window: at most 366d/);
      expectError(await admin('PATCH', `/keys/${id}`, { window }), 400, 'invalid_request_error', /^window: .*at most 366d/);
    }
    for (const window of ['59s', '30', 1]) {
      expectError(await admin('POST', '/keys', { name: 'too-short', window }), 400, 'invalid_request_error', /^window: .*too short for a budget window: at least 60s/);
    }
    expect((await admin('GET', `/keys/${id}`)).body.window_seconds).toBe(5 * 3600);
    expect((await admin('GET', '/keys')).body.data.map((k: { name: string }) => k.name)).not.toContain('too-long');
  });
});
