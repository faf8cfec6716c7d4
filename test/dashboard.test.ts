/**
 * The dashboard over HTTP, without a browser: login and the session cookie (flags, expiry,
 * forgery, logout revoking it on every instance), CSRF refusals, security headers, the JSON API
 * behind a session, and the CSV export. The browser suite (dashboard.browser.test.ts) drives the
 * pages themselves.
 */
import { AuthenticationError } from '@anthropic-ai/sdk';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../src/admin-auth.ts';
import { createLogger } from '../src/logger.ts';
import { DashboardSessions, REVOKED_SESSIONS_META, SESSION_COOKIE, SESSION_TTL_MS } from '../src/dashboard/session.ts';
import { ADMIN_TOKEN, MESSAGE, startStack, type Stack } from './helpers.ts';
import { deleteKeys } from './limits-redis-helpers.ts';
import { createTestDatabase, REDIS_URL, services, testRedisPrefix } from './services.ts';

let stack: Stack;
beforeAll(async () => {
  // 127.0.0.1 is a trusted proxy here, so X-Forwarded-Proto can say https (the Secure flag).
  stack = await startStack({ config: { trustedProxies: ['127.0.0.1'], adminThrottle: { maxFailures: 30, windowMs: 60_000, maxAddresses: 100 } } });
});
afterAll(() => stack.close());

const silent = createLogger('silent');

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: any;
}

async function call(method: string, path: string, options: { cookie?: string; headers?: Record<string, string>; body?: string; base?: string } = {}): Promise<Reply> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.cookie) headers.cookie = `${SESSION_COOKIE}=${options.cookie}`;
  const res = await request(`${options.base ?? stack.url}${path}`, { method: method as 'GET', headers, body: options.body });
  const text = await res.body.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

function setCookieOf(reply: Reply): string {
  const header = reply.headers['set-cookie'];
  const all = Array.isArray(header) ? header : header ? [header] : [];
  const found = all.find((h) => h.startsWith(`${SESSION_COOKIE}=`));
  if (!found) throw new Error(`no ${SESSION_COOKIE} cookie set (status ${reply.status})`);
  return found;
}

function login(token: string, headers: Record<string, string> = {}, base?: string) {
  return call('POST', '/dashboard/login', {
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams({ token }).toString(),
    base,
  });
}

/** Logs in: the session cookie's value and the page's CSRF token. */
async function session(base?: string): Promise<{ cookie: string; csrf: string }> {
  const reply = await login(ADMIN_TOKEN, {}, base);
  expect(reply.status).toBe(303);
  const cookie = /^claudcode_session=([^;]+)/.exec(setCookieOf(reply))![1]!;
  const page = await call('GET', '/dashboard', { cookie, base });
  expect(page.status).toBe(200);
  const csrf = /<meta name="csrf-token" content="([^"]+)">/.exec(page.text)![1]!;
  return { cookie, csrf };
}

