/**
 * A cached message in and out of SSE: `replaySse` (src/cache/replay.ts) streams a stored final
 * message, `MessageAccumulator` (src/cache/accumulate.ts) reassembles one from a stream. Round
 * trips prove they agree with each other under any chunking, the official SDK proves the replay is
 * a stream it parses back into the stored message, and the fake upstream proves the accumulator
 * reassembles a real-shaped stream into the API's non-streaming answer.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MessageAccumulator } from '../src/cache/accumulate.ts';
import { replaySse } from '../src/cache/replay.ts';
import { startFakeUpstream, type FakeUpstream } from '../src/fake-upstream/server.ts';
import { SseUsageTap } from '../src/usage.ts';
import { seededRandom } from './random.ts';

type Message = Record<string, unknown> & { content: Record<string, unknown>[] };

const USAGE = {
  input_tokens: 120,
  cache_creation_input_tokens: 0,
  cache_read_input_tokens: 2048,
  cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 0 },
  output_tokens: 87,
  service_tier: 'standard',
};

function message(id: string, content: Record<string, unknown>[], extra: Record<string, unknown> = {}): Message {
  return {
    id,
    type: 'message',
    role: 'assistant',
    model: 'claude-sonnet-4-6',
    content,
    stop_reason: 'end_turn',
    stop_sequence: null,
    stop_details: null,
    usage: { ...USAGE },
    ...extra,
  };
}

/** Longer than one delta, with a surrogate pair straddling the 4096-unit boundary. */
const LONG_TEXT = `${'Grüße aus Köln. '.repeat(255)}abcdefghijklmno😀 — ${'日本語のテキスト\n'.repeat(600)}`;

