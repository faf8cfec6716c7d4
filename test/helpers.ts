/**
 * Test stack: the fake Anthropic upstream and a real gateway on loopback ports, a fresh SQLite
 * data directory, and a log sink the tests can read.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import Anthropic from '@anthropic-ai/sdk';
import { expect } from 'vitest';
import { parseConfig, type ConfigInput } from '../src/config.ts';
import { createGateway, type Gateway } from '../src/gateway.ts';
import { createKey, type NewKeyOptions } from '../src/keys.ts';
import { createLogger } from '../src/logger.ts';
import type { Store } from '../src/store/types.ts';
import { startFakeUpstream, type FakeUpstream, type FakeUpstreamOptions } from '../src/fake-upstream/server.ts';

export const ADMIN_TOKEN = 'test-admin-token-0123456789abcdef';

export interface Stack {
  fake: FakeUpstream;
  gateway: Gateway;
  /** Gateway base URL, e.g. http://127.0.0.1:40123 */
  url: string;
  dataDir: string;
  /** Every log line the gateway wrote, as text. */
  logs: string[];
  newKey(options?: Partial<NewKeyOptions>): Promise<{ key: string; id: string }>;
  client(key: string, options?: ConstructorParameters<typeof Anthropic>[0]): Anthropic;
  close(): Promise<void>;
}

export async function startStack(
  options: {
    /** Config over the stack's defaults; a function gets the stack's fake upstream (to name it in `upstreams`). */
    config?: Partial<ConfigInput> | ((fake: FakeUpstream) => Partial<ConfigInput>);
    fake?: FakeUpstreamOptions;
    dataDir?: string;
  } = {},
): Promise<Stack> {
  const fake = await startFakeUpstream(options.fake);
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'claudcode-test-'));
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(chunk.toString('utf8'));
      done();
    },
  });
  const config = parseConfig({
    port: 0,
    host: '127.0.0.1',
    dataDir,
    upstreams: [{ url: fake.url, key: fake.apiKey }],
    adminToken: ADMIN_TOKEN,
    logLevel: 'debug',
    usageFlushMs: 20,
    // The response cache would answer the suites' repeated identical requests itself; its own
    // suite (cache.test.ts) turns it on.
    cache: { enabled: false },
    // Upstream errors the suites provoke are retried (the failover policy); short pauses keep
    // them quick. failover.test.ts checks the policy's own bounds.
    failover: { backoffBaseMs: 10, backoffMaxMs: 50 },
    shutdownGraceMs: 5000,
    ...(typeof options.config === 'function' ? options.config(fake) : options.config),
  });
  const gateway = await createGateway(config, { logger: createLogger('debug', sink) });
  const { url } = await gateway.listen();
  return {
    fake,
    gateway,
    url,
    dataDir,
    logs,
    async newKey(keyOptions = {}) {
      const { record, key } = await createKey(gateway.store, config.keyDefaults, { name: 'test', ...keyOptions });
      await gateway.services.keys.refresh();
      return { key, id: record.id };
    },
    client(key, clientOptions = {}) {
      return new Anthropic({ apiKey: key, baseURL: url, maxRetries: 0, ...clientOptions });
    },
    async close() {
      await gateway.close();
      await fake.close();
      if (!options.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** One key's recorded usage summed over every model (the store reports per key and model). */
export async function keyTotals(store: Store, keyId: string) {
  const rows = await store.usageReport({ keyId, by: 'key' });
  const total = { requests: 0, errors: 0, inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0 };
  for (const row of rows) {
    for (const field of Object.keys(total) as (keyof typeof total)[]) total[field] += Number(row[field]);
  }
  return total;
}

/** Writes queued usage, then sums one key's recorded usage. */
export async function recordedUsage(stack: Stack, keyId: string) {
  await stack.gateway.services.usage.flush();
  return keyTotals(stack.gateway.store, keyId);
}

/** The error `fn` throws, checked to be an instance of `type` (fails the test if nothing is thrown). */
export function thrownBy<T extends Error>(fn: () => unknown, type: new (...args: never[]) => T): T {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(type);
    return err as T;
  }
  throw new Error(`expected a ${type.name}, but nothing was thrown`);
}

export const MESSAGE = { role: 'user' as const, content: 'Hello there' };
