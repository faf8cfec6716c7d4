/**
 * The request pipeline of the metered endpoints, top to bottom:
 *
 *   authenticate → admit (budget spent?, concurrency, rpm) → read and scan the body (size limit,
 *   JSON, the fields the gateway acts on) → resolve model (catalog, key's list) → cache (a hit
 *   answers here) → reserve (strict mode) → upstream → relay (JSON, or SSE as it arrives)
 *   → finish (release, free the slot, bill the tokens, record usage)
 *
 * The stages' contract: each stage either passes on or answers early (a refusal is a thrown
 * GatewayError, mapped to the wire once by exchange.ts's errorAnswer; the cache's hit is written
 * here). What a stage acquires it hands to the meter (`RequestMeter.admitted`, `defer`), and
 * `finish` — the one exit, run exactly once whatever happened — releases it all in reverse order.
 *
 * The pipeline works on Node's request and response (an Exchange, exchange.ts) and writes every
 * answer to the socket itself: request-listener.ts hands it these routes straight from Node.
 *
 * Admission comes before the body: a key at its limits is refused without the gateway reading,
 * buffering or parsing a byte of its upload, and an upload in progress holds a concurrency slot.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ModelCatalog } from './catalog.ts';
import type { Config, ModelEntry } from './config.ts';
import { consultCache, NOT_CACHEABLE, type CacheCounters, type CacheDecision, type ResponseCache } from './cache/stage.ts';
import { MessageAccumulator } from './cache/accumulate.ts';
import { replaySse } from './cache/replay.ts';
import { clip, InvalidRequestError, UpstreamError } from './errors.ts';
import { drained, sendBody, sendWebResponse, type Exchange } from './exchange.ts';
import type { KeyRegistry } from './keys.ts';
import type { McpConnections } from './mcp/types.ts';
import type { GatewayMetrics } from './metrics.ts';
import type { Admission, RateLimiter } from './limits/types.ts';
import type { Logger } from './logger.ts';
import { readScannedRequest, withModel, type ScannedRequest } from './request-body.ts';
import { openRequestMcpServers } from './mcp/request-servers.ts';
import { listOfferedTools, runToolLoop } from './mcp/tool-loop.ts';
import type { KeyRecord, UsageOutcome, UsageRecord } from './store/types.ts';
import { checkRequestHeaders, clientResponseHeaders, STREAM_RESPONSE_HEADERS, type PlainHeaders } from './upstream/headers.ts';
import { streamFailureMessage, type UpstreamPool, type UpstreamReply, type UpstreamStream } from './upstream/pool.ts';
import { billedTokens, emptyUsage, parseJsonBody, SseUsageTap, usageFromMessage, type TokenUsage, type UsageRecorder } from './usage.ts';

export interface GatewayServices {
  /** The response cache (src/cache/) and this instance's counts of its decisions. */
  cache: ResponseCache;
  cacheCounters: CacheCounters;
  config: Config;
  logger: Logger;
  keys: KeyRegistry;
  limits: RateLimiter;
  catalog: ModelCatalog;
  /** The upstreams and the failover policy (src/upstream/pool.ts). */
  upstream: UpstreamPool;
  /** The attached MCP servers (config mcpServers), for the tool loop and /mcp. */
  mcp: McpConnections;
  /** Prometheus metrics (metrics.ts): every finished request is counted there. */
  metrics: GatewayMetrics;
  usage: UsageRecorder;
}

/** The request's key (or an AuthenticationError), noted on the exchange for the access log. */
function authenticate(x: Exchange, keys: KeyRegistry): KeyRecord {
  const key = keys.authenticate(x.incoming.headers, x.startedAt);
  x.keyId = key.id;
  return key;
}

/**
 * Strict mode's bound on input tokens: one token per body byte (a token never covers less than
 * a byte of text, and base64 media costs far fewer tokens than bytes), plus room for the system
 * prompt the API adds when tools are used.
 */
