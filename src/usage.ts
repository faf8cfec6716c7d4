/**
 * Token usage: reading it from upstream responses (JSON or SSE, as the bytes pass through) and
 * recording it durably without holding up the request. Records queue in memory and are written
 * in one transaction per flush; `close()` writes whatever is left, so a clean shutdown loses
 * nothing. A failed write keeps the batch queued for the next flush.
 */
import type { Config } from './config.ts';
import type { UsageRecord, UsageStore } from './store/types.ts';

export interface TokenUsage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
}

export function emptyUsage(): TokenUsage {
  return { input_tokens: 0, output_tokens: 0, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 };
}

const USAGE_FIELDS = ['input_tokens', 'output_tokens', 'cache_creation_input_tokens', 'cache_read_input_tokens'] as const;

/** Copies the numeric usage fields that `source` carries onto `target` (upstream counts are cumulative). */
export function mergeUsage(target: TokenUsage, source: unknown): void {
  if (!source || typeof source !== 'object') return;
  const fields = source as Record<string, unknown>;
  for (const field of USAGE_FIELDS) {
    const value = fields[field];
    if (typeof value === 'number' && Number.isFinite(value) && value >= 0) target[field] = value;
  }
}

export function billedTokens(usage: TokenUsage, weights: Config['budget']['weights']): number {
  const weighted =
    usage.input_tokens * weights.input +
    usage.output_tokens * weights.output +
    usage.cache_creation_input_tokens * weights.cache_creation +
    usage.cache_read_input_tokens * weights.cache_read;
  // Fractional weights bill whole tokens, rounding up; the rounding to 1e-6 first keeps binary
  // floating-point error (100 × 1.1 = 110.00000000000001) from billing an extra token.
  return Math.ceil(Math.round(weighted * 1e6) / 1e6);
}

/** A (non-streaming) response body parsed once, for its usage and for the cache; undefined if not JSON. */
export function parseJsonBody(body: Uint8Array): unknown {
  try {
    return JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'));
  } catch {
    return undefined;
  }
}

/** Usage from a parsed Messages response; zeros if it has none (not JSON: nothing is billed). */
export function usageFromMessage(message: unknown): TokenUsage {
  const usage = emptyUsage();
  if (message && typeof message === 'object') mergeUsage(usage, (message as { usage?: unknown }).usage);
  return usage;
}

/** Usage from a complete (non-streaming) Messages response body; zeros if it has none. */
export function usageFromJson(body: Uint8Array): TokenUsage {
  return usageFromMessage(parseJsonBody(body));
}

/**
 * The content deltas whose text the model generated, and the field that carries it. Each is
 * matched on the canonical serialisation the API sends (`"delta":{"type":"text_delta","text":"`);
 * anything else is parsed as JSON.
 */
const GENERATED_DELTAS: ReadonlyArray<readonly [type: string, field: string, marker: string]> = [
  ['text_delta', 'text'],
  ['thinking_delta', 'thinking'],
  ['input_json_delta', 'partial_json'],
].map(([type, field]) => [type!, field!, `"delta":{"type":"${type}","${field}":"`] as const);

/**
 * UTF-8 bytes of the generated text one `content_block_delta` data line (`data: {...}`, one
 * character per byte: see SseUsageTap) carries (0 for deltas that carry none, such as a thinking
 * signature). On the canonical shape this is one search, without parsing the event: the escaped
 * form counted is never shorter than the text it encodes, so the count errs on the high side.
 */
function generatedBytes(dataLine: string): number {
  if (dataLine.endsWith('"}}')) {
    for (const [, , marker] of GENERATED_DELTAS) {
      const at = dataLine.indexOf(marker);
      // Characters are bytes here: the text's bytes are what lies between the framing.
      if (at !== -1) return dataLine.length - (at + marker.length) - 3;
    }
  }
  try {
    const utf8 = Buffer.from(dataLine.slice(5), 'latin1').toString('utf8');
    const delta = (JSON.parse(utf8) as { delta?: Record<string, unknown> }).delta;
    for (const [type, field] of GENERATED_DELTAS) {
      const text = delta?.[field];
      if (delta?.type === type && typeof text === 'string') return Buffer.byteLength(text, 'utf8');
    }
  } catch {
    // Not JSON: nothing the client could use was relayed.
  }
  return 0;
}

