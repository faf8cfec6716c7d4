/**
 * The server-side tool loop: a /v1/messages request from a key with MCP servers attached (or
 * naming its own in `mcp_servers`) gets those servers' tools offered to the model beside its
 * own; the gateway runs the model's calls to them through MCP, feeds the results back, and
 * answers with the final message — so a plain SDK call can search the web.
 *
 *   turn: send the conversation upstream (streamed), relay the model's blocks as they arrive
 *   → the model called gateway tools only? run them (in parallel), append the assistant turn and
 *     a user turn of tool_result blocks, check the budget, and take another turn
 *   → else (an answer, the client's own tool calls, max_tokens): that is the final turn.
 *
 * The client sees one message: one message_start, the turns' content blocks numbered as one
 * list, one message_delta with the usage of every turn summed, one message_stop. The gateway's
 * own tool calls are shown as the MCP connector shows them (`mcp_tool_use` / `mcp_tool_result`
 * blocks) to clients that send its beta header (`anthropic-beta: mcp-client-…`); other clients
 * get only block types they know, the calls left out. A JSON request gets the same message
 * reassembled from those events.
 *
 * Bounds: `mcp.maxTurns` model turns (the last one is sent with tool_choice "none", so it
 * answers rather than calls), each tool result cut at `mcp.maxToolOutputBytes`, each call at
 * `mcp.toolTimeoutMs`. Every turn is billed (the request records their sum) and, before a turn
 * is sent, checked against the key's budget (strict mode reserves each turn's worst case).
 */
import type { IncomingHttpHeaders } from 'node:http';
import { MessageAccumulator } from '../cache/accumulate.ts';
import { RateLimitError, UpstreamError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { UsageOutcome } from '../store/types.ts';
import { sseEvent, SseEventReader, type SseEvent } from '../sse.ts';
import { STREAM_RESPONSE_HEADERS, type PlainHeaders } from '../upstream/headers.ts';
import type { UpstreamPool, UpstreamReply } from '../upstream/pool.ts';
import { emptyUsage, SseUsageTap, type TokenUsage } from '../usage.ts';
import type { McpConnections, McpTool, McpToolResult } from './types.ts';

/** A gateway tool as offered to the model: `mcp__<server>__<tool>`. */
export interface OfferedTool {
  /** The name the model sees and calls. */
  name: string;
  server: string;
  tool: McpTool;
  connections: McpConnections;
}

/** The name a gateway tool gets: Claude Code's convention, within the API's tool-name rules. */
export function offeredToolName(server: string, tool: string): string {
  return `mcp__${server}__${tool}`.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 128);
}

/**
 * The tools of `servers` on `connections`, by offered name. A server that cannot be listed is
 * left out with a log line; the request goes on with the others.
 */
export async function listOfferedTools(
  connections: McpConnections,
  servers: readonly string[],
  logger: Logger,
  signal: AbortSignal,
): Promise<Map<string, OfferedTool>> {
  const offered = new Map<string, OfferedTool>();
  const lists = await Promise.all(
    servers.map(async (server) => {
      try {
        return { server, tools: await connections.listTools(server, signal) };
      } catch (err) {
        logger.warn({ mcpServer: server, error: (err as Error).message }, 'MCP server unavailable: its tools are not offered to this request');
        return { server, tools: [] };
      }
    }),
  );
  for (const { server, tools } of lists) {
    for (const tool of tools) offered.set(offeredToolName(server, tool.name), { name: offeredToolName(server, tool.name), server, tool, connections });
  }
  return offered;
}

/** Whether the client reads the MCP connector's blocks (its beta header). */
export function speaksMcpConnector(headers: IncomingHttpHeaders): boolean {
  const beta = headers['anthropic-beta'];
  const text = Array.isArray(beta) ? beta.join(',') : (beta ?? '');
  return /(^|,)\s*mcp-client-/.test(text);
}

