/**
 * The gateway as an operator runs it: `claudcode start` in its own process. SIGTERM lets
 * in-flight streams finish and loses no usage; the first start prints an admin token once.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config.ts';
import { startFakeUpstream, type FakeUpstream } from '../src/fake-upstream/server.ts';
import { createKey } from '../src/keys.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { startGatewayProcess as startGateway } from './gateway-process.ts';
import { keyTotals } from './helpers.ts';

let fake: FakeUpstream;
let dataDir: string;

beforeAll(async () => {
  fake = await startFakeUpstream();
  dataDir = mkdtempSync(join(tmpdir(), 'claudcode-proc-'));
});
afterAll(async () => {
  await fake.close();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('claudcode start', () => {
  it('drains in-flight streams on SIGTERM and loses no usage', async () => {
    const config = parseConfig({ dataDir });
    const store = new SqliteStore(dataDir);
    const { key, record } = await createKey(store, config.keyDefaults, { name: 'drain', concurrent: 20 });
    await store.close();

    const gateway = await startGateway({
      CLAUDCODE_DATA_DIR: dataDir,
      CLAUDCODE_UPSTREAM_URL: fake.url,
      CLAUDCODE_UPSTREAM_KEY: fake.apiKey,
      CLAUDCODE_ADMIN_TOKEN: 'admin-token-for-the-drain-test-0001',
      CLAUDCODE_LOG_LEVEL: 'debug',
      // Identical streams in flight would share one upstream call through the cache.
      CLAUDCODE_CACHE: 'false',
    });
    const client = new Anthropic({ apiKey: key, baseURL: gateway.url, maxRetries: 0 });
    const prompt = 'PROMPT-THAT-MUST-NOT-BE-LOGGED-91c2';

    await client.messages.create({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [{ role: 'user', content: prompt }] });
    // Three streams of 30 events, 20 ms apart: ~0.6 s each, still running when SIGTERM arrives.
    const streams = Array.from({ length: 3 }, () =>
      client.messages.stream(
        { model: 'claude-sonnet-4-6', max_tokens: 100, messages: [{ role: 'user', content: prompt }] },
        { headers: { 'x-fake-output-tokens': '30', 'x-fake-event-delay-ms': '20' } },
      ),
    );
    await Promise.all(streams.map((s) => new Promise<void>((resolve) => s.once('text', () => resolve()))));
    gateway.child.kill('SIGTERM');

    const finals = await Promise.all(streams.map((s) => s.finalMessage()));
    for (const final of finals) expect(final.usage.output_tokens).toBe(30);
    expect(await gateway.exited).toBe(0);

    const reopened = new SqliteStore(dataDir);
    const row = await keyTotals(reopened, record.id);
    await reopened.close();
    const reported = fake.totalReported();
    expect(row).toMatchObject({ requests: 4, errors: 0, inputTokens: reported.input_tokens, outputTokens: reported.output_tokens });

    const logs = gateway.stdout() + gateway.stderr();
    expect(logs).toContain('shut down cleanly');
    expect(logs).not.toContain(prompt);
    expect(logs).not.toContain(key.slice(6));
    expect(logs).not.toContain(fake.apiKey);
  });

  it('prints a generated admin token once, at the first start only, and it works', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'claudcode-admin-'));
    try {
      const env = { CLAUDCODE_DATA_DIR: dir, CLAUDCODE_UPSTREAM_URL: fake.url };
      const first = await startGateway(env);
      const token = /cc-admin-[A-Za-z0-9_-]{32}/.exec(first.stderr())?.[0];
      expect(token).toBeDefined();
      expect(first.stdout()).not.toContain(token!);
      const ok = await fetch(`${first.url}/admin/keys`, { headers: { authorization: `Bearer ${token}` } });
      expect(ok.status).toBe(200);
      first.child.kill('SIGTERM');
      expect(await first.exited).toBe(0);

      const second = await startGateway(env);
      expect(second.stderr()).not.toMatch(/cc-admin-/);
      const still = await fetch(`${second.url}/admin/keys`, { headers: { authorization: `Bearer ${token}` } });
      expect(still.status).toBe(200);
      const wrong = await fetch(`${second.url}/admin/keys`, { headers: { authorization: 'Bearer cc-admin-wrong' } });
      expect(wrong.status).toBe(401);
      second.child.kill('SIGTERM');
      expect(await second.exited).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('writes access-log lines in batches: one shows while the gateway idles, and none is lost at exit', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'claudcode-logs-'));
    try {
      const gateway = await startGateway({ CLAUDCODE_DATA_DIR: dir, CLAUDCODE_UPSTREAM_URL: fake.url, CLAUDCODE_ADMIN_TOKEN: 'admin-token-for-the-log-test-00001' });
      // startGateway polls /health until it answers: these count /healthz only.
      const accessLines = () => gateway.stdout().split('\n').filter((line) => line.includes('"route":"/healthz"'));
      // One request, then nothing: its line is written by the flush timer, not held for a full batch.
      await (await fetch(`${gateway.url}/healthz`)).text();
      for (let i = 0; i < 100 && accessLines().length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(accessLines()).toHaveLength(1);
      expect(JSON.parse(accessLines()[0]!)).toMatchObject({ level: 30, msg: 'request', status: 200, method: 'GET' });
      // A burst, and SIGTERM at once: the lines still buffered are written on the way out.
      await Promise.all(Array.from({ length: 300 }, () => fetch(`${gateway.url}/healthz`).then((r) => r.text())));
      gateway.child.kill('SIGTERM');
      expect(await gateway.exited).toBe(0);
      expect(accessLines()).toHaveLength(301);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
