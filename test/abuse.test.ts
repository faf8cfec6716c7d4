/**
 * One client must not be able to stall the others: a key at its limits is refused before its
 * body is read, an upload in progress holds its concurrency slot, and a huge body is checked
 * without blocking the event loop. Bounds here are generous (a second where the old gateway took
 * ten); the figures are measured by `npm run bench:abuse`.
 */
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MESSAGE, recordedUsage, startStack, type Stack } from './helpers.ts';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(() => stack.close());

/** Opens a raw connection and sends a request head declaring `length` body bytes, plus `start`. */
function startUpload(key: string, length: number, start: string): Promise<{ socket: Socket; response: Promise<string> }> {
  const url = new URL(stack.url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(url.port), url.hostname, () => {
      socket.write(
        `POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: ${key}\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n\r\n${start}`,
      );
      let text = '';
      const response = new Promise<string>((done) => {
        socket.on('data', (d: Buffer) => {
          text += d.toString();
          if (/\r\n\r\n[\s\S]*\}$/.test(text)) done(text);
        });
        socket.on('close', () => done(text));
      });
      resolve({ socket, response });
    });
    socket.on('error', reject);
  });
}

/** A slow stream that holds one of the key's concurrency slots until it is aborted. */
async function holdSlot(key: string): Promise<AbortController> {
  const holder = new AbortController();
  const res = await fetch(`${stack.url}/v1/messages`, {
    method: 'POST',
    signal: holder.signal,
    headers: { 'x-api-key': key, 'content-type': 'application/json', 'x-fake-output-tokens': '500', 'x-fake-event-delay-ms': '50' },
    body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 600, stream: true, messages: [MESSAGE] }),
  });
  expect(res.status).toBe(200);
  void res.body!.pipeTo(new WritableStream()).catch(() => {});
  return holder;
}

describe('limits are checked before the body is read', () => {
  it('a key at its concurrency limit is refused at once, though its 30 MiB body never arrives', async () => {
    const { key } = await stack.newKey({ name: 'at-limit', concurrent: 1 });
    const holder = await holdSlot(key);
    try {
      // Declares 30 MiB, sends 9 bytes: only a gateway that does not wait for the body can answer.
      const upload = await startUpload(key, 30 * 1024 * 1024, '{"model":');
      const answer = await upload.response;
      upload.socket.destroy();
      expect(answer).toMatch(/^HTTP\/1\.1 429/);
      expect(answer).toMatch(/connection: close/i);
      expect(answer).toContain('"rate_limit_error"');
      expect(answer).toMatch(/concurrent/);
    } finally {
      holder.abort();
    }
  });

  it('an upload in progress holds its concurrency slot', async () => {
    const { key, id } = await stack.newKey({ name: 'uploading', concurrent: 1 });
    const body = JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] });
    const upload = await startUpload(key, body.length, body.slice(0, 10));
    // Give the gateway time to take the upload's slot (poll a cheap status until it shows).
    await new Promise((r) => setTimeout(r, 100));
    const second = await request(`${stack.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body });
    expect(second.statusCode).toBe(429);
    expect(await second.body.json()).toMatchObject({ error: { type: 'rate_limit_error' } });
    // The upload completes and is served; then the slot is free again.
    upload.socket.write(body.slice(10));
    expect(await upload.response).toMatch(/^HTTP\/1\.1 200/);
    upload.socket.destroy();
    const third = await request(`${stack.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body });
    expect(third.statusCode).toBe(200);
    await third.body.dump();
    const row = await recordedUsage(stack, id);
    expect(row.requests).toBe(3);
  });
});

describe('a huge body does not block the event loop', () => {
  it('30 MiB of `{}`s is checked in full while the loop stays responsive', async () => {
    const { key } = await stack.newKey({ name: 'huge', models: ['claude-haiku-4-5'] });
    const head = '{"model":"claude-opus-4-6","max_tokens":10,"messages":[';
    const items = Math.floor((30 * 1024 * 1024 - head.length - 4) / 3);
    const body = Buffer.alloc(head.length + items * 3 + 4);
    body.write(head);
    body.fill('{},', head.length, head.length + items * 3);
    body.write('{}]}', head.length + items * 3);

    const lag = monitorEventLoopDelay({ resolution: 10 });
    lag.enable();
    const healthTimes: number[] = [];
    let sending = true;
    const pinger = (async () => {
      while (sending) {
        const started = performance.now();
        const res = await request(`${stack.url}/health`);
        await res.body.dump();
        healthTimes.push(performance.now() - started);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const res = await request(`${stack.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body });
    sending = false;
    await pinger;
    lag.disable();
    // The whole body was read and checked: the model is not the key's (403), nothing went upstream.
    expect(res.statusCode).toBe(403);
    expect(await res.body.json()).toMatchObject({ error: { type: 'permission_error' } });
    expect(healthTimes.length).toBeGreaterThan(0);
    // A whole-body JSON.parse of this stalls the loop for seconds; the scan, never for long.
    expect(lag.max / 1e6).toBeLessThan(1000);
    expect(Math.max(...healthTimes)).toBeLessThan(1000);
  });
});

describe('refusals stay cheap', () => {
  it('a huge model string is neither echoed nor stored whole', async () => {
    const { key, id } = await stack.newKey({ name: 'long-model' });
    const model = 'm'.repeat(4 * 1024 * 1024);
    const body = JSON.stringify({ model, max_tokens: 10, messages: [MESSAGE] });
    for (let i = 0; i < 3; i++) {
      const res = await request(`${stack.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body });
      expect(res.statusCode).toBe(400);
      const text = await res.body.text();
      expect(text.length).toBeLessThan(2000);
      expect(JSON.parse(text)).toMatchObject({ error: { type: 'invalid_request_error', message: expect.stringMatching(/unknown model "m{10,}…"/) } });
    }
    await stack.gateway.services.usage.flush();
    const db = new DatabaseSync(join(stack.dataDir, 'claudcode.db'), { readOnly: true });
    try {
      const row = db.prepare('SELECT MAX(LENGTH(model)) AS longest, SUM(requests) AS requests FROM usage WHERE key_id = ?').get(id) as { longest: number; requests: number };
      expect(row.requests).toBe(3);
      expect(row.longest).toBeLessThanOrEqual(257);
    } finally {
      db.close();
    }
  });

  it('a flood of refusals is recorded as a count, not a row each', async () => {
    const { key, id } = await stack.newKey({ name: 'flood', rpm: 5 });
    const body = JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] });
    const statuses: number[] = [];
    for (let i = 0; i < 200; i++) {
      const res = await request(`${stack.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body });
      statuses.push(res.statusCode);
      await res.body.dump();
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(5);
    expect(statuses.filter((s) => s === 429)).toHaveLength(195);
    const totals = await recordedUsage(stack, id);
    expect(totals.requests).toBe(200);
    expect(totals.errors).toBe(195);
    const db = new DatabaseSync(join(stack.dataDir, 'claudcode.db'), { readOnly: true });
    try {
      const { rows } = db.prepare('SELECT COUNT(*) AS rows FROM usage WHERE key_id = ?').get(id) as { rows: number };
      // 5 served requests, and the 195 refusals in one row per minute they spanned (one or two).
      expect(rows).toBeLessThanOrEqual(5 + 2);
    } finally {
      db.close();
    }
  });
});
