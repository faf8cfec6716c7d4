/**
 * The claudcode CLI as a child process: key and usage commands on the store directly, and on a
 * running gateway's admin API with --url.
 */
import Anthropic, { APIError } from '@anthropic-ai/sdk';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashKey } from '../src/keys.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { runCli, type CliRun } from './gateway-process.ts';
import { ADMIN_TOKEN, MESSAGE, startStack, type Stack } from './helpers.ts';

type Run = CliRun;

/**
 * Attached MCP servers a key may list (`--mcp-servers`). Only their names matter here: nothing
 * starts or reaches them.
 */
const MCP_SERVERS = { tavily: { command: 'node', args: ['x.js'] }, fetch: { type: 'http' as const, url: 'http://127.0.0.1:1/mcp' } };

function cli(args: string[], dataDir: string, extraEnv: Record<string, string> = {}): Promise<Run> {
  return runCli(args, { CLAUDCODE_DATA_DIR: dataDir, ...extraEnv });
}

function ok(run: Run): string {
  expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: '' });
  return run.stdout;
}

function json<T = any>(run: Run): T {
  return JSON.parse(ok(run)) as T;
}

/** Expects exit code 1 and a one-line-ish message on stderr, without a stack trace. */
function fails(run: Run, message: RegExp): void {
  expect(run.code).toBe(1);
  expect(run.stdout).toBe('');
  expect(run.stderr).toMatch(/^claudcode: /);
  expect(run.stderr).toMatch(message);
  expect(run.stderr).not.toMatch(/\n\s+at /);
}