/** The client's anthropic-beta header without the MCP connector's flags (the gateway plays that part). */
function upstreamHeaders(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const beta = headers['anthropic-beta'];
  if (beta === undefined) return headers;
  const kept = (Array.isArray(beta) ? beta.join(',') : beta).split(',').map((b) => b.trim()).filter((b) => b && !b.startsWith('mcp-client-'));
  const copy = { ...headers };
  if (kept.length > 0) copy['anthropic-beta'] = kept.join(',');
  else delete copy['anthropic-beta'];
  return copy;
}

type Block = Record<string, unknown>;
type Message = { role: string; content: unknown };

/**
 * Messages as the upstream needs them: a conversation the client carried on with the gateway's
 * MCP blocks in it (an earlier answer's `mcp_tool_use` / `mcp_tool_result`) becomes the plain
 * tool_use / tool_result turns the model originally saw.
 */
export function toUpstreamMessages(messages: Message[]): Message[] {
  const out: Message[] = [];
  for (const message of messages) {
    if (message.role !== 'assistant' || !Array.isArray(message.content)) {
      out.push(message);
      continue;
    }
    let assistant: Block[] = [];
    let results: Block[] = [];
    const flush = () => {
      if (assistant.length > 0) out.push({ role: 'assistant', content: assistant });
      if (results.length > 0) out.push({ role: 'user', content: results });
      assistant = [];
      results = [];
    };
    for (const block of message.content as Block[]) {
      if (block['type'] === 'mcp_tool_use') {
        if (results.length > 0) flush();
        assistant.push({ type: 'tool_use', id: block['id'], name: offeredToolName(String(block['server_name']), String(block['name'])), input: block['input'] ?? {} });
      } else if (block['type'] === 'mcp_tool_result') {
        results.push({ type: 'tool_result', tool_use_id: block['tool_use_id'], content: block['content'] ?? [], is_error: block['is_error'] === true });
      } else {
        if (results.length > 0) flush();
        assistant.push(block);
      }
    }
    flush();
  }
  return out;
}

export interface ToolLoopRequest {
  /** The client's body, parsed; `model` already the upstream id. */
  body: Record<string, unknown>;
  headers: IncomingHttpHeaders;
  signal: AbortSignal;
  /** The model's ids, for the upstream pool's model routing. */
  models: readonly string[];
  stream: boolean;
  maxTokens: number;
  tools: Map<string, OfferedTool>;
  /** Strict mode: the tokens a turn with a body of this many bytes reserves (its worst case). */
  reserveFor?: (bodyBytes: number) => number;
}

/** What the loop needs of the pipeline's RequestMeter. */
export interface LoopMeter {
  upstream: string;
  finish(status: number, outcome: UsageOutcome, usage?: TokenUsage, billable?: boolean): void;
  reserve(tokens: number): Promise<void>;
  billable(usage: TokenUsage): number;
}

export interface ToolLoopDeps {
  upstream: UpstreamPool;
  logger: Logger;
  maxTurns: number;
  /** The key's budget left now (tokens), for the check before each later turn. */
  budgetLeft: () => Promise<number>;
  /** The response's own headers (request id, rate limits, cache). */
  headers: PlainHeaders;
  /** The upstream's error answer as the client gets it (a 401 becomes a 502, as in pipeline.ts). */
  relayError: (reply: UpstreamReply) => Response;
}

/** The events of one message as the client gets it, written to `emit` as they are decided. */
class ClientMessage {
  private started = false;
  private nextIndex = 0;
  readonly usage = emptyUsage();

  private readonly emit: (text: string) => void;
  private readonly beta: boolean;

  constructor(emit: (text: string) => void, beta: boolean) {
    this.emit = emit;
    this.beta = beta;
  }

  /** The first turn's message_start opens the message; later turns' are dropped. */
  start(event: SseEvent): void {
    if (this.started) return;
    this.started = true;
    this.emit(sseEvent(event.data, event.event));
  }