const MESSAGES: Record<string, Message> = {
  text: message('msg_text', [{ type: 'text', text: 'Hello there! Voilà — 🙂 "quoted" \\ back\\slash\nnew line\ttab \u2028 sep' }]),
  longText: message('msg_long', [{ type: 'text', text: LONG_TEXT }], { stop_reason: 'max_tokens' }),
  emptyText: message('msg_empty', [{ type: 'text', text: '' }]),
  toolUse: message(
    'msg_tool',
    [
      { type: 'text', text: 'Let me look that up.' },
      {
        type: 'tool_use',
        id: 'toolu_01A',
        name: 'search',
        input: {
          query: 'café ☕ in Zürich — "best"',
          filters: { open: true, rating: { min: 4.5, max: null }, tags: ['wifi', 'quiet', '🙂'] },
          limit: 10,
          nested: [[1, 2, [3, { deep: 'ü\u0000\n' }]], [], {}],
          long: 'x'.repeat(9000),
        },
      },
      { type: 'tool_use', id: 'toolu_01B', name: 'clock', input: {} },
    ],
    { stop_reason: 'tool_use' },
  ),
  thinking: message('msg_think', [
    { type: 'thinking', thinking: 'The user greets me.\nI should greet back — briefly. ✓', signature: 'EqQBCkYIBxgCKkB+/sig==\u00e9' + 'Zm9v'.repeat(200) },
    { type: 'text', text: 'Hi!' },
  ]),
  redacted: message('msg_redacted', [
    { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP' },
    { type: 'thinking', thinking: '', signature: 'c2lnbmF0dXJl' },
    { type: 'text', text: 'Done.' },
  ]),
  serverTools: message(
    'msg_web',
    [
      { type: 'server_tool_use', id: 'srvtoolu_01', name: 'web_search', input: { query: 'claudcode gateway' } },
      {
        type: 'web_search_tool_result',
        tool_use_id: 'srvtoolu_01',
        content: [{ type: 'web_search_result', title: 'Result', url: 'https://example.com/é', encrypted_content: 'EqgfCioIARgBIiQ3', page_age: null }],
      },
      {
        type: 'text',
        text: 'The gateway is self-hosted.',
        citations: [
          { type: 'web_search_result_location', url: 'https://example.com/é', title: 'Result', encrypted_index: 'Eo8BCioIAhgB', cited_text: 'self-hosted gateway…' },
          { type: 'web_search_result_location', url: 'https://example.com/2', title: 'Two', encrypted_index: 'Eo8BCioIAhgC', cited_text: 'second' },
        ],
      },
    ],
    { usage: { ...USAGE, server_tool_use: { web_search_requests: 1 } } },
  ),
  stopSequence: message('msg_stop', [{ type: 'text', text: 'one, two' }], { stop_reason: 'stop_sequence', stop_sequence: '\n\nHuman:' }),
};

function sseBytes(events: string[], crlf = false): Uint8Array {
  const text = events.join('');
  return new TextEncoder().encode(crlf ? text.replaceAll('\n', '\r\n') : text);
}

/** `bytes` split at random places (anywhere, including inside a UTF-8 sequence). */
function randomChunks(bytes: Uint8Array, random: () => number, maxChunk: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; ) {
    const size = 1 + Math.floor(random() * maxChunk);
    chunks.push(bytes.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

function accumulate(chunks: Iterable<Uint8Array>) {
  const accumulator = new MessageAccumulator();
  for (const chunk of chunks) accumulator.push(chunk);
  return accumulator.result();
}

function textOf(message: Message): string {
  return message.content.map((block) => (block['type'] === 'text' ? (block['text'] as string) : '')).join('');
}

describe('replay → MessageAccumulator', () => {
  const random = seededRandom(20260101);

  it.each(Object.keys(MESSAGES))('reassembles the %s message under any chunking, LF or CRLF', (name) => {
    const stored = MESSAGES[name]!;
    const events = replaySse(stored);
    for (const crlf of [false, true]) {
      const bytes = sseBytes(events, crlf);
      expect(accumulate([bytes])?.message).toEqual(stored);
      for (const maxChunk of [1, 3, 17, 256, 4096]) {
        const result = accumulate(randomChunks(bytes, random, maxChunk));
        expect(result?.message).toEqual(stored);
        expect(JSON.parse(result!.body)).toEqual(stored);
      }
    }
  });

  it('replays in the API shape: message_start, ping, blocks, message_delta, message_stop', () => {
    const events = replaySse(MESSAGES['thinking']!);
    const parsed = events.map((event) => {
      const [name, data] = event.split('\n');
      expect(event.endsWith('\n\n')).toBe(true);
      return { name: name!.slice('event: '.length), data: JSON.parse(data!.slice('data: '.length)) as Record<string, any> };
    });
    expect(parsed.map((e) => e.name)).toEqual([
      'message_start', 'ping',
      'content_block_start', 'content_block_delta', 'content_block_delta', 'content_block_stop',
      'content_block_start', 'content_block_delta', 'content_block_stop',
      'message_delta', 'message_stop',
    ]);
    for (const { name, data } of parsed) expect(data['type']).toBe(name);
    const start = parsed[0]!.data['message'];
    expect(start).toMatchObject({ id: 'msg_think', content: [], stop_reason: null, stop_sequence: null, stop_details: null });
    expect(start.usage).toEqual({ ...USAGE, output_tokens: 1 });
    expect(parsed[2]!.data['content_block']).toEqual({ type: 'thinking', thinking: '', signature: '' });
    expect(parsed[3]!.data['delta']['type']).toBe('thinking_delta');
    expect(parsed[4]!.data['delta']).toEqual({ type: 'signature_delta', signature: MESSAGES['thinking']!.content[0]!['signature'] });
    expect(parsed[6]!.data['content_block']).toEqual({ type: 'text', text: '' });
    expect(parsed[9]!.data).toEqual({ type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null, stop_details: null }, usage: USAGE });

    const tool = replaySse(MESSAGES['toolUse']!).map((event) => JSON.parse(event.split('\n')[1]!.slice(6)) as Record<string, any>);
    const toolStart = tool.find((e) => e['type'] === 'content_block_start' && e['index'] === 1)!;
    expect(toolStart['content_block']).toEqual({ type: 'tool_use', id: 'toolu_01A', name: 'search', input: {} });
    const json = tool.filter((e) => e['index'] === 1 && e['delta']?.type === 'input_json_delta').map((e) => e['delta'].partial_json as string);
    expect(json.length).toBeGreaterThan(1);
    expect(JSON.parse(json.join(''))).toEqual(MESSAGES['toolUse']!.content[1]!['input']);
    // Blocks without deltas arrive whole.
    const web = replaySse(MESSAGES['serverTools']!).map((event) => JSON.parse(event.split('\n')[1]!.slice(6)) as Record<string, any>);
    expect(web.find((e) => e['type'] === 'content_block_start' && e['index'] === 1)!['content_block']).toEqual(MESSAGES['serverTools']!.content[1]);
  });

  it('splits long text into deltas that are each valid text', () => {
    const deltas = replaySse(MESSAGES['longText']!)
      .map((event) => JSON.parse(event.split('\n')[1]!.slice(6)) as Record<string, any>)
      .filter((e) => e['type'] === 'content_block_delta')
      .map((e) => e['delta'].text as string);
    expect(deltas.length).toBeGreaterThan(1);
    expect(deltas.join('')).toBe(LONG_TEXT);
    for (const delta of deltas) expect(delta.isWellFormed()).toBe(true);
  });

  it('is a stream the gateway\'s usage tap reads as complete, with the stored usage', () => {
    for (const stored of Object.values(MESSAGES)) {
      const tap = new SseUsageTap();
      tap.push(sseBytes(replaySse(stored)));
      expect(tap.completed).toBe(true);
      expect(tap.sawError).toBe(false);
      expect(tap.outputFinal).toBe(true);
      const usage = stored['usage'] as typeof USAGE;
      expect(tap.usage).toEqual({
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cache_creation_input_tokens: usage.cache_creation_input_tokens,
        cache_read_input_tokens: usage.cache_read_input_tokens,
      });
    }
  });

  it('refuses something that is not a message', () => {
    expect(() => replaySse({ type: 'error' })).toThrow(TypeError);
    expect(() => replaySse({ content: ['text'] })).toThrow(TypeError);
  });
});

describe('incomplete or broken streams give no result', () => {
  const stored = MESSAGES['toolUse']!;
  const events = replaySse(stored);
  const random = seededRandom(7);

  it('a stream cut anywhere before its end', () => {
    const bytes = sseBytes(events);
    // Every event boundary, then random byte offsets (mid-line, mid-character).
    let offset = 0;
    const cuts: number[] = [];
    for (const event of events) cuts.push((offset += new TextEncoder().encode(event).length));
    cuts.pop();
    for (let i = 0; i < 200; i++) cuts.push(Math.floor(random() * (bytes.length - 1)));
    for (const cut of cuts) {
      expect(accumulate(randomChunks(bytes.subarray(0, cut), random, 512)), `cut at ${cut}`).toBeUndefined();
    }
    // The last event without its closing blank line was never dispatched: not complete either.
    expect(accumulate([bytes.subarray(0, bytes.length - 1)])).toBeUndefined();
    expect(accumulate([bytes])?.message).toEqual(stored);
  });

  it('missing message_stop', () => {
    expect(accumulate([sseBytes(events.slice(0, -1))])).toBeUndefined();
  });

  it('an error event, even if the stream then ends normally', () => {
    const error = 'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n';
    expect(accumulate([sseBytes([...events.slice(0, 4), error])])).toBeUndefined();
    expect(accumulate([sseBytes([...events.slice(0, 4), error, ...events.slice(4)])])).toBeUndefined();
  });

  it('a block that never stopped, or a delta for a block never started', () => {
    const stops = events.filter((event) => event.startsWith('event: content_block_stop'));
    expect(accumulate([sseBytes(events.filter((event) => event !== stops[1]))])).toBeUndefined();
    const stray = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":7,"delta":{"type":"text_delta","text":"x"}}\n\n';
    expect(accumulate([sseBytes([...events.slice(0, -2), stray, ...events.slice(-2)])])).toBeUndefined();
  });

  it('tool input that is not JSON, a malformed event, an unknown delta type', () => {
    const badJson = events.map((event) => event.replace('"partial_json":"{', '"partial_json":"{{'));
    expect(accumulate([sseBytes(badJson)])).toBeUndefined();
    const malformed = [...events.slice(0, 3), 'event: content_block_delta\ndata: {"type":\n\n', ...events.slice(3)];
    expect(accumulate([sseBytes(malformed)])).toBeUndefined();
    const unknown = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"novel_delta","x":1}}\n\n';
    expect(accumulate([sseBytes([...events.slice(0, 3), unknown, ...events.slice(3)])])).toBeUndefined();
  });

  it('ignores pings, comments and event types it does not know, as the SDKs do', () => {
    const noise = [': keep-alive comment\n\n', 'event: ping\ndata: {"type": "ping"}\n\n', 'event: future_event\ndata: {"type":"future_event","x":1}\n\n'];
    const mixed = [noise[0]!, noise[1]!, events[0]!, noise[2]!, ...events.slice(1, 5), noise[1]!, noise[0]!, ...events.slice(5)];
    expect(accumulate([sseBytes(mixed)])?.message).toEqual(stored);
  });
});