describe('CLI on the store directly', () => {
  let dir: string;
  /** Held open so that the WAL file stays on disk between CLI runs. */
  let observer: SqliteStore;
  let created: { id: string; key: string } & Record<string, any>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'claudcode-cli-'));
    observer = new SqliteStore(dir);
    created = json(await cli(['keys', 'create', '--name', 'x', '--models', 'claude-haiku-4-5', '--rpm', '7', '--budget', '1000', '--window', '2h', '--json'], dir));
  });
  afterAll(async () => {
    await observer.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keys create --json prints the key once with its settings', async () => {
    expect(created.key).toMatch(/^sk-cc-[0-9A-Za-z]{32}$/);
    expect(created).toMatchObject({
      id: expect.stringMatching(/^key_/),
      name: 'x',
      key_preview: `sk-cc-...${created.key.slice(-4)}`,
      models: ['claude-haiku-4-5'],
      rpm: 7,
      budget_tokens: 1000,
      window_seconds: 7200,
      concurrent: 5,
      disabled: false,
      status: 'active',
      expires_at: null,
      cache_ttl_seconds: null,
      cache_group: null,
      mcp_servers: [],
    });
    const stored = await observer.getKey(created.id);
    expect(stored).toMatchObject({ hash: hashKey(created.key), rpm: 7, budgetTokens: 1000, windowSeconds: 7200, models: ['claude-haiku-4-5'] });
  });

  it('keys create without --json prints a table and the key', async () => {
    const out = ok(await cli(['keys', 'create', '--name', 'table-key', '--concurrent', '3', '--expires', '2099-06-01T00:00:00Z'], dir));
    const key = /\b(sk-cc-[0-9A-Za-z]{32})\b/.exec(out)?.[1];
    expect(key).toBeDefined();
    expect(out).toMatch(/shown once/);
    expect(out).toMatch(/table-key/);
    const record = (await observer.listKeys()).find((k) => k.name === 'table-key');
    expect(record).toMatchObject({ hash: hashKey(key!), concurrent: 3, expiresAt: Date.parse('2099-06-01T00:00:00Z') });
  });

  it('keys list and show never print the key or its hash', async () => {
    const listRun = await cli(['keys', 'list', '--json'], dir);
    const showRun = await cli(['keys', 'show', created.id, '--json'], dir);
    const tableRun = await cli(['keys', 'list'], dir);
    const list = json<{ id: string }[]>(listRun);
    expect(list.map((k) => k.id)).toContain(created.id);
    const { key: _secret, ...withoutSecret } = created;
    expect(json(showRun)).toEqual(withoutSecret);
    const table = ok(tableRun);
    expect(table).toMatch(/^ID\s+NAME\s+KEY\s+STATUS.*\s+EXPIRES\s+CACHE_TTL\s+CACHE_GROUP$/m);
    expect(table).toContain(created.id);
    expect(table).toContain(created.key_preview);
    for (const out of [listRun.stdout, showRun.stdout, table]) {
      expect(out).not.toContain(created.key);
      expect(out).not.toContain(hashKey(created.key));
    }
  });

  it('keys update, disable, enable', async () => {
    const updated = json(await cli(['keys', 'update', created.id, '--rpm', '9', '--json'], dir));
    expect(updated).toMatchObject({ id: created.id, rpm: 9, budget_tokens: 1000, models: ['claude-haiku-4-5'], name: 'x' });
    expect(await observer.getKey(created.id)).toMatchObject({ rpm: 9 });

    expect(json(await cli(['keys', 'disable', created.id, '--json'], dir))).toMatchObject({ disabled: true, status: 'disabled' });
    expect(await observer.getKey(created.id)).toMatchObject({ disabled: true });
    expect(json(await cli(['keys', 'enable', created.id, '--json'], dir))).toMatchObject({ disabled: false, status: 'active' });
    expect(await observer.getKey(created.id)).toMatchObject({ disabled: false });
  });

  it('keys create|update --cache-ttl 1h|0|default --cache-group NAME|none, shown in list/show tables and JSON', async () => {
    const made = json(await cli(['keys', 'create', '--name', 'cached', '--cache-ttl', '1h', '--cache-group', 'team-a', '--json'], dir));
    expect(made).toMatchObject({ name: 'cached', cache_ttl_seconds: 3600, cache_group: 'team-a' });
    expect(await observer.getKey(made.id)).toMatchObject({ cacheTtlSeconds: 3600, cacheGroup: 'team-a' });
    const row = (out: string) => out.split('\n').find((line) => line.startsWith(made.id))!.trim().split(/\s+/);
    expect(row(ok(await cli(['keys', 'show', made.id], dir))).slice(-2)).toEqual(['1h', 'team-a']);
    expect(json<{ id: string }[]>(await cli(['keys', 'list', '--json'], dir)).find((k) => k.id === made.id)).toMatchObject({ cache_ttl_seconds: 3600, cache_group: 'team-a' });

    const off = json(await cli(['keys', 'update', made.id, '--cache-ttl', '0', '--json'], dir));
    expect(off).toMatchObject({ cache_ttl_seconds: 0, cache_group: 'team-a' });
    expect(row(ok(await cli(['keys', 'list'], dir))).slice(-2)).toEqual(['off', 'team-a']);
    expect(json(await cli(['keys', 'update', made.id, '--cache-ttl', '5400', '--json'], dir))).toMatchObject({ cache_ttl_seconds: 5400 });
    expect(row(ok(await cli(['keys', 'show', made.id], dir))).slice(-2)).toEqual(['90m', 'team-a']);
    expect(json(await cli(['keys', 'update', made.id, '--cache-ttl', '30d', '--json'], dir))).toMatchObject({ cache_ttl_seconds: 30 * 86400 });
    const cleared = json(await cli(['keys', 'update', made.id, '--cache-ttl', 'default', '--cache-group', 'none', '--json'], dir));
    expect(cleared).toMatchObject({ cache_ttl_seconds: null, cache_group: null });
    expect(await observer.getKey(made.id)).toMatchObject({ cacheTtlSeconds: null, cacheGroup: null });
    expect(row(ok(await cli(['keys', 'show', made.id], dir))).slice(-2)).toEqual(['default', '-']);
    // Changing another field keeps them.
    json(await cli(['keys', 'update', made.id, '--cache-group', 'g2', '--json'], dir));
    expect(json(await cli(['keys', 'update', made.id, '--rpm', '4', '--json'], dir))).toMatchObject({ rpm: 4, cache_group: 'g2', cache_ttl_seconds: null });
  });

  it('keys create|update --mcp-servers a,b|none, checked against the config\'s mcpServers, shown in list/show tables and JSON', async () => {
    // A config file naming two attached servers; without it the CLI's config has none.
    const config = join(dir, 'mcp-config.json');
    writeFileSync(config, JSON.stringify({ mcpServers: MCP_SERVERS }));
    const withMcp = (args: string[]) => cli(args, dir, { CLAUDCODE_CONFIG: config });
    const made = json(await withMcp(['keys', 'create', '--name', 'mcp', '--mcp-servers', 'tavily, fetch,tavily', '--json']));
    expect(made).toMatchObject({ name: 'mcp', mcp_servers: ['tavily', 'fetch'] });
    expect(await observer.getKey(made.id)).toMatchObject({ mcpServers: ['tavily', 'fetch'] });
    // MCP_SERVERS comes after MODELS: fourth from the end, before EXPIRES, CACHE_TTL, CACHE_GROUP.
    const cell = (out: string) => out.split('\n').find((line) => line.startsWith(made.id))!.trim().split(/\s+/).at(-4);
    expect(ok(await cli(['keys', 'list'], dir))).toMatch(/^ID\s.*\sMODELS\s+MCP_SERVERS\s+EXPIRES\s/m);
    expect(cell(ok(await cli(['keys', 'show', made.id], dir)))).toBe('tavily,fetch');
    expect(json(await cli(['keys', 'show', made.id, '--json'], dir))).toMatchObject({ mcp_servers: ['tavily', 'fetch'] });
    expect(json<{ id: string }[]>(await cli(['keys', 'list', '--json'], dir)).find((k) => k.id === made.id)).toMatchObject({ mcp_servers: ['tavily', 'fetch'] });

    expect(json(await withMcp(['keys', 'update', made.id, '--mcp-servers', 'fetch', '--json']))).toMatchObject({ mcp_servers: ['fetch'] });
    expect(await observer.getKey(made.id)).toMatchObject({ mcpServers: ['fetch'] });
    // Another field changed: the list stays (and needs no config naming it).
    expect(json(await cli(['keys', 'update', made.id, '--rpm', '4', '--json'], dir))).toMatchObject({ rpm: 4, mcp_servers: ['fetch'] });
    expect(json(await withMcp(['keys', 'update', made.id, '--mcp-servers', 'none', '--json']))).toMatchObject({ mcp_servers: [] });
    expect(cell(ok(await cli(['keys', 'show', made.id], dir)))).toBe('-');
    json(await withMcp(['keys', 'update', made.id, '--mcp-servers', 'tavily', '--json']));
    expect(json(await withMcp(['keys', 'update', made.id, '--mcp-servers', '', '--json']))).toMatchObject({ mcp_servers: [] });
    expect(await observer.getKey(made.id)).toMatchObject({ mcpServers: [] });

    // Unknown names: one line naming them and the configured servers; nothing changes.
    const before = (await observer.listKeys()).length;
    fails(await withMcp(['keys', 'create', '--name', 'bad', '--mcp-servers', 'tavily,github']), /^claudcode: mcp_servers: unknown MCP server "github"; configured: tavily, fetch$/m);
    fails(await withMcp(['keys', 'update', made.id, '--mcp-servers', 'a,b']), /mcp_servers: unknown MCP servers "a", "b"; configured: tavily, fetch/);
    fails(await cli(['keys', 'update', made.id, '--mcp-servers', 'tavily'], dir), /mcp_servers: unknown MCP server "tavily"; no MCP server is configured/);
    expect((await observer.listKeys()).length).toBe(before);
    expect(await observer.getKey(made.id)).toMatchObject({ mcpServers: [] });
  });

  it('keys delete', async () => {
    const victim = json(await cli(['keys', 'create', '--name', 'victim', '--json'], dir));
    expect(json(await cli(['keys', 'delete', victim.id, '--json'], dir))).toEqual({ id: victim.id, deleted: true });
    expect(await observer.getKey(victim.id)).toBeNull();
    fails(await cli(['keys', 'show', victim.id], dir), new RegExp(`no key with id ${victim.id}`));
  });

  it('bad input exits 1 with a clear message', async () => {
    const before = (await observer.listKeys()).length;
    // One at a time: parallel CLI runs on one data dir can hit the store's lock bug (store.test.ts).
    const commands = [
      ['keys', 'create', '--name', 'bad', '--models', 'claude-nope'],
      ['keys', 'create', '--name', 'bad', '--window', '5w'],
      ['keys', 'create', '--models', 'claude-haiku-4-5'],
      ['keys', 'create', '--name', 'bad', '--rpm', 'lots'],
      ['keys', 'update', 'key_nope', '--rpm', '3'],
      ['keys', 'disable', 'key_nope'],
      ['usage', '--by', 'week'],
      ['keys', 'create', '--name', 'bad', '--cache-ttl', '31d'],
      ['keys', 'create', '--name', 'bad', '--cache-ttl', 'later'],
      ['keys', 'create', '--name', 'bad', '--cache-group', 'two words'],
      ['keys', 'update', created.id, '--cache-ttl=-5'],
      ['keys', 'update', created.id, '--cache-group', 'x'.repeat(65)],
    ];
    const runs: Run[] = [];
    for (const args of commands) runs.push(await cli(args, dir));
    const expected = [
      /models: unknown model "claude-nope"/,
      /window: invalid duration "5w"/,
      /keys create needs --name/,
      /--rpm takes a whole number, got "lots"/,
      /no key with id key_nope/,
      /no key with id key_nope/,
      /--by takes model, key, day or upstream/,
      /cache_ttl: "31d" is too long for a cache TTL: at most 30d/,
      /cache_ttl: invalid duration "later"/,
      /cache_group: expected a name of 1 to 64 letters, digits/,
      /cache_ttl: invalid duration "-5"/,
      /cache_group: expected a name/,
    ];
    runs.forEach((run, i) => fails(run, expected[i]!));
    expect((await observer.listKeys()).length).toBe(before);
    expect(await observer.getKey(created.id)).toMatchObject({ cacheTtlSeconds: null, cacheGroup: null });
  });

  // DOUBTFUL (src/cli.ts, final catch in main): an unknown flag is a user error, but parseArgs'
  // TypeError is not a CliError, so the CLI prints a full stack trace instead of one line.
  it('an unknown flag exits 1 with a one-line message', async () => {
    fails(await cli(['keys', 'create', '--name', 'x', '--colour', 'blue'], dir), /Unknown option '--colour'/);
  });

  it('the database never contains the plaintext key', async () => {
    const files = ['claudcode.db', 'claudcode.db-wal'].map((f) => join(dir, f)).filter((f) => existsSync(f));
    expect(files.length).toBeGreaterThan(0);
    const bytes = Buffer.concat(files.map((f) => readFileSync(f)));
    // The hash is there (so these are the right bytes), the key and its secret part are not.
    expect(bytes.includes(hashKey(created.key))).toBe(true);
    expect(bytes.includes(created.key)).toBe(false);
    expect(bytes.includes(created.key.slice('sk-cc-'.length))).toBe(false);
    expect(bytes.includes(created.key.slice(6, 26))).toBe(false);
  });

  it('usage --json reports recorded usage', async () => {
    const now = Date.now();
    const base = {
      requestId: 'r', endpoint: 'messages' as const, status: 200, cacheCreationTokens: 0, cacheReadTokens: 0, latencyMs: 40,
      cached: false, streamed: false, outcome: 'ok' as const,
    };
    await observer.insertUsage([
      { ...base, ts: now - 1000, keyId: created.id, model: 'claude-haiku-4-5', inputTokens: 100, outputTokens: 50, billedTokens: 150 },
      { ...base, ts: now - 2000, keyId: created.id, model: 'claude-opus-4-6', inputTokens: 10, outputTokens: 20, billedTokens: 30 },
      { ...base, ts: now - 3 * 86_400_000, keyId: 'key_other', model: 'claude-haiku-4-5', inputTokens: 1, outputTokens: 1, billedTokens: 2 },
      // A cache hit: nothing billed, the original answer's 150 tokens saved.
      { ...base, ts: now - 500, keyId: created.id, model: 'claude-haiku-4-5', inputTokens: 100, outputTokens: 50, billedTokens: 0, cached: true, savedTokens: 150 },
    ]);
    const report = json(await cli(['usage', '--json', '--key', created.id, '--since', '24h'], dir));
    expect(report).toMatchObject({ by: 'model', key_id: created.id });
    expect(report.rows).toEqual([
      expect.objectContaining({
        group: 'claude-haiku-4-5', requests: 2, cached_requests: 1, input_tokens: 200, output_tokens: 100, billed_tokens: 150, tokens_saved: 150,
        cost_usd: (200 * 1 + 100 * 5) / 1e6,
      }),
      expect.objectContaining({ group: 'claude-opus-4-6', requests: 1, input_tokens: 10, output_tokens: 20, billed_tokens: 30, tokens_saved: 0, cost_usd: (10 * 5 + 20 * 25) / 1e6 }),
    ]);
    expect(report.totals).toMatchObject({ requests: 3, cached_requests: 1, billed_tokens: 180, tokens_saved: 150, avg_latency_ms: 40 });

    const byKey = json(await cli(['usage', '--json', '--by', 'key'], dir));
    expect(byKey.rows.map((r: { group: string; requests: number }) => [r.group, r.requests])).toEqual(
      [
        [created.id, 3],
        ['key_other', 1],
      ].sort((a, b) => (String(a[0]) < String(b[0]) ? -1 : 1)), // the store orders groups bytewise
    );
    const table = ok(await cli(['usage', '--by', 'key'], dir));
    expect(table).toMatch(/^GROUP\s+REQUESTS\s+ERRORS\s+INPUT\s+OUTPUT\s+CACHE_WRITE\s+CACHE_READ\s+BILLED\s+TOKENS_SAVED\s+AVG_MS\s+COST_USD$/m);
    expect(table).toMatch(/^TOTAL\s+4\s/m);
    const column = (line: string) => line.trim().split(/\s+/)[8];
    const lines = table.split('\n');
    expect(column(lines.find((l) => l.startsWith(created.id))!)).toBe('150');
    expect(column(lines.find((l) => l.startsWith('key_other'))!)).toBe('0');
    expect(column(lines.find((l) => l.startsWith('TOTAL'))!)).toBe('150');
  });

  it('usage --by upstream groups by the upstream that served each request; none is \'\' in JSON and (none) in the table', async () => {
    const now = Date.now();
    const base = {
      endpoint: 'messages' as const, status: 200, cacheCreationTokens: 0, cacheReadTokens: 0, latencyMs: 10, cached: false, streamed: false,
      outcome: 'ok' as const, keyId: 'key_upstreams', model: 'claude-haiku-4-5', inputTokens: 10, outputTokens: 10, billedTokens: 20,
    };
    await observer.insertUsage([
      { ...base, ts: now - 1000, requestId: 'r_up_1', upstream: 'anthropic-main' },
      { ...base, ts: now - 900, requestId: 'r_up_2', upstream: 'anthropic-main' },
      { ...base, ts: now - 800, requestId: 'r_up_3', upstream: 'api.anthropic.com' },
      { ...base, ts: now - 700, requestId: 'r_up_4', status: 429, outcome: 'rejected', inputTokens: 0, outputTokens: 0, billedTokens: 0, requests: 2 },
    ]);
    const report = json(await cli(['usage', '--json', '--by', 'upstream', '--key', 'key_upstreams'], dir));
    expect(report).toMatchObject({ by: 'upstream', key_id: 'key_upstreams' });
    expect(report.rows.map((r: { group: string; requests: number; billed_tokens: number }) => [r.group, r.requests, r.billed_tokens])).toEqual([
      ['', 2, 0],
      ['anthropic-main', 2, 40],
      ['api.anthropic.com', 1, 20],
    ]);
    const table = ok(await cli(['usage', '--by', 'upstream', '--key', 'key_upstreams'], dir));
    const groups = table.trim().split('\n').map((l) => l.split(/\s+/).slice(0, 3));
    expect(groups).toEqual([['GROUP', 'REQUESTS', 'ERRORS'], ['(none)', '2', '2'], ['anthropic-main', '2', '0'], ['api.anthropic.com', '1', '0'], ['TOTAL', '5', '2']]);
  });

  it('usage --since 0h is an empty report from now; an out-of-range time or window is one line, exit 1', async () => {
    const fromNow = json(await cli(['usage', '--json', '--since', '0h'], dir));
    expect(fromNow.totals.requests).toBe(0);
    fails(await cli(['usage', '--since', '100000000000d'], dir), /^claudcode: since: "100000000000d" is out of range/);
    fails(await cli(['usage', '--until', '+275760-09-13T00:00:00Z'], dir), /^claudcode: until: .*out of range/);
    fails(await cli(['keys', 'create', '--name', 'forever', '--window', '100000000000d'], dir), /window: .*too long for a budget window: at most 366d/);
    fails(await cli(['keys', 'update', created.id, '--window', '30s'], dir), /window: .*too short for a budget window: at least 60s/);
  });
});

