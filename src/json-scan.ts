/**
 * Incremental JSON validator and root-field extractor for request bodies.
 *
 * Why: the gateway must know that a body is valid JSON and read a few root fields (model,
 * max_tokens, stream, messages) before it forwards the body. JSON.parse on a 32 MiB body blocks
 * the event loop for seconds and materialises every value. JsonScanner is a byte-level state
 * machine fed each chunk as it comes off the socket: the work of one `push` is bounded by the
 * chunk, memory is O(nesting depth) plus a few bounded captures, and no value that is not
 * captured is ever built.
 *
 * Contract (a security boundary): it accepts exactly what `JSON.parse(buffer.toString('utf8'))`
 * accepts, with two deliberate refusals:
 *   - nesting deeper than `maxDepth`;
 *   - a captured root key that appears twice: the gateway and the upstream could resolve the
 *     duplicate differently (a model-restriction bypass). Duplicates of other keys are allowed,
 *     as JSON.parse allows them.
 * Keys are matched in their decoded form, so `"mod\u0065l"` is the key `model`.
 *
 * Shape: one `push` loop over `switch (state)`; the hot state lives in locals and is written back
 * at the end of the chunk, so every state resumes at any byte boundary (inside a string, an
 * escape, a \u sequence, a UTF-8 character, a number, a literal). Captured strings and numbers
 * are kept as raw bytes (bounded) and decoded once at their end. Raw text between escapes is
 * split only at ASCII bytes (`\`, `"`), where a UTF-8 decoder always resynchronises, so decoding
 * run by run with Buffer#toString yields the same U+FFFD replacements as decoding the whole body.
 */
import { Buffer } from 'node:buffer';

export type JsonKind = 'string' | 'number' | 'true' | 'false' | 'null' | 'object' | 'array';

export interface ScannedField {
  kind: JsonKind;
  /** Absolute byte offsets of the value in the whole body: [start, end). Strings include their quotes. */
  start: number;
  end: number;
  /**
   * Strings: the decoded value (exactly what JSON.parse gives) when the raw text between the
   * quotes is at most maxStringBytes; otherwise undefined, `truncated` is true and `prefix` holds
   * the decoded first maxStringBytes raw bytes (cut at a character boundary), for an error echo.
   */
  value?: string;
  truncated?: boolean;
  prefix?: string;
  /** Numbers: Number(text), which is what JSON.parse gives; undefined when the raw number is over 64 bytes. */
  number?: number;
  /** Arrays: number of elements. Objects: number of members as written (duplicates counted). */
  length?: number;
}

export type ScanResult =
  | { ok: true; rootKind: JsonKind; fields: Map<string, ScannedField> }
  | { ok: false; message: string; offset: number };

export interface JsonScannerOptions {
  /** Root-object keys whose values are reported in `fields` (and must not appear twice). */
  capture: readonly string[];
  /** Longest raw string value decoded in full; longer ones are truncated. Default 256. */
  maxStringBytes?: number;
  /** Deepest nesting accepted; the root container is level 1. Default 512. */
  maxDepth?: number;
}

export const DEFAULT_MAX_STRING_BYTES = 256;
export const DEFAULT_MAX_DEPTH = 512;
/** Longest raw number converted to `ScannedField.number`. */
const MAX_NUMBER_BYTES = 64;
/** The most raw bytes one UTF-16 code unit of a key can take (`\uXXXX`); bounds key captures. */
const MAX_RAW_BYTES_PER_CODE_UNIT = 6;
/** String runs longer than this are scanned a word at a time; shorter ones (keys, small values) byte by byte. */
const WORDWISE_AFTER = 16;

// Scanner states. ROOT, VALUE and ARRAY_FIRST expect a value; OBJECT_FIRST and KEY a key.
const S_ROOT = 0;
const S_VALUE = 1;
const S_ARRAY_FIRST = 2;
const S_OBJECT_FIRST = 3;
const S_KEY = 4;
const S_COLON = 5;
const S_AFTER_VALUE = 6;
const S_AFTER_ROOT = 7;
const S_STRING = 8;
const S_ESCAPE = 9;
const S_UNICODE = 10;
const S_NUMBER = 11;
const S_LITERAL = 12;
const S_FAILED = 13;

