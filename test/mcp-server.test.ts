/**
 * The gateway as an MCP server (/mcp): the official SDK's client over Streamable HTTP against the
 * real gateway on a loopback port, with the fake Anthropic upstream behind it.
 */
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ADMIN_TOKEN, recordedUsage, startStack, type Stack } from './helpers.ts';

const ALLOWED_ORIGIN = 'http://app.example';
const FAKE_MCP = fileURLToPath(new URL('../src/fake-mcp/main.ts', import.meta.url));

let stack: Stack;
const clients: Client[] = [];

beforeAll(async () => {
  stack = await startStack({
    config: {
      mcp: { allowedOrigins: [ALLOWED_ORIGIN] },
      mcpServers: {
        fake: { command: process.execPath, args: [FAKE_MCP] },
        // A server whose process exits at once: it can never be listed.
        dead: { command: process.execPath, args: ['-e', 'process.exit(1)'] },
      },
    },
  });
});
afterAll(() => stack.close());
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

async function connect(headers: Record<string, string>, url = stack.url): Promise<Client> {
  const client = new Client({ name: 'mcp-server-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL('/mcp', url), { requestInit: { headers } }));
  clients.push(client);
  return client;
}

async function call(client: Client, name: string, args: Record<string, unknown> = {}): Promise<CallToolResult> {
  return (await client.callTool({ name, arguments: args })) as CallToolResult;
}

function textOf(result: CallToolResult): string {
  return result.content.map((c) => (c.type === 'text' ? c.text : '')).join('');
}

/** An MCP initialize request as raw HTTP, for what the SDK's client does not let a test set. */
function initialize(headers: Record<string, string>) {
  return fetch(`${stack.url}/mcp`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers },
    body: JSON.stringify({
      jsonrpc: '2.0', id: 1, method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } },
    }),
  });
}