describe('scale-out settings given by halves', () => {
  it('DATABASE_URL without REDIS_URL (or the reverse) stops start and every command with one line', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'claudcode-cli-half-'));
    try {
      for (const env of [{ DATABASE_URL: 'postgres://postgres@127.0.0.1:1/x' }, { REDIS_URL: 'redis://127.0.0.1:1' }] as Record<string, string>[]) {
        for (const args of [['start'], ['keys', 'list'], ['usage']]) {
          const run = await cli(args, dir, env);
          fails(run, /the scale-out mode needs both/);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('CLI against a running gateway (--url)', () => {
  let stack: Stack;
  let emptyDir: string;
  beforeAll(async () => {
    stack = await startStack({ config: { mcpServers: MCP_SERVERS } });
    emptyDir = mkdtempSync(join(tmpdir(), 'claudcode-cli-remote-'));
  });
  afterAll(async () => {
    await stack.close();
    rmSync(emptyDir, { recursive: true, force: true });
  });

  const remote = (args: string[], token = ADMIN_TOKEN) => cli([...args, '--url', stack.url, '--admin-token', token], emptyDir);

  it('creates a key remotely; a store-side disable reaches the gateway within a second', async () => {
    const created = json(await remote(['keys', 'create', '--name', 'remote', '--rpm', '500', '--models', 'claude-haiku-4-5,claude-sonnet-4-6', '--json']));
    expect(created.key).toMatch(/^sk-cc-[0-9A-Za-z]{32}$/);
    expect(created).toMatchObject({ name: 'remote', rpm: 500, models: ['claude-haiku-4-5', 'claude-sonnet-4-6'] });
    // Made by the gateway: nothing was written to the CLI's own (empty) data dir.
    expect(existsSync(join(emptyDir, 'claudcode.db'))).toBe(false);

    const client = stack.client(created.key);
    const message = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 16, messages: [MESSAGE] });
    expect(message.type).toBe('message');

    await stack.gateway.services.usage.flush();
    const [listRun, reportRun] = await Promise.all([
      // The admin token from CLAUDCODE_ADMIN_TOKEN when --admin-token is not given.
      cli(['keys', 'list', '--json', '--url', stack.url], emptyDir, { CLAUDCODE_ADMIN_TOKEN: ADMIN_TOKEN }),
      remote(['usage', '--json', '--key', created.id, '--by', 'key']),
    ]);
    expect(json<{ id: string }[]>(listRun).map((k) => k.id)).toContain(created.id);
    const report = json(reportRun);
    expect(report.rows).toEqual([expect.objectContaining({ group: created.id, requests: 1, output_tokens: message.usage.output_tokens })]);

    // Disable on the store directly (not through the gateway).
    const disabled = json(await cli(['keys', 'disable', created.id, '--json'], stack.dataDir));
    expect(disabled).toMatchObject({ id: created.id, status: 'disabled' });
    const started = Date.now();
    let outcome: unknown;
    while (Date.now() - started < 1_500) {
      outcome = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 8, messages: [MESSAGE] }).catch((err: unknown) => err);
      if (outcome instanceof Anthropic.AuthenticationError) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(outcome).toBeInstanceOf(Anthropic.AuthenticationError);
    expect((outcome as APIError).status).toBe(401);

    // Enabled again through the gateway: applies at once.
    expect(json(await remote(['keys', 'enable', created.id, '--json']))).toMatchObject({ status: 'active' });
    await expect(client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 8, messages: [MESSAGE] })).resolves.toMatchObject({ type: 'message' });

    expect(json(await remote(['keys', 'delete', created.id, '--json']))).toEqual({ id: created.id, deleted: true });
    await expect(client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 8, messages: [MESSAGE] })).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
  });

  it('usage --by upstream through the gateway: \'\' in JSON, (none) in the table', async () => {
    const now = Date.now();
    const base = {
      endpoint: 'messages' as const, status: 200, cacheCreationTokens: 0, cacheReadTokens: 0, latencyMs: 10, cached: false, streamed: false,
      outcome: 'ok' as const, keyId: 'key_remote_upstreams', model: 'claude-haiku-4-5', inputTokens: 10, outputTokens: 10, billedTokens: 20,
    };
    await stack.gateway.store.insertUsage([
      { ...base, ts: now - 1000, requestId: 'r_rup_1', upstream: 'backup-eu' },
      { ...base, ts: now - 900, requestId: 'r_rup_2', cached: true, billedTokens: 0, savedTokens: 20 },
    ]);
    const [jsonRun, tableRun] = await Promise.all([
      remote(['usage', '--json', '--by', 'upstream', '--key', 'key_remote_upstreams']),
      remote(['usage', '--by', 'upstream', '--key', 'key_remote_upstreams']),
    ]);
    expect(json(jsonRun).rows.map((r: { group: string; requests: number }) => [r.group, r.requests])).toEqual([['', 1], ['backup-eu', 1]]);
    expect(ok(tableRun).trim().split('\n').map((l) => l.split(/\s+/)[0])).toEqual(['GROUP', '(none)', 'backup-eu', 'TOTAL']);
  });

  it('reports the gateway errors', async () => {
    const [wrongToken, unknownId] = await Promise.all([
      remote(['keys', 'list'], 'not-the-admin-token-123'),
      remote(['keys', 'update', 'key_nope', '--rpm', '3']),
    ]);
    fails(wrongToken, /401: Admin API: missing or wrong admin token/);
    fails(unknownId, /404: No key with id key_nope/);
  });

  it('usage --since out of range and --window over 366 days are the gateway\'s 400, on one line', async () => {
    const [fromNow, huge, forever] = await Promise.all([
      remote(['usage', '--json', '--since', '0h']),
      remote(['usage', '--since', '100000000000d']),
      remote(['keys', 'create', '--name', 'forever', '--window', '367d']),
    ]);
    expect(json(fromNow).totals.requests).toBe(0);
    fails(huge, /^claudcode: 400: since: "100000000000d" is out of range/);
    fails(forever, /^claudcode: 400: window: .*at most 366d/);
  });

  it('sets and shows MCP servers through the gateway, which checks them against its own config', async () => {
    // The CLI's own config (emptyDir, no config file) names no servers: the gateway's decides.
    const created = json(await remote(['keys', 'create', '--name', 'remote-mcp', '--mcp-servers', 'fetch,tavily', '--json']));
    expect(created).toMatchObject({ mcp_servers: ['fetch', 'tavily'] });
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ mcpServers: ['fetch', 'tavily'] });
    expect(json(await remote(['keys', 'show', created.id, '--json']))).toMatchObject({ mcp_servers: ['fetch', 'tavily'] });
    const table = ok(await remote(['keys', 'list']));
    expect(table.split('\n').find((l) => l.startsWith(created.id))!.trim().split(/\s+/).at(-4)).toBe('fetch,tavily');
    expect(json(await remote(['keys', 'update', created.id, '--mcp-servers', 'tavily', '--json']))).toMatchObject({ mcp_servers: ['tavily'] });
    expect(json(await remote(['keys', 'update', created.id, '--mcp-servers', 'none', '--json']))).toMatchObject({ mcp_servers: [] });
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ mcpServers: [] });
    fails(await remote(['keys', 'update', created.id, '--mcp-servers', 'tavily,github']), /^claudcode: 400: mcp_servers: unknown MCP server "github"; configured: tavily, fetch/);
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ mcpServers: [] });
  });

  it('sets and shows cache settings through the gateway, whose 400 names the field', async () => {
    const created = json(await remote(['keys', 'create', '--name', 'remote-cache', '--cache-ttl', '2h', '--cache-group', 'shared', '--json']));
    expect(created).toMatchObject({ cache_ttl_seconds: 7200, cache_group: 'shared' });
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ cacheTtlSeconds: 7200, cacheGroup: 'shared' });
    expect(json(await remote(['keys', 'update', created.id, '--cache-ttl', '0', '--cache-group', 'none', '--json']))).toMatchObject({ cache_ttl_seconds: 0, cache_group: null });
    const table = ok(await remote(['keys', 'show', created.id]));
    expect(table.split('\n').find((l) => l.startsWith(created.id))!.trim().split(/\s+/).slice(-2)).toEqual(['off', '-']);
    const [tooLong, badGroup] = await Promise.all([
      remote(['keys', 'update', created.id, '--cache-ttl', '31d']),
      remote(['keys', 'create', '--name', 'x', '--cache-group', 'bad group']),
    ]);
    fails(tooLong, /^claudcode: 400: cache_ttl: "31d" is too long for a cache TTL: at most 30d/);
    fails(badGroup, /^claudcode: 400: cache_group: expected a name/);
    expect(await stack.gateway.store.getKey(created.id)).toMatchObject({ cacheTtlSeconds: 0, cacheGroup: null });
  });
});