// Number sub-states: below N_ZERO a number cannot end yet, from N_ZERO on it can.
const N_START = 0;
const N_MINUS = 1;
const N_DOT = 2;
const N_EXP = 3;
const N_EXP_SIGN = 4;
const N_ZERO = 5;
const N_INT = 6;
const N_FRAC = 7;
const N_EXP_DIGITS = 8;

// What the capture buffer is collecting.
const CAP_NONE = 0;
const CAP_KEY = 1;
const CAP_STRING = 2;
const CAP_NUMBER = 3;

// Container types on the nesting stack.
const T_OBJECT = 1;
const T_ARRAY = 2;

const LITERAL_TRUE = Buffer.from('true');
const LITERAL_FALSE = Buffer.from('false');
const LITERAL_NULL = Buffer.from('null');

/** The character each single-character escape stands for, by the byte after the backslash. */
const SIMPLE_ESCAPES: ReadonlyMap<number, string> = new Map([
  [0x22, '"'],
  [0x5c, '\\'],
  [0x2f, '/'],
  [0x62, '\b'],
  [0x66, '\f'],
  [0x6e, '\n'],
  [0x72, '\r'],
  [0x74, '\t'],
]);

/** 1 for the bytes that may follow a backslash on their own (all escapes but \u). */
const SIMPLE_ESCAPE = new Uint8Array(256);
for (const c of SIMPLE_ESCAPES.keys()) SIMPLE_ESCAPE[c] = 1;

/** Hex digit value by byte, -1 for anything else. */
const HEX_VALUE = new Int8Array(256).fill(-1);
for (let c = 0; c < 10; c++) HEX_VALUE[0x30 + c] = c;
for (let c = 0; c < 6; c++) HEX_VALUE[0x41 + c] = HEX_VALUE[0x61 + c] = 10 + c;

export class JsonScanner {
  readonly #maxStringBytes: number;
  readonly #maxDepth: number;
  readonly #captureNames: ReadonlySet<string>;
  /** UTF-8 bytes of the capture names, for comparing plain ASCII keys without decoding them. */
  readonly #captureBytes: { name: string; bytes: Buffer }[];
  readonly #maxKeyBytes: number;

  #bytes = 0;
  #state = S_ROOT;
  #depth = 0;
  /** Container type by level (index depth-1); grows by doubling up to maxDepth. */
  #stack: Uint8Array;
  #inKey = false;
  #numState = N_START;
  #hexLeft = 0;
  #literal: Buffer = LITERAL_TRUE;
  #literalPos = 0;
  #rootKind: JsonKind = 'null';
  #error: { message: string; offset: number } | null = null;
  #result: ScanResult | null = null;

  /** Word view of the chunk being pushed, built on its first long string run (see #plainRunEnd). */
  #wordsChunk: Uint8Array | null = null;
  #words: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  #wordsFirst = 0;

  readonly #fields = new Map<string, ScannedField>();
  /** Captured root key whose value comes next. */
  #pendingName: string | null = null;
  #pendingKeyStart = 0;
  /** Field whose value is being scanned (only values of root members). */
  #field: ScannedField | null = null;
  /** Commas seen directly inside a captured container: its length is that + 1 unless empty. */
  #fieldCommas = 0;
  #capMode = CAP_NONE;
  readonly #capBuf: Buffer;
  #capLen = 0;
  #capLimit = 0;
  #capOverflow = false;

