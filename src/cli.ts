#!/usr/bin/env node
/**
 * The claudcode command line: `start` runs the gateway; `keys`, `usage` and `maintenance` manage
 * it, either on the configured store directly or on a running gateway's admin API (--url,
 * --admin-token); `init` scaffolds a client project for a gateway (src/setup/init.ts, which needs
 * no gateway config and so runs before it is loaded).
 */
import { parseArgs } from 'node:util';
import { request } from 'undici';
import pino from 'pino';
import { validateKeyInput, parseTime } from './admin.ts';
import { backendMode, BackendUnavailableError, openSharedCache, openStoreBackends } from './backends.ts';
import { cacheScope } from './cache/stage.ts';
import { GatewayError } from './errors.ts';
import { ModelCatalog } from './catalog.ts';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { createGateway } from './gateway.ts';
import { createKey, describeKey } from './keys.ts';
import { createLogger } from './logger.ts';
import { describeMaintenance, maintenanceLine, readMaintenance, writeMaintenance, type MaintenanceView } from './maintenance.ts';
import { isUsageGrouping, usageReport, USAGE_GROUPINGS_TEXT, type UsageReport } from './reports.ts';
import type { UsageGrouping } from './store/types.ts';

const USAGE = `claudcode — a self-hosted gateway for Anthropic's Claude models

Usage:
  claudcode start
  claudcode keys create --name NAME [--models a,b] [--rpm N] [--concurrent N] [--budget TOKENS]
                        [--window 5h] [--expires ISO-8601] [--cache-ttl 1h|0|default]
                        [--cache-group NAME|none] [--mcp-servers a,b] [--json]
  claudcode keys list [--json]
  claudcode keys show|disable|enable|delete ID [--json]
  claudcode keys update ID [--name NAME] [--models a,b|all] [--rpm N] [--concurrent N]
                        [--budget TOKENS] [--window 5h] [--expires ISO-8601|never]
                        [--cache-ttl 1h|0|default] [--cache-group NAME|none]
                        [--mcp-servers a,b|none] [--json]
  claudcode usage [--key ID] [--since 24h|ISO] [--until ISO] [--by model|key|day|upstream] [--json]
  claudcode cache stats|purge [--key ID] [--json]
  claudcode maintenance on|off|status [--json]
  claudcode init [dir] [--url URL] [--key KEY] [--lang ts,py] [--yes] [--no-install] [--force]

Key, usage and maintenance commands work on the configured store (CLAUDCODE_DATA_DIR, default
./data), or on a running gateway with --url URL --admin-token TOKEN (or CLAUDCODE_ADMIN_TOKEN).
Maintenance mode makes every gateway on the store answer the API with 503 within a second.

--cache-ttl is how long the response cache keeps the key's answers (up to 30d): 0 turns caching
off for the key, default uses the gateway's TTL. Keys with the same --cache-group share cache
entries; none keeps them to the key alone.

--mcp-servers names the attached MCP servers (config mcpServers) whose tools the key gets; none
(or an empty value) removes them all. Keys have none unless given.

init writes a project that talks to Claude through a gateway (.env with ANTHROPIC_BASE_URL and
ANTHROPIC_API_KEY, TypeScript and Python examples, a README); see claudcode init --help.`;

type KeyView = ReturnType<typeof describeKey>;

/** What the key and usage commands need, from the store directly or from the admin API. */
interface AdminBackend {
  createKey(input: Record<string, unknown>): Promise<KeyView & { key: string }>;
  listKeys(): Promise<KeyView[]>;
  getKey(id: string): Promise<KeyView>;
  updateKey(id: string, input: Record<string, unknown>): Promise<KeyView>;
  deleteKey(id: string): Promise<void>;
  usage(query: { key?: string; since?: string; until?: string; by: UsageGrouping }): Promise<UsageReport>;
  /** The maintenance switch; with `enabled`, flipped first (for every instance). */
  maintenance(enabled?: boolean): Promise<MaintenanceView>;
  close(): Promise<void>;
}

class CliError extends Error {}

