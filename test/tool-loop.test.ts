/**
 * The server-side tool loop through the real gateway and the real Anthropic SDK: a key with an
 * MCP server attached asks a plain question, the (fake) model calls the server's tool, the
 * gateway runs it over MCP (the project's fake MCP server, a real child process over stdio) and
 * returns the answer built from its result — as JSON and streamed, with the usage of every turn
 * billed.
 */
import { fileURLToPath } from 'node:url';
import Anthropic, { type APIError } from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeMcpHttp, type FakeMcpHttp } from '../src/fake-mcp/server.ts';
import { recordedUsage, startStack, type Stack } from './helpers.ts';

const FAKE_MCP = fileURLToPath(new URL('../src/fake-mcp/main.ts', import.meta.url));
const HAIKU = 'claude-haiku-4-5';
const SEARCH = 'mcp__fake__search';
const ASK = { model: HAIKU, max_tokens: 200, messages: [{ role: 'user' as const, content: 'octopus hearts' }] };

let stack: Stack;
let httpMcp: FakeMcpHttp;

beforeAll(async () => {
  httpMcp = await startFakeMcpHttp();
  stack = await startStack({
    config: {
      mcpServers: {
        fake: { command: process.execPath, args: [FAKE_MCP] },
        remote: { type: 'http', url: httpMcp.url },
      },
      mcp: { maxTurns: 4 },
    },
  });
});

afterAll(async () => {
  await stack?.close();
  await httpMcp?.close();
});

