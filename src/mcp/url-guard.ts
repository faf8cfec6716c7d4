/**
 * Which hosts an MCP server URL from a request (`mcp_servers`) may reach. A client must not be able
 * to point the gateway at its own network: loopback, private, link-local (cloud metadata at
 * 169.254.169.254), unique-local, CGNAT, unspecified and other non-global addresses are refused,
 * IPv4 and IPv6 alike (IPv4 inside IPv6 — mapped, compatible, NAT64, 6to4 — is judged as the IPv4
 * it carries), unless the operator allow-lists the host.
 *
 * The check runs twice: `checkUrl` before connecting (every address the name resolves to, so the
 * client gets a clear refusal), and `guardedFetch` at connect time (its lookup refuses too), so a
 * name that resolves to a public address first and to a private one later (DNS rebinding) cannot
 * slip through. Addresses are parsed here rather than with `net.BlockList`, whose handling of
 * IPv4-mapped IPv6 has varied between Node versions.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP } from 'node:net';
import { Agent, fetch as undiciFetch } from 'undici';

/** Resolves a host name to all its addresses (node:dns `lookup` with `all: true` by default). */
export type Resolver = (hostname: string) => Promise<LookupAddress[]>;

export const systemResolver: Resolver = (hostname) =>
  new Promise((resolve, reject) => {
    dnsLookup(hostname, { all: true, verbatim: true }, (err, addresses) => (err ? reject(err) : resolve(addresses)));
  });

// [first address, prefix length, why refused]
const V4_RANGES: Array<[string, number, string]> = [
  ['0.0.0.0', 8, 'an unspecified ("this network") address'],
  ['10.0.0.0', 8, 'a private address'],
  ['100.64.0.0', 10, 'a carrier-grade NAT address'],
  ['127.0.0.0', 8, 'a loopback address'],
  ['169.254.0.0', 16, 'a link-local address'],
  ['172.16.0.0', 12, 'a private address'],
  ['192.0.0.0', 24, 'a reserved address'],
  ['192.0.2.0', 24, 'a documentation address'],
  ['192.168.0.0', 16, 'a private address'],
  ['198.18.0.0', 15, 'a benchmarking address'],
  ['198.51.100.0', 24, 'a documentation address'],
  ['203.0.113.0', 24, 'a documentation address'],
  ['224.0.0.0', 4, 'a multicast address'],
  ['240.0.0.0', 4, 'a reserved address'],
];

const V6_RANGES: Array<[string, number, string]> = [
  ['::', 128, 'an unspecified address'],
  ['::1', 128, 'a loopback address'],
  ['100::', 64, 'a discard address'],
  ['2001:db8::', 32, 'a documentation address'],
  ['fc00::', 7, 'a unique-local address'],
  ['fe80::', 10, 'a link-local address'],
  ['fec0::', 10, 'a site-local address'],
  ['ff00::', 8, 'a multicast address'],
];

/** IPv6 prefixes that carry an IPv4 address, and where: [prefix, length, byte offset of the IPv4]. */
const V4_IN_V6: Array<[string, number, number]> = [
  ['::ffff:0:0', 96, 12], // IPv4-mapped
  ['::', 96, 12], // IPv4-compatible (deprecated; :: and ::1 are caught before)
  ['64:ff9b::', 96, 12], // NAT64 well-known prefix
  ['64:ff9b:1::', 48, 12], // NAT64 local-use prefix
  ['2002::', 16, 2], // 6to4
];

function parseV4(text: string): Uint8Array | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  const bytes = parts.map((p) => (/^\d{1,3}$/.test(p) ? Number(p) : NaN));
  if (bytes.some((b) => !(b >= 0 && b <= 255))) return undefined;
  return Uint8Array.from(bytes);
}

function parseV6(text: string): Uint8Array | undefined {
  let rest = text.replace(/%.*$/, ''); // zone id (fe80::1%eth0)
  const bytes = new Uint8Array(16);
  let tail: Uint8Array | undefined;
  const lastColon = rest.lastIndexOf(':');
  if (rest.slice(lastColon + 1).includes('.')) {
    tail = parseV4(rest.slice(lastColon + 1));
    if (!tail) return undefined;
    rest = `${rest.slice(0, lastColon + 1)}0:0`;
  }
  const halves = rest.split('::');
  if (halves.length > 2) return undefined;
  const groups = (s: string | undefined): string[] => (s ? s.split(':') : []);
  const head = groups(halves[0]);
  const back = groups(halves[1]);
  const missing = 8 - head.length - back.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const all = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...back];
  for (const [i, group] of all.entries()) {
    if (!/^[0-9a-f]{1,4}$/i.test(group)) return undefined;
    const value = parseInt(group, 16);
    bytes[i * 2] = value >> 8;
    bytes[i * 2 + 1] = value & 0xff;
  }
  if (tail) bytes.set(tail, 12);
  return bytes;
}

function inPrefix(bytes: Uint8Array, prefix: Uint8Array, length: number): boolean {
  for (let bit = 0; bit < length; bit++) {
    const mask = 0x80 >> (bit % 8);
    if (((bytes[bit >> 3] ?? 0) & mask) !== ((prefix[bit >> 3] ?? 0) & mask)) return false;
  }
  return true;
}

