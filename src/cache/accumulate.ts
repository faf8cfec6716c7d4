/**
 * Reassembles the final message from a Messages API SSE stream as it passes, so that a streamed
 * cache MISS can be stored as the same entry a non-streamed request would have produced (and
 * later answer either kind of request). The result is exactly the API's non-streaming answer:
 * message_start's message, each content block from its `content_block_start` plus its deltas,
 * and message_delta's fields and usage merged in.
 *
 * Parsing follows what the official SDKs do (an event needs an `event:` name; `ping` is skipped;
 * `error` fails the stream; the event's JSON `type` drives the reassembly), with LF or CRLF line
 * ends and chunks split anywhere, even inside a UTF-8 sequence. It is strict where the SDKs are
 * lenient, because a wrong entry would be served again and again: anything it cannot reassemble
 * faithfully — an unknown delta type, a delta for a block that was never started, tool input that
 * is not JSON, a second message — makes `result()` undefined, and the stream is simply not
 * cached. Unknown event types are ignored, as the SDKs ignore them.
 */

/** A content block as it is being reassembled (the API's JSON, mutated in place). */
type Block = Record<string, unknown>;

/** What a completed stream reassembles to. */
export interface AccumulatedMessage {
  /** The final message, as the API's non-streaming answer. */
  message: Record<string, unknown>;
  /** `message` as JSON text (what an entry stores and a JSON request gets as its body). */
  body: string;
}

export class MessageAccumulator {
  private readonly decoder = new TextDecoder();
  private carry = '';
  /** The current event's `event:` name and `data:` lines (SSE joins several with "\n"). */
  private eventName: string | undefined;
  private data: string[] = [];

  private message: Record<string, unknown> | undefined;
  private blocks: (Block | undefined)[] = [];
  /** Tool input JSON received so far, by block index (parsed at the block's stop). */
  private readonly inputJson = new Map<number, string>();
  private readonly stopped = new Set<number>();
  private completed = false;
  private failed = false;
  private done: AccumulatedMessage | undefined;

  push(chunk: Uint8Array): void {
    if (this.failed || this.completed) return;
    const text = this.carry + this.decoder.decode(chunk, { stream: true });
    let start = 0;
    let newline = text.indexOf('\n');
    while (newline !== -1 && !this.failed && !this.completed) {
      this.line(text.charCodeAt(newline - 1) === 13 ? text.slice(start, newline - 1) : text.slice(start, newline));
      start = newline + 1;
      newline = text.indexOf('\n', start);
    }
    this.carry = text.slice(start);
  }

  /**
   * The final message, if the stream completed cleanly: message_stop seen, no `error` event,
   * every content block started and stopped, everything understood. Undefined otherwise.
   */
  result(): AccumulatedMessage | undefined {
    if (!this.completed || this.failed || !this.message) return undefined;
    if (this.done) return this.done;
    for (let i = 0; i < this.blocks.length; i++) {
      if (!this.blocks[i] || !this.stopped.has(i)) return undefined;
    }
    this.message['content'] = this.blocks;
    this.done = { message: this.message, body: JSON.stringify(this.message) };
    return this.done;
  }

