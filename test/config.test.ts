/**
 * src/config.ts: defaults, environment variables, the config file (CLAUDCODE_CONFIG) and
 * validation errors.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseDuration } from '../src/config.ts';
import { thrownBy } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'claudcode-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCount = 0;
function configFile(content: unknown): string {
  const path = join(dir, `config-${++fileCount}.json`);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

/** The ConfigError thrown by `fn` (fails the test if none is thrown). */
function configError(fn: () => unknown): ConfigError {
  return thrownBy(fn, ConfigError);
}

/** An upstream as the config holds it: named by its host, priority 0, weight 1. */
function upstream(url: string, key?: string) {
  return { url, name: new URL(url).host, priority: 0, weight: 1, ...(key === undefined ? {} : { key }) };
}

describe('loadConfig defaults', () => {
  it('has the documented defaults for an empty environment', () => {
    const config = loadConfig({});
    expect(config.port).toBe(8080);
    expect(config.host).toBe('127.0.0.1');
    expect(config.upstreams).toEqual([upstream('https://api.anthropic.com')]);
    expect(config.dataDir).toBe('./data');
    expect(config.adminToken).toBeUndefined();
    expect(config.databaseUrl).toBeUndefined();
    expect(config.redisUrl).toBeUndefined();
    // Unset: the instance follows the switch in the store (maintenance.ts).
    expect(config.maintenance).toBeUndefined();
    expect(config.maintenanceRetryAfterSeconds).toBe(60);
    expect(config.logLevel).toBe('info');
    expect(config.maxBodyBytes).toBe(32 * 1024 * 1024);
    expect(config.keyRefreshMs).toBeLessThanOrEqual(1000);
    expect(config.models.map((m) => m.id)).toEqual(['claude-opus-4-6', 'claude-sonnet-4-6', 'claude-haiku-4-5']);
    expect(config.models.every((m) => m.prices.input > 0 && m.prices.output > m.prices.input)).toBe(true);
    expect(config.keyDefaults).toEqual({ budgetTokens: 5_000_000, windowSeconds: 5 * 3600, rpm: 60, concurrent: 5 });
    expect(config.budget).toEqual({ strict: false, weights: { input: 1, output: 1, cache_creation: 1, cache_read: 1 } });
  });

  it('does not read process.env when given an env object', () => {
    const saved = process.env.PORT;
    process.env.PORT = '1234';
    try {
      expect(loadConfig({}).port).toBe(8080);
    } finally {
      if (saved === undefined) delete process.env.PORT;
      else process.env.PORT = saved;
    }
  });
});