const v4Ranges = V4_RANGES.map(([a, len, why]) => [parseV4(a)!, len, why] as const);
const v6Ranges = V6_RANGES.map(([a, len, why]) => [parseV6(a)!, len, why] as const);
const v4InV6 = V4_IN_V6.map(([a, len, offset]) => [parseV6(a)!, len, offset] as const);

/**
 * Why the gateway refuses to connect to this IP address (e.g. "a loopback address"), or
 * `undefined` if it is a global unicast address. A string that is no IP address is refused too.
 */
export function addressRefusal(address: string): string | undefined {
  const text = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address;
  const v4 = parseV4(text);
  if (v4) {
    if (v4.every((b) => b === 255)) return 'a broadcast address';
    return v4Ranges.find(([prefix, len]) => inPrefix(v4, prefix, len))?.[2];
  }
  const v6 = parseV6(text);
  if (!v6) return 'not an IP address';
  const exact = v6Ranges.find(([prefix, len]) => inPrefix(v6, prefix, len));
  if (exact) return exact[2];
  for (const [prefix, len, offset] of v4InV6) {
    if (inPrefix(v6, prefix, len)) {
      const why = addressRefusal(Array.from(v6.subarray(offset, offset + 4)).join('.'));
      return why && `${why} (inside IPv6)`;
    }
  }
  return undefined;
}

/** Host names and addresses compare case-insensitively, IPv6 without brackets. */
function normalizeHost(host: string): string {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  return bare.toLowerCase().replace(/\.$/, '');
}

export class HostGuard {
  readonly #allowed: Set<string>;
  readonly #resolve: Resolver;

  /** `allowedPrivateHosts`: names or addresses that may be reached although they are not public. */
  constructor(allowedPrivateHosts: string[], resolve: Resolver = systemResolver) {
    this.#allowed = new Set(allowedPrivateHosts.map(normalizeHost));
    this.#resolve = resolve;
  }

  isAllowListed(host: string): boolean {
    return this.#allowed.has(normalizeHost(host));
  }

  /**
   * Why an address the host resolved to is refused, or `undefined`. An address is fine when it is
   * public, or when the host name or the address itself is allow-listed.
   */
  refusal(host: string, address: string): string | undefined {
    if (this.isAllowListed(host) || this.isAllowListed(address)) return undefined;
    return addressRefusal(address);
  }

  /**
   * Checks an MCP server URL before connecting: http(s) only, and every address its host
   * resolves to must pass `refusal`. Returns why it is refused (for the client), or `undefined`.
   */
  async checkUrl(url: string): Promise<string | undefined> {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return 'its URL is not a valid URL';
    }
    if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') return 'its URL must be http(s)';
    if (parsed.username || parsed.password) return 'its URL must not carry credentials (use authorization_token)';
    const host = normalizeHost(parsed.hostname);
    if (this.isAllowListed(host)) return undefined;
    if (isIP(host)) {
      const why = addressRefusal(host);
      return why && `its host ${host} is ${why}`;
    }
    let addresses: LookupAddress[];
    try {
      addresses = await this.#resolve(host);
    } catch (err) {
      return `its host ${host} does not resolve (${(err as NodeJS.ErrnoException).code ?? 'lookup failed'})`;
    }
    if (addresses.length === 0) return `its host ${host} does not resolve`;
    for (const { address } of addresses) {
      const why = this.refusal(host, address);
      if (why) return `its host ${host} resolves to ${address}, ${why}`;
    }
    return undefined;
  }

  /**
   * A lookup for `net.connect` that resolves through this guard's resolver and fails for refused
   * addresses: the connect-time half of the check, which DNS rebinding cannot get past.
   */
  lookup = (
    hostname: string,
    options: { all?: boolean } | number | undefined,
    callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
  ): void => {
    this.#resolve(hostname).then(
      (addresses) => {
        const refused = addresses.map((a) => [a.address, this.refusal(hostname, a.address)] as const).find(([, why]) => why);
        if (refused || addresses.length === 0) {
          const err: NodeJS.ErrnoException = new Error(
            refused ? `refused to connect to ${hostname}: it resolves to ${refused[0]}, ${refused[1]}` : `${hostname} does not resolve`,
          );
          err.code = refused ? 'EMCPREFUSED' : 'ENOTFOUND';
          return callback(err, '');
        }
        if (typeof options === 'object' && options?.all) return callback(null, addresses);
        const first = addresses[0]!;
        callback(null, first.address, first.family);
      },
      (err: NodeJS.ErrnoException) => callback(err, ''),
    );
  };
}

export interface GuardedFetch {
  fetch: (url: string | URL, init?: RequestInit) => Promise<Response>;
  close(): Promise<void>;
}

/**
 * A fetch whose connections go through `guard` — literal IP hosts are checked per request (they
 * skip the lookup), names at connect time by the agent's lookup. Proxies from the environment are
 * not used: the agent connects directly.
 */
export function guardedFetch(guard: HostGuard): GuardedFetch {
  const agent = new Agent({ connect: { lookup: guard.lookup } });
  return {
    async fetch(url, init) {
      const parsed = new URL(url);
      const host = normalizeHost(parsed.hostname);
      if (isIP(host)) {
        const why = guard.refusal(host, host);
        if (why) throw new TypeError(`refused to connect to ${host}: ${why}`);
      }
      // undici's own fetch, so that the dispatcher is of the same undici version.
      const response = await undiciFetch(url, { ...(init as object), dispatcher: agent });
      return response as unknown as Response;
    },
    close: () => agent.close(),
  };
}