  private line(line: string): void {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58 /* : */) return; // an SSE comment
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === 'event') this.eventName = value;
    else if (field === 'data') this.data.push(value);
  }

  private dispatch(): void {
    const name = this.eventName;
    const data = this.data;
    this.eventName = undefined;
    this.data = [];
    if (name === undefined || name === 'ping') return;
    if (name === 'error') {
      this.failed = true;
      return;
    }
    if (data.length === 0) return;
    let event: Record<string, unknown>;
    try {
      event = JSON.parse(data.join('\n')) as Record<string, unknown>;
    } catch {
      this.failed = true;
      return;
    }
    if (!isObject(event)) {
      this.failed = true;
      return;
    }
    this.event(event);
  }

  private event(event: Record<string, unknown>): void {
    const type = event['type'];
    if (type === 'message_start') {
      if (this.message || !isObject(event['message'])) return this.fail();
      this.message = event['message'];
      if (!isObject(this.message['usage'])) this.message['usage'] = {};
      const content = this.message['content'];
      // The API starts with no content; should it ever start with some, it comes first.
      this.blocks = Array.isArray(content) ? content.slice() : [];
      for (let i = 0; i < this.blocks.length; i++) this.stopped.add(i);
      return;
    }
    if (type === 'error') return this.fail();
    if (!this.message) {
      // Anything but a ping before message_start is not a Messages stream we understand.
      if (type === 'content_block_start' || type === 'content_block_delta' || type === 'content_block_stop' || type === 'message_delta' || type === 'message_stop') this.fail();
      return;
    }
    switch (type) {
      case 'content_block_start':
        return this.blockStart(event);
      case 'content_block_delta':
        return this.blockDelta(event);
      case 'content_block_stop':
        return this.blockStop(event);
      case 'message_delta':
        return this.messageDelta(event);
      case 'message_stop':
        this.completed = true;
        return;
      default:
      // Unknown event types change nothing in the message (the SDKs skip them too).
    }
  }

  private blockStart(event: Record<string, unknown>): void {
    const index = event['index'];
    const block = event['content_block'];
    if (!isIndex(index) || !isObject(block) || this.blocks[index] !== undefined) return this.fail();
    this.blocks[index] = block;
  }

  private blockDelta(event: Record<string, unknown>): void {
    const index = event['index'];
    const delta = event['delta'];
    if (!isIndex(index) || !isObject(delta)) return this.fail();
    const block = this.blocks[index];
    if (!block || this.stopped.has(index)) return this.fail();
    switch (delta['type']) {
      case 'text_delta':
        return this.append(block, 'text', delta['text']);
      case 'thinking_delta':
        return this.append(block, 'thinking', delta['thinking']);
      case 'signature_delta':
        // One signature per block, kept byte for byte (the SDKs replace rather than append too).
        if (typeof delta['signature'] !== 'string') return this.fail();
        block['signature'] = delta['signature'];
        return;
      case 'input_json_delta': {
        if (typeof delta['partial_json'] !== 'string') return this.fail();
        this.inputJson.set(index, (this.inputJson.get(index) ?? '') + delta['partial_json']);
        return;
      }
      case 'citations_delta': {
        const citations = block['citations'];
        if (citations !== undefined && citations !== null && !Array.isArray(citations)) return this.fail();
        block['citations'] = [...(citations ?? []), delta['citation']];
        return;
      }
      default:
        // A delta we do not know how to apply: the reassembled message would be wrong.
        this.fail();
    }
  }

  private append(block: Block, field: string, text: unknown): void {
    if (typeof text !== 'string') return this.fail();
    const sofar = block[field];
    if (sofar !== undefined && typeof sofar !== 'string') return this.fail();
    block[field] = (sofar ?? '') + text;
  }

  private blockStop(event: Record<string, unknown>): void {
    const index = event['index'];
    if (!isIndex(index) || !this.blocks[index] || this.stopped.has(index)) return this.fail();
    const json = this.inputJson.get(index);
    // Tool input streams as JSON text; none at all (a tool without parameters) keeps the start's `{}`.
    if (json !== undefined && json !== '') {
      try {
        this.blocks[index]!['input'] = JSON.parse(json) as unknown;
      } catch {
        return this.fail();
      }
    }
    this.inputJson.delete(index);
    this.stopped.add(index);
  }

  private messageDelta(event: Record<string, unknown>): void {
    const message = this.message!;
    const delta = event['delta'];
    if (isObject(delta)) Object.assign(message, delta);
    const usage = event['usage'];
    if (isObject(usage)) {
      const target = message['usage'] as Record<string, unknown>;
      // Counts are cumulative totals: a present value replaces; a null never erases a known one.
      for (const [field, value] of Object.entries(usage)) {
        if (value !== null || !(field in target)) target[field] = value;
      }
    }
  }

  private fail(): void {
    this.failed = true;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isIndex(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 10_000;
}
