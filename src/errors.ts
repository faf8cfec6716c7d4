/**
 * The gateway's error hierarchy. Every failure the gateway itself produces is one of these;
 * `toErrorBody` maps them to Anthropic's wire shape in one place so that the official SDKs raise
 * the matching error class (AuthenticationError, RateLimitError, ...).
 */

export type AnthropicErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'request_too_large'
  | 'rate_limit_error'
  | 'timeout_error'
  | 'api_error'
  | 'overloaded_error';

export class GatewayError extends Error {
  readonly status: number;
  readonly type: AnthropicErrorType;
  /** Extra response headers (Retry-After, X-RateLimit-*), set by the subclass that knows them. */
  readonly headers: Record<string, string>;

  constructor(status: number, type: AnthropicErrorType, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.type = type;
    this.headers = headers;
  }
}

export class InvalidRequestError extends GatewayError {
  constructor(message: string) {
    super(400, 'invalid_request_error', message);
  }
}

export class AuthenticationError extends GatewayError {
  constructor(message: string) {
    super(401, 'authentication_error', message);
  }
}

export class PermissionError extends GatewayError {
  constructor(message: string) {
    super(403, 'permission_error', message);
  }
}

export class NotFoundError extends GatewayError {
  constructor(message: string) {
    super(404, 'not_found_error', message);
  }
}

export class RequestTooLargeError extends GatewayError {
  constructor(limitBytes: number) {
    super(413, 'request_too_large', `Request body exceeds the gateway's limit of ${limitBytes} bytes.`);
  }
}

/**
 * 431: the request's header block is over the gateway's bounds (too many header lines, or too
 * many bytes of them). Typed request_too_large like a 413, the closest of Anthropic's types.
 */
export class RequestHeadersTooLargeError extends GatewayError {
  constructor(message: string) {
    super(431, 'request_too_large', message);
  }
}

/**
 * 408: the client did not send its whole request (head, or head and body) in time. Anthropic's
 * timeout_error type; SDKs retry a 408, which suits a client that was merely slow.
 */
export class RequestTimeoutError extends GatewayError {
  constructor(message: string) {
    super(408, 'timeout_error', message);
  }
}

export class RateLimitError extends GatewayError {
  readonly retryAfterSeconds: number;
  constructor(message: string, retryAfterSeconds: number, rateLimitHeaders: Record<string, string>) {
    const retryAfter = Math.max(1, Math.ceil(retryAfterSeconds));
    super(429, 'rate_limit_error', message, { 'retry-after': String(retryAfter), ...rateLimitHeaders });
    this.retryAfterSeconds = retryAfter;
  }
}

/** A fault inside the gateway. The message sent to the client is generic; the cause is logged. */
export class InternalError extends GatewayError {
  constructor(message = 'Internal gateway error.') {
    super(500, 'api_error', message);
  }
}

/** The upstream could not be reached or answered with something that is not the Messages API. */
export class UpstreamError extends GatewayError {
  constructor(message: string, headers: Record<string, string> = {}) {
    super(502, 'api_error', message, headers);
  }
}

/** The upstream did not connect, answer or go on answering within its timeout (upstreamTimeouts). */
export class UpstreamTimeoutError extends GatewayError {
  constructor(message: string) {
    super(504, 'api_error', message);
  }
}

/** The durable store (PostgreSQL) cannot be reached: nothing the client did, try again shortly. */
export class StoreUnavailableError extends GatewayError {
  constructor() {
    super(503, 'api_error', "The gateway's store is unreachable. Try again shortly.", { 'retry-after': '1' });
  }
}

/** 503 overloaded_error: the gateway does not serve the API for now; Retry-After when known. */
export class ServiceUnavailableError extends GatewayError {
  constructor(message: string, retryAfterSeconds?: number) {
    super(503, 'overloaded_error', message, retryAfterSeconds === undefined ? {} : { 'retry-after': String(Math.max(1, Math.ceil(retryAfterSeconds))) });
  }
}

/** Maintenance mode (maintenance.ts): every /v1 route answers this until it is switched off. */
export class MaintenanceError extends ServiceUnavailableError {
  constructor(retryAfterSeconds: number) {
    super('The gateway is in maintenance mode. Try again later.', retryAfterSeconds);
  }
}

/**
 * 503: the shared rate-limit store (Redis, in the scale-out mode) cannot be reached, and the
 * gateway does not fail open. Typed api_error (a gateway-side fault, not maintenance); the
 * Retry-After of a second lets SDKs retry it.
 */
export class LimitsUnavailableError extends GatewayError {
  constructor(message = 'Limits unavailable: the gateway cannot reach its rate-limit store. Try again shortly.') {
    super(503, 'api_error', message, { 'retry-after': '1' });
  }
}

/**
 * Client-supplied text cut to a length safe to echo in an error message or keep in a usage
 * record: a refusal must not cost more than the request that caused it.
 */
export function clip(text: string, max = 64): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

export interface AnthropicErrorBody {
  type: 'error';
  error: { type: AnthropicErrorType; message: string };
  request_id?: string;
}

export function toErrorBody(err: GatewayError, requestId: string): AnthropicErrorBody {
  return { type: 'error', error: { type: err.type, message: err.message }, request_id: requestId };
}