  /** A client-visible block: returns its index in the client's numbering. */
  block(contentBlock: Block): number {
    const index = this.nextIndex++;
    this.emit(sseEvent({ type: 'content_block_start', index, content_block: contentBlock }));
    return index;
  }

  blockEvent(event: SseEvent, index: number): void {
    this.emit(sseEvent({ ...event.data, index }, event.event));
  }

  /** A gateway tool call's result, for clients that read the connector's blocks. */
  toolResult(toolUseId: unknown, result: McpToolResult): void {
    if (!this.beta) return;
    const index = this.block({ type: 'mcp_tool_result', tool_use_id: toolUseId, is_error: result.isError, content: result.content });
    this.emit(sseEvent({ type: 'content_block_stop', index }));
  }

  ping(): void {
    this.emit(sseEvent({ type: 'ping' }));
  }

  add(usage: TokenUsage): void {
    this.usage.input_tokens += usage.input_tokens;
    this.usage.output_tokens += usage.output_tokens;
    this.usage.cache_creation_input_tokens += usage.cache_creation_input_tokens;
    this.usage.cache_read_input_tokens += usage.cache_read_input_tokens;
  }

  /** The closing message_delta (the final turn's stop, every turn's usage) and message_stop. */
  end(delta: Record<string, unknown>): void {
    this.emit(sseEvent({ type: 'message_delta', delta, usage: { ...this.usage } }));
    this.emit(sseEvent({ type: 'message_stop' }));
  }

  error(type: string, message: string): void {
    this.emit(sseEvent({ type: 'error', error: { type, message } }));
  }
}

/** How a turn ended. */
interface Turn {
  /** The turn's message as the upstream sent it, when it completed. */
  message?: Block;
  /** message_delta's `delta` (stop_reason, stop_sequence). */
  delta?: Record<string, unknown>;
  /** Gateway tool calls made in the turn, in order. */
  calls: Array<{ id: unknown; name: string; input: Record<string, unknown> }>;
  /** The model also called tools of the client's own. */
  clientCalls: boolean;
  /** The upstream stream failed (cut, `error` event, idle): already told to the client. */
  failed: boolean;
  usage: TokenUsage;
}

/** Thrown out of a turn when the client is gone: nothing more to send or run. */
class ClientGone extends Error {}

/** What the loop's parts share: whether the client is gone, and the loop's own abort signal. */
interface LoopHooks {
  isGone(): boolean;
  /** Aborts when the client goes away: ends the upstream request and the tool calls in flight. */
  signal: AbortSignal;
}

/**
 * Runs the loop for one request and answers it: SSE for a streamed request, JSON otherwise.
 * Finishes the meter exactly once (billing every turn).
 */
