/**
 * The gateway end to end: the real Anthropic SDK as the client, the real gateway on a loopback
 * port, the fake upstream behind it.
 */
import Anthropic, { APIError } from '@anthropic-ai/sdk';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { MESSAGE, recordedUsage, startStack, type Stack } from './helpers.ts';

let stack: Stack;
let key: string;

beforeAll(async () => {
  stack = await startStack();
  ({ key } = await stack.newKey({ name: 'sdk', rpm: 10_000, concurrent: 50 }));
});
afterAll(() => stack.close());
beforeEach(() => stack.fake.reset());

/** The message of an error in Anthropic's shape, as the SDK parsed it. */
function apiMessage(err: unknown): string {
  return ((err as APIError).error as { error?: { message?: string } } | undefined)?.error?.message ?? '';
}

function lastUpstreamRequest() {
  const req = stack.fake.requests.at(-1);
  if (!req) throw new Error('upstream saw no request');
  return req;
}

describe('Messages API through the gateway', () => {
  it('creates a message with the SDK, forwarding headers and swapping the credential', async () => {
    const client = stack.client(key);
    const { data: message, response } = await client.messages
      .create(
        { model: 'claude-sonnet-4-6', max_tokens: 64, messages: [MESSAGE] },
        { headers: { 'anthropic-beta': 'test-beta-2026', 'x-fake-output-tokens': '7' } },
      )
      .withResponse();

    expect(message.type).toBe('message');
    expect(message.content[0]).toMatchObject({ type: 'text' });
    expect(message.usage.output_tokens).toBe(7);
    expect(message.usage.input_tokens).toBeGreaterThan(0);

    const upstream = lastUpstreamRequest();
    expect(upstream.path).toBe('/v1/messages');
    expect(upstream.headers['x-api-key']).toBe(stack.fake.apiKey);
    expect(upstream.headers['anthropic-beta']).toBe('test-beta-2026');
    expect(upstream.headers['anthropic-version']).toBeTruthy();
    expect(JSON.stringify(upstream.headers)).not.toContain('sk-cc-');
    expect(upstream.headers.authorization).toBeUndefined();

    // The upstream account's details stay behind the gateway; the gateway's own headers are there.
    expect(response.headers.get('anthropic-organization-id')).toBeNull();
    expect([...response.headers.keys()].filter((h) => h.startsWith('anthropic-ratelimit'))).toEqual([]);
    expect(response.headers.get('x-request-id')).toMatch(/^req_cc_/);
    expect(response.headers.get('request-id')).toBeTruthy();
    expect(response.headers.get('x-ratelimit-limit')).toBe('10000');
    expect(Number(response.headers.get('x-ratelimit-remaining'))).toBeLessThan(10000);
    expect(Number(response.headers.get('x-ratelimit-reset'))).toBeGreaterThan(Date.now() / 1000);
  });

  it('passes the upstream body through byte for byte', async () => {
    const body = JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [MESSAGE] });
    const res = await request(`${stack.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body,
    });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(lastUpstreamRequest().body).toBe(body);
    const parsed = JSON.parse(text) as { usage: { output_tokens: number } };
    expect(stack.fake.reported.get(lastUpstreamRequest().requestId)?.output_tokens).toBe(parsed.usage.output_tokens);
  });

  it('streams with messages.stream and finalMessage', async () => {
    const client = stack.client(key);
    const stream = client.messages.stream(
      { model: 'claude-sonnet-4-6', max_tokens: 100, messages: [MESSAGE] },
      { headers: { 'x-fake-output-tokens': '25' } },
    );
    let deltas = 0;
    stream.on('text', () => deltas++);
    const final = await stream.finalMessage();
    expect(deltas).toBe(25);
    expect(final.usage.output_tokens).toBe(25);
    expect(final.stop_reason).toBe('end_turn');
    const reported = stack.fake.reported.get(lastUpstreamRequest().requestId);
    expect(final.usage.input_tokens).toBe(reported?.input_tokens);
  });

  it('delivers stream events as they arrive, not at the end', async () => {
    // 20 events 50 ms apart: the first byte must reach the client long before the last is sent.
    const res = await request(`${stack.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': key, 'content-type': 'application/json', 'x-fake-output-tokens': '20', 'x-fake-event-delay-ms': '50' },
      body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 100, stream: true, messages: [MESSAGE] }),
    });
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const iterator = res.body[Symbol.asyncIterator]();
    const first = await iterator.next();
    expect(String(first.value)).toContain('event: message_start');
    // The upstream has not finished writing when the first chunk is already here.
    expect(stack.fake.reported.get(lastUpstreamRequest().requestId)?.output_tokens).toBe(1);
    let rest = '';
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) rest += String(next.value);
    expect(rest).toContain('event: message_stop');
  });

  it('counts tokens', async () => {
    const client = stack.client(key);
    const counted = await client.messages.countTokens({ model: 'claude-opus-4-6', messages: [MESSAGE] });
    expect(counted.input_tokens).toBeGreaterThan(0);
    expect(lastUpstreamRequest().path).toBe('/v1/messages/count_tokens');
  });

  it('lists and retrieves the catalog models, filtered per key', async () => {
    const all = [];
    for await (const model of stack.client(key).models.list()) all.push(model.id);
    expect(all.sort()).toEqual(['claude-haiku-4-5', 'claude-opus-4-6', 'claude-sonnet-4-6']);

    const limited = await stack.newKey({ name: 'haiku-only', models: ['claude-haiku-4-5'] });
    const client = stack.client(limited.key);
    const visible = [];
    for await (const model of client.models.list()) visible.push(model.id);
    expect(visible).toEqual(['claude-haiku-4-5']);
    expect((await client.models.retrieve('claude-haiku-4-5')).display_name).toBe('Claude Haiku 4.5');
    await expect(client.models.retrieve('claude-opus-4-6')).rejects.toBeInstanceOf(Anthropic.NotFoundError);
  });

  it('paginates the model list', async () => {
    const page = await stack.client(key).models.list({ limit: 2 });
    expect(page.data).toHaveLength(2);
    expect(page.has_more).toBe(true);
    const next = await stack.client(key).models.list({ limit: 2, after_id: page.last_id! });
    expect(next.data).toHaveLength(1);
    expect(next.has_more).toBe(false);
  });

  it('accepts the key as Authorization: Bearer (Claude Code with ANTHROPIC_AUTH_TOKEN)', async () => {
    const client = new Anthropic({ authToken: key, apiKey: null, baseURL: stack.url, maxRetries: 0 });
    const message = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] });
    expect(message.type).toBe('message');
    expect(JSON.stringify(lastUpstreamRequest().headers)).not.toContain(key);
  });

  it('answers SDKs whose base URL ends in /v1', async () => {
    const client = stack.client(key, { baseURL: `${stack.url}/v1` });
    const message = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] });
    expect(message.type).toBe('message');
    expect(lastUpstreamRequest().path).toBe('/v1/messages');
    const stream = await client.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }).finalMessage();
    expect(stream.type).toBe('message');
    const status = await request(`${stack.url}/v1/v1/key-status`, { headers: { 'x-api-key': key } });
    expect(status.statusCode).toBe(200);
    await status.body.dump();
  });

  it('serves the beta namespace (?beta=true), and the metered routes on POST only', async () => {
    const client = stack.client(key);
    const beta = await client.beta.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] });
    expect(beta.type).toBe('message');
    const counted = await client.beta.messages.countTokens({ model: 'claude-haiku-4-5', messages: [MESSAGE] });
    expect(counted.input_tokens).toBeGreaterThan(0);
    for (const [method, path] of [['GET', '/v1/messages'], ['PUT', '/v1/messages'], ['POST', '/v1/messages/'], ['POST', '/v1/messagesx']] as const) {
      const res = await request(`${stack.url}${path}`, { method, headers: { 'x-api-key': key, 'content-type': 'application/json' }, body: method === 'GET' ? undefined : '{}' });
      expect(res.statusCode, `${method} ${path}`).toBe(404);
      expect(await res.body.json()).toMatchObject({ type: 'error', error: { type: 'not_found_error' } });
    }
  });

  it('writes one access-log line per request, metered routes and the rest alike, without keys or prompts', async () => {
    const { key: logKey, id } = await stack.newKey({ name: 'access-log' });
    const client = stack.client(logKey);
    const from = stack.logs.length;
    const prompt = 'ACCESS-LOG-PROMPT-7f3a';
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [{ role: 'user', content: prompt }] });
    await client.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }).finalMessage();
    await client.models.list();
    await request(`${stack.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': 'sk-cc-not-a-key' }, body: '{}' }).then((r) => r.body.dump());
    const lines = stack.logs.slice(from).join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    const access = lines.filter((l) => l['msg'] === 'request').map(({ method, route, status, keyId, requestId, ms }) => ({ method, route, status, keyId, requestId, ms }));
    expect(access).toEqual([
      { method: 'POST', route: '/v1/messages', status: 200, keyId: id, requestId: expect.stringMatching(/^req_cc_/), ms: expect.any(Number) },
      { method: 'POST', route: '/v1/messages', status: 200, keyId: id, requestId: expect.stringMatching(/^req_cc_/), ms: expect.any(Number) },
      { method: 'GET', route: '/v1/models', status: 200, keyId: id, requestId: expect.stringMatching(/^req_cc_/), ms: expect.any(Number) },
      { method: 'POST', route: '/v1/messages', status: 401, keyId: undefined, requestId: expect.stringMatching(/^req_cc_/), ms: expect.any(Number) },
    ]);
    const text = stack.logs.slice(from).join('');
    expect(text).not.toContain(logKey);
    expect(text).not.toContain(prompt);
  });
});

describe('authentication and permissions', () => {
  it('rejects a missing or unknown key with 401 AuthenticationError', async () => {
    await expect(
      stack.client('sk-cc-notarealkey0000000000000000000').messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }),
    ).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
    const res = await request(`${stack.url}/v1/messages`, { method: 'POST', body: '{}' });
    expect(res.statusCode).toBe(401);
    expect(await res.body.json()).toMatchObject({ type: 'error', error: { type: 'authentication_error' } });
    expect(stack.fake.requests).toHaveLength(0);
  });

  it('rejects disabled and expired keys with 401', async () => {
    const disabled = await stack.newKey({ name: 'off', disabled: true });
    const expired = await stack.newKey({ name: 'old', expiresAt: Date.now() - 1000 });
    for (const k of [disabled.key, expired.key]) {
      await expect(
        stack.client(k).messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }),
      ).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
    }
  });

  it('refuses a model outside the key\'s list with 403 PermissionDeniedError', async () => {
    const limited = await stack.newKey({ name: 'haiku', models: ['claude-haiku-4-5'] });
    const err = await stack
      .client(limited.key)
      .messages.create({ model: 'claude-opus-4-6', max_tokens: 10, messages: [MESSAGE] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.PermissionDeniedError);
    expect(apiMessage(err)).toMatch(/doesn't have access to this model/);
    expect(stack.fake.requests).toHaveLength(0);
  });
});

describe('rate limits', () => {
  it('answers 429 RateLimitError with Retry-After once rpm is used up', async () => {
    const limited = await stack.newKey({ name: 'rpm', rpm: 2 });
    const client = stack.client(limited.key);
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] });
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] });
    const err = (await client.messages
      .create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] })
      .catch((e: unknown) => e)) as APIError;
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    expect(apiMessage(err)).toMatch(/2 requests per minute/);
    const retryAfter = Number(err.headers?.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(err.headers?.get('x-ratelimit-limit')).toBe('2');
    expect(err.headers?.get('x-ratelimit-remaining')).toBe('0');
    expect(stack.fake.requests).toHaveLength(2);
  });

  it('holds a concurrency slot for the whole stream', async () => {
    const limited = await stack.newKey({ name: 'conc', concurrent: 1 });
    const client = stack.client(limited.key);
    const slow = client.messages.stream(
      { model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] },
      { headers: { 'x-fake-output-tokens': '10', 'x-fake-event-delay-ms': '30' } },
    );
    await new Promise<void>((resolve) => slow.once('streamEvent', () => resolve()));
    const err = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    expect(apiMessage(err)).toMatch(/concurrent/);
    await slow.finalMessage();
    // The slot is free again once the stream has ended.
    await expect(client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] })).resolves.toMatchObject({ type: 'message' });
  });

  it('a client gone before its JSON answer: 499 in the access log, client_closed in usage, the slot free', async () => {
    const limited = await stack.newKey({ name: 'gone-early', concurrent: 1 });
    const from = stack.logs.length;
    const controller = new AbortController();
    const pending = request(`${stack.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': limited.key, 'content-type': 'application/json', 'x-fake-latency-ms': '400' },
      body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] }),
      signal: controller.signal,
    }).catch((e: unknown) => e);
    await vi.waitFor(() => expect(stack.fake.requests.length).toBeGreaterThan(0), { timeout: 2000 });
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    // The gateway notices, answers nobody, and frees the key's one slot.
    const access = () => stack.logs.slice(from).join('').split('\n').filter((l) => l.includes('"msg":"request"'));
    await vi.waitFor(() => expect(access()).toHaveLength(1), { timeout: 2000 });
    expect(JSON.parse(access()[0]!)).toMatchObject({ route: '/v1/messages', status: 499, keyId: limited.id });
    const next = await stack.client(limited.key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] });
    expect(next.type).toBe('message');
    await stack.gateway.services.usage.flush();
    const rows = await stack.gateway.store.usageReport({ keyId: limited.id, by: 'key' });
    expect(rows.reduce((n, r) => n + Number(r.requests), 0)).toBe(2);
    expect(rows.reduce((n, r) => n + Number(r.errors), 0)).toBe(1);
  });

  it('frees the slot, aborts upstream and records usage when the client goes away mid-stream', async () => {
    const limited = await stack.newKey({ name: 'abort', concurrent: 1 });
    const client = stack.client(limited.key);
    const stream = client.messages.stream(
      { model: 'claude-haiku-4-5', max_tokens: 500, messages: [MESSAGE] },
      { headers: { 'x-fake-output-tokens': '100', 'x-fake-event-delay-ms': '10' } },
    );
    stream.on('error', () => {});
    const aborted = stream.finalMessage().catch((e: unknown) => e);
    await new Promise<void>((resolve) => stream.once('text', () => resolve()));
    const upstreamId = lastUpstreamRequest().requestId;
    stream.abort();
    expect(await aborted).toBeInstanceOf(Anthropic.APIUserAbortError);

    // The slot comes free as soon as the gateway sees the client leave (poll, no fixed sleep).
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i++) {
      const res = await request(`${stack.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': limited.key, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] }),
      });
      status = res.statusCode;
      await res.body.dump();
      if (status !== 200) await new Promise((r) => setTimeout(r, 10));
    }
    expect(status).toBe(200);

    // Upstream was aborted: had it run on, it would have reached message_delta (100 tokens) by now.
    await new Promise((r) => setTimeout(r, 1200));
    expect(stack.fake.reported.get(upstreamId)?.output_tokens).toBeLessThan(100);

    const row = await recordedUsage(stack, limited.id);
    // The aborted stream (and any 429 while its slot was held) count as errors; one request succeeded.
    expect(row.requests - row.errors).toBe(1);
    expect(row.errors).toBeGreaterThanOrEqual(1);
    const reported = stack.fake.reported.get(upstreamId)!;
    const second = stack.fake.reported.get(lastUpstreamRequest().requestId)!;
    expect(row.inputTokens).toBe(reported.input_tokens + second.input_tokens);
    // The abandoned stream bills at least what upstream generated for it (an estimate from the
    // text relayed, see SseUsageTap.billableUsage); the completed one exactly what upstream said.
    expect(row.outputTokens).toBeGreaterThanOrEqual(reported.output_tokens + second.output_tokens);
  });

  it('refuses requests once the token budget is spent, saying when it frees', async () => {
    const small = await stack.newKey({ name: 'budget', budgetTokens: 30 });
    const client = stack.client(small.key);
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] }, { headers: { 'x-fake-output-tokens': '40' } });
    const err = (await client.messages
      .create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] })
      .catch((e: unknown) => e)) as APIError;
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    expect(apiMessage(err)).toMatch(/^Token budget exceeded\. Resets in \d+h \d+m\.$/);
    expect(Number(err.headers?.get('retry-after'))).toBeGreaterThan(4 * 3600);
    // count_tokens still works: it counts against rpm, not the budget.
    await expect(client.messages.countTokens({ model: 'claude-haiku-4-5', messages: [MESSAGE] })).resolves.toHaveProperty('input_tokens');
  });
});

describe('key-status', () => {
  it('returns exactly the spec\'s shape with the key\'s own values', async () => {
    const k = await stack.newKey({ name: 'status', budgetTokens: 1000, rpm: 60, concurrent: 5 });
    const message = await stack.client(k.key).messages.create(
      { model: 'claude-haiku-4-5', max_tokens: 20, messages: [MESSAGE] },
      { headers: { 'x-fake-output-tokens': '9' } },
    );
    const used = message.usage.input_tokens + message.usage.output_tokens;
    const res = await request(`${stack.url}/v1/key-status`, { headers: { authorization: `Bearer ${k.key}` } });
    const body = await res.body.json();
    expect(body).toEqual({
      key: `sk-cc-...${k.key.slice(-4)}`,
      status: 'active',
      budget: {
        total_tokens: 1000,
        used_tokens: used,
        remaining_tokens: 1000 - used,
        window: '5h rolling',
        resets_in: expect.stringMatching(/^(\d+h )?\d+m$/),
      },
      rate_limit: { rpm: 60, concurrent: 5 },
    });
  });
});

describe('errors', () => {
  const post = (path: string, body: string, headers: Record<string, string> = {}) =>
    request(`${stack.url}${path}`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json', ...headers }, body });

  it('rejects malformed JSON and missing fields with 400 invalid_request_error', async () => {
    for (const body of ['{not json', '[]', JSON.stringify({ model: 'claude-haiku-4-5', messages: [] })]) {
      const res = await post('/v1/messages', body);
      expect(res.statusCode).toBe(400);
      const json = (await res.body.json()) as { type: string; error: { type: string; message: string } };
      expect(json.type).toBe('error');
      expect(json.error.type).toBe('invalid_request_error');
      expect(json.error.message.length).toBeGreaterThan(5);
      expect(res.headers['x-request-id']).toBeTruthy();
    }
    expect(stack.fake.requests).toHaveLength(0);
  });

  it('rejects an unknown model with 400 naming the models served', async () => {
    const err = await stack.client(key).messages.create({ model: 'gpt-4', max_tokens: 10, messages: [MESSAGE] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.BadRequestError);
    expect(apiMessage(err)).toMatch(/unknown model "gpt-4".*claude-sonnet-4-6/);
  });

  it('answers 413 request_too_large for an oversize body, declared or chunked', async () => {
    const small = await startStack({ config: { maxBodyBytes: 1024 } });
    try {
      const k = await small.newKey();
      const big = JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'x'.repeat(5000) }] });
      const declared = await request(`${small.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': k.key }, body: big });
      expect(declared.statusCode).toBe(413);
      expect(await declared.body.json()).toMatchObject({ error: { type: 'request_too_large' } });
      const chunked = await request(`${small.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': k.key },
        body: Readable.from((function* () {
          yield Buffer.from('{"model":"claude-haiku-4-5","max_tokens":10,"messages":[{"role":"user","content":"');
          for (let i = 0; i < 10; i++) yield Buffer.from('x'.repeat(500));
        })()),
      });
      expect(chunked.statusCode).toBe(413);
      await chunked.body.dump();
      expect(small.fake.requests).toHaveLength(0);
    } finally {
      await small.close();
    }
  });

  it('answers unknown routes with 404 not_found_error', async () => {
    const res = await request(`${stack.url}/v1/nothing-here`, { headers: { 'x-api-key': key } });
    expect(res.statusCode).toBe(404);
    expect(await res.body.json()).toMatchObject({ type: 'error', error: { type: 'not_found_error' } });
  });

  it('passes upstream errors through with their status and body', async () => {
    const client = stack.client(key);
    const cases: [string, unknown][] = [
      ['400', Anthropic.BadRequestError],
      ['429', Anthropic.RateLimitError],
      ['500', Anthropic.InternalServerError],
      ['529', Anthropic.InternalServerError],
    ];
    for (const [status, errorClass] of cases) {
      const err = (await client.messages
        .create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }, { headers: { 'x-fake-status': status } })
        .catch((e: unknown) => e)) as APIError;
      expect(err).toBeInstanceOf(errorClass);
      expect(err.status).toBe(Number(status));
    }
    const overloaded = (await client.messages
      .create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }, { headers: { 'x-fake-status': '529' } })
      .catch((e: unknown) => e)) as APIError;
    expect((overloaded.error as { error: { type: string } }).error.type).toBe('overloaded_error');
  });

  it('turns an upstream 401 (the gateway\'s own credential) into 502', async () => {
    const err = (await stack
      .client(key)
      .messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }, { headers: { 'x-fake-status': '401' } })
      .catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(502);
    expect(err).not.toBeInstanceOf(Anthropic.AuthenticationError);
  });

  it('answers 502 when the upstream is unreachable or drops the connection', async () => {
    const dead = await startStack({ config: { upstreams: [{ url: 'http://127.0.0.1:1', key: 'x' }] } });
    try {
      const k = await dead.newKey();
      const err = (await dead.client(k.key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }).catch((e: unknown) => e)) as APIError;
      expect(err.status).toBe(502);
      expect((err.error as { error: { type: string; message: string } }).error).toMatchObject({ type: 'api_error', message: expect.stringMatching(/Upstream unreachable/) });
      expect(err.message).not.toContain('127.0.0.1');
    } finally {
      await dead.close();
    }
    const dropped = (await stack
      .client(key)
      .messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }, { headers: { 'x-fake-drop-connection': '1' } })
      .catch((e: unknown) => e)) as APIError;
    expect(dropped.status).toBe(502);
  });

  it('answers 502, not 500, when upstream cuts a JSON body part-way (and logs no unhandled error)', async () => {
    const { key: cutKey, id } = await stack.newKey({ name: 'json-cut' });
    const err = (await stack
      .client(cutKey)
      .messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }, { headers: { 'x-fake-cut-after': '0' } })
      .catch((e: unknown) => e)) as APIError;
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect(err.status).toBe(502);
    expect((err.error as { error: { type: string; message: string } }).error).toMatchObject({ type: 'api_error', message: expect.stringMatching(/upstream response ended/) });
    expect(stack.logs.join('')).not.toContain('unhandled error');
    const row = await recordedUsage(stack, id);
    expect(row).toMatchObject({ requests: 1, errors: 1 });
  });

  it('ends a stream cut short upstream with an SSE error event the SDK raises', async () => {
    const stream = stack.client(key).messages.stream(
      { model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] },
      { headers: { 'x-fake-cut-after': '3' } },
    );
    const err = await stream.finalMessage().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect((err as Error).message).toMatch(/upstream stream ended/);
  });

  it('answers 503 in maintenance mode, health still answers', async () => {
    const maint = await startStack({ config: { maintenance: true } });
    try {
      const k = await maint.newKey();
      const err = (await maint.client(k.key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }).catch((e: unknown) => e)) as APIError;
      expect(err.status).toBe(503);
      expect(err.type).toBe('overloaded_error');
      expect(err.headers?.get('retry-after')).toBe('60');
      const health = await request(`${maint.url}/health`);
      expect(health.statusCode).toBe(200);
      expect(await health.body.json()).toEqual({ status: 'maintenance' });
    } finally {
      await maint.close();
    }
  });
});

describe('model catalog mapping', () => {
  it('sends the catalog\'s upstream id and serves only the configured catalog', async () => {
    const prices = { input: 3, output: 15, cache_write: 3.75, cache_read: 0.3 };
    const mapped = await startStack({
      config: {
        models: [
          { id: 'sonnet', upstream_id: 'claude-sonnet-4-6', display_name: 'Sonnet', prices },
          { id: 'claude-haiku-4-5', display_name: 'Haiku', prices },
        ],
      },
    });
    try {
      const k = await mapped.newKey();
      const client = mapped.client(k.key);
      await client.messages.create({ model: 'sonnet', max_tokens: 10, messages: [MESSAGE] });
      expect(JSON.parse(mapped.fake.requests.at(-1)!.body).model).toBe('claude-sonnet-4-6');
      await client.messages.stream({ model: 'sonnet', max_tokens: 10, messages: [MESSAGE] }).finalMessage();
      expect(JSON.parse(mapped.fake.requests.at(-1)!.body).model).toBe('claude-sonnet-4-6');
      // Unmapped ids go through byte for byte.
      const body = JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] });
      const res = await request(`${mapped.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': k.key }, body });
      await res.body.dump();
      expect(mapped.fake.requests.at(-1)!.body).toBe(body);
      const ids = [];
      for await (const model of client.models.list()) ids.push(model.id);
      expect(ids).toEqual(['sonnet', 'claude-haiku-4-5']);
      await expect(client.messages.create({ model: 'claude-opus-4-6', max_tokens: 10, messages: [MESSAGE] })).rejects.toBeInstanceOf(Anthropic.BadRequestError);
    } finally {
      await mapped.close();
    }
  });
});
