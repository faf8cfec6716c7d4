/**
 * One request and its answer as the metered endpoints (pipeline.ts) see them: Node's own request
 * and response, the request's id and start time, and a signal for the client going away. The
 * pipeline writes its answers to the Node response itself, with the helpers here; the failure
 * of any route is put on the wire by `errorAnswer`, the one mapping of errors to responses
 * (request-listener.ts uses it for the metered routes, gateway.ts for the Hono app's).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { GatewayError, InternalError, toErrorBody } from './errors.ts';
import { newRequestId } from './http-server.ts';
import type { Logger } from './logger.ts';
import type { PlainHeaders } from './upstream/headers.ts';

export interface Exchange {
  readonly incoming: IncomingMessage;
  readonly outgoing: ServerResponse;
  readonly requestId: string;
  /** Date.now() when the request arrived: the limits' clock and the latency's start. */
  readonly startedAt: number;
  /** Aborted when the client goes away before its response is finished. */
  readonly signal: AbortSignal;
  /** The key that authenticated, once known (for the access log). */
  keyId: string | undefined;
}

/**
 * A new exchange for Node's request and response. Its signal aborts when the response closes
 * unfinished (the client went away), as a fetch-style Request's signal would.
 */
export function openExchange(incoming: IncomingMessage, outgoing: ServerResponse): Exchange {
  const aborter = new AbortController();
  outgoing.once('close', () => {
    if (!outgoing.writableFinished || incoming.errored) aborter.abort(new Error('The client closed the connection.'));
  });
  return { incoming, outgoing, requestId: newRequestId(), startedAt: Date.now(), signal: aborter.signal, keyId: undefined };
}

/** A whole answer of known length: status, headers (completed with content-length) and body. */
export function sendBody(outgoing: ServerResponse, status: number, headers: PlainHeaders, body: Uint8Array | string): void {
  headers['content-length'] = String(typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength);
  outgoing.writeHead(status, headers);
  outgoing.end(body);
}

/** Resolves when the socket can take more, or is gone. */
export function drained(outgoing: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      outgoing.off('drain', done);
      outgoing.off('close', done);
      resolve();
    };
    outgoing.on('drain', done);
    outgoing.on('close', done);
  });
}

/**
 * A web Response (the MCP tool loop's answer) written to the Node response. An event stream goes
 * out as it is produced, with backpressure, and is cancelled if the client leaves; any other body
 * is read whole and sent with its length.
 */
export async function sendWebResponse(outgoing: ServerResponse, response: Response): Promise<void> {
  const headers: PlainHeaders = {};
  response.headers.forEach((value, name) => {
    headers[name] = value;
  });
  if (!response.body || !headers['content-type']?.startsWith('text/event-stream')) {
    sendBody(outgoing, response.status, headers, new Uint8Array(await response.arrayBuffer()));
    return;
  }
  outgoing.writeHead(response.status, headers);
  const reader = response.body.getReader();
  const cancel = () => void reader.cancel().catch(() => {});
  outgoing.once('close', cancel);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (!outgoing.write(value)) await drained(outgoing);
    }
  } finally {
    outgoing.off('close', cancel);
    outgoing.end();
  }
}

/** Bodies up to this size are read and discarded after an early refusal, to keep the connection. */
const DISCARD_UNREAD_BODY_BYTES = 1024 * 1024;

/**
 * Refused before a large body was all in (a key at its limits, a body too large or malformed
 * early): the connection is closed after the answer rather than kept alive, which would mean
 * reading and discarding the rest of an upload of up to 32 MiB (or, chunked, without end). A
 * client still sending may then see the connection reset instead of the answer; small bodies,
 * the common case, keep the connection and get the answer.
 */
function leavesLargeUpload(incoming: IncomingMessage): boolean {
  if (incoming.complete) return false;
  const declared = Number(incoming.headers['content-length']);
  return !(declared <= DISCARD_UNREAD_BODY_BYTES);
}

export interface ErrorAnswer {
  status: number;
  headers: PlainHeaders;
  body: string;
}

/**
 * What the client gets for a failure: a GatewayError in Anthropic's shape with its status and
 * headers, anything else as a 500 api_error (logged, as are the gateway's own 5xx answers).
 */
export function errorAnswer(err: unknown, requestId: string, incoming: IncomingMessage, logger: Logger): ErrorAnswer {
  const gatewayError = err instanceof GatewayError ? err : new InternalError();
  if (!(err instanceof GatewayError)) logger.error({ err, requestId }, 'unhandled error');
  else if (err.status >= 500) logger.warn({ requestId, status: err.status, reason: err.message, cause: (err.cause as Error | undefined)?.message }, 'request failed');
  const headers: PlainHeaders = { 'content-type': 'application/json', 'x-request-id': requestId, 'request-id': requestId, ...gatewayError.headers };
  if (leavesLargeUpload(incoming)) headers['connection'] = 'close';
  return { status: gatewayError.status, headers, body: JSON.stringify(toErrorBody(gatewayError, requestId)) };
}
