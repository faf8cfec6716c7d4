/**
 * The upstream pool: several Anthropic-compatible upstreams (base URL + credential), and the one
 * failover policy of the gateway.
 *
 *   order the upstreams (priority, then weighted random; only those serving the model)
 *   → attempt the first one whose breaker lets it through
 *   → an answer? return it. A failure (connection error, timeout, 429, 529, 5xx; 401 = this
 *     upstream's credential is bad, never again for this request)? try the next upstream
 *   → every upstream tried: back off (exponential, jitter; at least an upstream's retry-after)
 *     and go round again, within `maxAttempts` and `retryWithinMs`
 *   → out of attempts or time: the last failure is the answer (an upstream's error as it came,
 *     or 502/504 api_error).
 *
 * All of it happens before the gateway has sent the client a byte: a JSON answer is read whole
 * and a stream's first chunk is read before the pool returns, so an upstream that fails while
 * sending either is retried too. Once the pool has returned, nothing is ever retried.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { Pool, errors as undiciErrors, type Dispatcher } from 'undici';
import type { Config, UpstreamConfig } from '../config.ts';
import { UpstreamError, UpstreamTimeoutError, type GatewayError } from '../errors.ts';
import { throttled, type Logger } from '../logger.ts';
import { CircuitBreaker, type BreakerState } from './breaker.ts';
import { upstreamRequestHeaders } from './headers.ts';
import { backoffMs, countsAsFailure, retryAfterMs, statusVerdict } from './policy.ts';

export interface UpstreamRequest {
  method: 'GET' | 'POST';
  path: string;
  /** The client's headers as Node parsed them (names lower-cased). */
  headers: IncomingHttpHeaders;
  body?: Uint8Array | string;
  signal: AbortSignal;
  /** The model's ids (public and upstream): an upstream with a model list serves only those. */
  models?: readonly string[];
}

export type UpstreamHeaders = Dispatcher.ResponseData['headers'];

/** An event stream whose first chunk has arrived: the rest is read as the client takes it. */
export class UpstreamStream {
  private first: Buffer | undefined;
  private readonly body: Dispatcher.ResponseData['body'];
  private readonly chunks: AsyncIterator<Buffer>;

  constructor(body: Dispatcher.ResponseData['body'], chunks: AsyncIterator<Buffer>, first: Buffer) {
    this.body = body;
    this.chunks = chunks;
    this.first = first;
  }

  next(): Promise<IteratorResult<Buffer>> {
    const first = this.first;
    if (first === undefined) return this.chunks.next();
    this.first = undefined;
    return Promise.resolve({ value: first, done: false });
  }

  /** Closes the upstream connection (the client went away, or the stream is not wanted). */
  close(): void {
    this.body.destroy();
  }
}

/** What an upstream answered, before the client has seen any of it. */
export interface UpstreamReply {
  /** The upstream's name (config `name`, by default its host). */
  upstream: string;
  statusCode: number;
  headers: UpstreamHeaders;
  /** Attempts it took, this one included. */
  attempts: number;
  /** A whole body (JSON answers and errors), or else `stream`. */
  bytes?: Uint8Array;
  /** An event stream (text/event-stream), its first chunk already in. */
  stream?: UpstreamStream;
}

export interface UpstreamState {
  name: string;
  state: BreakerState;
}

/** One upstream and what the pool knows of it. */
class Member {
  readonly name: string;
  readonly key: string | undefined;
  readonly priority: number;
  readonly weight: number;
  readonly models: ReadonlySet<string> | undefined;
  /** The URL's path prefix ("" for a bare origin). */
  readonly basePath: string;
  readonly pool: Pool;
  readonly breaker: CircuitBreaker;

  constructor(upstream: UpstreamConfig, config: Pick<Config, 'upstreamTimeouts' | 'failover'>) {
    this.name = upstream.name;
    this.key = upstream.key;
    this.priority = upstream.priority;
    this.weight = upstream.weight;
    this.models = upstream.models ? new Set(upstream.models) : undefined;
    this.basePath = new URL(upstream.url).pathname.replace(/\/+$/, '');
    const timeouts = config.upstreamTimeouts;
    this.pool = new Pool(upstream.url, {
      connections: 128,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connect: { timeout: timeouts.connectMs },
      headersTimeout: timeouts.firstByteMs,
      bodyTimeout: timeouts.idleMs,
    });
    this.breaker = new CircuitBreaker({ failureThreshold: config.failover.breakerFailures, cooldownMs: config.failover.breakerCooldownMs });
  }