function change(method: string, path: string, s: { cookie: string; csrf?: string }, body?: unknown, headers: Record<string, string> = {}, base?: string) {
  return call(method, `/dashboard/api/${path}`, {
    base,
    cookie: s.cookie,
    headers: { ...(s.csrf ? { 'x-csrf-token': s.csrf } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

function expectSecurityHeaders(reply: Reply): void {
  const csp = String(reply.headers['content-security-policy']);
  expect(csp).toContain("default-src 'self'");
  expect(csp).toContain("script-src 'self'");
  expect(csp).toContain("frame-ancestors 'none'");
  expect(csp).not.toContain('unsafe-inline');
  expect(reply.headers['x-content-type-options']).toBe('nosniff');
  expect(reply.headers['referrer-policy']).toBe('no-referrer');
}

describe('dashboard login and session cookie', () => {
  it('sends pages to the login page and the API answers 401 without a session', async () => {
    const page = await call('GET', '/dashboard');
    expect(page.status).toBe(303);
    expect(page.headers.location).toBe('/dashboard/login');
    for (const path of ['/dashboard/keys', '/dashboard/usage', '/dashboard/live']) expect((await call('GET', path)).status).toBe(303);
    const slash = await call('GET', '/dashboard/');
    expect([slash.status, slash.headers.location]).toEqual([308, '/dashboard']);
    expect((await call('GET', '/dashboard/keys/?x=1')).headers.location).toBe('/dashboard/keys?x=1');
    for (const path of ['overview?range=day', 'keys', 'usage', 'live']) {
      const reply = await call('GET', `/dashboard/api/${path}`);
      expect(reply.status).toBe(401);
      expect(reply.json.error.type).toBe('authentication_error');
      expectSecurityHeaders(reply);
      expect(reply.headers['cache-control']).toBe('no-store');
    }
    const loginPage = await call('GET', '/dashboard/login');
    expect(loginPage.status).toBe(200);
    expect(loginPage.headers['content-type']).toMatch(/^text\/html/);
    expect(loginPage.headers['cache-control']).toBe('no-store');
    expectSecurityHeaders(loginPage);
    expect(loginPage.text).not.toMatch(/<script(?![^>]*\bsrc=)/i);
  });

  it('serves its assets itself with their content types (Chart.js included, no CDN)', async () => {
    const types: Record<string, RegExp> = {
      'app.js': /^text\/javascript/,
      'chart.umd.js': /^text\/javascript/,
      'app.css': /^text\/css/,
      'icon.svg': /^image\/svg\+xml/,
    };
    for (const [name, type] of Object.entries(types)) {
      const reply = await call('GET', `/dashboard/assets/${name}`);
      expect(reply.status, name).toBe(200);
      expect(reply.headers['content-type']).toMatch(type);
      expectSecurityHeaders(reply);
      const again = await call('GET', `/dashboard/assets/${name}`, { headers: { 'if-none-match': String(reply.headers.etag) } });
      expect(again.status).toBe(304);
    }
    expect((await call('GET', '/dashboard/assets/chart.umd.js')).text).toContain('Chart.js v4');
    expect((await call('GET', '/dashboard/assets/nope.js')).status).toBe(404);
    expect((await call('GET', '/dashboard/assets/..%2Froutes.ts')).status).toBe(404);
    // The shell names no host but its own.
    const { cookie } = await session();
    const shell = await call('GET', '/dashboard', { cookie });
    expect(shell.text).not.toMatch(/https?:\/\//);
  });

  it('refuses a wrong token and logs in with the right one: a signed, expiring, HttpOnly, SameSite=Strict cookie that is not the token', async () => {
    // Refused: back to the login page, which says why (Post/Redirect/Get).
    const wrong = await login('not-the-admin-token-at-all');
    expect(wrong.status).toBe(303);
    expect(wrong.headers.location).toBe('/dashboard/login?error=wrong-token');
    expect(wrong.headers['set-cookie']).toBeUndefined();
    expect((await call('GET', '/dashboard/login?error=wrong-token')).text).toContain('Wrong admin token.');
    expect((await login('')).headers.location).toBe('/dashboard/login?error=wrong-token');
    // Nothing from the query string is echoed.
    expect((await call('GET', '/dashboard/login?error=<script>alert(1)</script>&retry=<b>')).text).not.toMatch(/<script>alert|<b>/);

    const right = await login(ADMIN_TOKEN);
    expect(right.headers.location).toBe('/dashboard');
    const cookie = setCookieOf(right);
    expect(cookie).toMatch(/^claudcode_session=v1\.\d+\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43};/);
    expect(cookie).toMatch(/; HttpOnly/);
    expect(cookie).toMatch(/; SameSite=Strict/);
    expect(cookie).toMatch(/; Path=\/dashboard(;|$)/);
    expect(cookie).toMatch(new RegExp(`; Max-Age=${SESSION_TTL_MS / 1000}(;|$)`));
    expect(cookie).not.toMatch(/; Secure/);
    expect(cookie).not.toContain(ADMIN_TOKEN);
    expect(cookie).not.toContain(sha256(ADMIN_TOKEN).toString('base64url'));
    const expiresAt = Number(/^claudcode_session=v1\.(\d+)\./.exec(cookie)![1]);
    expect(Math.abs(expiresAt - (Date.now() + SESSION_TTL_MS))).toBeLessThan(10_000);

    // Logged in: the login page sends on to the dashboard.
    const value = /^claudcode_session=([^;]+)/.exec(cookie)![1]!;
    expect((await call('GET', '/dashboard/login', { cookie: value })).headers.location).toBe('/dashboard');
    expect((await call('GET', '/dashboard/api/keys', { cookie: value })).status).toBe(200);
  });

  it('marks the cookie Secure when the request came over https (X-Forwarded-Proto from a trusted proxy)', async () => {
    const reply = await login(ADMIN_TOKEN, { 'x-forwarded-proto': 'https' });
    expect(reply.status).toBe(303);
    expect(setCookieOf(reply)).toMatch(/; Secure/);
  });

  it('refuses a login posted from another origin or site', async () => {
    expect((await call('GET', '/dashboard/login?error=cross-origin')).text).toContain('not posted from this gateway');
    for (const headers of [
      { origin: 'https://evil.example' } as Record<string, string>,
      { origin: 'null' },
      { 'sec-fetch-site': 'cross-site' },
      { 'sec-fetch-site': 'same-site', origin: 'null' },
      { 'sec-fetch-site': 'same-origin', origin: 'https://evil.example' },
    ]) {
      const refused = await login(ADMIN_TOKEN, headers);
      expect(refused.headers.location, JSON.stringify(headers)).toBe('/dashboard/login?error=cross-origin');
      expect(refused.headers['set-cookie']).toBeUndefined();
    }
    // The gateway's own origin as browsers send it: named, or null (a form under no-referrer)
    // with Sec-Fetch-Site vouching for it.
    for (const headers of [{ origin: stack.url, 'sec-fetch-site': 'same-origin' }, { origin: 'null', 'sec-fetch-site': 'same-origin' }]) {
      const own = await login(ADMIN_TOKEN, headers);
      expect(own.headers.location).toBe('/dashboard');
      expect(setCookieOf(own)).toMatch(/^claudcode_session=v1\./);
    }
  });

  it('refuses forged, altered, foreign and expired cookies', async () => {
    const { cookie } = await session();
    const [, expires, nonce, signature] = cookie.split('.') as [string, string, string, string];
    const refused = async (value: string) => expect((await call('GET', '/dashboard/api/keys', { cookie: value })).status).toBe(401);
    await refused(`v1.${expires}.${nonce}.${'A'.repeat(43)}`);
    await refused(`v1.${Number(expires) + 1000}.${nonce}.${signature}`);
    await refused(`v1.${expires}.${'B'.repeat(22)}.${signature}`);
    await refused(`v2.${expires}.${nonce}.${signature}`);
    await refused(ADMIN_TOKEN);
    await refused('');
    // Signed with another admin token's secret: another deployment, or the token was changed.
    const other = new DashboardSessions(sha256('another-admin-token-0123456789'), stack.gateway.store, { logger: silent });
    await refused(other.issue().value);
    // Signed right, but expired (issued 8 h and a second ago).
    const same = new DashboardSessions(sha256(ADMIN_TOKEN), stack.gateway.store, { logger: silent });
    await refused(same.issue(Date.now() - SESSION_TTL_MS - 1000).value);
    // ...while a fresh one from the same secret works: any instance accepts any instance's sessions.
    expect((await call('GET', '/dashboard/api/keys', { cookie: same.issue().value })).status).toBe(200);
  });
});

describe('dashboard CSRF', () => {
  it('refuses changes without the CSRF token, with a wrong one, from another origin or site', async () => {
    const s = await session();
    const other = await session();
    const body = { name: 'csrf-test' };
    const refusals = [
      await change('POST', 'keys', { cookie: s.cookie }, body),
      await change('POST', 'keys', { cookie: s.cookie, csrf: 'x'.repeat(43) }, body),
      await change('POST', 'keys', { cookie: s.cookie, csrf: other.csrf }, body),
      await change('POST', 'keys', s, body, { origin: 'https://evil.example' }),
      await change('POST', 'keys', s, body, { origin: 'null' }),
      await change('POST', 'keys', s, body, { 'sec-fetch-site': 'cross-site' }),
      await change('POST', 'keys', s, body, { 'sec-fetch-site': 'same-site' }),
    ];
    for (const reply of refusals) {
      expect(reply.status).toBe(403);
      expect(reply.json.error.type).toBe('permission_error');
    }
    // None of them created anything; every method is covered.
    expect((await call('GET', '/dashboard/api/keys', { cookie: s.cookie })).json.data.filter((k: any) => k.name === 'csrf-test')).toEqual([]);
    const { id } = await stack.newKey({ name: 'csrf-target' });
    expect((await change('PATCH', `keys/${id}`, { cookie: s.cookie }, { rpm: 5 })).status).toBe(403);
    expect((await change('POST', `keys/${id}/disable`, { cookie: s.cookie })).status).toBe(403);
    expect((await change('DELETE', `keys/${id}`, { cookie: s.cookie })).status).toBe(403);
    expect((await change('POST', '../logout', { cookie: s.cookie })).status).toBe(403);
    // Without a session the token alone is nothing.
    expect((await change('POST', 'keys', { cookie: '', csrf: s.csrf }, body)).status).toBe(401);
    // With both, from the gateway's own origin: allowed.
    expect((await change('POST', 'keys', s, body, { origin: stack.url, 'sec-fetch-site': 'same-origin' })).status).toBe(201);
    expect((await change('DELETE', `keys/${id}`, s)).status).toBe(200);
  });

  it('logout needs the CSRF token, clears the cookie and revokes the session on every instance', async () => {
    const s = await session();
    // Another instance: it re-reads the revoked sessions at most once a second (its clock is moved on).
    let elsewhereNow = Date.now();
    const elsewhere = new DashboardSessions(sha256(ADMIN_TOKEN), stack.gateway.store, { logger: silent, clock: () => elsewhereNow });
    expect(await elsewhere.verify(s.cookie)).not.toBeNull();
    const out = await change('POST', '../logout', s);
    expect(out.status).toBe(204);
    const cleared = setCookieOf(out);
    expect(cleared).toMatch(/^claudcode_session=;/);
    expect(cleared).toMatch(/Max-Age=0/);
    // The old cookie is refused here, by another instance (which reads the store), and for changes.
    expect((await call('GET', '/dashboard/api/keys', { cookie: s.cookie })).status).toBe(401);
    expect((await call('GET', '/dashboard', { cookie: s.cookie })).status).toBe(303);
    expect(await elsewhere.verify(s.cookie)).not.toBeNull();
    elsewhereNow += 1000;
    expect(await elsewhere.verify(s.cookie)).toBeNull();
    expect((await change('POST', 'keys', s, { name: 'after-logout' })).status).toBe(401);
    expect(JSON.parse((await stack.gateway.store.getMeta(REVOKED_SESSIONS_META))!)).toHaveProperty(s.cookie.split('.')[2]!);
  });
});

describe('dashboard sessions (session.ts)', () => {
  it('expire at their time and are accepted until then', async () => {
    let now = Date.parse('2026-06-01T00:00:00Z');
    const sessions = new DashboardSessions(sha256('token-for-clock-tests-000'), stack.gateway.store, { logger: silent, clock: () => now });
    const { value, session } = sessions.issue();
    expect(session.expiresAt).toBe(now + SESSION_TTL_MS);
    now += SESSION_TTL_MS - 1;
    expect(await sessions.verify(value)).toEqual(session);
    now += 1;
    expect(await sessions.verify(value)).toBeNull();
  });

  it('derive the CSRF token from the session, not the other way round', () => {
    const sessions = new DashboardSessions(sha256(ADMIN_TOKEN), stack.gateway.store, { logger: silent });
    const a = sessions.issue().session;
    const b = sessions.issue().session;
    expect(sessions.csrfToken(a)).not.toBe(sessions.csrfToken(b));
    expect(sessions.checkCsrf(a, sessions.csrfToken(a))).toBe(true);
    expect(sessions.checkCsrf(a, sessions.csrfToken(b))).toBe(false);
    expect(sessions.checkCsrf(a, undefined)).toBe(false);
  });

  it('prune revoked sessions once they would have expired', async () => {
    let now = Date.now();
    const sessions = new DashboardSessions(sha256(ADMIN_TOKEN), stack.gateway.store, { logger: silent, clock: () => now });
    const first = sessions.issue().session;
    await sessions.revoke(first);
    now += SESSION_TTL_MS + 1;
    const second = sessions.issue().session;
    await sessions.revoke(second);
    const row = JSON.parse((await stack.gateway.store.getMeta(REVOKED_SESSIONS_META))!);
    expect(row).toHaveProperty(second.nonce);
    expect(row).not.toHaveProperty(first.nonce);
  });
});

describe('dashboard API', () => {
  it('creates a key (shown once), lists keys with their budgets and no key material, edits, disables, enables and deletes', async () => {
    const s = await session();
    const created = await change('POST', 'keys', s, { name: '<b>Ops & "friends"</b>', rpm: 30, concurrent: 2, budget_tokens: 100000, window: '1h', models: ['claude-haiku-4-5'] });
    expect(created.status).toBe(201);
    expect(created.json.key).toMatch(/^sk-cc-[A-Za-z0-9]{32}$/);
    expect(created.json.budget).toEqual({ total_tokens: 100000, used_tokens: 0, remaining_tokens: 100000, window: '1h rolling', resets_in: '0s' });
    const key: string = created.json.key;
    const id: string = created.json.id;

    const client = stack.client(key);
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] });
    await stack.gateway.services.usage.flush();

    const list = await call('GET', '/dashboard/api/keys', { cookie: s.cookie });
    expect(list.status).toBe(200);
    expect(list.text).not.toContain(key);
    expect(list.text).not.toMatch(/sk-cc-[A-Za-z0-9]{32}/);
    expect(list.text).not.toMatch(/"hash"/);
    const row = list.json.data.find((k: any) => k.id === id);
    expect(row).toMatchObject({ name: '<b>Ops & "friends"</b>', rpm: 30, concurrent: 2, models: ['claude-haiku-4-5'], mcp_servers: [], status: 'active' });
    expect(row.budget.used_tokens).toBeGreaterThan(0);
    expect(list.json.models).toEqual(['claude-opus-4-6', 'claude-sonnet-4-6', 'claude-haiku-4-5']);

    const edited = await change('PATCH', `keys/${id}`, s, { rpm: 7, models: null });
    expect(edited.status).toBe(200);
    expect(edited.json).toMatchObject({ rpm: 7, models: null });
    expect(edited.json.key).toBeUndefined();
    // The admin API's validation, field by field.
    const bad = await change('PATCH', `keys/${id}`, s, { rpm: -1, models: ['gpt-4'] });
    expect(bad.status).toBe(400);
    expect(bad.json.error.message).toMatch(/rpm/);
    expect((await change('POST', 'keys', s, { name: 'x', mcp_servers: ['tavily'] })).json.error.message).toMatch(/unknown MCP server/);
    expect((await change('PATCH', 'keys/key_nope', s, { rpm: 5 })).status).toBe(404);

    expect((await change('POST', `keys/${id}/disable`, s)).json.status).toBe('disabled');
    await expect(client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] })).rejects.toBeInstanceOf(AuthenticationError);
    expect((await change('POST', `keys/${id}/enable`, s)).json.status).toBe('active');
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] });
    expect((await change('DELETE', `keys/${id}`, s)).json).toEqual({ id, deleted: true });
    await expect(client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] })).rejects.toBeInstanceOf(AuthenticationError);
  });

  it('shows the live state: in flight and last minute per key, upstreams and their breakers, maintenance', async () => {
    const s = await session();
    const { key, id } = await stack.newKey({ name: 'live-one', rpm: 50, concurrent: 3 });
    const client = stack.client(key);
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] });
    const slow = client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] }, { headers: { 'x-fake-latency-ms': '1500' } });
    const live = async () => (await call('GET', '/dashboard/api/live', { cookie: s.cookie })).json;
    await expect.poll(async () => (await live()).keys.find((k: any) => k.id === id), { timeout: 1500, interval: 50 }).toEqual({
      id, name: 'live-one', status: 'active', rpm: 50, concurrent: 3, rpm_used: 2, in_flight: 1,
    });
    const during = await live();
    expect(during).toMatchObject({ mode: 'embedded', maintenance: { enabled: false, since: null } });
    expect(during.in_flight).toBeGreaterThanOrEqual(1);
    expect(during.upstreams).toEqual([{ name: new URL(stack.fake.url).host, state: 'closed' }]);
    await slow;
    expect((await live()).keys.find((k: any) => k.id === id)).toMatchObject({ rpm_used: 2, in_flight: 0 });
  });

  it('validates the overview range and the explorer query', async () => {
    const s = await session();
    expect((await call('GET', '/dashboard/api/overview?range=year', { cookie: s.cookie })).status).toBe(400);
    expect((await call('GET', '/dashboard/api/usage?by=colour', { cookie: s.cookie })).status).toBe(400);
    expect((await call('GET', '/dashboard/api/usage?since=yesterday', { cookie: s.cookie })).status).toBe(400);
    expect((await call('GET', '/dashboard/api/usage?format=xml', { cookie: s.cookie })).status).toBe(400);
    const overview = await call('GET', '/dashboard/api/overview?range=hour', { cookie: s.cookie });
    expect(overview.status).toBe(200);
    expect(overview.json.range).toBe('hour');
  });

  it('exports the explorer as a CSV download', async () => {
    const s = await session();
    const { key } = await stack.newKey({ name: 'csv, "quoted" name' });
    await stack.client(key).messages.create({ model: 'claude-sonnet-4-6', max_tokens: 50, messages: [MESSAGE] });
    await stack.gateway.services.usage.flush();
    const csv = await call('GET', '/dashboard/api/usage?by=key&since=1h&format=csv', { cookie: s.cookie });
    expect(csv.status).toBe(200);
    expect(csv.headers['content-type']).toBe('text/csv; charset=utf-8');
    expect(csv.headers['content-disposition']).toMatch(/^attachment; filename="claudcode-usage-by-key-\d{4}-\d{2}-\d{2}-to-\d{4}-\d{2}-\d{2}\.csv"$/);
    expect(csv.headers['cache-control']).toBe('no-store');
    expect(csv.text).toContain('"csv, ""quoted"" name"');
    expect(csv.text).not.toMatch(/sk-cc-[A-Za-z0-9]{32}/);
  });
});

