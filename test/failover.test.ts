/**
 * The upstream pool through the real gateway and the real SDK: failover between upstreams,
 * retries and their bounds, retry-after, the circuit breaker, a refused upstream credential,
 * timeouts, client aborts, and which upstream served each request.
 */
import Anthropic, { type APIError } from '@anthropic-ai/sdk';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../src/config.ts';
import { startFakeUpstream, type FakeUpstream, type FakeUpstreamOptions } from '../src/fake-upstream/server.ts';
import { MESSAGE, startStack, type Stack } from './helpers.ts';
import { freePort } from './ports.ts';

const HAIKU = 'claude-haiku-4-5';

/** Fake upstreams started by a test, closed after it. */
const fakes: FakeUpstream[] = [];
async function fakeUpstream(options: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const fake = await startFakeUpstream(options);
  fakes.push(fake);
  return fake;
}

const stacks: Stack[] = [];
/** A gateway whose upstreams `upstreams` names, given the stack's own fake upstream. */
async function gatewayWith(upstreams: (stackFake: FakeUpstream) => ConfigInput['upstreams'], config: Partial<ConfigInput> = {}): Promise<Stack> {
  const stack = await startStack({
    config: (fake) => ({
      ...config,
      upstreams: upstreams(fake),
      failover: { backoffBaseMs: 20, backoffMaxMs: 200, ...config.failover },
    }),
  });
  stacks.push(stack);
  return stack;
}

afterEach(async () => {
  await Promise.all(stacks.splice(0).map((s) => s.close()));
  await Promise.all(fakes.splice(0).map((f) => f.close()));
});

async function deadUrl(): Promise<string> {
  return `http://127.0.0.1:${await freePort()}`;
}

async function usageRows(stack: Stack) {
  await stack.gateway.services.usage.flush();
  return stack.gateway.store.usageReport({ by: 'upstream' });
}

async function readyUpstreams(stack: Stack): Promise<Array<{ name: string; state: string }>> {
  const body = (await (await fetch(`${stack.url}/health/ready`)).json()) as { upstreams: Array<{ name: string; state: string }> };
  return body.upstreams;
}

