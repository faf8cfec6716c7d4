/**
 * The admin API (/admin/...), behind the admin token: keys and usage reports. The CLI's --url
 * mode speaks to it; the same validation (KeyInput) serves both. The token check (admin-auth.ts)
 * is shared with /metrics and the dashboard.
 */
import { randomBytes } from 'node:crypto';
import { Hono } from 'hono';
import { z } from 'zod';
import type { ModelCatalog } from './catalog.ts';
import { sha256, type AdminAuth } from './admin-auth.ts';
import { Duration, WindowDuration, type Config } from './config.ts';
import { InvalidRequestError, NotFoundError } from './errors.ts';
import { createKey, describeKey, type KeyRegistry } from './keys.ts';
import type { Logger } from './logger.ts';
import type { GatewayEnv } from './app-env.ts';
import { isUsageGrouping, usageReport, USAGE_GROUPINGS_TEXT } from './reports.ts';
import type { KeyPatch, KeyRecord, Store } from './store/types.ts';

const ADMIN_TOKEN_META = 'admin_token_sha256';

/** The longest a key's cache TTL may be: 30 days. */
export const MAX_KEY_CACHE_TTL_SECONDS = 30 * 86400;
/** What a cache group may be called. */
export const CACHE_GROUP_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * A key's response-cache TTL (`cache_ttl`): null is the gateway's default, 0 (or "0") turns the
 * cache off for the key, anything else is a Duration (seconds, or "1h", "30m", ...) of at most
 * 30 days. Becomes seconds (or null).
 */
