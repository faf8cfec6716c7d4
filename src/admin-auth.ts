/**
 * The admin token check, shared by everything behind it: the admin API, /metrics and the
 * dashboard's login. One instance per gateway, so wrong tokens are throttled per client address
 * (admin-throttle.ts) across all of them, and logged without the token.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import { AdminThrottle } from './admin-throttle.ts';
import type { Config } from './config.ts';
import { AuthenticationError, RateLimitError } from './errors.ts';
import type { Logger } from './logger.ts';
import type { GatewayEnv } from './app-env.ts';

export function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

export class AdminAuth {
  private readonly throttle: AdminThrottle;
  private readonly tokenHash: Buffer;
  private readonly logger: Logger;

  constructor(config: Pick<Config, 'adminThrottle'>, tokenHash: Buffer, logger: Logger) {
    this.throttle = new AdminThrottle(config.adminThrottle);
    this.tokenHash = tokenHash;
    this.logger = logger;
  }

  /**
   * Checks a presented token from `remoteAddress` (the socket's peer, never X-Forwarded-For: a
   * header is whatever the client wants it to be). Throws RateLimitError while the address is
   * throttled, AuthenticationError for a missing or wrong token.
   */
  verify(presented: string | undefined, remoteAddress: string, requestId: string, what = 'Admin API'): void {
    const now = Date.now();
    const waitMs = this.throttle.retryAfterMs(remoteAddress, now);
    if (waitMs > 0) throw new RateLimitError(`${what}: too many wrong admin tokens from this address. Try again later.`, waitMs / 1000, {});
    if (!presented || !timingSafeEqual(sha256(presented), this.tokenHash)) {
      const { failures, throttleStarted } = this.throttle.recordFailure(remoteAddress, now);
      this.logger.warn({ requestId, remoteAddress, failures }, 'admin token rejected');
      if (throttleStarted) {
        this.logger.warn(
          { remoteAddress, failures, retryAfterMs: this.throttle.retryAfterMs(remoteAddress, now) },
          'admin token attempts throttled: refusing this address until its failures leave the window',
        );
      }
      throw new AuthenticationError(`${what}: missing or wrong admin token (Authorization: Bearer <CLAUDCODE_ADMIN_TOKEN>).`);
    }
    this.throttle.recordSuccess(remoteAddress);
  }

  /** Middleware: `Authorization: Bearer <admin token>`, or the request is refused. */
  bearer(what?: string): MiddlewareHandler<GatewayEnv> {
    return async (c, next) => {
      const presented = /^Bearer\s+(.+)$/i.exec(c.req.header('authorization') ?? '')?.[1]?.trim();
      this.verify(presented, c.env.incoming.socket.remoteAddress ?? 'unknown', c.get('requestId'), what);
      await next();
    };
  }
}