describe('the official SDK reads a replay back into the stored message', () => {
  let server: Server;
  let client: Anthropic;
  let serving: Message;

  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
        const events = replaySse(serving);
        // One write per event, then the last one in two halves to make the SDK join lines.
        for (const event of events.slice(0, -1)) res.write(event);
        const last = events.at(-1)!;
        res.write(last.slice(0, 9));
        res.end(last.slice(9));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    client = new Anthropic({ baseURL: `http://127.0.0.1:${port}`, apiKey: 'sk-test', maxRetries: 0 });
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it.each(Object.keys(MESSAGES))('%s', async (name) => {
    serving = MESSAGES[name]!;
    let text = '';
    let thinking = '';
    const stream = client.messages
      .stream({ model: 'claude-sonnet-4-6', max_tokens: 1024, messages: [{ role: 'user', content: 'Hi' }] })
      .on('text', (delta) => (text += delta))
      .on('thinking', (delta) => (thinking += delta));
    const { parsed_output: _parsed, ...final } = await stream.finalMessage();
    expect(JSON.parse(JSON.stringify(final))).toEqual(serving);
    expect(text).toBe(textOf(serving));
    expect(thinking).toBe(serving.content.map((block) => (block['type'] === 'thinking' ? block['thinking'] : '')).join(''));
  });
});