/**
 * The configured store, directly (SQLite, or PostgreSQL in the scale-out mode, from the same
 * factory the gateway uses). Key changes are announced to running instances (Redis pub/sub in the
 * scale-out mode; the embedded gateway polls the file).
 */
async function localBackend(config: Config): Promise<AdminBackend> {
  const backends = await openStoreBackends(config, createLogger('warn', pino.destination(2)));
  const { store, keyChanges } = backends;
  const catalog = new ModelCatalog(config.models);
  // Checked against this config's attached servers, as the gateway checks against its own.
  const mcpServerNames = Object.keys(config.mcpServers);
  const found = async <T>(value: T | null, id: string): Promise<T> => {
    if (value === null) throw new CliError(`no key with id ${id}`);
    return value;
  };
  return {
    async createKey(input) {
      const patch = validateKeyInput(input, catalog, false, mcpServerNames);
      const { record, key } = await createKey(store, config.keyDefaults, { ...patch, name: patch.name! });
      await keyChanges.publish();
      return { ...describeKey(record), key };
    },
    listKeys: async () => (await store.listKeys()).map(describeKey),
    getKey: async (id) => describeKey(await found(await store.getKey(id), id)),
    async updateKey(id, input) {
      const updated = await found(await store.updateKey(id, validateKeyInput(input, catalog, true, mcpServerNames)), id);
      await keyChanges.publish();
      return describeKey(updated);
    },
    async deleteKey(id) {
      if (!(await store.deleteKey(id))) throw new CliError(`no key with id ${id}`);
      await keyChanges.publish();
    },
    usage: (q) =>
      usageReport(store, catalog, { by: q.by, keyId: q.key, sinceMs: parseTime(q.since, 'since'), untilMs: parseTime(q.until, 'until') }),
    // Running gateways poll the switch (maintenance.ts): no signal to send.
    maintenance: async (enabled) =>
      describeMaintenance(enabled === undefined ? await readMaintenance(store) : await writeMaintenance(store, enabled, 'cli')),
    close: () => backends.close(),
  };
}