async function until(check: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('failover', () => {
  it('serves every request, JSON and streamed, through the one healthy upstream of three', async () => {
    const busy = await fakeUpstream({ fault: { status: 529 } });
    const dead = await deadUrl();
    const stack = await gatewayWith((fake) => [
      { name: 'dead', url: dead, key: 'k', priority: 0 },
      { name: 'busy', url: busy.url, key: busy.apiKey, priority: 1 },
      { name: 'good', url: fake.url, key: fake.apiKey, priority: 2 },
    ], { failover: { breakerFailures: 3 } });
    const good = stack.fake;
    const { key } = await stack.newKey({ rpm: 1000 });
    const client = stack.client(key);

    for (let i = 0; i < 8; i++) {
      const message = await client.messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] });
      expect(message.content[0]).toMatchObject({ type: 'text' });
      const streamed = await client.messages.stream({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] }).finalMessage();
      expect(streamed.stop_reason).toBe('end_turn');
    }
    expect(good.requests.filter((r) => r.path === '/v1/messages')).toHaveLength(16);
    // Once its breaker opened (3 failures in a row), the busy upstream was no longer tried.
    expect(busy.requests.length).toBe(3);

    const rows = await usageRows(stack);
    expect(rows.map((r) => [r.group, r.requests])).toEqual([['good', 16]]);
    const states = Object.fromEntries((await readyUpstreams(stack)).map((u) => [u.name, u.state]));
    expect(states).toEqual({ dead: 'open', busy: 'open', good: 'closed' });
  });

  it('fails over when an upstream cuts a JSON answer or its stream before the first event', async () => {
    const cutting = await fakeUpstream({ fault: { cutAfter: 0 } });
    const dropping = await fakeUpstream({ fault: { dropConnection: true } });
    const stack = await gatewayWith((fake) => [
      { name: 'cutting', url: cutting.url, key: cutting.apiKey, priority: 0 },
      { name: 'dropping', url: dropping.url, key: dropping.apiKey, priority: 1 },
      { name: 'good', url: fake.url, key: fake.apiKey, priority: 2 },
    ]);
    const { key } = await stack.newKey();
    const message = await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] });
    expect(message.stop_reason).toBe('end_turn');
    expect(cutting.requests).toHaveLength(1);
    expect(dropping.requests).toHaveLength(1);
  });

  it('waits out an upstream\'s retry-after when it is within the retry window, and passes a longer one on', async () => {
    const stack = await gatewayWith((fake) => [{ name: 'only', url: fake.url, key: fake.apiKey }], {
      failover: { retryWithinMs: 3000 },
    });
    const fake = stack.fake;
    const { key } = await stack.newKey();
    fake.queueFault({ status: 429, retryAfter: '1' });
    const message = await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] });
    expect(message.type).toBe('message');
    const [first, second] = fake.requests;
    expect(second!.receivedAt - first!.receivedAt).toBeGreaterThanOrEqual(950);

    // retry-after: 30 is past the 3 s window: no wait, the 429 goes to the client as it came.
    fake.reset();
    fake.queueFault({ status: 429, retryAfter: '30' });
    const started = Date.now();
    const err = (await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] }).catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(429);
    expect(err.headers?.get('retry-after')).toBe('30');
    expect(Date.now() - started).toBeLessThan(2000);
    expect(fake.requests).toHaveLength(1);
  });

  it('retries a 529 with backoff up to maxAttempts, then relays the upstream\'s error', async () => {
    const stack = await gatewayWith((fake) => [{ name: 'only', url: fake.url, key: fake.apiKey }], {
      failover: { maxAttempts: 3, breakerFailures: 100 },
    });
    const fake = stack.fake;
    const { key } = await stack.newKey();
    fake.setFault({ status: 529 });
    const err = (await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] }).catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(529);
    expect((err.error as { error: { type: string } }).error.type).toBe('overloaded_error');
    expect(fake.requests).toHaveLength(3);
    // Backoff between rounds: at least half of 20 ms, then of 40 ms.
    expect(fake.requests[2]!.receivedAt - fake.requests[0]!.receivedAt).toBeGreaterThanOrEqual(25);

    fake.setFault(undefined);
    const ok = await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] });
    expect(ok.type).toBe('message');
    const rows = await usageRows(stack);
    expect(rows.find((r) => r.group === 'only')).toMatchObject({ requests: 2, errors: 1 });
  });

  it('never retries once the client has bytes: a stream cut mid-way ends in an SSE error, its output billed', async () => {
    const spare = await fakeUpstream();
    const stack = await gatewayWith((fake) => [
      { name: 'first', url: fake.url, key: fake.apiKey, priority: 0 },
      { name: 'spare', url: spare.url, key: spare.apiKey, priority: 1 },
    ]);
    const first = stack.fake;
    const { key, id } = await stack.newKey();
    const stream = stack.client(key).messages.stream(
      { model: HAIKU, max_tokens: 200, messages: [MESSAGE] },
      { headers: { 'x-fake-cut-after': '5', 'x-fake-output-tokens': '100' } },
    );
    const texts: string[] = [];
    stream.on('text', (t) => texts.push(t));
    const err = await stream.finalMessage().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect((err as Error).message).toMatch(/upstream stream ended/);
    expect(texts.length).toBe(5);
    expect(first.requests).toHaveLength(1);
    expect(spare.requests).toHaveLength(0);
    await stack.gateway.services.usage.flush();
    const [row] = await stack.gateway.store.usageReport({ keyId: id, by: 'upstream' });
    expect(row).toMatchObject({ group: 'first', requests: 1 });
    expect(row!.outputTokens).toBeGreaterThanOrEqual(5);
  });

  it('opens a failing upstream\'s breaker, skips it, and closes it after a successful probe', async () => {
    const flaky = await fakeUpstream({ fault: { status: 500 } });
    const stack = await gatewayWith((fake) => [
      { name: 'flaky', url: flaky.url, key: flaky.apiKey, priority: 0 },
      { name: 'good', url: fake.url, key: fake.apiKey, priority: 1 },
    ], { failover: { breakerFailures: 2, breakerCooldownMs: 400 } });
    const { key } = await stack.newKey({ rpm: 1000 });
    const ask = () => stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] });

    for (let i = 0; i < 6; i++) await ask();
    expect(flaky.requests).toHaveLength(2);
    expect((await readyUpstreams(stack)).find((u) => u.name === 'flaky')!.state).toBe('open');

    // The upstream recovers; after the cooldown one request probes it, and it is used again.
    flaky.setFault(undefined);
    await until(async () => (await readyUpstreams(stack)).find((u) => u.name === 'flaky')!.state === 'half-open', 2000);
    await ask();
    expect(flaky.requests).toHaveLength(3);
    expect((await readyUpstreams(stack)).find((u) => u.name === 'flaky')!.state).toBe('closed');
    await ask();
    expect(flaky.requests).toHaveLength(4);
    expect(stack.logs.join('')).toMatch(/circuit open/);
    expect(stack.logs.join('')).toMatch(/circuit closed/);
  });

  it('still tries an upstream whose breaker is open when no other can serve', async () => {
    const stack = await gatewayWith((fake) => [{ name: 'only', url: fake.url, key: fake.apiKey }], {
      failover: { maxAttempts: 1, breakerFailures: 1, breakerCooldownMs: 60_000 },
    });
    const fake = stack.fake;
    const { key } = await stack.newKey();
    const failed = (await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] }, { headers: { 'x-fake-status': '500' } }).catch((e: unknown) => e)) as APIError;
    expect(failed.status).toBe(500);
    expect((await readyUpstreams(stack))[0]!.state).toBe('open');
    const ok = await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] });
    expect(ok.type).toBe('message');
    expect((await readyUpstreams(stack))[0]!.state).toBe('closed');
    expect(fake.requests).toHaveLength(2);
  });

  it('skips an upstream that refuses the gateway\'s credential, and says so in the log', async () => {
    const wrongKey = await fakeUpstream({ apiKey: 'sk-ant-the-real-one' });
    const stack = await gatewayWith((fake) => [
      { name: 'stale-key', url: wrongKey.url, key: 'sk-ant-revoked-credential', priority: 0 },
      { name: 'good', url: fake.url, key: fake.apiKey, priority: 1 },
    ], { failover: { breakerFailures: 100 } });
    const { key } = await stack.newKey();
    for (let i = 0; i < 2; i++) {
      const message = await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] });
      expect(message.type).toBe('message');
    }
    // One attempt per request: a 401 is not retried on the same upstream.
    expect(wrongKey.requests).toHaveLength(2);
    const logs = stack.logs.join('');
    expect(logs).toMatch(/refused the gateway's credential.*|"upstream":"stale-key"/);
    expect(logs).toContain('"upstream":"stale-key"');
    expect(logs).not.toContain('sk-ant-revoked-credential');
    expect(logs).not.toContain(key);
  });

  it('answers 502 when the only upstream refuses the credential (never a 401 the client would blame on its key)', async () => {
    const wrongKey = await fakeUpstream({ apiKey: 'sk-ant-the-real-one' });
    const stack = await gatewayWith(() => [{ name: 'stale-key', url: wrongKey.url, key: 'sk-ant-revoked-credential' }]);
    const { key } = await stack.newKey();
    const err = (await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] }).catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(502);
    expect((err.error as { error: { type: string; message: string } }).error).toMatchObject({ type: 'api_error', message: expect.stringMatching(/refused the gateway's credential/) });
    expect(wrongKey.requests).toHaveLength(1);
  });

  it('sends a model only to the upstreams that list it', async () => {
    const haikuOnly = await fakeUpstream();
    const stack = await gatewayWith((fake) => [
      { name: 'haiku-only', url: haikuOnly.url, key: haikuOnly.apiKey, priority: 0, models: [HAIKU] },
      { name: 'rest', url: fake.url, key: fake.apiKey, priority: 1, models: ['claude-sonnet-4-6'] },
    ]);
    const rest = stack.fake;
    const { key } = await stack.newKey();
    await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] });
    await stack.client(key).messages.create({ model: 'claude-sonnet-4-6', max_tokens: 20, messages: [MESSAGE] });
    expect(haikuOnly.requests.map((r) => JSON.parse(r.body).model)).toEqual([HAIKU]);
    expect(rest.requests.map((r) => JSON.parse(r.body).model)).toEqual(['claude-sonnet-4-6']);
    const err = (await stack.client(key).messages.create({ model: 'claude-opus-4-6', max_tokens: 20, messages: [MESSAGE] }).catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(502);
    expect(err.message).toMatch(/No upstream is configured to serve this model/);
  });
});

