/**
 * GET /setup.sh and GET /setup.ps1: the setup scripts (scripts.ts) for this gateway's public URL
 * (public-url.ts), generated per request since the URL may come from the request.
 *
 * No auth: the scripts hold no secret (the key is asked for when they run). Outside /v1, so
 * maintenance mode does not block them.
 *
 * Served as `text/plain; charset=utf-8`, not `text/x-shellscript`: a browser shows plain text
 * instead of downloading it, and reading the script first is what the README recommends. `curl
 * | bash` and PowerShell's `irm` do not look at the type (irm returns text/plain as a string,
 * which is what `iex` takes). `nosniff` keeps browsers from treating it as anything else;
 * `no-store` because the content follows the request's Host and the config.
 */
import { Hono } from 'hono';
import type { Config } from '../config.ts';
import type { GatewayEnv } from '../app-env.ts';
import { publicBaseUrl, requestOrigin, TrustedProxies } from './public-url.ts';
import { scriptProject, setupPowerShellScript, setupShellScript } from './scripts.ts';

const SCRIPT_HEADERS = {
  'content-type': 'text/plain; charset=utf-8',
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
};

export function setupScriptRoutes(config: Pick<Config, 'publicUrl' | 'trustedProxies'>): Hono<GatewayEnv> {
  const urlOptions = { publicUrl: config.publicUrl, trustedProxies: new TrustedProxies(config.trustedProxies) };
  const app = new Hono<GatewayEnv>();
  app.get('/setup.sh', (c) => {
    const url = publicBaseUrl(urlOptions, requestOrigin(c.env.incoming));
    return c.body(setupShellScript(url, scriptProject(url)), 200, SCRIPT_HEADERS);
  });
  app.get('/setup.ps1', (c) => {
    const url = publicBaseUrl(urlOptions, requestOrigin(c.env.incoming));
    return c.body(setupPowerShellScript(url, scriptProject(url)), 200, SCRIPT_HEADERS);
  });
  return app;
}