export function inputTokenBound(bodyBytes: number): number {
  return bodyBytes + 1024;
}

/**
 * Strict mode's reservation: the most a request can bill. Output cannot exceed max_tokens; input
 * (in whatever mix of plain, cache-creation and cache-read tokens upstream reports) cannot exceed
 * the input bound, weighed at the heaviest input weight.
 */
export function strictReservation(maxTokens: number, bodyBytes: number, weights: Config['budget']['weights']): number {
  const inputWeight = Math.max(weights.input, weights.cache_creation, weights.cache_read);
  return Math.ceil(maxTokens * weights.output + inputTokenBound(bodyBytes) * inputWeight);
}

/** What a request leaves in the usage log, filled in as the pipeline learns it. */
class RequestMeter {
  private readonly services: GatewayServices;
  private readonly record: Pick<UsageRecord, 'keyId' | 'requestId' | 'endpoint' | 'model' | 'cached' | 'streamed' | 'savedTokens' | 'upstream'>;
  private readonly startedAt: number;
  private admission: Admission | undefined;
  private done = false;
  /** The cache's decision, for the metrics: hit, miss, bypass, or none (never consulted). */
  cacheStatus = 'none';
  /** What later stages acquired, released in reverse order when the request finishes. */
  private readonly releases: Array<() => void> = [];

  constructor(services: GatewayServices, x: Exchange, key: KeyRecord, endpoint: UsageRecord['endpoint']) {
    this.services = services;
    this.startedAt = x.startedAt;
    this.record = { keyId: key.id, requestId: x.requestId, endpoint, model: '', cached: false, streamed: false };
  }

  set model(model: string) {
    this.record.model = model;
  }

  set streamed(streamed: boolean) {
    this.record.streamed = streamed;
  }

  /** The upstream that served the request (its name). */
  set upstream(name: string) {
    this.record.upstream = name;
  }

  /** Answered from the cache, saving what the original answer was billed. */
  cachedHit(savedTokens: number): void {
    this.record.cached = true;
    this.record.savedTokens = savedTokens;
  }

  /** Runs `release` when the request finishes, whatever happened (stages release in reverse order). */
  defer(release: () => void): void {
    this.releases.push(release);
  }

  /** The budget tokens `usage` bills (what a cached answer saves its next askers). */
  billable(usage: TokenUsage): number {
    return billedTokens(usage, this.services.config.budget.weights);
  }

  admitted(admission: Admission): void {
    this.admission = admission;
  }

  async reserve(tokens: number): Promise<void> {
    await this.admission?.reserve(tokens, Date.now());
  }

  get rateLimitHeaders(): Record<string, string> {
    return this.admission?.headers ?? {};
  }

  /**
   * Ends the request: releases what the stages acquired, frees its limits, bills `usage` (when
   * billable; or exactly `billedOverride`) and records it. Once.
   */
  finish(status: number, outcome: UsageOutcome, usage: TokenUsage = emptyUsage(), billable = true, billedOverride?: number): void {
    if (this.done) return;
    this.done = true;
    for (let i = this.releases.length - 1; i >= 0; i--) this.releases[i]!();
    const billed = billedOverride ?? (billable ? this.billable(usage) : 0);
    this.admission?.finish(billed);
    const now = Date.now();
    const latencyMs = now - this.startedAt;
    const { logger } = this.services;
    if (logger.isLevelEnabled('debug')) logger.debug({ requestId: this.record.requestId, status, outcome, billed }, 'usage');
    this.services.metrics.requestFinished({
      keyId: this.record.keyId,
      endpoint: this.record.endpoint,
      model: this.record.model,
      status,
      outcome,
      cache: this.cacheStatus,
      latencyMs,
      tokens: usage,
    });
    this.services.usage.record({
      ...this.record,
      ts: now,
      status,
      outcome,
      latencyMs,
      inputTokens: usage.input_tokens,
      outputTokens: usage.output_tokens,
      cacheCreationTokens: usage.cache_creation_input_tokens,
      cacheReadTokens: usage.cache_read_input_tokens,
      billedTokens: billed,
    });
  }

