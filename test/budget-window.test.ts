/**
 * A key's budget window can change while the gateway runs. Shrinking it drops usage from the
 * in-memory ledger; growing it back must bring that usage back from the store at once, not
 * after a restart.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Limits } from '../src/limits/memory.ts';
import type { KeyRecord } from '../src/store/types.ts';
import { ADMIN_TOKEN, MESSAGE, startStack, type Stack } from './helpers.ts';

const MINUTE = 60_000;

let stack: Stack | undefined;
afterEach(async () => {
  vi.useRealTimers();
  await stack?.close();
  stack = undefined;
});

async function used(url: string, key: string): Promise<number> {
  const res = await fetch(`${url}/v1/key-status`, { headers: { 'x-api-key': key } });
  return ((await res.json()) as { budget: { used_tokens: number } }).budget.used_tokens;
}

async function setWindow(s: Stack, id: string, window: string): Promise<void> {
  const res = await fetch(`${s.url}/admin/keys/${id}`, {
    method: 'PATCH',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ window }),
  });
  expect(res.status).toBe(200);
}

describe('changing a key window', () => {
  it('shrinking then restoring the window restores the usage it had dropped', async () => {
    stack = await startStack();
    const { key, id } = await stack.newKey({ name: 'window', budgetTokens: 100_000, windowSeconds: 3600 });
    const message = await stack.client(key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [MESSAGE] });
    const billed = message.usage.input_tokens + message.usage.output_tokens;
    await stack.gateway.services.usage.flush();
    expect(await used(stack.url, key)).toBe(billed);

    await setWindow(stack, id, '1m');
    // Three minutes on (only Date moves; the servers' timers run as usual): outside a 1-minute window.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 3 * MINUTE);
    expect(await used(stack.url, key)).toBe(0);

    await setWindow(stack, id, '1h');
    expect(await used(stack.url, key)).toBe(billed);
  });
});

describe('Limits.missingRange and backfill', () => {
  const key = (windowSeconds: number): KeyRecord => ({
    id: 'key_w', name: 'w', hash: 'h', preview: 'p', budgetTokens: 1000, windowSeconds, rpm: 10, concurrent: 1,
    models: null, expiresAt: null, disabled: false, cacheTtlSeconds: null, cacheGroup: null, mcpServers: [], createdAt: 0, updatedAt: 0,
  });
  const T0 = 1_800_000_000_000 - (1_800_000_000_000 % MINUTE);

  it('asks for exactly the minutes it dropped, and adds them back in time order', () => {
    const limits = new Limits();
    limits.load([{ keyId: 'key_w', minute: T0 / MINUTE, tokens: 300 }, { keyId: 'key_w', minute: T0 / MINUTE + 10, tokens: 200 }], T0 - 60 * MINUTE);
    const now = T0 + 20 * MINUTE;
    expect(limits.missingRange('key_w', 3600, now)).toBeNull(); // loaded from an hour back
    // A 5-minute window drops both buckets.
    expect(limits.budget(key(300), now).used).toBe(0);
    const range = limits.missingRange('key_w', 3600, now)!;
    expect(range.untilMs).toBe(T0 + 11 * MINUTE);
    expect(range.sinceMs).toBeLessThanOrEqual(now - 3600_000);
    limits.bill('key_w', 50, now);
    limits.backfill('key_w', range, [{ minute: T0 / MINUTE, tokens: 300 }, { minute: T0 / MINUTE + 10, tokens: 200 }]);
    expect(limits.budget(key(3600), now).used).toBe(550);
    expect(limits.missingRange('key_w', 3600, now)).toBeNull();
    // The oldest bucket still leaves first.
    expect(limits.budget(key(3600), T0 + MINUTE + 3600_000).used).toBe(250);
  });
});
