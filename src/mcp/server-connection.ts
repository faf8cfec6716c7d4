/**
 * One MCP server's connection, as `AttachedMcpServers` keeps it per name: opened lazily through
 * the SDK's Client (stdio child process or Streamable HTTP), shared by concurrent first uses,
 * reused, and dropped when it dies (the child exits, the HTTP session is gone, a transport error) so
 * that the next use reopens it — at most one connect attempt per `reconnectIntervalMs`, so a
 * broken server is not restarted in a hot loop.
 *
 * Failures become texts that name the server and say what happened, with the configured secrets
 * (env values, header values, the URL, whose query may carry an API key) masked; the operator's log
 * gets server, tool and that text — never a tool's arguments or results, which carry prompt text.
 */
import type { Readable, Stream } from 'node:stream';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { getDefaultEnvironment, StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { FetchLike, Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import { ErrorCode, McpError, ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import type { Logger } from '../logger.ts';
import { errorResult, toToolResult } from './tool-output.ts';
import type { McpServerConfig, McpTool, McpToolResult } from './types.ts';

export interface ServerConnectionOptions {
  logger: Logger;
  toolTimeoutMs: number;
  maxToolOutputBytes: number;
  toolListTtlMs: number;
  /** The fetch HTTP servers are reached with (request-supplied servers pass a guarded one). */
  fetch?: FetchLike;
  /** Least time between two connect attempts to one server (default 1000 ms). */
  reconnectIntervalMs?: number;
  /** Clock of the tool-list cache (tests). */
  now?: () => number;
}

const CLIENT_INFO = { name: 'claudcode', version: '0.1.0' };
/** Tool lists longer than this many pages are cut: a server that pages forever cannot hang us. */
const MAX_TOOL_PAGES = 20;
const STDERR_LINE_CHARS = 500;

export class ServerConnection {
  readonly name: string;
  readonly #config: McpServerConfig;
  readonly #options: ServerConnectionOptions;
  readonly #secrets: string[];
  #client: Client | undefined;
  #connecting: Promise<Client> | undefined;
  #lastAttemptAt = -Infinity;
  #lastFailure: Error | undefined;
  #tools: { list: McpTool[]; at: number; client: Client } | undefined;
  #listing: Promise<McpTool[]> | undefined;
  /** Bumped by tools/list_changed, so a listing already under way does not fill the cache. */
  #toolsGeneration = 0;
  #closed = false;

  constructor(name: string, config: McpServerConfig, options: ServerConnectionOptions) {
    this.name = name;
    this.#config = config;
    this.#options = options;
    this.#secrets = secretsOf(config);
  }

  /** The server's tools, from the cache while it is fresh. Throws an Error naming the server. */
  async tools(signal?: AbortSignal): Promise<McpTool[]> {
    const cached = this.#tools;
    if (cached && cached.client === this.#client && this.#now() - cached.at < this.#options.toolListTtlMs) return cached.list;
    this.#listing ??= this.#list().finally(() => {
      this.#listing = undefined;
    });
    return untilAborted(this.#listing, signal);
  }

  /** Calls a tool; failures are error results (and one log line), only `signal` rejects. */
  async call(tool: string, args: Record<string, unknown>, signal?: AbortSignal): Promise<McpToolResult> {
    const deadline = Date.now() + this.#options.toolTimeoutMs;
    let client: Client | undefined;
    try {
      const run = async (): Promise<Awaited<ReturnType<Client['callTool']>>> => {
        client = await this.#acquire(signal, deadline);
        return client.callTool({ name: tool, arguments: args }, undefined, {
          timeout: Math.max(1, deadline - Date.now()),
          ...(signal ? { signal } : {}),
        });
      };
      const raw = await run().catch((err: unknown) => this.#retryIfSessionGone(err, client, run));
      if (raw.isError === true) this.#options.logger.warn({ mcpServer: this.name, tool }, 'MCP tool returned an error result');
      return toToolResult(raw, this.#options.maxToolOutputBytes);
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      return this.#failed(tool, err, client);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const client = this.#client ?? (await this.#connecting?.catch(() => undefined));
    this.#client = undefined;
    this.#tools = undefined;
    if (client) await closeClient(client);
  }

  #failed(tool: string, err: unknown, client: Client | undefined): McpToolResult {
    const seconds = this.#timeoutText();
    let text: string;
    if (err instanceof TimeoutError) {
      text = `MCP server "${this.name}" did not connect within ${seconds}, so the tool "${tool}" did not run.`;
    } else if (err instanceof McpError && err.code === ErrorCode.RequestTimeout) {
      text = `The tool "${tool}" on MCP server "${this.name}" did not answer within ${seconds}.`;
    } else if (!client) {
      text = this.#mask((err as Error).message); // #acquire's errors already name the server
    } else {
      if (isConnectionError(err)) this.#drop(client);
      text = `MCP server "${this.name}" failed while running the tool "${tool}": ${this.#describe(err)}`;
    }
    this.#options.logger.warn({ mcpServer: this.name, tool, error: text }, 'MCP tool call failed');
    return errorResult(text);
  }

  /**
   * An HTTP server answers 404 to a session it no longer knows (it restarted, or the session
   * expired): the request did not run, so it is sent once more on a new session.
   */
  async #retryIfSessionGone<T>(err: unknown, client: Client | undefined, again: () => Promise<T>): Promise<T> {
    if (!(client && err instanceof StreamableHTTPError && err.code === 404 && client.transport instanceof StreamableHTTPClientTransport && client.transport.sessionId)) throw err;
    this.#options.logger.info({ mcpServer: this.name }, 'MCP session gone; opening a new one');
    this.#drop(client);
    this.#lastAttemptAt = -Infinity; // the old session worked: no need to wait before the new one
    return again();
  }

  async #list(): Promise<McpTool[]> {
    const generation = this.#toolsGeneration;
    const deadline = Date.now() + this.#options.toolTimeoutMs;
    let client: Client | undefined;
    try {
      const page = async (cursor: string | undefined): Promise<Awaited<ReturnType<Client['listTools']>>> => {
        client = await this.#acquire(undefined, deadline);
        return client.listTools(cursor ? { cursor } : undefined, { timeout: Math.max(1, deadline - Date.now()) });
      };
      const list: McpTool[] = [];
      let cursor: string | undefined;
      for (let pages = 0; pages < MAX_TOOL_PAGES; pages++) {
        const result = pages === 0
          ? await page(undefined).catch((err: unknown) => this.#retryIfSessionGone(err, client, () => page(undefined)))
          : await page(cursor);
        for (const t of result.tools) {
          list.push({ name: t.name, ...(t.description ? { description: t.description } : {}), inputSchema: t.inputSchema });
        }
        cursor = result.nextCursor;
        if (!cursor) break;
      }
      if (generation === this.#toolsGeneration && client && client === this.#client) this.#tools = { list, at: this.#now(), client };
      return list;
    } catch (err) {
      if (client && isConnectionError(err)) this.#drop(client);
      const text = err instanceof TimeoutError
        ? `MCP server "${this.name}" did not connect within ${this.#timeoutText()}`
        : client ? `MCP server "${this.name}" did not list its tools: ${this.#describe(err)}` : this.#mask((err as Error).message);
      this.#options.logger.warn({ mcpServer: this.name, error: text }, 'MCP server unavailable');
      throw new Error(text);
    }
  }

  /** The live client, connecting first if there is none; waits at most until `deadline`. */
  async #acquire(signal: AbortSignal | undefined, deadline: number): Promise<Client> {
    if (this.#closed) throw new Error(`MCP server "${this.name}": the connections are closed`);
    if (this.#client) return this.#client;
    this.#connecting ??= this.#connect().finally(() => {
      this.#connecting = undefined;
    });
    return untilAborted(this.#connecting, signal, deadline);
  }

  async #connect(): Promise<Client> {
    const interval = this.#options.reconnectIntervalMs ?? 1000;
    const wait = this.#lastAttemptAt + interval - Date.now();
    if (wait > 0) {
      // The last attempt failed just now: answer with its failure rather than hammer the server.
      if (this.#lastFailure) throw this.#lastFailure;
      // The connection died soon after it opened: reopen, but not more than once per interval.
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    this.#lastAttemptAt = Date.now();
    const client = new Client(CLIENT_INFO, { capabilities: {} });
    client.onclose = () => this.#closedByPeer(client);
    client.onerror = (err) => this.#options.logger.debug({ mcpServer: this.name, error: this.#describe(err) }, 'MCP transport error');
    client.setNotificationHandler(ToolListChangedNotificationSchema, async () => {
      this.#toolsGeneration++;
      if (this.#tools?.client === client) this.#tools = undefined;
    });
    try {
      await client.connect(this.#transport(), { timeout: this.#options.toolTimeoutMs });
    } catch (err) {
      await closeClient(client);
      this.#lastFailure = new Error(`MCP server "${this.name}" is unreachable: ${this.#describe(err)}`);
      throw this.#lastFailure;
    }
    this.#lastFailure = undefined;
    if (this.#closed) {
      await closeClient(client);
      throw new Error(`MCP server "${this.name}": the connections are closed`);
    }
    this.#client = client;
    this.#tools = undefined;
    return client;
  }

  #transport(): Transport {
    const config = this.#config;
    if (config.type === 'http') {
      return new StreamableHTTPClientTransport(new URL(config.url), {
        requestInit: { headers: config.headers },
        ...(this.#options.fetch ? { fetch: this.#options.fetch } : {}),
      });
    }
    const transport = new StdioClientTransport({
      command: config.command,
      args: config.args,
      // A minimal base (PATH, HOME, USER, SHELL, TERM, LOGNAME) plus the configured variables: the
      // gateway's own secrets (upstream keys, admin token, DATABASE_URL) never reach the child.
      env: { ...getDefaultEnvironment(), ...config.env },
      ...(config.cwd ? { cwd: config.cwd } : {}),
      stderr: 'pipe',
    });
    forEachLine(transport.stderr, (line) => {
      this.#options.logger.debug({ mcpServer: this.name, line: this.#mask(line) }, 'MCP server stderr');
    });
    return transport;
  }

  /** The transport closed on its own (child exited, stream ended): forget it, reopen on next use. */
  #closedByPeer(client: Client): void {
    if (this.#client !== client) return;
    this.#client = undefined;
    this.#tools = undefined;
    if (!this.#closed) this.#options.logger.info({ mcpServer: this.name }, 'MCP server connection closed; it reopens on next use');
  }

  #drop(client: Client): void {
    if (this.#client === client) {
      this.#client = undefined;
      this.#tools = undefined;
    }
    void closeClient(client);
  }

  #describe(err: unknown): string {
    const e = err as { message?: unknown; cause?: { code?: unknown; message?: unknown } };
    let text = typeof e?.message === 'string' && e.message !== '' ? e.message : String(err);
    if (err instanceof StreamableHTTPError && err.code !== undefined && err.code > 0) text = `HTTP ${err.code}: ${text}`;
    // fetch's "fetch failed" says nothing; the cause says ECONNREFUSED or why the guard refused.
    const cause = e?.cause;
    if (cause && typeof cause.message === 'string') text += ` (${typeof cause.code === 'string' ? `${cause.code}: ` : ''}${cause.message})`;
    return this.#mask(text);
  }

  #mask(text: string): string {
    let out = text;
    for (const secret of this.#secrets) out = out.split(secret).join('[redacted]');
    return out.length > 1000 ? `${out.slice(0, 1000)}…` : out;
  }

  #timeoutText(): string {
    return `${Math.round(this.#options.toolTimeoutMs / 100) / 10} s`;
  }

  #now(): number {
    return (this.#options.now ?? Date.now)();
  }
}

class TimeoutError extends Error {}

/** Errors after which the connection is not worth keeping: anything but a JSON-RPC error answer. */
function isConnectionError(err: unknown): boolean {
  if (err instanceof McpError) return err.code === ErrorCode.ConnectionClosed;
  return true;
}

/** Values from the config that must never appear in a log line or a message to the model. */
function secretsOf(config: McpServerConfig): string[] {
  const values = config.type === 'http'
    ? [
        config.url,
        ...[...new URL(config.url).searchParams.values()],
        // "Bearer <token>": the token alone too
        ...Object.values(config.headers).flatMap((v) => [v, v.slice(v.lastIndexOf(' ') + 1)]),
      ]
    : Object.values(config.env);
  // Longest first, so that a value containing another is masked whole; short values are no secret.
  return values.filter((v) => v.length >= 6).sort((a, b) => b.length - a.length);
}

async function closeClient(client: Client): Promise<void> {
  const transport = client.transport;
  if (transport instanceof StreamableHTTPClientTransport) {
    // Tell the server the session is over, but do not wait long for it.
    await Promise.race([transport.terminateSession().catch(() => {}), new Promise((r) => setTimeout(r, 1000).unref())]);
  }
  await client.close().catch(() => {});
}

/** `promise`, or a rejection when `signal` aborts or `deadline` (epoch ms) passes first. */
function untilAborted<T>(promise: Promise<T>, signal?: AbortSignal, deadline?: number): Promise<T> {
  if (!signal && deadline === undefined) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      cleanup();
      reject(signal!.reason);
    };
    const timer = deadline === undefined ? undefined : setTimeout(() => {
      cleanup();
      reject(new TimeoutError('timed out'));
    }, Math.max(0, deadline - Date.now()));
    const cleanup = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        cleanup();
        resolve(value);
      },
      (err: unknown) => {
        cleanup();
        reject(err);
      },
    );
  });
}

/** Calls `onLine` for each line of a stream, each cut to STDERR_LINE_CHARS (and so is the buffer). */
function forEachLine(stream: Stream | null, onLine: (line: string) => void): void {
  if (!stream) return;
  let pending = '';
  const readable = stream as Readable;
  readable.setEncoding('utf8');
  readable.on('data', (chunk: string) => {
    const lines = (pending + chunk).split('\n');
    pending = (lines.pop() ?? '').slice(0, STDERR_LINE_CHARS);
    for (const line of lines) if (line.trim() !== '') onLine(line.slice(0, STDERR_LINE_CHARS));
  });
  readable.on('end', () => {
    if (pending.trim() !== '') onLine(pending);
  });
}