describe('loadConfig from the environment', () => {
  it('reads PORT, HOST and the other plain variables', () => {
    const config = loadConfig({
      PORT: '9090',
      HOST: '0.0.0.0',
      CLAUDCODE_DATA_DIR: '/var/lib/claudcode',
      CLAUDCODE_ADMIN_TOKEN: 'a'.repeat(16),
      DATABASE_URL: 'postgres://db/claudcode',
      REDIS_URL: 'redis://cache:6379',
      CLAUDCODE_LOG_LEVEL: 'warn',
      CLAUDCODE_MAX_BODY_BYTES: '1000',
      CLAUDCODE_MAINTENANCE: 'true',
      CLAUDCODE_MAINTENANCE_RETRY_AFTER: '120',
      CLAUDCODE_STRICT_BUDGET: '1',
    });
    expect(config).toMatchObject({
      port: 9090,
      host: '0.0.0.0',
      dataDir: '/var/lib/claudcode',
      adminToken: 'a'.repeat(16),
      databaseUrl: 'postgres://db/claudcode',
      redisUrl: 'redis://cache:6379',
      logLevel: 'warn',
      maxBodyBytes: 1000,
      maintenance: true,
      maintenanceRetryAfterSeconds: 120,
      budget: { strict: true },
    });
    expect(loadConfig({ CLAUDCODE_MAINTENANCE: '0', CLAUDCODE_STRICT_BUDGET: 'false' })).toMatchObject({ maintenance: false, budget: { strict: false } });
  });

  it('treats empty variables as unset', () => {
    expect(loadConfig({ PORT: '', HOST: '', CLAUDCODE_UPSTREAM_URL: ' ', ANTHROPIC_API_KEY: '' })).toMatchObject({
      port: 8080,
      host: '127.0.0.1',
      upstreams: [{ url: 'https://api.anthropic.com' }],
    });
  });

  it('uses ANTHROPIC_API_KEY for the default upstream', () => {
    expect(loadConfig({ ANTHROPIC_API_KEY: 'sk-ant-one' }).upstreams).toEqual([upstream('https://api.anthropic.com', 'sk-ant-one')]);
  });

  it('gives one key to every URL of a comma-separated list', () => {
    const config = loadConfig({ CLAUDCODE_UPSTREAM_URL: 'http://a.test:8000/, https://b.test/anthropic', ANTHROPIC_API_KEY: 'k1' });
    expect(config.upstreams).toEqual([
      upstream('http://a.test:8000', 'k1'),
      upstream('https://b.test/anthropic', 'k1'),
    ]);
  });

  it('pairs one key per URL, CLAUDCODE_UPSTREAM_KEY taking precedence over ANTHROPIC_API_KEY', () => {
    const config = loadConfig({
      CLAUDCODE_UPSTREAM_URL: 'http://a.test,http://b.test,http://c.test',
      CLAUDCODE_UPSTREAM_KEY: 'ka, kb ,kc',
      ANTHROPIC_API_KEY: 'ignored',
    });
    expect(config.upstreams).toEqual([
      upstream('http://a.test', 'ka'),
      upstream('http://b.test', 'kb'),
      upstream('http://c.test', 'kc'),
    ]);
  });

  it('refuses a key count that matches neither one nor the URL count', () => {
    const err = configError(() => loadConfig({ CLAUDCODE_UPSTREAM_URL: 'http://a.test,http://b.test', CLAUDCODE_UPSTREAM_KEY: 'k1,k2,k3' }));
    expect(err.message).toMatch(/3 upstream keys for 2 upstream URLs/);
    expect(() => loadConfig({ ANTHROPIC_API_KEY: 'k1,k2' })).toThrow(ConfigError);
  });

  it('never reads ANTHROPIC_BASE_URL', () => {
    const config = loadConfig({ ANTHROPIC_BASE_URL: 'http://127.0.0.1:8080', ANTHROPIC_API_KEY: 'k' });
    expect(config.upstreams).toEqual([upstream('https://api.anthropic.com', 'k')]);
    expect(JSON.stringify(loadConfig({ ANTHROPIC_BASE_URL: 'http://gateway.self' }))).not.toContain('gateway.self');
  });
});

