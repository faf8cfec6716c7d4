/**
 * Operator safety: what a hostile or broken client can cost the gateway. Wrong admin tokens are
 * throttled per address; idle sockets, trickled heads and slow uploads are cut at the configured
 * deadlines (raw node:net sockets against a real gateway); oversized header blocks are refused in
 * Anthropic's error shape; and the header caps hold for what is forwarded upstream.
 *
 * Time bounds here are generous (seconds where the deadline is a fraction of one): each says
 * "cut promptly" against the old behaviour of minutes, never how promptly to the millisecond.
 */
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RequestHeadersTooLargeError } from '../src/errors.ts';
import {
  checkRequestHeaders,
  MAX_REQUEST_HEADER_BYTES,
  MAX_REQUEST_HEADERS,
  upstreamRequestHeaders,
} from '../src/upstream/headers.ts';
import { ADMIN_TOKEN, MESSAGE, startStack, thrownBy, type Stack } from './helpers.ts';

interface RawExchange {
  /** Everything the gateway sent before closing. */
  text: string;
  /** When the gateway closed the socket, from the first write; Infinity if it had not by `giveUpMs`. */
  closedAfterMs: number;
}

/**
 * Opens a raw socket to the gateway, lets `drive` write to it, and collects what comes back until
 * the gateway closes it (or `giveUpMs` passes, when the test gives up and closes it itself).
 */
function rawExchange(url: string, drive: (socket: Socket) => void, giveUpMs = 8_000): Promise<RawExchange> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    let startedAt = Date.now();
    const giveUp = setTimeout(() => {
      socket.destroy();
      resolve({ text: Buffer.concat(chunks).toString('utf8'), closedAfterMs: Infinity });
    }, giveUpMs);
    socket.on('connect', () => {
      startedAt = Date.now();
      drive(socket);
    });
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(giveUp);
      resolve({ text: Buffer.concat(chunks).toString('utf8'), closedAfterMs: Date.now() - startedAt });
    });
  });
}

/** The status and Anthropic error body of a raw HTTP response. */
function parseRaw(text: string): { status: number; headers: string; body: any } {
  const [head = '', body = ''] = text.split('\r\n\r\n');
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]), headers: head, body: body ? JSON.parse(body) : undefined };
}

/** GET `url` from the local address `localAddress` (any of 127/8 on loopback), with `headers`. */
function getFrom(localAddress: string, url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { localAddress, headers, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('admin token throttle (defaults: 10 failures per minute per address)', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
  });
  afterAll(() => stack.close());

  const admin = async (token: string | null, options: { headers?: Record<string, string> } = {}) => {
    const headers: Record<string, string> = { ...options.headers };
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const res = await request(`${stack.url}/admin/keys`, { headers });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, body: JSON.parse(text) };
  };

  it('answers 401 to ten wrong tokens, then 429 with Retry-After without checking the token', async () => {
    const wrongTokens = Array.from({ length: 9 }, (_, i) => `guess-${i}-0123456789abcdef`);
    const replies = [await admin(null)];
    for (const token of wrongTokens) replies.push(await admin(token));
    expect(replies.map((r) => r.status)).toEqual(Array(10).fill(401));
    expect(replies.every((r) => r.body.error.type === 'authentication_error')).toBe(true);

    // The 11th attempt is refused before its token is looked at: even the right one.
    for (const token of ['guess-10-0123456789abcdef', ADMIN_TOKEN]) {
      const refused = await admin(token);
      expect(refused.status).toBe(429);
      expect(refused.body).toMatchObject({ type: 'error', error: { type: 'rate_limit_error', message: expect.stringMatching(/too many wrong admin tokens/) } });
      const retryAfter = Number(refused.headers['retry-after']);
      expect(retryAfter).toBeGreaterThanOrEqual(1);
      expect(retryAfter).toBeLessThanOrEqual(60);
    }
    // X-Forwarded-For is the client's own say-so: it does not make another address.
    expect((await admin(ADMIN_TOKEN, { headers: { 'x-forwarded-for': '203.0.113.9', 'x-real-ip': '203.0.113.9' } })).status).toBe(429);

    // Another address is not throttled, and its right token does not clear the first address's count.
    expect(await getFrom('127.0.0.3', `${stack.url}/admin/keys`, { authorization: `Bearer ${ADMIN_TOKEN}` })).toBe(200);
    expect((await admin(ADMIN_TOKEN)).status).toBe(429);

    // Each failure is a warn line with the address and count; the throttle's start is logged once.
    const lines = stack.logs.flatMap((chunk) => chunk.split('\n')).filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
    const rejected = lines.filter((l) => l.msg === 'admin token rejected');
    expect(rejected.map((l) => [l.level, l.remoteAddress, l.failures])).toEqual(
      Array.from({ length: 10 }, (_, i) => [40, '127.0.0.1', i + 1]),
    );
    const throttled = lines.filter((l) => String(l.msg).startsWith('admin token attempts throttled'));
    expect(throttled).toHaveLength(1);
    expect(throttled[0]).toMatchObject({ level: 40, remoteAddress: '127.0.0.1', failures: 10 });
    // Neither the guesses nor the real token reach the logs.
    const allLogs = stack.logs.join('');
    for (const token of [...wrongTokens, 'guess-10-0123456789abcdef', ADMIN_TOKEN]) expect(allLogs).not.toContain(token);
  });
});

