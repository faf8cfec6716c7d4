/**
 * The address rules for request-supplied MCP server URLs (src/mcp/url-guard.ts): what is refused,
 * what the allow-list lets through, and the connect-time half that DNS rebinding cannot pass.
 * Nothing here connects anywhere but loopback.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { addressRefusal, guardedFetch, HostGuard, type Resolver } from '../src/mcp/url-guard.ts';

const fixed = (map: Record<string, string[]>): Resolver => async (host) => {
  const addresses = map[host];
  if (!addresses) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
  return addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
};

describe('addressRefusal', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['169.254.169.254', 'link-local'],
    ['100.64.0.1', 'carrier-grade NAT'],
    ['100.127.255.255', 'carrier-grade NAT'],
    ['0.0.0.0', 'unspecified'],
    ['255.255.255.255', 'broadcast'],
    ['224.0.0.1', 'multicast'],
    ['::1', 'loopback'],
    ['[::1]', 'loopback'],
    ['::', 'unspecified'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['fc00::1', 'unique-local'],
    ['fd12:3456::1', 'unique-local'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:169.254.169.254', 'link-local'],
    ['0:0:0:0:0:ffff:10.0.0.1', 'private'],
    ['64:ff9b::10.0.0.1', 'private'],
    ['2002:c0a8:0101::1', 'private'], // 6to4 of 192.168.1.1
    ['ff02::1', 'multicast'],
    ['localhost', 'not an IP address'],
  ])('refuses %s (%s)', (address, why) => {
    expect(addressRefusal(address)).toContain(why);
  });

  it.each(['8.8.8.8', '1.1.1.1', '93.184.216.34', '172.32.0.1', '100.128.0.1', '2606:4700:4700::1111', '::ffff:8.8.8.8', '2a00:1450:4001::200e'])(
    'accepts the public address %s',
    (address) => {
      expect(addressRefusal(address)).toBeUndefined();
    },
  );
});

describe('HostGuard.checkUrl', () => {
  const guard = new HostGuard([], fixed({ localhost: ['127.0.0.1', '::1'], 'public.test': ['93.184.216.34'], 'mixed.test': ['93.184.216.34', '10.0.0.8'] }));

  it.each([
    'http://127.0.0.1:8080/mcp',
    'http://localhost/mcp',
    'http://10.0.0.1/',
    'http://172.16.5.4/',
    'http://192.168.0.10/',
    'http://169.254.169.254/latest/meta-data/',
    'http://100.64.1.1/',
    'http://[::1]:3000/mcp',
    'http://[fe80::1]/',
    'http://[fc00::1]/',
    'http://[::ffff:127.0.0.1]/',
    'http://0.0.0.0:8080/',
    'http://2130706433/', // 127.0.0.1 written as one number; the URL parser normalises it
    'http://0x7f.1/',
    'http://mixed.test/', // one private address among public ones is enough
  ])('refuses %s', async (url) => {
    expect(await guard.checkUrl(url)).toMatch(/loopback|private|link-local|carrier-grade|unique-local|unspecified/);
  });

  it('accepts a public literal address and a name resolving to public addresses (without connecting)', async () => {
    expect(await guard.checkUrl('https://93.184.216.34/mcp')).toBeUndefined();
    expect(await guard.checkUrl('https://[2606:4700:4700::1111]/mcp')).toBeUndefined();
    expect(await guard.checkUrl('https://public.test/mcp')).toBeUndefined();
  });

  it('refuses other schemes, credentials in the URL, and names that do not resolve', async () => {
    expect(await guard.checkUrl('ftp://public.test/')).toContain('http(s)');
    expect(await guard.checkUrl('file:///etc/passwd')).toContain('http(s)');
    expect(await guard.checkUrl('not a url')).toContain('not a valid URL');
    expect(await guard.checkUrl('https://user:pw@public.test/')).toContain('credentials');
    expect(await guard.checkUrl('https://nowhere.test/')).toContain('does not resolve (ENOTFOUND)');
  });

  it('accepts allow-listed hosts, by name or address, case-insensitively', async () => {
    const allowing = new HostGuard(['LocalHost', '127.0.0.1', '::1', '10.0.0.8'], fixed({ localhost: ['127.0.0.1', '::1'], 'mixed.test': ['93.184.216.34', '10.0.0.8'] }));
    expect(await allowing.checkUrl('http://localhost:9000/mcp')).toBeUndefined();
    expect(await allowing.checkUrl('http://127.0.0.1:9000/mcp')).toBeUndefined();
    expect(await allowing.checkUrl('http://[::1]:9000/mcp')).toBeUndefined();
    expect(await allowing.checkUrl('http://mixed.test/')).toBeUndefined();
    expect(await allowing.checkUrl('http://192.168.0.1/')).toContain('private');
  });
});

describe('guardedFetch', () => {
  async function loopbackServer(): Promise<{ port: number; close: () => Promise<void> }> {
    const server = createServer((_req, res) => res.end('reached'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { port: (server.address() as AddressInfo).port, close: () => new Promise((r) => server.close(() => r())) };
  }

  it('refuses at connect time a name that now resolves to loopback (DNS rebinding)', async () => {
    const target = await loopbackServer();
    let lookups = 0;
    // The first answer (the pre-connect check) is public; every later one is loopback.
    const guard = new HostGuard([], async () => [{ address: lookups++ === 0 ? '93.184.216.34' : '127.0.0.1', family: 4 }]);
    expect(await guard.checkUrl(`http://rebind.test:${target.port}/`)).toBeUndefined();
    const fetcher = guardedFetch(guard);
    try {
      const error = await fetcher.fetch(`http://rebind.test:${target.port}/`).then(() => undefined, (err: unknown) => err as Error & { cause?: Error });
      expect(error?.cause?.message).toContain('resolves to 127.0.0.1, a loopback address');
      await expect(fetcher.fetch(`http://127.0.0.1:${target.port}/`)).rejects.toThrow(/loopback/);
    } finally {
      await fetcher.close();
      await target.close();
    }
  });

  it('connects to allow-listed hosts', async () => {
    const target = await loopbackServer();
    const fetcher = guardedFetch(new HostGuard(['rebind.test', '127.0.0.1'], async () => [{ address: '127.0.0.1', family: 4 }]));
    try {
      expect(await (await fetcher.fetch(`http://rebind.test:${target.port}/`)).text()).toBe('reached');
      expect(await (await fetcher.fetch(`http://127.0.0.1:${target.port}/`)).text()).toBe('reached');
    } finally {
      await fetcher.close();
      await target.close();
    }
  });
});