describe('a real-shaped stream from the fake upstream', () => {
  let fake: FakeUpstream;
  beforeAll(async () => {
    fake = await startFakeUpstream();
  });
  afterAll(async () => {
    await fake.close();
  });

  const request = (stream: boolean, headers: Record<string, string> = {}) =>
    fetch(`${fake.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': fake.apiKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'claude-sonnet-4-6', max_tokens: 64, stream, messages: [{ role: 'user', content: 'Tell me about caches, please. Ünïcödé 🙂' }] }),
    });

  async function streamed(headers: Record<string, string> = {}) {
    const accumulator = new MessageAccumulator();
    const res = await request(true, headers);
    try {
      for await (const chunk of res.body!) accumulator.push(chunk);
    } catch {
      // A cut connection: whatever arrived was pushed.
    }
    return accumulator.result();
  }

  it('reassembles into the non-streaming answer (ids aside)', async () => {
    const result = await streamed();
    const json = (await (await request(false)).json()) as Message;
    expect(result).toBeDefined();
    const { id: streamedId, ...rest } = result!.message;
    const { id: jsonId, ...expected } = json;
    expect(streamedId).toMatch(/^msg_/);
    expect(streamedId).not.toBe(jsonId);
    expect(rest).toEqual(expected);
    expect(textOf(result!.message as Message).length).toBeGreaterThan(0);
  });

  it('and its replay reassembles into the same message again', async () => {
    const result = await streamed();
    expect(accumulate(randomChunks(sseBytes(replaySse(result!.message)), seededRandom(3), 64))?.message).toEqual(result!.message);
  });

  it('gives nothing for a cut stream or one that ends in an error event', async () => {
    expect(await streamed({ 'x-fake-cut-after': '3' })).toBeUndefined();
    expect(await streamed({ 'x-fake-stream-error-after': '3' })).toBeUndefined();
    expect(await streamed()).toBeDefined();
  });
});
