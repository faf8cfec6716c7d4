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

/**
 * Logs go to stdout written in the background (sonic-boom, async): at the default level every
 * request logs a line, and a blocking write system call per line was a cost on the hot path. A
 * line goes out at once when no write is in flight; lines logged during one are joined into the
 * next write, so under load many lines share a system call. pino flushes what is pending when the
 * process exits; a crash (kill -9) may lose the last lines, never usage (that is in the store).
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const out = destination ?? pino.destination({ dest: 1, sync: false, minLength: 0 });
  return pino({ level, base: { service: 'claudcode' }, redact: { paths: REDACT, censor: '[redacted]' } }, out);
}

/**
 * Runs `log` at most once per `intervalMs`; the calls in between are counted and handed to the
 * next one that runs, so a flood of failures makes one line every few seconds.
 */
export function throttled(intervalMs: number): (log: (suppressed: number) => void) => void {
  let last = -Infinity;
  let suppressed = 0;
  return (log) => {
    const now = Date.now();
    if (now - last < intervalMs) {
      suppressed++;
      return;
    }
    last = now;
    const count = suppressed;
    suppressed = 0;
    log(count);
  };
}
