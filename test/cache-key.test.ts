/**
 * The response cache's key (src/cache/key.ts): exact matching on a canonical form. Key order and
 * whitespace never matter; every field that shapes the answer does; `stream` does not; scopes
 * never share a key; strings are compared code unit for code unit.
 */
import { describe, expect, it } from 'vitest';
import { betaSet, cacheKey, canonicalRequest, isCacheableBody, scopeOfKey, type CacheKeyInput } from '../src/cache/key.ts';

const BODY = {
  model: 'claude-sonnet',
  max_tokens: 1024,
  system: [{ type: 'text', text: 'You are terse.', cache_control: { type: 'ephemeral' } }],
  messages: [
    { role: 'user', content: 'What is the weather in Paris?' },
    { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'weather', input: { city: 'Paris', days: [1, 2] } }] },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: '18 °C, sunny' }] },
  ],
  tools: [{ name: 'weather', description: 'Forecast', input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } }],
  temperature: 0.5,
  metadata: { user_id: 'user-1' },
};

function input(overrides: Partial<CacheKeyInput> = {}): CacheKeyInput {
  return { body: structuredClone(BODY), upstreamModel: 'claude-sonnet-4-6', anthropicVersion: '2023-06-01', scope: 'key_a', ...overrides };
}

const key = (overrides: Partial<CacheKeyInput> = {}) => cacheKey(input(overrides));
const withBody = (change: (body: Record<string, unknown>) => void) => {
  const body = structuredClone(BODY) as Record<string, unknown>;
  change(body);
  return key({ body });
};

/** `value` with every object's keys in reverse order, recursively. */
function reversed(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(reversed);
  if (typeof value !== 'object' || value === null) return value;
  return Object.fromEntries(Object.entries(value).reverse().map(([k, v]) => [k, reversed(v)]));
}

