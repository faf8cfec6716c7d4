/**
 * Budget accounting and the things that must never leak: recorded usage equals what upstream
 * reported, to the token, however streams end; strict mode never exceeds a budget; logs and the
 * upstream never see keys or prompt text.
 */
import Anthropic from '@anthropic-ai/sdk';
import { afterEach, describe, expect, it } from 'vitest';
import { MESSAGE, recordedUsage, startStack, type Stack } from './helpers.ts';

let stack: Stack | undefined;
afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

describe('budget accounting', () => {
  it('records what upstream reported for concurrent streams, and at least that for cut ones', async () => {
    stack = await startStack();
    const { key, id } = await stack.newKey({ name: 'acct', concurrent: 100, rpm: 1000 });
    const client = stack.client(key);
    const N = 24;
    const outcomes = await Promise.allSettled(
      Array.from({ length: N }, (_, i) => {
        const headers: Record<string, string> = { 'x-fake-output-tokens': String(5 + i), 'x-fake-event-delay-ms': '2' };
        if (i % 3 === 0) headers['x-fake-cut-after'] = String(i % 5); // cut short upstream
        if (i % 7 === 1) headers['x-fake-stream-error-after'] = '2'; // overloaded mid-stream
        const content = `request ${i}: ${'words '.repeat(i * 3)}`;
        return client.messages
          .stream({ model: 'claude-sonnet-4-6', max_tokens: 200, messages: [{ role: 'user', content }] }, { headers })
          .finalMessage();
      }),
    );
    const failed = outcomes.filter((o) => o.status === 'rejected').length;
    expect(failed).toBe(8 + 3); // i % 3 === 0 (8 of them) and i % 7 === 1 not already cut (1, 8, 22)
    expect(stack.fake.reported.size).toBe(N);

    const row = await recordedUsage(stack, id);
    const reported = stack.fake.totalReported();
    expect(row).toMatchObject({
      requests: N,
      inputTokens: reported.input_tokens,
      cacheCreationTokens: reported.cache_creation_input_tokens,
      cacheReadTokens: reported.cache_read_input_tokens,
    });
    // Streams that ended before message_delta bill an estimate from their relayed text, never
    // less than the tokens upstream generated for them; the others bill exactly what upstream said.
    const completedOutput = sum(outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value.usage.output_tokens] : [])));
    const cutOutput = reported.output_tokens - completedOutput;
    expect(cutOutput).toBeGreaterThan(0);
    expect(row.outputTokens).toBeGreaterThanOrEqual(reported.output_tokens);
    expect(row.outputTokens).toBeGreaterThan(completedOutput);
    expect(row.billedTokens).toBe(row.inputTokens + row.outputTokens + row.cacheCreationTokens + row.cacheReadTokens);
    // The in-memory budget agrees with the durable record.
    const record = (await stack.gateway.store.getKey(id))!;
    expect((await stack.gateway.services.limits.budget(record, Date.now())).used).toBe(row.billedTokens);
    // And the successful streams' own usage (what the SDK saw) is part of it, to the token.
    const seen = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value.usage.output_tokens] : []));
    expect(seen.length).toBe(N - failed);
    expect(sum(seen)).toBeLessThan(reported.output_tokens);
  });

  it('counts cache-creation and cache-read tokens from upstream usage', async () => {
    stack = await startStack();
    const { key, id } = await stack.newKey({ name: 'cache' });
    const client = stack.client(key);
    const params = {
      model: 'claude-sonnet-4-6',
      max_tokens: 20,
      system: [{ type: 'text' as const, text: 'A long system prompt. '.repeat(50), cache_control: { type: 'ephemeral' as const } }],
      messages: [MESSAGE],
    };
    const first = await client.messages.create(params);
    const second = await client.messages.stream(params).finalMessage();
    expect(first.usage.cache_creation_input_tokens).toBeGreaterThan(0);
    expect(second.usage.cache_read_input_tokens).toBe(first.usage.cache_creation_input_tokens);
    // cache_control reached upstream untouched.
    expect(stack.fake.requests[0]?.body).toContain('"cache_control":{"type":"ephemeral"}');
    const row = await recordedUsage(stack, id);
    expect(row.cacheCreationTokens).toBe(first.usage.cache_creation_input_tokens);
    expect(row.cacheReadTokens).toBe(second.usage.cache_read_input_tokens);
  });

  it('applies configured token weights to the budget', async () => {
    stack = await startStack({ config: { budget: { weights: { input: 1, output: 5, cache_creation: 1, cache_read: 0 } } } });
    const { key, id } = await stack.newKey({ name: 'weights' });
    const message = await stack.client(key).messages.create(
      { model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] },
      { headers: { 'x-fake-output-tokens': '10' } },
    );
    const record = (await stack.gateway.store.getKey(id))!;
    expect((await stack.gateway.services.limits.budget(record, Date.now())).used).toBe(message.usage.input_tokens + 5 * 10);
  });

  it('rebuilds budgets from recorded usage after a restart', async () => {
    stack = await startStack();
    const { key, id } = await stack.newKey({ name: 'restart', budgetTokens: 10_000 });
    const message = await stack.client(key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 50, messages: [MESSAGE] });
    const dataDir = stack.dataDir;
    await stack.gateway.close();
    await stack.fake.close();
    const again = await startStack({ dataDir });
    try {
      const res = await fetchKeyStatus(again.url, key);
      expect(res.budget.used_tokens).toBe(message.usage.input_tokens + message.usage.output_tokens);
      expect(res.budget.remaining_tokens).toBe(10_000 - res.budget.used_tokens);
    } finally {
      await again.close();
    }
    stack = undefined;
    void id;
  });
});

