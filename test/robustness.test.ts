/**
 * Hostile and malformed input: every request gets an Anthropic-shaped error with the right
 * status, the process keeps serving, and nothing reaches upstream that should not.
 */
import { connect } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MESSAGE, startStack, type Stack } from './helpers.ts';

let stack: Stack;
let key: string;

beforeAll(async () => {
  stack = await startStack({ config: { maxBodyBytes: 64 * 1024 } });
  ({ key } = await stack.newKey({ name: 'fuzz', rpm: 100_000, concurrent: 100 }));
});
afterAll(() => stack.close());

async function send(body: string | Buffer, headers: Record<string, string> = {}) {
  const res = await request(`${stack.url}/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': key, 'content-type': 'application/json', ...headers },
    body,
  });
  const text = await res.body.text();
  return { status: res.statusCode, json: JSON.parse(text) as { type: string; error: { type: string; message: string } } };
}

describe('malformed requests', () => {
  const cases: [string, string | Buffer, number, string][] = [
    ['empty body', '', 400, 'invalid_request_error'],
    ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 400, 'invalid_request_error'],
    ['JSON null', 'null', 400, 'invalid_request_error'],
    ['JSON string', '"hello"', 400, 'invalid_request_error'],
    ['model is a number', JSON.stringify({ model: 42, max_tokens: 10, messages: [MESSAGE] }), 400, 'invalid_request_error'],
    ['max_tokens negative', JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: -1, messages: [MESSAGE] }), 400, 'invalid_request_error'],
    ['max_tokens fractional', JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 1.5, messages: [MESSAGE] }), 400, 'invalid_request_error'],
    ['max_tokens huge', JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 1e308, messages: [MESSAGE] }), 400, 'invalid_request_error'],
    ['messages not an array', JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 10, messages: 'hi' }), 400, 'invalid_request_error'],
    ['stream not a boolean', JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [MESSAGE], stream: 'yes' }), 400, 'invalid_request_error'],
    ['__proto__ model', '{"model":"__proto__","max_tokens":10,"messages":[]}', 400, 'invalid_request_error'],
    ['constructor model', JSON.stringify({ model: 'constructor', max_tokens: 10, messages: [] }), 400, 'invalid_request_error'],
    ['deeply nested', `{"model":"claude-haiku-4-5","max_tokens":10,"messages":${'['.repeat(5000)}${']'.repeat(5000)}}`, 400, 'invalid_request_error'],
    ['over the size limit', JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'x'.repeat(70_000) }] }), 413, 'request_too_large'],
  ];
  for (const [name, body, status, type] of cases) {
    it(`${name} → ${status} ${type}`, async () => {
      const res = await send(body);
      expect(res.status).toBe(status);
      expect(res.json.type).toBe('error');
      expect(res.json.error.type).toBe(type);
    });
  }

  it('sent none of them upstream', () => {
    // The gateway validates the JSON and the fields it acts on; nesting past 512 levels is
    // refused by the gateway's scanner (json-scan.ts) before anything goes upstream.
    expect(stack.fake.requests.filter((r) => r.path === '/v1/messages')).toHaveLength(0);
  });

  it('rejects odd credentials with 401, never 500', async () => {
    for (const headers of [
      { 'x-api-key': '' },
      { 'x-api-key': 'sk-cc-' },
      { 'x-api-key': 'x'.repeat(8000) },
      { 'x-api-key': 'ünïcødé' },
      { authorization: 'Bearer' },
      { authorization: 'Basic abc' },
    ]) {
      const res = await request(`${stack.url}/v1/messages`, { method: 'POST', headers, body: '{}' });
      expect(res.statusCode, JSON.stringify(headers)).toBe(401);
      expect(await res.body.json()).toMatchObject({ error: { type: 'authentication_error' } });
    }
  });

  it('survives a client that sends half a body and disappears', async () => {
    await new Promise<void>((resolve, reject) => {
      const url = new URL(stack.url);
      const socket = connect(Number(url.port), url.hostname, () => {
        socket.write(
          `POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: ${key}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model":`,
        );
        setTimeout(() => {
          socket.destroy();
          resolve();
        }, 50);
      });
      socket.on('error', reject);
    });
    const res = await stack
      .client(key)
      .messages.create({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] });
    expect(res.type).toBe('message');
  });

  it('still serves normal traffic afterwards', async () => {
    const health = await request(`${stack.url}/health`);
    expect(health.statusCode).toBe(200);
    await health.body.dump();
    const message = await stack.client(key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 5, messages: [MESSAGE] });
    expect(message.type).toBe('message');
  });
});
