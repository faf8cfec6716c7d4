/**
 * Connections to the operator's attached MCP servers (`config.mcpServers`), by name: each opened
 * on first use, reused, reopened when it dies (see server-connection.ts), its tool list cached for
 * `toolListTtlMs`. Constructing this starts nothing; `close()` ends every connection and child.
 */
import type { Logger } from '../logger.ts';
import { errorResult } from './tool-output.ts';
import { ServerConnection, type ServerConnectionOptions } from './server-connection.ts';
import type { McpConnections, McpServerConfig, McpTool, McpToolResult } from './types.ts';

export interface AttachedMcpServersOptions extends ServerConnectionOptions {
  logger: Logger;
  toolTimeoutMs: number;
  maxToolOutputBytes: number;
  toolListTtlMs: number;
}

export class AttachedMcpServers implements McpConnections {
  readonly #servers: Map<string, ServerConnection>;

  constructor(servers: Record<string, McpServerConfig>, options: AttachedMcpServersOptions) {
    this.#servers = new Map(Object.entries(servers).map(([name, config]) => [name, new ServerConnection(name, config, options)]));
  }

  names(): string[] {
    return [...this.#servers.keys()];
  }

  async listTools(server: string, signal?: AbortSignal): Promise<McpTool[]> {
    const connection = this.#servers.get(server);
    if (!connection) throw new Error(`No MCP server named "${server}" is attached.`);
    return connection.tools(signal);
  }

  async callTool(server: string, tool: string, args: Record<string, unknown>, signal?: AbortSignal): Promise<McpToolResult> {
    const connection = this.#servers.get(server);
    if (!connection) return errorResult(`No MCP server named "${server}" is attached, so the tool "${tool}" did not run.`);
    return connection.call(tool, args, signal);
  }

  async close(): Promise<void> {
    await Promise.all([...this.#servers.values()].map((connection) => connection.close()));
  }
}
