/**
 * The response cache end to end, with the real Anthropic SDK: MISS then HIT for JSON and
 * streams (and across the two), exact matching independent of key order, bypass, TTL, tenant
 * scope, what is never stored, billing of hits, single flight, and entries surviving a restart.
 */
import Anthropic from '@anthropic-ai/sdk';
import { request } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { runCli } from './gateway-process.ts';
import { ADMIN_TOKEN, MESSAGE, recordedUsage, startStack, type Stack } from './helpers.ts';

let stack: Stack | undefined;
afterEach(async () => {
  vi.useRealTimers();
  await stack?.close();
  stack = undefined;
});

const PARAMS = { model: 'claude-haiku-4-5', max_tokens: 30, messages: [MESSAGE] };

/** POSTs a raw body; the status, cache headers and parsed JSON (or raw text for streams). */
async function post(url: string, key: string, body: string, headers: Record<string, string> = {}) {
  const res = await request(`${url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json', ...headers }, body });
  const text = await res.body.text();
  const h = (name: string) => res.headers[name] as string | undefined;
  return { status: res.statusCode, cache: h('x-cache'), ttl: h('x-cache-ttl'), saved: h('x-tokens-saved'), age: h('age'), text };
}

/** A message without the SDK's own `parsed_output` (added by its stream helper, not by the API). */
function apiFields(message: object): object {
  const { parsed_output: _parsed, ...rest } = message as { parsed_output?: unknown };
  return rest;
}

function upstreamCalls(s: Stack): number {
  return s.fake.requests.filter((r) => r.path === '/v1/messages').length;
}

describe('response cache', () => {
  it('JSON: MISS, then HIT with the same message, no upstream call, no budget tokens', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const { key, id } = await stack.newKey({ name: 'cache-json' });
    const client = stack.client(key);
    const first = await client.messages.create(PARAMS).withResponse();
    expect(first.response.headers.get('x-cache')).toBe('MISS');
    expect(first.response.headers.get('x-cache-ttl')).toBe('3600');
    const second = await client.messages.create(PARAMS).withResponse();
    expect(second.response.headers.get('x-cache')).toBe('HIT');
    expect(Number(second.response.headers.get('x-tokens-saved'))).toBe(first.data.usage.input_tokens + first.data.usage.output_tokens);
    expect(second.response.headers.get('age')).toMatch(/^\d+$/);
    expect(second.data).toEqual(first.data);
    expect(upstreamCalls(stack)).toBe(1);
    const row = await recordedUsage(stack, id);
    expect(row.requests).toBe(2);
    expect(row.billedTokens).toBe(first.data.usage.input_tokens + first.data.usage.output_tokens);
  });

  it('a stream is stored and replayed: stream → stream, stream → JSON, JSON → stream', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const { key } = await stack.newKey({ name: 'cache-stream' });
    const client = stack.client(key);
    const streamed = client.messages.stream({ ...PARAMS, max_tokens: 40 });
    const original = await streamed.finalMessage();
    let text = '';
    const replay = client.messages.stream({ ...PARAMS, max_tokens: 40 });
    replay.on('text', (t) => (text += t));
    const replayed = await replay.finalMessage();
    expect(replayed).toEqual(original);
    expect(text).toBe((original.content[0] as Anthropic.TextBlock).text);
    const asJson = await client.messages.create({ ...PARAMS, max_tokens: 40 }).withResponse();
    expect(asJson.response.headers.get('x-cache')).toBe('HIT');
    expect(apiFields(asJson.data)).toEqual(apiFields(original));
    expect(upstreamCalls(stack)).toBe(1);

    const json = await client.messages.create({ ...PARAMS, max_tokens: 41 });
    const fromJson = await client.messages.stream({ ...PARAMS, max_tokens: 41 }).finalMessage();
    expect(apiFields(fromJson)).toEqual(apiFields(json));
    expect(upstreamCalls(stack)).toBe(2);
  });

  it('thinking (signature byte-identical), text and tool_use survive the round trip, streamed and as JSON', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const { key } = await stack.newKey({ name: 'cache-rich' });
    const client = stack.client(key);
    const rich = { headers: { 'x-fake-content': 'rich' } };
    const params = {
      ...PARAMS,
      max_tokens: 2000,
      thinking: { type: 'enabled' as const, budget_tokens: 1024 },
      tools: [{ name: 'get_weather', description: 'Weather by city', input_schema: { type: 'object' as const, properties: { city: { type: 'string' } } } }],
    };
    const original = await client.messages.stream(params, rich).finalMessage();
    expect(original.content.map((b) => b.type)).toEqual(['thinking', 'text', 'tool_use']);
    const replayed = await client.messages.stream(params, rich).finalMessage();
    expect(apiFields(replayed)).toEqual(apiFields(original));
    const thinking = (block: Anthropic.ContentBlock) => block as Anthropic.ThinkingBlock;
    expect(thinking(replayed.content[0]!).signature).toBe(thinking(original.content[0]!).signature);
    expect((replayed.content[2] as Anthropic.ToolUseBlock).input).toEqual({ city: 'Paris', days: 3, units: 'metric', note: 'naïve "quotes" \\ back' });
    const asJson = await client.messages.create(params, rich).withResponse();
    expect(asJson.response.headers.get('x-cache')).toBe('HIT');
    expect(apiFields(asJson.data)).toEqual(apiFields(original));
    expect(upstreamCalls(stack)).toBe(1);
  });

  it('matches exactly, whatever the key order and whitespace; any change is a miss', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const { key } = await stack.newKey({ name: 'cache-order' });
    const a = await post(stack.url, key, '{"model":"claude-haiku-4-5","max_tokens":20,"messages":[{"role":"user","content":"Hi"}]}');
    const b = await post(stack.url, key, '{ "messages" : [ {"content":"Hi", "role":"user"} ], "max_tokens": 20, "model": "claude-haiku-4-5" }');
    expect([a.cache, b.cache]).toEqual(['MISS', 'HIT']);
    expect(b.text).toBe(a.text);
    const c = await post(stack.url, key, '{"model":"claude-haiku-4-5","max_tokens":20,"messages":[{"role":"user","content":"Hi "}]}');
    const d = await post(stack.url, key, '{"model":"claude-haiku-4-5","max_tokens":20,"temperature":0.5,"messages":[{"role":"user","content":"Hi"}]}');
    expect([c.cache, d.cache]).toEqual(['MISS', 'MISS']);
  });

  it('X-No-Cache: true bypasses: neither served from nor stored', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const { key } = await stack.newKey({ name: 'cache-bypass' });
    const body = JSON.stringify(PARAMS);
    const bypassed = await post(stack.url, key, body, { 'x-no-cache': 'true' });
    expect(bypassed.cache).toBe('BYPASS');
    expect((await post(stack.url, key, body)).cache).toBe('MISS');
    expect((await post(stack.url, key, body, { 'x-no-cache': 'true' })).cache).toBe('BYPASS');
    expect((await post(stack.url, key, body)).cache).toBe('HIT');
    expect(upstreamCalls(stack)).toBe(3);
  });

  it('entries expire after the TTL (only the clock moves)', async () => {
    stack = await startStack({ config: { cache: { enabled: true, ttlSeconds: 60 } } });
    const { key } = await stack.newKey({ name: 'cache-ttl' });
    const body = JSON.stringify(PARAMS);
    expect((await post(stack.url, key, body)).cache).toBe('MISS');
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 59_000);
    const hit = await post(stack.url, key, body);
    expect(hit.cache).toBe('HIT');
    expect(Number(hit.age)).toBeGreaterThanOrEqual(59);
    vi.setSystemTime(Date.now() + 2_000);
    expect((await post(stack.url, key, body)).cache).toBe('MISS');
  });

  it('two keys never share entries', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const a = await stack.newKey({ name: 'tenant-a' });
    const b = await stack.newKey({ name: 'tenant-b' });
    const body = JSON.stringify(PARAMS);
    expect((await post(stack.url, a.key, body)).cache).toBe('MISS');
    expect((await post(stack.url, b.key, body)).cache).toBe('MISS');
    expect((await post(stack.url, a.key, body)).cache).toBe('HIT');
    expect((await post(stack.url, b.key, body)).cache).toBe('HIT');
    expect(upstreamCalls(stack)).toBe(2);
  });

  it('keys in one group share entries; a key TTL of its own wins, and 0 turns its cache off', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const a = await stack.newKey({ name: 'grouped-a', cacheGroup: 'team' });
    const b = await stack.newKey({ name: 'grouped-b', cacheGroup: 'team' });
    const other = await stack.newKey({ name: 'other-group', cacheGroup: 'elsewhere' });
    const short = await stack.newKey({ name: 'short-ttl', cacheTtlSeconds: 90 });
    const off = await stack.newKey({ name: 'cache-off', cacheTtlSeconds: 0 });
    const body = JSON.stringify(PARAMS);
    expect((await post(stack.url, a.key, body)).cache).toBe('MISS');
    expect((await post(stack.url, b.key, body)).cache).toBe('HIT');
    expect((await post(stack.url, other.key, body)).cache).toBe('MISS');
    const shortMiss = await post(stack.url, short.key, body);
    expect([shortMiss.cache, shortMiss.ttl]).toEqual(['MISS', '90']);
    const offAnswers = [await post(stack.url, off.key, body), await post(stack.url, off.key, body)];
    expect(offAnswers.map((r) => r.cache)).toEqual(['BYPASS', 'BYPASS']);
    expect(upstreamCalls(stack)).toBe(5);
  });

  it('never stores an error, a cut stream or an abandoned stream', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const { key } = await stack.newKey({ name: 'cache-never' });
    const client = stack.client(key);
    await expect(client.messages.create(PARAMS, { headers: { 'x-fake-status': '529' } })).rejects.toBeInstanceOf(Anthropic.APIError);
    expect((await client.messages.create(PARAMS).withResponse()).response.headers.get('x-cache')).toBe('MISS');

    const cutParams = { ...PARAMS, max_tokens: 31 };
    await expect(client.messages.stream(cutParams, { headers: { 'x-fake-cut-after': '2' } }).finalMessage()).rejects.toThrow();
    expect((await client.messages.create(cutParams).withResponse()).response.headers.get('x-cache')).toBe('MISS');

    const abandonParams = { ...PARAMS, max_tokens: 32 };
    const abandoned = client.messages.stream(abandonParams, { headers: { 'x-fake-output-tokens': '30', 'x-fake-event-delay-ms': '20' } });
    abandoned.on('error', () => {});
    const done = abandoned.finalMessage().catch(() => undefined);
    await new Promise<void>((resolve) => abandoned.once('text', () => resolve()));
    abandoned.abort();
    await done;
    await new Promise((r) => setTimeout(r, 50));
    expect((await client.messages.create(abandonParams).withResponse()).response.headers.get('x-cache')).toBe('MISS');
  });

  it('identical requests in flight at once make one upstream call', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const { key } = await stack.newKey({ name: 'cache-flight', concurrent: 50 });
    const body = JSON.stringify({ ...PARAMS, max_tokens: 33 });
    const results = await Promise.all(Array.from({ length: 20 }, () => post(stack!.url, key, body, { 'x-fake-latency-ms': '100' })));
    expect(results.every((r) => r.status === 200)).toBe(true);
    expect(new Set(results.map((r) => r.text)).size).toBe(1);
    expect(results.filter((r) => r.cache === 'MISS')).toHaveLength(1);
    expect(results.filter((r) => r.cache === 'HIT')).toHaveLength(19);
    expect(upstreamCalls(stack)).toBe(1);
  });

  it('entries survive a restart (embedded mode)', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const { key } = await stack.newKey({ name: 'cache-restart' });
    const body = JSON.stringify(PARAMS);
    const first = await post(stack.url, key, body);
    expect(first.cache).toBe('MISS');
    const dataDir = stack.dataDir;
    await stack.gateway.close();
    await stack.fake.close();
    const again = await startStack({ dataDir, config: { cache: { enabled: true } } });
    try {
      const hit = await post(again.url, key, body);
      expect(hit.cache).toBe('HIT');
      expect(hit.text).toBe(first.text);
      expect(upstreamCalls(again)).toBe(0);
    } finally {
      await again.close();
    }
    stack = undefined;
  });

  it('admin API and CLI: stats (tiers, hits, misses, tokens saved) and purge, all or per key', async () => {
    stack = await startStack({ config: { cache: { enabled: true } } });
    const a = await stack.newKey({ name: 'stats-a' });
    const b = await stack.newKey({ name: 'stats-b' });
    const body = JSON.stringify(PARAMS);
    const miss = await post(stack.url, a.key, body);
    const hit = await post(stack.url, a.key, body);
    await post(stack.url, b.key, body);
    const admin = (method: string, path: string) =>
      request(`${stack!.url}/admin${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }).then(async (r) => ({ status: r.statusCode, json: (await r.body.json()) as any }));

    const stats = await admin('GET', '/cache');
    expect(stats.status).toBe(200);
    expect(stats.json.since_start).toMatchObject({ hits: 1, misses: 2, tokens_saved: Number(hit.saved) });
    expect(stats.json.tiers.memory.entries).toBe(2);
    expect(miss.cache).toBe('MISS');

    // Purging one key's entries leaves the other's.
    expect((await admin('DELETE', `/cache?key=${a.id}`)).json.purged.memory).toBe(1);
    expect((await post(stack.url, a.key, body)).cache).toBe('MISS');
    expect((await post(stack.url, b.key, body)).cache).toBe('HIT');
    expect((await admin('DELETE', '/cache?key=key_nope')).status).toBe(404);

    // Usage records the hits with what they saved.
    await stack.gateway.services.usage.flush();
    const usage = await admin('GET', `/usage?by=key&key=${b.id}`);
    expect(usage.json.totals.cached_requests).toBe(1);
    expect(usage.json.totals.tokens_saved).toBe(Number(hit.saved));
    expect(usage.json.totals.billed_tokens).toBe(Number(hit.saved));

    // The CLI reaches the same routes with --url, and the shared tier directly without.
    const viaUrl = await runCli(['cache', 'stats', '--json', '--url', stack.url, '--admin-token', ADMIN_TOKEN], {});
    expect(JSON.parse(viaUrl.stdout).since_start.hits).toBe(2);
    const purged = await runCli(['cache', 'purge', '--url', stack.url, '--admin-token', ADMIN_TOKEN], {});
    expect(purged.code).toBe(0);
    expect((await post(stack.url, b.key, body)).cache).toBe('MISS');
    await new Promise((r) => setTimeout(r, 200)); // the shared tier's write is not awaited by the request
    const local = await runCli(['cache', 'stats', '--json'], { CLAUDCODE_DATA_DIR: stack.dataDir });
    expect(local.code).toBe(0);
    expect(JSON.parse(local.stdout).tiers.sqlite.entries).toBeGreaterThanOrEqual(1);
  });
});
