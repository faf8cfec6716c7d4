/**
 * The gateway's public URL for the setup scripts (src/setup/public-url.ts), socket-free: which
 * proxies are trusted (addresses, CIDR ranges, IPv4-mapped IPv6), which headers count, and that
 * nothing but a plain host and port can come out of a request.
 */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.ts';
import { InvalidRequestError } from '../src/errors.ts';
import { publicBaseUrl, TrustedProxies, type RequestOrigin } from '../src/setup/public-url.ts';
import { thrownBy } from './helpers.ts';

describe('TrustedProxies', () => {
  const proxies = new TrustedProxies(['127.0.0.1/8', '10.1.2.3', 'fd00::/8', '::1', '::ffff:192.168.0.0/112']);

  it('matches addresses and CIDR ranges, IPv4 and IPv6', () => {
    for (const address of ['127.0.0.1', '127.200.0.9', '10.1.2.3', 'fd12:3456::1', '::1', '192.168.7.7']) {
      expect({ address, trusted: proxies.has(address) }).toEqual({ address, trusted: true });
    }
    for (const address of ['128.0.0.1', '10.1.2.4', 'fe80::1', '::2', '192.169.0.1', '', undefined]) {
      expect({ address, trusted: proxies.has(address) }).toEqual({ address, trusted: false });
    }
  });

  it('an IPv4-mapped IPv6 peer (a dual-stack socket) matches the IPv4 entries', () => {
    expect(proxies.has('::ffff:127.0.0.1')).toBe(true);
    expect(proxies.has('::FFFF:10.1.2.3')).toBe(true);
    expect(proxies.has('::ffff:8.8.8.8')).toBe(false);
    expect(new TrustedProxies(['::ffff:127.0.0.1']).has('127.0.0.1')).toBe(true);
  });

  it('none configured: nobody is trusted; ::/0 and 0.0.0.0/0 trust everyone', () => {
    expect(new TrustedProxies([]).has('127.0.0.1')).toBe(false);
    expect(new TrustedProxies(['::/0']).has('203.0.113.9')).toBe(true);
    expect(new TrustedProxies(['0.0.0.0/0']).has('::ffff:203.0.113.9')).toBe(true);
  });

  it('refuses what is not an address or a range, naming it', () => {
    for (const entry of ['localhost', '10.0.0.0/33', '::/129', '10.0.0.0/x', '10.0.0.0/', '1.2.3', '::ffff:10.0.0.0/8']) {
      expect(() => new TrustedProxies([entry])).toThrow(`"${entry}" is not an IP address or CIDR range`);
    }
  });
});

