/**
 * Replays a stored final message as the SSE stream the Messages API would have sent for it, so
 * that a streaming request can be answered from the cache and SDKs (and clients that read the
 * events themselves, like Claude Code) cannot tell the difference.
 *
 * The shape is the API's: `message_start` with the message's fields, empty content, stop fields
 * null and `output_tokens` as the API starts it (1); a `ping`; per content block a
 * `content_block_start` with the block emptied, its deltas, `content_block_stop`; a
 * `message_delta` with the stop fields and the final usage; `message_stop`.
 *
 * Blocks: text as `text_delta`s (after one `citations_delta` per citation, if it has any); tool
 * calls (`tool_use`, `server_tool_use`) with input `{}` then the input's JSON as
 * `input_json_delta`s; thinking as `thinking_delta`s and one `signature_delta` carrying the
 * signature byte for byte. Every other block (`redacted_thinking`, `web_search_tool_result` and
 * any type this file does not know) arrives complete in its `content_block_start`, as the API
 * sends blocks that have no deltas — so a block type added to the API later still replays intact.
 *
 * Long text is split into deltas of at most `DELTA_CHARS` code units, never between the two
 * halves of a surrogate pair: each chunk is valid text on its own, so clients that decode each
 * delta separately (Python, Go) join them into the original string. `MessageAccumulator`
 * reassembles exactly the stored message from this stream (test/cache-replay.test.ts proves it,
 * and that the official SDK's `finalMessage()` does too).
 */

/** Code units per text, thinking or input JSON delta. */
const DELTA_CHARS = 4096;

/** Fields of the message that the API sends in `message_delta`, null in `message_start`. */
const DELTA_FIELDS = ['stop_reason', 'stop_sequence', 'stop_details', 'container'] as const;

/** Blocks whose input the API streams as `input_json_delta`s (the ones the SDKs reassemble). */
const TOOL_CALLS: ReadonlySet<unknown> = new Set(['tool_use', 'server_tool_use']);

/**
 * The SSE events (each `event: …\ndata: …\n\n`) that stream `message`. Throws a TypeError if it
 * is not a message (no content array): a corrupt entry must be treated as a miss, not replayed.
 */
export function replaySse(message: object): string[] {
  const stored = message as Record<string, unknown>;
  const content = stored['content'];
  if (!Array.isArray(content)) throw new TypeError('A cached message must have a content array');
  const usage = isObject(stored['usage']) ? stored['usage'] : {};

  const opening: Record<string, unknown> = { ...stored, content: [] };
  for (const field of DELTA_FIELDS) if (field in opening) opening[field] = null;
  if (!('stop_reason' in opening)) opening['stop_reason'] = null;
  if (!('stop_sequence' in opening)) opening['stop_sequence'] = null;
  const output = usage['output_tokens'];
  opening['usage'] = { ...usage, output_tokens: typeof output === 'number' ? Math.min(output, 1) : 1 };

  const events = [sse('message_start', { type: 'message_start', message: opening }), sse('ping', { type: 'ping' })];
  content.forEach((block: unknown, index) => blockEvents(events, index, block));

  const delta: Record<string, unknown> = { stop_reason: stored['stop_reason'] ?? null, stop_sequence: stored['stop_sequence'] ?? null };
  for (const field of DELTA_FIELDS) if (field in stored) delta[field] = stored[field];
  events.push(sse('message_delta', { type: 'message_delta', delta, usage }), sse('message_stop', { type: 'message_stop' }));
  return events;
}

function blockEvents(events: string[], index: number, block: unknown): void {
  if (!isObject(block)) throw new TypeError('A cached content block must be an object');
  const type = block['type'];
  const text = block['text'];
  const thinking = block['thinking'];
  if (type === 'text' && typeof text === 'string') {
    const citations = block['citations'];
    const cited = Array.isArray(citations) && citations.length > 0;
    events.push(start(index, { ...block, text: '', ...(cited ? { citations: [] } : {}) }));
    if (cited) for (const citation of citations) events.push(delta(index, { type: 'citations_delta', citation }));
    for (const chunk of chunks(text)) events.push(delta(index, { type: 'text_delta', text: chunk }));
  } else if (TOOL_CALLS.has(type) && isObject(block['input'])) {
    events.push(start(index, { ...block, input: {} }));
    for (const chunk of chunks(JSON.stringify(block['input']))) events.push(delta(index, { type: 'input_json_delta', partial_json: chunk }));
  } else if (type === 'thinking' && typeof thinking === 'string') {
    const signature = block['signature'];
    events.push(start(index, { ...block, thinking: '', ...(typeof signature === 'string' ? { signature: '' } : {}) }));
    for (const chunk of chunks(thinking)) events.push(delta(index, { type: 'thinking_delta', thinking: chunk }));
    if (typeof signature === 'string') events.push(delta(index, { type: 'signature_delta', signature }));
  } else {
    events.push(start(index, block));
  }
  events.push(sse('content_block_stop', { type: 'content_block_stop', index }));
}

/** `text` in pieces of at most DELTA_CHARS code units, never splitting a surrogate pair. */
function chunks(text: string): string[] {
  const pieces: string[] = [];
  let at = 0;
  while (at < text.length) {
    let end = Math.min(at + DELTA_CHARS, text.length);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end--;
    pieces.push(text.slice(at, end));
    at = end;
  }
  return pieces;
}

function start(index: number, contentBlock: Record<string, unknown>): string {
  return sse('content_block_start', { type: 'content_block_start', index, content_block: contentBlock });
}

function delta(index: number, delta: Record<string, unknown>): string {
  return sse('content_block_delta', { type: 'content_block_delta', index, delta });
}

function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
