/**
 * src/admin-throttle.ts in isolation, on an injected clock: the rolling window of wrong admin
 * tokens per address, when a throttle starts and ends, the memory bound, and how addresses are
 * grouped (IPv4-mapped as IPv4, IPv6 by /64).
 */
import { describe, expect, it } from 'vitest';
import { AdminThrottle, throttleBucket } from '../src/admin-throttle.ts';

const T0 = 1_800_000_000_000;
const OPTIONS = { maxFailures: 3, windowMs: 60_000, maxAddresses: 100 };

describe('AdminThrottle', () => {
  it('refuses an address after maxFailures in the window, until its oldest failure leaves', () => {
    const throttle = new AdminThrottle(OPTIONS);
    expect(throttle.retryAfterMs('10.0.0.1', T0)).toBe(0);
    expect(throttle.recordFailure('10.0.0.1', T0)).toEqual({ failures: 1, throttleStarted: false });
    expect(throttle.recordFailure('10.0.0.1', T0 + 10_000)).toEqual({ failures: 2, throttleStarted: false });
    expect(throttle.retryAfterMs('10.0.0.1', T0 + 20_000)).toBe(0);
    expect(throttle.recordFailure('10.0.0.1', T0 + 20_000)).toEqual({ failures: 3, throttleStarted: true });
    // Throttled: the wait runs to when the first failure (T0) is a whole window old.
    expect(throttle.retryAfterMs('10.0.0.1', T0 + 20_000)).toBe(40_000);
    expect(throttle.retryAfterMs('10.0.0.1', T0 + 59_999)).toBe(1);
    // Another address is not affected.
    expect(throttle.retryAfterMs('10.0.0.2', T0 + 20_000)).toBe(0);
    // The oldest failure has left: one more try. Failing it throttles again, until T0 + 10 s leaves.
    expect(throttle.retryAfterMs('10.0.0.1', T0 + 60_000)).toBe(0);
    expect(throttle.recordFailure('10.0.0.1', T0 + 60_000)).toEqual({ failures: 3, throttleStarted: false });
    expect(throttle.retryAfterMs('10.0.0.1', T0 + 60_000)).toBe(10_000);
  });

  it('reports the start of a throttle once per episode: again only after a clean window', () => {
    const throttle = new AdminThrottle(OPTIONS);
    const started = (now: number) => throttle.recordFailure('10.0.0.1', now).throttleStarted;
    expect([started(T0), started(T0 + 1), started(T0 + 2)]).toEqual([false, false, true]);
    // A steady attacker retrying as the window frees is not announced again.
    expect([started(T0 + 60_001), started(T0 + 60_002), started(T0 + 60_003)]).toEqual([false, false, false]);
    // After a whole window without failures the record is gone; the next throttle is new.
    const later = T0 + 60_003 + 60_000;
    expect(throttle.retryAfterMs('10.0.0.1', later)).toBe(0);
    expect([started(later), started(later + 1), started(later + 2)]).toEqual([false, false, true]);
  });

  it('a right token clears only its own address', () => {
    const throttle = new AdminThrottle(OPTIONS);
    for (let i = 0; i < 3; i++) throttle.recordFailure('10.0.0.1', T0 + i);
    throttle.recordFailure('10.0.0.2', T0);
    throttle.recordFailure('10.0.0.2', T0 + 1);
    throttle.recordSuccess('10.0.0.3');
    throttle.recordSuccess('10.0.0.2');
    expect(throttle.retryAfterMs('10.0.0.1', T0 + 10)).toBeGreaterThan(0);
    // 10.0.0.2 starts over: three more failures to be throttled.
    expect(throttle.recordFailure('10.0.0.2', T0 + 2).failures).toBe(1);
  });

  it('tracks at most maxAddresses, forgetting the one whose last failure is oldest', () => {
    const throttle = new AdminThrottle({ ...OPTIONS, maxAddresses: 3 });
    throttle.recordFailure('10.0.0.1', T0);
    throttle.recordFailure('10.0.0.2', T0 + 1);
    throttle.recordFailure('10.0.0.3', T0 + 2);
    // 10.0.0.1 fails again: now 10.0.0.2 is the stalest.
    throttle.recordFailure('10.0.0.1', T0 + 3);
    throttle.recordFailure('10.0.0.4', T0 + 4);
    expect(throttle.size).toBe(3);
    expect(throttle.recordFailure('10.0.0.2', T0 + 5).failures).toBe(1);
    expect(throttle.recordFailure('10.0.0.1', T0 + 6).failures).toBe(3);
    for (let i = 0; i < 10_000; i++) throttle.recordFailure(`10.1.${i >> 8}.${i & 255}`, T0 + 10 + i);
    expect(throttle.size).toBe(3);
  });

  it('counts IPv6 peers per /64 and IPv4-mapped peers as their IPv4 address', () => {
    const throttle = new AdminThrottle(OPTIONS);
    throttle.recordFailure('2001:db8:1:2::1', T0);
    throttle.recordFailure('2001:db8:1:2:ffff:ffff:ffff:ffff', T0);
    throttle.recordFailure('2001:0db8:0001:0002:0:0:0:abcd', T0);
    expect(throttle.retryAfterMs('2001:db8:1:2::9', T0)).toBe(60_000);
    expect(throttle.retryAfterMs('2001:db8:1:3::1', T0)).toBe(0);

    expect(throttleBucket('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(throttleBucket('192.0.2.7')).toBe('192.0.2.7');
    expect(throttleBucket('::1')).toBe('0:0:0:0::/64');
    expect(throttleBucket('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(throttleBucket('2001:db8::')).toBe('2001:db8:0:0::/64');
    expect(throttleBucket('2001:db8:a:b:c:d:e:f')).toBe('2001:db8:a:b::/64');
    expect(throttleBucket('64:ff9b::192.0.2.1')).toBe('64:ff9b:0:0::/64');
  });
});