describe('server deadlines (headersTimeoutMs 300, requestTimeoutMs 1000)', () => {
  let stack: Stack;
  let key: string;
  beforeAll(async () => {
    stack = await startStack({ config: { headersTimeoutMs: 300, requestTimeoutMs: 1000 } });
    ({ key } = await stack.newKey({ name: 'deadlines' }));
  });
  afterAll(() => stack.close());

  it('closes a socket that sends nothing, with an Anthropic-shaped 408', async () => {
    // Node's defaults (60 s, checked every 30 s) kept such a socket open for up to 90 s.
    const exchange = await rawExchange(stack.url, () => {});
    expect(exchange.closedAfterMs).toBeLessThan(5_000);
    const reply = parseRaw(exchange.text);
    expect(reply.status).toBe(408);
    expect(reply.headers).toMatch(/^x-request-id: req_cc_/m);
    expect(reply.body).toMatchObject({ type: 'error', error: { type: 'timeout_error' }, request_id: expect.stringMatching(/^req_cc_/) });
  });

  it('closes a socket trickling its head', async () => {
    const exchange = await rawExchange(stack.url, (socket) => {
      socket.write('GET /health HTTP/1.1\r\nHost: x\r\n');
      const timer = setInterval(() => socket.writable && socket.write('x-a: b\r\n'), 100);
      socket.on('close', () => clearInterval(timer));
    });
    expect(exchange.closedAfterMs).toBeLessThan(5_000);
    expect(parseRaw(exchange.text).status).toBe(408);
  });

  it('answers 408 to an authenticated upload trickled one byte per 200 ms, and keeps serving', async () => {
    // Node's default requestTimeout (300 s, checked every 30 s) held this for up to 330 s.
    const exchange = await rawExchange(stack.url, (socket) => {
      socket.write(`POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: ${key}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n`);
      // Whitespace: valid JSON so far, however far the gateway gets in parsing it as it arrives.
      const timer = setInterval(() => socket.writable && socket.write(' '), 200);
      socket.on('close', () => clearInterval(timer));
    });
    expect(exchange.closedAfterMs).toBeLessThan(5_000);
    const reply = parseRaw(exchange.text);
    expect(reply.status).toBe(408);
    expect(reply.body.error).toMatchObject({ type: 'timeout_error', message: expect.stringMatching(/not received in time/) });
    expect(exchange.text).not.toContain(key);

    const message = await stack.client(key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 8, messages: [MESSAGE] });
    expect(message.type).toBe('message');
    expect(stack.logs.join('')).not.toMatch(/unhandled/);
  });

  it('does not cut a keep-alive connection idle between requests for longer than the head deadline', async () => {
    const get = 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n';
    const exchange = await rawExchange(stack.url, (socket) => {
      socket.write(get);
      // Well past headersTimeout and a checking interval, well inside the 65 s keep-alive.
      setTimeout(() => socket.writable && socket.write(get), 2_000);
      setTimeout(() => socket.end(), 3_000);
    });
    expect(exchange.text.match(/HTTP\/1\.1 200 /g)).toHaveLength(2);
  });

  it('lets a response stream for longer than requestTimeout', async () => {
    const startedAt = Date.now();
    const stream = stack.client(key).messages.stream(
      { model: 'claude-haiku-4-5', max_tokens: 64, messages: [MESSAGE] },
      { headers: { 'x-fake-event-delay-ms': '150', 'x-fake-output-tokens': '16' } },
    );
    const message = await stream.finalMessage();
    expect(message.stop_reason).toBe('end_turn');
    expect(message.usage.output_tokens).toBe(16);
    // The stream outlasted the request deadline and a checking interval after it.
    expect(Date.now() - startedAt).toBeGreaterThan(2_000);
  });

  it('refuses a header block over 16 KiB with an Anthropic-shaped 431', async () => {
    const exchange = await rawExchange(stack.url, (socket) => {
      socket.write(`POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: ${key}\r\nx-padding: ${'a'.repeat(17 * 1024)}\r\n\r\n`);
    });
    const reply = parseRaw(exchange.text);
    expect(reply.status).toBe(431);
    expect(reply.body).toMatchObject({ type: 'error', error: { type: 'request_too_large', message: expect.stringMatching(/16384 bytes/) } });
  });

  it('answers a request Node cannot parse with an Anthropic-shaped 400', async () => {
    const exchange = await rawExchange(stack.url, (socket) => socket.write('NOT HTTP AT ALL\r\n\r\n'));
    const reply = parseRaw(exchange.text);
    expect(reply.status).toBe(400);
    expect(reply.body).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', message: 'Malformed HTTP request.' } });
  });
});

