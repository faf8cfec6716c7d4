/**
 * The admin API (/admin/...), behind the admin token: keys and usage reports. The CLI's --url
 * mode speaks to it; the same validation (KeyInput) serves both.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { Hono } from 'hono';
import { z } from 'zod';
import type { ModelCatalog } from './catalog.ts';
import { Duration, parseDuration, type Config } from './config.ts';
import { AuthenticationError, InvalidRequestError, NotFoundError } from './errors.ts';
import { createKey, describeKey, type KeyRegistry } from './keys.ts';
import type { GatewayEnv } from './pipeline.ts';
import { usageReport } from './reports.ts';
import type { KeyPatch, Store } from './store/types.ts';

const ADMIN_TOKEN_META = 'admin_token_sha256';

/** Fields of a key an operator sets, as the admin API and the CLI accept them. */
export const KeyInput = z.strictObject({
  name: z.string().trim().min(1).max(200),
  models: z.array(z.string().min(1)).min(1).nullable(),
  rpm: z.number().int().positive(),
  concurrent: z.number().int().positive(),
  budget_tokens: z.number().int().positive(),
  window: Duration,
  expires_at: z.iso.datetime({ offset: true }).nullable(),
  disabled: z.boolean(),
});
export type KeyInput = z.input<typeof KeyInput>;

export function validateKeyInput(input: unknown, catalog: ModelCatalog, partial: boolean): KeyPatch {
  const schema = partial ? KeyInput.partial() : KeyInput.partial().required({ name: true });
  const result = schema.safeParse(input);
  if (!result.success) {
    throw new InvalidRequestError(result.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
  }
  const v = result.data;
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
  };
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
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
  const hash = sha256(generated);
  await store.setMeta(ADMIN_TOKEN_META, hash.toString('hex'));
  return { hash, generated };
}

function parseTime(value: string | undefined, name: string): number | undefined {
  if (value === undefined || value === '') return undefined;
  const relative = /^(\d+)(m|h|d)$/.exec(value);
  if (relative) return Date.now() - parseDuration(value) * 1000;
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) throw new InvalidRequestError(`${name}: expected an ISO date or a duration like 24h, 7d`);
  return ms;
}

export interface AdminDeps {
  config: Config;
  store: Store;
  keys: KeyRegistry;
  catalog: ModelCatalog;
  adminTokenHash: Buffer;
}

export function adminRoutes(deps: AdminDeps): Hono<GatewayEnv> {
  const { store, keys, catalog } = deps;
  const admin = new Hono<GatewayEnv>();

  admin.use('*', async (c, next) => {
    const match = /^Bearer\s+(.+)$/i.exec(c.req.header('authorization') ?? '');
    const presented = match?.[1]?.trim();
    if (!presented || !timingSafeEqual(sha256(presented), deps.adminTokenHash)) {
      throw new AuthenticationError('Admin API: missing or wrong admin token (Authorization: Bearer <CLAUDCODE_ADMIN_TOKEN>).');
    }
    await next();
  });

  const readJson = async (request: Request): Promise<unknown> => {
    try {
      return await request.json();
    } catch {
      throw new InvalidRequestError('Request body is not valid JSON.');
    }
  };

  const keyOr404 = async (id: string) => {
    const key = await store.getKey(id);
    if (!key) throw new NotFoundError(`No key with id ${id}.`);
    return key;
  };

  const update = async (id: string, patch: KeyPatch) => {
    const updated = await store.updateKey(id, patch);
    if (!updated) throw new NotFoundError(`No key with id ${id}.`);
    await keys.refresh();
    return describeKey(updated);
  };

  admin.get('/keys', async (c) => c.json({ data: (await store.listKeys()).map(describeKey) }));

  admin.post('/keys', async (c) => {
    const patch = validateKeyInput(await readJson(c.req.raw), catalog, false);
    const { record, key } = await createKey(store, deps.config.keyDefaults, { ...patch, name: patch.name! });
    await keys.refresh();
    return c.json({ ...describeKey(record), key }, 201);
  });

  admin.get('/keys/:id', async (c) => c.json(describeKey(await keyOr404(c.req.param('id')))));

  admin.patch('/keys/:id', async (c) => c.json(await update(c.req.param('id'), validateKeyInput(await readJson(c.req.raw), catalog, true))));

  admin.post('/keys/:id/disable', async (c) => c.json(await update(c.req.param('id'), { disabled: true })));
  admin.post('/keys/:id/enable', async (c) => c.json(await update(c.req.param('id'), { disabled: false })));

  admin.delete('/keys/:id', async (c) => {
    const id = c.req.param('id');
    if (!(await store.deleteKey(id))) throw new NotFoundError(`No key with id ${id}.`);
    await keys.refresh();
    return c.json({ id, deleted: true });
  });

  admin.get('/usage', async (c) => {
    const by = c.req.query('by') ?? 'model';
    if (by !== 'model' && by !== 'key' && by !== 'day') throw new InvalidRequestError('by: expected model, key or day');
    return c.json(
      await usageReport(store, catalog, {
        by,
        keyId: c.req.query('key') || undefined,
        sinceMs: parseTime(c.req.query('since'), 'since'),
        untilMs: parseTime(c.req.query('until'), 'until'),
      }),
    );
  });

  return admin;
}

export { parseTime };
