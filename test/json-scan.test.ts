/**
 * src/json-scan.ts against JSON.parse, its reference: a seeded fuzz over generated and mutated
 * bodies fed in random chunkings, exhaustive single-byte cases, and focused cases for what the
 * scanner adds (depth limit, duplicate captured keys, truncated captures) or must get exactly
 * right at chunk boundaries (escapes, UTF-8, numbers, offsets). Deterministic: no clocks.
 */
import { describe, expect, it } from 'vitest';
import { seededRandom } from './fixtures.ts';
import { JsonScanner, scanJson, type JsonKind, type ScanResult, type ScannedField } from '../src/json-scan.ts';

const CAPTURE = ['model', 'max_tokens', 'stream', 'messages'];

// ---------------------------------------------------------------------------
// Helpers

const prng = seededRandom;

type Random = ReturnType<typeof prng>;
const int = (random: Random, below: number): number => Math.floor(random() * below);
const pick = <T>(random: Random, items: readonly T[]): T => items[int(random, items.length)]!;

const bytes = (text: string): Buffer => Buffer.from(text, 'utf8');

/** Splits `body` at the given sizes (cycled), each chunk in its own backing store at `misalign` bytes in. */
function chunksOf(body: Uint8Array, sizes: readonly number[], misalign = 0): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let offset = 0, k = 0; offset < body.length; k++) {
    const size = Math.max(1, sizes[k % sizes.length]!);
    const piece = body.subarray(offset, offset + size);
    const backing = new Uint8Array(piece.length + misalign + 3);
    backing.set(piece, misalign);
    chunks.push(backing.subarray(misalign, misalign + piece.length));
    offset += size;
  }
  return chunks;
}

function scanChunks(chunks: readonly Uint8Array[], options: { maxStringBytes?: number; maxDepth?: number } = {}): ScanResult {
  const scanner = new JsonScanner({ capture: CAPTURE, ...options });
  for (const chunk of chunks) scanner.push(chunk);
  return scanner.end();
}

function scanSplitAt(body: Buffer, splits: readonly number[], options: { maxStringBytes?: number; maxDepth?: number } = {}): ScanResult {
  const points = [0, ...splits, body.length];
  return scanChunks(
    points.slice(1).map((end, k) => body.subarray(points[k], end)),
    options,
  );
}

function parses(body: Uint8Array): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(Buffer.from(body).toString('utf8')) };
  } catch {
    return { ok: false };
  }
}

function kindOf(value: unknown): JsonKind {
  if (value === null) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (Array.isArray(value)) return 'array';
  return typeof value as 'string' | 'number' | 'object';
}

function fieldsOf(result: ScanResult): Map<string, ScannedField> {
  if (!result.ok) throw new Error(`expected a valid body, got: ${result.message}`);
  return result.fields;
}

function field(result: ScanResult, name: string): ScannedField {
  const found = fieldsOf(result).get(name);
  if (found === undefined) throw new Error(`no field ${name}`);
  return found;
}

/**
 * What the scanner needs beyond JSON.parse, read off text already known to be valid JSON: the
 * root object's keys in order (duplicates kept), the deepest nesting, and the number of members
 * or elements of the root container as written.
 */