describe('dashboard login throttling', () => {
  it('applies the admin token throttle per address: the login page says when to try again', async () => {
    const strict = await startStack({ config: { adminThrottle: { maxFailures: 2, windowMs: 60_000, maxAddresses: 10 } } });
    try {
      const wrong = () => login('wrong-token-wrong-token', {}, strict.url);
      expect((await wrong()).headers.location).toBe('/dashboard/login?error=wrong-token');
      expect((await wrong()).headers.location).toBe('/dashboard/login?error=wrong-token');
      const throttled = await wrong();
      expect(throttled.headers.location).toMatch(/^\/dashboard\/login\?error=throttled&retry=\d+$/);
      // The right token too, while throttled: guessing stays slow.
      const right = await login(ADMIN_TOKEN, {}, strict.url);
      expect(right.headers.location).toMatch(/error=throttled/);
      expect(right.headers['set-cookie']).toBeUndefined();
      const page = await call('GET', String(throttled.headers.location), { base: strict.url });
      expect(page.text).toMatch(/Too many wrong tokens from this address\. Try again in \d+ s\./);
    } finally {
      await strict.close();
    }
  });
});

describe.skipIf(!services.both)('dashboard in the scale-out mode (PostgreSQL and Redis)', () => {
  let database: Awaited<ReturnType<typeof createTestDatabase>>;
  const redisPrefix = testRedisPrefix('dashboard');
  const stacks: Stack[] = [];

  beforeAll(async () => {
    database = await createTestDatabase('dashboard');
    const config = { databaseUrl: database.url, redisUrl: REDIS_URL, scaleOut: { redisPrefix } };
    stacks.push(await startStack({ config }), await startStack({ config }));
  }, 30_000);
  afterAll(async () => {
    for (const s of stacks) await s.close();
    await database?.drop();
    await deleteKeys(redisPrefix);
  });

  it('a session from one instance works on another; keys changed in either reach both; logout ends it everywhere', async () => {
    const [a, b] = stacks as [Stack, Stack];
    const s = await session(a.url);
    expect((await call('GET', '/dashboard/api/keys', { cookie: s.cookie, base: b.url })).status).toBe(200);
    const live = await call('GET', '/dashboard/api/live', { cookie: s.cookie, base: b.url });
    expect(live.json.mode).toBe('scale-out');

    // Created on B's dashboard (the CSRF token is the session's, whichever instance issued it), used on A.
    const created = await change('POST', 'keys', s, { name: 'across', models: ['claude-haiku-4-5'] }, {}, b.url);
    expect(created.status).toBe(201);
    await a.gateway.services.keys.refresh();
    const client = a.client(created.json.key);
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] });
    await a.gateway.services.usage.flush();
    const overview = await call('GET', '/dashboard/api/overview?range=hour', { cookie: s.cookie, base: b.url });
    expect(overview.json.totals.requests).toBe(1);
    const keys = await call('GET', '/dashboard/api/keys', { cookie: s.cookie, base: b.url });
    expect(keys.json.data.find((k: any) => k.id === created.json.id).budget.used_tokens).toBeGreaterThan(0);

    // Disabled on A's dashboard: refused on B.
    expect((await change('POST', `keys/${created.json.id}/disable`, s, undefined, {}, a.url)).status).toBe(200);
    await b.gateway.services.keys.refresh();
    await expect(b.client(created.json.key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] })).rejects.toBeInstanceOf(AuthenticationError);

    // Logged out on A: B refuses the cookie within a second.
    expect((await change('POST', '../logout', s, undefined, {}, a.url)).status).toBe(204);
    expect((await call('GET', '/dashboard/api/keys', { cookie: s.cookie, base: a.url })).status).toBe(401);
    await expect.poll(async () => (await call('GET', '/dashboard/api/keys', { cookie: s.cookie, base: b.url })).status, { timeout: 2000, interval: 100 }).toBe(401);
  });
});