/**
 * Watches an SSE stream go by and keeps the usage upstream has reported so far: message_start
 * carries input and cache counts, message_delta the cumulative output. Those two events are
 * JSON-parsed; for content deltas only the size of the generated text is taken (see
 * `generatedBytes`), because the API reports output tokens only at the end, in message_delta, and
 * a stream that ends before it must still bill what it relayed (`billableUsage`). Chunks may split
 * lines anywhere, so a partial line is carried to the next chunk.
 *
 * Chunks are read as latin1, one character per byte: the cheapest decoding there is, and it makes
 * a string's length its byte count. Line breaks and the event framing are ASCII, so lines split
 * the same; the usage fields are ASCII numbers, which parse the same; a multi-byte character
 * split across chunks needs no care. Only the rare non-canonical delta is decoded as UTF-8, to
 * parse it. (A TextDecoder per chunk and a byte count per event were a fifth of the tap's cost.)
 */
export class SseUsageTap {
  readonly usage = emptyUsage();
  /** message_stop seen: the stream ended the way the API ends a message. */
  completed = false;
  sawError = false;
  /** message_delta seen: `usage.output_tokens` is upstream's final count. */
  outputFinal = false;
  /** UTF-8 bytes of generated text (text, thinking, tool input JSON) relayed so far. */
  generatedBytes = 0;
  private carry = '';
  private event = '';

  push(chunk: Uint8Array): void {
    const text = this.carry + Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('latin1');
    let start = 0;
    let newline = text.indexOf('\n', start);
    while (newline !== -1) {
      this.line(text.charCodeAt(newline - 1) === 13 ? text.slice(start, newline - 1) : text.slice(start, newline));
      start = newline + 1;
      newline = text.indexOf('\n', start);
    }
    this.carry = start === 0 ? text : text.slice(start);
  }

  /**
   * The usage to bill. A stream that ended before message_delta has no final output count, so
   * its output is estimated from what was relayed: one token per byte of generated text. A token
   * never encodes less than one byte, so this never bills less than the tokens the client got
   * (it typically bills 3–4× more: a client that abandons a stream is not cheaper than one that
   * reads it). The estimate is capped at `maxTokens`, which upstream cannot exceed, so strict
   * mode's reservation still covers it.
   */
  billableUsage(maxTokens: number): TokenUsage {
    if (this.outputFinal) return this.usage;
    const estimate = Math.min(maxTokens, this.generatedBytes);
    return { ...this.usage, output_tokens: Math.max(this.usage.output_tokens, estimate) };
  }

  private line(line: string): void {
    if (line === '') {
      this.event = '';
    } else if (line.startsWith('event:')) {
      this.event = line.slice(6).trim();
      if (this.event === 'message_stop') this.completed = true;
      else if (this.event === 'error') this.sawError = true;
    } else if (line.startsWith('data:')) {
      if (this.event === 'content_block_delta') {
        this.generatedBytes += generatedBytes(line);
      } else if (this.event === 'message_start' || this.event === 'message_delta') {
        try {
          const data = JSON.parse(line.slice(5)) as { message?: { usage?: unknown }; usage?: unknown };
          mergeUsage(this.usage, this.event === 'message_start' ? data.message?.usage : data.usage);
          if (this.event === 'message_delta' && hasOutputCount(data.usage)) this.outputFinal = true;
        } catch {
          // A malformed event carries no usage we can trust.
        }
      }
    }
  }
}

function hasOutputCount(usage: unknown): boolean {
  const output = (usage as { output_tokens?: unknown } | undefined)?.output_tokens;
  return typeof output === 'number' && Number.isFinite(output) && output >= 0;
}

/**
 * Queues usage records and writes them in batches off the request path. Refusals (outcome
 * `rejected`: 400, 403, 413, 429 …, nothing sent upstream) are coalesced as they arrive into one
 * record per key, endpoint, model, status and minute, carrying their count, and written once
 * their minute is over: a client hammering a limit adds a handful of rows a minute, not one per
 * refusal. (An explicit `flush()` or `close()` writes the open minute's too.)
 */
