/**
 * Dashboard sessions, with no session store: the cookie is a signed value
 *
 *   v1.<expiresAtMs>.<nonce>.<HMAC-SHA256 of "v1.<expiresAtMs>.<nonce>">
 *
 * keyed by a secret derived from the admin token's hash. Every instance of a scale-out
 * deployment knows that hash, so each accepts a session another one issued; changing the admin
 * token changes the secret and ends every session. The cookie is never the token itself, and
 * holds nothing a reader could turn back into it.
 *
 * Logout revokes the session's nonce until the session would have expired anyway: a meta row of
 * the store (`dashboard_revoked_sessions`, JSON `{nonce: expiresAtMs}`, pruned of expired
 * entries on each write) that every instance re-reads at most once a second, so a logged-out
 * cookie stops working everywhere within a second (at once on the instance that logged it out).
 *
 * The CSRF token the page sends back in `x-csrf-token` is an HMAC of the session's nonce with
 * the same secret: a page of another origin can make the browser send the cookie (SameSite=Strict
 * already stops that) but can never read or compute the token.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Logger } from '../logger.ts';
import { throttled } from '../logger.ts';
import type { MetaStore } from '../store/types.ts';

export const SESSION_COOKIE = 'claudcode_session';
/** How long a session lasts from login (a working day). */
export const SESSION_TTL_MS = 8 * 3600_000;
/** The meta row holding revoked nonces and when each would have expired. */
export const REVOKED_SESSIONS_META = 'dashboard_revoked_sessions';
/** How stale this instance's copy of the revoked nonces may be. */
const REVOCATIONS_CACHE_MS = 1000;
/**
 * At most this many revoked sessions are remembered (the soonest-expiring are forgotten first):
 * bounds the row an admin could otherwise grow by logging in and out in a loop.
 */
const MAX_REVOKED = 5000;

const COOKIE_PATTERN = /^v1\.(\d{1,16})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$/;

export interface Session {
  /** 16 random bytes, base64url: names the session (revocation, the CSRF token). */
  nonce: string;
  /** Unix ms. */
  expiresAt: number;
}

export interface SessionOptions {
  logger: Logger;
  ttlMs?: number;
  clock?: () => number;
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac('sha256', key).update(text).digest();
}

/** Whether two strings are equal, in time independent of where they differ (lengths may leak). */
export function constantTimeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function parseRevoked(text: string | null): Map<string, number> {
  const revoked = new Map<string, number>();
  if (!text) return revoked;
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed && typeof parsed === 'object') {
      for (const [nonce, expiresAt] of Object.entries(parsed)) if (typeof expiresAt === 'number') revoked.set(nonce, expiresAt);
    }
  } catch {
    // An unreadable row revokes nothing; the next logout rewrites it.
  }
  return revoked;
}

export class DashboardSessions {
  readonly ttlMs: number;
  readonly #secret: Buffer;
  readonly #store: MetaStore;
  readonly #clock: () => number;
  readonly #logger: Logger;
  readonly #warn = throttled(5000);
  /** The store's revoked nonces as last read. */
  #revoked = new Map<string, number>();
  /** Nonces this instance revoked: honoured at once, whatever the store's copy says. */
  readonly #revokedHere = new Map<string, number>();
  #readAt = Number.NEGATIVE_INFINITY;
  #reading: Promise<void> | undefined;

  constructor(adminTokenHash: Buffer, store: MetaStore, options: SessionOptions) {
    this.#secret = hmac(adminTokenHash, 'claudcode dashboard sessions v1');
    this.#store = store;
    this.#logger = options.logger;
    this.#clock = options.clock ?? Date.now;
    this.ttlMs = options.ttlMs ?? SESSION_TTL_MS;
  }

  now(): number {
    return this.#clock();
  }