  /** A refusal or fault before any response: nothing billed, the status recorded. */
  fail(err: unknown, signal: AbortSignal): void {
    const status = signal.aborted ? 499 : ((err as { status?: number }).status ?? 500);
    this.finish(status, signal.aborted ? 'client_closed' : status < 500 ? 'rejected' : 'error');
  }
}

/** What differs between the two metered endpoints. */
interface MeteredEndpoint {
  name: UsageRecord['endpoint'];
  path: string;
  /**
   * Counts against the token budget and requires max_tokens (count_tokens counts against rpm
   * and concurrency only, and takes no max_tokens).
   */
  budgeted: boolean;
}

const MESSAGES: MeteredEndpoint = { name: 'messages', path: '/v1/messages', budgeted: true };
const COUNT_TOKENS: MeteredEndpoint = { name: 'count_tokens', path: '/v1/messages/count_tokens', budgeted: false };

/**
 * POST /v1/messages, JSON or SSE. Resolves once the answer is written (a stream: once it is under
 * way); a refusal before anything was written rejects with a GatewayError.
 */
export function handleMessages(x: Exchange, s: GatewayServices): Promise<void> {
  return proxyMetered(x, s, MESSAGES);
}

/** POST /v1/messages/count_tokens. */
export function handleCountTokens(x: Exchange, s: GatewayServices): Promise<void> {
  return proxyMetered(x, s, COUNT_TOKENS);
}

