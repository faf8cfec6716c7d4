/**
 * Token usage: reading it from upstream responses (JSON or SSE, as the bytes pass through) and
 * recording it durably without holding up the request. Records queue in memory and are written
 * in one transaction per flush; `close()` writes whatever is left, so a clean shutdown loses
 * nothing. A failed write keeps the batch queued for the next flush.
 */
import type { Config } from './config.ts';
import type { Store, UsageRecord } from './store/types.ts';

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

/** Usage from a complete (non-streaming) Messages response body; zeros if it has none. */
export function usageFromJson(body: Uint8Array): TokenUsage {
  const usage = emptyUsage();
  try {
    mergeUsage(usage, (JSON.parse(Buffer.from(body).toString('utf8')) as { usage?: unknown }).usage);
  } catch {
    // Not JSON: nothing was reported, nothing is billed.
  }
  return usage;
}

/**
 * Watches an SSE stream go by and keeps the usage upstream has reported so far: message_start
 * carries input and cache counts, message_delta the cumulative output. Only those two events are
 * JSON-parsed; the content deltas that make up the bulk of a stream are skipped by their event
 * line. Chunks may split lines anywhere, so a partial line is carried to the next chunk.
 */
export class SseUsageTap {
  readonly usage = emptyUsage();
  /** message_stop seen: the stream ended the way the API ends a message. */
  completed = false;
  sawError = false;
  private readonly decoder = new TextDecoder();
  private carry = '';
  private event = '';

  push(chunk: Uint8Array): void {
    const text = this.carry + this.decoder.decode(chunk, { stream: true });
    let start = 0;
    let newline = text.indexOf('\n', start);
    while (newline !== -1) {
      this.line(text.charCodeAt(newline - 1) === 13 ? text.slice(start, newline - 1) : text.slice(start, newline));
      start = newline + 1;
      newline = text.indexOf('\n', start);
    }
    this.carry = start === 0 ? text : text.slice(start);
  }

  private line(line: string): void {
    if (line === '') {
      this.event = '';
    } else if (line.startsWith('event:')) {
      this.event = line.slice(6).trim();
      if (this.event === 'message_stop') this.completed = true;
      else if (this.event === 'error') this.sawError = true;
    } else if (line.startsWith('data:') && (this.event === 'message_start' || this.event === 'message_delta')) {
      try {
        const data = JSON.parse(line.slice(5)) as { message?: { usage?: unknown }; usage?: unknown };
        mergeUsage(this.usage, this.event === 'message_start' ? data.message?.usage : data.usage);
      } catch {
        // A malformed event carries no usage we can trust.
      }
    }
  }
}

export class UsageRecorder {
  private queue: UsageRecord[] = [];
  private readonly store: Store;
  private readonly onError: (err: unknown) => void;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;

  constructor(store: Store, flushMs: number, onError: (err: unknown) => void) {
    this.store = store;
    this.onError = onError;
    this.timer = setInterval(() => void this.flush(), flushMs);
    this.timer.unref();
  }

  record(record: UsageRecord): void {
    this.queue.push(record);
  }

  get pending(): number {
    return this.queue.length;
  }

  /** Writes everything queued so far. Concurrent calls share one write. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing.then(() => this.flush());
    if (this.queue.length === 0) return Promise.resolve();
    const batch = this.queue;
    this.queue = [];
    this.flushing = this.store
      .insertUsage(batch)
      .catch((err: unknown) => {
        this.queue = batch.concat(this.queue);
        this.onError(err);
      })
      .finally(() => {
        this.flushing = undefined;
      });
    return this.flushing;
  }

  /** Stops the timer and writes what is left (retrying a failed write a few times). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    for (let attempt = 0; attempt < 5 && (this.queue.length > 0 || this.flushing); attempt++) {
      await this.flush();
    }
  }
}