export async function runToolLoop(request: ToolLoopRequest, meter: LoopMeter, deps: ToolLoopDeps): Promise<Response> {
  const beta = speaksMcpConnector(request.headers);
  // The connector's `mcp_toolset` entries name servers (handled with `mcp_servers`), not tools.
  const clientTools = Array.isArray(request.body['tools']) ? (request.body['tools'] as Block[]).filter((t) => t['type'] !== 'mcp_toolset') : [];
  const offered = [...request.tools.values()].map((t) => ({
    name: t.name,
    description: t.tool.description ?? `${t.tool.name} (MCP server ${t.server})`,
    input_schema: t.tool.inputSchema,
  }));
  const headers = upstreamHeaders(request.headers);
  // The client's going away (its signal, or the response stream cancelled) aborts everything.
  const abort = new AbortController();
  const onClientAbort = () => abort.abort(request.signal.reason);
  request.signal.addEventListener('abort', onClientAbort, { once: true });
  const signal = abort.signal;
  const clientChoice = request.body['tool_choice'] as { type?: string } | undefined;
  let messages = toUpstreamMessages(request.body['messages'] as Message[]);

  /** One turn's upstream body: the conversation so far, every tool, streamed. */
  const turnBody = (turn: number) => {
    const body: Block = { ...request.body, messages, tools: [...clientTools, ...offered], stream: true };
    delete body['mcp_servers'];
    // A forced choice (any / a tool) applies to the first turn; later ones choose freely, and
    // the last may not call tools at all, so the loop ends in an answer.
    if (turn === deps.maxTurns) body['tool_choice'] = { type: 'none' };
    else if (turn > 1 && (clientChoice?.type === 'any' || clientChoice?.type === 'tool')) body['tool_choice'] = { type: 'auto' };
    return JSON.stringify(body);
  };

  // The first turn's answer decides the response's status: an upstream error before anything
  // was relayed is passed on as the pipeline passes errors on.
  let first: UpstreamReply;
  try {
    const body = turnBody(1);
    if (request.reserveFor) await meter.reserve(request.reserveFor(Buffer.byteLength(body)));
    first = await deps.upstream.send({ method: 'POST', path: '/v1/messages', headers, body, signal, models: request.models });
  } catch (err) {
    request.signal.removeEventListener('abort', onClientAbort);
    throw err;
  }
  meter.upstream = first.upstream;
  if (!first.stream) {
    request.signal.removeEventListener('abort', onClientAbort);
    if (first.statusCode >= 400) return deps.relayError(first);
    meter.finish(502, 'error');
    throw new UpstreamError('The upstream answered a streamed request without a stream.');
  }

  const responseHeaders: PlainHeaders = { ...deps.headers, 'content-type': 'text/event-stream; charset=utf-8', ...STREAM_RESPONSE_HEADERS };
  let outcome: UsageOutcome = 'ok';
  let finished = false;
  const finish = (message: ClientMessage) => {
    if (finished) return;
    finished = true;
    request.signal.removeEventListener('abort', onClientAbort);
    meter.finish(200, outcome, message.usage);
  };

  /** Runs every turn, writing the client's events to `emit`. */
  const drive = async (message: ClientMessage, hooks: LoopHooks): Promise<void> => {
    let reply: UpstreamReply = first;
    for (let turn = 1; ; turn++) {
      const result = await relayTurn(reply, message, request, hooks);
      if (result.failed) {
        outcome = 'upstream_cut';
        return;
      }
      const final = result.delta?.['stop_reason'] !== 'tool_use' || result.calls.length === 0 || result.clientCalls || turn >= deps.maxTurns;
      if (final) {
        // Calls the client cannot act on: a connector client sees them with their results;
        // for others they were left out (and are not run).
        if (result.calls.length > 0 && beta) {
          for (const [i, r] of (await runCalls(result.calls, request, message, deps.logger, hooks)).entries()) message.toolResult(result.calls[i]!.id, r);
        }
        message.end(result.delta ?? { stop_reason: 'end_turn', stop_sequence: null });
        return;
      }
      const results = await runCalls(result.calls, request, message, deps.logger, hooks);
      results.forEach((r, i) => message.toolResult(result.calls[i]!.id, r));
      messages = [
        ...messages,
        { role: 'assistant', content: result.message!['content'] },
        { role: 'user', content: results.map((r, i) => ({ type: 'tool_result', tool_use_id: result.calls[i]!.id, content: r.content, is_error: r.isError })) },
      ];
      // The next turn is sent only within the key's budget: what is left now, less this
      // request's turns so far (billed when it finishes); strict mode reserves its worst case.
      const body = turnBody(turn + 1);
      if (request.reserveFor) {
        try {
          await meter.reserve(request.reserveFor(Buffer.byteLength(body)));
        } catch (err) {
          message.error('rate_limit_error', (err as Error).message);
          outcome = 'rejected';
          return;
        }
      } else if ((await deps.budgetLeft()) - meter.billable(message.usage) <= 0) {
        message.error('rate_limit_error', `Token budget exceeded during the tool loop, after ${turn} model turn${turn === 1 ? '' : 's'}. The key's budget is spent.`);
        outcome = 'rejected';
        return;
      }
      if (hooks.isGone()) throw new ClientGone();
      reply = await deps.upstream.send({ method: 'POST', path: '/v1/messages', headers, body, signal: hooks.signal, models: request.models });
      meter.upstream = reply.upstream;
      if (!reply.stream) {
        const text = reply.bytes ? Buffer.from(reply.bytes).toString('utf8') : '';
        const error = parseError(text);
        message.error(reply.statusCode === 401 ? 'api_error' : error.type, reply.statusCode === 401 ? "The upstream refused the gateway's credential. Tell the gateway operator." : error.message);
        outcome = 'error';
        return;
      }
    }
  };

  if (request.stream) {
    let gone = false;
    const encoder = new TextEncoder();
    let controllerRef: ReadableStreamDefaultController<Uint8Array>;
    const message = new ClientMessage((text) => {
      if (!gone) controllerRef.enqueue(encoder.encode(text));
    }, beta);
    return new Response(
      new ReadableStream<Uint8Array>({
        start(controller) {
          controllerRef = controller;
          drive(message, { isGone: () => gone || signal.aborted, signal })
            .catch((err: unknown) => {
              if (gone || err instanceof ClientGone || signal.aborted) {
                outcome = 'client_closed';
                return;
              }
              outcome = 'error';
              deps.logger.warn({ error: (err as Error).message }, 'tool loop failed');
              message.error('api_error', err instanceof UpstreamError ? err.message : 'The tool loop failed.');
            })
            .finally(() => {
              finish(message);
              if (!gone) controller.close();
            });
        },
        cancel() {
          gone = true;
          outcome = 'client_closed';
          abort.abort();
        },
      }),
      { status: 200, headers: responseHeaders },
    );
  }

  // JSON: the same events, reassembled into the message they describe.
  const assembled = new MessageAccumulator();
  let failure: { type: string; message: string } | undefined;
  const encoder = new TextEncoder();
  const message = new ClientMessage((text) => {
    if (text.startsWith('event: error')) failure = parseError(text.slice(text.indexOf('data: ') + 6));
    else assembled.push(encoder.encode(text));
  }, beta);
  try {
    await drive(message, { isGone: () => signal.aborted, signal });
  } catch (err) {
    outcome = signal.aborted ? 'client_closed' : 'error';
    finish(message);
    throw err;
  }
  finish(message);
  const result = assembled.result();
  if (failure || !result) {
    const f = failure ?? { type: 'api_error', message: 'The upstream answer could not be reassembled.' };
    if (f.type === 'rate_limit_error') throw new RateLimitError(f.message, 1, {});
    throw new UpstreamError(f.message);
  }
  return new Response(result.body, { status: 200, headers: { ...deps.headers, 'content-type': 'application/json' } });
}

