/**
 * The dashboard (/dashboard): one HTML shell for its four pages, a login page, static assets
 * (app.js, app.css, and Chart.js's UMD build from node_modules: nothing from a CDN), and the JSON
 * API (api.ts). Mounted by gateway.ts.
 *
 *   GET  /dashboard, /dashboard/keys, /dashboard/usage, /dashboard/live   the app (session)
 *   GET  /dashboard/login, POST /dashboard/login                          admin token → session
 *   POST /dashboard/logout                                                ends the session
 *   GET  /dashboard/assets/*                                              static files
 *   /dashboard/api/*                                                      JSON (api.ts)
 *
 * Security, in layers: every response carries a strict CSP (scripts only from files served
 * here, no inline script or style, no framing), nosniff, no-referrer, and no-store for pages and
 * API. A page or API call without a valid session gets the login page or 401. A change (POST,
 * PATCH, DELETE, logout included) also needs the session's CSRF token in `x-csrf-token`, and is
 * refused when `Origin` names another origin or `Sec-Fetch-Site` says another site; the login
 * form, which has no session yet, gets the Origin and Sec-Fetch-Site checks (and the cookie is
 * SameSite=Strict). The admin token check at login is AdminAuth's, with its per-address throttle.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { deleteCookie, getCookie, setCookie } from 'hono/cookie';
import type { AdminAuth } from '../admin-auth.ts';
import type { Config } from '../config.ts';
import { AuthenticationError, GatewayError, PermissionError, RateLimitError, RequestTooLargeError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { GatewayEnv } from '../app-env.ts';
import { publicBaseUrl, requestOrigin, TrustedProxies } from '../setup/public-url.ts';
import { dashboardApi, type DashboardApiDeps, type DashboardReports } from './api.ts';
import { explorerCsv, explorerReport } from './explorer.ts';
import { overviewReport } from './overview.ts';
import { DashboardSessions, SESSION_COOKIE, type Session } from './session.ts';

export type DashboardEnv = {
  Bindings: GatewayEnv['Bindings'];
  Variables: GatewayEnv['Variables'] & { session: Session };
};
type DashboardContext = Context<DashboardEnv>;

export interface DashboardDeps extends Omit<DashboardApiDeps, 'clock' | 'reports'> {
  auth: AdminAuth;
  /** SHA-256 of the admin token: the sessions' secret is derived from it. */
  adminTokenHash: Buffer;
  logger: Logger;
  clock?: () => number;
}

/** The overview and explorer reports (overview.ts, explorer.ts) over this gateway's store. */
function reportsOf({ store, catalog }: Pick<DashboardDeps, 'store' | 'catalog'>): DashboardReports {
  return {
    overview: (range, now) => overviewReport(store, catalog, range, now),
    explorer: (query, keys) => explorerReport(store, catalog, keys, query),
    csv: explorerCsv,
  };
}

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

/** Dashboard request bodies are small JSON or a login form. */
const MAX_DASHBOARD_BODY_BYTES = 64 * 1024;

const ASSETS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'assets');

interface Asset {
  body: string;
  type: string;
  etag: string;
}

