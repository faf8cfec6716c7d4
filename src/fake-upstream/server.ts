/**
 * A faithful, fast fake of Anthropic's Messages API, for tests and benchmarks.
 *
 * Built on `node:http` directly (no framework) so that it costs as little as
 * possible when used as the benchmark baseline. Responses are deterministic
 * functions of the request, so tests can predict every token count.
 *
 * Faults can be injected per request with headers (`x-fake-status`,
 * `x-fake-latency-ms`, `x-fake-cut-after`, `x-fake-drop-connection`,
 * `x-fake-stream-error-after`, `x-fake-output-tokens`, `x-fake-event-delay-ms`,
 * `x-fake-retry-after`; `x-fake-tool-use` makes the model call an offered tool and answer from
 * its result), queued with `queueFault()` for the next `POST /v1/messages` requests,
 * or standing (`options.fault`, `setFault()`) for every one — a whole upstream that is
 * overloaded or broken, as failover tests need.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, OutgoingHttpHeaders, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { createHash, randomUUID } from 'node:crypto';

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

export interface Usage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
}

export interface RecordedRequest {
  method: string;
  /** The request target as received, including any query string. */
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  requestId: string;
  /** Unix ms when the request's body had arrived. */
  receivedAt: number;
}

export interface Fault {
  /** Respond with this error status (Anthropic error shape). */
  status?: number;
  /** Wait this long before responding (overrides options.latencyMs). */
  latencyMs?: number;
  /** Streams: cut after message_start, content_block_start, ping and k deltas. JSON: cut mid-body. */
  cutAfter?: number;
  /** Destroy the socket before writing any response. */
  dropConnection?: boolean;
  /** Streams only: wait this long after each event (overrides options.eventDelayMs). */
  eventDelayMs?: number;
  /** Streams only: after k deltas send an `event: error` (overloaded_error) and end the stream, like the real API does mid-stream. */
  streamErrorAfter?: number;
  /** With `status`: the error's `retry-after` header, in seconds (a 429 gets "1" by default). */
  retryAfter?: string;
}

/** A stream the client closed before it was complete, as the fake saw it. */
export interface ClosedStream {
  requestId: string;
  /** Unix ms when the fake saw the connection close. */
  at: number;
}

export interface FakeUpstreamOptions {
  host?: string;
  port?: number;
  apiKey?: string;
  latencyMs?: number;
  eventDelayMs?: number;
  /** Record every request in `requests` (default true; the benchmark sets false). */
  record?: boolean;
  /** A fault applied to every `POST /v1/messages` (queued faults and headers override it). */
  fault?: Fault;
}

