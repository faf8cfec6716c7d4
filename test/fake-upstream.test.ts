import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import Anthropic, {
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  AuthenticationError,
  BadRequestError,
  ContentTooLargeError,
  InternalServerError,
  NotFoundError,
  OverloadedError,
  PermissionDeniedError,
  RateLimitError,
} from '@anthropic-ai/sdk';
import { startFakeUpstream } from '../src/fake-upstream/server.ts';
import type { FakeUpstream, Usage } from '../src/fake-upstream/server.ts';

const MODEL = 'claude-sonnet-4-6';
const WORDS = ['Hello', 'from', 'the', 'fake', 'Anthropic', 'upstream.', 'This', 'reply', 'is', 'fully', 'deterministic', 'and'];

let fake: FakeUpstream;
let client: Anthropic;

function sdk(extra: Partial<ConstructorParameters<typeof Anthropic>[0]> = {}): Anthropic {
  return new Anthropic({ apiKey: fake.apiKey, baseURL: fake.url, maxRetries: 0, ...extra });
}

function expectedInput(body: { system?: unknown; messages: unknown; tools?: unknown }): number {
  const s = JSON.stringify({ system: body.system, messages: body.messages, tools: body.tools });
  return Math.ceil(Buffer.byteLength(s) / 4);
}

function usageOf(u: { input_tokens: number; output_tokens: number; cache_creation_input_tokens: number | null; cache_read_input_tokens: number | null }): Usage {
  return {
    input_tokens: u.input_tokens,
    output_tokens: u.output_tokens,
    cache_creation_input_tokens: u.cache_creation_input_tokens ?? 0,
    cache_read_input_tokens: u.cache_read_input_tokens ?? 0,
  };
}

function lastRequestId(): string {
  const r = fake.requests.at(-1);
  if (!r) throw new Error('no request recorded');
  return r.requestId;
}