describe('loadConfig with a config file', () => {
  const file = {
    port: 7000,
    host: '0.0.0.0',
    dataDir: '/srv/claudcode',
    upstreams: [{ url: 'http://file-a.test/' }, { url: 'http://file-b.test', key: 'file-key-b' }],
    keyDefaults: { rpm: 5, windowSeconds: '2h' },
    budget: { weights: { output: 2 } },
    models: [{ id: 'my-model', upstream_id: 'claude-haiku-4-5', display_name: 'Mine', prices: { input: 1, output: 2, cache_write: 1, cache_read: 0 } }],
  };

  it('reads the file named by CLAUDCODE_CONFIG, filling defaults', () => {
    const config = loadConfig({ CLAUDCODE_CONFIG: configFile(file) });
    expect(config.port).toBe(7000);
    expect(config.host).toBe('0.0.0.0');
    expect(config.dataDir).toBe('/srv/claudcode');
    expect(config.upstreams).toEqual([upstream('http://file-a.test'), upstream('http://file-b.test', 'file-key-b')]);
    expect(config.keyDefaults).toEqual({ budgetTokens: 5_000_000, windowSeconds: 7200, rpm: 5, concurrent: 5 });
    expect(config.budget.weights).toEqual({ input: 1, output: 2, cache_creation: 1, cache_read: 1 });
    expect(config.models).toHaveLength(1);
    expect(config.models[0]).toMatchObject({ id: 'my-model', upstream_id: 'claude-haiku-4-5', created_at: expect.any(String) });
  });

  it('lets the environment win over the file', () => {
    const config = loadConfig({
      CLAUDCODE_CONFIG: configFile(file),
      PORT: '7100',
      CLAUDCODE_DATA_DIR: '/tmp/env-data',
      CLAUDCODE_STRICT_BUDGET: 'true',
    });
    expect(config.port).toBe(7100);
    expect(config.host).toBe('0.0.0.0'); // not set in env: from the file
    expect(config.dataDir).toBe('/tmp/env-data');
    // CLAUDCODE_STRICT_BUDGET overrides strict but keeps the file's weights.
    expect(config.budget).toEqual({ strict: true, weights: { input: 1, output: 2, cache_creation: 1, cache_read: 1 } });
  });

  it('applies an environment key to the file URLs, and environment URLs replace the file ones', () => {
    const path = configFile(file);
    expect(loadConfig({ CLAUDCODE_CONFIG: path, ANTHROPIC_API_KEY: 'env-key' }).upstreams).toEqual([
      upstream('http://file-a.test', 'env-key'),
      upstream('http://file-b.test', 'env-key'),
    ]);
    expect(loadConfig({ CLAUDCODE_CONFIG: path, CLAUDCODE_UPSTREAM_URL: 'http://env.test', ANTHROPIC_API_KEY: 'env-key' }).upstreams).toEqual([
      upstream('http://env.test', 'env-key'),
    ]);
  });

  it('reads each upstream\'s name, priority, weight and models; names repeats; env URLs keep a listed URL\'s settings', () => {
    const path = configFile({
      upstreams: [
        { name: 'primary', url: 'http://a.test', key: 'ka', priority: 0, weight: 3, models: ['claude-haiku-4-5'] },
        { url: 'http://b.test', priority: 1 },
        { url: 'http://b.test/other' },
      ],
    });
    expect(loadConfig({ CLAUDCODE_CONFIG: path }).upstreams).toEqual([
      { name: 'primary', url: 'http://a.test', key: 'ka', priority: 0, weight: 3, models: ['claude-haiku-4-5'] },
      { name: 'b.test', url: 'http://b.test', priority: 1, weight: 1 },
      { name: 'b.test-2', url: 'http://b.test/other', priority: 0, weight: 1 },
    ]);
    expect(loadConfig({ CLAUDCODE_CONFIG: path, CLAUDCODE_UPSTREAM_URL: 'http://a.test/,http://c.test' }).upstreams).toEqual([
      { name: 'primary', url: 'http://a.test', key: 'ka', priority: 0, weight: 3, models: ['claude-haiku-4-5'] },
      upstream('http://c.test'),
    ]);
    expect(configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ upstreams: [{ url: 'http://a.test', name: 'bad name' }] }) })).message).toMatch(/upstreams\.0\.name/);
    expect(configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ upstreams: [{ url: 'http://a.test', weight: 0 }] }) })).message).toMatch(/upstreams\.0\.weight/);
  });

  it('reads the failover policy and upstream timeouts from the file and the environment', () => {
    const defaults = loadConfig({});
    expect(defaults.upstreamTimeouts).toEqual({ connectMs: 10_000, firstByteMs: 600_000, idleMs: 300_000 });
    expect(defaults.failover).toEqual({ maxAttempts: 4, retryWithinMs: 20_000, backoffBaseMs: 200, backoffMaxMs: 5_000, breakerFailures: 5, breakerCooldownMs: 10_000 });
    const path = configFile({ failover: { maxAttempts: 2, backoffBaseMs: 50 }, upstreamTimeouts: { idleMs: 1000 } });
    const config = loadConfig({
      CLAUDCODE_CONFIG: path,
      CLAUDCODE_UPSTREAM_MAX_ATTEMPTS: '3',
      CLAUDCODE_UPSTREAM_RETRY_WITHIN_MS: '5000',
      CLAUDCODE_BREAKER_FAILURES: '2',
      CLAUDCODE_BREAKER_COOLDOWN_MS: '1500',
      CLAUDCODE_UPSTREAM_CONNECT_TIMEOUT_MS: '2000',
      CLAUDCODE_UPSTREAM_FIRST_BYTE_TIMEOUT_MS: '60000',
    });
    expect(config.failover).toEqual({ maxAttempts: 3, retryWithinMs: 5000, backoffBaseMs: 50, backoffMaxMs: 5_000, breakerFailures: 2, breakerCooldownMs: 1500 });
    expect(config.upstreamTimeouts).toEqual({ connectMs: 2000, firstByteMs: 60_000, idleMs: 1000 });
    expect(configError(() => loadConfig({ CLAUDCODE_UPSTREAM_MAX_ATTEMPTS: '0' })).message).toMatch(/failover\.maxAttempts/);
    expect(configError(() => loadConfig({ CLAUDCODE_UPSTREAM_IDLE_TIMEOUT_MS: 'soon' })).message).toMatch(/upstreamTimeouts\.idleMs/);
  });

  it('refuses a missing or malformed file', () => {
    expect(configError(() => loadConfig({ CLAUDCODE_CONFIG: join(dir, 'missing.json') })).message).toMatch(/cannot read config file .*missing\.json/);
    expect(configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile('{ not json') })).message).toMatch(/cannot read config file/);
  });

  it('names the field of an invalid file value', () => {
    const err = configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ keyDefaults: { windowSeconds: 'forever' } }) }));
    // Names the field; the union in ConfigSchema loses parseDuration's own wording ("Invalid input").
    expect(err.message).toMatch(/^\s*keyDefaults\.windowSeconds: /m);
    expect(configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ models: [] }) })).message).toMatch(/models:/);
    expect(configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ budget: { weights: { input: -1 } } }) })).message).toMatch(/budget\.weights\.input:/);
  });
});