/** The raw SSE of a streamed request, as events. */
async function rawStream(key: string, body: object, headers: Record<string, string> = {}) {
  const response = await fetch(`${stack.url}/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': key, 'content-type': 'application/json', 'anthropic-version': '2023-06-01', ...headers },
    body: JSON.stringify({ ...body, stream: true }),
  });
  const text = await response.text();
  const events = text
    .split('\n\n')
    .filter((chunk) => chunk.trim() !== '')
    .map((chunk) => JSON.parse(chunk.split('\n').find((l) => l.startsWith('data: '))!.slice(6)) as Record<string, unknown>);
  return { response, events };
}

/** Checks an SSE sequence is one valid message: one start, blocks 0..n-1 each started and stopped in order, one stop. */
function expectOneMessage(events: Record<string, unknown>[]) {
  const types = events.map((e) => e['type']);
  expect(types.filter((t) => t === 'message_start')).toHaveLength(1);
  expect(types.filter((t) => t === 'message_delta')).toHaveLength(1);
  expect(types.filter((t) => t === 'message_stop')).toHaveLength(1);
  expect(types[0]).toBe('message_start');
  expect(types.at(-1)).toBe('message_stop');
  const starts = events.filter((e) => e['type'] === 'content_block_start').map((e) => e['index']);
  expect(starts).toEqual(starts.map((_, i) => i));
  const stops = events.filter((e) => e['type'] === 'content_block_stop').map((e) => e['index']);
  expect(stops).toEqual(starts);
}

describe('the tool loop', () => {
  it('answers a plain messages.create from the attached server\'s tool result, billing every turn', async () => {
    const { key, id } = await stack.newKey({ mcpServers: ['fake'] });
    stack.fake.reset();
    const message = await stack.client(key).messages.create(ASK, { headers: { 'x-fake-tool-use': SEARCH } });
    const text = message.content.map((b) => (b.type === 'text' ? b.text : '')).join(' ');
    expect(text).toContain('Fake search results for "octopus hearts"');
    // A client without the connector's beta header sees only block types it knows.
    expect(message.content.every((b) => b.type === 'text')).toBe(true);
    expect(message.stop_reason).toBe('end_turn');

    // Two turns upstream: the tool offered (beside nothing of the client's), then its result fed back.
    const turns = stack.fake.requests.filter((r) => r.path === '/v1/messages').map((r) => JSON.parse(r.body) as Record<string, any>);
    expect(turns).toHaveLength(2);
    expect(turns[0]!.tools.map((t: { name: string }) => t.name)).toContain(SEARCH);
    expect(turns[1]!.messages.at(-1).content[0]).toMatchObject({ type: 'tool_result', is_error: false });
    expect(JSON.stringify(turns[1]!.messages.at(-1).content[0].content)).toContain('Fake search results');

    // The usage is every turn's, summed, and billed.
    const ledger = stack.fake.totalReported();
    expect(message.usage.input_tokens).toBe(ledger.input_tokens);
    expect(message.usage.output_tokens).toBe(ledger.output_tokens);
    const usage = await recordedUsage(stack, id);
    expect(usage).toMatchObject({ requests: 1, inputTokens: ledger.input_tokens, outputTokens: ledger.output_tokens });
    expect(usage.billedTokens).toBe(ledger.input_tokens + ledger.output_tokens);
  });

  it('streams the answer as one valid SSE message, and the SDK reads it', async () => {
    const { key } = await stack.newKey({ mcpServers: ['fake'] });
    const { response, events } = await rawStream(key, ASK, { 'x-fake-tool-use': SEARCH });
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(response.headers.get('x-accel-buffering')).toBe('no');
    expectOneMessage(events);
    expect(events.some((e) => e['type'] === 'content_block_start' && (e['content_block'] as { type: string }).type !== 'text')).toBe(false);

    const final = await stack.client(key).messages.stream(ASK, { headers: { 'x-fake-tool-use': SEARCH } }).finalMessage();
    expect(final.content.map((b) => (b.type === 'text' ? b.text : '')).join(' ')).toContain('Fake search results for "octopus hearts"');
    expect(final.stop_reason).toBe('end_turn');
  });

  it('shows the calls as mcp_tool_use / mcp_tool_result blocks to clients that send the connector\'s beta header', async () => {
    const { key } = await stack.newKey({ mcpServers: ['fake'] });
    const client = stack.client(key);
    const message = await client.beta.messages.create({ ...ASK, betas: ['mcp-client-2025-04-04'] }, { headers: { 'x-fake-tool-use': SEARCH } });
    const types = message.content.map((b) => b.type);
    expect(types).toEqual(['text', 'mcp_tool_use', 'mcp_tool_result', 'text']);
    expect(message.content[1]).toMatchObject({ type: 'mcp_tool_use', name: 'search', server_name: 'fake', input: { query: 'octopus hearts' } });
    expect(message.content[2]).toMatchObject({ type: 'mcp_tool_result', is_error: false });

    const { events } = await rawStream(key, ASK, { 'x-fake-tool-use': SEARCH, 'anthropic-beta': 'mcp-client-2025-04-04' });
    expectOneMessage(events);
    const streamed = await client.beta.messages.stream({ ...ASK, betas: ['mcp-client-2025-04-04'] }, { headers: { 'x-fake-tool-use': SEARCH } }).finalMessage();
    expect(streamed.content.map((b) => b.type)).toEqual(['text', 'mcp_tool_use', 'mcp_tool_result', 'text']);

    // The conversation carried on with those blocks in it goes upstream as plain tool turns.
    stack.fake.reset();
    await client.beta.messages.create({
      model: HAIKU, max_tokens: 50, betas: ['mcp-client-2025-04-04'],
      messages: [ASK.messages[0]!, { role: 'assistant', content: message.content as never }, { role: 'user', content: 'thanks' }],
    });
    const sent = JSON.parse(stack.fake.requests[0]!.body) as { messages: Array<{ role: string; content: Array<{ type: string }> | string }> };
    expect(sent.messages.map((m) => m.role)).toEqual(['user', 'assistant', 'user', 'assistant', 'user']);
    expect((sent.messages[1]!.content as Array<{ type: string }>).map((b) => b.type)).toEqual(['text', 'tool_use']);
    expect((sent.messages[2]!.content as Array<{ type: string }>).map((b) => b.type)).toEqual(['tool_result']);
    expect(stack.fake.requests[0]!.headers['anthropic-beta']).toBeUndefined();
  });

  it('never offers the tools to a key without rights, nor when the client opts out', async () => {
    const { key } = await stack.newKey();
    stack.fake.reset();
    const message = await stack.client(key).messages.create(ASK, { headers: { 'x-fake-tool-use': SEARCH } });
    expect(message.content[0]).toMatchObject({ type: 'text' });
    const sent = JSON.parse(stack.fake.requests[0]!.body) as { tools?: unknown };
    expect(sent.tools).toBeUndefined();

    const { key: attached } = await stack.newKey({ mcpServers: ['fake'] });
    stack.fake.reset();
    await stack.client(attached).messages.create(ASK, { headers: { 'x-fake-tool-use': SEARCH, 'x-mcp-tools': 'none' } });
    expect(stack.fake.requests).toHaveLength(1);
    expect((JSON.parse(stack.fake.requests[0]!.body) as { tools?: unknown }).tools).toBeUndefined();
    expect(stack.fake.requests[0]!.headers['x-mcp-tools']).toBeUndefined();
  });

  it('returns the client\'s own tool calls to the client as a normal tool_use', async () => {
    const { key } = await stack.newKey({ mcpServers: ['fake'] });
    stack.fake.reset();
    const weather = { name: 'get_weather', description: 'Weather of a city', input_schema: { type: 'object' as const, properties: { city: { type: 'string' } }, required: ['city'] } };
    const message = await stack.client(key).messages.create({ ...ASK, tools: [weather] }, { headers: { 'x-fake-tool-use': 'get_weather' } });
    expect(message.stop_reason).toBe('tool_use');
    expect(message.content.at(-1)).toMatchObject({ type: 'tool_use', name: 'get_weather', input: { city: 'octopus hearts' } });
    expect(stack.fake.requests).toHaveLength(1);
    const offered = (JSON.parse(stack.fake.requests[0]!.body) as { tools: Array<{ name: string }> }).tools.map((t) => t.name);
    expect(offered).toContain('get_weather');
    expect(offered).toContain(SEARCH);
  });

  it('gives the model an error result when a tool fails or its server is gone, and the client a clean answer', async () => {
    const { key } = await stack.newKey({ mcpServers: ['fake', 'remote'] });
    const failed = await stack.client(key).messages.create(ASK, { headers: { 'x-fake-tool-use': 'mcp__fake__fail' } });
    expect(failed.content.map((b) => (b.type === 'text' ? b.text : '')).join(' ')).toContain('(tool error)');

    // The HTTP server answers the listing, then goes away before the call.
    const remote = await stack.client(key).messages.create(ASK, { headers: { 'x-fake-tool-use': 'mcp__remote__echo', 'x-fake-tool-input': '{"text":"hi"}' } });
    expect(remote.content.map((b) => (b.type === 'text' ? b.text : '')).join(' ')).toContain('hi');
    await httpMcp.close();
    stack.fake.reset();
    const gone = await stack.client(key).messages.create(ASK, { headers: { 'x-fake-tool-use': 'mcp__remote__echo', 'x-fake-tool-input': '{"text":"hi"}' } });
    expect(gone.stop_reason).toBe('end_turn');
    const resultSent = (JSON.parse(stack.fake.requests.at(-1)!.body) as { messages: Array<{ content: Array<Record<string, unknown>> }> }).messages.at(-1)!.content[0]!;
    expect(resultSent).toMatchObject({ type: 'tool_result', is_error: true });
    expect(JSON.stringify(resultSent['content'])).not.toBe('[]');
    expect(stack.logs.join('')).toMatch(/"mcpServer":"remote"/);
    expect(stack.logs.join('')).not.toContain(key);
  });

  it('stops at the budget: a later turn is not sent once the key\'s budget is spent', async () => {
    const { key, id } = await stack.newKey({ mcpServers: ['fake'], budgetTokens: 30 });
    stack.fake.reset();
    const err = (await stack.client(key).messages.create(ASK, { headers: { 'x-fake-tool-use': SEARCH } }).catch((e: unknown) => e)) as APIError;
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect(err.status).toBe(429);
    expect(err.message).toMatch(/Token budget exceeded during the tool loop/);
    expect(stack.fake.requests).toHaveLength(1);
    const usage = await recordedUsage(stack, id);
    expect(usage.billedTokens).toBe(stack.fake.totalReported().input_tokens + stack.fake.totalReported().output_tokens);
  });
});

describe('tool loop bounds', () => {
  it('takes at most maxTurns turns, the last one without tools', async () => {
    const bounded = await startStack({
      config: { mcpServers: { fake: { command: process.execPath, args: [FAKE_MCP] } }, mcp: { maxTurns: 1 } },
    });
    try {
      const { key } = await bounded.newKey({ mcpServers: ['fake'] });
      const message = await bounded.client(key).messages.create(ASK, { headers: { 'x-fake-tool-use': SEARCH } });
      expect(message.stop_reason).toBe('end_turn');
      expect(bounded.fake.requests).toHaveLength(1);
      expect((JSON.parse(bounded.fake.requests[0]!.body) as { tool_choice?: unknown }).tool_choice).toEqual({ type: 'none' });
    } finally {
      await bounded.close();
    }
  });
});

describe('mcp_servers in the request (the MCP connector\'s parameter)', () => {
  it('refuses private and loopback servers unless the operator allow-lists them, and runs allowed ones', async () => {
    const web = await startFakeMcpHttp({ token: 'web-token-123456' });
    const strictStack = await startStack();
    const openStack = await startStack({ config: { mcp: { allowedPrivateHosts: ['127.0.0.1'] } } });
    try {
      const servers = [{ type: 'url' as const, url: web.url, name: 'web', authorization_token: 'web-token-123456' }];
      const { key } = await strictStack.newKey();
      const refused = (await strictStack.client(key).beta.messages
        .create({ ...ASK, mcp_servers: servers, betas: ['mcp-client-2025-04-04'] })
        .catch((e: unknown) => e)) as APIError;
      expect(refused.status).toBe(400);
      expect((refused.error as { error: { message: string } }).error.message).toBe('mcp_servers: the MCP server "web" is refused: its host 127.0.0.1 is a loopback address.');
      expect(strictStack.fake.requests).toHaveLength(0);
      expect(web.calls).toHaveLength(0);

      const { key: allowed } = await openStack.newKey();
      const message = await openStack.client(allowed).beta.messages.create(
        { ...ASK, mcp_servers: servers, betas: ['mcp-client-2025-04-04'] },
        { headers: { 'x-fake-tool-use': 'mcp__web__search' } },
      );
      expect(message.content.map((b) => b.type)).toEqual(['text', 'mcp_tool_use', 'mcp_tool_result', 'text']);
      expect(message.content[1]).toMatchObject({ name: 'search', server_name: 'web' });
      expect(web.calls).toEqual([{ tool: 'search', args: { query: 'octopus hearts' } }]);
      // The connector's parameter and beta flag stay with the gateway.
      const sent = JSON.parse(openStack.fake.requests[0]!.body) as Record<string, unknown>;
      expect(sent['mcp_servers']).toBeUndefined();
      expect(openStack.fake.requests[0]!.headers['anthropic-beta']).toBeUndefined();
      expect(openStack.logs.join('')).not.toContain('web-token-123456');
    } finally {
      await strictStack.close();
      await openStack.close();
      await web.close();
    }
  });

  it('refuses a malformed mcp_servers with a 400 naming the field', async () => {
    const { key } = await stack.newKey();
    const err = (await stack.client(key).messages
      .create({ ...ASK, mcp_servers: [{ type: 'url', name: 'x' }] } as never)
      .catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/mcp_servers\[0\]\.url/);
  });
});

