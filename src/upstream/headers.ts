/**
 * What crosses the gateway between client and upstream: requests carry the client's headers
 * minus its credentials and hop-by-hop headers, plus the gateway's own upstream credential;
 * responses carry the upstream's minus hop-by-hop headers and the upstream account's details.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { Dispatcher } from 'undici';
import { RequestHeadersTooLargeError } from '../errors.ts';
import { MAX_HEADER_BLOCK_BYTES } from '../http-server.ts';

/** Never forwarded upstream: hop-by-hop headers, the client's credentials, gateway controls. */
const DROP_REQUEST_HEADERS = new Set([
  'host', 'connection', 'keep-alive', 'proxy-authorization', 'proxy-connection', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'content-length', 'expect',
  'x-api-key', 'authorization', 'cookie',
  // The gateway reads usage out of the response, so it asks upstream for identity encoding.
  'accept-encoding',
  'x-no-cache', 'x-mcp-tools', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-real-ip', 'forwarded',
]);

/** Never passed back to clients: hop-by-hop headers and the upstream account's own details. */
const DROP_RESPONSE_HEADERS = new Set([
  'connection', 'keep-alive', 'transfer-encoding', 'content-length', 'content-encoding', 'trailer',
  'upgrade', 'set-cookie', 'anthropic-organization-id', 'server', 'via', 'alt-svc', 'cf-ray',
  'cf-cache-status', 'x-envoy-upstream-service-time', 'strict-transport-security',
]);

const DEFAULT_ANTHROPIC_VERSION = '2023-06-01';

/**
 * Bounds on the headers a client may send (and so have forwarded). Real clients send 10-30 header
 * lines in 1-3 KiB; Node alone would pass up to 2,000 lines (it drops the rest silently) in its
 * 16 KiB head. 100 lines leaves room for proxies in front adding their own.
 */
export const MAX_REQUEST_HEADERS = 100;
/** Bytes of header lines (name, ": ", value, CRLF), the same 16 KiB Node allows for the whole head. */
export const MAX_REQUEST_HEADER_BYTES = MAX_HEADER_BLOCK_BYTES;

/** One header line's bytes as sent: Node decodes header bytes as latin1, one character per byte. */
function headerLineBytes(name: string, value: string): number {
  return name.length + value.length + 4;
}

/**
 * Refuses a request with more than MAX_REQUEST_HEADERS header lines or MAX_REQUEST_HEADER_BYTES
 * of them: throws RequestHeadersTooLargeError (431 request_too_large). Reads only the raw header
 * list Node already parsed, so it costs nothing and can run before the body is read.
 */
export function checkRequestHeaders(incoming: Pick<IncomingMessage, 'rawHeaders'>): void {
  const raw = incoming.rawHeaders;
  const lines = raw.length / 2;
  if (lines > MAX_REQUEST_HEADERS) {
    throw new RequestHeadersTooLargeError(`The request has ${lines} headers; the gateway accepts at most ${MAX_REQUEST_HEADERS}.`);
  }
  let bytes = 0;
  for (let i = 0; i < raw.length; i += 2) bytes += headerLineBytes(raw[i]!, raw[i + 1]!);
  if (bytes > MAX_REQUEST_HEADER_BYTES) {
    throw new RequestHeadersTooLargeError(`The request's headers are ${bytes} bytes; the gateway accepts at most ${MAX_REQUEST_HEADER_BYTES}.`);
  }
}

/**
 * The headers sent upstream: the client's, less those in DROP_REQUEST_HEADERS, plus the gateway's.
 * Never more than MAX_REQUEST_HEADERS client headers in MAX_REQUEST_HEADER_BYTES, whatever the
 * caller passes: checkRequestHeaders refuses such requests first, and should a caller skip it,
 * headers past the bound are left out rather than forwarded.
 */
export function upstreamRequestHeaders(client: IncomingHttpHeaders, upstreamKey: string | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  let count = 0;
  let bytes = 0;
  for (const name in client) {
    const value = client[name];
    if (value === undefined || DROP_REQUEST_HEADERS.has(name)) continue;
    const text = Array.isArray(value) ? value.join(', ') : value;
    bytes += headerLineBytes(name, text);
    if (++count > MAX_REQUEST_HEADERS || bytes > MAX_REQUEST_HEADER_BYTES) break;
    headers[name] = text;
  }
  headers['anthropic-version'] ??= DEFAULT_ANTHROPIC_VERSION;
  headers['content-type'] ??= 'application/json';
  if (upstreamKey) headers['x-api-key'] = upstreamKey;
  return headers;
}

export type PlainHeaders = Record<string, string>;

/**
 * On every event stream the gateway sends (proxied, replayed from the cache, the tool loop's):
 * proxies in front (nginx) must pass events on as they come rather than buffer them.
 */
export const STREAM_RESPONSE_HEADERS: Readonly<PlainHeaders> = { 'cache-control': 'no-cache', 'x-accel-buffering': 'no' };

/**
 * Response headers a client may see: the upstream's, less hop-by-hop and account details. A plain
 * object rather than a Headers instance: @hono/node-server hands a plain object straight to
 * writeHead, where a Headers instance would be converted again on every response.
 */
export function clientResponseHeaders(upstream: Dispatcher.ResponseData['headers']): PlainHeaders {
  const headers: PlainHeaders = {};
  for (const name in upstream) {
    const value = upstream[name];
    if (value === undefined || DROP_RESPONSE_HEADERS.has(name) || name.startsWith('anthropic-ratelimit-')) continue;
    // set-cookie, the one header that must stay a list, is dropped above.
    headers[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return headers;
}