describe('header caps', () => {
  /** Node's rawHeaders shape: name, value, name, value, ... */
  const raw = (count: number, value = 'v') => Array.from({ length: count }, (_, i) => [`x-h${i}`, value]).flat();

  it('checkRequestHeaders passes ordinary requests and up to the caps', () => {
    const ordinary = ['Host', '127.0.0.1:8080', 'x-api-key', 'sk-cc-x', 'anthropic-version', '2023-06-01', 'content-type', 'application/json'];
    expect(() => checkRequestHeaders({ rawHeaders: ordinary })).not.toThrow();
    expect(() => checkRequestHeaders({ rawHeaders: raw(MAX_REQUEST_HEADERS) })).not.toThrow();
    // 'x-big' + ': ' + value + CRLF is exactly the byte cap.
    const exact = ['x-big', 'a'.repeat(MAX_REQUEST_HEADER_BYTES - 'x-big'.length - 4)];
    expect(() => checkRequestHeaders({ rawHeaders: exact })).not.toThrow();
  });

  it('checkRequestHeaders refuses more than 100 header lines or 16 KiB of them: 431 request_too_large', () => {
    const tooMany = thrownBy(() => checkRequestHeaders({ rawHeaders: raw(MAX_REQUEST_HEADERS + 1) }), RequestHeadersTooLargeError);
    expect(tooMany).toMatchObject({ status: 431, type: 'request_too_large' });
    expect(tooMany.message).toMatch(/101 headers; the gateway accepts at most 100/);
    // Repeated lines of one name count each (Node joins them in `headers`, not in `rawHeaders`).
    const repeated = Array.from({ length: 101 }, () => ['anthropic-beta', 'x']).flat();
    thrownBy(() => checkRequestHeaders({ rawHeaders: repeated }), RequestHeadersTooLargeError);
    const tooBig = thrownBy(() => checkRequestHeaders({ rawHeaders: ['x-big', 'a'.repeat(MAX_REQUEST_HEADER_BYTES)] }), RequestHeadersTooLargeError);
    expect(tooBig.message).toMatch(/at most 16384/);
    thrownBy(() => checkRequestHeaders({ rawHeaders: raw(50, 'a'.repeat(400)) }), RequestHeadersTooLargeError);
  });

  it('upstreamRequestHeaders never forwards more than the caps, and always adds the gateway\'s own', () => {
    const many = Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`x-h${i}`, 'v']));
    const forwarded = upstreamRequestHeaders({ 'x-api-key': 'sk-cc-client', ...many }, 'sk-ant-upstream');
    const clientHeaders = Object.keys(forwarded).filter((name) => name.startsWith('x-h'));
    expect(clientHeaders).toHaveLength(MAX_REQUEST_HEADERS);
    expect(forwarded).toMatchObject({ 'x-api-key': 'sk-ant-upstream', 'anthropic-version': '2023-06-01', 'content-type': 'application/json' });

    const big = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`x-h${i}`, 'a'.repeat(1000)]));
    const bounded = upstreamRequestHeaders(big, 'sk-ant-upstream');
    const bytes = Object.entries(bounded)
      .filter(([name]) => name.startsWith('x-h'))
      .reduce((sum, [name, value]) => sum + name.length + value.length + 4, 0);
    expect(bytes).toBeLessThanOrEqual(MAX_REQUEST_HEADER_BYTES);
    expect(bytes).toBeGreaterThan(MAX_REQUEST_HEADER_BYTES - 1100);
    expect(bounded['x-api-key']).toBe('sk-ant-upstream');
  });
});
