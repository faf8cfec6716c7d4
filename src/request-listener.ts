/**
 * The gateway's Node request listener. The metered endpoints — POST /v1/messages and
 * /v1/messages/count_tokens, also under /v1/v1 — go from Node's request event straight to the
 * pipeline (pipeline.ts); every other route goes to the Hono app.
 *
 * Why the metered routes skip Hono: they are the hot path, and the pipeline works on Node's
 * request and response anyway (it reads the body as it arrives and writes its answers to the
 * socket). Hono's part there was a web Request wrapper, the router, the middleware chain, a
 * Context and a Response converted back for Node, none of which these routes used. What the
 * app's middleware gives every other route, these get here from the same pieces: a request id,
 * the in-flight count (shutdown waits for it), maintenance mode, errors in Anthropic's shape
 * (exchange.ts's errorAnswer) and the access log's line.
 */
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import { MaintenanceError } from './errors.ts';
import { errorAnswer, openExchange, sendBody, type Exchange } from './exchange.ts';
import type { Logger } from './logger.ts';
import { handleCountTokens, handleMessages, type GatewayServices } from './pipeline.ts';

type MeteredHandler = (x: Exchange, s: GatewayServices) => Promise<void>;

const METERED_ROUTES = new Map<string, MeteredHandler>([
  ['/v1/messages', handleMessages],
  ['/v1/messages/count_tokens', handleCountTokens],
  // SDKs given a base URL that already ends in /v1 call /v1/v1/... (the app answers there too).
  ['/v1/v1/messages', handleMessages],
  ['/v1/v1/messages/count_tokens', handleCountTokens],
]);

/** The status the access log records for a request whose client left before its answer. */
const CLIENT_CLOSED = 499;

/** Responses still being written (streams included), so shutdown can wait for them to end. */
export class InFlight {
  count = 0;
  private onIdle: (() => void) | undefined;
  private readonly done = () => {
    if (--this.count === 0) this.onIdle?.();
  };

  /** Counts the response until it closes (finished, or its connection gone). */
  track(outgoing: ServerResponse): void {
    this.count++;
    outgoing.once('close', this.done);
  }

  /** Resolves when no response is in flight. */
  idle(): Promise<void> {
    return new Promise((resolve) => {
      this.onIdle = resolve;
      if (this.count === 0) resolve();
    });
  }
}

/** The access log's line for one request (the same for both kinds of route). */
export interface AccessLine {
  requestId: string;
  method: string | undefined;
  route: string;
  status: number;
  startedAt: number;
  keyId: string | undefined;
}

export function logAccess(accessLog: Logger, line: AccessLine): void {
  const { requestId, method, route, status, startedAt, keyId } = line;
  accessLog.info({ requestId, method, route, status, ms: Date.now() - startedAt, keyId }, 'request');
}

export interface ListenerDeps {
  services: GatewayServices;
  /** The Hono app, as a Node listener: every route but the metered ones. */
  app: RequestListener;
  /** Maintenance mode: /v1 answers 503 while it is on. */
  maintenance: { readonly enabled: boolean };
  inFlight: InFlight;
  accessLog: Logger;
}

/** The path of a request target, without its query. */
function pathOf(url: string | undefined): string {
  if (url === undefined) return '';
  const query = url.indexOf('?');
  return query < 0 ? url : url.slice(0, query);
}

export function gatewayRequestListener(deps: ListenerDeps): RequestListener {
  return (incoming, outgoing) => {
    const route = incoming.method === 'POST' ? pathOf(incoming.url) : '';
    const handler = METERED_ROUTES.get(route);
    if (handler === undefined) return deps.app(incoming, outgoing);
    void serveMetered(handler, route, incoming, outgoing, deps);
  };
}

async function serveMetered(handler: MeteredHandler, route: string, incoming: IncomingMessage, outgoing: ServerResponse, deps: ListenerDeps): Promise<void> {
  const { services } = deps;
  const x = openExchange(incoming, outgoing);
  deps.inFlight.track(outgoing);
  let status: number;
  try {
    if (deps.maintenance.enabled) throw new MaintenanceError(services.config.maintenanceRetryAfterSeconds);
    await handler(x, services);
    status = outgoing.statusCode;
  } catch (err) {
    status = answerFailure(x, err, services.logger);
  }
  logAccess(deps.accessLog, { requestId: x.requestId, method: incoming.method, route, status, startedAt: x.startedAt, keyId: x.keyId });
}

/** Puts a failure on the wire, if anyone is there to read it; returns the status for the log. */
function answerFailure(x: Exchange, err: unknown, logger: Logger): number {
  // The client went away mid-request: nobody is there to read an answer, and nothing failed.
  if (x.signal.aborted) return CLIENT_CLOSED;
  const answer = errorAnswer(err, x.requestId, x.incoming, logger);
  if (x.outgoing.headersSent) {
    // Part of an answer is out already (a web stream that failed): all that is left is to cut it.
    x.outgoing.destroy();
    return x.outgoing.statusCode;
  }
  sendBody(x.outgoing, answer.status, answer.headers, answer.body);
  return answer.status;
}