describe('loadConfig validation', () => {
  const cases: [env: Record<string, string>, field: RegExp][] = [
    [{ PORT: 'abc' }, /^\s*port:/m],
    [{ PORT: '70000' }, /^\s*port:/m],
    [{ PORT: '80.5' }, /^\s*port:/m],
    [{ PORT: '-1' }, /^\s*port:/m],
    [{ CLAUDCODE_LOG_LEVEL: 'loud' }, /^\s*logLevel:/m],
    [{ CLAUDCODE_ADMIN_TOKEN: 'short' }, /^\s*adminToken: the admin token must be at least 16 characters/m],
    [{ CLAUDCODE_UPSTREAM_URL: 'not a url' }, /^\s*upstreams\.0\.url:/m],
    [{ CLAUDCODE_UPSTREAM_URL: 'http://ok.test,nope' }, /^\s*upstreams\.1\.url:/m],
    [{ CLAUDCODE_MAINTENANCE: 'yes' }, /^\s*maintenance:/m],
    [{ CLAUDCODE_MAINTENANCE_RETRY_AFTER: '0' }, /^\s*maintenanceRetryAfterSeconds:/m],
    [{ CLAUDCODE_STRICT_BUDGET: 'maybe' }, /^\s*budget\.strict:/m],
    [{ CLAUDCODE_MAX_BODY_BYTES: '0' }, /^\s*maxBodyBytes:/m],
  ];
  it.each(cases)('%j → ConfigError naming the field', (env, field) => {
    const err = configError(() => loadConfig(env));
    expect(err.message).toMatch(/^invalid configuration:/);
    expect(err.message).toMatch(field);
  });

  // DOUBTFUL (src/config.ts, port: z.coerce.number()): a whitespace-only PORT is not treated as
  // unset and coerces to 0, so the gateway silently listens on a random port.
  it('does not turn a blank PORT into port 0: blank means unset', () => {
    expect(loadConfig({ PORT: ' ' }).port).toBe(8080);
    expect(loadConfig({ PORT: '', HOST: '  ' }).host).toBe('127.0.0.1');
  });

  it('overrides win over both file and environment', () => {
    expect(loadConfig({ PORT: '9000' }, { port: 0 }).port).toBe(0);
  });
});

describe('parseDuration', () => {
  it('reads seconds, minutes, hours and days', () => {
    expect(parseDuration('5h')).toBe(18000);
    expect(parseDuration('90m')).toBe(5400);
    expect(parseDuration('1d')).toBe(86400);
    expect(parseDuration('3600s')).toBe(3600);
    expect(parseDuration('3600')).toBe(3600);
    expect(parseDuration('1.5h')).toBe(5400);
    expect(parseDuration(' 2H ')).toBe(7200);
    expect(parseDuration('1.4')).toBe(1);
  });

  it('refuses anything else', () => {
    for (const bad of ['', 'abc', '5w', '-5m', '0', '0s', '0.4', 'h', '5hh', '1h30m']) {
      expect(() => parseDuration(bad), bad).toThrow(/invalid duration/);
    }
  });
});

