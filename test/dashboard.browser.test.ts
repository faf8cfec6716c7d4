/**
 * The dashboard in a real browser: playwright-core driving Debian's chromium against a real
 * gateway that served real SDK traffic (JSON, a stream, a cache hit, an upstream error).
 *
 * Log in (a wrong token refused), the overview's charts drawn from that traffic, a key created
 * in the page, used with the SDK, disabled in the page (the SDK then gets 401), no key material
 * on any page or API answer after its creation, a phone-sized viewport without horizontal
 * overflow, logout ending the session, and no console error anywhere.
 *
 * Without chromium (/usr/bin/chromium, /usr/bin/chromium-browser or CLAUDCODE_TEST_CHROMIUM) the
 * suite is skipped and says so; in CI (CI set, as .ci/run does) a missing browser fails instead.
 *
 * `npm run docs:screenshots` runs this suite with CLAUDCODE_SCREENSHOTS=1: the gateway is first
 * given a week of realistic usage (dashboard-seed.ts), and each page is saved to
 * docs/dashboard-*.png for the README.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuthenticationError } from '@anthropic-ai/sdk';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, MESSAGE, startStack, type Stack } from './helpers.ts';
import { seedRealisticUsage } from './dashboard-seed.ts';

/** The browser: CLAUDCODE_TEST_CHROMIUM when set (only it), else Debian's chromium. */
const CHROMIUM = (process.env.CLAUDCODE_TEST_CHROMIUM ? [process.env.CLAUDCODE_TEST_CHROMIUM] : ['/usr/bin/chromium', '/usr/bin/chromium-browser']).find((p) => existsSync(p));
if (!CHROMIUM) {
  if (process.env.CI) throw new Error('CI: no chromium found (/usr/bin/chromium, /usr/bin/chromium-browser or CLAUDCODE_TEST_CHROMIUM); .ci/run should have installed it');
  const tried = process.env.CLAUDCODE_TEST_CHROMIUM ?? '/usr/bin/chromium or /usr/bin/chromium-browser';
  process.stderr.write(`\n[claudcode tests] skipping the dashboard browser suite: no chromium at ${tried} (apt-get install chromium, or set CLAUDCODE_TEST_CHROMIUM).\n`);
}
const SCREENSHOTS = process.env.CLAUDCODE_SCREENSHOTS === '1';
const DOCS = join(import.meta.dirname, '..', 'docs');
const DESKTOP = { width: 1366, height: 768 };
const PHONE = { width: 390, height: 844 };
const KEY_MATERIAL = /sk-cc-[0-9A-Za-z]{32}/;

let stack: Stack;
let browser: Browser;
let desktop: BrowserContext;
let page: Page;
let dataDir: string | undefined;
/** Console errors and page errors of every page, as "url: text". */
const consoleErrors: string[] = [];
/** Every dashboard API answer's body but the one that created a key. */
const apiBodies: Array<{ url: string; body: string }> = [];
/** The SDK traffic sent before the browser starts. */
const traffic = { requests: 0, errors: 0, cacheHits: 0 };

function watch(context: BrowserContext): void {
  context.on('page', (p) => {
    p.on('console', (message) => {
      if (message.type() === 'error') consoleErrors.push(`${p.url()}: ${message.text()}`);
    });
    p.on('pageerror', (err) => consoleErrors.push(`${p.url()}: ${err.message}`));
  });
  context.on('response', async (response) => {
    const url = new URL(response.url());
    if (!url.pathname.startsWith('/dashboard/api/')) return;
    if (response.request().method() === 'POST' && url.pathname === '/dashboard/api/keys') return;
    apiBodies.push({ url: url.pathname + url.search, body: await response.text().catch(() => '') });
  });
}

