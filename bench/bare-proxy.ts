/**
 * The benchmark's floor: the least a Node proxy can do per request with the gateway's own HTTP
 * stack — a `node:http` server taking the request, an undici Pool sending it to the upstream,
 * the answer passed back (a JSON body read whole, an event stream chunk by chunk, as the gateway
 * does). No keys, limits, cache, usage, metrics or logs. `npm run bench` measures it beside the
 * gateway, so what the gateway costs above it is the gateway's own work, and the floor itself is
 * what one more HTTP server and client exchange costs on this machine.
 *
 * `UPSTREAM_URL=http://… PORT=… node bench/bare-proxy.ts` (PORT=0 picks one; it prints it).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';

const upstream = new Pool(process.env['UPSTREAM_URL'] ?? 'http://127.0.0.1:8787', { connections: 128, pipelining: 1, keepAliveTimeout: 30_000 });
/** Hop-by-hop headers, and the framing Node sets itself. */
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'host']);

function forwardable(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value !== undefined && !HOP.has(name)) out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', async () => {
    try {
      const answer = await upstream.request({ method: 'POST', path: req.url ?? '/', headers: forwardable(req.headers), body: Buffer.concat(chunks) });
      const headers = forwardable(answer.headers);
      if (String(answer.headers['content-type']).startsWith('text/event-stream')) {
        res.writeHead(answer.statusCode, headers);
        for await (const chunk of answer.body) if (!res.write(chunk)) await new Promise((r) => res.once('drain', r));
        res.end();
      } else {
        const body = Buffer.from(await answer.body.arrayBuffer());
        headers['content-length'] = String(body.byteLength);
        res.writeHead(answer.statusCode, headers);
        res.end(body);
      }
    } catch {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    }
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(process.env['PORT'] ?? 0), '127.0.0.1', () => {
  console.log(`bare proxy listening on http://127.0.0.1:${(server.address() as AddressInfo).port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
