/**
 * The failover policy's rules, in one place: which upstream answers are worth another attempt,
 * how long an upstream asked us to wait, and how long to back off between rounds.
 */
import type { IncomingHttpHeaders } from 'node:http';

/**
 * How an attempt's HTTP status counts. `retry`: another attempt may succeed (429 rate limited,
 * 529 overloaded, other 5xx). `skip`: this upstream cannot serve the request at all — a 401 means
 * the gateway's credential for it was refused — so try the others, never it again for
 * this request. `final`: the answer (2xx, and the client's own 4xx errors, which any upstream
 * would repeat; a 403 too, which Anthropic gives for what the request asks, not for a bad key).
 */
export type StatusVerdict = 'final' | 'retry' | 'skip';

export function statusVerdict(status: number): StatusVerdict {
  if (status === 401) return 'skip';
  if (status === 429 || status >= 500) return 'retry';
  return 'final';
}

/**
 * Whether an attempt's outcome counts against the upstream's health (its circuit breaker). A
 * 429 does not: it is the upstream rationing this credential, which its `retry-after` says how
 * to respect, not a sign that it is down.
 */
export function countsAsFailure(status: number): boolean {
  return status !== 429 && statusVerdict(status) !== 'final';
}

/**
 * The wait an upstream asked for, in ms: `retry-after-ms` (Anthropic's, also read by its SDKs),
 * else `retry-after` in seconds or as an HTTP date. Undefined when absent or unreadable.
 */
export function retryAfterMs(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>, now: number): number | undefined {
  const ms = Number(headerText(headers['retry-after-ms']));
  if (headers['retry-after-ms'] !== undefined && Number.isFinite(ms) && ms >= 0) return ms;
  const text = headerText(headers['retry-after']);
  if (text === undefined || text.trim() === '') return undefined;
  const seconds = Number(text);
  if (Number.isFinite(seconds)) return seconds >= 0 ? seconds * 1000 : undefined;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

export interface BackoffOptions {
  backoffBaseMs: number;
  backoffMaxMs: number;
}

/**
 * The pause before round `round` (1 = the first retry round): exponential from the base, capped,
 * with "equal jitter" (half fixed, half random) so instances that failed together do not retry
 * together, yet every pause keeps at least half its length.
 */
export function backoffMs(round: number, options: BackoffOptions, random: () => number): number {
  const ceiling = Math.min(options.backoffMaxMs, options.backoffBaseMs * 2 ** Math.max(0, round - 1));
  return ceiling / 2 + random() * (ceiling / 2);
}
