/**
 * The MCP seam shared by the gateway's own MCP server (/mcp), the server-side tool loop of
 * /v1/messages, and the connections to attached MCP servers.
 */
import { z } from 'zod';

/** A server name as keys and tool names carry it: `mcp__<server>__<tool>`. */
export const MCP_SERVER_NAME = /^[A-Za-z0-9_-]{1,32}$/;

/**
 * An attached MCP server, in the shape of Claude Code's `.mcp.json` entries: stdio (a command the
 * gateway starts, with its environment — secrets such as TAVILY_API_KEY live here, never with
 * clients) or HTTP (Streamable HTTP; `headers` carry the server's credential).
 */
export const McpServerConfig = z.union([
  z.strictObject({
    type: z.literal('stdio').optional(),
    command: z.string().min(1),
    args: z.array(z.string()).default([]),
    env: z.record(z.string(), z.string()).default({}),
    cwd: z.string().min(1).optional(),
  }),
  z.strictObject({
    type: z.literal('http'),
    url: z.url(),
    headers: z.record(z.string(), z.string()).default({}),
  }),
]);
export type McpServerConfig = z.infer<typeof McpServerConfig>;

/** A tool as an MCP server lists it. */
export interface McpTool {
  name: string;
  description?: string;
  /** JSON Schema of the tool's arguments (an object schema). */
  inputSchema: Record<string, unknown>;
}

/**
 * A tool call's outcome, as the model will see it: text content, and whether it is an error.
 * A tool that failed, timed out, or whose server is unreachable is an error result with a text
 * saying so — never an exception and never an empty result.
 */
export interface McpToolResult {
  isError: boolean;
  content: Array<{ type: 'text'; text: string }>;
}

/**
 * Connections to a set of MCP servers by name. Connections open lazily on first use, are reused,
 * and are reopened when they die; tool lists are cached.
 */
export interface McpConnections {
  /** The servers' names, as configured. */
  names(): string[];
  /** The server's tools. Throws (with a message naming the server, no secrets) if unreachable. */
  listTools(server: string, signal?: AbortSignal): Promise<McpTool[]>;
  /**
   * Calls a tool. Never throws for the tool's or the server's failure (an error result instead,
   * and a log line for the operator); rejects only when `signal` aborts.
   */
  callTool(server: string, tool: string, args: Record<string, unknown>, signal?: AbortSignal): Promise<McpToolResult>;
  close(): Promise<void>;
}