/**
 * Relays one turn's stream to the client message: blocks renumbered, the gateway's tool calls
 * shown as the connector shows them or left out, the turn's message_start / message_delta /
 * message_stop held back (the client message has one of each).
 */
async function relayTurn(reply: UpstreamReply, message: ClientMessage, request: ToolLoopRequest, hooks: LoopHooks): Promise<Turn> {
  const stream = reply.stream!;
  const reader = new SseEventReader();
  const tap = new SseUsageTap();
  const accumulator = new MessageAccumulator();
  const beta = speaksMcpConnector(request.headers);
  /** Upstream block index → client index (undefined: left out). */
  const indexes = new Map<number, number | undefined>();
  /** Upstream block index → a gateway call being streamed. */
  const gatewayCalls = new Map<number, { id: unknown; name: string }>();
  const turn: Turn = { calls: [], clientCalls: false, failed: false, usage: emptyUsage() };
  try {
    for (;;) {
      if (hooks.isGone()) throw new ClientGone();
      const { value, done } = await stream.next();
      if (done) break;
      tap.push(value);
      accumulator.push(value);
      for (const event of reader.push(value)) {
        const data = event.data;
        switch (data['type']) {
          case 'message_start':
            message.start(event);
            break;
          case 'content_block_start': {
            const block = data['content_block'] as Block;
            const upstreamIndex = data['index'] as number;
            const offered = block['type'] === 'tool_use' ? request.tools.get(String(block['name'])) : undefined;
            if (offered) {
              gatewayCalls.set(upstreamIndex, { id: block['id'], name: offered.name });
              indexes.set(upstreamIndex, beta ? message.block({ type: 'mcp_tool_use', id: block['id'], name: offered.tool.name, server_name: offered.server, input: {} }) : undefined);
            } else {
              if (block['type'] === 'tool_use') turn.clientCalls = true;
              indexes.set(upstreamIndex, message.block(block));
            }
            break;
          }
          case 'content_block_delta':
          case 'content_block_stop': {
            const index = indexes.get(data['index'] as number);
            if (index !== undefined) message.blockEvent(event, index);
            break;
          }
          case 'message_delta':
            turn.delta = data['delta'] as Record<string, unknown>;
            break;
          case 'message_stop':
            break;
          case 'error': {
            const error = (data['error'] ?? {}) as { type?: string; message?: string };
            message.error(String(error.type ?? 'api_error'), String(error.message ?? 'The upstream stream failed.'));
            turn.failed = true;
            break;
          }
          default:
            if (data['type'] === 'ping') message.ping();
        }
      }
    }
  } catch (err) {
    if (err instanceof ClientGone || hooks.isGone()) {
      // What the turn generated before the client left is billed all the same.
      stream.close();
      message.add(tap.billableUsage(request.maxTokens));
      throw new ClientGone();
    }
    if (!turn.failed) message.error('api_error', 'The upstream stream ended before the message was complete.');
    turn.failed = true;
  }
  turn.usage = tap.billableUsage(request.maxTokens);
  message.add(turn.usage);
  const complete = accumulator.result();
  if (!turn.failed && !complete) {
    message.error('api_error', 'The upstream stream ended before the message was complete.');
    turn.failed = true;
  }
  if (complete) {
    turn.message = complete.message;
    for (const block of complete.message['content'] as Block[]) {
      if (block['type'] === 'tool_use' && request.tools.has(String(block['name']))) {
        turn.calls.push({ id: block['id'], name: String(block['name']), input: (block['input'] ?? {}) as Record<string, unknown> });
      }
    }
  }
  return turn;
}