describe('the gateway as an MCP server', () => {
  it('lists its tools and answers key_status as GET /v1/key-status does', async () => {
    const { key } = await stack.newKey({ budgetTokens: 5000, rpm: 42, concurrent: 3 });
    const client = await connect({ 'x-api-key': key });
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(['ask_claude', 'key_status', 'list_models', 'usage']);
    const ask = tools.find((t) => t.name === 'ask_claude')!;
    expect(ask.inputSchema.required).toEqual(['prompt']);
    expect(ask.description).toMatch(/budget/);

    const result = await call(client, 'key_status');
    const viaApi = await (await fetch(`${stack.url}/v1/key-status`, { headers: { 'x-api-key': key } })).json();
    expect(result.isError).toBeFalsy();
    expect(JSON.parse(textOf(result))).toEqual(viaApi);
    expect(result.structuredContent).toEqual(viaApi);
    expect(viaApi).toMatchObject({ status: 'active', budget: { total_tokens: 5000 }, rate_limit: { rpm: 42, concurrent: 3 } });
  });

  it('lists only the models the key may use', async () => {
    const { key } = await stack.newKey({ models: ['claude-haiku-4-5'] });
    const result = await call(await connect({ 'x-api-key': key }), 'list_models');
    expect((result.structuredContent as { data: Array<{ id: string }> }).data.map((m) => m.id)).toEqual(['claude-haiku-4-5']);
  });

  it('asks Claude through /v1/messages under the key, and the usage shows up for that key', async () => {
    const { key, id } = await stack.newKey({ models: ['claude-haiku-4-5', 'claude-sonnet-4-6'] });
    const client = await connect({ 'x-api-key': key });
    const result = await call(client, 'ask_claude', { prompt: 'What is a gateway?', max_tokens: 16, system: 'Be brief.' });
    expect(result.isError).toBeFalsy();

    // What the fake upstream was asked: the key's first model in catalog order by default.
    const upstream = stack.fake.requests.at(-1)!;
    expect(JSON.parse(upstream.body)).toMatchObject({
      model: 'claude-sonnet-4-6', max_tokens: 16, system: 'Be brief.', messages: [{ role: 'user', content: 'What is a gateway?' }],
    });
    const direct = await stack.client(key).messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 16, system: 'Be brief.', messages: [{ role: 'user', content: 'What is a gateway?' }],
    });
    expect(textOf(result)).toBe(direct.content.map((b) => (b.type === 'text' ? b.text : '')).join(''));
    expect(textOf(result).length).toBeGreaterThan(0);

    const used = await recordedUsage(stack, id);
    expect(used.requests).toBe(2);
    const report = (await call(client, 'usage', { by: 'model', since: '1h' })).structuredContent as {
      key_id: string; rows: Array<{ group: string; requests: number }>; totals: { requests: number };
    };
    expect(report.key_id).toBe(id);
    expect(report.rows).toEqual([expect.objectContaining({ group: 'claude-sonnet-4-6', requests: 2 })]);
  });

  it('answers a refused ask_claude with an error result carrying the gateway message', async () => {
    const { key } = await stack.newKey({ models: ['claude-haiku-4-5'], budgetTokens: 5 });
    const client = await connect({ 'x-api-key': key });
    const forbidden = await call(client, 'ask_claude', { prompt: 'hi', model: 'claude-opus-4-6' });
    expect(forbidden.isError).toBe(true);
    expect(textOf(forbidden)).toMatch(/403 permission_error.*doesn't have access to this model \(claude-opus-4-6\)/);

    expect((await call(client, 'ask_claude', { prompt: 'spend the budget' })).isError).toBeFalsy();
    const spent = await call(client, 'ask_claude', { prompt: 'and once more' });
    expect(spent.isError).toBe(true);
    expect(textOf(spent)).toMatch(/429 rate_limit_error.*Token budget exceeded\. Resets in .* Retry after \d+ s\./);
  });

  it('answers ask_claude in maintenance mode with the 503, while the other tools still answer', async () => {
    const { key } = await stack.newKey();
    const client = await connect({ 'x-api-key': key });
    const maintenance = (enabled: boolean) => fetch(`${stack.url}/admin/maintenance`, {
      method: 'PUT', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ enabled }),
    });
    expect((await maintenance(true)).status).toBe(200);
    try {
      const result = await call(client, 'ask_claude', { prompt: 'hi' });
      expect(result.isError).toBe(true);
      expect(textOf(result)).toMatch(/^The gateway refused the request \(503 overloaded_error\): The gateway is in maintenance mode/);
      expect((await call(client, 'key_status')).isError).toBeFalsy();
    } finally {
      await maintenance(false);
    }
  });

  it('aborts a running ask_claude when its client goes away', async () => {
    const { key } = await stack.newKey();
    const client = await connect({ 'x-api-key': key });
    stack.fake.setFault({ latencyMs: 5000 });
    try {
      const pending = call(client, 'ask_claude', { prompt: 'take your time' }).catch((err: unknown) => err);
      await vi.waitFor(() => expect(stack.fake.requests.at(-1)?.body).toContain('take your time'));
      await client.close();
      await pending;
      // The loopback /v1/messages request is recorded as closed by its client, long before the upstream would answer.
      await vi.waitFor(() => expect(stack.logs.join('')).toMatch(/"status":499,"outcome":"client_closed"/), { timeout: 3000 });
    } finally {
      stack.fake.setFault(undefined);
    }
  });

  it("never shows another key's usage, whatever the arguments", async () => {
    const mine = await stack.newKey();
    const theirs = await stack.newKey();
    await stack.client(theirs.key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] });
    await stack.gateway.services.usage.flush();
    const client = await connect({ 'x-api-key': mine.key });
    for (const args of [{}, { key: theirs.id }, { keyId: theirs.id, key_id: theirs.id, by: 'model' }, { by: 'upstream', since: '7d' }]) {
      const result = await call(client, 'usage', args);
      expect(result.isError).toBeFalsy();
      expect(result.structuredContent).toMatchObject({ key_id: mine.id, rows: [], totals: { requests: 0 } });
    }
    // Grouping by key is not offered (there is only the caller's own), nor is a bad time taken.
    expect((await call(client, 'usage', { by: 'key' })).isError).toBe(true);
    const badSince = await call(client, 'usage', { since: 'yesterday' });
    expect(badSince.isError).toBe(true);
    expect(textOf(badSince)).toMatch(/^since: expected an ISO date or a duration/);
  });

  it('refuses requests without a valid key with 401 and WWW-Authenticate, and takes the Bearer form', async () => {
    const noKey = await connect({}).catch((err: unknown) => err);
    expect(noKey).toBeInstanceOf(StreamableHTTPError);
    expect((noKey as StreamableHTTPError).code).toBe(401);
    const wrongKey = await connect({ 'x-api-key': 'sk-cc-wrong' }).catch((err: unknown) => err);
    expect((wrongKey as StreamableHTTPError).code).toBe(401);

    const raw = await initialize({ authorization: 'Bearer sk-cc-wrong' });
    expect(raw.status).toBe(401);
    expect(raw.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(await raw.json()).toMatchObject({ type: 'error', error: { type: 'authentication_error' } });

    const { key } = await stack.newKey({ disabled: true });
    expect(((await connect({ 'x-api-key': key }).catch((err: unknown) => err)) as StreamableHTTPError).code).toBe(401);

    const { key: good, id } = await stack.newKey();
    const client = await connect({ authorization: `Bearer ${good}` });
    expect(await call(client, 'key_status')).toMatchObject({ structuredContent: { status: 'active' } });
    // ask_claude asks as the client did: with the Bearer credential.
    expect((await call(client, 'ask_claude', { prompt: 'hi', max_tokens: 4 })).isError).toBeFalsy();
    expect((await recordedUsage(stack, id)).requests).toBe(1);
    // The access log names the key by id, never by the secret.
    const logs = stack.logs.join('');
    expect(logs).toContain(`"keyId":"${id}"`);
    expect(logs).not.toContain(good);
  });

  it("refuses browser origins that are neither allowed nor the gateway's own", async () => {
    const { key } = await stack.newKey();
    const elsewhere = await initialize({ 'x-api-key': key, origin: 'http://evil.example' });
    expect(elsewhere.status).toBe(403);
    expect(await elsewhere.json()).toMatchObject({ error: { type: 'permission_error' } });
    // Refused before the key is looked at: a wrong key from elsewhere is still a 403.
    expect((await initialize({ 'x-api-key': 'sk-cc-wrong', origin: 'http://evil.example' })).status).toBe(403);

    const allowed = await initialize({ 'x-api-key': key, origin: ALLOWED_ORIGIN });
    expect(allowed.status).toBe(200);
    expect(allowed.headers.get('access-control-allow-origin')).toBe(ALLOWED_ORIGIN);
    const own = await initialize({ 'x-api-key': key, origin: stack.url });
    expect(own.status).toBe(200);

    // A browser's preflight from an allowed origin gets CORS headers that let the key header through.
    const preflight = await fetch(`${stack.url}/mcp`, {
      method: 'OPTIONS',
      headers: { origin: ALLOWED_ORIGIN, 'access-control-request-method': 'POST', 'access-control-request-headers': 'x-api-key, content-type' },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get('access-control-allow-headers')).toMatch(/x-api-key/);

    const client = await connect({ 'x-api-key': key, origin: ALLOWED_ORIGIN });
    expect((await call(client, 'key_status')).isError).toBeFalsy();
  });

  it('answers GET and DELETE with 405: stateless, no stream and no session', async () => {
    const { key } = await stack.newKey();
    for (const method of ['GET', 'DELETE']) {
      const res = await fetch(`${stack.url}/mcp`, { method, headers: { 'x-api-key': key, accept: 'text/event-stream' } });
      expect(res.status).toBe(405);
      expect(res.headers.get('allow')).toBe('POST');
    }
    // And no session id is handed out.
    const init = await initialize({ 'x-api-key': key });
    expect(init.headers.get('mcp-session-id')).toBeNull();
  });

  it('refuses an unknown tool', async () => {
    const { key } = await stack.newKey();
    const client = await connect({ 'x-api-key': key });
    await expect(client.callTool({ name: 'nope__search', arguments: {} })).rejects.toThrow(/Unknown tool: nope__search/);
  });
});

