/**
 * The gateway's public base URL as a client should type it, for the setup scripts (/setup.sh,
 * /setup.ps1) that embed it: the configured `publicUrl` when set, else derived from the request.
 *
 * Derived: the scheme from the socket (TLS or not) and the host from `Host`. Behind a reverse
 * proxy those describe the proxy's hop, so `X-Forwarded-Proto` / `X-Forwarded-Host` (or, when
 * absent, RFC 7239 `Forwarded: proto=…;host=…`) are used instead — but only when the connection
 * comes from an address in `trustedProxies`: anyone else could otherwise make the gateway serve
 * a script pointed at their own host.
 *
 * The result ends up inside a shell and a PowerShell script, so whatever comes from a header is
 * checked to be a plain host name, IPv4 or bracketed IPv6 address with an optional port, then
 * normalized by `normalizeGatewayUrl` (letters, digits and `-._~:/[]%` only). Anything else is a
 * 400 rather than a guess: a Host with spaces, quotes, `$` or backticks never reaches a script.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';
import { InvalidRequestError } from '../errors.ts';
import { normalizeGatewayUrl } from './templates.ts';

/** `::ffff:127.0.0.1` → `127.0.0.1`; a zone id (`fe80::1%eth0`) dropped; brackets removed. */
function plainAddress(address: string): string {
  let a = address.trim();
  if (a.startsWith('[') && a.endsWith(']')) a = a.slice(1, -1);
  const zone = a.indexOf('%');
  if (zone >= 0) a = a.slice(0, zone);
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(a);
  return mapped ? mapped[1]! : a;
}

/**
 * The reverse proxies whose forwarded headers the gateway believes: IPv4 and IPv6 addresses and
 * CIDR ranges. IPv4-mapped IPv6 addresses (how a dual-stack socket reports an IPv4 peer) match
 * the IPv4 entries, and the other way round.
 */
export class TrustedProxies {
  readonly #list = new BlockList();
  readonly size: number;

  /** Throws an Error naming the first entry that is not an address or a CIDR range. */
  constructor(entries: readonly string[]) {
    for (const entry of entries) this.#add(entry);
    this.size = entries.length;
  }

  #add(entry: string): void {
    const invalid = () => new Error(`"${entry}" is not an IP address or CIDR range (e.g. 10.0.0.5, 10.0.0.0/8, fd00::/8)`);
    const slash = entry.indexOf('/');
    const written = (slash < 0 ? entry : entry.slice(0, slash)).trim().replace(/^\[(.*)\]$/, '$1');
    const address = plainAddress(written);
    const family = isIP(address);
    if (family === 0) throw invalid();
    const type = family === 4 ? 'ipv4' : 'ipv6';
    if (slash < 0) {
      this.#list.addAddress(address, type);
      return;
    }
    const prefixText = entry.slice(slash + 1).trim();
    if (!/^\d{1,3}$/.test(prefixText)) throw invalid();
    let prefix = Number(prefixText);
    // An IPv4-mapped range written as IPv6 (::ffff:10.0.0.0/104) is the IPv4 range 10.0.0.0/8.
    if (family === 4 && isIP(written) === 6) {
      if (prefix < 96) throw invalid();
      prefix -= 96;
    }
    if (prefix > (family === 4 ? 32 : 128)) throw invalid();
    // ::/0 is every address, IPv4 peers included.
    if (family === 6 && prefix === 0) this.#list.addSubnet('0.0.0.0', 0, 'ipv4');
    this.#list.addSubnet(address, prefix, type);
  }

  /** Whether a connection from `address` (as the socket reports it) comes from a trusted proxy. */
  has(address: string | undefined): boolean {
    if (!address || this.size === 0) return false;
    const plain = plainAddress(address);
    const family = isIP(plain);
    if (family === 0) return false;
    return this.#list.check(plain, family === 4 ? 'ipv4' : 'ipv6');
  }
}