describe('publicBaseUrl', () => {
  const trusted = new TrustedProxies(['10.0.0.0/8']);
  const origin = (headers: RequestOrigin['headers'], remoteAddress = '203.0.113.5', encrypted = false): RequestOrigin => ({ remoteAddress, encrypted, headers });
  const url = (o: RequestOrigin, publicUrl?: string) => publicBaseUrl({ publicUrl, trustedProxies: trusted }, o);

  it('configured: that URL, whatever the request says', () => {
    expect(url(origin({ host: 'evil.example' }, '10.0.0.1'), 'https://claude.example.com/gw/')).toBe('https://claude.example.com/gw');
    expect(url(origin({}), 'https://claude.example.com')).toBe('https://claude.example.com');
  });

  it('from Host, http or https after the socket; the default port dropped', () => {
    expect(url(origin({ host: 'gateway.lan:8080' }))).toBe('http://gateway.lan:8080');
    expect(url(origin({ host: 'Gateway.LAN:443' }, undefined, true))).toBe('https://gateway.lan');
    expect(url(origin({ host: '[::1]:8080' }))).toBe('http://[::1]:8080');
    expect(url(origin({ host: '192.0.2.1:80' }))).toBe('http://192.0.2.1');
  });

  it('X-Forwarded-Proto / -Host (the first of a list) and Forwarded only from a trusted proxy', () => {
    const headers = { host: 'backend:8080', 'x-forwarded-proto': 'https, http', 'x-forwarded-host': 'gw.example.com, backend' };
    expect(url(origin(headers, '10.9.9.9'))).toBe('https://gw.example.com');
    expect(url(origin(headers, '::ffff:10.9.9.9'))).toBe('https://gw.example.com');
    expect(url(origin(headers))).toBe('http://backend:8080');
    const rfc = { host: 'backend:8080', forwarded: 'for=192.0.2.60;proto=https;host="gw.example.com:8443", for=10.0.0.2' };
    expect(url(origin(rfc, '10.0.0.2'))).toBe('https://gw.example.com:8443');
    expect(url(origin(rfc))).toBe('http://backend:8080');
    // Proto alone (a load balancer that keeps Host): https with the Host.
    expect(url(origin({ host: 'gw.example.com', 'x-forwarded-proto': 'HTTPS' }, '10.0.0.2'))).toBe('https://gw.example.com');
  });

  it('refuses, with a 400, any host or scheme that is not plainly one', () => {
    const hostile = [
      "gw.example.com'; touch /tmp/x; '",
      'gw.example.com$(id)',
      'gw`id`.example.com',
      'gw.example.com "x"',
      'gw.example.com\\x',
      'a;b',
      'a|b',
      'a&b',
      'gw.example.com/path',
      'user@gw.example.com',
      'gw.example.com:99999',
      'gw.example.com:8080:1',
      '[::1',
      '[fe80::1%25eth0]',
      '-gw.example.com',
    ];
    for (const host of hostile) {
      expect(thrownBy(() => url(origin({ host })), InvalidRequestError).status).toBe(400);
      expect(thrownBy(() => url(origin({ host: 'ok', 'x-forwarded-host': host }, '10.0.0.1')), InvalidRequestError).message).toMatch(/CLAUDCODE_PUBLIC_URL/);
    }
    // An empty one is as good as none: the Host is used.
    expect(url(origin({ host: 'ok', 'x-forwarded-host': ' ' }, '10.0.0.1'))).toBe('http://ok');
    expect(thrownBy(() => url(origin({})), InvalidRequestError).message).toMatch(/no Host header/);
    expect(thrownBy(() => url(origin({ host: 'ok', 'x-forwarded-proto': 'javascript' }, '10.0.0.1')), InvalidRequestError).message).toMatch(/neither http nor https/);
    expect(thrownBy(() => url(origin({ host: 'ok', forwarded: 'proto="https;$(id)"' }, '10.0.0.1')), InvalidRequestError).status).toBe(400);
  });

  it('what comes out is letters, digits and -._~:/[]% only', () => {
    const samples = [origin({ host: 'a-b_c.example.com.:1' }), origin({ host: '[2001:db8::1]' }), origin({ host: 'x', 'x-forwarded-host': 'y.example' }, '10.0.0.1')];
    for (const o of samples) expect(url(o)).toMatch(/^https?:\/\/[A-Za-z0-9\-._~:/[\]%]+$/);
  });
});

describe('config: CLAUDCODE_PUBLIC_URL and CLAUDCODE_TRUSTED_PROXIES are checked at start', () => {
  it('takes a list of addresses and ranges, and a plain http(s) URL', () => {
    const config = loadConfig({ CLAUDCODE_PUBLIC_URL: 'https://Claude.example.com/gw/', CLAUDCODE_TRUSTED_PROXIES: '127.0.0.1/8, ::1' });
    expect(config.publicUrl).toBe('https://claude.example.com/gw');
    expect(config.trustedProxies).toEqual(['127.0.0.1/8', '::1']);
  });

  it('refuses, naming the field, what a script could not carry or is no proxy address', () => {
    expect(() => loadConfig({ CLAUDCODE_TRUSTED_PROXIES: '10.0.0.0/8,proxy.lan' })).toThrow(/trustedProxies: "proxy.lan" is not an IP address or CIDR range/);
    expect(() => loadConfig({ CLAUDCODE_PUBLIC_URL: "https://x.example/it's" })).toThrow(/publicUrl: .*characters/);
    expect(() => loadConfig({ CLAUDCODE_PUBLIC_URL: 'https://x.example/?a=1' })).toThrow(/publicUrl: .*query/);
    expect(() => loadConfig({ CLAUDCODE_PUBLIC_URL: 'ftp://x.example' })).toThrow(/publicUrl: .*http/);
  });
});