function structureOf(text: string): { rootKeys: string[]; depth: number; members: number } {
  const rootKeys: string[] = [];
  let depth = 0;
  let deepest = 0;
  let commas = 0;
  let nonEmpty = false;
  const rootIsObject = text.trimStart().startsWith('{');
  for (let k = 0; k < text.length; k++) {
    const ch = text[k]!;
    if (ch === '"') {
      let end = k + 1;
      while (text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      if (depth === 1) nonEmpty = true;
      if (depth === 1 && rootIsObject && /^\s*:/.test(text.slice(end + 1, end + 40))) {
        rootKeys.push(JSON.parse(text.slice(k, end + 1)) as string);
      }
      k = end;
    } else if (ch === '{' || ch === '[') {
      if (depth === 1) nonEmpty = true;
      depth++;
      deepest = Math.max(deepest, depth);
    } else if (ch === '}' || ch === ']') {
      depth--;
    } else if (ch === ',' && depth === 1) {
      commas++;
    } else if (depth === 1 && !/\s/.test(ch)) {
      nonEmpty = true;
    }
  }
  return { rootKeys, depth: deepest, members: nonEmpty ? commas + 1 : 0 };
}

/**
 * Asserts the scanner agrees with JSON.parse on `body`: same verdict, except the two deliberate
 * refusals (nesting over maxDepth, a duplicated captured root key); and, when valid, every
 * captured field against JSON.parse of the whole body.
 */
function expectAgreesWithJsonParse(
  body: Buffer,
  result: ScanResult,
  options: { maxStringBytes: number; maxDepth: number },
): 'invalid' | 'refused' | 'valid' {
  const reference = parses(body);
  if (!reference.ok) {
    expect(result.ok, `accepted invalid JSON: ${JSON.stringify(body.toString('latin1'))}`).toBe(false);
    if (!result.ok) {
      expect(result.offset).toBeGreaterThanOrEqual(0);
      expect(result.offset).toBeLessThanOrEqual(body.length);
      expect(result.message.length).toBeLessThan(120);
    }
    return 'invalid';
  }
  const structure = structureOf(body.toString('utf8'));
  const seen = new Set<string>();
  const duplicated = structure.rootKeys.find((key) => CAPTURE.includes(key) && (seen.has(key) || (seen.add(key), false)));
  const tooDeep = structure.depth > options.maxDepth;
  if (tooDeep || duplicated !== undefined) {
    expect(result.ok).toBe(false);
    if (!result.ok) {
      const allowed: string[] = [];
      if (tooDeep) allowed.push(`nested too deeply (more than ${options.maxDepth} levels)`);
      if (duplicated !== undefined) allowed.push(`duplicate key ${JSON.stringify(duplicated)}`);
      expect(allowed.some((start) => result.message.startsWith(start)), result.message).toBe(true);
    }
    return 'refused';
  }
  expect(result, `rejected valid JSON: ${JSON.stringify(body.toString('latin1'))}`).toMatchObject({ ok: true });
  if (!result.ok) return 'invalid';
  const root = reference.value;
  expect(result.rootKind).toBe(kindOf(root));
  const rootObject = result.rootKind === 'object' ? (root as Record<string, unknown>) : {};
  for (const name of CAPTURE) {
    const scanned = result.fields.get(name);
    expect(scanned !== undefined, name).toBe(Object.hasOwn(rootObject, name));
    if (scanned === undefined) continue;
    const expected = rootObject[name];
    const raw = body.subarray(scanned.start, scanned.end);
    expect(JSON.parse(raw.toString('utf8'))).toStrictEqual(expected);
    expect(scanned.kind).toBe(kindOf(expected));
    if (scanned.kind === 'string') {
      if (raw.length - 2 <= options.maxStringBytes) {
        expect(scanned.value).toBe(expected);
        expect(scanned.truncated).toBeUndefined();
      } else {
        expect(scanned.value).toBeUndefined();
        expect(scanned.truncated).toBe(true);
        expect((expected as string).startsWith(scanned.prefix!), `prefix ${JSON.stringify(scanned.prefix)}`).toBe(true);
        expect(scanned.prefix!.length).toBeLessThanOrEqual(options.maxStringBytes);
      }
    } else if (scanned.kind === 'number') {
      if (raw.length <= 64) expect(Object.is(scanned.number, expected)).toBe(true);
      else expect(scanned.number).toBeUndefined();
    } else if (scanned.kind === 'array') {
      expect(scanned.length).toBe((expected as unknown[]).length);
    } else if (scanned.kind === 'object') {
      expect(scanned.length).toBe(structureOf(raw.toString('utf8')).members);
    }
  }
  for (const name of result.fields.keys()) expect(CAPTURE).toContain(name);
  return 'valid';
}

// ---------------------------------------------------------------------------
// Random JSON, generated as bytes so that raw invalid UTF-8 can appear in strings.

class BodyWriter {
  readonly out: number[] = [];
  readonly random: Random;
  constructor(random: Random) {
    this.random = random;
  }
  text(text: string): void {
    for (const b of Buffer.from(text, 'utf8')) this.out.push(b);
  }
  space(): void {
    if (this.random() < 0.6) return;
    for (let k = int(this.random, 4); k >= 0; k--) this.out.push(pick(this.random, [0x20, 0x09, 0x0a, 0x0d]));
  }
}

const ESCAPES = ['\\"', '\\\\', '\\/', '\\b', '\\f', '\\n', '\\r', '\\t'];
const RAW_TEXT = ['a', 'model', ' ', 'é', '日本', '🙂', 'Grüße', '\u007f', '\u2028', 'x'.repeat(40)];

function hex4(random: Random, unit: number): string {
  const digits = unit.toString(16).padStart(4, '0');
  return [...digits].map((d) => (random() < 0.5 ? d.toUpperCase() : d)).join('');
}

/** The inside of a string: raw text, escapes, \u escapes (incl. surrogates, paired or not), invalid UTF-8. */
function writeStringBody(w: BodyWriter, maxPieces: number): void {
  const pieces = int(w.random, maxPieces + 1);
  for (let k = 0; k < pieces; k++) {
    const roll = w.random();
    if (roll < 0.4) w.text(pick(w.random, RAW_TEXT));
    else if (roll < 0.55) w.text(pick(w.random, ESCAPES));
    else if (roll < 0.65) w.text(`\\u${hex4(w.random, int(w.random, 0x10000))}`);
    else if (roll < 0.72) w.text(`\\u${hex4(w.random, 0xd800 + int(w.random, 0x400))}\\u${hex4(w.random, 0xdc00 + int(w.random, 0x400))}`);
    else if (roll < 0.77) w.text(`\\u${hex4(w.random, 0xd800 + int(w.random, 0x800))}`);
    else if (roll < 0.85) for (let b = int(w.random, 4); b >= 0; b--) w.out.push(0x80 + int(w.random, 0x80));
    else if (roll < 0.9) w.text('y'.repeat(int(w.random, 300)));
    else w.text(String.fromCharCode(0x20 + int(w.random, 0x5f)).replace(/["\\]/, ''));
  }
}

function writeNumber(w: BodyWriter): void {
  const digits = (count: number) => Array.from({ length: count }, () => int(w.random, 10)).join('');
  let text = w.random() < 0.4 ? '-' : '';
  text += w.random() < 0.3 ? '0' : `${1 + int(w.random, 9)}${digits(int(w.random, w.random() < 0.05 ? 80 : 12))}`;
  if (w.random() < 0.4) text += `.${digits(1 + int(w.random, 20))}`;
  if (w.random() < 0.3) text += `${pick(w.random, ['e', 'E'])}${pick(w.random, ['', '+', '-'])}${digits(1 + int(w.random, 4))}`;
  w.text(text);
}

/** A key: usually random, sometimes a captured name, spelled plainly or with \u escapes. */
function writeKey(w: BodyWriter, name?: string): void {
  w.text('"');
  if (name === undefined) {
    if (w.random() < 0.2) w.text(pick(w.random, ['Model', 'model ', 'mode', 'modell', 'stream', 'x']));
    else writeStringBody(w, 3);
  } else {
    for (const ch of name) w.text(w.random() < 0.15 ? `\\u${hex4(w.random, ch.charCodeAt(0))}` : ch);
  }
  w.text('"');
}

function writeValue(w: BodyWriter, depth: number): void {
  const roll = w.random();
  const containers = depth < 10 ? 0.35 : 0;
  if (roll < containers / 2) {
    w.text('[');
    w.space();
    for (let k = int(w.random, 4) - 1; k >= 0; k--) {
      writeValue(w, depth + 1);
      w.space();
      if (k > 0) {
        w.text(',');
        w.space();
      }
    }
    w.text(']');
  } else if (roll < containers) {
    w.text('{');
    w.space();
    for (let k = int(w.random, 4) - 1; k >= 0; k--) {
      writeKey(w, w.random() < 0.1 ? pick(w.random, CAPTURE) : undefined);
      w.space();
      w.text(':');
      w.space();
      writeValue(w, depth + 1);
      w.space();
      if (k > 0) {
        w.text(',');
        w.space();
      }
    }
    w.text('}');
  } else if (roll < 0.6) {
    w.text('"');
    writeStringBody(w, 6);
    w.text('"');
  } else if (roll < 0.85) {
    writeNumber(w);
  } else {
    w.text(pick(w.random, ['true', 'false', 'null']));
  }
}

/** A root object holding some captured names (each at most once) among random keys. */
function writeRootObject(w: BodyWriter): void {
  const names = CAPTURE.filter(() => w.random() < 0.6);
  const others = int(w.random, 4);
  const order = [...names, ...Array.from({ length: others }, () => undefined)].sort(() => w.random() - 0.5);
  w.text('{');
  w.space();
  order.forEach((name, k) => {
    writeKey(w, name);
    w.space();
    w.text(':');
    w.space();
    writeValue(w, 1);
    w.space();
    if (k < order.length - 1) {
      w.text(',');
      w.space();
    }
  });
  w.text('}');
}

const INTERESTING_BYTES = [...'{}[]:,"\\ \t\n\r0123456789-+.eEtrufalsn/bu'].map((c) => c.charCodeAt(0)).concat([0x00, 0x1f, 0x7f, 0x80, 0xc3, 0xef, 0xff]);

/** Small edits that usually, not always, make the body invalid (or create duplicate keys). */
function mutate(random: Random, body: number[]): number[] {
  const out = [...body];
  for (let edits = 1 + int(random, 3); edits > 0; edits--) {
    const at = int(random, out.length + 1);
    const roll = random();
    const b = random() < 0.8 ? pick(random, INTERESTING_BYTES) : int(random, 256);
    if (roll < 0.3) out.splice(at, 0, b);
    else if (roll < 0.5) out.splice(at, 1);
    else if (roll < 0.7) out.splice(at, 1, b);
    else if (roll < 0.8) out.length = at;
    else if (roll < 0.9) out.splice(int(random, out.length + 1), 0, ...out.slice(at, at + int(random, 12)));
    else out.unshift(0xef, 0xbb, 0xbf);
  }
  return out;
}

function randomChunking(random: Random, length: number): { sizes: number[]; misalign: number } {
  const misalign = int(random, 4);
  const roll = random();
  if (roll < 0.2) return { sizes: [1], misalign };
  if (roll < 0.3) return { sizes: [Math.max(1, length)], misalign };
  const max = roll < 0.7 ? 8 : 64;
  return { sizes: Array.from({ length: 64 }, () => 1 + int(random, max)), misalign };
}

// ---------------------------------------------------------------------------

describe('JsonScanner against JSON.parse (seeded fuzz)', () => {
  const options = { maxStringBytes: 24, maxDepth: 8 };

  it('agrees on generated and mutated bodies fed in random chunks', () => {
    const random = prng(20260501);
    const verdicts = { valid: 0, invalid: 0, refused: 0 };
    const captured = new Map<string, number>();
    for (let round = 0; round < 4000; round++) {
      const w = new BodyWriter(random);
      w.space();
      if (random() < 0.7) writeRootObject(w);
      else writeValue(w, 0);
      w.space();
      const body = Buffer.from(random() < 0.5 ? mutate(random, w.out) : w.out);
      const { sizes, misalign } = randomChunking(random, body.length);
      const result = scanChunks(chunksOf(body, sizes, misalign), options);
      verdicts[expectAgreesWithJsonParse(body, result, options)]++;
      // The chunking never changes the outcome, messages and offsets included.
      expect(scanJson(body, CAPTURE, options)).toStrictEqual(result);
      if (result.ok) {
        for (const scanned of result.fields.values()) {
          const label = scanned.truncated ? 'truncated string' : scanned.kind;
          captured.set(label, (captured.get(label) ?? 0) + 1);
        }
      }
    }
    // Every outcome and every kind of capture is well represented, so no comparison is vacuous.
    expect(verdicts.valid).toBeGreaterThan(1000);
    expect(verdicts.invalid).toBeGreaterThan(1000);
    expect(verdicts.refused).toBeGreaterThan(20);
    for (const label of ['string', 'truncated string', 'number', 'true', 'false', 'null', 'object', 'array']) {
      expect(captured.get(label) ?? 0, label).toBeGreaterThan(50);
    }
  });

  it('agrees on every byte value in every grammatical position', () => {
    const templates = ['{"model":"a#b"}', '#{}', '{}#', '[1#]', '[1,#2]', '{"a"#:1}', '{"a":#1}', '-#1', '1#', '1.#5', '1e#5', 't#rue', '"\\#"', '"\\u00#0"', '{#"a":1}', '[#]'];
    for (const template of templates) {
      for (let b = 0; b < 256; b++) {
        const [before, after] = template.split('#') as [string, string];
        const body = Buffer.concat([bytes(before), Buffer.from([b]), bytes(after)]);
        const options = { maxStringBytes: 256, maxDepth: 512 };
        expectAgreesWithJsonParse(body, scanChunks(chunksOf(body, [1])), options);
        expectAgreesWithJsonParse(body, scanJson(body, CAPTURE), options);
      }
    }
  });

  it('finds a quote, backslash or control byte at every position and alignment of a long string', () => {
    for (const stop of ['"', '\\', '\n', '\u0000', '\u001f']) {
      for (let position = 0; position < 80; position++) {
        for (let misalign = 0; misalign < 4; misalign++) {
          const text = `{"model":"${'a'.repeat(position)}${stop}${'b'.repeat(90 - position)}"}`;
          const body = bytes(text);
          const options = { maxStringBytes: 256, maxDepth: 512 };
          expectAgreesWithJsonParse(body, scanChunks(chunksOf(body, [body.length], misalign)), options);
          expectAgreesWithJsonParse(body, scanChunks(chunksOf(body, [37, 5], misalign)), options);
        }
      }
    }
  });
});

describe('JsonScanner at chunk boundaries', () => {
  const allSplits = (body: Buffer, check: (result: ScanResult, split: number) => void) => {
    for (let split = 0; split <= body.length; split++) check(scanSplitAt(body, [split]), split);
    check(scanChunks(chunksOf(body, [1])), -1);
  };

  it('decodes every escape split anywhere', () => {
    for (const escape of [...ESCAPES, '\\u00e9', '\\u00E9', '\\uD83D\\uDE00', '\\ud83d\\ude00', '\\u0000', '\\uffff']) {
      const body = bytes(`{"model":"a${escape}b"}`);
      const expected = (JSON.parse(body.toString()) as { model: string }).model;
      allSplits(body, (result) => expect(field(result, 'model').value).toBe(expected));
    }
  });

  it('decodes multi-byte UTF-8 split anywhere, and invalid UTF-8 as Buffer#toString does', () => {
    const cases = [
      bytes('{"model":"é日🙂x"}'),
      Buffer.concat([bytes('{"model":"a'), Buffer.from([0xe2, 0x82]), bytes('\\u0041'), Buffer.from([0xf0, 0x9f, 0x98]), bytes('"}')]),
      Buffer.concat([bytes('{"model":"'), Buffer.from([0xed, 0xa0, 0x80, 0xc0, 0xaf, 0xff, 0x80]), bytes('"}')]),
    ];
    for (const body of cases) {
      const expected = (JSON.parse(body.toString()) as { model: string }).model;
      allSplits(body, (result) => expect(field(result, 'model').value).toBe(expected));
    }
  });

  it('reads numbers and literals split anywhere', () => {
    const body = bytes('{"max_tokens":-12.5e+3,"stream":false,"x":null,"messages":[true]}');
    allSplits(body, (result) => {
      expect(field(result, 'max_tokens')).toMatchObject({ kind: 'number', number: -12500, start: 14, end: 22 });
      expect(field(result, 'stream')).toMatchObject({ kind: 'false', start: 32, end: 37 });
      expect(field(result, 'messages')).toMatchObject({ kind: 'array', length: 1 });
    });
    for (const root of ['12', '-0.5e-7', '0', 'true', 'null']) {
      allSplits(bytes(root), (result) => expect(result).toMatchObject({ ok: true, rootKind: kindOf(JSON.parse(root)) }));
    }
  });

  it('matches keys split anywhere, escaped or not', () => {
    const body = bytes('{"mod\\u0065l":"a","x":{"model":1}}');
    allSplits(body, (result) => expect(field(result, 'model')).toMatchObject({ value: 'a', start: 14, end: 17 }));
  });

  it('reports absolute offsets for values that span chunks', () => {
    const text = `{"pad":"${'p'.repeat(100)}", "model" : "claude-sonnet-4-6" ,"messages":[{"role":"user","content":"${'c'.repeat(500)}"}]}`;
    const body = bytes(text);
    for (const size of [1, 3, 7, 64, 1000]) {
      const result = scanChunks(chunksOf(body, [size]));
      const model = field(result, 'model');
      expect(text.slice(model.start, model.end)).toBe('"claude-sonnet-4-6"');
      expect(model.value).toBe('claude-sonnet-4-6');
      const messages = field(result, 'messages');
      expect(messages.start).toBe(text.indexOf('[{'));
      expect(messages.end).toBe(text.length - 1);
      expect(messages.length).toBe(1);
    }
  });
});

describe('JsonScanner focused cases', () => {
  const rejects = (text: string | Buffer, message?: string | RegExp) => {
    const body = typeof text === 'string' ? bytes(text) : text;
    expect(parses(body).ok).toBe(false);
    const result = scanJson(body, CAPTURE);
    expect(result.ok).toBe(false);
    if (message !== undefined && !result.ok) expect(result.message).toMatch(message);
    return result;
  };
  const accepts = (text: string) => {
    const body = bytes(text);
    expect(parses(body).ok).toBe(true);
    const result = scanJson(body, CAPTURE);
    expect(result).toMatchObject({ ok: true });
    return result;
  };

  it('reads the fields of a Messages request', () => {
    const body = JSON.stringify({
      model: 'claude-sonnet-4-6',
      max_tokens: 1024,
      stream: true,
      system: 'Be brief.',
      messages: [{ role: 'user', content: 'Hello "world"\n' }, { role: 'assistant', content: 'Hi' }],
    });
    const result = accepts(body);
    expect(result).toMatchObject({ rootKind: 'object' });
    expect(fieldsOf(result).get('model')).toMatchObject({ kind: 'string', value: 'claude-sonnet-4-6' });
    expect(fieldsOf(result).get('max_tokens')).toMatchObject({ kind: 'number', number: 1024 });
    expect(fieldsOf(result).get('stream')).toMatchObject({ kind: 'true' });
    expect(fieldsOf(result).get('messages')).toMatchObject({ kind: 'array', length: 2 });
    expect([...fieldsOf(result).keys()].sort()).toEqual(['max_tokens', 'messages', 'model', 'stream']);
  });

  it('rejects a byte order mark, and accepts U+FEFF inside a string', () => {
    const result = rejects(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), bytes('{}')]), /byte order mark/);
    expect(result).toMatchObject({ offset: 0 });
    expect(field(accepts('{"model":"\ufeff"}'), 'model').value).toBe('\ufeff');
  });

  it('rejects raw control characters in strings, accepts DEL and escaped controls', () => {
    for (let c = 0; c < 0x20; c++) rejects(`"a${String.fromCharCode(c)}"`, /Unescaped control character 0x[0-9A-F]{2} in string at byte 2/);
    expect(field(accepts('{"model":"\u007f\\u0000\\u001f"}'), 'model').value).toBe('\u007f\u0000\u001f');
  });

  it('keeps lone surrogate escapes as JSON.parse does', () => {
    for (const escape of ['\\uD800', '\\udc00', '\\uDBFF\\u0041', '\\uDE00\\uD83D', '\\uD83D\\uD83D']) {
      const text = `{"model":"${escape}"}`;
      expect(field(accepts(text), 'model').value).toBe((JSON.parse(text) as { model: string }).model);
    }
  });

  it('matches captured keys by their decoded form', () => {
    expect(field(accepts('{"mod\\u0065l":"x"}'), 'model').value).toBe('x');
    expect(field(accepts('{"\\u006D\\u006f\\u0064\\u0065\\u006C":"x"}'), 'model').value).toBe('x');
    expect(field(accepts('{"max\\u005ftokens":5}'), 'max_tokens').number).toBe(5);
    // Near misses are other keys.
    expect(fieldsOf(accepts('{"Model":"x","model ":"y","mode":"z","modell":1,"mod\\u0000el":2}')).size).toBe(0);
  });

  it('rejects a duplicated captured root key (JSON.parse would take the last)', () => {
    for (const text of ['{"model":"a","model":"b"}', '{"model":"a","mod\\u0065l":"b"}', '{"stream":false,"x":1,"stream":true}', '{"messages":[],"messages":{}}']) {
      const body = bytes(text);
      expect(parses(body).ok).toBe(true);
      const result = scanJson(body, CAPTURE);
      expect(result).toMatchObject({ ok: false, message: expect.stringMatching(/^duplicate key "(model|stream|messages)" at byte \d+$/) });
    }
    // Where: at the second key.
    expect(scanJson(bytes('{"model":"a", "model":"b"}'), CAPTURE)).toMatchObject({ offset: 14 });
  });

  it('allows duplicates of other keys, and captured names below the root', () => {
    expect(fieldsOf(accepts('{"x":1,"x":2}')).size).toBe(0);
    const result = accepts('{"messages":[{"model":"a","model":"b"}],"x":{"model":1,"stream":2}}');
    expect([...fieldsOf(result).keys()]).toEqual(['messages']);
    expect(field(accepts('{"messages":{"a":1,"a":2,"b":3}}'), 'messages').length).toBe(3);
  });

  it('reports the root kind of non-object bodies, with no fields', () => {
    for (const [text, kind] of [['[{"model":"x"}]', 'array'], ['"model"', 'string'], ['-1', 'number'], ['true', 'true'], ['false', 'false'], [' null ', 'null'], ['{}', 'object']] as const) {
      const result = accepts(text);
      expect(result).toMatchObject({ ok: true, rootKind: kind });
      expect(fieldsOf(result).size).toBe(0);
    }
  });

  it('limits nesting to maxDepth (512 by default)', () => {
    const nested = (levels: number) => `${'['.repeat(levels)}${']'.repeat(levels)}`;
    accepts(nested(512));
    accepts(`{"messages":${nested(511)}}`);
    const tooDeep = bytes(nested(513));
    expect(parses(tooDeep).ok).toBe(true);
    expect(scanJson(tooDeep, CAPTURE)).toEqual({ ok: false, message: 'nested too deeply (more than 512 levels) at byte 512', offset: 512 });
    expect(scanJson(bytes(`{"a":${nested(512)}}`), CAPTURE)).toMatchObject({ ok: false, message: /nested too deeply/ });
    expect(scanJson(bytes('[[[{}]]]'), CAPTURE, { maxDepth: 4 })).toMatchObject({ ok: true });
    expect(scanJson(bytes('[[[{"a":[]}]]]'), CAPTURE, { maxDepth: 4 })).toMatchObject({ ok: false, message: /more than 4 levels/ });
    // A deep stack grows past its first allocation.
    expect(scanJson(bytes(nested(5000)), CAPTURE, { maxDepth: 5000 })).toMatchObject({ ok: true });
  });

  it('reads numbers as JSON.parse does', () => {
    const number = (text: string) => field(accepts(`{"max_tokens":${text}}`), 'max_tokens').number;
    expect(Object.is(number('-0'), -0)).toBe(true);
    expect(number('1e400')).toBe(Infinity);
    expect(number('-1e400')).toBe(-Infinity);
    expect(number('1e-400')).toBe(0);
    expect(number('0.1E+2')).toBe(10);
    expect(number('12345678901234567890123')).toBe(12345678901234567890123);
    expect(number('9007199254740993')).toBe(JSON.parse('9007199254740993'));
    expect(number(`1${'0'.repeat(63)}`)).toBe(1e63);
    // Valid, but longer than 64 bytes: not converted.
    const long = field(accepts(`{"max_tokens":1${'0'.repeat(64)}}`), 'max_tokens');
    expect(long).toMatchObject({ kind: 'number', start: 14, end: 79 });
    expect(long.number).toBeUndefined();
  });

  it('rejects malformed numbers', () => {
    rejects('01', /Leading zero in number at byte 0/);
    rejects('-01', /Leading zero/);
    rejects('[00]', /Leading zero/);
    for (const text of ['-', '+1', '.5', '1.', '1.e5', '1e', '1e+', '-e5', '0x10', 'Infinity', '-Infinity', 'NaN', '1_000', '[1.]', '{"a":-}', '- 1']) rejects(text);
  });

  it('rejects empty and whitespace-only bodies', () => {
    expect(rejects('')).toEqual({ ok: false, message: 'Unexpected end of JSON input (empty body)', offset: 0 });
    expect(rejects(' \t\r\n')).toEqual({ ok: false, message: 'Unexpected end of JSON input', offset: 4 });
    rejects(Buffer.from([0x0c])); // form feed is not JSON whitespace
    rejects(Buffer.from([0xc2, 0xa0])); // nor is NO-BREAK SPACE
  });

  it('rejects anything but whitespace after the root value', () => {
    expect(rejects('{} x')).toEqual({ ok: false, message: "Unexpected character 'x' after the JSON value at byte 3", offset: 3 });
    for (const text of ['{}{}', '1 2', '[] ]', 'nullx', '"a""b"', '{}\u0000', 'true,']) rejects(text, /after the JSON value|Unexpected/);
    accepts(' {} \n\t\r');
  });

  it('rejects truncated bodies, wherever they end', () => {
    const text = '{"model":"a\\u00e9","max_tokens":-1.5e3,"stream":true,"messages":[{"a":null}]}';
    for (let end = 0; end < text.length; end++) {
      const result = rejects(text.slice(0, end));
      expect(result).toMatchObject({ ok: false, message: /^Unexpected end of JSON input/, offset: end });
    }
  });

  it('rejects structural mistakes with a short message saying what and where', () => {
    expect(rejects('{"a":1,}')).toEqual({ ok: false, message: "Unexpected character '}' at byte 7 (expected a key)", offset: 7 });
    expect(rejects('[1,]')).toEqual({ ok: false, message: "Unexpected character ']' at byte 3", offset: 3 });
    expect(rejects('{"a" 1}')).toEqual({ ok: false, message: "Unexpected character '1' at byte 5 (expected ':')", offset: 5 });
    expect(rejects('[1}')).toEqual({ ok: false, message: "Unexpected character '}' at byte 2 (expected ',' or ']')", offset: 2 });
    expect(rejects('{"a":1]')).toMatchObject({ offset: 6 });
    expect(rejects('"\\x"')).toEqual({ ok: false, message: "Bad escape '\\x' in string at byte 1", offset: 1 });
    expect(rejects('"\\u12G4"')).toMatchObject({ message: /^Bad Unicode escape in string: character 'G' at byte 5$/ });
    expect(rejects('tru e')).toMatchObject({ offset: 3, message: /expected 'true'/ });
    expect(rejects(Buffer.from([0x5b, 0xff, 0x5d]))).toMatchObject({ message: 'Unexpected byte 0xFF at byte 1' });
    expect(rejects("{'a':1}")).toMatchObject({ message: "Unexpected character ''' at byte 1 (expected a key)" });
    // However long the body, a message echoes at most a byte of it.
    const long = rejects(`{"model":"${'z'.repeat(10_000)}\u0001"}`);
    expect(long).toMatchObject({ message: 'Unescaped control character 0x01 in string at byte 10010' });
  });

  it('truncates long captured strings to a prefix cut at a character boundary', () => {
    const value = `${'a'.repeat(250)}日本語🙂${'z'.repeat(100)}`;
    const result = accepts(JSON.stringify({ model: value }));
    const model = field(result, 'model');
    expect(model).toMatchObject({ kind: 'string', truncated: true, start: 9 });
    expect(model.value).toBeUndefined();
    // 256 raw bytes: 250 'a', two 3-byte characters; the third is cut and dropped, not garbled.
    expect(model.prefix).toBe(`${'a'.repeat(250)}日本`);
    expect(model.end).toBe(9 + Buffer.byteLength(JSON.stringify(value)));

    // Exactly at the limit the value is kept whole; one byte more and it is truncated.
    expect(field(accepts(`{"model":"${'b'.repeat(256)}"}`), 'model').value).toBe('b'.repeat(256));
    expect(field(accepts(`{"model":"${'b'.repeat(257)}"}`), 'model')).toMatchObject({ truncated: true, prefix: 'b'.repeat(256) });
    // An escape cut by the limit is dropped.
    const cutEscape = field(scanJson(bytes(`{"model":"abc\\u00e9def"}`), CAPTURE, { maxStringBytes: 6 }), 'model');
    expect(cutEscape).toMatchObject({ truncated: true, prefix: 'abc' });
    expect(field(scanJson(bytes(`{"model":"ab\\ncd"}`), CAPTURE, { maxStringBytes: 4 }), 'model').prefix).toBe('ab\n');
    // Strings are not captured at all with maxStringBytes 0, but still validated and located.
    expect(field(scanJson(bytes('{"model":"x"}'), CAPTURE, { maxStringBytes: 0 }), 'model')).toMatchObject({ truncated: true, prefix: '', start: 9, end: 12 });
    expect(field(scanJson(bytes('{"model":""}'), CAPTURE, { maxStringBytes: 0 }), 'model')).toMatchObject({ value: '' });
  });

  it('ignores pushes after a failure, counts bytes, and answers end() the same every time', () => {
    const scanner = new JsonScanner({ capture: CAPTURE });
    expect(scanner.push(bytes('{"model"'))).toBe(true);
    expect(scanner.push(bytes(':x'))).toBe(false);
    expect(scanner.push(bytes('"ok"}'))).toBe(false);
    expect(scanner.bytes).toBe(15);
    const result = scanner.end();
    expect(result).toEqual({ ok: false, message: "Unexpected character 'x' at byte 9", offset: 9 });
    expect(scanner.end()).toBe(result);
    expect(() => scanner.push(bytes(' '))).toThrow(/after end/);
  });

  it('treats empty chunks and a capture list with no names as no-ops', () => {
    const scanner = new JsonScanner({ capture: [] });
    for (const chunk of ['', '{"model"', '', ':"x"}', '']) expect(scanner.push(bytes(chunk))).toBe(true);
    expect(scanner.end()).toEqual({ ok: true, rootKind: 'object', fields: new Map() });
  });

  it('validates its options', () => {
    expect(() => new JsonScanner({ capture: [], maxDepth: 0 })).toThrow(RangeError);
    expect(() => new JsonScanner({ capture: [], maxStringBytes: -1 })).toThrow(RangeError);
  });
});
