/**
 * A fake MCP server for tests, built with the official SDK so that it speaks the protocol exactly
 * as real servers do. Its tools are deterministic: `search`, `echo`, `fail`, `slow`, `big`,
 * `media` (non-text content), `add_tool` (changes the tool list) and `pid` (which process
 * answers, so tests can see reuse and restarts). `startFakeMcpHttp` serves it over Streamable
 * HTTP in-process, with sessions, so that tests can also drop every session and watch a client
 * recover.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';

export interface FakeMcpCall {
  tool: string;
  args: Record<string, unknown>;
}

/** A 1×1 transparent PNG, the image content of the `media` tool. */
const PNG_1X1 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=';

/** A new MCP server with the fake tools; `onCall` sees every tool call (name and arguments). */
export function createFakeMcpServer(onCall: (call: FakeMcpCall) => void = () => {}): McpServer {
  const server = new McpServer({ name: 'claudcode-fake-mcp', version: '1.0.0' });
  const seen = (tool: string, args: Record<string, unknown>): void => onCall({ tool, args });
  const text = (t: string) => ({ content: [{ type: 'text' as const, text: t }] });

  server.registerTool(
    'search',
    { description: 'Search the (fake) web.', inputSchema: { query: z.string() } },
    async (args) => {
      seen('search', args);
      return text(
        `Fake search results for "${args.query}":\n` +
          `1. ${args.query} — Wikipedia (https://example.com/wiki/1)\n` +
          `2. All about ${args.query} (https://example.com/2)`,
      );
    },
  );
  server.registerTool('echo', { description: 'Returns its text.', inputSchema: { text: z.string() } }, async (args) => {
    seen('echo', args);
    return text(args.text);
  });
  server.registerTool('fail', { description: 'Always fails.', inputSchema: { reason: z.string().optional() } }, async (args) => {
    seen('fail', args);
    // The SDK turns a thrown error into an isError result, as most real servers' failures arrive.
    throw new Error('the fake tool failed on purpose');
  });
  server.registerTool('slow', { description: 'Answers after `ms` milliseconds.', inputSchema: { ms: z.number().int().nonnegative() } }, async (args, extra) => {
    seen('slow', args);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, args.ms);
      extra.signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
    });
    return text(`slept ${args.ms} ms`);
  });
  server.registerTool('big', { description: 'Returns `bytes` bytes of text.', inputSchema: { bytes: z.number().int().nonnegative() } }, async (args) => {
    seen('big', args);
    return text('0123456789'.repeat(Math.ceil(args.bytes / 10)).slice(0, args.bytes));
  });
  server.registerTool('media', { description: 'Returns non-text content.' }, async () => {
    seen('media', {});
    return {
      content: [
        { type: 'text' as const, text: 'Here is the media:' },
        { type: 'image' as const, data: PNG_1X1, mimeType: 'image/png' },
        { type: 'audio' as const, data: Buffer.alloc(3000).toString('base64'), mimeType: 'audio/wav' },
        { type: 'resource' as const, resource: { uri: 'file:///notes.txt', mimeType: 'text/plain', text: 'The notes say hello.' } },
        { type: 'resource' as const, resource: { uri: 'file:///data.bin', mimeType: 'application/octet-stream', blob: Buffer.alloc(2048).toString('base64') } },
        { type: 'resource_link' as const, uri: 'https://example.com/report.pdf', name: 'report.pdf', mimeType: 'application/pdf' },
      ],
    };
  });
  server.registerTool('add_tool', { description: 'Adds a tool `name` (the server then says its tool list changed).', inputSchema: { name: z.string() } }, async (args) => {
    seen('add_tool', args);
    server.registerTool(args.name, { description: 'Added at run time.' }, async () => text(`I am ${args.name}`));
    return text(`added ${args.name}`);
  });
  server.registerTool('pid', { description: 'The process id of the server.' }, async () => {
    seen('pid', {});
    return text(String(process.pid));
  });
  return server;
}

export interface FakeMcpHttp {
  /** The MCP endpoint, e.g. http://127.0.0.1:40123/mcp */
  url: string;
  /** Every tool call, in order. */
  calls: FakeMcpCall[];
  /** Every JSON-RPC method received (requests and notifications), in order: count `tools/list` here. */
  methods: string[];
  /** Forgets every session, as a restarted server would: clients then get 404 and must reconnect. */
  dropSessions(): Promise<void>;
  close(): Promise<void>;
}

export interface FakeMcpHttpOptions {
  /** When set, every request must carry `Authorization: Bearer <token>` (else 401). */
  token?: string;
  host?: string;
  port?: number;
}

export async function startFakeMcpHttp(options: FakeMcpHttpOptions = {}): Promise<FakeMcpHttp> {
  const calls: FakeMcpCall[] = [];
  const methods: string[] = [];
  const sessions = new Map<string, { transport: StreamableHTTPServerTransport; server: McpServer }>();
  const sockets = new Set<Socket>();

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (new URL(req.url ?? '/', 'http://x').pathname !== '/mcp') return reply(res, 404, 'not found');
    if (options.token !== undefined && req.headers.authorization !== `Bearer ${options.token}`) {
      return reply(res, 401, 'unauthorized');
    }
    let body: unknown;
    if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        return reply(res, 400, 'bad json');
      }
      for (const message of Array.isArray(body) ? body : [body]) {
        const method = (message as { method?: unknown }).method;
        if (typeof method === 'string') methods.push(method);
      }
    }
    const sessionId = req.headers['mcp-session-id'];
    if (typeof sessionId === 'string') {
      const session = sessions.get(sessionId);
      if (!session) return reply(res, 404, JSON.stringify({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null }));
      return session.transport.handleRequest(req, res, body);
    }
    // No session: only an initialize request may open one.
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        sessions.set(id, { transport, server });
      },
    });
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
    };
    const server = createFakeMcpServer((call) => calls.push(call));
    await server.connect(transport);
    await transport.handleRequest(req, res, body);
  }

  const http = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) reply(res, 500, String(err));
      else res.destroy();
    });
  });
  http.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(options.port ?? 0, options.host ?? '127.0.0.1', resolve);
  });
  const { address, port } = http.address() as AddressInfo;
  const host = address.includes(':') ? `[${address}]` : address;

  async function dropSessions(): Promise<void> {
    const open = [...sessions.values()];
    sessions.clear();
    await Promise.all(open.map(({ server }) => server.close().catch(() => {})));
  }

  return {
    url: `http://${host}:${port}/mcp`,
    calls,
    methods,
    dropSessions,
    async close() {
      await dropSessions();
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
    },
  };
}

function reply(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': text.startsWith('{') ? 'application/json' : 'text/plain' }).end(text);
}
