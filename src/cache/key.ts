/**
 * The response cache's key: `${scope}:${sha256 hex}` of a canonical form of everything that
 * shapes the answer. Exact matching only — two requests share an entry when they are the same
 * JSON value apart from object key order and whitespace, never because their text is "similar".
 *
 * What is keyed: the whole request body except `stream` (a JSON request and a streaming one get
 * the same final message, so one entry answers both) and except `model`, which is replaced by the
 * upstream model id after catalog mapping (two aliases of one model share entries; a remapped
 * alias stops matching old entries). Everything else stays in, including fields that arguably do
 * not shape the text (`metadata.user_id`, `cache_control` markers): keeping them errs towards a
 * miss, never towards serving an answer to a request that differs. Plus the `anthropic-version`
 * header and the set of `anthropic-beta` values (their order does not change the answer).
 *
 * The canonical form is written in one pass, straight into the hash: JSON's grammar with object
 * keys sorted by UTF-16 code units, arrays in order, numbers as `JSON.stringify` writes them, and
 * every string (keys too) as `s<length>:` followed by its code units unescaped — the length says
 * where it ends, so no escaping is needed and the form stays unambiguous. It is hashed as UTF-16LE:
 * a copy of the code units for any string, where UTF-8 would need a slow transcoding of every
 * non-ASCII string and would turn each lone surrogate into U+FFFD (making "\ud800" and "\ufffd"
 * collide). Long strings (tool results, file contents) go to the hash directly, never copied
 * into a larger string. bench/cache-key.ts measures the cost (~0.35 ms for a 100 kB agent
 * request, ~2.7 ms for 1 MB): about 2.5× faster than `JSON.stringify`-ing every string and hashing
 * the text as UTF-8 when the request holds non-ASCII text, about even when it is all ASCII.
 */
import { createHash } from 'node:crypto';

export interface CacheKeyInput {
  /** The parsed request JSON (an object; anything else is keyed as the value it is). */
  body: unknown;
  /** The model id sent upstream, after catalog mapping. */
  upstreamModel: string;
  anthropicVersion?: string;
  /** The raw `anthropic-beta` header value: comma-separated names. */
  anthropicBeta?: string;
  /** The tenant the entry belongs to (a key id, a key group, or a shared scope). */
  scope: string;
}

/**
 * Bumped whenever the canonical form changes, so that entries written by an older build (in a
 * shared SQLite or Redis tier) stop matching instead of being served for the wrong request.
 */
const FORMAT = 'claudcode-cache-key/1';

/** Top-level body fields that are not keyed: `stream` does not shape the answer, `model` is replaced. */
const UNKEYED: ReadonlySet<string> = new Set(['stream', 'model']);

/** Length of the `:${hex digest}` suffix every key ends with. */
const DIGEST_SUFFIX = 1 + 64;

/** Pending text is handed to the sink past this many code units. */
const FLUSH_AT = 64 * 1024;
/** Strings longer than this go to the sink on their own rather than into the pending text. */
const DIRECT_AT = 256;

export function cacheKey(input: CacheKeyInput): string {
  const hash = createHash('sha256');
  writeCanonical(input, (text) => hash.update(text, 'utf16le'));
  return `${input.scope}:${hash.digest('hex')}`;
}

/** The canonical form `cacheKey` hashes, as text (for tests and debugging). */
export function canonicalRequest(input: Omit<CacheKeyInput, 'scope'>): string {
  const parts: string[] = [];
  writeCanonical(input, (text) => parts.push(text));
  return parts.join('');
}

/** The betas named by an `anthropic-beta` value: trimmed, empty ones dropped, sorted, unique. */
export function betaSet(header: string | undefined): string[] {
  if (header === undefined) return [];
  const names = new Set<string>();
  for (const part of header.split(',')) {
    const name = part.trim();
    if (name !== '') names.add(name);
  }
  return [...names].sort();
}

/** The scope a key was made for (everything before the fixed-length `:${digest}` suffix). */
export function scopeOfKey(key: string): string {
  return key.slice(0, -DIGEST_SUFFIX);
}

/**
 * Whether a body can be answered from the cache at all: a Messages request object (anything
 * else is refused upstream with an error, and errors are never cached). A `metadata` user id
 * does not prevent caching; it is keyed like any other field.
 */
export function isCacheableBody(body: unknown): body is Record<string, unknown> {
  return isObject(body) && Array.isArray(body['messages']);
}

/** `[format, upstream model, version, betas, body without stream and model]`, canonically. */
function writeCanonical(input: Omit<CacheKeyInput, 'scope'>, sink: (text: string) => void): void {
  const writer = new CanonicalWriter(sink);
  writer.out = '[';
  writer.string(FORMAT);
  writer.out += ',';
  writer.string(input.upstreamModel);
  writer.out += ',';
  writer.value(input.anthropicVersion?.trim() ?? null);
  writer.out += ',';
  writer.value(betaSet(input.anthropicBeta));
  writer.out += ',';
  if (isObject(input.body)) writer.object(input.body, UNKEYED);
  else writer.value(input.body);
  writer.out += ']';
  writer.flush();
}

class CanonicalWriter {
  out = '';
  private readonly sink: (text: string) => void;

  constructor(sink: (text: string) => void) {
    this.sink = sink;
  }

  value(value: unknown): void {
    switch (typeof value) {
      case 'string':
        this.string(value);
        return;
      case 'number':
        this.out += Number.isFinite(value) ? String(value) : 'null';
        return;
      case 'boolean':
        this.out += value ? 'true' : 'false';
        return;
      case 'object':
        if (value === null) this.out += 'null';
        else if (Array.isArray(value)) this.array(value);
        else this.object(value as Record<string, unknown>);
        if (this.out.length > FLUSH_AT) this.flush();
        return;
      default:
        // undefined, functions, symbols, bigints: never in parsed JSON; as JSON.stringify in an array.
        this.out += 'null';
    }
  }

  string(value: string): void {
    if (value.length <= DIRECT_AT) {
      this.out += `s${value.length}:${value}`;
    } else {
      this.out += `s${value.length}:`;
      this.flush();
      this.sink(value);
    }
  }

  array(value: readonly unknown[]): void {
    this.out += '[';
    for (let i = 0; i < value.length; i++) {
      if (i > 0) this.out += ',';
      this.value(value[i]);
    }
    this.out += ']';
  }

  object(value: Record<string, unknown>, skip?: ReadonlySet<string>): void {
    const keys = Object.keys(value).sort();
    this.out += '{';
    let first = true;
    for (const key of keys) {
      const item = value[key];
      // Absent and undefined are the same request (JSON.stringify drops both).
      if (item === undefined || typeof item === 'function' || skip?.has(key)) continue;
      if (!first) this.out += ',';
      first = false;
      this.string(key);
      this.out += ':';
      this.value(item);
    }
    this.out += '}';
  }

  flush(): void {
    if (this.out.length > 0) this.sink(this.out);
    this.out = '';
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
