/**
 * GET /metrics: Prometheus' text format, parsed by a real parser (parse-prometheus-text-format),
 * with series that move with traffic sent by the SDK, behind the admin token unless public, and
 * no key material in any label.
 */
import parsePrometheusTextFormat, { type MetricFamily } from 'parse-prometheus-text-format';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, MESSAGE, startStack, type Stack } from './helpers.ts';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ config: { cache: { enabled: true } } });
});
afterAll(async () => {
  await stack?.close();
});

async function scrape(target: Stack = stack, auth = true): Promise<{ status: number; text: string; families: Map<string, MetricFamily> }> {
  const response = await fetch(`${target.url}/metrics`, { headers: auth ? { authorization: `Bearer ${ADMIN_TOKEN}` } : {} });
  const text = await response.text();
  const families = new Map<string, MetricFamily>();
  if (response.status === 200) for (const family of parsePrometheusTextFormat(text)) families.set(family.name, family);
  return { status: response.status, text, families };
}

/**
 * A histogram's observation count over the series whose labels include `match`, from its
 * `_count` lines (the parser keeps a histogram's buckets but drops its count and sum).
 */
function histogramCount(text: string, name: string, match: Record<string, string> = {}): number {
  let count = 0;
  for (const line of text.split('\n')) {
    const m = new RegExp(`^${name}_count(?:\\{(.*)\\})? (\\S+)$`).exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(match).every(([k, v]) => labels[k] === v)) count += Number(m[2]);
  }
  return count;
}

/** The sum of a family's samples whose labels include `match`. */
function total(families: Map<string, MetricFamily>, name: string, match: Record<string, string> = {}): number {
  const family = families.get(name);
  if (!family) return 0;
  return family.metrics
    .filter((m) => Object.entries(match).every(([k, v]) => m.labels?.[k] === v))
    .reduce((sum, m) => sum + Number(m.value ?? m.count ?? 0), 0);
}

describe('/metrics', () => {
  it('needs the admin token, and is parsed by a Prometheus parser', async () => {
    expect((await scrape(stack, false)).status).toBe(401);
    const { status, families } = await scrape();
    expect(status).toBe(200);
    for (const name of [
      'claudcode_requests_total', 'claudcode_tokens_total', 'claudcode_request_duration_seconds', 'claudcode_upstream_duration_seconds',
      'claudcode_in_flight_requests', 'claudcode_cache_entries', 'claudcode_cache_bytes', 'claudcode_upstream_up',
      'claudcode_process_cpu_seconds_total', 'claudcode_nodejs_eventloop_lag_seconds',
    ]) {
      expect(families.has(name), name).toBe(true);
    }
    expect(families.get('claudcode_request_duration_seconds')!.type).toBe('HISTOGRAM');
    expect(families.get('claudcode_upstream_up')!.metrics[0]).toMatchObject({ labels: { upstream: expect.any(String) }, value: '1' });
  });

  it('moves with traffic: requests by model, status, outcome and cache; tokens by kind; latency; upstream attempts', async () => {
    const { key } = await stack.newKey({ rpm: 1000 });
    const beforeScrape = await scrape();
    const before = beforeScrape.families;
    const client = stack.client(key);
    const first = await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [MESSAGE] });
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [MESSAGE] }); // a cache hit
    await client.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [{ role: 'user', content: 'stream me' }] }).finalMessage();
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [{ role: 'user', content: 'refuse me' }] }, { headers: { 'x-fake-status': '400' } }).catch(() => undefined);
    const afterScrape = await scrape();
    const after = afterScrape.families;
    const delta = (name: string, match: Record<string, string> = {}) => total(after, name, match) - total(before, name, match);

    expect(delta('claudcode_requests_total', { model: 'claude-haiku-4-5', endpoint: 'messages' })).toBe(4);
    expect(delta('claudcode_requests_total', { cache: 'hit', status: '200' })).toBe(1);
    expect(delta('claudcode_requests_total', { cache: 'miss', status: '200', outcome: 'ok' })).toBe(2);
    expect(delta('claudcode_requests_total', { cache: 'miss', status: '400' })).toBe(1);
    expect(delta('claudcode_requests_total', { status: '400', outcome: 'error' })).toBe(1);
    expect(delta('claudcode_tokens_total', { kind: 'output' })).toBeGreaterThan(first.usage.output_tokens);
    expect(delta('claudcode_tokens_total', { kind: 'input' })).toBeGreaterThan(first.usage.input_tokens);
    const observed = (name: string, match: Record<string, string> = {}) => histogramCount(afterScrape.text, name, match) - histogramCount(beforeScrape.text, name, match);
    expect(observed('claudcode_request_duration_seconds', { endpoint: 'messages' })).toBe(4);
    expect(observed('claudcode_upstream_duration_seconds', { result: 'ok' })).toBe(3);
    expect(delta('claudcode_cache_entries')).toBeGreaterThanOrEqual(1);
  });

  it('carries no key material in any label by default, and key ids only when per-key labels are on', async () => {
    const { key, id } = await stack.newKey();
    await stack.client(key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] }, { headers: { 'x-no-cache': 'true' } });
    const { text } = await scrape();
    expect(text).not.toContain(key);
    expect(text).not.toContain(id);
    expect(text).not.toMatch(/sk-cc-/);

    const perKey = await startStack({ config: { metrics: { perKeyLabels: true, public: true } } });
    try {
      const { key: k2, id: id2 } = await perKey.newKey();
      await perKey.client(k2).messages.create({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] });
      const open = await scrape(perKey, false);
      expect(open.status).toBe(200);
      expect(total(open.families, 'claudcode_requests_total', { key: id2 })).toBe(1);
      expect(open.text).not.toContain(k2);
    } finally {
      await perKey.close();
    }
  });

  it('counts failed upstream attempts by what failed, and the upstream as down while its breaker is open', async () => {
    const broken = await startStack({ config: { failover: { maxAttempts: 2, breakerFailures: 2, backoffBaseMs: 1, backoffMaxMs: 2 } } });
    try {
      const { key } = await broken.newKey();
      await broken.client(key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] }, { headers: { 'x-fake-status': '529' } }).catch(() => undefined);
      const { families } = await scrape(broken);
      expect(total(families, 'claudcode_upstream_attempts_total', { result: '529' })).toBe(2);
      expect(total(families, 'claudcode_upstream_up')).toBe(0);
    } finally {
      await broken.close();
    }
  });
});