export interface UsageRecorderOptions {
  /** How often queued records are written. */
  flushMs: number;
  /** A failed write (the batch stays queued and is retried). */
  onError: (err: unknown) => void;
  /**
   * Records held while the store cannot be written (PostgreSQL down, SQLite locked). Past this,
   * the oldest are dropped and `onDrop` says how many: the only way usage is lost short of a crash.
   */
  maxQueued?: number;
  onDrop?: (dropped: number, queued: number) => void;
}

/** Records per store write: one batch stays one statement of bounded size after an outage. */
const MAX_BATCH = 5000;

export class UsageRecorder {
  private queue: UsageRecord[] = [];
  /** Refusals of the current flush interval, by key, endpoint, model, status, upstream and minute. */
  private refusals = new Map<string, UsageRecord>();
  private readonly store: UsageStore;
  private readonly options: UsageRecorderOptions;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;

  constructor(store: UsageStore, options: UsageRecorderOptions) {
    this.store = store;
    this.options = options;
    this.timer = setInterval(() => void this.flush(false), options.flushMs);
    this.timer.unref();
  }

  record(record: UsageRecord): void {
    if (record.outcome !== 'rejected') {
      this.queue.push(record);
      this.bound();
      return;
    }
    // Refusals reach no upstream (upstream ''); were one ever recorded with one, its count would
    // stay with it. JSON, so that no model name can make two groups' keys alike.
    const group = JSON.stringify([record.keyId, record.endpoint, record.model, record.status, record.upstream ?? '', Math.floor(record.ts / 60_000)]);
    const seen = this.refusals.get(group);
    if (!seen) {
      this.refusals.set(group, { ...record, requests: record.requests ?? 1 });
      return;
    }
    seen.requests = (seen.requests ?? 1) + (record.requests ?? 1);
    seen.ts = Math.max(seen.ts, record.ts);
    seen.latencyMs += record.latencyMs;
    seen.inputTokens += record.inputTokens;
    seen.outputTokens += record.outputTokens;
    seen.cacheCreationTokens += record.cacheCreationTokens;
    seen.cacheReadTokens += record.cacheReadTokens;
    seen.billedTokens += record.billedTokens;
    if (record.savedTokens) seen.savedTokens = (seen.savedTokens ?? 0) + record.savedTokens;
  }

  get pending(): number {
    return this.queue.length + this.refusals.size;
  }

  /** Drops the oldest records past `maxQueued` (reported through `onDrop`). */
  private bound(): void {
    const max = this.options.maxQueued ?? Infinity;
    if (this.queue.length <= max) return;
    const excess = this.queue.length - max;
    this.queue.splice(0, excess);
    this.options.onDrop?.(excess, this.queue.length);
  }

  /**
   * Writes everything queued so far (with `openRefusals` false, as the timer does, refusals of
   * the current minute stay open for more). Concurrent calls share one write.
   */
  flush(openRefusals = true): Promise<void> {
    if (this.flushing) return this.flushing.then(() => this.flush(openRefusals));
    if (this.refusals.size > 0) {
      const currentMinute = Math.floor(Date.now() / 60_000);
      for (const [group, record] of this.refusals) {
        if (!openRefusals && Math.floor(record.ts / 60_000) >= currentMinute) continue;
        this.queue.push(record);
        this.refusals.delete(group);
      }
    }
    if (this.queue.length === 0) return Promise.resolve();
    const batch = this.queue.length <= MAX_BATCH ? this.queue : this.queue.slice(0, MAX_BATCH);
    this.queue = this.queue.length <= MAX_BATCH ? [] : this.queue.slice(MAX_BATCH);
    this.flushing = this.store
      .insertUsage(batch)
      .then(() => {
        // More than one batch was queued (after an outage): keep writing without waiting a tick.
        if (this.queue.length >= MAX_BATCH) setImmediate(() => void this.flush(false));
      })
      .catch((err: unknown) => {
        this.queue = batch.concat(this.queue);
        this.bound();
        this.options.onError(err);
      })
      .finally(() => {
        this.flushing = undefined;
      });
    return this.flushing;
  }

  /** Stops the timer and writes what is left (retrying a failed write a few times). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    let failures = 0;
    while ((this.pending > 0 || this.flushing) && failures < 5) {
      const before = this.pending;
      await this.flush();
      if (this.pending >= before) failures++;
    }
  }
}