/** What of a request the public URL is derived from (a plain object, so tests need no socket). */
export interface RequestOrigin {
  /** The peer's address as the socket reports it (an IPv4 peer may show as ::ffff:a.b.c.d). */
  remoteAddress: string | undefined;
  /** The connection is TLS. */
  encrypted: boolean;
  headers: IncomingHttpHeaders;
}

export function requestOrigin(incoming: IncomingMessage): RequestOrigin {
  const socket = incoming.socket as IncomingMessage['socket'] & { encrypted?: boolean };
  return { remoteAddress: socket.remoteAddress, encrypted: socket.encrypted === true, headers: incoming.headers };
}

export interface PublicUrlOptions {
  /** Configured (`CLAUDCODE_PUBLIC_URL`): wins over anything in the request. */
  publicUrl?: string | undefined;
  trustedProxies: TrustedProxies;
}

/** A DNS name (letters, digits, `-`, `_` inside labels), IPv4, or bracketed IPv6; optional port. */
const HOST_AND_PORT = /^(?:[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/** A header's value, the first one of a list (`a, b` or repeated): the proxy nearest the client set it. */
function firstValue(value: string | string[] | undefined): string | undefined {
  const joined = Array.isArray(value) ? value[0] : value;
  const first = joined?.split(',')[0]?.trim();
  return first ? first : undefined;
}

/** `proto` and `host` of the first element of an RFC 7239 Forwarded header. */
function forwardedPairs(value: string | string[] | undefined): { proto?: string; host?: string } {
  const first = Array.isArray(value) ? value[0] : value;
  if (!first) return {};
  const element = first.split(',')[0] ?? '';
  const pairs: { proto?: string; host?: string } = {};
  for (const pair of element.split(';')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    const name = pair.slice(0, eq).trim().toLowerCase();
    let v = pair.slice(eq + 1).trim();
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1).replace(/\\(.)/g, '$1');
    if (name === 'proto' || name === 'host') pairs[name] = v;
  }
  return pairs;
}

/**
 * The base URL (no trailing slash) clients of this gateway use, for one request. Throws an
 * InvalidRequestError (400) when the host or scheme to use is not plainly a host or http(s).
 */
export function publicBaseUrl(options: PublicUrlOptions, origin: RequestOrigin): string {
  if (options.publicUrl) return normalizeGatewayUrl(options.publicUrl);
  let proto = origin.encrypted ? 'https' : 'http';
  let host = firstValue(origin.headers.host);
  let hostSource = 'Host header';
  if (options.trustedProxies.has(origin.remoteAddress)) {
    const forwarded = forwardedPairs(origin.headers.forwarded);
    const forwardedProto = firstValue(origin.headers['x-forwarded-proto']) ?? forwarded.proto;
    const forwardedHost = firstValue(origin.headers['x-forwarded-host']) ?? forwarded.host;
    if (forwardedProto !== undefined) proto = forwardedProto.toLowerCase();
    if (forwardedHost !== undefined) {
      host = forwardedHost;
      hostSource = 'forwarded host (X-Forwarded-Host or Forwarded)';
    }
  }
  const hint = 'Set CLAUDCODE_PUBLIC_URL to the URL clients use.';
  if (proto !== 'http' && proto !== 'https') {
    throw new InvalidRequestError(`The forwarded protocol is neither http nor https; cannot tell this gateway's URL. ${hint}`);
  }
  if (!host) throw new InvalidRequestError(`The request has no Host header; cannot tell this gateway's URL. ${hint}`);
  if (host.length > 261 || !HOST_AND_PORT.test(host)) {
    throw new InvalidRequestError(`The ${hostSource} is not a host name or address; cannot tell this gateway's URL. ${hint}`);
  }
  try {
    return normalizeGatewayUrl(`${proto}://${host}`);
  } catch {
    // An out-of-range port or an IPv6 literal URL parsing refuses.
    throw new InvalidRequestError(`The ${hostSource} is not a host name or address; cannot tell this gateway's URL. ${hint}`);
  }
}
