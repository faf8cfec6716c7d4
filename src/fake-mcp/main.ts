/**
 * Runnable fake MCP server: `node src/fake-mcp/main.ts` serves it over stdio (as an attached
 * stdio server is started); `--http --port N [--token T]` serves Streamable HTTP on 127.0.0.1.
 *
 * Environment:
 *   FAKE_MCP_SPAWN_LOG   a file to which each stdio start appends its pid (tests count starts)
 */
import { appendFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { createFakeMcpServer, startFakeMcpHttp } from './server.ts';

const { values } = parseArgs({
  options: {
    http: { type: 'boolean', default: false },
    port: { type: 'string', default: '8788' },
    token: { type: 'string' },
  },
});

if (values.http) {
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`fake-mcp: --port must be a port number, got ${JSON.stringify(values.port)}`);
    process.exit(2);
  }
  const fake = await startFakeMcpHttp({ port, ...(values.token !== undefined ? { token: values.token } : {}) });
  console.log(`fake MCP server (Streamable HTTP) listening on ${fake.url}`);
  const shutdown = (): void => {
    fake.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
} else {
  const spawnLog = process.env['FAKE_MCP_SPAWN_LOG'];
  if (spawnLog) appendFileSync(spawnLog, `${process.pid}\n`);
  // stdout carries the protocol; anything human goes to stderr.
  console.error(`fake MCP server (stdio) started, pid ${process.pid}`);
  const server = createFakeMcpServer();
  await server.connect(new StdioServerTransport());
}