  constructor(options: JsonScannerOptions) {
    const maxStringBytes = options.maxStringBytes ?? DEFAULT_MAX_STRING_BYTES;
    const maxDepth = options.maxDepth ?? DEFAULT_MAX_DEPTH;
    if (!Number.isSafeInteger(maxStringBytes) || maxStringBytes < 0) throw new RangeError('maxStringBytes must be an integer >= 0');
    if (!Number.isSafeInteger(maxDepth) || maxDepth < 1) throw new RangeError('maxDepth must be an integer >= 1');
    this.#maxStringBytes = maxStringBytes;
    this.#maxDepth = maxDepth;
    this.#captureNames = new Set(options.capture);
    this.#captureBytes = [...this.#captureNames].map((name) => ({ name, bytes: Buffer.from(name, 'utf8') }));
    let longestName = 0;
    for (const name of this.#captureNames) longestName = Math.max(longestName, name.length);
    this.#maxKeyBytes = longestName * MAX_RAW_BYTES_PER_CODE_UNIT;
    this.#capBuf = Buffer.alloc(Math.max(maxStringBytes, this.#maxKeyBytes, MAX_NUMBER_BYTES));
    this.#stack = new Uint8Array(Math.min(maxDepth, 1024));
  }

  /** Total bytes pushed so far. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Feeds the next chunk; returns false once the body is known to be invalid (later pushes are ignored). */
  push(chunk: Uint8Array): boolean {
    if (this.#result !== null) throw new Error('JsonScanner.push called after end()');
    const n = chunk.length;
    const base = this.#bytes;
    this.#bytes = base + n;
    if (this.#state === S_FAILED) return false;
    let state = this.#state;
    let depth = this.#depth;
    let stack = this.#stack;
    let i = 0;

    loop: while (i < n) {
      switch (state) {
        case S_STRING: {
          // The bulk of real bodies: plain runs, and one-character escapes (\n, \") met on the way.
          let c = 0;
          for (;;) {
            const runStart = i;
            i = this.#plainRunEnd(chunk, i);
            if (this.#capMode !== CAP_NONE && i > runStart) this.#capture(chunk, runStart, i);
            if (i === n) break loop;
            c = chunk[i]!;
            if (c !== 0x5c || i + 1 === n || this.#capMode !== CAP_NONE || SIMPLE_ESCAPE[chunk[i + 1]!] !== 1) break;
            i += 2;
          }
          i++;
          if (c === 0x22) {
            if (this.#inKey) {
              state = S_COLON;
              if (this.#capMode === CAP_KEY && !this.#resolveKey()) {
                state = S_FAILED;
                break loop;
              }
              this.#capMode = CAP_NONE;
            } else {
              // A value ended.
              state = depth === 0 ? S_AFTER_ROOT : S_AFTER_VALUE;
              if (depth === 1 && this.#field !== null) this.#finishField(base + i, false);
            }
          } else if (c === 0x5c) {
            state = S_ESCAPE;
            if (this.#capMode !== CAP_NONE) this.#capture(chunk, i - 1, i);
          } else {
            this.#fail(`Unescaped control character ${hex(c)} in string at byte ${base + i - 1}`, base + i - 1);
            state = S_FAILED;
            break loop;
          }
          break;
        }

        case S_ROOT:
        case S_VALUE:
        case S_ARRAY_FIRST: {
          let c = chunk[i]!;
          while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
            if (++i === n) break loop;
            c = chunk[i]!;
          }
          const at = base + i;
          if (c === 0x5d && state === S_ARRAY_FIRST) {
            i++;
            depth--;
            state = depth === 0 ? S_AFTER_ROOT : S_AFTER_VALUE;
            if (depth === 1 && this.#field !== null) this.#finishField(base + i, true);
            break;
          }
          const kind = kindAt(c);
          if (kind === null) {
            this.#fail(
              at === 0 && c === 0xef ? 'Unexpected byte order mark (BOM) at byte 0' : `Unexpected ${describeByte(c)} at byte ${at}`,
              at,
            );
            state = S_FAILED;
            break loop;
          }
          if (state === S_ROOT) this.#rootKind = kind;
          if (this.#pendingName !== null) this.#beginField(kind, at);
          if (c === 0x22) {
            i++;
            this.#inKey = false;
            state = S_STRING;
          } else if (c === 0x7b || c === 0x5b) {
            if (depth === this.#maxDepth) {
              this.#fail(`nested too deeply (more than ${this.#maxDepth} levels) at byte ${at}`, at);
              state = S_FAILED;
              break loop;
            }
            if (depth === stack.length) stack = this.#growStack();
            stack[depth++] = c === 0x7b ? T_OBJECT : T_ARRAY;
            i++;
            state = c === 0x7b ? S_OBJECT_FIRST : S_ARRAY_FIRST;
          } else if (kind === 'number') {
            // Not consumed: the number state reads (and captures) its first byte itself.
            this.#numState = N_START;
            state = S_NUMBER;
          } else {
            this.#literal = kind === 'true' ? LITERAL_TRUE : kind === 'false' ? LITERAL_FALSE : LITERAL_NULL;
            this.#literalPos = 1;
            i++;
            state = S_LITERAL;
          }
          break;
        }

        case S_OBJECT_FIRST:
        case S_KEY: {
          let c = chunk[i]!;
          while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
            if (++i === n) break loop;
            c = chunk[i]!;
          }
          if (c === 0x22) {
            if (depth === 1) this.#beginKey(base + i);
            i++;
            this.#inKey = true;
            state = S_STRING;
          } else if (c === 0x7d && state === S_OBJECT_FIRST) {
            i++;
            depth--;
            state = depth === 0 ? S_AFTER_ROOT : S_AFTER_VALUE;
            if (depth === 1 && this.#field !== null) this.#finishField(base + i, true);
          } else {
            this.#fail(`Unexpected ${describeByte(c)} at byte ${base + i} (expected a key)`, base + i);
            state = S_FAILED;
            break loop;
          }
          break;
        }

        case S_COLON: {
          let c = chunk[i]!;
          while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
            if (++i === n) break loop;
            c = chunk[i]!;
          }
          if (c !== 0x3a) {
            this.#fail(`Unexpected ${describeByte(c)} at byte ${base + i} (expected ':')`, base + i);
            state = S_FAILED;
            break loop;
          }
          i++;
          state = S_VALUE;
          break;
        }

        case S_AFTER_VALUE: {
          let c = chunk[i]!;
          while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
            if (++i === n) break loop;
            c = chunk[i]!;
          }
          const top = stack[depth - 1];
          if (c === 0x2c) {
            i++;
            if (depth === 2 && this.#field !== null) this.#fieldCommas++;
            state = top === T_OBJECT ? S_KEY : S_VALUE;
          } else if ((c === 0x7d && top === T_OBJECT) || (c === 0x5d && top === T_ARRAY)) {
            i++;
            depth--;
            state = depth === 0 ? S_AFTER_ROOT : S_AFTER_VALUE;
            if (depth === 1 && this.#field !== null) this.#finishField(base + i, false);
          } else {
            const expected = top === T_OBJECT ? "',' or '}'" : "',' or ']'";
            this.#fail(`Unexpected ${describeByte(c)} at byte ${base + i} (expected ${expected})`, base + i);
            state = S_FAILED;
            break loop;
          }
          break;
        }

        case S_AFTER_ROOT: {
          let c = chunk[i]!;
          while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
            if (++i === n) break loop;
            c = chunk[i]!;
          }
          this.#fail(`Unexpected ${describeByte(c)} after the JSON value at byte ${base + i}`, base + i);
          state = S_FAILED;
          break loop;
        }

        case S_ESCAPE: {
          const c = chunk[i]!;
          if (c === 0x75) {
            this.#hexLeft = 4;
            state = S_UNICODE;
          } else if (SIMPLE_ESCAPE[c] === 1) {
            state = S_STRING;
          } else {
            this.#fail(`Bad escape '\\${printable(c)}' in string at byte ${base + i - 1}`, base + i - 1);
            state = S_FAILED;
            break loop;
          }
          if (this.#capMode !== CAP_NONE) this.#capture(chunk, i, i + 1);
          i++;
          break;
        }

        case S_UNICODE: {
          const runStart = i;
          let left = this.#hexLeft;
          while (left > 0 && i < n) {
            if (HEX_VALUE[chunk[i]!]! < 0) {
              this.#fail(`Bad Unicode escape in string: ${describeByte(chunk[i]!)} at byte ${base + i}`, base + i);
              state = S_FAILED;
              break loop;
            }
            i++;
            left--;
          }
          if (this.#capMode !== CAP_NONE) this.#capture(chunk, runStart, i);
          this.#hexLeft = left;
          if (left === 0) state = S_STRING;
          break;
        }

        case S_NUMBER: {
          const runStart = i;
          let ns = this.#numState;
          let ended = false;
          while (i < n) {
            const c = chunk[i]!;
            if (c >= 0x30 && c <= 0x39) {
              if (ns === N_START || ns === N_MINUS) ns = c === 0x30 ? N_ZERO : N_INT;
              else if (ns === N_ZERO) {
                this.#fail(`Leading zero in number at byte ${base + i - 1}`, base + i - 1);
                state = S_FAILED;
                break loop;
              } else if (ns === N_DOT) ns = N_FRAC;
              else if (ns === N_EXP || ns === N_EXP_SIGN) ns = N_EXP_DIGITS;
              i++;
            } else if (c === 0x2d && ns === N_START) {
              ns = N_MINUS;
              i++;
            } else if (c === 0x2e && (ns === N_ZERO || ns === N_INT)) {
              ns = N_DOT;
              i++;
            } else if ((c === 0x65 || c === 0x45) && (ns === N_ZERO || ns === N_INT || ns === N_FRAC)) {
              ns = N_EXP;
              i++;
            } else if ((c === 0x2b || c === 0x2d) && ns === N_EXP) {
              ns = N_EXP_SIGN;
              i++;
            } else if (ns >= N_ZERO) {
              ended = true; // c is not consumed: it belongs to what follows the number
              break;
            } else {
              this.#fail(`Unexpected ${describeByte(c)} in number at byte ${base + i}`, base + i);
              state = S_FAILED;
              break loop;
            }
          }
          if (this.#capMode === CAP_NUMBER && i > runStart) this.#capture(chunk, runStart, i);
          this.#numState = ns;
          if (ended) {
            state = depth === 0 ? S_AFTER_ROOT : S_AFTER_VALUE;
            if (depth === 1 && this.#field !== null) this.#finishField(base + i, false);
          }
          break;
        }

        case S_LITERAL: {
          const literal = this.#literal;
          let pos = this.#literalPos;
          while (pos < literal.length && i < n) {
            if (chunk[i] !== literal[pos]) {
              this.#fail(`Unexpected ${describeByte(chunk[i]!)} at byte ${base + i} (expected '${literal.toString()}')`, base + i);
              state = S_FAILED;
              break loop;
            }
            i++;
            pos++;
          }
          this.#literalPos = pos;
          if (pos === literal.length) {
            state = depth === 0 ? S_AFTER_ROOT : S_AFTER_VALUE;
            if (depth === 1 && this.#field !== null) this.#finishField(base + i, false);
          }
          break;
        }

        default:
          break loop; // S_FAILED: set only together with `break loop`, never reached
      }
    }

    this.#state = state;
    this.#depth = depth;
    this.#wordsChunk = null; // do not keep the caller's chunk alive
    return state !== S_FAILED;
  }

  /** Call after the last chunk; returns the same result on every later call. */
  end(): ScanResult {
    if (this.#result !== null) return this.#result;
    let state = this.#state;
    if (state === S_NUMBER && this.#numState >= N_ZERO && this.#depth === 0) state = S_AFTER_ROOT;
    if (state === S_AFTER_ROOT) {
      this.#result = { ok: true, rootKind: this.#rootKind, fields: this.#fields };
    } else {
      const error = this.#error ?? {
        message: this.#bytes === 0 ? 'Unexpected end of JSON input (empty body)' : 'Unexpected end of JSON input',
        offset: this.#bytes,
      };
      this.#result = { ok: false, ...error };
    }
    return this.#result;
  }

  /**
   * Index of the first byte at or after `from` that ends a plain run in a string (`"`, `\`, a
   * control byte), or chunk.length. Long runs (prompt text) are tested four bytes at a time:
   * for a 32-bit word x, `(x - 0x20202020) & ~x & 0x80808080` is non-zero exactly when some byte
   * is below 0x20, and the same test on x XOR 0x22222222 (0x5C5C5C5C) with 0x01010101 finds a
   * quote (backslash). A flagged word is then re-read byte by byte, so the tests need not say which
   * byte it was. Byte order does not matter.
   */
  #plainRunEnd(chunk: Uint8Array, from: number): number {
    const n = chunk.length;
    let i = from;
    const bytewiseEnd = n - from > WORDWISE_AFTER ? from + WORDWISE_AFTER : n;
    for (; i < bytewiseEnd; i++) {
      const c = chunk[i]!;
      if (c === 0x22 || c === 0x5c || c < 0x20) return i;
    }
    if (i === n) return n;
    if (this.#wordsChunk !== chunk) {
      // Whole aligned words of the chunk; words[0] is chunk[first].
      const first = (4 - (chunk.byteOffset & 3)) & 3;
      this.#words = new Uint32Array(chunk.buffer, chunk.byteOffset + first, (n - first) >> 2);
      this.#wordsFirst = first;
      this.#wordsChunk = chunk;
    }
    const words = this.#words;
    const first = this.#wordsFirst;
    let w = (i - first + 3) >> 2;
    for (const wordStart = first + (w << 2); i < wordStart; i++) {
      const c = chunk[i]!;
      if (c === 0x22 || c === 0x5c || c < 0x20) return i;
    }
    for (const count = words.length; w < count; w++) {
      const x = words[w]!;
      const quote = x ^ 0x22222222;
      const backslash = x ^ 0x5c5c5c5c;
      if ((((x - 0x20202020) & ~x) | ((quote - 0x01010101) & ~quote) | ((backslash - 0x01010101) & ~backslash)) & 0x80808080) break;
    }
    for (i = first + (w << 2); i < n; i++) {
      const c = chunk[i]!;
      if (c === 0x22 || c === 0x5c || c < 0x20) return i;
    }
    return n;
  }

  #fail(message: string, offset: number): void {
    this.#error = { message, offset };
  }

  #growStack(): Uint8Array {
    const grown = new Uint8Array(Math.min(this.#stack.length * 2, this.#maxDepth));
    grown.set(this.#stack);
    this.#stack = grown;
    return grown;
  }

  /** A root key opens at `at` (its quote): collect its raw bytes, if it could be a captured name. */
  #beginKey(at: number): void {
    if (this.#captureBytes.length === 0) return;
    this.#pendingKeyStart = at;
    this.#capMode = CAP_KEY;
    this.#capLen = 0;
    this.#capLimit = this.#maxKeyBytes;
    this.#capOverflow = false;
  }

  /** A root key closed: remember it if captured. False if it duplicates a captured key. */
  #resolveKey(): boolean {
    this.#pendingName = null;
    if (this.#capOverflow) return true;
    const raw = this.#capBuf;
    const length = this.#capLen;
    let plain = true;
    for (let k = 0; k < length; k++) {
      const b = raw[k]!;
      if (b === 0x5c || b >= 0x80) {
        plain = false;
        break;
      }
    }
    let name: string | null = null;
    if (plain) {
      for (const candidate of this.#captureBytes) {
        if (candidate.bytes.length === length && raw.compare(candidate.bytes, 0, length, 0, length) === 0) {
          name = candidate.name;
          break;
        }
      }
    } else {
      const decoded = decodeStringBody(raw, length, false);
      if (this.#captureNames.has(decoded)) name = decoded;
    }
    if (name === null) return true;
    if (this.#fields.has(name)) {
      const shown = name.length > 32 ? `${name.slice(0, 32)}…` : name;
      this.#fail(`duplicate key ${JSON.stringify(shown)} at byte ${this.#pendingKeyStart}`, this.#pendingKeyStart);
      return false;
    }
    this.#pendingName = name;
    return true;
  }

  /** The value of a captured root key starts at `at`. */
  #beginField(kind: JsonKind, at: number): void {
    const field: ScannedField = { kind, start: at, end: at };
    this.#fields.set(this.#pendingName!, field);
    this.#pendingName = null;
    this.#field = field;
    this.#fieldCommas = 0;
    this.#capLen = 0;
    this.#capOverflow = false;
    if (kind === 'string') {
      this.#capMode = CAP_STRING;
      this.#capLimit = this.#maxStringBytes;
    } else if (kind === 'number') {
      this.#capMode = CAP_NUMBER;
      this.#capLimit = MAX_NUMBER_BYTES;
    } else {
      this.#capMode = CAP_NONE;
    }
  }

  /** The captured value ended just before absolute offset `end`. */
  #finishField(end: number, empty: boolean): void {
    const field = this.#field!;
    field.end = end;
    const raw = this.#capBuf;
    if (field.kind === 'string') {
      if (this.#capOverflow) {
        field.truncated = true;
        field.prefix = decodeStringBody(raw, this.#capLen, true);
      } else {
        field.value = decodeStringBody(raw, this.#capLen, false);
      }
    } else if (field.kind === 'number') {
      if (!this.#capOverflow) field.number = Number(raw.toString('latin1', 0, this.#capLen));
    } else if (field.kind === 'object' || field.kind === 'array') {
      field.length = empty ? 0 : this.#fieldCommas + 1;
    }
    this.#field = null;
    this.#capMode = CAP_NONE;
  }

  /** Appends chunk[from, to) to the capture buffer, up to its limit. */
  #capture(chunk: Uint8Array, from: number, to: number): void {
    const raw = this.#capBuf;
    let length = this.#capLen;
    const stop = Math.min(to, from + (this.#capLimit - length));
    if (stop < to) this.#capOverflow = true;
    for (let k = from; k < stop; k++) raw[length++] = chunk[k]!;
    this.#capLen = length;
  }
}

/** Scans a whole body at once (tests, small bodies); a large body is better pushed chunk by chunk. */
export function scanJson(
  body: Uint8Array,
  capture: readonly string[],
  options: Omit<JsonScannerOptions, 'capture'> = {},
): ScanResult {
  const scanner = new JsonScanner({ ...options, capture });
  scanner.push(body);
  return scanner.end();
}

/** The kind of value a byte starts, or null if no value starts with it. */
function kindAt(c: number): JsonKind | null {
  if (c === 0x22) return 'string';
  if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return 'number';
  if (c === 0x7b) return 'object';
  if (c === 0x5b) return 'array';
  if (c === 0x74) return 'true';
  if (c === 0x66) return 'false';
  if (c === 0x6e) return 'null';
  return null;
}

/**
 * Decodes the raw bytes between a string's quotes (already validated) as JSON.parse would.
 * `partial`: the bytes are a prefix cut anywhere; drop an unfinished escape or UTF-8 character.
 */
function decodeStringBody(raw: Buffer, length: number, partial: boolean): string {
  let out = '';
  let segmentStart = 0;
  let k = 0;
  while (k < length) {
    if (raw[k] !== 0x5c) {
      k++;
      continue;
    }
    if (k > segmentStart) out += raw.toString('utf8', segmentStart, k);
    const escaped = raw[k + 1];
    if (escaped === undefined || k + 1 >= length) return out;
    if (escaped === 0x75) {
      if (k + 6 > length) return out;
      const unit =
        (HEX_VALUE[raw[k + 2]!]! << 12) | (HEX_VALUE[raw[k + 3]!]! << 8) | (HEX_VALUE[raw[k + 4]!]! << 4) | HEX_VALUE[raw[k + 5]!]!;
      out += String.fromCharCode(unit);
      k += 6;
    } else {
      out += SIMPLE_ESCAPES.get(escaped)!;
      k += 2;
    }
    segmentStart = k;
  }
  if (segmentStart < length) {
    out += raw.toString('utf8', segmentStart, partial ? completeUtf8End(raw, segmentStart, length) : length);
  }
  return out;
}

/** `end`, moved back before a multi-byte UTF-8 character that the cut at `end` left unfinished. */
function completeUtf8End(raw: Buffer, start: number, end: number): number {
  for (let k = end - 1; k >= start && k >= end - 4; k--) {
    const b = raw[k]!;
    if ((b & 0xc0) === 0x80) continue; // continuation byte: keep looking for the lead byte
    if (b < 0xc0) return end; // ASCII: nothing unfinished
    const needed = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2;
    return end - k < needed ? k : end;
  }
  return end;
}

function hex(c: number): string {
  return `0x${c.toString(16).toUpperCase().padStart(2, '0')}`;
}

function printable(c: number): string {
  return c >= 0x20 && c <= 0x7e ? String.fromCharCode(c) : hex(c);
}

/** A byte for an error message: `character 'x'` when printable ASCII, else its hex value. */
function describeByte(c: number): string {
  if (c >= 0x20 && c <= 0x7e) return `character '${String.fromCharCode(c)}'`;
  if (c < 0x20 || c === 0x7f) return `control character ${hex(c)}`;
  return `byte ${hex(c)}`;
}