  serves(models: readonly string[] | undefined): boolean {
    return !this.models || !models || models.some((id) => this.models!.has(id));
  }
}

/** A failed attempt: the upstream's own error answer, or what went wrong on the way. */
interface Failure {
  member: Member;
  /** An HTTP answer that is a failure (its body read), relayed as it is if it is the last. */
  reply?: UpstreamReply;
  /** A connection error or timeout. */
  error?: unknown;
  /** 401: this upstream cannot serve the request, whatever the retries. */
  skip: boolean;
  /** How long the upstream asked to be left alone (retry-after). */
  retryAfterMs?: number;
  /** Counts against the upstream's breaker (not a 429: see countsAsFailure). */
  unhealthy: boolean;
}

type Attempt = { reply: UpstreamReply; failure?: undefined } | { reply?: undefined; failure: Failure };

export interface UpstreamPoolOptions {
  logger: Logger;
  /** Each attempt's end: the upstream, `ok` or what failed (a status, connect_error, timeout, …), seconds taken. */
  onAttempt?: (upstream: string, result: string, seconds: number) => void;
  clock?: () => number;
  random?: () => number;
}

const SSE_ERROR_PREFIX = Buffer.from('event: error');

export class UpstreamPool {
  private readonly members: Member[];
  private readonly policy: Config['failover'];
  private readonly timeouts: Config['upstreamTimeouts'];
  private readonly logger: Logger;
  private readonly clock: () => number;
  private readonly random: () => number;
  /** Whether any upstream has a model list (else every request goes to every upstream). */
  private readonly modelRouted: boolean;
  /** One line per upstream per 10 s about failed attempts, however many fail. */
  private readonly failureLogs = new Map<string, ReturnType<typeof throttled>>();
  private readonly onAttempt: NonNullable<UpstreamPoolOptions['onAttempt']>;

  constructor(config: Pick<Config, 'upstreams' | 'upstreamTimeouts' | 'failover'>, options: UpstreamPoolOptions) {
    this.members = config.upstreams.map((u) => new Member(u, config));
    this.policy = config.failover;
    this.timeouts = config.upstreamTimeouts;
    this.logger = options.logger;
    this.clock = options.clock ?? Date.now;
    this.random = options.random ?? Math.random;
    this.onAttempt = options.onAttempt ?? (() => {});
    this.modelRouted = this.members.some((m) => m.models);
    for (const m of this.members) this.failureLogs.set(m.name, throttled(10_000));
  }

  /** Each upstream's circuit: closed (in use), open (skipped) or half-open (probing). */
  states(now = this.clock()): UpstreamState[] {
    return this.members.map((m) => ({ name: m.name, state: m.breaker.state(now) }));
  }

  /**
   * Sends `request` by the failover policy (see the file's header). Resolves with the answer,
   * which may be an upstream's error answer; throws UpstreamError (502) or UpstreamTimeoutError
   * (504) when no upstream answered at all, and the abort reason when the client went away.
   */
  async send(request: UpstreamRequest): Promise<UpstreamReply> {
    const order = this.order(request.models);
    if (order.length === 0) throw new UpstreamError('No upstream is configured to serve this model. Tell the gateway operator.');
    const deadline = this.clock() + this.policy.retryWithinMs;
    const skipped = new Set<Member>();
    /** Upstreams that asked (retry-after) not to be called again before a time. */
    const waitUntil = new Map<Member, number>();
    let tried = new Set<Member>();
    let round = 0;
    let pauseUntil = 0;
    let attempts = 0;
    let last: Failure | undefined;

    for (;;) {
      const now = this.clock();
      // Panic mode (as Envoy's): when every upstream serving the model is paused by its breaker,
      // skipping them all would refuse the request without a try. The breaker's point is to
      // spare latency when another upstream can answer; with none left, the first is tried.
      const member = this.pick(order, now, skipped, tried, waitUntil) ?? (attempts === 0 ? order[0] : undefined);
      if (member) {
        tried.add(member);
        attempts++;
        const attempt = await this.attempt(member, request, attempts);
        // An earlier failure's stream (an `error` first event) is not going to be relayed now.
        if (last?.reply?.stream) last.reply.stream.close();
        if (attempt.reply) return attempt.reply;
        const failure = attempt.failure;
        last = failure;
        if (failure.skip) skipped.add(member);
        if (failure.retryAfterMs !== undefined) waitUntil.set(member, this.clock() + failure.retryAfterMs);
        if (attempts >= this.policy.maxAttempts || this.clock() >= deadline) break;
        continue;
      }
      // Nobody can be tried right now. Wait for one that can (never for an open breaker: that
      // upstream is skipped, not waited for), or give up.
      const usable = order.filter((m) => !skipped.has(m) && m.breaker.state(now) === 'closed');
      if (usable.length === 0) break;
      if (usable.every((m) => tried.has(m))) {
        round++;
        tried = new Set();
        pauseUntil = now + backoffMs(round, this.policy, this.random);
      }
      const wake = Math.max(pauseUntil, Math.min(...usable.map((m) => waitUntil.get(m) ?? now)));
      if (wake > deadline) break;
      await sleep(wake - now, request.signal);
    }

    if (last!.reply) return last!.reply;
    throw failureError(last!.error, this.timeouts);
  }

