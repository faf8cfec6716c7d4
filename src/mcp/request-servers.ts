/**
 * Anthropic's `mcp_servers` request parameter (the MCP connector): MCP servers a request brings
 * along, reached over Streamable HTTP for that request only. Because the URL comes from a client,
 * it must not reach the gateway's own network: `openRequestMcpServers` refuses private addresses
 * before connecting (a clear 400 naming the server) and the connections' fetch refuses them again
 * at connect time (url-guard.ts). `tool_configuration` is honoured here, so the tool loop sees
 * only the tools the request allowed.
 */
import { z } from 'zod';
import { InvalidRequestError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { AttachedMcpServers } from './connections.ts';
import { errorResult } from './tool-output.ts';
import { MCP_SERVER_NAME, type McpConnections, type McpServerConfig, type McpTool, type McpToolResult } from './types.ts';
import { guardedFetch, HostGuard, type Resolver } from './url-guard.ts';

export const McpServerUrlDefinition = z.strictObject({
  type: z.literal('url'),
  url: z.string().min(1),
  name: z.string().regex(MCP_SERVER_NAME, 'must be 1 to 32 letters, digits, "_" or "-"'),
  authorization_token: z.string().min(1).optional(),
  tool_configuration: z
    .strictObject({
      enabled: z.boolean().optional(),
      allowed_tools: z.array(z.string().min(1)).optional(),
    })
    .optional(),
});
export type McpServerUrlDefinition = z.infer<typeof McpServerUrlDefinition>;

/** The `mcp_servers` parameter: a short list of URL servers with unique names. */
export const McpServersParam = z
  .array(McpServerUrlDefinition)
  .max(20)
  .superRefine((servers, ctx) => {
    const seen = new Set<string>();
    for (const [i, server] of servers.entries()) {
      if (seen.has(server.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate server name "${server.name}"` });
      seen.add(server.name);
    }
  });
export type McpServersParam = z.infer<typeof McpServersParam>;

/** An `mcp_servers` entry the gateway will not connect to; a 400 naming the server and why. */
export class McpServerRefusedError extends InvalidRequestError {
  readonly server: string;
  readonly reason: string;

  constructor(server: string, reason: string) {
    super(`mcp_servers: the MCP server "${server}" is refused: ${reason}.`);
    this.server = server;
    this.reason = reason;
  }
}

/** Validates the raw `mcp_servers` value; InvalidRequestError with every problem, by path. */
export function parseMcpServersParam(value: unknown): McpServersParam {
  const result = McpServersParam.safeParse(value);
  if (result.success) return result.data;
  throw new InvalidRequestError(
    result.error.issues.map((i) => `mcp_servers${i.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('')}: ${i.message}`).join('; '),
  );
}

export interface RequestMcpServersOptions {
  logger: Logger;
  toolTimeoutMs: number;
  maxToolOutputBytes: number;
  /** Hosts (names or addresses) that may be reached although they are not public. */
  allowedPrivateHosts: string[];
  /** Name resolution (tests); the system's by default. */
  resolve?: Resolver;
}

/**
 * Validates `mcp_servers` and checks every URL's host, then returns the connections (nothing is
 * connected yet). Throws InvalidRequestError for a malformed entry and McpServerRefusedError for a
 * refused one. The caller closes the result when the request is over.
 */
export async function openRequestMcpServers(value: unknown, options: RequestMcpServersOptions): Promise<McpConnections> {
  const servers = parseMcpServersParam(value);
  const guard = new HostGuard(options.allowedPrivateHosts, options.resolve);
  const refusals = await Promise.all(servers.map((s) => guard.checkUrl(s.url)));
  for (const [i, reason] of refusals.entries()) if (reason) throw new McpServerRefusedError(servers[i]!.name, reason);

  const configs: Record<string, McpServerConfig> = {};
  for (const s of servers) {
    configs[s.name] = { type: 'http', url: s.url, headers: s.authorization_token ? { Authorization: `Bearer ${s.authorization_token}` } : {} };
  }
  const fetcher = guardedFetch(guard);
  const connections = new AttachedMcpServers(configs, {
    logger: options.logger,
    toolTimeoutMs: options.toolTimeoutMs,
    maxToolOutputBytes: options.maxToolOutputBytes,
    toolListTtlMs: Number.POSITIVE_INFINITY, // the connections live for one request
    fetch: fetcher.fetch,
  });
  return new ConfiguredTools(connections, new Map(servers.map((s) => [s.name, s.tool_configuration ?? {}])), () => fetcher.close());
}

type ToolConfiguration = NonNullable<McpServerUrlDefinition['tool_configuration']>;

/** Applies each server's `tool_configuration` to the connections beneath. */
class ConfiguredTools implements McpConnections {
  readonly #inner: McpConnections;
  readonly #configs: Map<string, ToolConfiguration>;
  readonly #onClose: () => Promise<void>;

  constructor(inner: McpConnections, configs: Map<string, ToolConfiguration>, onClose: () => Promise<void>) {
    this.#inner = inner;
    this.#configs = configs;
    this.#onClose = onClose;
  }

  names(): string[] {
    return this.#inner.names();
  }

  async listTools(server: string, signal?: AbortSignal): Promise<McpTool[]> {
    const config = this.#configs.get(server);
    // A disabled server offers no tools and is not even connected to.
    if (config?.enabled === false) return [];
    const tools = await this.#inner.listTools(server, signal);
    return config?.allowed_tools ? tools.filter((t) => config.allowed_tools!.includes(t.name)) : tools;
  }

  async callTool(server: string, tool: string, args: Record<string, unknown>, signal?: AbortSignal): Promise<McpToolResult> {
    const config = this.#configs.get(server);
    if (config?.enabled === false) return errorResult(`The tools of MCP server "${server}" are disabled in this request.`);
    if (config?.allowed_tools && !config.allowed_tools.includes(tool)) {
      return errorResult(`The tool "${tool}" of MCP server "${server}" is not among this request's allowed_tools.`);
    }
    return this.#inner.callTool(server, tool, args, signal);
  }

  async close(): Promise<void> {
    await this.#inner.close();
    await this.#onClose();
  }
}
