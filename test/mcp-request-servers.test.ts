/**
 * Anthropic's `mcp_servers` request parameter (src/mcp/request-servers.ts): validation, the
 * refusal of private addresses unless allow-listed, and `tool_configuration`, against the fake
 * MCP server over Streamable HTTP on loopback.
 */
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidRequestError } from '../src/errors.ts';
import { startFakeMcpHttp, type FakeMcpHttp } from '../src/fake-mcp/server.ts';
import { createLogger } from '../src/logger.ts';
import { McpServerRefusedError, openRequestMcpServers, parseMcpServersParam, type RequestMcpServersOptions } from '../src/mcp/request-servers.ts';
import type { McpConnections } from '../src/mcp/types.ts';

let fake: FakeMcpHttp;
let opened: McpConnections[];

beforeEach(async () => {
  fake = await startFakeMcpHttp({ token: 'client-token-777' });
  opened = [];
});
afterEach(async () => {
  await Promise.all(opened.map((c) => c.close()));
  await fake.close();
});

const logger = createLogger('silent', new Writable({ write: (_c, _e, done) => done() }));

async function open(value: unknown, options: Partial<RequestMcpServersOptions> = {}): Promise<McpConnections> {
  const connections = await openRequestMcpServers(value, { logger, toolTimeoutMs: 5000, maxToolOutputBytes: 100_000, allowedPrivateHosts: [], ...options });
  opened.push(connections);
  return connections;
}

const entry = (extra: Record<string, unknown> = {}) => ({ type: 'url', url: fake.url, name: 'fake', authorization_token: 'client-token-777', ...extra });

describe('mcp_servers', () => {
  it('refuses a server at 127.0.0.1 unless its host is allow-listed, before connecting', async () => {
    const error = await open([entry()]).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(McpServerRefusedError);
    expect(error).toBeInstanceOf(InvalidRequestError);
    expect((error as McpServerRefusedError).status).toBe(400);
    expect((error as McpServerRefusedError).type).toBe('invalid_request_error');
    expect((error as McpServerRefusedError).server).toBe('fake');
    expect((error as Error).message).toBe('mcp_servers: the MCP server "fake" is refused: its host 127.0.0.1 is a loopback address.');
    expect(fake.methods).toEqual([]);
  });

  it('refuses a name resolving to a private address, and one that resolves there only at connect time', async () => {
    const at = (address: string) => async () => [{ address, family: 4 }];
    await expect(open([entry({ url: 'http://internal.test/mcp' })], { resolve: at('10.1.2.3') })).rejects.toThrow(
      'its host internal.test resolves to 10.1.2.3, a private address',
    );
    // DNS rebinding: public when checked, loopback when connecting.
    const port = new URL(fake.url).port;
    let lookups = 0;
    const rebinding = await open([entry({ url: `http://rebind.test:${port}/mcp` })], {
      resolve: async () => [{ address: lookups++ === 0 ? '93.184.216.34' : '127.0.0.1', family: 4 }],
    });
    await expect(rebinding.listTools('fake')).rejects.toThrow(/MCP server "fake" is unreachable: .*resolves to 127.0.0.1, a loopback address/);
    const call = await rebinding.callTool('fake', 'search', { query: 'q' });
    expect(call.isError).toBe(true);
    expect(fake.methods).toEqual([]);
  });

  it('with the allow-list, lists and calls the server\'s tools with the authorization token', async () => {
    const connections = await open([entry()], { allowedPrivateHosts: ['127.0.0.1'] });
    expect(connections.names()).toEqual(['fake']);
    expect(fake.methods).toEqual([]); // nothing connects before use
    expect((await connections.listTools('fake')).map((t) => t.name)).toContain('search');
    const result = await connections.callTool('fake', 'search', { query: 'lakes' });
    expect(result.isError).toBe(false);
    expect(result.content[0]!.text).toContain('Fake search results for "lakes"');
    expect(fake.calls).toEqual([{ tool: 'search', args: { query: 'lakes' } }]);
  });

  it('a wrong token is an error result, not an exception', async () => {
    const connections = await open([entry({ authorization_token: 'nope-nope' })], { allowedPrivateHosts: ['127.0.0.1'] });
    const result = await connections.callTool('fake', 'search', { query: 'q' });
    expect(result.isError).toBe(true);
    expect(result.content[0]!.text).toMatch(/MCP server "fake" is unreachable: HTTP 401/);
  });

  it('honours tool_configuration: allowed_tools filters and refuses, enabled: false hides everything', async () => {
    const connections = await open(
      [entry({ tool_configuration: { allowed_tools: ['echo'] } }), entry({ name: 'off', tool_configuration: { enabled: false } })],
      { allowedPrivateHosts: ['127.0.0.1'] },
    );
    expect((await connections.listTools('fake')).map((t) => t.name)).toEqual(['echo']);
    expect((await connections.callTool('fake', 'echo', { text: 'ok' })).content[0]!.text).toBe('ok');
    const refused = await connections.callTool('fake', 'search', { query: 'q' });
    expect(refused).toEqual({ isError: true, content: [{ type: 'text', text: 'The tool "search" of MCP server "fake" is not among this request\'s allowed_tools.' }] });
    expect(await connections.listTools('off')).toEqual([]);
    expect((await connections.callTool('off', 'echo', { text: 'x' })).isError).toBe(true);
    expect(fake.calls.map((c) => c.tool)).toEqual(['echo']);
    expect(fake.methods.filter((m) => m === 'initialize')).toHaveLength(1); // the disabled server was never contacted
  });

  it.each([
    [[{ type: 'url', name: 'x' }], 'mcp_servers[0].url:'],
    [[{ type: 'url', url: 'https://example.com/mcp' }], 'mcp_servers[0].name:'],
    [[{ type: 'stdio', url: 'https://example.com/mcp', name: 'x' }], 'mcp_servers[0].type:'],
    [[{ type: 'url', url: 'https://example.com/mcp', name: 'has space' }], 'mcp_servers[0].name: must be 1 to 32 letters'],
    [[{ type: 'url', url: 'https://example.com/mcp', name: 'x', extra: 1 }], 'mcp_servers[0]:'],
    [[{ type: 'url', url: 'https://example.com/mcp', name: 'x', tool_configuration: { allowed_tools: 'search' } }], 'mcp_servers[0].tool_configuration.allowed_tools:'],
    [[{ type: 'url', url: 'https://a.example/mcp', name: 'x' }, { type: 'url', url: 'https://b.example/mcp', name: 'x' }], 'mcp_servers[1].name: duplicate server name "x"'],
    [{ type: 'url' }, 'mcp_servers:'],
  ])('rejects the bad entry %j', (value, message) => {
    expect(() => parseMcpServersParam(value)).toThrow(InvalidRequestError);
    expect(() => parseMcpServersParam(value)).toThrow(message);
  });

  it('refuses non-http(s) URLs before any lookup', async () => {
    await expect(open([{ type: 'url', url: 'file:///etc/passwd', name: 'f' }])).rejects.toThrow('"f" is refused: its URL must be http(s)');
  });
});