async function proxyMetered(x: Exchange, s: GatewayServices, endpoint: MeteredEndpoint): Promise<void> {
  const { incoming, outgoing, signal } = x;
  const key = authenticate(x, s.keys);
  const meter = new RequestMeter(s, x, key, endpoint.name);
  try {
    checkRequestHeaders(incoming);
    meter.admitted(await s.limits.admit(key, x.startedAt, { checkBudget: endpoint.budgeted }));
    const request = await readScannedRequest(incoming, { limitBytes: s.config.maxBodyBytes, requireMaxTokens: endpoint.budgeted });
    meter.streamed = request.stream;
    meter.model = clip(request.model);
    const model = s.catalog.resolve(request.model, key);
    meter.model = model.id;

    // A key with MCP servers attached (or a request naming its own) gets the server-side tool
    // loop (src/mcp/tool-loop.ts). Its answers use live tools, so the cache is not consulted.
    if (endpoint.budgeted && wantsToolLoop(key, request, incoming.headers)) {
      return await serveWithTools(x, s, meter, key, request, model);
    }

    // A hit answers here; a miss may lead identical requests in flight and store the answer.
    const cache = endpoint.budgeted
      ? await consultCache(s.cacheCounters, s.cache, s.config.cache, key, { body: request.body, upstreamModel: model.upstream_id ?? model.id }, incoming.headers, Date.now())
      : NOT_CACHEABLE;
    meter.defer(cache.release);
    meter.cacheStatus = cache.status.toLowerCase();
    if (cache.entry) return answerFromCache(x, s, meter, cache, request.stream);

    const maxTokens = request.maxTokens ?? 0;
    if (endpoint.budgeted && s.config.budget.strict) {
      await meter.reserve(strictReservation(maxTokens, request.body.byteLength, s.config.budget.weights));
    }

    // The client's bytes go upstream as they came, unless the catalog maps the model id. The
    // pool fails over between upstreams until one answers (src/upstream/pool.ts).
    const mapped = model.upstream_id && model.upstream_id !== model.id;
    const upstreamBody = mapped ? withModel(request, model.upstream_id!) : request.body;
    const models = mapped ? [model.id, model.upstream_id!] : [model.id];
    const upstream = await s.upstream.send({ method: 'POST', path: endpoint.path, headers: incoming.headers, body: upstreamBody, signal, models });
    meter.upstream = upstream.upstream;
    const headers = responseHeaders(upstream, x.requestId, meter.rateLimitHeaders, cache.headers);

    if (upstream.stream) {
      meter.streamed = true;
      Object.assign(headers, STREAM_RESPONSE_HEADERS);
      outgoing.writeHead(upstream.statusCode, headers);
      void relaySse(upstream.stream, outgoing, meter, maxTokens, upstream.statusCode === 200 ? cache : NOT_CACHEABLE, s.config.upstreamTimeouts);
      return;
    }
    const bytes = upstream.bytes!;
    if (upstream.statusCode >= 400) {
      const answer = upstreamErrorAnswer(upstream.statusCode, bytes, headers, meter);
      return sendBody(outgoing, answer.status, answer.headers, answer.body);
    }
    // The answer goes out first; the bookkeeping after it is off the client's clock.
    sendBody(outgoing, upstream.statusCode, headers, bytes);
    // Parsed once: for the usage to bill, and for the cache to store a complete message.
    const message = endpoint.budgeted ? parseJsonBody(bytes) : undefined;
    const usage = usageFromMessage(message);
    if (upstream.statusCode === 200 && cache.status === 'MISS' && isCompleteMessage(message)) {
      cache.store(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'), meter.billable(usage));
    }
    meter.finish(upstream.statusCode, 'ok', usage, endpoint.budgeted);
  } catch (err) {
    meter.fail(err, signal);
    throw err;
  }
}

/** The tool loop applies: servers to offer, and the client has not opted out (`X-MCP-Tools: none`). */
function wantsToolLoop(key: KeyRecord, request: ScannedRequest, headers: IncomingMessage['headers']): boolean {
  if (key.mcpServers.length === 0 && !request.hasMcpServers) return false;
  const optOut = headers['x-mcp-tools'];
  return !(typeof optOut === 'string' && optOut.trim().toLowerCase() === 'none');
}

/**
 * /v1/messages through the tool loop: the key's attached servers' tools (and the request's own
 * `mcp_servers`) offered beside the client's, the calls run by the gateway, the final answer
 * returned. Every turn is billed; the meter finishes once, when the loop ends.
 */
async function serveWithTools(x: Exchange, s: GatewayServices, meter: RequestMeter, key: KeyRecord, request: ScannedRequest, model: ModelEntry): Promise<void> {
  const { signal, requestId } = x;
  const body = JSON.parse(request.body.toString('utf8')) as Record<string, unknown>;
  const upstreamModel = model.upstream_id ?? model.id;
  body['model'] = upstreamModel;
  const configured = new Set(s.mcp.names());
  const attached = key.mcpServers.filter((name) => configured.has(name));
  const tools = await listOfferedTools(s.mcp, attached, s.logger, signal);
  if (request.hasMcpServers) {
    // Anthropic's `mcp_servers` (the MCP connector): the gateway runs the request's own servers,
    // refusing private addresses unless the operator allow-lists them; closed when it finishes.
    if (!s.config.mcp.allowRequestServers) throw new InvalidRequestError('mcp_servers: this gateway does not accept MCP servers in requests.');
    const { mcp } = s.config;
    const own = await openRequestMcpServers(body['mcp_servers'], {
      logger: s.logger,
      toolTimeoutMs: mcp.toolTimeoutMs,
      maxToolOutputBytes: mcp.maxToolOutputBytes,
      allowedPrivateHosts: mcp.allowedPrivateHosts,
    });
    meter.defer(() => void own.close());
    const taken = own.names().filter((name) => attached.includes(name));
    if (taken.length > 0) throw new InvalidRequestError(`mcp_servers: the name${taken.length > 1 ? 's' : ''} ${taken.map((n) => `"${n}"`).join(', ')} belong${taken.length > 1 ? '' : 's'} to the gateway's attached servers; choose another.`);
    for (const [name, tool] of await listOfferedTools(own, own.names(), s.logger, signal)) tools.set(name, tool);
  }
  const { budget } = s.config;
  const headers: PlainHeaders = { 'x-request-id': requestId, 'request-id': requestId, ...meter.rateLimitHeaders };
  if (s.config.cache.enabled) headers['x-cache'] = 'BYPASS';
  meter.cacheStatus = s.config.cache.enabled ? 'bypass' : 'none';
  const answer = await runToolLoop(
    {
      body,
      headers: x.incoming.headers,
      signal,
      models: upstreamModel === model.id ? [model.id] : [model.id, upstreamModel],
      stream: request.stream,
      maxTokens: request.maxTokens ?? 0,
      tools,
      ...(budget.strict ? { reserveFor: (bytes: number) => strictReservation(request.maxTokens ?? 0, bytes, budget.weights) } : {}),
    },
    meter,
    {
      upstream: s.upstream,
      logger: s.logger,
      maxTurns: s.config.mcp.maxTurns,
      headers,
      budgetLeft: async () => (await s.limits.budget(key, Date.now())).remaining,
      relayError: (reply) => {
        const errorHeaders = responseHeaders(reply, requestId, meter.rateLimitHeaders, {});
        const relayed = upstreamErrorAnswer(reply.statusCode, reply.bytes ?? new Uint8Array(0), errorHeaders, meter);
        return new Response(relayed.body, relayed);
      },
    },
  );
  await sendWebResponse(x.outgoing, answer);
}

/**
 * Everything the client gets on a proxied response, built here in full: the gateway middleware
 * leaves these responses' headers alone so they reach writeHead as they are.
 */
function responseHeaders(
  upstream: UpstreamReply,
  requestId: string,
  rateLimitHeaders: Record<string, string>,
  cacheHeaders: Record<string, string>,
): PlainHeaders {
  const headers = clientResponseHeaders(upstream.headers);
  headers['x-request-id'] = requestId;
  headers['request-id'] ??= requestId;
  for (const name in rateLimitHeaders) headers[name] = rateLimitHeaders[name]!;
  for (const name in cacheHeaders) headers[name] = cacheHeaders[name]!;
  return headers;
}

/** A non-streamed answer the cache may store: a message with a stop reason. */
function isCompleteMessage(message: unknown): boolean {
  const m = message as { type?: unknown; stop_reason?: unknown } | undefined;
  return m?.type === 'message' && typeof m.stop_reason === 'string';
}

/**
 * A cache hit: the stored final message, as JSON or replayed as SSE. The hit holds its
 * concurrency slot only while the answer is written, and bills no budget tokens unless the
 * operator bills hits; usage records it as cached.
 */
function answerFromCache(x: Exchange, s: GatewayServices, meter: RequestMeter, cache: CacheDecision, stream: boolean): void {
  const { outgoing, requestId } = x;
  const entry = cache.entry!;
  meter.cachedHit(entry.tokensSaved);
  meter.streamed = stream;
  const headers: PlainHeaders = { 'x-request-id': requestId, 'request-id': requestId, ...meter.rateLimitHeaders, ...cache.headers };
  const billed = s.config.cache.billHits ? entry.tokensSaved : 0;
  if (!stream) {
    headers['content-type'] = 'application/json';
    sendBody(outgoing, 200, headers, entry.body);
    return meter.finish(200, 'ok', emptyUsage(), false, billed);
  }
  headers['content-type'] = 'text/event-stream; charset=utf-8';
  Object.assign(headers, STREAM_RESPONSE_HEADERS);
  // A stored answer is bounded and already whole: its events go out in one write, and the hit
  // holds its slot until the socket has taken them (or the client is gone).
  outgoing.writeHead(200, headers);
  const done = (outcome: UsageOutcome) => meter.finish(200, outcome, emptyUsage(), false, billed);
  outgoing.once('close', () => done(outgoing.writableFinished ? 'ok' : 'client_closed'));
  outgoing.end(replaySse(JSON.parse(entry.body) as object).join(''), () => done('ok'));
}

/**
 * Upstream errors pass through with their status and body, except a 401: that means the
 * gateway's own upstream credential was refused, which the client can do nothing about (and an
 * SDK would report as the client's key being wrong), so it becomes a 502.
 */
function upstreamErrorAnswer(status: number, bytes: Uint8Array, headers: PlainHeaders, meter: RequestMeter): { status: number; headers: PlainHeaders; body: Uint8Array } {
  if (status === 401) {
    meter.finish(502, 'error');
    throw new UpstreamError('The upstream refused the gateway\'s credential. Tell the gateway operator.');
  }
  meter.finish(status, 'error');
  return { status, headers, body: bytes };
}

const STREAM_CUT_EVENT = streamErrorEvent('The upstream stream ended before the message was complete.');

/** An SSE `error` event, as the API itself ends a failed stream (api_error: the upstream's fault). */
function streamErrorEvent(message: string): Uint8Array {
  return new TextEncoder().encode(`event: error\ndata: ${JSON.stringify({ type: 'error', error: { type: 'api_error', message } })}\n\n`);
}

/**
 * Passes an upstream SSE body on to the client's socket chunk by chunk, as it arrives, watching
 * usage go by. Written straight to the Node response rather than through a web ReadableStream:
 * per event that saves a stream pull, a read request and two promises, the largest part of a
 * stream's cost in the gateway. Backpressure is kept: a slow client pauses the upstream read
 * (`write` returning false waits for `drain`) instead of filling memory.
 *
 * A stream that breaks off upstream (cut, or silent past the idle timeout) ends with an `error`
 * event, as the API itself ends a failed stream, so SDKs raise instead of hanging; what was
 * relayed is billed. A client that goes away closes the upstream connection at once.
 */
async function relaySse(
  source: UpstreamStream,
  outgoing: ServerResponse,
  meter: RequestMeter,
  maxTokens: number,
  cache: CacheDecision,
  timeouts: Config['upstreamTimeouts'],
): Promise<void> {
  const tap = new SseUsageTap();
  // A cacheable miss reassembles the final message as it passes, to store it once complete.
  const message = cache.status === 'MISS' ? new MessageAccumulator() : undefined;
  let ended = false;
  const end = (outcome: UsageOutcome) => {
    if (ended) return;
    ended = true;
    outgoing.off('close', onClose);
    // A stream that ended early bills the output it relayed (SseUsageTap.billableUsage).
    const usage = tap.billableUsage(maxTokens);
    const complete = outcome === 'ok' ? message?.result() : undefined;
    if (complete) cache.store(complete.body, meter.billable(usage));
    meter.finish(200, outcome, usage);
  };
  const onClose = () => {
    // The client left before the stream ended: stop the upstream generating for nobody.
    end('client_closed');
    source.close();
  };
  outgoing.on('close', onClose);
  try {
    for (;;) {
      const { value, done } = await source.next();
      if (ended) return;
      if (done) break;
      tap.push(value);
      message?.push(value);
      if (!outgoing.write(value)) await drained(outgoing);
    }
    if (!tap.completed && !tap.sawError) outgoing.write(STREAM_CUT_EVENT);
    // The stream's end goes out first; the bookkeeping after it is off the client's clock.
    outgoing.end();
    end(tap.completed ? 'ok' : 'upstream_cut');
  } catch (err) {
    if (ended) return;
    end('upstream_cut');
    source.close();
    if (!tap.sawError) outgoing.write(streamErrorEvent(streamFailureMessage(err, timeouts)));
    outgoing.end();
  }
}