describe('timeouts', () => {
  it('answers 504 api_error when the upstream sends no headers within the first-byte timeout', async () => {
    const stack = await gatewayWith((fake) => [{ name: 'slow', url: fake.url, key: fake.apiKey }], {
      upstreamTimeouts: { firstByteMs: 200 },
      failover: { maxAttempts: 1 },
    });
    const { key } = await stack.newKey();
    const err = (await stack.client(key).messages.create({ model: HAIKU, max_tokens: 20, messages: [MESSAGE] }, { headers: { 'x-fake-latency-ms': '1500' } }).catch((e: unknown) => e)) as APIError;
    expect(err.status).toBe(504);
    expect((err.error as { error: { type: string; message: string } }).error).toEqual({ type: 'api_error', message: 'Upstream did not answer within 0.2 s.' });
  });

  it('ends a stream that goes silent past the idle timeout with an SSE error event', async () => {
    const stack = await gatewayWith((fake) => [{ name: 'stalls', url: fake.url, key: fake.apiKey }], {
      upstreamTimeouts: { idleMs: 250 },
    });
    const { key, id } = await stack.newKey();
    const stream = stack.client(key).messages.stream(
      { model: HAIKU, max_tokens: 50, messages: [MESSAGE] },
      { headers: { 'x-fake-event-delay-ms': '1000' } },
    );
    const err = await stream.finalMessage().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect((err as Error).message).toMatch(/Upstream sent nothing for 0\.3 s/);
    await stack.gateway.services.usage.flush();
    const [row] = await stack.gateway.store.usageReport({ keyId: id, by: 'key' });
    expect(row).toMatchObject({ requests: 1 });
  });
});