  async close(): Promise<void> {
    await Promise.all(this.members.map((m) => m.pool.close()));
  }

  /** The upstreams that serve the model, by priority; equal priorities in weighted random order. */
  private order(models: readonly string[] | undefined): Member[] {
    const members = this.modelRouted ? this.members.filter((m) => m.serves(models)) : this.members;
    if (members.length < 2) return members;
    // Weighted random order (Efraimidis-Spirakis): each draws -ln(U)/weight, smallest first.
    const draws = new Map(members.map((m) => [m, -Math.log(1 - this.random()) / m.weight]));
    return [...members].sort((a, b) => a.priority - b.priority || draws.get(a)! - draws.get(b)!);
  }

  private pick(order: Member[], now: number, skipped: Set<Member>, tried: Set<Member>, waitUntil: Map<Member, number>): Member | undefined {
    for (const m of order) {
      if (skipped.has(m) || tried.has(m) || (waitUntil.get(m) ?? 0) > now) continue;
      if (m.breaker.tryAcquire(now)) return m;
    }
    return undefined;
  }

  /** One attempt at one upstream, its outcome reported to the upstream's breaker. */
  private async attempt(member: Member, request: UpstreamRequest, attempts: number): Promise<Attempt> {
    let attempt: Attempt;
    const started = performance.now();
    try {
      attempt = await this.exchange(member, request, attempts);
    } catch (err) {
      // Only the client's abort escapes exchange(): no verdict on the upstream.
      member.breaker.abandoned();
      throw err;
    }
    const failure = attempt.failure;
    this.onAttempt(member.name, failure ? attemptResult(failure) : 'ok', (performance.now() - started) / 1000);
    const before = member.breaker.state(this.clock());
    if (!failure) member.breaker.success();
    else if (failure.unhealthy) member.breaker.failure(this.clock());
    else member.breaker.abandoned();
    const after = member.breaker.state(this.clock());
    if (before !== after) this.logger.warn({ upstream: member.name, from: before, to: after }, after === 'closed' ? 'upstream recovered: circuit closed' : 'upstream failing: circuit open, skipped until a probe succeeds');
    if (failure) this.logFailure(failure, attempts);
    return attempt;
  }