export interface FakeUpstream {
  url: string;
  apiKey: string;
  requests: RecordedRequest[];
  reported: Map<string, Usage>;
  totalReported(): Usage;
  queueFault(fault: Fault): void;
  /** Sets (or with undefined clears) the standing fault of every `POST /v1/messages`. */
  setFault(fault: Fault | undefined): void;
  /** Streams whose client closed the connection before the stream was complete. */
  closedStreams: ClosedStream[];
  reset(): void;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

const DEFAULT_API_KEY = 'sk-ant-fake-upstream-key';
const MAX_BODY_BYTES = 32 * 1024 * 1024; // the real Messages API limit
const DEFAULT_OUTPUT_WORDS = 12;

const WORDS = [
  'Hello', 'from', 'the', 'fake', 'Anthropic', 'upstream.', 'This', 'reply', 'is',
  'fully', 'deterministic', 'and', 'every', 'word', 'counts', 'as', 'one', 'token.',
] as const;

function wordAt(i: number): string {
  return WORDS[i % WORDS.length] ?? 'token';
}

/** The text of an N-word reply: words joined by single spaces. */
function replyText(n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += i === 0 ? wordAt(i) : ' ' + wordAt(i);
  return s;
}

/** A user message's text: a string, or its text blocks joined. */
function messageText(message: unknown): string {
  const content = (message as { content?: unknown } | undefined)?.content;
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content.map((b) => ((b as { type?: unknown }).type === 'text' ? String((b as { text?: unknown }).text ?? '') : '')).join(' ').trim();
}

/** A tool_result block's content as text (a string, or its text blocks). */
function toolResultText(block: Record<string, unknown>): string {
  const content = block['content'];
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content.map((c) => ((c as { type?: unknown }).type === 'text' ? String((c as { text?: unknown }).text ?? '') : '')).join(' ');
}

/**
 * `x-fake-tool-use: NAME` (or `first`): the model's turn when tools are offered, as the real API
 * would play it. The last message carries tool_result blocks → a text answer built from them.
 * Otherwise, when the named tool is offered (and tool_choice is not "none") → a short text and a
 * tool_use of it, whose input fills each required string argument with the user's text (or is
 * `x-fake-tool-input`, JSON). Undefined when neither applies: an ordinary answer follows.
 */
function toolTurn(body: Record<string, unknown>, wanted: string | undefined, inputOverride: string | undefined): { content: Record<string, unknown>[]; stopReason: 'tool_use' | 'end_turn' } | undefined {
  if (wanted === undefined) return undefined;
  const messages = body['messages'] as Record<string, unknown>[];
  const last = messages[messages.length - 1];
  const results = Array.isArray(last?.['content'])
    ? (last['content'] as Record<string, unknown>[]).filter((b) => b['type'] === 'tool_result')
    : [];
  if (last?.['role'] === 'user' && results.length > 0) {
    const texts = results.map((r) => `${r['is_error'] === true ? '(tool error) ' : ''}${toolResultText(r)}`.slice(0, 300));
    return { content: [{ type: 'text', text: `Based on the tool results: ${texts.join(' | ')}` }], stopReason: 'end_turn' };
  }
  const tools = Array.isArray(body['tools']) ? (body['tools'] as Record<string, unknown>[]) : [];
  const choice = body['tool_choice'] as { type?: unknown } | undefined;
  if (choice?.type === 'none') return undefined;
  const tool = wanted === 'first' ? tools[0] : tools.find((t) => t['name'] === wanted);
  if (!tool || typeof tool['name'] !== 'string') return undefined;
  let input: Record<string, unknown> = {};
  if (inputOverride !== undefined) {
    try {
      input = JSON.parse(inputOverride) as Record<string, unknown>;
    } catch {
      input = {};
    }
  } else {
    const schema = (tool['input_schema'] ?? {}) as { properties?: Record<string, { type?: unknown }>; required?: unknown };
    const required = Array.isArray(schema.required) ? (schema.required as string[]) : [];
    for (const name of required) if (schema.properties?.[name]?.type === 'string') input[name] = messageText(last);
  }
  return {
    content: [
      { type: 'text', text: `Let me use ${tool['name']}.` },
      { type: 'tool_use', id: newId('toolu_fake_'), name: tool['name'], input },
    ],
    stopReason: 'tool_use',
  };
}

/** Output tokens of a fake turn: a token per word of text, and ten per tool call. */
function contentTokens(content: Record<string, unknown>[]): number {
  let tokens = 0;
  for (const block of content) {
    if (block['type'] === 'text') tokens += String(block['text']).split(/\s+/).filter(Boolean).length;
    else tokens += 10;
  }
  return Math.max(1, tokens);
}

// Pre-serialised content_block_delta events (the hot path of streaming).
const DELTA_FIRST: string[] = WORDS.map((w) => sse('content_block_delta', {
  type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: w },
}));
const DELTA_REST: string[] = WORDS.map((w) => sse('content_block_delta', {
  type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: ' ' + w },
}));
const EV_BLOCK_START = sse('content_block_start', {
  type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' },
});
const EV_PING = sse('ping', { type: 'ping' });
const EV_BLOCK_STOP = sse('content_block_stop', { type: 'content_block_stop', index: 0 });
const EV_MESSAGE_STOP = sse('message_stop', { type: 'message_stop' });

function deltaEvent(i: number): string {
  const list = i === 0 ? DELTA_FIRST : DELTA_REST;
  return list[i % WORDS.length] ?? '';
}

function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

const ERROR_TYPES: Record<number, [type: string, message: string]> = {
  400: ['invalid_request_error', 'Invalid request (injected by fake upstream)'],
  401: ['authentication_error', 'invalid x-api-key'],
  402: ['billing_error', 'Your credit balance is too low to access the Anthropic API.'],
  403: ['permission_error', 'Your API key does not have permission to use the specified resource.'],
  404: ['not_found_error', 'The requested resource could not be found.'],
  413: ['request_too_large', 'Request exceeds the maximum allowed number of bytes.'],
  429: ['rate_limit_error', 'Number of request tokens has exceeded your per-minute rate limit.'],
  500: ['api_error', 'Internal server error'],
  504: ['timeout_error', 'Request timed out'],
  529: ['overloaded_error', 'Overloaded'],
};

function errorTypeFor(status: number): [string, string] {
  const known = ERROR_TYPES[status];
  if (known) return known;
  return status >= 500 ? ['api_error', 'Internal server error'] : ['invalid_request_error', 'Invalid request'];
}