/**
 * Runs a turn's gateway tool calls in parallel. Each ends in a result: a failing or unreachable
 * tool gives the model an error result (and the operator a log line, from the connections).
 * While they run, the client gets a ping every 10 s so proxies keep the stream open.
 */
async function runCalls(calls: Turn['calls'], request: ToolLoopRequest, message: ClientMessage, logger: Logger, hooks: LoopHooks): Promise<McpToolResult[]> {
  const keepAlive = setInterval(() => message.ping(), 10_000);
  try {
    return await Promise.all(
      calls.map(async (call) => {
        const offered = request.tools.get(call.name)!;
        try {
          return await offered.connections.callTool(offered.server, offered.tool.name, call.input, hooks.signal);
        } catch (err) {
          if (hooks.isGone()) throw new ClientGone();
          logger.warn({ mcpServer: offered.server, tool: offered.tool.name, error: (err as Error).message }, 'MCP tool call failed');
          return { isError: true, content: [{ type: 'text' as const, text: `The tool ${offered.tool.name} failed: ${(err as Error).message}` }] };
        }
      }),
    );
  } finally {
    clearInterval(keepAlive);
  }
}

/** An Anthropic error body's type and message (or a generic one). */
function parseError(text: string): { type: string; message: string } {
  try {
    const body = JSON.parse(text) as { error?: { type?: unknown; message?: unknown } };
    if (typeof body.error?.type === 'string') return { type: body.error.type, message: String(body.error.message ?? '') };
  } catch {
    // not JSON: fall through
  }
  return { type: 'api_error', message: 'The upstream failed during the tool loop.' };
}