describe('client abort', () => {
  it('closes the upstream connection at once and frees the key\'s slot', async () => {
    const stack = await gatewayWith((fake) => [{ name: 'slow-stream', url: fake.url, key: fake.apiKey }]);
    const fake = stack.fake;
    const { key } = await stack.newKey({ concurrent: 1 });
    const controller = new AbortController();
    const stream = stack.client(key).messages.stream(
      { model: HAIKU, max_tokens: 1000, messages: [MESSAGE] },
      { headers: { 'x-fake-event-delay-ms': '20', 'x-fake-output-tokens': '1000' }, signal: controller.signal },
    );
    let deltas = 0;
    await new Promise<void>((resolve) => {
      stream.on('text', () => {
        if (++deltas === 3) resolve();
      });
    });
    const abortedAt = Date.now();
    controller.abort();
    await stream.done().catch(() => undefined);
    await until(() => fake.closedStreams.length === 1, 2000);
    expect(fake.closedStreams[0]!.at - abortedAt).toBeLessThan(1000);
    // The slot is free: a concurrency-1 key gets its next request through.
    await until(async () => {
      const r = await stack.client(key).messages.create({ model: HAIKU, max_tokens: 5, messages: [MESSAGE] }).then(() => true, () => false);
      return r;
    }, 2000);
  });
});

describe('SSE headers', () => {
  it('marks streamed answers, proxied and from the cache, not to be buffered by proxies in front', async () => {
    const stack = await gatewayWith((fake) => [{ name: 'one', url: fake.url, key: fake.apiKey }], { cache: { enabled: true } });
    const { key } = await stack.newKey();
    const send = () =>
      fetch(`${stack.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': key, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
        body: JSON.stringify({ model: HAIKU, max_tokens: 20, stream: true, messages: [MESSAGE] }),
      });
    for (const expected of ['MISS', 'HIT']) {
      const response = await send();
      await response.text();
      expect(response.headers.get('x-cache')).toBe(expected);
      expect(response.headers.get('x-accel-buffering')).toBe('no');
      expect(response.headers.get('cache-control')).toBe('no-cache');
    }
  });
});