function remoteBackend(baseUrl: string, token: string): AdminBackend {
  const call = async <T>(method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', path: string, body?: unknown): Promise<T> => {
    const res = await request(`${baseUrl.replace(/\/+$/, '')}/admin${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.body.text();
    if (res.statusCode >= 400) {
      let message = text;
      try {
        message = (JSON.parse(text) as { error: { message: string } }).error.message;
      } catch {
        // not the gateway's error shape: show the raw text
      }
      throw new CliError(`${res.statusCode}: ${message}`);
    }
    return JSON.parse(text) as T;
  };
  return {
    createKey: (input) => call('POST', '/keys', input),
    listKeys: async () => (await call<{ data: KeyView[] }>('GET', '/keys')).data,
    getKey: (id) => call('GET', `/keys/${encodeURIComponent(id)}`),
    updateKey: (id, input) => call('PATCH', `/keys/${encodeURIComponent(id)}`, input),
    deleteKey: async (id) => void (await call('DELETE', `/keys/${encodeURIComponent(id)}`)),
    usage: (q) => {
      const params = new URLSearchParams({ by: q.by });
      if (q.key) params.set('key', q.key);
      if (q.since) params.set('since', q.since);
      if (q.until) params.set('until', q.until);
      return call('GET', `/usage?${params}`);
    },
    maintenance: (enabled) => (enabled === undefined ? call('GET', '/maintenance') : call('PUT', '/maintenance', { enabled })),
    close: async () => {},
  };
}

const KEY_OPTIONS = {
  name: { type: 'string' },
  models: { type: 'string' },
  rpm: { type: 'string' },
  concurrent: { type: 'string' },
  budget: { type: 'string' },
  window: { type: 'string' },
  expires: { type: 'string' },
  'cache-ttl': { type: 'string' },
  'cache-group': { type: 'string' },
  'mcp-servers': { type: 'string' },
} as const;

const COMMON_OPTIONS = {
  json: { type: 'boolean', default: false },
  url: { type: 'string' },
  'admin-token': { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function integer(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value.replaceAll('_', ''))) throw new CliError(`--${flag} takes a whole number, got "${value}"`);
  return Number(value.replaceAll('_', ''));
}

/** Turns key flags into the admin API's KeyInput fields (only those given). */
function keyInput(values: Partial<Record<keyof typeof KEY_OPTIONS, string>>): Record<string, unknown> {
  const input: Record<string, unknown> = {};
  if (values.name !== undefined) input.name = values.name;
  if (values.models !== undefined) {
    input.models = values.models === 'all' ? null : values.models.split(',').map((m) => m.trim()).filter(Boolean);
  }
  if (values.rpm !== undefined) input.rpm = integer(values.rpm, 'rpm');
  if (values.concurrent !== undefined) input.concurrent = integer(values.concurrent, 'concurrent');
  if (values.budget !== undefined) input.budget_tokens = integer(values.budget, 'budget');
  if (values.window !== undefined) input.window = values.window;
  if (values.expires !== undefined) {
    if (values.expires === 'never') input.expires_at = null;
    else {
      const ms = Date.parse(values.expires);
      if (Number.isNaN(ms)) throw new CliError(`--expires takes an ISO-8601 date, got "${values.expires}"`);
      input.expires_at = new Date(ms).toISOString();
    }
  }
  // Checked by KeyInput (admin.ts), here or in the gateway, whose message names the field.
  const cacheTtl = values['cache-ttl'];
  if (cacheTtl !== undefined) input.cache_ttl = cacheTtl === 'default' ? null : cacheTtl === '0' ? 0 : cacheTtl;
  const cacheGroup = values['cache-group'];
  if (cacheGroup !== undefined) input.cache_group = cacheGroup === 'none' ? null : cacheGroup;
  const mcpServers = values['mcp-servers'];
  if (mcpServers !== undefined) {
    input.mcp_servers = mcpServers.trim() === 'none' ? [] : mcpServers.split(',').map((name) => name.trim()).filter(Boolean);
  }
  return input;
}

/** Seconds in the largest whole unit: 86400 → "1d", 5400 → "90m", 45 → "45s". */
function seconds(value: number): string {
  for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60]] as const) {
    if (value % size === 0) return `${value / size}${unit}`;
  }
  return `${value}s`;
}

/** A key's cache TTL for the table: "default" (the gateway's), "off" (0), or a duration. */
function cacheTtlCell(value: number | null | undefined): string {
  if (value === null || value === undefined) return 'default';
  return value === 0 ? 'off' : seconds(value);
}

function printKeyTable(keys: KeyView[]): void {
  const rows = keys.map((k) => [
    k.id, k.name, k.key_preview, k.status, String(k.budget_tokens), `${k.window_seconds / 3600}h`, String(k.rpm),
    // A gateway older than mcp_servers leaves it out.
    String(k.concurrent), k.models ? k.models.join(',') : 'all', k.mcp_servers?.length ? k.mcp_servers.join(',') : '-', k.expires_at ?? '-',
    cacheTtlCell(k.cache_ttl_seconds), k.cache_group ?? '-',
  ]);
  const header = ['ID', 'NAME', 'KEY', 'STATUS', 'BUDGET', 'WINDOW', 'RPM', 'CONC', 'MODELS', 'MCP_SERVERS', 'EXPIRES', 'CACHE_TTL', 'CACHE_GROUP'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const row of [header, ...rows]) console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}

function printReport(report: UsageReport): void {
  const header = ['GROUP', 'REQUESTS', 'ERRORS', 'INPUT', 'OUTPUT', 'CACHE_WRITE', 'CACHE_READ', 'BILLED', 'TOKENS_SAVED', 'AVG_MS', 'COST_USD'];
  const line = (group: string, r: Omit<UsageReport['totals'], never>) => [
    group, r.requests, r.errors, r.input_tokens, r.output_tokens, r.cache_creation_input_tokens, r.cache_read_input_tokens,
    // A gateway older than tokens_saved leaves it out.
    r.billed_tokens, r.tokens_saved ?? 0, r.avg_latency_ms, r.cost_usd.toFixed(4),
  ].map(String);
  // By upstream, '' is the requests no upstream served (refusals, cache hits); JSON keeps ''.
  const label = (group: string) => (group === '' && report.by === 'upstream' ? '(none)' : group);
  const rows = [...report.rows.map((r) => line(label(r.group), r)), line('TOTAL', report.totals)];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const row of [header, ...rows]) console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}

async function runStart(config: Config): Promise<void> {
  const gateway = await createGateway(config);
  const { url } = await gateway.listen();
  const log = gateway.services.logger;
  log.info({ url, upstreams: config.upstreams.map((u) => u.url), dataDir: config.dataDir }, 'claudcode listening');
  if (gateway.generatedAdminToken) {
    // Printed to the terminal once, never to the logs; only its hash is stored.
    process.stderr.write(
      `\nAdmin token (shown once; set CLAUDCODE_ADMIN_TOKEN to choose your own):\n  ${gateway.generatedAdminToken}\n\n`,
    );
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: draining in-flight requests');
    gateway.close().then(
      () => {
        log.info('shut down cleanly');
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  // A stray rejection is a gateway bug, not a reason to drop every client's connection.
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function runKeys(config: Config, args: string[]): Promise<void> {
  const [action, ...rest] = args;
  const { values, positionals } = parseArgs({ args: rest, options: { ...KEY_OPTIONS, ...COMMON_OPTIONS }, allowPositionals: true });
  const backend = values.url
    ? remoteBackend(values.url, values['admin-token'] ?? config.adminToken ?? '')
    : await localBackend(config);
  const id = () => {
    if (!positionals[0]) throw new CliError(`keys ${action} needs a key id (see: claudcode keys list)`);
    return positionals[0];
  };
  const show = (key: KeyView) => (values.json ? console.log(JSON.stringify(key, null, 2)) : printKeyTable([key]));
  try {
    switch (action) {
      case 'create': {
        if (!values.name) throw new CliError('keys create needs --name NAME');
        const created = await backend.createKey(keyInput(values));
        if (values.json) console.log(JSON.stringify(created, null, 2));
        else {
          printKeyTable([created]);
          console.log(`\nKey (shown once, store it now):\n  ${created.key}`);
        }
        break;
      }
      case 'list': {
        const keys = await backend.listKeys();
        if (values.json) console.log(JSON.stringify(keys, null, 2));
        else printKeyTable(keys);
        break;
      }
      case 'show':
        show(await backend.getKey(id()));
        break;
      case 'update': {
        const input = keyInput(values);
        if (Object.keys(input).length === 0) throw new CliError('keys update: give at least one field to change');
        show(await backend.updateKey(id(), input));
        break;
      }
      case 'disable':
      case 'enable':
        show(await backend.updateKey(id(), { disabled: action === 'disable' }));
        break;
      case 'delete':
        await backend.deleteKey(id());
        console.log(values.json ? JSON.stringify({ id: id(), deleted: true }) : `deleted ${id()}`);
        break;
      default:
        throw new CliError(`unknown keys command "${action ?? ''}"\n\n${USAGE}`);
    }
  } finally {
    await backend.close();
  }
}

async function runUsage(config: Config, args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { key: { type: 'string' }, since: { type: 'string' }, until: { type: 'string' }, by: { type: 'string', default: 'model' }, ...COMMON_OPTIONS },
  });
  if (!isUsageGrouping(values.by)) throw new CliError(`--by takes ${USAGE_GROUPINGS_TEXT}`);
  const backend = values.url ? remoteBackend(values.url, values['admin-token'] ?? config.adminToken ?? '') : await localBackend(config);
  try {
    const report = await backend.usage({ key: values.key, since: values.since, until: values.until, by: values.by });
    if (values.json) console.log(JSON.stringify(report, null, 2));
    else printReport(report);
  } finally {
    await backend.close();
  }
}

/**
 * `claudcode cache stats|purge [--key ID]`: on a running gateway (--url: its tiers and counters),
 * or on the shared tier directly (the SQLite cache file, or Redis in the scale-out mode).
 */
async function runCache(config: Config, args: string[]): Promise<void> {
  const [action, ...rest] = args;
  const { values } = parseArgs({ args: rest, options: { key: { type: 'string' }, ...COMMON_OPTIONS } });
  if (action !== 'stats' && action !== 'purge') throw new CliError(`unknown cache command "${action ?? ''}" (stats or purge)`);
  let result: unknown;
  if (values.url) {
    const base = `${values.url.replace(/\/+$/, '')}/admin/cache${action === 'purge' && values.key ? `?key=${encodeURIComponent(values.key)}` : ''}`;
    const res = await request(base, {
      method: action === 'purge' ? 'DELETE' : 'GET',
      headers: { authorization: `Bearer ${values['admin-token'] ?? config.adminToken ?? ''}` },
    });
    const text = await res.body.text();
    if (res.statusCode >= 400) throw new CliError(`${res.statusCode}: ${text}`);
    result = JSON.parse(text);
  } else {
    const tier = await openSharedCache(config, createLogger('warn', pino.destination(2)));
    try {
      if (action === 'stats') result = { tiers: { [tier.name]: await tier.stats() } };
      else {
        let scope: string | undefined;
        if (values.key) {
          const backends = await openStoreBackends(config, createLogger('warn', pino.destination(2)));
          try {
            const key = await backends.store.getKey(values.key);
            if (!key) throw new CliError(`no key with id ${values.key}`);
            scope = cacheScope(key);
          } finally {
            await backends.close();
          }
        }
        result = { ...(values.key ? { key_id: values.key } : {}), purged: { [tier.name]: await tier.purge(scope) } };
        if (backendMode(config) === 'scale-out') {
          // Running instances drop their memory copies too (as after a purge through the admin API).
          const { RedisKeyChangeSignal } = await import('./redis-key-changes.ts');
          const signal = await RedisKeyChangeSignal.open(config.redisUrl!, { logger: createLogger('warn', pino.destination(2)), channel: `${config.scaleOut.redisPrefix}cache-purge` });
          await signal.publish();
          await signal.close();
        }
      }
    } finally {
      await tier.close();
    }
  }
  console.log(JSON.stringify(result, null, values.json ? 2 : undefined));
}

/**
 * `claudcode maintenance on|off|status`: on the configured store (running gateways follow within
 * a second) or on a running gateway (--url). Prints one line, or the state as JSON.
 */
async function runMaintenance(config: Config, args: string[]): Promise<void> {
  const [action, ...rest] = args;
  const { values } = parseArgs({ args: rest, options: COMMON_OPTIONS });
  if (action !== 'on' && action !== 'off' && action !== 'status') throw new CliError(`unknown maintenance command "${action ?? ''}" (on, off or status)`);
  const backend = values.url ? remoteBackend(values.url, values['admin-token'] ?? config.adminToken ?? '') : await localBackend(config);
  try {
    const state = await backend.maintenance(action === 'status' ? undefined : action === 'on');
    console.log(values.json ? JSON.stringify(state, null, 2) : maintenanceLine(state));
  } finally {
    await backend.close();
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (!command || command === 'help' || command === '--help' || command === '-h') {
    console.log(USAGE);
    return;
  }
  if (command === 'init') {
    // Client side: no gateway config to load. Exit codes 0, 1, 2 (see src/setup/init.ts).
    const { runInit } = await import('./setup/init.ts');
    process.exitCode = await runInit(rest);
    return;
  }
  const config = loadConfig();
  switch (command) {
    case 'start':
      return runStart(config);
    case 'keys':
      return runKeys(config, rest);
    case 'usage':
      return runUsage(config, rest);
    case 'cache':
      return runCache(config, rest);
    case 'maintenance':
      return runMaintenance(config, rest);
    default:
      throw new CliError(`unknown command "${command}"\n\n${USAGE}`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const known =
    err instanceof CliError ||
    err instanceof ConfigError ||
    err instanceof BackendUnavailableError ||
    err instanceof GatewayError ||
    String((err as { code?: string }).code).startsWith('ERR_PARSE_ARGS_');
  process.stderr.write(`claudcode: ${known ? (err as Error).message : (err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