describe('operator-safety settings', () => {
  it('defaults: 15 s for the request head, 120 s for the whole request, 10 wrong admin tokens a minute', () => {
    const config = loadConfig({});
    expect(config.headersTimeoutMs).toBe(15_000);
    expect(config.requestTimeoutMs).toBe(120_000);
    expect(config.adminThrottle).toEqual({ maxFailures: 10, windowMs: 60_000, maxAddresses: 10_000 });
  });

  it('reads CLAUDCODE_HEADERS_TIMEOUT_MS and CLAUDCODE_REQUEST_TIMEOUT_MS, and adminThrottle from the file', () => {
    const config = loadConfig({
      CLAUDCODE_HEADERS_TIMEOUT_MS: '5000',
      CLAUDCODE_REQUEST_TIMEOUT_MS: '600000',
      CLAUDCODE_CONFIG: configFile({ adminThrottle: { maxFailures: 3 } }),
    });
    expect(config.headersTimeoutMs).toBe(5000);
    expect(config.requestTimeoutMs).toBe(600_000);
    expect(config.adminThrottle).toEqual({ maxFailures: 3, windowMs: 60_000, maxAddresses: 10_000 });
  });

  it.each([
    [{ CLAUDCODE_HEADERS_TIMEOUT_MS: '0' }, /^\s*headersTimeoutMs:/m],
    [{ CLAUDCODE_HEADERS_TIMEOUT_MS: 'soon' }, /^\s*headersTimeoutMs:/m],
    [{ CLAUDCODE_REQUEST_TIMEOUT_MS: '-1' }, /^\s*requestTimeoutMs:/m],
    [{ CLAUDCODE_REQUEST_TIMEOUT_MS: '1.5' }, /^\s*requestTimeoutMs:/m],
    // Node refuses a head deadline past the whole request's: say so at start, naming the field.
    [{ CLAUDCODE_HEADERS_TIMEOUT_MS: '20000', CLAUDCODE_REQUEST_TIMEOUT_MS: '10000' }, /^\s*headersTimeoutMs: 20000 is longer than requestTimeoutMs \(10000\)/m],
    [{ CLAUDCODE_REQUEST_TIMEOUT_MS: '10000' }, /^\s*headersTimeoutMs: 15000 is longer than requestTimeoutMs/m],
  ])('%j → ConfigError naming the field', (env, field) => {
    expect(configError(() => loadConfig(env)).message).toMatch(field);
  });

  it('refuses adminThrottle values that are not positive whole numbers', () => {
    const err = configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ adminThrottle: { maxFailures: 0, windowMs: 1.5 } }) }));
    expect(err.message).toMatch(/^\s*adminThrottle\.maxFailures:/m);
    expect(err.message).toMatch(/^\s*adminThrottle\.windowMs:/m);
  });

  it('bounds keyDefaults.windowSeconds to one minute .. 366 days, naming the field', () => {
    expect(loadConfig({ CLAUDCODE_CONFIG: configFile({ keyDefaults: { windowSeconds: '1m' } }) }).keyDefaults.windowSeconds).toBe(60);
    expect(loadConfig({ CLAUDCODE_CONFIG: configFile({ keyDefaults: { windowSeconds: '366d' } }) }).keyDefaults.windowSeconds).toBe(366 * 86400);
    for (const windowSeconds of ['100000000000d', '367d', 366 * 86400 + 1]) {
      const err = configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ keyDefaults: { windowSeconds } }) }));
      expect(err.message).toMatch(/^\s*keyDefaults\.windowSeconds: .*too long for a budget window: at most 366d/m);
    }
    for (const windowSeconds of ['59s', 30]) {
      const err = configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ keyDefaults: { windowSeconds } }) }));
      expect(err.message).toMatch(/^\s*keyDefaults\.windowSeconds: .*too short for a budget window: at least 60s/m);
    }
  });
});

describe('mcpServers in the config file', () => {
  it('reads stdio and HTTP servers and expands ${VAR} and ${VAR:-default} from the environment', () => {
    const path = configFile({
      mcpServers: {
        tavily: { command: 'npx', args: ['--no', 'tavily-mcp'], env: { TAVILY_API_KEY: '${TAVILY_API_KEY}' } },
        docs: { type: 'http', url: '${DOCS_MCP_URL:-http://127.0.0.1:9000/mcp}', headers: { authorization: 'Bearer ${DOCS_TOKEN}' } },
      },
    });
    const config = loadConfig({ CLAUDCODE_CONFIG: path, TAVILY_API_KEY: 'tvly-secret', DOCS_TOKEN: 't0k' });
    expect(config.mcpServers).toEqual({
      tavily: { command: 'npx', args: ['--no', 'tavily-mcp'], env: { TAVILY_API_KEY: 'tvly-secret' } },
      docs: { type: 'http', url: 'http://127.0.0.1:9000/mcp', headers: { authorization: 'Bearer t0k' } },
    });
    expect(configError(() => loadConfig({ CLAUDCODE_CONFIG: path, DOCS_TOKEN: 'x' })).message).toMatch(/mcpServers\.tavily\.env\.TAVILY_API_KEY: the environment variable TAVILY_API_KEY is not set/);
    expect(configError(() => loadConfig({ CLAUDCODE_CONFIG: configFile({ mcpServers: { 'bad name': { command: 'x' } } }) })).message).toMatch(/mcpServers/);
    expect(loadConfig({}).mcpServers).toEqual({});
  });
});