async function fetchKeyStatus(url: string, key: string) {
  const res = await fetch(`${url}/v1/key-status`, { headers: { 'x-api-key': key } });
  return (await res.json()) as { budget: { used_tokens: number; remaining_tokens: number } };
}

/**
 * Ten streams of 365 deltas against a 2,000-token key, each abandoned by its client after 100
 * deltas. Upstream reports output only in message_delta, which an abandoned stream never reaches:
 * billing only reported usage charged input + 1 per stream (130 tokens for all ten), forever.
 */
async function abandonTenStreams(s: Stack, key: string) {
  const client = s.client(key);
  let admitted = 0;
  let refused = 0;
  for (let i = 0; i < 10; i++) {
    const stream = client.messages.stream(
      { model: 'claude-haiku-4-5', max_tokens: 400, messages: [MESSAGE] },
      { headers: { 'x-fake-output-tokens': '365', 'x-fake-event-delay-ms': '1' } },
    );
    stream.on('error', () => {});
    let deltas = 0;
    const done = stream.finalMessage().then(() => 'completed', (err: unknown) => err);
    stream.on('text', () => {
      if (++deltas === 100) stream.abort();
    });
    const result = await done;
    if (result instanceof Anthropic.RateLimitError) refused++;
    else {
      expect(result).toBeInstanceOf(Anthropic.APIUserAbortError);
      admitted++;
    }
  }
  return { admitted, refused };
}

describe('abandoned streams', () => {
  for (const strict of [false, true]) {
    it(`are billed at least the output they relayed${strict ? ' (strict mode: and never past the budget)' : ''}`, async () => {
      stack = await startStack({ config: { budget: { strict } } });
      const budget = 2000;
      const { key, id } = await stack.newKey({ name: 'abandon', budgetTokens: budget, concurrent: 10, rpm: 1000 });
      const { admitted, refused } = await abandonTenStreams(stack, key);
      // Upstream's ledger counts the tokens it generated as the deltas went out.
      await new Promise((r) => setTimeout(r, 100));
      const row = await recordedUsage(stack, id);
      const reported = stack.fake.totalReported();
      expect(reported.output_tokens).toBeGreaterThanOrEqual(100 * admitted);
      expect(row.outputTokens).toBeGreaterThanOrEqual(reported.output_tokens);
      expect(row.billedTokens).toBeGreaterThanOrEqual(reported.input_tokens + reported.output_tokens);
      // The budget ran out, so the rest were refused instead of streaming for free.
      expect(refused).toBeGreaterThan(0);
      expect(admitted + refused).toBe(10);
      if (strict) expect(row.billedTokens).toBeLessThanOrEqual(budget);
    });
  }
});