async function sendTraffic(): Promise<void> {
  const alice = await stack.newKey({ name: 'alice' });
  const client = stack.client(alice.key);
  const ask = { model: 'claude-sonnet-4-6', max_tokens: 200, messages: [MESSAGE] };
  await client.messages.create(ask);
  const again = await client.messages.create(ask).withResponse();
  expect(again.response.headers.get('x-cache')).toBe('HIT');
  const stream = client.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 200, messages: [{ role: 'user', content: 'Stream this, please' }] });
  await stream.finalMessage();
  await expect(client.messages.create(ask, { headers: { 'x-fake-status': '400', 'x-no-cache': 'true' } })).rejects.toMatchObject({ status: 400 });
  Object.assign(traffic, { requests: 4, errors: 1, cacheHits: 1 });
  await stack.gateway.services.usage.flush();
}

/** Saves the page to docs/dashboard-<name>.png (whole page; a phone's first screen only). */
async function shot(p: Page, name: string, fullPage = true): Promise<void> {
  if (!SCREENSHOTS) return;
  mkdirSync(DOCS, { recursive: true });
  await p.screenshot({ path: join(DOCS, `dashboard-${name}.png`), fullPage });
}

/** The page's API, fetched by the page itself (with its session). */
function pageFetch(p: Page, path: string): Promise<{ status: number; type: string | null; disposition: string | null; text: string }> {
  return p.evaluate(async (url) => {
    const res = await fetch(url);
    return { status: res.status, type: res.headers.get('content-type'), disposition: res.headers.get('content-disposition'), text: await res.text() };
  }, path);
}

/** Opens a dashboard page by its nav link and waits for what it loads. */
async function open(p: Page, name: 'overview' | 'keys' | 'usage' | 'live'): Promise<void> {
  await p.click(`[data-nav="${name}"]`);
  const ready = {
    overview: '#tiles .tile',
    keys: '#keys-table tbody tr',
    usage: '#usage-table tbody tr',
    live: '#upstreams-table tbody tr',
  }[name];
  await p.locator(`#page-${name}`).waitFor({ state: 'visible' });
  await p.locator(ready).first().waitFor();
}

const keyRow = (p: Page, name: string) => p.locator('#keys-table tbody tr', { has: p.locator('.key-name', { hasText: new RegExp(`^${name}$`) }) });