async function rawPost(path: string, body: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(fake.url + path, {
    method: 'POST',
    headers: { 'x-api-key': fake.apiKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json', ...headers },
    body,
  });
}

const messages: Anthropic.MessageParam[] = [{ role: 'user', content: 'Say hello, please.' }];

beforeAll(async () => {
  fake = await startFakeUpstream();
  client = sdk();
});
afterAll(async () => {
  await fake.close();
});
beforeEach(() => {
  fake.reset();
});

describe('fake upstream: successful calls through the real SDK', () => {
  it('messages.create returns a well-formed Message with deterministic text and usage', async () => {
    const { data: msg, response, request_id: requestId } = await client.messages.create({ model: MODEL, max_tokens: 100, messages }).withResponse();
    expect(msg.id).toMatch(/^msg_fake_/);
    expect(msg.type).toBe('message');
    expect(msg.role).toBe('assistant');
    expect(msg.model).toBe(MODEL);
    expect(msg.stop_reason).toBe('end_turn');
    expect(msg.stop_sequence).toBeNull();
    expect(msg.stop_details).toBeNull();
    expect(msg.content).toEqual([{ type: 'text', text: WORDS.join(' ') }]);
    expect(msg.usage.output_tokens).toBe(12);
    expect(msg.usage.input_tokens).toBe(expectedInput({ messages }));
    expect(msg.usage.cache_creation_input_tokens).toBe(0);
    expect(msg.usage.cache_read_input_tokens).toBe(0);
    expect(requestId).toMatch(/^req_fake_/);
    expect(response.headers.get('request-id')).toBe(requestId);
    expect(response.headers.get('anthropic-organization-id')).toBe('org-fake-0001');
    for (const h of ['requests-limit', 'requests-remaining', 'requests-reset', 'tokens-limit', 'tokens-remaining', 'tokens-reset']) {
      expect(response.headers.get(`anthropic-ratelimit-${h}`)).toBeTruthy();
    }
    expect(fake.reported.get(requestId!)).toEqual(usageOf(msg.usage));
    expect(fake.requests[0]?.requestId).toBe(requestId);
  });

  it('caps output at max_tokens and honours x-fake-output-tokens', async () => {
    const short = await client.messages.create({ model: MODEL, max_tokens: 3, messages });
    expect(short.usage.output_tokens).toBe(3);
    expect(short.stop_reason).toBe('end_turn');
    expect(short.content).toEqual([{ type: 'text', text: 'Hello from the' }]);

    const asked = await client.messages.create({ model: MODEL, max_tokens: 100, messages }, { headers: { 'x-fake-output-tokens': '40' } });
    expect(asked.usage.output_tokens).toBe(40);
    expect(asked.stop_reason).toBe('end_turn');
    const text = asked.content[0]?.type === 'text' ? asked.content[0].text : '';
    expect(text.split(' ')).toHaveLength(40);

    const capped = await client.messages.create({ model: MODEL, max_tokens: 5, messages }, { headers: { 'x-fake-output-tokens': '40' } });
    expect(capped.usage.output_tokens).toBe(5);
    expect(capped.stop_reason).toBe('max_tokens');
  });

  it('messages.stream + finalMessage() accumulates the same message', async () => {
    const stream = client.messages.stream({ model: MODEL, max_tokens: 100, messages }, { headers: { 'x-fake-output-tokens': '7' } });
    const events: string[] = [];
    let text = '';
    stream.on('streamEvent', (e) => events.push(e.type));
    stream.on('text', (t) => { text += t; });
    const msg = await stream.finalMessage();
    expect(events).toEqual([
      'message_start', 'content_block_start',
      ...Array<string>(7).fill('content_block_delta'),
      'content_block_stop', 'message_delta', 'message_stop',
    ]);
    expect(text).toBe(WORDS.slice(0, 7).join(' '));
    expect(msg.content).toHaveLength(1);
    expect(msg.content[0]).toMatchObject({ type: 'text', text });
    expect(msg.stop_reason).toBe('end_turn');
    expect(msg.usage.output_tokens).toBe(7);
    expect(msg.usage.input_tokens).toBe(expectedInput({ messages }));
    expect(stream.request_id).toMatch(/^req_fake_/);
    expect(fake.reported.get(stream.request_id!)).toEqual(usageOf(msg.usage));
  });

  it('create({stream: true}) yields the raw event sequence', async () => {
    const s = await client.messages.create({ model: MODEL, max_tokens: 2, messages, stream: true });
    const types: string[] = [];
    let delta: Anthropic.MessageDeltaEvent | undefined;
    for await (const ev of s) {
      types.push(ev.type);
      if (ev.type === 'message_delta') delta = ev;
    }
    expect(types).toEqual(['message_start', 'content_block_start', 'content_block_delta', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop']);
    expect(delta?.usage.output_tokens).toBe(2);
    expect(delta?.delta.stop_reason).toBe('end_turn');
    expect(delta?.usage.input_tokens).toBe(expectedInput({ messages }));
  });

  it('streams with exact SSE framing, one event per frame, including ping', async () => {
    const res = await rawPost('/v1/messages', JSON.stringify({ model: MODEL, max_tokens: 1, messages, stream: true }));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    const body = await res.text();
    const frames = body.split('\n\n').filter(Boolean);
    const names = frames.map((f) => {
      const [ev, data, ...rest] = f.split('\n');
      expect(rest).toEqual([]);
      expect(data?.startsWith('data: ')).toBe(true);
      const name = ev?.replace('event: ', '') ?? '';
      expect(JSON.parse(data!.slice(6)).type).toBe(name);
      return name;
    });
    expect(names).toEqual(['message_start', 'content_block_start', 'ping', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop']);
  });

  it('prompt caching: creation the first time, read afterwards', async () => {
    const system: Anthropic.TextBlockParam[] = [{ type: 'text', text: 'You are a test. '.repeat(50), cache_control: { type: 'ephemeral' } }];
    const total = expectedInput({ system, messages });
    const cached = Math.floor(total * 0.75);
    const first = await client.messages.create({ model: MODEL, max_tokens: 4, system, messages });
    expect(first.usage).toMatchObject({ input_tokens: total - cached, cache_creation_input_tokens: cached, cache_read_input_tokens: 0 });
    const second = await client.messages.stream({ model: MODEL, max_tokens: 4, system, messages }).finalMessage();
    expect(second.usage).toMatchObject({ input_tokens: total - cached, cache_creation_input_tokens: 0, cache_read_input_tokens: cached });
    const count = await client.messages.countTokens({ model: MODEL, system, messages });
    expect(count.input_tokens).toBe(total);
  });

  it('countTokens uses the same input function', async () => {
    const tools: Anthropic.Tool[] = [{ name: 'get_weather', description: 'Weather', input_schema: { type: 'object', properties: { city: { type: 'string' } } } }];
    const count = await client.messages.countTokens({ model: MODEL, messages, tools });
    expect(count.input_tokens).toBe(expectedInput({ messages, tools }));
    const msg = await client.messages.create({ model: MODEL, max_tokens: 10, messages, tools });
    expect(msg.usage.input_tokens).toBe(count.input_tokens);
    expect(fake.reported.size).toBe(1); // count_tokens reports no usage
  });

  it('models.list and models.retrieve', async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) {
      expect(m.type).toBe('model');
      expect(m.display_name).toMatch(/^Claude /);
      expect(Number.isNaN(Date.parse(m.created_at))).toBe(false);
      ids.push(m.id);
    }
    expect(ids.length).toBeGreaterThanOrEqual(3);
    expect(ids).toContain(MODEL);
    const page = await client.models.list({ limit: 2 });
    expect(page.data).toHaveLength(2);
    expect(page.has_more).toBe(true);
    const all: string[] = [];
    for await (const m of client.models.list({ limit: 2 })) all.push(m.id);
    expect(all).toEqual(ids);
    const one = await client.models.retrieve(MODEL);
    expect(one.id).toBe(MODEL);
    await expect(client.models.retrieve('claude-nope')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('accepts Authorization: Bearer', async () => {
    const bearer = new Anthropic({ authToken: fake.apiKey, apiKey: null, baseURL: fake.url, maxRetries: 0 });
    const msg = await bearer.messages.create({ model: MODEL, max_tokens: 2, messages });
    expect(msg.usage.output_tokens).toBe(2);
    expect(fake.requests.at(-1)?.headers['authorization']).toBe(`Bearer ${fake.apiKey}`);
    expect(fake.requests.at(-1)?.headers['x-api-key']).toBeUndefined();
  });

  it('accepts x-api-key', async () => {
    const res = await rawPost('/v1/messages', JSON.stringify({ model: MODEL, max_tokens: 2, messages }));
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ type: 'message', usage: { output_tokens: 2 } });
    expect(fake.requests.at(-1)?.headers['x-api-key']).toBe(fake.apiKey);
    const bad = await rawPost('/v1/messages', JSON.stringify({ model: MODEL, max_tokens: 2, messages }), { 'x-api-key': 'nope' });
    expect(bad.status).toBe(401);
    expect(await bad.json()).toMatchObject({ type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' } });
  });

  it('records every request with lowercased headers and the raw body', async () => {
    await client.messages.create({ model: MODEL, max_tokens: 2, messages }, { headers: { 'X-Custom-Thing': 'yes' } });
    await client.models.list();
    expect(fake.requests.map((r) => [r.method, r.path])).toEqual([['POST', '/v1/messages'], ['GET', '/v1/models']]);
    const r = fake.requests[0]!;
    expect(r.headers['x-custom-thing']).toBe('yes');
    // SDK v1 sends its API key as a bearer token.
    expect(r.headers['authorization']).toBe(`Bearer ${fake.apiKey}`);
    expect(r.headers['anthropic-version']).toBeTruthy();
    expect(JSON.parse(r.body)).toEqual({ model: MODEL, max_tokens: 2, messages });
    expect(r.requestId).toMatch(/^req_fake_/);
  });
});

describe('fake upstream: errors surface as the right SDK error classes', () => {
  const cases: Array<[number, string, abstract new (...args: never[]) => APIError]> = [
    [400, 'invalid_request_error', BadRequestError],
    [401, 'authentication_error', AuthenticationError],
    [403, 'permission_error', PermissionDeniedError],
    [404, 'not_found_error', NotFoundError],
    [413, 'request_too_large', ContentTooLargeError],
    [429, 'rate_limit_error', RateLimitError],
    [500, 'api_error', InternalServerError],
    [529, 'overloaded_error', OverloadedError],
  ];

  for (const [status, type, cls] of cases) {
    it(`x-fake-status ${status} → ${cls.name}`, async () => {
      const err = await client.messages
        .create({ model: MODEL, max_tokens: 5, messages }, { headers: { 'x-fake-status': String(status) } })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(cls);
      const e = err as APIError;
      expect(e.status).toBe(status);
      expect(e.type).toBe(type);
      expect(e.requestID).toMatch(/^req_fake_/);
      expect(e.error).toMatchObject({ type: 'error', error: { type }, request_id: e.requestID });
      expect(e.headers?.get('anthropic-ratelimit-requests-limit')).toBeTruthy();
      if (status === 429) expect(e.headers?.get('retry-after')).toBe('1');
      expect(fake.reported.size).toBe(0);
    });
  }

  it('queued faults apply FIFO to the next /v1/messages requests only', async () => {
    fake.queueFault({ status: 529 });
    fake.queueFault({ status: 429 });
    // Other routes do not consume queued faults.
    await client.models.list();
    await client.messages.countTokens({ model: MODEL, messages });
    await expect(client.messages.create({ model: MODEL, max_tokens: 5, messages })).rejects.toBeInstanceOf(OverloadedError);
    await expect(client.messages.create({ model: MODEL, max_tokens: 5, messages })).rejects.toBeInstanceOf(RateLimitError);
    const ok = await client.messages.create({ model: MODEL, max_tokens: 5, messages });
    expect(ok.usage.output_tokens).toBe(5);
  });

  it('wrong API key → AuthenticationError "invalid x-api-key"', async () => {
    const bad = sdk({ apiKey: 'sk-ant-wrong' });
    const err = await bad.messages.create({ model: MODEL, max_tokens: 5, messages }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuthenticationError);
    expect((err as APIError).error).toMatchObject({ error: { type: 'authentication_error', message: 'invalid x-api-key' } });
  });

  it('missing anthropic-version → 400 invalid_request_error', async () => {
    const res = await fetch(fake.url + '/v1/messages', {
      method: 'POST',
      headers: { 'x-api-key': fake.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, max_tokens: 5, messages }),
    });
    expect(res.status).toBe(400);
    const body = await res.json() as { type: string; error: { type: string; message: string }; request_id: string };
    expect(body.type).toBe('error');
    expect(body.error.type).toBe('invalid_request_error');
    expect(body.error.message).toMatch(/anthropic-version/);
    expect(body.request_id).toBe(res.headers.get('request-id'));
  });

  it('validates the body', async () => {
    const bad = async (body: unknown, re: RegExp): Promise<void> => {
      const err = await client.messages.create(body as Anthropic.MessageCreateParamsNonStreaming).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BadRequestError);
      expect((err as APIError).message).toMatch(re);
    };
    await bad({ max_tokens: 5, messages }, /model/);
    await bad({ model: MODEL, messages }, /max_tokens/);
    await bad({ model: MODEL, max_tokens: 0, messages }, /max_tokens/);
    await bad({ model: MODEL, max_tokens: 1.5, messages }, /max_tokens/);
    await bad({ model: MODEL, max_tokens: 5 }, /messages/);
    await bad({ model: MODEL, max_tokens: 5, messages: [] }, /messages/);
    await bad({ model: MODEL, max_tokens: 5, messages: [{ role: 'robot', content: 'x' }] }, /role/);

    const res = await rawPost('/v1/messages', '{"model": ');
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ type: 'error', error: { type: 'invalid_request_error' } });
  });

  it('unknown route → 404 not_found_error', async () => {
    const res = await rawPost('/v1/nope', '{}');
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ type: 'error', error: { type: 'not_found_error' } });
    expect(res.headers.get('request-id')).toMatch(/^req_fake_/);
  });
});