describe('strict budget mode', () => {
  it('never lets concurrent requests exceed the budget', async () => {
    stack = await startStack({ config: { budget: { strict: true } } });
    const budget = 6000;
    const { key, id } = await stack.newKey({ name: 'strict', budgetTokens: budget, concurrent: 50, rpm: 1000 });
    const client = stack.client(key);
    // Each request may use up to 300 output tokens plus its input; 40 at once would be far over.
    const results = await Promise.allSettled(
      Array.from({ length: 40 }, () =>
        client.messages
          .stream({ model: 'claude-haiku-4-5', max_tokens: 300, messages: [MESSAGE] }, { headers: { 'x-fake-output-tokens': '300', 'x-fake-event-delay-ms': '1' } })
          .finalMessage(),
      ),
    );
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    const refused = results.filter((r) => r.status === 'rejected' && r.reason instanceof Anthropic.RateLimitError).length;
    expect(ok).toBeGreaterThan(0);
    expect(ok + refused).toBe(40);
    const row = await recordedUsage(stack, id);
    expect(row.billedTokens).toBeLessThanOrEqual(budget);
    expect(row.billedTokens).toBeGreaterThan(0);
  });

  it('soft mode (default) admits while anything is left and may overspend', async () => {
    stack = await startStack();
    const budget = 6000;
    const { key, id } = await stack.newKey({ name: 'soft', budgetTokens: budget, concurrent: 50, rpm: 1000 });
    const client = stack.client(key);
    await Promise.allSettled(
      Array.from({ length: 40 }, () =>
        client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 300, messages: [MESSAGE] }, { headers: { 'x-fake-output-tokens': '300' } }),
      ),
    );
    const row = await recordedUsage(stack, id);
    // All 40 were admitted before any finished: the documented worst case of soft mode.
    expect(row.billedTokens).toBeGreaterThan(budget);
  });
});

describe('secrets stay out of logs and away from upstream', () => {
  it('never logs keys, the upstream credential or prompt text', async () => {
    stack = await startStack();
    const { key } = await stack.newKey({ name: 'secret' });
    const prompt = 'TOP-SECRET-PROMPT-7f3a9c';
    const client = stack.client(key);
    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [{ role: 'user', content: prompt }] });
    await client.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 10, system: prompt, messages: [{ role: 'user', content: prompt }] }).finalMessage();
    await client.messages.countTokens({ model: 'claude-haiku-4-5', messages: [{ role: 'user', content: prompt }] });
    // Failures log too: bad JSON containing the prompt, an upstream error, an unreachable upstream.
    await fetch(`${stack.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key }, body: `{"oops": "${prompt}"` });
    await client.messages
      .create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [{ role: 'user', content: prompt }] }, { headers: { 'x-fake-status': '500' } })
      .catch(() => {});
    await stack.client(`${key}x`).messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE] }).catch(() => {});
    await fetch(`${stack.url}/admin/keys`, { headers: { authorization: `Bearer ${key}` } });

    const logs = stack.logs.join('');
    expect(stack.logs.length).toBeGreaterThan(6);
    expect(logs).toContain('"requestId"');
    expect(logs).not.toContain(key.slice(6));
    expect(logs).not.toContain(stack.fake.apiKey);
    expect(logs).not.toContain(prompt);
    for (const req of stack.fake.requests) {
      expect(JSON.stringify(req.headers)).not.toMatch(/sk-cc-/);
    }
  });
});