  /** A new session and its cookie value. */
  issue(now = this.#clock()): { session: Session; value: string } {
    const session = { nonce: randomBytes(16).toString('base64url'), expiresAt: now + this.ttlMs };
    return { session, value: this.#sign(session) };
  }

  #sign(session: Session): string {
    const body = `v1.${session.expiresAt}.${session.nonce}`;
    return `${body}.${hmac(this.#secret, body).toString('base64url')}`;
  }

  /**
   * The session a cookie value stands for, or null: malformed, signed with another secret (or
   * altered), expired, or logged out.
   */
  async verify(value: string | undefined, now = this.#clock()): Promise<Session | null> {
    const match = value ? COOKIE_PATTERN.exec(value) : null;
    if (!match) return null;
    const [, expiresText, nonce, signature] = match as unknown as [string, string, string, string];
    const expected = hmac(this.#secret, `v1.${expiresText}.${nonce}`);
    const presented = Buffer.from(signature, 'base64url');
    if (presented.length !== expected.length || !timingSafeEqual(presented, expected)) return null;
    const expiresAt = Number(expiresText);
    // Expired, or further out than this deployment's sessions last (a secret used elsewhere).
    if (!(expiresAt > now) || expiresAt > now + this.ttlMs) return null;
    if (await this.#isRevoked(nonce, now)) return null;
    return { nonce, expiresAt };
  }

  /** The CSRF token of a session: what the page must send in `x-csrf-token` with every change. */
  csrfToken(session: Session): string {
    return hmac(this.#secret, `csrf.${session.nonce}`).toString('base64url');
  }

  checkCsrf(session: Session, presented: string | undefined): boolean {
    return presented !== undefined && constantTimeEqual(presented, this.csrfToken(session));
  }

  /**
   * Logout: the session's nonce is refused from now on, here at once and on every instance
   * within a second. The row is read, pruned, extended and written back; two logouts on two
   * instances in the same few milliseconds could drop one of the two, so the write is checked
   * by reading it back and repeated (a lost revocation would need three such collisions in a row).
   */
  async revoke(session: Session): Promise<void> {
    this.#revokedHere.set(session.nonce, session.expiresAt);
    for (let attempt = 0; attempt < 3; attempt++) {
      const now = this.#clock();
      const revoked = parseRevoked(await this.#store.getMeta(REVOKED_SESSIONS_META));
      for (const [nonce, expiresAt] of revoked) if (expiresAt <= now) revoked.delete(nonce);
      revoked.set(session.nonce, session.expiresAt);
      const kept = [...revoked].sort((a, b) => b[1] - a[1]).slice(0, MAX_REVOKED);
      await this.#store.setMeta(REVOKED_SESSIONS_META, JSON.stringify(Object.fromEntries(kept)));
      const check = parseRevoked(await this.#store.getMeta(REVOKED_SESSIONS_META));
      this.#revoked = check;
      this.#readAt = now;
      if (check.has(session.nonce)) return;
    }
    this.#logger.warn('dashboard logout: the revocation could not be confirmed in the store (concurrent logouts); revoked on this instance');
  }

  async #isRevoked(nonce: string, now: number): Promise<boolean> {
    for (const [n, expiresAt] of this.#revokedHere) if (expiresAt <= now) this.#revokedHere.delete(n);
    if (this.#revokedHere.has(nonce)) return true;
    if (now - this.#readAt >= REVOCATIONS_CACHE_MS) await this.#refresh(now);
    return this.#revoked.has(nonce);
  }

  /** Re-reads the revoked nonces; a store that cannot be read keeps the last copy (logged). */
  #refresh(now: number): Promise<void> {
    this.#reading ??= (async () => {
      try {
        this.#revoked = parseRevoked(await this.#store.getMeta(REVOKED_SESSIONS_META));
        this.#readAt = now;
      } catch (err) {
        this.#warn((suppressed) => this.#logger.warn({ err, suppressed }, 'dashboard: revoked sessions unreadable in the store; using the last copy'));
      } finally {
        this.#reading = undefined;
      }
    })();
    return this.#reading;
  }
}