describe('cacheKey', () => {
  it('is the scope, a colon and a SHA-256 hex digest', () => {
    expect(key()).toMatch(/^key_a:[0-9a-f]{64}$/);
    expect(key()).toBe(key());
    expect(scopeOfKey(key({ scope: 'group:team-1' }))).toBe('group:team-1');
  });

  it('does not depend on object key order or whitespace', () => {
    const base = key();
    expect(key({ body: reversed(BODY) })).toBe(base);
    // What a client sends: the same JSON pretty-printed, parsed again.
    expect(key({ body: JSON.parse(JSON.stringify(reversed(BODY), null, 2)) })).toBe(base);
    const spaced = '{ "messages" : [ { "content" : "hi" ,\n\t"role":"user" } ] ,\r\n "max_tokens" : 5 }';
    expect(key({ body: JSON.parse(spaced) })).toBe(key({ body: { max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] } }));
  });

  it('does not depend on stream, so one entry answers JSON and streaming requests', () => {
    const base = key();
    expect(withBody((b) => (b['stream'] = true))).toBe(base);
    expect(withBody((b) => (b['stream'] = false))).toBe(base);
  });

  it('keys the upstream model, not the alias the client named', () => {
    const base = key();
    expect(withBody((b) => (b['model'] = 'some-alias'))).toBe(base);
    expect(key({ upstreamModel: 'claude-opus-4-8' })).not.toBe(base);
  });

  it('changes with every field that shapes the answer', () => {
    const variants: Record<string, string> = {
      base: key(),
      upstreamModel: key({ upstreamModel: 'claude-haiku-4-5-20251001' }),
      system: withBody((b) => (b['system'] = 'You are verbose.')),
      systemCacheControl: withBody((b) => ((b['system'] as { cache_control?: unknown }[])[0]!.cache_control = { type: 'ephemeral', ttl: '1h' })),
      messageText: withBody((b) => ((b['messages'] as { content: unknown }[])[0]!.content = 'What is the weather in Lyon?')),
      messageOrder: withBody((b) => (b['messages'] as unknown[]).reverse()),
      extraTurn: withBody((b) => (b['messages'] as unknown[]).push({ role: 'assistant', content: 'Sunny.' })),
      toolInput: withBody((b) => ((b['messages'] as { content: { input?: { days: number[] } }[] }[])[1]!.content[0]!.input!.days = [2, 1])),
      tools: withBody((b) => ((b['tools'] as { description: string }[])[0]!.description = 'Forecast.')),
      noTools: withBody((b) => delete b['tools']),
      toolChoiceAuto: withBody((b) => (b['tool_choice'] = { type: 'auto' })),
      toolChoiceAny: withBody((b) => (b['tool_choice'] = { type: 'any' })),
      temperature: withBody((b) => (b['temperature'] = 0.7)),
      noTemperature: withBody((b) => delete b['temperature']),
      topP: withBody((b) => (b['top_p'] = 0.9)),
      topK: withBody((b) => (b['top_k'] = 40)),
      maxTokens: withBody((b) => (b['max_tokens'] = 1025)),
      stopSequences: withBody((b) => (b['stop_sequences'] = ['\n\nHuman:'])),
      thinking: withBody((b) => (b['thinking'] = { type: 'enabled', budget_tokens: 2048 })),
      metadata: withBody((b) => (b['metadata'] = { user_id: 'user-2' })),
      noMetadata: withBody((b) => delete b['metadata']),
      unknownField: withBody((b) => (b['service_tier'] = 'standard_only')),
      version: key({ anthropicVersion: '2024-01-01' }),
      noVersion: key({ anthropicVersion: undefined }),
      beta: key({ anthropicBeta: 'prompt-caching-2024-07-31' }),
      twoBetas: key({ anthropicBeta: 'prompt-caching-2024-07-31,token-efficient-tools-2025-02-19' }),
    };
    const seen = new Map<string, string>();
    for (const [name, value] of Object.entries(variants)) {
      expect(seen.get(value), `${name} has the key of ${seen.get(value)}`).toBeUndefined();
      seen.set(value, name);
    }
  });

  it('treats null, false, 0, "" and absent as different values', () => {
    const values = [null, false, 0, '', '0', 'null', [], {}, [null], -1, 1.5];
    const keys = values.map((value) => withBody((b) => (b['top_k'] = value)));
    keys.push(withBody((b) => delete b['top_k']));
    expect(new Set(keys).size).toBe(keys.length);
    // Undefined is absent, as in JSON.
    expect(withBody((b) => (b['top_k'] = undefined))).toBe(key());
  });

  it('keys numbers as JSON gives them: 1.0 and 1 are one number, 1e2 and 100 too', () => {
    expect(key({ body: JSON.parse('{"messages":[],"temperature":1.0,"max_tokens":1e2}') })).toBe(
      key({ body: JSON.parse('{"max_tokens":100,"temperature":1,"messages":[]}') }),
    );
  });

  it('compares strings exactly: unicode, escapes, lone surrogates, normalisation forms', () => {
    const texts = [
      'café', // precomposed é
      'cafe\u0301', // e + combining accent: the same text to a reader, a different string
      'CAFÉ',
      'café ',
      'caf\u00e9\n',
      'caf\u00e9\r\n',
      '\ud800', // a lone surrogate: UTF-8 would make it U+FFFD
      '\ufffd',
      '\udc00',
      '😀',
      '\ud83d',
      'a"b',
      'a\\"b',
      'a\\b',
      's3:abc', // the canonical form's own string syntax inside a string
      'abc',
      '',
    ];
    const keys = texts.map((text) => key({ body: { messages: [{ role: 'user', content: text }] } }));
    expect(new Set(keys).size).toBe(texts.length);
    // JSON escapes are decoded by the parser: "\u00e9" and "é" in the request are the same string.
    expect(key({ body: JSON.parse('{"messages":[{"role":"user","content":"caf\\u00e9"}]}') })).toBe(keys[0]);
  });

  it('cannot be fooled by strings that look like structure', () => {
    const a = key({ body: { messages: [{ role: 'user', content: 'x' }], system: 'a,b' } });
    const b = key({ body: { messages: [{ role: 'user', content: 'x' }], system: ['a', 'b'] } });
    const c = key({ body: { messages: [{ role: 'user', content: 'x' }], 'system:s1:a': 1 } });
    const d = key({ body: { messages: [{ role: 'user', content: 'x' }], system: 'a', s1: 1 } });
    expect(new Set([a, b, c, d]).size).toBe(4);
    // Long strings take another path into the hash; they are framed the same way.
    const long = 'x'.repeat(300);
    expect(key({ body: { messages: [long, 'y'] } })).not.toBe(key({ body: { messages: [`${long}y`] } }));
    expect(key({ body: { messages: [long + '\u00e9'] } })).not.toBe(key({ body: { messages: [long + 'e\u0301'] } }));
  });

  it('keys the set of betas: order, spaces and repeats do not matter', () => {
    const base = key({ anthropicBeta: 'a-2025-01-01,b-2025-02-02' });
    expect(key({ anthropicBeta: ' b-2025-02-02 , a-2025-01-01 ' })).toBe(base);
    expect(key({ anthropicBeta: 'b-2025-02-02,a-2025-01-01,a-2025-01-01,' })).toBe(base);
    expect(key({ anthropicBeta: 'a-2025-01-01' })).not.toBe(base);
    expect(key({ anthropicBeta: '' })).toBe(key({ anthropicBeta: undefined }));
    expect(betaSet(' z , a,,a ')).toEqual(['a', 'z']);
  });

  it('never gives two scopes the same key', () => {
    const scopes = ['key_a', 'key_b', 'key_a:', 'key', 'group:key_a', 'key_a:x', '', 'shared'];
    const keys = scopes.map((scope) => key({ scope }));
    expect(new Set(keys).size).toBe(scopes.length);
    for (const [i, scope] of scopes.entries()) expect(scopeOfKey(keys[i]!)).toBe(scope);
  });

  it('separates the body from the headers in the canonical form', () => {
    const text = canonicalRequest(input());
    expect(text.startsWith('[s21:claudcode-cache-key/1,s17:claude-sonnet-4-6,s10:2023-06-01,[],{')).toBe(true);
    expect(text).not.toContain('stream');
    expect(text).not.toContain('claude-sonnet,'); // the client's model is not keyed
    expect(text).toContain('s11:temperature:0.5');
  });

  it('accepts any Messages body as cacheable, metadata or not', () => {
    expect(isCacheableBody(BODY)).toBe(true);
    expect(isCacheableBody({ ...BODY, metadata: { user_id: 'someone' } })).toBe(true);
    expect(isCacheableBody({ model: 'x' })).toBe(false);
    expect(isCacheableBody([BODY])).toBe(false);
    expect(isCacheableBody('{}')).toBe(false);
  });
});