function asset(path: string, type: string): Asset {
  const body = readFileSync(path, 'utf8');
  return { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` };
}

/** Chart.js's UMD build, from the installed package (served by the gateway itself). */
function chartJsPath(): string {
  return join(dirname(fileURLToPath(import.meta.resolve('chart.js'))), 'chart.umd.js');
}

let loaded: { files: Map<string, Asset>; shell: string; login: string } | undefined;

/** The static files and page templates, read once per process (they are part of the install). */
function loadAssets(): NonNullable<typeof loaded> {
  const js = 'text/javascript; charset=utf-8';
  loaded ??= {
    shell: readFileSync(join(ASSETS_DIR, 'index.html'), 'utf8'),
    login: readFileSync(join(ASSETS_DIR, 'login.html'), 'utf8'),
    files: new Map([
      ['app.js', asset(join(ASSETS_DIR, 'app.js'), js)],
      ['app.css', asset(join(ASSETS_DIR, 'app.css'), 'text/css; charset=utf-8')],
      ['icon.svg', asset(join(ASSETS_DIR, 'icon.svg'), 'image/svg+xml')],
      ['chart.umd.js', asset(chartJsPath(), js)],
    ]),
  };
  return loaded;
}

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch]!);
}

/** Fills `{{name}}` placeholders of a page template with escaped values. */
function render(template: string, values: Record<string, string>): string {
  return template.replace(/\{\{(\w+)\}\}/g, (_, name: string) => escapeHtml(values[name] ?? ''));
}

/** Sets the dashboard's security headers on whatever response the route made. */
function securityHeaders(): MiddlewareHandler<DashboardEnv> {
  return async function dashboardSecurityHeaders(c, next) {
    await next();
    const h = c.res.headers;
    h.set('content-security-policy', CONTENT_SECURITY_POLICY);
    h.set('x-content-type-options', 'nosniff');
    h.set('referrer-policy', 'no-referrer');
    h.set('x-frame-options', 'DENY');
    h.set('cross-origin-opener-policy', 'same-origin');
    h.set('cross-origin-resource-policy', 'same-origin');
    if (!h.has('cache-control')) h.set('cache-control', 'no-store');
  };
}

export function dashboardRoutes(deps: DashboardDeps): Hono<DashboardEnv> {
  const clock = deps.clock ?? Date.now;
  const sessions = new DashboardSessions(deps.adminTokenHash, deps.store, { logger: deps.logger, clock });
  const trusted = new TrustedProxies(deps.config.trustedProxies);
  const { files: assets, shell, login: loginPage } = loadAssets();
  const dashboard = new Hono<DashboardEnv>();

  /** This request's own origin (scheme from the socket or a trusted proxy, host from Host). */
  const ownOrigins = (c: DashboardContext): string[] => {
    const origins: string[] = [];
    if (deps.config.publicUrl) origins.push(new URL(deps.config.publicUrl).origin);
    try {
      origins.push(new URL(publicBaseUrl({ trustedProxies: trusted }, requestOrigin(c.env.incoming))).origin);
    } catch {
      // No usable Host: only the configured public URL (if any) is this gateway's origin.
    }
    return origins;
  };

  const overHttps = (c: DashboardContext): boolean => {
    try {
      return publicBaseUrl({ trustedProxies: trusted }, requestOrigin(c.env.incoming)).startsWith('https:');
    } catch {
      return requestOrigin(c.env.incoming).encrypted;
    }
  };

  /**
   * A change must come from a page of this gateway: refuses `Sec-Fetch-Site` other than
   * same-origin (or none: typed by the user) and an `Origin` that is not this gateway's.
   * Clients that send neither (curl, tests) are not browsers and cannot be made to forge.
   */
  const checkSameOrigin = (c: DashboardContext): void => {
    const site = c.req.header('sec-fetch-site');
    if (site !== undefined && site !== 'same-origin' && site !== 'none') {
      throw new PermissionError(`Dashboard: refused a request from another site (Sec-Fetch-Site: ${site.slice(0, 20)}).`);
    }
    const origin = c.req.header('origin');
    // Under Referrer-Policy: no-referrer a browser posts a form with `Origin: null`; its
    // Sec-Fetch-Site (which no page can set) then vouches for the origin.
    if (origin === 'null' && site === 'same-origin') return;
    if (origin !== undefined) {
      let presented: string | undefined;
      try {
        presented = new URL(origin).origin;
      } catch {
        presented = undefined;
      }
      if (!presented || !ownOrigins(c).includes(presented)) {
        throw new PermissionError('Dashboard: refused a request from another origin.');
      }
    }
  };

  const currentSession = (c: DashboardContext) => sessions.verify(getCookie(c, SESSION_COOKIE));

  /** API: a valid session, and for changes the CSRF token and the same-origin checks. */
  const requireSession: MiddlewareHandler<DashboardEnv> = async function dashboardSession(c, next) {
    const session = await currentSession(c);
    if (!session) throw new AuthenticationError('Dashboard: no valid session. Log in at /dashboard/login.');
    if (c.req.method !== 'GET' && c.req.method !== 'HEAD') {
      checkSameOrigin(c);
      if (!sessions.checkCsrf(session, c.req.header('x-csrf-token'))) {
        throw new PermissionError('Dashboard: missing or wrong CSRF token (x-csrf-token).');
      }
    }
    c.set('session', session);
    await next();
  };

  dashboard.use('*', securityHeaders());
  // /dashboard/ and /dashboard/keys/ are the pages too.
  dashboard.use('*', async function trailingSlash(c, next) {
    const url = new URL(c.req.url);
    if ((c.req.method === 'GET' || c.req.method === 'HEAD') && url.pathname.length > 1 && url.pathname.endsWith('/')) {
      return c.redirect(url.pathname.replace(/\/+$/, '') + url.search, 308);
    }
    await next();
  });
  dashboard.use(
    '*',
    bodyLimit({
      maxSize: MAX_DASHBOARD_BODY_BYTES,
      onError: () => {
        throw new RequestTooLargeError(MAX_DASHBOARD_BODY_BYTES);
      },
    }),
  );

  /**
   * A refused login answers with a redirect to the login page naming why (Post/Redirect/Get: a
   * reload does not post the token again, and the browser sees no failed load). The page shows
   * one of these fixed messages; nothing from the query string is echoed.
   */
  const loginMessage = (error: string | undefined, retry: string | undefined): string => {
    if (error === 'wrong-token') return 'Wrong admin token.';
    if (error === 'throttled') return `Too many wrong tokens from this address. Try again in ${/^\d{1,6}$/.test(retry ?? '') ? retry : 'a few'} s.`;
    if (error === 'cross-origin') return 'Refused: the login was not posted from this gateway\'s own page.';
    return '';
  };
  const refuseLogin = (c: DashboardContext, error: string, extra = '') => c.redirect(`/dashboard/login?error=${error}${extra}`, 303);

  dashboard.get('/login', async (c) => {
    if (await currentSession(c)) return c.redirect('/dashboard', 303);
    return c.html(render(loginPage, { message: loginMessage(c.req.query('error'), c.req.query('retry')) }));
  });

  dashboard.post('/login', async (c) => {
    try {
      checkSameOrigin(c);
    } catch {
      return refuseLogin(c, 'cross-origin');
    }
    const form = await c.req.parseBody().catch(() => ({}) as Record<string, unknown>);
    const token = typeof form.token === 'string' ? form.token.trim() : undefined;
    try {
      deps.auth.verify(token, c.env.incoming.socket.remoteAddress ?? 'unknown', c.get('requestId'), 'Dashboard');
    } catch (err) {
      if (err instanceof RateLimitError) return refuseLogin(c, 'throttled', `&retry=${err.retryAfterSeconds}`);
      if (err instanceof GatewayError && err.status === 401) return refuseLogin(c, 'wrong-token');
      throw err;
    }
    const now = clock();
    const { session, value } = sessions.issue(now);
    setCookie(c, SESSION_COOKIE, value, {
      path: '/dashboard',
      httpOnly: true,
      sameSite: 'Strict',
      secure: overHttps(c),
      maxAge: Math.floor((session.expiresAt - now) / 1000),
    });
    deps.logger.info({ requestId: c.get('requestId'), remoteAddress: c.env.incoming.socket.remoteAddress }, 'dashboard login');
    return c.redirect('/dashboard', 303);
  });

  dashboard.post('/logout', requireSession, async (c) => {
    await sessions.revoke(c.get('session'));
    deleteCookie(c, SESSION_COOKIE, { path: '/dashboard', httpOnly: true, sameSite: 'Strict', secure: overHttps(c) });
    return c.body(null, 204);
  });

  dashboard.get('/assets/:name', (c) => {
    const file = assets.get(c.req.param('name'));
    if (!file) return c.notFound();
    const headers = { 'content-type': file.type, etag: file.etag, 'cache-control': 'no-cache' };
    if (c.req.header('if-none-match') === file.etag) return c.body(null, 304, headers);
    return c.body(file.body, 200, headers);
  });

  dashboard.use('/api/*', requireSession);
  dashboard.route('/api', dashboardApi({ ...deps, clock, reports: reportsOf(deps) }));

  const page = async (c: DashboardContext) => {
    const session = await currentSession(c);
    if (!session) return c.redirect('/dashboard/login', 303);
    return c.html(render(shell, { csrf: sessions.csrfToken(session) }));
  };
  for (const path of ['/', '/keys', '/usage', '/live']) dashboard.get(path, page);

  return dashboard;
}
