/**
 * The gateway as an MCP server: POST /mcp (Streamable HTTP), authenticated with the gateway's own
 * keys, offering the key's status, its usage, its models, a way to ask Claude under its budget,
 * and the tools of the attached MCP servers the key may use (as `<server>__<tool>`).
 *
 * Stateless: each POST builds a server for its key and a transport, answers, and closes both. No
 * session id and nothing kept between requests, so any instance of a scale-out deployment answers
 * any request without sticky sessions. GET (a server-initiated stream) and DELETE (ending a
 * session) have nothing to serve: 405, which the SDK's client and Claude Code take as "no stream".
 *
 * Answers are SSE (the SDK's default) rather than one JSON body: a long ask_claude or a slow
 * attached tool then gets keep-alive comments every 15 s, so proxies with idle timeouts do not cut
 * it, and a client that goes away closes the stream, which aborts the tool call it was waiting on.
 *
 * Built on the SDK's low-level `Server` rather than `McpServer`: McpServer takes only zod input
 * schemas, while attached tools must be listed with their servers' JSON Schema as it is. One table
 * of the key's tools serves both lists and calls, so a tool the key cannot see cannot be called.
 */
import { createRequire } from 'node:module';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { WebStandardStreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js';
import {
  CallToolRequestSchema, ErrorCode, ListToolsRequestSchema, McpError, type CallToolResult, type Tool,
} from '@modelcontextprotocol/sdk/types.js';
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { cors } from 'hono/cors';
import { z } from 'zod';
import { parseTime, validateInput } from '../admin.ts';
import { modelObject, type ModelCatalog } from '../catalog.ts';
import type { Config } from '../config.ts';
import { AuthenticationError, GatewayError, PermissionError } from '../errors.ts';
import { keyStatusReport, type KeyRegistry } from '../keys.ts';
import type { RateLimiter } from '../limits/types.ts';
import type { Logger } from '../logger.ts';
import { authenticateRequest, type GatewayEnv } from '../app-env.ts';
import { usageReport } from '../reports.ts';
import type { KeyRecord, Store } from '../store/types.ts';
import type { McpConnections } from './types.ts';

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

export interface McpRoutesDeps {
  config: Config;
  logger: Logger;
  keys: KeyRegistry;
  limits: RateLimiter;
  catalog: ModelCatalog;
  store: Store;
  /** The attached MCP servers. */
  mcp: McpConnections;
  /** The gateway's own base URL on loopback once it listens: ask_claude posts to its /v1/messages. */
  selfUrl(): string | undefined;
}

/** The credential header exactly as the client sent it, to ask the gateway's /v1/messages as that client. */
type Credential = [name: 'x-api-key' | 'authorization', value: string];

/** What a tool runs with: the caller's key and credential, and the signal that aborts when the client goes. */
interface ToolCall {
  key: KeyRecord;
  credential: Credential;
  signal: AbortSignal;
}

interface BuiltinTool {
  description: string;
  input: z.ZodObject;
  run(args: never, call: ToolCall): Promise<CallToolResult>;
}

const DEFAULT_MAX_TOKENS = 1024;
const SEPARATOR = '__';

function text(value: string, isError = false): CallToolResult {
  return { content: [{ type: 'text', text: value }], ...(isError ? { isError } : {}) };
}

/** A JSON answer: pretty text for models and people, the same object as structuredContent for programs. */
function json(value: Record<string, unknown>): CallToolResult {
  return { content: [{ type: 'text', text: JSON.stringify(value, null, 2) }], structuredContent: value };
}

/** The gateway's own tools: each answers about, or acts as, the calling key only. */
function builtinTools(deps: McpRoutesDeps): Record<string, BuiltinTool> {
  const { catalog } = deps;
  return {
    key_status: {
      description: "This gateway key's status, token budget (total, used, remaining, window, time until it resets), requests-per-minute limit and concurrency limit.",
      input: z.object({}),
      run: async (_args, { key }) => json(await keyStatusReport(key, deps.limits, Date.now())),
    },
    usage: {
      description:
        "This gateway key's own usage: requests, errors, tokens by kind, billed tokens, average latency and estimated cost, grouped by model, day or upstream.",
      input: z.object({
        since: z.string().optional().describe('Start: a duration back from now ("30m", "24h", "7d") or an ISO date. Default: all recorded usage.'),
        until: z.string().optional().describe('End: a duration back from now or an ISO date. Default: now.'),
        by: z.enum(['model', 'day', 'upstream']).default('model').describe('How to group the rows.'),
      }),
      // The key id comes from the authenticated key alone, never from the arguments.
      run: async (args: { since?: string; until?: string; by: 'model' | 'day' | 'upstream' }, { key }) =>
        json({
          ...(await usageReport(deps.store, catalog, {
            keyId: key.id,
            by: args.by,
            sinceMs: parseTime(args.since, 'since'),
            untilMs: parseTime(args.until, 'until'),
          })),
        }),
    },
    list_models: {
      description: 'The Claude models this gateway key may use (ids to pass as `model`).',
      input: z.object({}),
      run: async (_args, { key }) => json({ data: catalog.visibleTo(key).map(modelObject) }),
    },
    ask_claude: {
      description:
        "Asks a Claude model one question through the gateway, under this key's limits and token budget, and returns its answer. " +
        'Without `model`, the first model the key may use (see list_models).',
      input: z.object({
        prompt: z.string().min(1).describe('The question or task for Claude.'),
        model: z.string().min(1).optional().describe('A model id from list_models.'),
        max_tokens: z.number().int().positive().optional().describe(`The longest answer, in tokens. Default ${DEFAULT_MAX_TOKENS}.`),
        system: z.string().optional().describe('A system prompt.'),
      }),
      run: (args: AskArgs, call) => askClaude(deps, args, call),
    },
  };
}

interface AskArgs {
  prompt: string;
  model?: string;
  max_tokens?: number;
  system?: string;
}

interface MessagesReply {
  content?: Array<{ type: string; text?: string }>;
  stop_reason?: string;
  error?: { type?: string; message?: string };
}

/**
 * Posts the question to the gateway's own /v1/messages over loopback with the caller's credential,
 * so it meets the same pipeline as any API call: limits, budget, model rights, cache, usage.
 */
async function askClaude(deps: McpRoutesDeps, args: AskArgs, { key, credential, signal }: ToolCall): Promise<CallToolResult> {
  const base = deps.selfUrl();
  if (!base) return text('ask_claude is unavailable: the gateway is not listening yet.', true);
  const model = args.model ?? deps.catalog.visibleTo(key)[0]?.id;
  if (!model) throw new PermissionError('This key may not use any model.');
  const maxTokens = args.max_tokens ?? DEFAULT_MAX_TOKENS;
  const body = { model, max_tokens: maxTokens, messages: [{ role: 'user', content: args.prompt }], ...(args.system ? { system: args.system } : {}) };
  let response: Response;
  let reply: MessagesReply | undefined;
  try {
    response = await fetch(`${base}/v1/messages`, {
      method: 'POST',
      headers: { [credential[0]]: credential[1], 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'user-agent': `claudcode-mcp/${version}` },
      body: JSON.stringify(body),
      signal,
    });
    reply = (await response.json().catch(() => undefined)) as MessagesReply | undefined;
  } catch (err) {
    if (signal.aborted) throw err;
    deps.logger.error({ err }, 'ask_claude: the loopback request to /v1/messages failed');
    return text('ask_claude failed: the gateway could not be reached.', true);
  }
  if (!response.ok) {
    // The gateway's own refusal (budget, rate, model, maintenance, upstream): its words, as the API gives them.
    const retryAfter = response.headers.get('retry-after');
    const reason = reply?.error?.message ?? `HTTP ${response.status}`;
    return text(`The gateway refused the request (${response.status} ${reply?.error?.type ?? 'error'}): ${reason}${retryAfter ? ` Retry after ${retryAfter} s.` : ''}`, true);
  }
  const answer = (reply?.content ?? []).flatMap((b) => (b.type === 'text' && b.text ? [b.text] : [])).join('');
  const cut = reply?.stop_reason === 'max_tokens' ? `\n\n[The answer was cut at max_tokens (${maxTokens}).]` : '';
  return text(answer + cut);
}

/** A tool result for a failure: the gateway's own errors say what happened; anything else is logged, not shown. */
function failure(err: unknown, tool: string, logger: Logger): CallToolResult {
  if (err instanceof GatewayError) return text(err.message, true);
  logger.error({ err, tool }, 'MCP tool failed');
  return text('Internal gateway error.', true);
}

/**
 * The attached servers' tools this key may use, by their names here (`<server>__<tool>`). Only the
 * servers named in `only` are listed, when given (a call lists just the server its name points at). A
 * server that cannot be listed is left out with a log line; the other tools stay available.
 */
async function attachedTools(deps: McpRoutesDeps, key: KeyRecord, signal: AbortSignal, only?: (server: string) => boolean) {
  const configured = new Set(deps.mcp.names());
  const servers = key.mcpServers.filter((s) => configured.has(s) && (only?.(s) ?? true));
  const tools = new Map<string, { server: string; tool: Tool }>();
  const lists = await Promise.allSettled(servers.map((s) => deps.mcp.listTools(s, signal)));
  lists.forEach((list, i) => {
    const server = servers[i]!;
    if (list.status === 'rejected') {
      deps.logger.warn({ server, err: (list.reason as Error)?.message }, 'MCP server could not be listed: its tools are left out');
      return;
    }
    for (const t of list.value) {
      const name = `${server}${SEPARATOR}${t.name}`;
      tools.set(name, { server, tool: { name: t.name, description: t.description, inputSchema: t.inputSchema as Tool['inputSchema'] } });
    }
  });
  return tools;
}

/** The built-in tools as tools/list shows them (JSON Schema of the zod input). */
function listed(builtins: Record<string, BuiltinTool>): Tool[] {
  return Object.entries(builtins).map(([name, t]) => ({
    name,
    description: t.description,
    inputSchema: z.toJSONSchema(t.input, { io: 'input' }) as Tool['inputSchema'],
  }));
}

/** An MCP server for one request of one key. */
function serverFor(deps: McpRoutesDeps, builtins: Record<string, BuiltinTool>, key: KeyRecord, credential: Credential): Server {
  const server = new Server(
    { name: 'claudcode', version },
    {
      capabilities: { tools: {} },
      instructions:
        'Tools of a claudcode gateway, acting as the calling gateway key: its status and budget, its usage, its models, ' +
        "asking Claude under the key's budget, and any attached MCP server tools the key may use (named <server>__<tool>).",
    },
  );
  server.onerror = (err) => deps.logger.debug({ err: err.message }, 'MCP transport error');

  server.setRequestHandler(ListToolsRequestSchema, async (_request, extra) => {
    const attached = [...(await attachedTools(deps, key, extra.signal)).entries()].map(([name, { tool }]) => ({ ...tool, name }));
    return { tools: [...listed(builtins), ...attached] };
  });

  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const { name, arguments: args = {} } = request.params;
    const call: ToolCall = { key, credential, signal: extra.signal };
    const builtin = Object.hasOwn(builtins, name) ? builtins[name] : undefined;
    if (builtin) {
      try {
        return await builtin.run(validateInput(builtin.input, args) as never, call);
      } catch (err) {
        if (extra.signal.aborted) throw err;
        return failure(err, name, deps.logger);
      }
    }
    // Only the servers the name can point at are listed (lists are cached by the connections).
    const attached = (await attachedTools(deps, key, extra.signal, (s) => name.startsWith(s + SEPARATOR))).get(name);
    if (!attached) throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${name}`);
    // A call counts against the key's rpm and concurrency, and is refused once its budget is
    // spent, as an API request would be: web search is the key's to use within its limits.
    let admission;
    try {
      admission = await deps.limits.admit(key, Date.now(), { checkBudget: true });
    } catch (err) {
      return failure(err, name, deps.logger);
    }
    try {
      // Already a tool result (a failure included), as the attached server's tool gave it.
      return { ...(await deps.mcp.callTool(attached.server, attached.tool.name, args, extra.signal)) };
    } finally {
      admission.finish(0);
    }
  });
  return server;
}

/** The key's credential header as the client sent it (the same preference as KeyRegistry.authenticate). */
function credentialOf(headers: Headers): Credential {
  const apiKey = headers.get('x-api-key');
  return apiKey ? ['x-api-key', apiKey] : ['authorization', headers.get('authorization') ?? ''];
}

/**
 * The MCP spec asks servers to check Origin (DNS rebinding): a browser request passes only from an
 * allowed origin or the gateway's own (the request's Host, by its scheme or the proxy's
 * X-Forwarded-Proto). Requests without Origin — every non-browser client — pass.
 */
function originCheck(allowed: Set<string>): MiddlewareHandler<GatewayEnv> {
  return async function checkOrigin(c, next) {
    const origin = c.req.header('origin');
    if (origin === undefined || allowed.has(origin) || ownOrigins(c).includes(origin)) return next();
    throw new PermissionError('Origin not allowed: add it to mcp.allowedOrigins to call /mcp from a browser page.');
  };
}

function ownOrigins(c: Context<GatewayEnv>): string[] {
  const host = c.req.header('host');
  if (!host) return [];
  const schemes = [new URL(c.req.url).protocol.slice(0, -1), c.req.header('x-forwarded-proto')];
  return schemes.filter(Boolean).map((scheme) => `${scheme}://${host}`);
}

/** JSON-RPC's error shape, as the SDK answers what it refuses. */
function jsonRpcError(message: string) {
  return { jsonrpc: '2.0', error: { code: -32000, message }, id: null };
}

export function mcpRoutes(deps: McpRoutesDeps): Hono<GatewayEnv> {
  const allowed = new Set(deps.config.mcp.allowedOrigins.map((o) => o.replace(/\/+$/, '')));
  const builtins = builtinTools(deps);
  const routes = new Hono<GatewayEnv>();
  routes.use('*', originCheck(allowed));
  // Browser pages of the allowed origins need CORS to read the answers (and send the key header).
  routes.use('*', cors({
    origin: (origin) => (allowed.has(origin) ? origin : null),
    allowMethods: ['POST'],
    allowHeaders: ['content-type', 'accept', 'authorization', 'x-api-key', 'mcp-protocol-version', 'mcp-session-id', 'last-event-id'],
    exposeHeaders: ['mcp-protocol-version', 'www-authenticate'],
  }));

  routes.post('/', async (c) => {
    let key: KeyRecord;
    try {
      key = authenticateRequest(c, deps.keys);
    } catch (err) {
      // MCP clients look for WWW-Authenticate on a 401.
      if (err instanceof AuthenticationError) throw new GatewayError(401, 'authentication_error', err.message, { 'www-authenticate': 'Bearer realm="claudcode"' });
      throw err;
    }
    const server = serverFor(deps, builtins, key, credentialOf(c.req.raw.headers));
    // Closed when the answer is written or the client goes away; closing aborts tool calls still running.
    c.env.outgoing.once('close', () => {
      server.close().catch((err: unknown) => deps.logger.warn({ err }, 'MCP server close failed'));
    });
    const transport = new WebStandardStreamableHTTPServerTransport({ sessionIdGenerator: undefined, maxRequestBodySize: deps.config.maxBodyBytes });
    await server.connect(transport);
    return transport.handleRequest(c.req.raw);
  });

  // Stateless: no server-initiated stream (GET) and no session to end (DELETE).
  routes.all('/', (c) => c.json(jsonRpcError('Method not allowed.'), 405, { allow: 'POST' }));
  return routes;
}