describe("attached MCP servers' tools", () => {
  it('are listed as <server>__<tool> and called for a key that may use the server', async () => {
    const { key } = await stack.newKey({ mcpServers: ['fake'] });
    const client = await connect({ 'x-api-key': key });
    const { tools } = await client.listTools();
    const search = tools.find((t) => t.name === 'fake__search');
    expect(search).toMatchObject({ description: 'Search the (fake) web.', inputSchema: { type: 'object', properties: { query: { type: 'string' } } } });
    expect(tools.map((t) => t.name)).toEqual(expect.arrayContaining(['key_status', 'fake__echo', 'fake__fail']));

    const result = await call(client, 'fake__search', { query: 'claudcode' });
    expect(result.isError).toBeFalsy();
    expect(textOf(result)).toMatch(/^Fake search results for "claudcode"/);
    // A tool's failure arrives as the tool's error result.
    const failed = await call(client, 'fake__fail', {});
    expect(failed.isError).toBe(true);
    expect(textOf(failed)).toMatch(/failed on purpose/);
  });

  it("count against the key's rpm, as API requests do", async () => {
    const { key } = await stack.newKey({ mcpServers: ['fake'], rpm: 2 });
    const client = await connect({ 'x-api-key': key });
    expect((await call(client, 'fake__echo', { text: 'one' })).isError).toBeFalsy();
    expect((await call(client, 'fake__echo', { text: 'two' })).isError).toBeFalsy();
    const third = await call(client, 'fake__echo', { text: 'three' });
    expect(third.isError).toBe(true);
    expect(textOf(third)).toMatch(/rpm|requests per minute|Rate limit/i);
  });

  it('are neither listed nor callable for a key without rights to the server', async () => {
    const { key } = await stack.newKey({ mcpServers: [] });
    const client = await connect({ 'x-api-key': key });
    expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(['ask_claude', 'key_status', 'list_models', 'usage']);
    await expect(client.callTool({ name: 'fake__search', arguments: { query: 'x' } })).rejects.toThrow(/Unknown tool: fake__search/);
  });

  it('leave out a server that cannot be listed, and keep the others', async () => {
    const { key } = await stack.newKey({ mcpServers: ['dead', 'fake', 'not-configured'] });
    const client = await connect({ 'x-api-key': key });
    const names = (await client.listTools()).tools.map((t) => t.name);
    expect(names).toEqual(expect.arrayContaining(['key_status', 'ask_claude', 'fake__search']));
    expect(names.filter((n) => n.startsWith('dead__') || n.startsWith('not-configured__'))).toEqual([]);
    expect(stack.logs.join('')).toMatch(/"server":"dead".*its tools are left out/);
    await expect(client.callTool({ name: 'dead__search', arguments: {} })).rejects.toThrow(/Unknown tool/);
  });
});