describe('fake upstream: broken connections and the ledger', () => {
  it('a stream cut short makes the SDK throw; reported holds the output it carried', async () => {
    const stream = client.messages.stream({ model: MODEL, max_tokens: 100, messages }, { headers: { 'x-fake-cut-after': '3' } });
    let text = '';
    stream.on('text', (t) => { text += t; });
    await expect(stream.finalMessage()).rejects.toThrow();
    expect(text).toBe('Hello from the');
    const id = lastRequestId();
    expect(stream.request_id).toBe(id);
    // Three deltas (three words, one token each) went out before the cut.
    expect(fake.reported.get(id)).toEqual({
      input_tokens: expectedInput({ messages }), output_tokens: 3, cache_creation_input_tokens: 0, cache_read_input_tokens: 0,
    });
  });

  it('a queued cut on a raw stream: events up to the cut, then an error', async () => {
    fake.queueFault({ cutAfter: 0 });
    const s = await client.messages.create({ model: MODEL, max_tokens: 100, messages, stream: true });
    const types: string[] = [];
    await expect((async () => { for await (const ev of s) types.push(ev.type); })()).rejects.toThrow();
    expect(types).toEqual(['message_start', 'content_block_start']);
    expect(fake.totalReported().output_tokens).toBe(1);
  });

  it('a cut JSON response makes the SDK throw and reports nothing', async () => {
    const err = await client.messages.create({ model: MODEL, max_tokens: 10, messages }, { headers: { 'x-fake-cut-after': '0' } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(fake.requests).toHaveLength(1);
    expect(fake.reported.size).toBe(0);
  });

  it('a dropped connection surfaces as APIConnectionError', async () => {
    const err = await client.messages.create({ model: MODEL, max_tokens: 10, messages }, { headers: { 'x-fake-drop-connection': '1' } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIConnectionError);
    fake.queueFault({ dropConnection: true });
    await expect(client.messages.stream({ model: MODEL, max_tokens: 10, messages }).finalMessage()).rejects.toBeInstanceOf(APIConnectionError);
    expect(fake.reported.size).toBe(0);
    expect(fake.requests).toHaveLength(2);
  });

  it('a mid-stream error event surfaces as an APIError of that type', async () => {
    const stream = client.messages.stream({ model: MODEL, max_tokens: 10, messages }, { headers: { 'x-fake-stream-error-after': '2' } });
    const err = await stream.finalMessage().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect((err as APIError).type).toBe('overloaded_error');
    expect(fake.reported.get(lastRequestId())?.output_tokens).toBe(2);
  });

  it('latency: header and queued, and SDK timeouts', async () => {
    // A delayed answer outlasts a client timeout shorter than the delay (no clock readings).
    const delayed = (headers: Record<string, string>) =>
      client.messages.create({ model: MODEL, max_tokens: 1, messages }, { headers, timeout: 100 }).catch((e: unknown) => e);
    expect(await delayed({ 'x-fake-latency-ms': '1000' })).toBeInstanceOf(APIConnectionTimeoutError);
    fake.queueFault({ latencyMs: 1000 });
    expect(await delayed({})).toBeInstanceOf(APIConnectionTimeoutError);
    // The queued fault was used up: the next call answers.
    await expect(client.messages.create({ model: MODEL, max_tokens: 1, messages })).resolves.toMatchObject({ type: 'message' });
  });

  it('with record: false keeps neither requests nor the usage ledger (long benchmarks)', async () => {
    const quiet = await startFakeUpstream({ eventDelayMs: 1, record: false });
    try {
      const c = new Anthropic({ apiKey: quiet.apiKey, baseURL: quiet.url, maxRetries: 0 });
      const msg = await c.messages.stream({ model: MODEL, max_tokens: 4, messages }).finalMessage();
      expect(msg.usage.output_tokens).toBe(4);
      expect(quiet.requests).toHaveLength(0);
      expect(quiet.reported.size).toBe(0);
    } finally {
      await quiet.close();
    }
  });

  it('the ledger equals what the SDK saw across a mix of requests', async () => {
    const seen: Usage[] = [];
    const system: Anthropic.TextBlockParam[] = [{ type: 'text', text: 'Cache me. '.repeat(40), cache_control: { type: 'ephemeral' } }];
    seen.push(usageOf((await client.messages.create({ model: MODEL, max_tokens: 9, messages })).usage));
    seen.push(usageOf((await client.messages.create({ model: MODEL, max_tokens: 50, system, messages })).usage));
    seen.push(usageOf((await client.messages.stream({ model: MODEL, max_tokens: 50, system, messages }).finalMessage()).usage));
    seen.push(usageOf((await client.messages.stream({ model: MODEL, max_tokens: 50, messages }, { headers: { 'x-fake-output-tokens': '33' } }).finalMessage()).usage));
    // A cut stream: the SDK saw message_start's usage and one token per delta it received.
    let cutUsage: Usage | undefined;
    let deltas = 0;
    const cut = client.messages.stream({ model: MODEL, max_tokens: 50, messages }, { headers: { 'x-fake-cut-after': '5' } });
    cut.on('streamEvent', (ev) => {
      if (ev.type === 'message_start') cutUsage = usageOf(ev.message.usage);
      if (ev.type === 'content_block_delta') deltas++;
    });
    await expect(cut.finalMessage()).rejects.toThrow();
    expect(deltas).toBe(5);
    seen.push({ ...cutUsage!, output_tokens: deltas });
    // Errors report nothing.
    await expect(client.messages.create({ model: MODEL, max_tokens: 5, messages }, { headers: { 'x-fake-status': '500' } })).rejects.toBeInstanceOf(InternalServerError);

    const sum = seen.reduce<Usage>((a, u) => ({
      input_tokens: a.input_tokens + u.input_tokens,
      output_tokens: a.output_tokens + u.output_tokens,
      cache_creation_input_tokens: a.cache_creation_input_tokens + u.cache_creation_input_tokens,
      cache_read_input_tokens: a.cache_read_input_tokens + u.cache_read_input_tokens,
    }), { input_tokens: 0, output_tokens: 0, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 });
    expect(fake.reported.size).toBe(5);
    expect(fake.totalReported()).toEqual(sum);
    expect(sum.output_tokens).toBe(9 + 12 + 12 + 33 + 5);
    expect(sum.cache_creation_input_tokens).toBeGreaterThan(0);
    expect(sum.cache_creation_input_tokens).toBe(sum.cache_read_input_tokens);
  });

  it('close() does not hang with keep-alive sockets and a stalled stream open', async () => {
    const f = await startFakeUpstream({ eventDelayMs: 10_000 });
    const c = new Anthropic({ apiKey: f.apiKey, baseURL: f.url, maxRetries: 0 });
    const pending = c.messages.stream({ model: MODEL, max_tokens: 5, messages }).finalMessage().catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 50));
    const t0 = performance.now();
    await f.close();
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(await pending).toBeInstanceOf(Error);
  });
});