  /** Sends the request and reads enough of the answer to know it is one (see the header). */
  private async exchange(member: Member, request: UpstreamRequest, attempts: number): Promise<Attempt> {
    const fail = (error: unknown): Attempt => {
      if (request.signal.aborted) throw request.signal.reason ?? error;
      return { failure: { member, error, skip: false, unhealthy: true } };
    };
    let response: Dispatcher.ResponseData;
    try {
      response = await member.pool.request({
        method: request.method,
        path: member.basePath + request.path,
        headers: upstreamRequestHeaders(request.headers, member.key),
        body: request.body,
        signal: request.signal,
      });
    } catch (err) {
      return fail(err);
    }
    const reply: UpstreamReply = { upstream: member.name, statusCode: response.statusCode, headers: response.headers, attempts };
    const verdict = statusVerdict(response.statusCode);
    try {
      if (response.statusCode === 200 && isEventStream(response.headers)) {
        const chunks = response.body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
        const first = await chunks.next();
        if (first.done) throw new Error('The upstream stream ended before its first event.');
        reply.stream = new UpstreamStream(response.body, chunks, first.value);
        // The API reports overload inside a 200 stream as an `error` event; as the very first
        // event nothing has been relayed yet, so it is a failure like a 529 (relayed as it
        // came if it is the last).
        if (first.value.subarray(0, SSE_ERROR_PREFIX.length).equals(SSE_ERROR_PREFIX)) {
          return { failure: { member, reply, skip: false, unhealthy: true } };
        }
      } else {
        reply.bytes = new Uint8Array(await response.body.arrayBuffer());
      }
    } catch (err) {
      response.body.destroy();
      return fail(isTimeout(err) ? err : new Error('The upstream response ended before it was complete.', { cause: err }));
    }
    if (verdict === 'final') return { reply };
    const retryAfter = retryAfterMs(response.headers, this.clock());
    return { failure: { member, reply, skip: verdict === 'skip', retryAfterMs: retryAfter, unhealthy: countsAsFailure(response.statusCode) } };
  }

  private logFailure(failure: Failure, attempt: number): void {
    const upstream = failure.member.name;
    const status = failure.reply?.statusCode;
    if (failure.skip) {
      // A refused credential is the operator's to fix: said every time, never throttled away.
      this.logger.error({ upstream, status }, "upstream refused the gateway's credential for it: check that upstream's key; trying the next upstream");
      return;
    }
    this.failureLogs.get(upstream)!((suppressed) =>
      this.logger.warn(
        { upstream, attempt, status, error: failure.error === undefined ? undefined : describeFailure(failure.error, this.timeouts), suppressed },
        'upstream attempt failed; failing over',
      ),
    );
  }
}

/** A failed attempt as a metric label: the upstream's status, or what kind of failure it was. */
function attemptResult(failure: Failure): string {
  if (failure.reply) return failure.reply.stream ? 'stream_error' : String(failure.reply.statusCode);
  const err = failure.error;
  if (isTimeout(err)) return 'timeout';
  if (err instanceof Error && err.message.startsWith('The upstream')) return 'cut';
  return 'connect_error';
}

function isEventStream(headers: UpstreamHeaders): boolean {
  const type = headers['content-type'];
  return typeof type === 'string' && type.startsWith('text/event-stream');
}

/** Waits `ms`, or rejects with the abort reason when the client goes away first. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Whether a failure was a timeout (504) rather than a broken or refused connection (502). */
function isTimeout(err: unknown): boolean {
  return (
    err instanceof undiciErrors.ConnectTimeoutError ||
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError
  );
}

/** What went wrong, for the client and the log: no hosts, no credentials. */
export function describeFailure(err: unknown, timeouts: Config['upstreamTimeouts']): string {
  const seconds = (ms: number) => `${Math.round(ms / 100) / 10} s`;
  if (err instanceof undiciErrors.ConnectTimeoutError) return `Upstream did not accept a connection within ${seconds(timeouts.connectMs)}.`;
  if (err instanceof undiciErrors.HeadersTimeoutError) return `Upstream did not answer within ${seconds(timeouts.firstByteMs)}.`;
  if (err instanceof undiciErrors.BodyTimeoutError) return `Upstream sent nothing for ${seconds(timeouts.idleMs)}.`;
  if (err instanceof undiciErrors.SocketError) return 'Upstream closed the connection.';
  const code = (err as { code?: string }).code;
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'ECONNRESET' || code === 'EHOSTUNREACH') {
    return `Upstream unreachable (${code}).`;
  }
  if (err instanceof Error && err.message.startsWith('The upstream')) return err.message;
  return 'Upstream request failed.';
}

/** Why a stream already under way ended early, for its closing `error` event. */
export function streamFailureMessage(err: unknown, timeouts: Config['upstreamTimeouts']): string {
  return err instanceof undiciErrors.BodyTimeoutError
    ? `${describeFailure(err, timeouts)} The stream was ended before the message was complete.`
    : 'The upstream stream ended before the message was complete.';
}

/** The client's error for a failure that left no upstream answer: 504 for timeouts, else 502. */
export function failureError(err: unknown, timeouts: Config['upstreamTimeouts']): GatewayError {
  const message = describeFailure(err, timeouts);
  return isTimeout(err) ? new UpstreamTimeoutError(message) : new UpstreamError(message);
}
