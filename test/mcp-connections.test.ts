/**
 * AttachedMcpServers against real MCP servers: the fake one (src/fake-mcp/) as a stdio child and
 * over Streamable HTTP on loopback, and the real `tavily-mcp` package (tools listed, never called:
 * no network).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startFakeMcpHttp, type FakeMcpHttp } from '../src/fake-mcp/server.ts';
import { createLogger } from '../src/logger.ts';
import { AttachedMcpServers, type AttachedMcpServersOptions } from '../src/mcp/connections.ts';
import { cutToBytes } from '../src/mcp/tool-output.ts';
import type { McpServerConfig } from '../src/mcp/types.ts';
import { freePort } from './ports.ts';

const FAKE_MAIN = join(import.meta.dirname, '..', 'src', 'fake-mcp', 'main.ts');

interface LogLine {
  level: number;
  msg: string;
  mcpServer?: string;
  tool?: string;
  error?: string;
  line?: string;
}

let dir: string;
let logs: LogLine[];
let rawLogs: string[];
let open: AttachedMcpServers[];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'claudcode-mcp-'));
  logs = [];
  rawLogs = [];
  open = [];
});

afterEach(async () => {
  await Promise.all(open.map((servers) => servers.close()));
  rmSync(dir, { recursive: true, force: true });
});

function attach(servers: Record<string, McpServerConfig>, options: Partial<AttachedMcpServersOptions> = {}): AttachedMcpServers {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      rawLogs.push(chunk.toString('utf8'));
      logs.push(JSON.parse(chunk.toString('utf8')) as LogLine);
      done();
    },
  });
  const attached = new AttachedMcpServers(servers, {
    logger: createLogger('debug', sink),
    toolTimeoutMs: 10_000,
    maxToolOutputBytes: 100_000,
    toolListTtlMs: 60_000,
    reconnectIntervalMs: 50,
    ...options,
  });
  open.push(attached);
  return attached;
}

function stdioFake(env: Record<string, string> = {}): McpServerConfig {
  return { command: process.execPath, args: [FAKE_MAIN], env: { FAKE_MCP_SPAWN_LOG: join(dir, 'spawns'), ...env }, cwd: dir };
}

function spawns(): number[] {
  try {
    return readFileSync(join(dir, 'spawns'), 'utf8').trim().split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const text = (result: { content: Array<{ text: string }> }): string => result.content.map((c) => c.text).join('\n');

describe('stdio servers', () => {
  it('starts nothing before first use, then lists and calls tools over one reused child', async () => {
    const servers = attach({ fake: stdioFake() });
    expect(servers.names()).toEqual(['fake']);
    await new Promise((r) => setTimeout(r, 100));
    expect(spawns()).toEqual([]);

    const tools = await servers.listTools('fake');
    expect(tools.map((t) => t.name)).toEqual(expect.arrayContaining(['search', 'echo', 'fail', 'slow', 'big', 'media', 'pid']));
    const search = tools.find((t) => t.name === 'search')!;
    expect(search.inputSchema).toMatchObject({ type: 'object', properties: { query: { type: 'string' } } });

    const result = await servers.callTool('fake', 'search', { query: 'otters' });
    expect(result.isError).toBe(false);
    expect(text(result)).toContain('Fake search results for "otters":');
    expect(await servers.callTool('fake', 'echo', { text: 'hi' })).toEqual({ isError: false, content: [{ type: 'text', text: 'hi' }] });

    const pids = await Promise.all(Array.from({ length: 5 }, () => servers.callTool('fake', 'pid', {}).then(text)));
    expect(new Set(pids).size).toBe(1);
    expect(spawns()).toEqual([Number(pids[0])]);
    // The child's stderr reaches the log at debug level, tagged with the server.
    expect(logs.some((l) => l.mcpServer === 'fake' && l.level === 20 && l.line?.includes('fake MCP server (stdio) started'))).toBe(true);
  });

  it('shares one connect between concurrent first uses', async () => {
    const servers = attach({ fake: stdioFake() });
    const lists = await Promise.all(Array.from({ length: 5 }, () => servers.listTools('fake')));
    expect(lists.every((l) => l.length === lists[0]!.length)).toBe(true);
    expect(spawns()).toHaveLength(1);
  });

  it('reopens the server after its child is killed', async () => {
    const servers = attach({ fake: stdioFake() });
    const first = Number(text(await servers.callTool('fake', 'pid', {})));
    process.kill(first, 'SIGKILL');
    await expect.poll(() => logs.some((l) => l.msg.includes('connection closed'))).toBe(true);
    const second = Number(text(await servers.callTool('fake', 'pid', {})));
    expect(second).not.toBe(first);
    expect(spawns()).toEqual([first, second]);
    expect((await servers.listTools('fake')).length).toBeGreaterThan(0);
  });

  it('answers a call in flight when the child dies with an error result, then recovers', async () => {
    const servers = attach({ fake: stdioFake() });
    const pid = Number(text(await servers.callTool('fake', 'pid', {})));
    const slow = servers.callTool('fake', 'slow', { ms: 5000 });
    setTimeout(() => process.kill(pid, 'SIGKILL'), 100);
    const result = await slow;
    expect(result.isError).toBe(true);
    expect(text(result)).toMatch(/MCP server "fake" failed while running the tool "slow": .*Connection closed/);
    expect(text(await servers.callTool('fake', 'echo', { text: 'back' }))).toBe('back');
  });

  it('turns a timeout into an error result and keeps the connection', async () => {
    // The bound covers connecting too, and a Node child with the SDK can take seconds to start on
    // a loaded 2-core machine: 4 s is far above that, and far below the tool's 30 s.
    const servers = attach({ fake: stdioFake() }, { toolTimeoutMs: 4000 });
    await servers.listTools('fake'); // connect outside the measured call
    const started = Date.now();
    const result = await servers.callTool('fake', 'slow', { ms: 30_000 });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(result).toEqual({ isError: true, content: [{ type: 'text', text: 'The tool "slow" on MCP server "fake" did not answer within 4 s.' }] });
    expect(text(await servers.callTool('fake', 'echo', { text: 'still here' }))).toBe('still here');
    expect(spawns()).toHaveLength(1);
  });

  it('rejects when the caller aborts, and keeps the connection', async () => {
    const servers = attach({ fake: stdioFake() });
    const controller = new AbortController();
    const call = servers.callTool('fake', 'slow', { ms: 10_000 }, controller.signal);
    setTimeout(() => controller.abort(new Error('client went away')), 200);
    await expect(call).rejects.toThrow('client went away');
    expect(text(await servers.callTool('fake', 'echo', { text: 'still here' }))).toBe('still here');
    expect(spawns()).toHaveLength(1);
  });

  it('passes a failing tool as an error result, with one log line and no arguments in it', async () => {
    const servers = attach({ fake: stdioFake() });
    const result = await servers.callTool('fake', 'fail', { reason: 'PROMPT-TEXT-4711' });
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('the fake tool failed on purpose');
    const lines = logs.filter((l) => l.tool === 'fail');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ mcpServer: 'fake', tool: 'fail', level: 40 });
    expect(rawLogs.join('')).not.toContain('PROMPT-TEXT-4711');
    expect(rawLogs.join('')).not.toContain('failed on purpose'); // the result is not logged either
  });

  it('cuts long output and describes non-text content', async () => {
    const servers = attach({ fake: stdioFake() }, { maxToolOutputBytes: 1000 });
    const big = text(await servers.callTool('fake', 'big', { bytes: 5000 }));
    expect(big).toBe(`${'0123456789'.repeat(100)}\n[… output cut at 1000 of 5000 bytes]`);
    const small = await servers.callTool('fake', 'big', { bytes: 999 });
    expect(text(small)).toHaveLength(999);

    const media = await servers.callTool('fake', 'media', {});
    expect(media.isError).toBe(false);
    expect(text(media)).toBe(
      [
        'Here is the media:',
        '[image: image/png, 68 bytes]',
        '[audio: audio/wav, 3 kB]',
        'The notes say hello.',
        '[resource: file:///data.bin, application/octet-stream, 2 kB]',
        '[resource link: report.pdf https://example.com/report.pdf, application/pdf]',
      ].join('\n'),
    );
  });

  it('refreshes the tool list when the server says it changed', async () => {
    const servers = attach({ fake: stdioFake() });
    expect((await servers.listTools('fake')).map((t) => t.name)).not.toContain('late');
    await servers.callTool('fake', 'add_tool', { name: 'late' });
    await expect.poll(async () => (await servers.listTools('fake')).map((t) => t.name)).toContain('late');
    expect(text(await servers.callTool('fake', 'late', {}))).toBe('I am late');
  });

  it('close() ends every child and later uses fail cleanly', async () => {
    const servers = attach({ a: stdioFake(), b: stdioFake() });
    const pids = await Promise.all(['a', 'b'].map(async (name) => Number(text(await servers.callTool(name, 'pid', {})))));
    expect(pids.every(isRunning)).toBe(true);
    await servers.close();
    expect(pids.some(isRunning)).toBe(false);
    const after = await servers.callTool('a', 'echo', { text: 'x' });
    expect(after.isError).toBe(true);
    await expect(servers.listTools('a')).rejects.toThrow(/"a"/);
    expect(spawns()).toHaveLength(2);
  });

  it('reports a server that cannot start, without its secrets, and does not retry in a hot loop', async () => {
    const servers = attach(
      { broken: { command: join(dir, 'no-such-command'), args: [], env: { API_KEY: 'secret-value-123' } } },
      { reconnectIntervalMs: 60_000 },
    );
    await expect(servers.listTools('broken')).rejects.toThrow(/^MCP server "broken" is unreachable: .*ENOENT/);
    const result = await servers.callTool('broken', 'search', { query: 'q' });
    expect(result.isError).toBe(true);
    expect(text(result)).toMatch(/^MCP server "broken" is unreachable/);
    expect(rawLogs.join('')).not.toContain('secret-value-123');
    expect(logs.filter((l) => l.tool === 'search')).toHaveLength(1);
  });

  it('unknown server names: listTools throws, callTool is an error result', async () => {
    const servers = attach({ fake: stdioFake() });
    await expect(servers.listTools('nope')).rejects.toThrow('No MCP server named "nope"');
    expect(await servers.callTool('nope', 'search', {})).toMatchObject({ isError: true });
    expect(spawns()).toEqual([]);
  });

  it('keeps the gateway environment from the child but passes the configured env', async () => {
    process.env['CLAUDCODE_TEST_PARENT_SECRET'] = 'parent-only';
    try {
      const servers = attach({ fake: stdioFake({ TAVILY_API_KEY: 'tvly-dummy' }) });
      const pid = Number(text(await servers.callTool('fake', 'pid', {})));
      if (process.platform === 'linux') {
        const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
        expect(env).toContain('TAVILY_API_KEY=tvly-dummy');
        expect(env.some((e) => e.startsWith('PATH='))).toBe(true);
        expect(env.some((e) => e.startsWith('CLAUDCODE_TEST_PARENT_SECRET='))).toBe(false);
      }
    } finally {
      delete process.env['CLAUDCODE_TEST_PARENT_SECRET'];
    }
  });
});

describe('HTTP servers', () => {
  let fake: FakeMcpHttp;

  beforeEach(async () => {
    fake = await startFakeMcpHttp({ token: 'fake-token-abc123' });
  });
  afterEach(async () => {
    await fake.close();
  });

  const httpFake = (token = 'fake-token-abc123'): McpServerConfig => ({ type: 'http', url: fake.url, headers: { Authorization: `Bearer ${token}` } });

  it('lists and calls tools with the configured headers, lazily', async () => {
    const servers = attach({ web: httpFake() });
    expect(fake.methods).toEqual([]);
    expect((await servers.listTools('web')).map((t) => t.name)).toContain('search');
    const result = await servers.callTool('web', 'search', { query: 'rivers' });
    expect(text(result)).toContain('Fake search results for "rivers"');
    expect(fake.calls).toEqual([{ tool: 'search', args: { query: 'rivers' } }]);
    expect(fake.methods.filter((m) => m === 'initialize')).toHaveLength(1);
  });

  it('caches the tool list for toolListTtlMs', async () => {
    let now = 1_000_000;
    const servers = attach({ web: httpFake() }, { toolListTtlMs: 5000, now: () => now });
    for (let i = 0; i < 3; i++) await servers.listTools('web');
    expect(fake.methods.filter((m) => m === 'tools/list')).toHaveLength(1);
    now += 4999;
    await servers.listTools('web');
    expect(fake.methods.filter((m) => m === 'tools/list')).toHaveLength(1);
    now += 2;
    await servers.listTools('web');
    expect(fake.methods.filter((m) => m === 'tools/list')).toHaveLength(2);
  });

  it('opens a new session when the server forgot the old one, without failing the call', async () => {
    const servers = attach({ web: httpFake() });
    await servers.listTools('web');
    await fake.dropSessions();
    const result = await servers.callTool('web', 'echo', { text: 'again' });
    expect(result).toEqual({ isError: false, content: [{ type: 'text', text: 'again' }] });
    expect(fake.methods.filter((m) => m === 'initialize')).toHaveLength(2);
    // The tool list is fetched again after the reconnect.
    await servers.listTools('web');
    expect(fake.methods.filter((m) => m === 'tools/list')).toHaveLength(2);
  });

  it('a wrong token is an error naming the server, without the token', async () => {
    const servers = attach({ web: httpFake('wrong-token-xyz789') });
    await expect(servers.listTools('web')).rejects.toThrow(/MCP server "web" is unreachable: .*401/);
    const result = await servers.callTool('web', 'search', { query: 'q' });
    expect(result.isError).toBe(true);
    expect(rawLogs.join('')).not.toContain('wrong-token-xyz789');
    expect(text(result)).not.toContain('wrong-token-xyz789');
  });

  it('an unreachable server is an error result, and listTools throws naming it', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/mcp?apiKey=query-secret-42`;
    const servers = attach({ gone: { type: 'http', url, headers: {} } }, { reconnectIntervalMs: 60_000 });
    const result = await servers.callTool('gone', 'search', { query: 'q' });
    expect(result.isError).toBe(true);
    expect(text(result)).toMatch(/^MCP server "gone" is unreachable: .*ECONNREFUSED/);
    await expect(servers.listTools('gone')).rejects.toThrow(/MCP server "gone" is unreachable/);
    expect(rawLogs.join('') + text(result)).not.toContain('query-secret-42');
  });
});

describe('the real tavily-mcp package', () => {
  it('lists its tools over stdio without touching the network', async () => {
    const require = createRequire(import.meta.url);
    const pkgPath = require.resolve('tavily-mcp/package.json');
    const pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as { bin: Record<string, string> };
    const bin = join(dirname(pkgPath), pkg.bin['tavily-mcp']!);
    // cwd: an empty directory, since tavily-mcp reads a .env file from its working directory.
    const servers = attach({ tavily: { command: process.execPath, args: [bin], env: { TAVILY_API_KEY: 'tvly-dummy-key-for-tests' }, cwd: dir } });
    const tools = await servers.listTools('tavily');
    expect(tools.map((t) => t.name)).toEqual(expect.arrayContaining(['tavily_search', 'tavily_extract', 'tavily_crawl', 'tavily_map']));
    const search = tools.find((t) => t.name === 'tavily_search')!;
    expect(search.description).toMatch(/search/i);
    expect(search.inputSchema).toMatchObject({ type: 'object', properties: { query: { type: 'string' } } });
    await servers.close();
  });
});

describe('cutToBytes', () => {
  it('cuts on a character boundary and says how much was cut', () => {
    expect(cutToBytes('short', 10)).toBe('short');
    // "é" is two bytes, "😀" four: a cut inside either steps back before it.
    expect(cutToBytes('aé😀b', 2)).toBe('a\n[… output cut at 1 of 8 bytes]');
    expect(cutToBytes('aé😀b', 5)).toBe('aé\n[… output cut at 3 of 8 bytes]');
    expect(cutToBytes('aé😀b', 7)).toBe('aé😀\n[… output cut at 7 of 8 bytes]');
  });
});
