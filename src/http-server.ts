/**
 * The Node HTTP server's own limits, and the answer to what Node refuses before the app sees a
 * request. Node enforces these while it parses, so a slow or oversized request costs the gateway
 * a socket for a bounded time and nothing else:
 *
 * - headersTimeout: an idle socket, or one trickling its head, is answered 408 and closed.
 * - requestTimeout: a request whose head and body are not all in by then is answered 408 (a
 *   response already under way is cut instead). It ends when the request is received, so a long
 *   response stream is not affected.
 * - connectionsCheckingInterval: how often Node looks for such sockets (its default, 30 s, lets a
 *   socket outlive either deadline by that much).
 * - maxHeaderSize: pinned at Node's default, 16 KiB, so `--max-http-header-size` in NODE_OPTIONS
 *   cannot raise it past what checkRequestHeaders (upstream/headers.ts) allows to be forwarded.
 *
 * Node's own answers to these are bare status lines; clientErrorHandler sends Anthropic-shaped
 * bodies instead, so SDKs and scripts see the same error shape as for the gateway's own refusals.
 */
import { randomBytes } from 'node:crypto';
import type { ServerOptions } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Config } from './config.ts';
import { InvalidRequestError, RequestHeadersTooLargeError, RequestTimeoutError, toErrorBody } from './errors.ts';
import type { Logger } from './logger.ts';

/** Node's default head limit, pinned (see above); upstream/headers.ts bounds forwarded headers by it. */
export const MAX_HEADER_BLOCK_BYTES = 16 * 1024;
/** Idle keep-alive connections: longer than the 60 s idle timeout of common load balancers. */
export const KEEP_ALIVE_TIMEOUT_MS = 65_000;
const CONNECTIONS_CHECKING_INTERVAL_MS = 1_000;

/** The options the gateway's HTTP server is created with. */
export function httpServerOptions(config: Pick<Config, 'headersTimeoutMs' | 'requestTimeoutMs'>): ServerOptions {
  return {
    headersTimeout: config.headersTimeoutMs,
    requestTimeout: config.requestTimeoutMs,
    connectionsCheckingInterval: CONNECTIONS_CHECKING_INTERVAL_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    maxHeaderSize: MAX_HEADER_BLOCK_BYTES,
  };
}

/**
 * The id in x-request-id, request-id and error bodies: 16 random hex digits per process, then a
 * counter — unique across instances and restarts like a UUID, without making and reformatting
 * one per request (the hot path). An id names a request in logs and usage; it grants nothing,
 * so being guessable in order is fine.
 */
const REQUEST_ID_PREFIX = `req_cc_${randomBytes(8).toString('hex')}`;
let requestCounter = 0;

export function newRequestId(): string {
  return REQUEST_ID_PREFIX + (++requestCounter).toString(16).padStart(16, '0');
}

const REASONS: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 431: 'Request Header Fields Too Large' };

/** The gateway error for what Node's parser or timers refused, or undefined for a plain socket fault. */
function clientErrorAnswer(err: Error & { code?: string }, config: Pick<Config, 'headersTimeoutMs' | 'requestTimeoutMs'>) {
  const code = err.code ?? '';
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return new RequestTimeoutError(
      `The request was not received in time (the head within ${config.headersTimeoutMs} ms, the whole request within ${config.requestTimeoutMs} ms).`,
    );
  }
  if (code === 'HPE_HEADER_OVERFLOW') {
    return new RequestHeadersTooLargeError(`The request's headers exceed the gateway's limit of ${MAX_HEADER_BLOCK_BYTES} bytes.`);
  }
  if (code.startsWith('HPE_')) return new InvalidRequestError('Malformed HTTP request.');
  return undefined;
}

/**
 * A 'clientError' listener for the server. As Node's default does, it answers only while nothing
 * of a response has been written to the socket, then destroys the socket.
 */
export function clientErrorHandler(config: Pick<Config, 'headersTimeoutMs' | 'requestTimeoutMs'>, logger: Logger) {
  return function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
    const answer = clientErrorAnswer(err, config);
    // Node's ServerResponse in progress on this socket, if any (an internal field Node's own handler reads).
    const response = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (answer && socket.writable && !response?.headersSent) {
      const requestId = newRequestId();
      const body = JSON.stringify(toErrorBody(answer, requestId));
      socket.write(
        `HTTP/1.1 ${answer.status} ${REASONS[answer.status] ?? 'Error'}\r\n` +
          `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
          `x-request-id: ${requestId}\r\nrequest-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
      );
      logger.info({ requestId, status: answer.status, code: err.code }, 'request refused by the HTTP server');
    }
    socket.destroy();
  };
}