const CacheTtl = z
  .union([z.number(), z.string()], { error: 'expected seconds, a duration like "1h", 0 (cache off) or null (the default)' })
  .nullable()
  .transform((value, ctx): number | null => {
    if (value === null) return null;
    if (value === 0 || value === '0') return 0;
    const parsed = Duration.safeParse(value);
    if (!parsed.success) {
      for (const issue of parsed.error.issues) {
        ctx.addIssue({ code: 'custom', message: `${issue.message}; 0 turns the cache off, null is the default` });
      }
      return z.NEVER;
    }
    if (parsed.data > MAX_KEY_CACHE_TTL_SECONDS) {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is too long for a cache TTL: at most 30d` });
      return z.NEVER;
    }
    return parsed.data;
  });

/** A key's cache group (`cache_group`): a name shared by the keys that share entries, or null for the key alone. */
const CacheGroup = z.string().regex(CACHE_GROUP_PATTERN, 'expected a name of 1 to 64 letters, digits, "_" or "-" (or null for none)').nullable();

/**
 * The attached MCP servers a key may use (`mcp_servers`): names from config `mcpServers`, [] for
 * none. Membership is checked by validateKeyInput, which knows the configured names.
 */
const McpServerNames = z.array(z.string(), { error: 'expected a list of MCP server names ([] for none)' });

/**
 * `names` with duplicates dropped (first place kept), each one a server configured in
 * `mcpServers`; otherwise a 400 naming the unknown ones and listing the configured ones.
 */
function knownMcpServers(names: string[], configured: readonly string[]): string[] {
  const unique = [...new Set(names)];
  const unknown = unique.filter((name) => !configured.includes(name));
  if (unknown.length > 0) {
    const listed = unknown.map((name) => JSON.stringify(name)).join(', ');
    const known = configured.length > 0 ? `configured: ${configured.join(', ')}` : 'no MCP server is configured (config mcpServers)';
    throw new InvalidRequestError(`mcp_servers: unknown MCP server${unknown.length > 1 ? 's' : ''} ${listed}; ${known}`);
  }
  return unique;
}

/** Fields of a key an operator sets, as the admin API and the CLI accept them. */
export const KeyInput = z.strictObject({
  name: z.string().trim().min(1).max(200),
  models: z.array(z.string().min(1)).min(1).nullable(),
  rpm: z.number().int().positive(),
  concurrent: z.number().int().positive(),
  budget_tokens: z.number().int().positive(),
  window: WindowDuration,
  expires_at: z.iso.datetime({ offset: true }).nullable(),
  disabled: z.boolean(),
  cache_ttl: CacheTtl,
  cache_group: CacheGroup,
  mcp_servers: McpServerNames,
});
export type KeyInput = z.input<typeof KeyInput>;

/** An admin request body checked against `schema`, or a 400 naming each wrong field. */
export function validateInput<T extends z.ZodType>(schema: T, input: unknown): z.output<T> {
  const result = schema.safeParse(input);
  if (!result.success) {
    throw new InvalidRequestError(result.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
  }
  return result.data;
}

/** An admin request's JSON body, or a 400. */
export async function readJsonBody(request: Request): Promise<unknown> {
  try {
    return await request.json();
  } catch {
    throw new InvalidRequestError('Request body is not valid JSON.');
  }
}

/**
 * A key's fields from an admin request or the CLI, checked: models against the catalog,
 * `mcp_servers` against `mcpServers`, the names of the configured attached MCP servers.
 */
export function validateKeyInput(input: unknown, catalog: ModelCatalog, partial: boolean, mcpServers: readonly string[]): KeyPatch {
  const v = validateInput(partial ? KeyInput.partial() : KeyInput.partial().required({ name: true }), input);
  for (const model of v.models ?? []) {
    if (!catalog.get(model)) throw new InvalidRequestError(`models: unknown model "${model}"`);
  }
  return {
    name: v.name,
    models: v.models,
    rpm: v.rpm,
    concurrent: v.concurrent,
    budgetTokens: v.budget_tokens,
    windowSeconds: v.window,
    expiresAt: v.expires_at === undefined ? undefined : v.expires_at === null ? null : Date.parse(v.expires_at),
    disabled: v.disabled,
    cacheTtlSeconds: v.cache_ttl,
    cacheGroup: v.cache_group,
    mcpServers: v.mcp_servers === undefined ? undefined : knownMcpServers(v.mcp_servers, mcpServers),
  };
}


/**
 * The admin token's hash: from CLAUDCODE_ADMIN_TOKEN, or the one generated at first start (whose
 * hash is kept in the store). Returns the generated token so the caller can print it once.
 */
export async function resolveAdminToken(store: Store, configured: string | undefined): Promise<{ hash: Buffer; generated?: string }> {
  if (configured) return { hash: sha256(configured) };
  const stored = await store.getMeta(ADMIN_TOKEN_META);
  if (stored) return { hash: Buffer.from(stored, 'hex') };
  const generated = `cc-admin-${randomBytes(24).toString('base64url')}`;
  const hash = sha256(generated).toString('hex');
  // Insert-if-absent: of instances starting together on one store, one token wins and only the
  // instance whose token it is prints it.
  const kept = await store.setMetaIfAbsent(ADMIN_TOKEN_META, hash);
  return kept === hash ? { hash: Buffer.from(hash, 'hex'), generated } : { hash: Buffer.from(kept, 'hex') };
}

const RELATIVE_UNIT_MS = { m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
/** Report bounds are dates of four-digit years: far enough for any report, and always printable. */
const EARLIEST_REPORT_TIME = Date.parse('0000-01-01T00:00:00Z');
const LATEST_REPORT_TIME = Date.parse('9999-12-31T23:59:59.999Z');

/**
 * A usage report bound (`since`, `until`): an ISO date, or a duration back from now ("24h", "7d";
 * "0h" is now). Anything else, or a time outside years 0000-9999, is an InvalidRequestError
 * naming the parameter, so the admin API answers 400 and the CLI prints one line.
 */
function parseTime(value: string | undefined, name: string, now: number = Date.now()): number | undefined {
  if (value === undefined || value === '') return undefined;
  const relative = /^(\d+)(m|h|d)$/.exec(value);
  const ms = relative ? now - Number(relative[1]) * RELATIVE_UNIT_MS[relative[2] as 'm' | 'h' | 'd'] : Date.parse(value);
  if (Number.isNaN(ms)) throw new InvalidRequestError(`${name}: expected an ISO date or a duration like 24h, 7d`);
  if (!(ms >= EARLIEST_REPORT_TIME && ms <= LATEST_REPORT_TIME)) {
    throw new InvalidRequestError(`${name}: "${value}" is out of range (a time between years 0000 and 9999)`);
  }
  return ms;
}

/**
 * Key changes as the admin API and the dashboard make them: input validated (KeyInput), stored,
 * and announced so every instance follows within a second.
 */
export class KeyChanges {
  private readonly deps: Pick<AdminDeps, 'config' | 'store' | 'keys' | 'catalog'>;
  private readonly mcpServerNames: string[];

  constructor(deps: Pick<AdminDeps, 'config' | 'store' | 'keys' | 'catalog'>) {
    this.deps = deps;
    this.mcpServerNames = Object.keys(deps.config.mcpServers);
  }

  /** A new key from a create request's body; the key itself is returned this once. */
  async create(body: unknown): Promise<{ record: KeyRecord; key: string }> {
    const patch = validateKeyInput(body, this.deps.catalog, false, this.mcpServerNames);
    const created = await createKey(this.deps.store, this.deps.config.keyDefaults, { ...patch, name: patch.name! });
    await this.deps.keys.changed();
    return created;
  }

  /** Applies an update request's body. */
  async update(id: string, body: unknown): Promise<KeyRecord> {
    return this.apply(id, validateKeyInput(body, this.deps.catalog, true, this.mcpServerNames));
  }

  async setDisabled(id: string, disabled: boolean): Promise<KeyRecord> {
    return this.apply(id, { disabled });
  }

  async remove(id: string): Promise<void> {
    if (!(await this.deps.store.deleteKey(id))) throw new NotFoundError(`No key with id ${id}.`);
    await this.deps.keys.changed();
  }

  private async apply(id: string, patch: KeyPatch): Promise<KeyRecord> {
    const updated = await this.deps.store.updateKey(id, patch);
    if (!updated) throw new NotFoundError(`No key with id ${id}.`);
    await this.deps.keys.changed();
    return updated;
  }
}

export interface AdminDeps {
  config: Config;
  store: Store;
  keys: KeyRegistry;
  catalog: ModelCatalog;
  /** The admin token check (shared with /metrics and the dashboard). */
  auth: AdminAuth;
  logger: Logger;
  /** Subsystems' own admin routes (e.g. /cache), behind the same token check. */
  mount?: Array<[path: string, routes: Hono<GatewayEnv>]>;
}

export function adminRoutes(deps: AdminDeps): Hono<GatewayEnv> {
  const { store, keys, catalog, logger } = deps;
  const changes = new KeyChanges(deps);
  const admin = new Hono<GatewayEnv>();

  admin.use('*', deps.auth.bearer());

  const readJson = readJsonBody;

  const keyOr404 = async (id: string) => {
    const key = await store.getKey(id);
    if (!key) throw new NotFoundError(`No key with id ${id}.`);
    return key;
  };

  admin.get('/keys', async (c) => c.json({ data: (await store.listKeys()).map(describeKey) }));

  admin.post('/keys', async (c) => {
    const { record, key } = await changes.create(await readJson(c.req.raw));
    return c.json({ ...describeKey(record), key }, 201);
  });

  admin.get('/keys/:id', async (c) => c.json(describeKey(await keyOr404(c.req.param('id')))));
  admin.patch('/keys/:id', async (c) => c.json(describeKey(await changes.update(c.req.param('id'), await readJson(c.req.raw)))));
  admin.post('/keys/:id/disable', async (c) => c.json(describeKey(await changes.setDisabled(c.req.param('id'), true))));
  admin.post('/keys/:id/enable', async (c) => c.json(describeKey(await changes.setDisabled(c.req.param('id'), false))));

  admin.delete('/keys/:id', async (c) => {
    const id = c.req.param('id');
    await changes.remove(id);
    return c.json({ id, deleted: true });
  });

  admin.get('/usage', async (c) => {
    const by = c.req.query('by') ?? 'model';
    if (!isUsageGrouping(by)) throw new InvalidRequestError(`by: expected ${USAGE_GROUPINGS_TEXT}`);
    return c.json(
      await usageReport(store, catalog, {
        by,
        keyId: c.req.query('key') || undefined,
        sinceMs: parseTime(c.req.query('since'), 'since'),
        untilMs: parseTime(c.req.query('until'), 'until'),
      }),
    );
  });

  for (const [path, routes] of deps.mount ?? []) admin.route(path, routes);

  return admin;
}

export { parseTime };
