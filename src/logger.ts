/**
 * Structured JSON logs (pino). The gateway never hands a logger a key, an upstream credential,
 * a header map or a request body; the redaction paths below are a second line of defence for
 * anything that slips through (e.g. an error object carrying request options).
 */
import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

const REDACT = [
  'key', 'apiKey', 'api_key', 'token', 'adminToken', 'authorization', 'headers', 'body', 'prompt',
  '*.key', '*.apiKey', '*.authorization', '*.headers', '*.body', '*["x-api-key"]',
  'err.options', 'err.config', 'err.request',
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino({ level, base: { service: 'claudcode' }, redact: { paths: REDACT, censor: '[redacted]' } }, destination);
}
