/**
 * Throttles wrong admin-token attempts per client address. Without it a client could try
 * thousands of tokens a second; with it, each address gets `maxFailures` wrong tokens in any
 * rolling `windowMs`, after which its admin requests are refused (429) without the token being
 * looked at, until its oldest failure leaves the window.
 *
 * The address is the socket's peer address, never X-Forwarded-For (which the client writes).
 * IPv6 peers are counted per /64, the block one subscriber is usually handed, so rotating through
 * a block's addresses does not buy more guesses. Memory is bounded: at most `maxAddresses`
 * addresses are tracked, each with at most `maxFailures` timestamps, and the address whose last
 * failure is oldest is forgotten first.
 */

export interface AdminThrottleOptions {
  maxFailures: number;
  windowMs: number;
  maxAddresses: number;
}

/** What recording a failure found: the failures now in the window, and whether that began a throttle. */
export interface FailureCount {
  failures: number;
  /** True the first time this address reaches the limit since it last had a clean window. */
  throttleStarted: boolean;
}

interface AddressRecord {
  /** Times of the failures still in the window, oldest first; never more than maxFailures. */
  failures: number[];
  /** Set when the limit was reached; cleared when the window holds no failure any more. */
  throttled: boolean;
}

export class AdminThrottle {
  private readonly options: AdminThrottleOptions;
  /** In order of last failure, oldest first (an entry is moved to the end on each failure). */
  private readonly records = new Map<string, AddressRecord>();

  constructor(options: AdminThrottleOptions) {
    this.options = options;
  }

  /** Milliseconds until `address` may try a token again, or 0 if it may now. */
  retryAfterMs(address: string, now: number): number {
    const record = this.current(throttleBucket(address), now);
    if (!record || record.failures.length < this.options.maxFailures) return 0;
    return record.failures[0]! + this.options.windowMs - now;
  }

  /** Counts a wrong (or missing) token from `address`. */
  recordFailure(address: string, now: number): FailureCount {
    const bucket = throttleBucket(address);
    const record = this.current(bucket, now) ?? { failures: [], throttled: false };
    record.failures.push(now);
    if (record.failures.length > this.options.maxFailures) record.failures.shift();
    this.records.delete(bucket);
    this.records.set(bucket, record);
    if (this.records.size > this.options.maxAddresses) this.records.delete(this.records.keys().next().value!);
    const throttleStarted = !record.throttled && record.failures.length >= this.options.maxFailures;
    if (throttleStarted) record.throttled = true;
    return { failures: record.failures.length, throttleStarted };
  }

  /** The right token from `address`: its own count starts over (other addresses keep theirs). */
  recordSuccess(address: string): void {
    this.records.delete(throttleBucket(address));
  }

  /** Addresses tracked now (for tests of the memory bound). */
  get size(): number {
    return this.records.size;
  }

  /** The address's record with failures older than the window dropped, or undefined if none remain. */
  private current(bucket: string, now: number): AddressRecord | undefined {
    const record = this.records.get(bucket);
    if (!record) return undefined;
    const cutoff = now - this.options.windowMs;
    while (record.failures.length > 0 && record.failures[0]! <= cutoff) record.failures.shift();
    if (record.failures.length > 0) return record;
    this.records.delete(bucket);
    return undefined;
  }
}

/**
 * The unit an address is counted in: an IPv4 address as is (also when IPv4-mapped, ::ffff:a.b.c.d),
 * an IPv6 address by its /64 prefix.
 */
export function throttleBucket(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!address.includes(':')) return address;
  const [head = '', tail] = address.split('%')[0]!.toLowerCase().split('::');
  const groups = (part: string | undefined) => (part ? part.split(':') : []);
  const before = groups(head);
  // A trailing dotted IPv4 part (64:ff9b::192.0.2.1) stands for two groups.
  const after = groups(tail).flatMap((g) => (g.includes('.') ? ['0', '0'] : [g]));
  const full = tail === undefined ? before : [...before, ...Array<string>(Math.max(0, 8 - before.length - after.length)).fill('0'), ...after];
  return `${full.slice(0, 4).map((g) => (Number.parseInt(g, 16) || 0).toString(16)).join(':')}::/64`;
}
