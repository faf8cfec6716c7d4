/**
 * A circuit breaker for one upstream. Closed: requests go through, consecutive failures are
 * counted. At `failureThreshold` in a row it opens: the pool skips the upstream without trying
 * it (a dead upstream costs no latency) for `cooldownMs`. Then it is half-open: one request at
 * a time is let through as a probe; its success closes the breaker, its failure opens it again.
 *
 * State is per process. In the scale-out mode each instance learns an upstream's health from
 * its own traffic; a dead upstream costs each instance `failureThreshold` failed attempts (which
 * the pool retries elsewhere) before its breaker opens.
 */
export type BreakerState = 'closed' | 'open' | 'half-open';

export interface BreakerOptions {
  /** Consecutive failures that open the breaker. */
  failureThreshold: number;
  /** How long it stays open before a probe is let through. */
  cooldownMs: number;
}

export class CircuitBreaker {
  private readonly options: BreakerOptions;
  private failures = 0;
  /** When the breaker opened; undefined while closed. */
  private openedAt: number | undefined;
  /** A half-open probe is in flight: nobody else goes through until it reports. */
  private probing = false;

  constructor(options: BreakerOptions) {
    this.options = options;
  }

  state(now: number): BreakerState {
    if (this.openedAt === undefined) return 'closed';
    return now - this.openedAt >= this.options.cooldownMs ? 'half-open' : 'open';
  }

  /**
   * May a request go to this upstream now? Closed: yes. Open: no. Half-open: yes for one probe
   * at a time; the caller must then report `success`, `failure` or `abandoned`.
   */
  tryAcquire(now: number): boolean {
    const state = this.state(now);
    if (state === 'closed') return true;
    if (state === 'open' || this.probing) return false;
    this.probing = true;
    return true;
  }

  success(): void {
    this.failures = 0;
    this.openedAt = undefined;
    this.probing = false;
  }

  failure(now: number): void {
    this.failures++;
    const probeFailed = this.probing;
    this.probing = false;
    if (probeFailed || this.failures >= this.options.failureThreshold) this.openedAt = now;
  }

  /** The attempt ended without a verdict (the client went away): let the next probe through. */
  abandoned(): void {
    this.probing = false;
  }
}