describe.skipIf(!CHROMIUM)('dashboard in a browser', { timeout: 30_000 }, () => {
  beforeAll(async () => {
    const config = { cache: { enabled: true } };
    if (SCREENSHOTS) {
      // A week of usage before the gateway starts, so budgets count it too.
      dataDir = mkdtempSync(join(tmpdir(), 'claudcode-shots-'));
      const upstreams = (fake: { url: string }) => ({ ...config, upstreams: [{ name: 'primary', url: fake.url, key: 'sk-ant-fake-upstream-key' }, { name: 'backup', url: fake.url, key: 'sk-ant-fake-upstream-key', priority: 1 }] });
      const seeding = await startStack({ config: upstreams, dataDir });
      await seedRealisticUsage(seeding);
      await seeding.close();
      stack = await startStack({ config: upstreams, dataDir });
    } else {
      stack = await startStack({ config });
    }
    await sendTraffic();
    browser = await chromium.launch({ executablePath: CHROMIUM!, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
    desktop = await browser.newContext({ viewport: DESKTOP, baseURL: stack.url });
    await desktop.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: stack.url });
    watch(desktop);
    page = await desktop.newPage();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await stack?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('refuses a wrong admin token and logs in with the right one', async () => {
    await page.goto('/dashboard');
    expect(new URL(page.url()).pathname).toBe('/dashboard/login');
    await shot(page, 'login');
    await page.fill('#token', 'this-is-not-the-admin-token');
    await Promise.all([page.waitForURL('**/dashboard/login?error=wrong-token'), page.click('button[type="submit"]')]);
    await expect(page.locator('#login-error').textContent()).resolves.toBe('Wrong admin token.');
    await page.fill('#token', ADMIN_TOKEN);
    await Promise.all([page.waitForURL((url) => url.pathname === '/dashboard'), page.click('button[type="submit"]')]);
    await page.locator('#tiles .tile').first().waitFor();
    const cookies = await desktop.cookies();
    expect(cookies).toEqual([expect.objectContaining({ name: 'claudcode_session', httpOnly: true, sameSite: 'Strict', path: '/dashboard' })]);
    expect(cookies[0]!.value).not.toContain(ADMIN_TOKEN);
  });

  it('draws the overview charts from the SDK traffic', async () => {
    const api = JSON.parse((await pageFetch(page, '/dashboard/api/overview?range=day')).text);
    expect(api.totals.requests).toBeGreaterThanOrEqual(traffic.requests);
    expect(api.totals.cacheHits).toBeGreaterThanOrEqual(traffic.cacheHits);
    expect(api.totals.savedTokens).toBeGreaterThan(0);
    expect(api.totals.tokens.output).toBeGreaterThan(0);
    expect(Object.values(api.totals.errors as Record<string, number>).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(traffic.errors);
    expect(api.totals.p50Ms).not.toBeNull();
    // Every chart exists, is a Chart.js chart, and holds non-zero data.
    const sums = await page.evaluate(() => {
      const ids = ['chart-requests', 'chart-tokens', 'chart-cost', 'chart-cache', 'chart-latency'];
      const w = globalThis as any;
      return Object.fromEntries(ids.map((id) => {
        const chart: { data: { datasets: Array<{ data: Array<number | null> }> } } | undefined = w.Chart.getChart(id);
        const canvas: { width: number } | null = w.document.getElementById(id);
        const total = chart ? chart.data.datasets.reduce((sum, d) => sum + d.data.reduce<number>((a, v) => a + (v ?? 0), 0), 0) : -1;
        return [id, { total, width: canvas?.width ?? 0 }];
      }));
    });
    for (const [id, { total, width }] of Object.entries(sums)) {
      expect(total, id).toBeGreaterThan(0);
      expect(width, id).toBeGreaterThan(0);
    }
    // The tiles show the totals.
    const tiles = await page.locator('#tiles').textContent();
    expect(tiles).toContain('Requests');
    expect(tiles).toContain('Cache hit rate');
    // Another range redraws.
    await page.click('[data-range="hour"]');
    await page.waitForFunction(() => (globalThis as any).document.querySelector('[data-range="hour"]')?.getAttribute('aria-pressed') === 'true');
    await page.waitForFunction(() => ((globalThis as any).Chart.getChart('chart-requests')?.data.labels.length ?? 0) >= 60);
    if (SCREENSHOTS) {
      await page.click('[data-range="week"]');
      await page.waitForFunction(() => (globalThis as any).Chart.getChart('chart-requests')?.data.labels.length <= 8);
      await shot(page, 'overview');
    }
  });

  let createdKey = '';

  it('creates a key in the page, shows it once with a copy button, and the SDK can use it', async () => {
    await open(page, 'keys');
    await page.click('#show-create');
    await page.fill('#create-form [name="name"]', 'dashboard-made');
    await page.fill('#create-form [name="rpm"]', '20');
    await page.fill('#create-form [name="budget_tokens"]', '250000');
    await page.check('#create-form input[name="models"][value="claude-sonnet-4-6"]');
    await page.click('#create-form button[type="submit"]');
    await page.locator('#new-key').waitFor({ state: 'visible' });
    createdKey = (await page.locator('#new-key-value').textContent())!;
    expect(createdKey).toMatch(/^sk-cc-[0-9A-Za-z]{32}$/);
    await page.click('#copy-key');
    await expect(page.evaluate(() => (globalThis as any).navigator.clipboard.readText())).resolves.toBe(createdKey);
    // The new key's row, with its limits and budget bar.
    const row = keyRow(page, 'dashboard-made');
    await row.waitFor();
    expect(await row.textContent()).toContain('claude-sonnet-4-6');
    expect(await row.locator('.meter').count()).toBe(1);

    const client = stack.client(createdKey);
    const message = await client.messages.create({ model: 'claude-sonnet-4-6', max_tokens: 100, messages: [{ role: 'user', content: 'From the dashboard key' }] });
    expect(message.type).toBe('message');

    // Done: the key leaves the page for good.
    await page.click('#dismiss-key');
    expect(await page.locator('#new-key').isHidden()).toBe(true);
    expect(await page.content()).not.toContain(createdKey);
  });

  it('edits a key, disables it in the page (the SDK gets 401) and enables it again', async () => {
    const row = keyRow(page, 'dashboard-made');
    await row.locator('[data-action="edit"]').click();
    await page.locator('#edit-dialog').waitFor({ state: 'visible' });
    await page.fill('#edit-form [name="rpm"]', '9');
    await page.click('#edit-form button[type="submit"]');
    await page.locator('#edit-dialog').waitFor({ state: 'hidden' });
    await expect.poll(() => row.locator('td[data-label="RPM"]').textContent()).toBe('9');

    await row.locator('[data-action="disable"]').click();
    await expect.poll(() => row.locator('.badge').textContent()).toBe('disabled');
    const client = stack.client(createdKey);
    await expect(client.messages.create({ model: 'claude-sonnet-4-6', max_tokens: 100, messages: [MESSAGE] })).rejects.toBeInstanceOf(AuthenticationError);
    if (SCREENSHOTS) await shot(page, 'keys');

    await row.locator('[data-action="enable"]').click();
    await expect.poll(() => row.locator('.badge').textContent()).toBe('active');
    await client.messages.create({ model: 'claude-sonnet-4-6', max_tokens: 100, messages: [MESSAGE] });
  });

  it('deletes a key after a confirmation', async () => {
    await stack.newKey({ name: 'short-lived' });
    await page.reload();
    await keyRow(page, 'short-lived').waitFor();
    page.once('dialog', (dialog) => void dialog.accept());
    await keyRow(page, 'short-lived').locator('[data-action="delete"]').click();
    await keyRow(page, 'short-lived').waitFor({ state: 'detached' });
  });

  it('explores usage by model and exports it as CSV', async () => {
    await open(page, 'usage');
    await page.selectOption('#usage-form [name="by"]', 'model');
    await expect.poll(() => page.locator('#usage-table tbody').textContent()).toContain('claude-haiku-4-5');
    expect(await page.locator('#usage-table tbody').textContent()).toContain('claude-sonnet-4-6');
    const href = (await page.locator('#csv-link').getAttribute('href'))!;
    expect(href).toContain('by=model');
    expect(href).toContain('format=csv');
    const csv = await pageFetch(page, href);
    expect(csv.status).toBe(200);
    expect(csv.type).toBe('text/csv; charset=utf-8');
    expect(csv.disposition).toMatch(/^attachment; filename="claudcode-usage-by-model-/);
    expect(csv.text.split('\r\n')[0]).toMatch(/^model,label,requests,errors,/);
    await page.selectOption('#usage-form [name="by"]', 'key');
    await expect.poll(() => page.locator('#usage-table tbody').textContent()).toContain('alice');
    await shot(page, 'usage');
  });

  it('shows live state: upstreams and their breakers, maintenance, keys', { timeout: 40_000 }, async () => {
    await open(page, 'live');
    const upstreams = await page.locator('#upstreams-table tbody').textContent();
    expect(upstreams).toContain('closed');
    expect(await page.locator('#live-tiles').textContent()).toContain('embedded');
    // Each key's requests in the last minute against its rpm, as the limiter counts them: alice's
    // 4 and the dashboard key's 2 admitted ones (the one refused while disabled never reached the
    // limits), unless this machine is so slow that they have left the minute.
    const live = JSON.parse((await pageFetch(page, '/dashboard/api/live')).text);
    const alice = live.keys.find((k: { name: string }) => k.name === 'alice');
    const made = live.keys.find((k: { name: string }) => k.name === 'dashboard-made');
    expect([typeof alice.rpm_used, typeof made.rpm_used]).toEqual(['number', 'number']);
    const keys = page.locator('#live-keys-table tbody');
    await expect.poll(() => keys.locator('tr', { hasText: 'alice' }).textContent()).toContain(`${alice.rpm_used} / 60`);
    await expect.poll(() => keys.locator('tr', { hasText: 'dashboard-made' }).textContent()).toContain(`${made.rpm_used} / 9`);
    if (alice.rpm_used > 0) expect([alice.rpm_used, made.rpm_used]).toEqual([4, 2]);
    // It refreshes by itself.
    const first = await page.locator('#live-updated').textContent();
    await expect.poll(() => page.locator('#live-updated').textContent(), { timeout: 8000 }).not.toBe(first);
    if (SCREENSHOTS) {
      // A few slow requests in flight while the picture is taken.
      const client = stack.client(createdKey);
      const slow = [1, 2, 3].map((n) =>
        client.messages.create({ model: 'claude-sonnet-4-6', max_tokens: 100, messages: [{ role: 'user', content: `slow ${n}` }] }, { headers: { 'x-fake-latency-ms': '6000' } }),
      );
      await expect.poll(() => page.locator('#live-keys-table tbody tr', { hasText: 'dashboard-made' }).textContent(), { timeout: 8000 }).toContain('3 / 5');
      await shot(page, 'live');
      await Promise.all(slow);
    }
  });

  it('shows no key material on any page or API answer after creation', async () => {
    for (const name of ['overview', 'keys', 'usage', 'live'] as const) {
      await open(page, name);
      const html = await page.content();
      expect(html, name).not.toContain(createdKey);
      expect(html, name).not.toMatch(KEY_MATERIAL);
      // Nor in what a script could read: storage, the URL.
      const stored = await page.evaluate(() => {
        const w = globalThis as any;
        return JSON.stringify([w.location.href, { ...w.localStorage }, { ...w.sessionStorage }]);
      });
      expect(stored).not.toMatch(KEY_MATERIAL);
    }
    expect(apiBodies.length).toBeGreaterThan(5);
    for (const { url, body } of apiBodies) {
      expect(body, url).not.toContain(createdKey);
      expect(body, url).not.toMatch(KEY_MATERIAL);
    }
  });

  it('renders on a phone without horizontal overflow', async () => {
    const phone = await browser.newContext({ viewport: PHONE, deviceScaleFactor: 2, isMobile: true, hasTouch: true, baseURL: stack.url });
    watch(phone);
    await phone.addCookies(await desktop.cookies());
    const p = await phone.newPage();
    try {
      await p.goto('/dashboard');
      await p.locator('#tiles .tile').first().waitFor();
      for (const name of ['overview', 'keys', 'usage', 'live'] as const) {
        await open(p, name);
        const overflow = await p.evaluate(() => {
          const root = (globalThis as any).document.documentElement;
          return root.scrollWidth - root.clientWidth;
        });
        expect(overflow, name).toBeLessThanOrEqual(0);
        if (name === 'keys') await shot(p, 'phone-keys', false);
        if (name === 'overview') await shot(p, 'phone-overview', false);
      }
    } finally {
      await phone.close();
    }
  });

  it('logs out: the session ends (the API answers 401 to the old cookie)', async () => {
    const cookie = (await desktop.cookies()).find((c) => c.name === 'claudcode_session')!.value;
    await Promise.all([page.waitForURL('**/dashboard/login'), page.click('#logout')]);
    expect(await desktop.cookies()).toEqual([]);
    const res = await request(`${stack.url}/dashboard/api/keys`, { headers: { cookie: `claudcode_session=${cookie}` } });
    expect(res.statusCode).toBe(401);
    await res.body.text();
    await page.goto('/dashboard/keys');
    expect(new URL(page.url()).pathname).toBe('/dashboard/login');
  });

  it('logged no console errors on any page', () => {
    expect(consoleErrors).toEqual([]);
  });
});