interface ModelInfo {
  type: 'model';
  id: string;
  display_name: string;
  created_at: string;
  lifecycle: 'active';
  deprecated_at: null;
  retires_at: null;
  max_input_tokens: number;
  max_tokens: number;
}

function model(id: string, display_name: string, created_at: string, max_tokens: number): ModelInfo {
  return { type: 'model', id, display_name, created_at, lifecycle: 'active', deprecated_at: null, retires_at: null, max_input_tokens: 200_000, max_tokens };
}

// Newest first, like the real endpoint. Ids are ones the installed SDK knows; dates are made up.
const MODELS: ModelInfo[] = [
  model('claude-opus-5-5', 'Claude Opus 5.5', '2026-09-01T00:00:00Z', 128_000),
  model('claude-sonnet-5-5', 'Claude Sonnet 5.5', '2026-09-01T00:00:00Z', 64_000),
  model('claude-haiku-5-5', 'Claude Haiku 5.5', '2026-09-01T00:00:00Z', 64_000),
  model('claude-opus-4-8', 'Claude Opus 4.8', '2026-05-01T00:00:00Z', 128_000),
  model('claude-sonnet-4-6', 'Claude Sonnet 4.6', '2026-02-01T00:00:00Z', 64_000),
  model('claude-haiku-4-5-20251001', 'Claude Haiku 4.5', '2025-10-15T00:00:00Z', 64_000),
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

function newId(prefix: string): string {
  return prefix + randomUUID().replaceAll('-', '').slice(0, 24);
}

function headerString(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function headerInt(req: IncomingMessage, name: string): number | undefined {
  const v = headerString(req, name);
  if (v === undefined || v.trim() === '') return undefined;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

interface InputMeasure { total: number; fingerprint: string; cacheable: boolean }

/** input tokens = ceil(bytes(JSON.stringify({system, messages, tools})) / 4). */
function measureInput(body: Record<string, unknown>, raw: string): InputMeasure {
  const s = JSON.stringify({ system: body['system'], messages: body['messages'], tools: body['tools'] });
  const total = Math.ceil(Buffer.byteLength(s) / 4);
  const cacheable = raw.includes('"cache_control"');
  return { total, fingerprint: cacheable ? createHash('sha256').update(s).digest('base64') : '', cacheable };
}

/** Validation in the spirit of the real API's messages. Returns an error message or null. */
function validateMessagesBody(body: Record<string, unknown>, needMaxTokens: boolean): string | null {
  const model = body['model'];
  if (model === undefined) return 'model: Field required';
  if (typeof model !== 'string') return 'model: Input should be a valid string';
  if (model.length === 0) return 'model: String should have at least 1 character';
  if (needMaxTokens) {
    const mt = body['max_tokens'];
    if (mt === undefined) return 'max_tokens: Field required';
    if (typeof mt !== 'number' || !Number.isInteger(mt)) return 'max_tokens: Input should be a valid integer';
    if (mt < 1) return 'max_tokens: Input should be greater than or equal to 1';
  }
  const messages = body['messages'];
  if (messages === undefined) return 'messages: Field required';
  if (!Array.isArray(messages)) return 'messages: Input should be a valid list';
  if (messages.length === 0) return 'messages: at least one message is required';
  for (let i = 0; i < messages.length; i++) {
    const m: unknown = messages[i];
    if (!isPlainObject(m)) return `messages.${i}: Input should be a valid dictionary or object`;
    const role = m['role'];
    if (role !== 'user' && role !== 'assistant' && role !== 'system') {
      return `messages.${i}.role: Input should be 'user', 'assistant' or 'system'`;
    }
    const content = m['content'];
    if (content === undefined) return `messages.${i}.content: Field required`;
    if (typeof content !== 'string' && !Array.isArray(content)) {
      return `messages.${i}.content: Input should be a valid string or list`;
    }
  }
  if (body['stream'] !== undefined && typeof body['stream'] !== 'boolean') return 'stream: Input should be a valid boolean';
  return null;
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

export async function startFakeUpstream(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const host = opts.host ?? '127.0.0.1';
  const apiKey = opts.apiKey ?? DEFAULT_API_KEY;
  const globalLatency = opts.latencyMs ?? 0;
  const eventDelayMs = opts.eventDelayMs ?? 0;
  const record = opts.record ?? true;
  /** The usage ledger; off with `record: false` so a long benchmark does not grow it forever. */
  const report = (requestId: string, usage: Usage): void => {
    if (record) reported.set(requestId, usage);
  };

  const requests: RecordedRequest[] = [];
  const reported = new Map<string, Usage>();
  const faults: Fault[] = [];
  let standingFault: Fault = { ...opts.fault };
  const closedStreams: ClosedStream[] = [];
  const cacheSeen = new Set<string>();
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let closed = false;

  // Rate-limit headers like the real API; reset timestamps refreshed at most once a second.
  let staticHeaders: OutgoingHttpHeaders = {};
  let staticHeadersAt = 0;
  function commonHeaders(requestId: string): OutgoingHttpHeaders {
    const now = Date.now();
    if (now - staticHeadersAt >= 1000) {
      staticHeadersAt = now;
      const reset = new Date(Math.floor(now / 1000) * 1000 + 60_000).toISOString().replace('.000Z', 'Z');
      staticHeaders = {
        'anthropic-organization-id': 'org-fake-0001',
        'anthropic-ratelimit-requests-limit': '4000',
        'anthropic-ratelimit-requests-remaining': '3999',
        'anthropic-ratelimit-requests-reset': reset,
        'anthropic-ratelimit-tokens-limit': '480000',
        'anthropic-ratelimit-tokens-remaining': '480000',
        'anthropic-ratelimit-tokens-reset': reset,
        'anthropic-ratelimit-input-tokens-limit': '400000',
        'anthropic-ratelimit-input-tokens-remaining': '400000',
        'anthropic-ratelimit-input-tokens-reset': reset,
        'anthropic-ratelimit-output-tokens-limit': '80000',
        'anthropic-ratelimit-output-tokens-remaining': '80000',
        'anthropic-ratelimit-output-tokens-reset': reset,
      };
    }
    return { ...staticHeaders, 'request-id': requestId };
  }

  function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => { timers.delete(t); resolve(); }, ms);
      timers.add(t);
    });
  }

  /** Resolves once `chunk` has been flushed to the socket (or the response closed). */
  function writeFlushed(res: ServerResponse, chunk: string): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => { res.off('close', done); resolve(); };
      res.once('close', done);
      res.write(chunk, done);
    });
  }

  function waitDrain(res: ServerResponse): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => { res.off('drain', done); res.off('close', done); resolve(); };
      res.once('drain', done);
      res.once('close', done);
    });
  }

  function destroySocket(res: ServerResponse): void {
    const s = res.socket;
    if (s) s.destroy();
    else res.destroy();
  }

  /** Send a JSON body; with `cut`, send headers (full content-length) and half the body, then destroy the socket. Returns true if fully sent. */
  async function sendJson(res: ServerResponse, status: number, requestId: string, body: unknown, cut: boolean, extra?: OutgoingHttpHeaders): Promise<boolean> {
    const buf = Buffer.from(JSON.stringify(body));
    const headers = commonHeaders(requestId);
    headers['content-type'] = 'application/json';
    headers['content-length'] = buf.length;
    if (extra) Object.assign(headers, extra);
    res.writeHead(status, headers);
    if (!cut) {
      res.end(buf);
      return true;
    }
    await new Promise<void>((resolve) => {
      const done = (): void => { res.off('close', done); resolve(); };
      res.once('close', done);
      res.write(buf.subarray(0, Math.floor(buf.length / 2)), done);
    });
    destroySocket(res);
    return false;
  }

  function sendError(res: ServerResponse, status: number, requestId: string, message: string | undefined, cut: boolean, type?: string, fault?: Fault): Promise<boolean> {
    const [defType, defMessage] = errorTypeFor(status);
    const retryAfter = fault?.retryAfter ?? (status === 429 ? '1' : undefined);
    const extra: OutgoingHttpHeaders | undefined = retryAfter === undefined ? undefined : { 'retry-after': retryAfter };
    return sendJson(res, status, requestId, {
      type: 'error',
      error: { type: type ?? defType, message: message ?? defMessage },
      request_id: requestId,
    }, cut, extra);
  }

  async function handleMessages(req: IncomingMessage, res: ServerResponse, requestId: string, body: Record<string, unknown>, raw: string, fault: Fault): Promise<void> {
    const maxTokens = body['max_tokens'] as number;
    const model = body['model'] as string;
    const asked = headerInt(req, 'x-fake-output-tokens');
    let n: number;
    let stopReason: 'end_turn' | 'max_tokens';
    if (asked !== undefined) {
      n = Math.min(asked, maxTokens);
      stopReason = asked > maxTokens ? 'max_tokens' : 'end_turn';
    } else {
      n = Math.min(maxTokens, DEFAULT_OUTPUT_WORDS);
      stopReason = 'end_turn';
    }

    const m = measureInput(body, raw);
    let input = m.total;
    let creation = 0;
    let read = 0;
    if (m.cacheable) {
      const cached = Math.floor(m.total * 0.75);
      input = m.total - cached;
      if (cacheSeen.has(m.fingerprint)) read = cached;
      else { creation = cached; cacheSeen.add(m.fingerprint); }
    }
    const msgId = newId('msg_fake_');

    if (headerString(req, 'x-fake-content') === 'rich') {
      await sendRich(res, requestId, body, model, msgId, n, { input, creation, read });
      return;
    }
    const turn = toolTurn(body, headerString(req, 'x-fake-tool-use'), headerString(req, 'x-fake-tool-input'));
    if (turn) {
      await sendContent(res, requestId, body, model, msgId, turn.content, turn.stopReason, { input, creation, read });
      return;
    }

    if (body['stream'] !== true) {
      const usage = {
        input_tokens: input,
        cache_creation_input_tokens: creation,
        cache_read_input_tokens: read,
        cache_creation: { ephemeral_5m_input_tokens: creation, ephemeral_1h_input_tokens: 0 },
        output_tokens: n,
        service_tier: 'standard',
      };
      const message = {
        id: msgId,
        type: 'message',
        role: 'assistant',
        model,
        content: [{ type: 'text', text: replyText(n) }],
        stop_reason: stopReason,
        stop_sequence: null,
        stop_details: null,
        usage,
      };
      const complete = await sendJson(res, 200, requestId, message, fault.cutAfter !== undefined);
      if (complete) {
        report(requestId, { input_tokens: input, output_tokens: n, cache_creation_input_tokens: creation, cache_read_input_tokens: read });
      }
      return;
    }

    // ---- streaming ----
    let gone = false;
    let cutByUs = false;
    res.once('close', () => {
      gone = true;
      if (!res.writableFinished && !closed && !cutByUs) closedStreams.push({ requestId, at: Date.now() });
    });
    const headers = commonHeaders(requestId);
    headers['content-type'] = 'text/event-stream; charset=utf-8';
    headers['cache-control'] = 'no-cache';
    res.writeHead(200, headers);

    const startEvent = sse('message_start', {
      type: 'message_start',
      message: {
        id: msgId,
        type: 'message',
        role: 'assistant',
        model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        stop_details: null,
        usage: {
          input_tokens: input,
          cache_creation_input_tokens: creation,
          cache_read_input_tokens: read,
          cache_creation: { ephemeral_5m_input_tokens: creation, ephemeral_1h_input_tokens: 0 },
          output_tokens: 1,
          service_tier: 'standard',
        },
      },
    });

    const delayMs = fault.eventDelayMs ?? eventDelayMs;
    const cutAfter = fault.cutAfter;
    const errorAfter = fault.streamErrorAfter;
    // Deltas to write before the stream stops (cut, error) or all of them.
    const stopAt = Math.min(n, cutAfter ?? Infinity, errorAfter ?? Infinity);
    const cutting = cutAfter !== undefined && (errorAfter === undefined || cutAfter <= errorAfter);
    const erroring = !cutting && errorAfter !== undefined;

    // Write one event; honours eventDelayMs and backpressure. Returns false if the client went away.
    const emit = async (chunk: string, flush: boolean): Promise<boolean> => {
      if (gone || closed) return false;
      if (flush) {
        await writeFlushed(res, chunk);
      } else {
        const ok = res.write(chunk);
        if (!ok) await waitDrain(res);
      }
      if (gone || closed) return false;
      if (delayMs > 0) await sleep(delayMs);
      return !gone && !closed;
    };

    // The last event before a cut must be flushed to the socket before the socket is destroyed.
    const totalBeforeStop = 3 + stopAt; // message_start, content_block_start, ping, deltas
    let written = 0;
    const next = (chunk: string): Promise<boolean> => {
      written++;
      return emit(chunk, cutting && written === totalBeforeStop);
    };

    if (gone || closed) return;
    // emit() writes synchronously, so from here on message_start has been handed to the socket.
    const started = next(startEvent);
    report(requestId, { input_tokens: input, output_tokens: 1, cache_creation_input_tokens: creation, cache_read_input_tokens: read });
    if (!(await started)) return;
    if (!(await next(EV_BLOCK_START))) return;
    if (!(await next(EV_PING))) return;
    // Each delta is one generated token: the ledger learns it as the delta goes out, so a stream
    // that a client abandons or that is cut is recorded with the output it carried (the API
    // itself bills generated tokens whether or not anyone reads them).
    const startUsage = { input_tokens: input, output_tokens: 1, cache_creation_input_tokens: creation, cache_read_input_tokens: read };
    for (let i = 0; i < stopAt; i++) {
      const sent = next(deltaEvent(i));
      if (i > 0) report(requestId, { ...startUsage, output_tokens: i + 1 });
      if (!(await sent)) return;
    }
    if (cutting) {
      cutByUs = true;
      destroySocket(res);
      return;
    }
    if (erroring) {
      res.end(sse('error', { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' }, request_id: requestId }));
      return;
    }
    if (!(await emit(EV_BLOCK_STOP, false))) return;
    const deltaUsage = { input_tokens: input, cache_creation_input_tokens: creation, cache_read_input_tokens: read, output_tokens: n };
    const deltaEv = sse('message_delta', {
      type: 'message_delta',
      delta: { stop_reason: stopReason, stop_sequence: null, stop_details: null },
      usage: deltaUsage,
    });
    if (gone || closed) return;
    res.write(deltaEv);
    report(requestId, { input_tokens: input, output_tokens: n, cache_creation_input_tokens: creation, cache_read_input_tokens: read });
    if (delayMs > 0) {
      await sleep(delayMs);
      if (gone || closed) return;
    }
    res.end(EV_MESSAGE_STOP);
  }

  /**
   * An answer of the given content blocks (thinking, text, tool_use), as JSON or streamed with the
   * API's delta types: thinking in two thinking_delta events and a signature_delta, text in
   * word-sized text_delta events, tool input in two input_json_delta parts.
   */
  async function sendContent(
    res: ServerResponse,
    requestId: string,
    body: Record<string, unknown>,
    model: string,
    msgId: string,
    content: Record<string, unknown>[],
    stopReason: string,
    tokens: { input: number; creation: number; read: number },
    output = contentTokens(content),
  ): Promise<void> {
    const usage = {
      input_tokens: tokens.input, cache_creation_input_tokens: tokens.creation, cache_read_input_tokens: tokens.read,
      cache_creation: { ephemeral_5m_input_tokens: tokens.creation, ephemeral_1h_input_tokens: 0 }, output_tokens: output, service_tier: 'standard',
    };
    const reported = { input_tokens: tokens.input, output_tokens: output, cache_creation_input_tokens: tokens.creation, cache_read_input_tokens: tokens.read };
    if (body['stream'] !== true) {
      const message = { id: msgId, type: 'message', role: 'assistant', model, content, stop_reason: stopReason, stop_sequence: null, stop_details: null, usage };
      if (await sendJson(res, 200, requestId, message, false)) report(requestId, reported);
      return;
    }
    const headers = commonHeaders(requestId);
    headers['content-type'] = 'text/event-stream; charset=utf-8';
    headers['cache-control'] = 'no-cache';
    res.writeHead(200, headers);
    const events = [
      sse('message_start', { type: 'message_start', message: { id: msgId, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, stop_details: null, usage: { ...usage, output_tokens: 1 } } }),
      EV_PING,
    ];
    content.forEach((block, index) => {
      if (block['type'] === 'thinking') {
        const thinking = String(block['thinking']);
        events.push(sse('content_block_start', { type: 'content_block_start', index, content_block: { type: 'thinking', thinking: '', signature: '' } }));
        events.push(sse('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'thinking_delta', thinking: thinking.slice(0, 20) } }));
        events.push(sse('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'thinking_delta', thinking: thinking.slice(20) } }));
        events.push(sse('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'signature_delta', signature: block['signature'] } }));
      } else if (block['type'] === 'text') {
        events.push(sse('content_block_start', { type: 'content_block_start', index, content_block: { type: 'text', text: '' } }));
        for (const word of String(block['text']).split(/(?= )/)) {
          events.push(sse('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'text_delta', text: word } }));
        }
      } else {
        const inputJson = JSON.stringify(block['input']);
        events.push(sse('content_block_start', { type: 'content_block_start', index, content_block: { ...block, input: {} } }));
        const half = Math.floor(inputJson.length / 2);
        events.push(sse('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: inputJson.slice(0, half) } }));
        events.push(sse('content_block_delta', { type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: inputJson.slice(half) } }));
      }
      events.push(sse('content_block_stop', { type: 'content_block_stop', index }));
    });
    events.push(sse('message_delta', { type: 'message_delta', delta: { stop_reason: stopReason, stop_sequence: null, stop_details: null }, usage }), EV_MESSAGE_STOP);
    report(requestId, { ...reported, output_tokens: 1 });
    for (const event of events) {
      if (res.destroyed || closed) return;
      if (!res.write(event)) await waitDrain(res);
    }
    report(requestId, reported);
    res.end();
  }

  /**
   * `x-fake-content: rich`: an answer with a thinking block (and its signature), the N-word text
   * and a tool_use block, stop_reason tool_use — as JSON or as the API streams it (thinking_delta,
   * signature_delta, text_delta, input_json_delta in two parts). No faults in this mode.
   */
  function sendRich(
    res: ServerResponse,
    requestId: string,
    body: Record<string, unknown>,
    model: string,
    msgId: string,
    n: number,
    tokens: { input: number; creation: number; read: number },
  ): Promise<void> {
    const thinking = 'The user wants the weather; I should call the tool. Ünïcödé ✓.';
    const signature = createHash('sha256').update(msgId).digest('base64') + 'EqQBCkgIARABGAIiQL';
    const input = { city: 'Paris', days: 3, units: 'metric', note: 'naïve "quotes" \\ back' };
    const content = [
      { type: 'thinking', thinking, signature },
      { type: 'text', text: replyText(n) },
      { type: 'tool_use', id: newId('toolu_fake_'), name: 'get_weather', input },
    ];
    return sendContent(res, requestId, body, model, msgId, content, 'tool_use', tokens, n + 20);
  }

  async function handleModels(res: ServerResponse, requestId: string, query: string, cut: boolean): Promise<void> {
    const params = new URLSearchParams(query);
    const limitRaw = params.get('limit');
    let limit = 20;
    if (limitRaw !== null) {
      const l = Number(limitRaw);
      if (!Number.isInteger(l) || l < 1 || l > 1000) {
        await sendError(res, 400, requestId, 'limit: Input should be between 1 and 1000', cut);
        return;
      }
      limit = l;
    }
    let list = MODELS;
    const after = params.get('after_id');
    const before = params.get('before_id');
    let hasMore: boolean;
    if (before !== null) {
      const idx = list.findIndex((x) => x.id === before);
      const endIdx = idx < 0 ? 0 : idx;
      const startIdx = Math.max(0, endIdx - limit);
      hasMore = startIdx > 0;
      list = list.slice(startIdx, endIdx);
    } else {
      const idx = after !== null ? list.findIndex((x) => x.id === after) : -1;
      const startIdx = after !== null ? (idx < 0 ? list.length : idx + 1) : 0;
      hasMore = startIdx + limit < list.length;
      list = list.slice(startIdx, startIdx + limit);
    }
    await sendJson(res, 200, requestId, {
      data: list,
      has_more: hasMore,
      first_id: list[0]?.id ?? null,
      last_id: list[list.length - 1]?.id ?? null,
    }, cut);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = newId('req_fake_');
    const target = req.url ?? '/';
    const method = req.method ?? 'GET';

    // Read the whole body (discarding past the size limit).
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    const declared = Number(req.headers['content-length'] ?? '0');
    if (declared > MAX_BODY_BYTES) tooLarge = true;
    try {
      for await (const chunk of req) {
        const b = chunk as Buffer;
        size += b.length;
        if (size > MAX_BODY_BYTES) tooLarge = true;
        if (!tooLarge) chunks.push(b);
      }
    } catch {
      return; // client aborted
    }
    const raw = tooLarge ? '' : chunks.length === 1 ? (chunks[0] as Buffer).toString('utf8') : Buffer.concat(chunks).toString('utf8');

    if (record) requests.push({ method, path: target, headers: req.headers, body: raw, requestId, receivedAt: Date.now() });

    const q = target.indexOf('?');
    const pathname = q < 0 ? target : target.slice(0, q);
    const query = q < 0 ? '' : target.slice(q + 1);
    const isMessages = method === 'POST' && pathname === '/v1/messages';

    // Faults: queued (POST /v1/messages only), overridden field by field by headers.
    const fault: Fault = !isMessages ? {} : faults.length > 0 ? { ...standingFault, ...faults.shift() } : { ...standingFault };
    const hStatus = headerInt(req, 'x-fake-status');
    if (hStatus !== undefined) fault.status = hStatus;
    const hLatency = headerInt(req, 'x-fake-latency-ms');
    if (hLatency !== undefined) fault.latencyMs = hLatency;
    const hCut = headerInt(req, 'x-fake-cut-after');
    if (hCut !== undefined) fault.cutAfter = hCut;
    const hErr = headerInt(req, 'x-fake-stream-error-after');
    if (hErr !== undefined) fault.streamErrorAfter = hErr;
    const hDelay = headerInt(req, 'x-fake-event-delay-ms');
    if (hDelay !== undefined) fault.eventDelayMs = hDelay;
    const hRetryAfter = headerString(req, 'x-fake-retry-after');
    if (hRetryAfter !== undefined) fault.retryAfter = hRetryAfter;
    const hDrop = headerString(req, 'x-fake-drop-connection');
    if (hDrop !== undefined && hDrop !== '0' && hDrop.toLowerCase() !== 'false') fault.dropConnection = true;

    const latency = fault.latencyMs ?? globalLatency;
    if (latency > 0) {
      await sleep(latency);
      if (closed) return;
    }
    if (fault.dropConnection) {
      req.socket.destroy();
      return;
    }
    const cut = fault.cutAfter !== undefined;

    if (tooLarge) {
      await sendError(res, 413, requestId, undefined, cut);
      return;
    }

    // Authentication (x-api-key, or Authorization: Bearer).
    const key = headerString(req, 'x-api-key');
    const authz = headerString(req, 'authorization');
    const bearer = authz !== undefined && authz.toLowerCase().startsWith('bearer ') ? authz.slice(7).trim() : undefined;
    if (key !== apiKey && bearer !== apiKey) {
      await sendError(res, 401, requestId, key === undefined && bearer === undefined ? 'x-api-key header is required' : 'invalid x-api-key', cut);
      return;
    }
    if (headerString(req, 'anthropic-version') === undefined) {
      await sendError(res, 400, requestId, 'anthropic-version: header is required', cut);
      return;
    }

    if (fault.status !== undefined && fault.status >= 400 && fault.status <= 599) {
      await sendError(res, fault.status, requestId, undefined, cut, undefined, fault);
      return;
    }

    const isCount = method === 'POST' && pathname === '/v1/messages/count_tokens';
    if (isMessages || isCount) {
      let body: unknown;
      try {
        body = JSON.parse(raw);
      } catch (e) {
        await sendError(res, 400, requestId, `There was an error parsing the body of your request: ${(e as Error).message}`, cut);
        return;
      }
      if (!isPlainObject(body)) {
        await sendError(res, 400, requestId, 'Request body must be a JSON object', cut);
        return;
      }
      const invalid = validateMessagesBody(body, isMessages);
      if (invalid !== null) {
        await sendError(res, 400, requestId, invalid, cut);
        return;
      }
      if (isCount) {
        await sendJson(res, 200, requestId, { input_tokens: measureInput(body, raw).total }, cut);
        return;
      }
      await handleMessages(req, res, requestId, body, raw, fault);
      return;
    }

    if (method === 'GET' && pathname === '/v1/models') {
      await handleModels(res, requestId, query, cut);
      return;
    }
    if (method === 'GET' && pathname.startsWith('/v1/models/')) {
      const id = decodeURIComponent(pathname.slice('/v1/models/'.length));
      const model = MODELS.find((x) => x.id === id);
      if (model) await sendJson(res, 200, requestId, model, cut);
      else await sendError(res, 404, requestId, `model: ${id}`, cut);
      return;
    }

    await sendError(res, 404, requestId, 'Not found', cut);
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // Should not happen; never leave the client hanging.
      if (!res.headersSent && !res.destroyed) {
        const id = newId('req_fake_');
        void sendError(res, 500, id, `fake upstream internal error: ${(err as Error)?.message ?? String(err)}`, false);
      } else {
        destroySocket(res);
      }
    });
  });
  server.keepAliveTimeout = 65_000;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.setNoDelay(true);
    s.once('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
    else socket.destroy();
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const urlHost = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;

  return {
    url: `http://${urlHost}:${addr.port}`,
    apiKey,
    requests,
    reported,
    totalReported(): Usage {
      const t: Usage = { input_tokens: 0, output_tokens: 0, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 };
      for (const u of reported.values()) {
        t.input_tokens += u.input_tokens;
        t.output_tokens += u.output_tokens;
        t.cache_creation_input_tokens += u.cache_creation_input_tokens;
        t.cache_read_input_tokens += u.cache_read_input_tokens;
      }
      return t;
    },
    queueFault(fault: Fault): void {
      faults.push({ ...fault });
    },
    setFault(fault: Fault | undefined): void {
      standingFault = { ...fault };
    },
    closedStreams,
    reset(): void {
      requests.length = 0;
      reported.clear();
      faults.length = 0;
      closedStreams.length = 0;
      cacheSeen.clear();
    },
    close(): Promise<void> {
      if (closed) return Promise.resolve();
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        for (const s of sockets) s.destroy();
        sockets.clear();
      });
    },
  };
}
