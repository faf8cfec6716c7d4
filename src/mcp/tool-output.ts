/**
 * Turns an MCP tool result into what the model sees (`McpToolResult`): text only — images, audio,
 * blobs and links become a short description, an embedded resource its text — never empty, and
 * cut to a byte budget with a note saying so, so that one tool cannot flood the context window.
 */
import type { McpToolResult } from './types.ts';

/** The parts of an MCP `tools/call` result we read; everything else is ignored. */
export interface RawToolResult {
  content?: unknown;
  structuredContent?: unknown;
  /** The pre-2024-11 result shape, which some old servers still send. */
  toolResult?: unknown;
  isError?: unknown;
}

function kiloBytes(base64: unknown): string {
  const chars = typeof base64 === 'string' ? base64.replace(/=+$/, '').length : 0;
  const bytes = Math.floor((chars * 3) / 4);
  return bytes < 1024 ? `${bytes} bytes` : `${Math.round(bytes / 1024)} kB`;
}

function describe(block: unknown): string {
  if (typeof block !== 'object' || block === null) return '[unreadable content]';
  const b = block as Record<string, unknown>;
  const mime = typeof b['mimeType'] === 'string' ? b['mimeType'] : undefined;
  switch (b['type']) {
    case 'text':
      return typeof b['text'] === 'string' ? b['text'] : '';
    case 'image':
    case 'audio':
      return `[${b['type']}: ${mime ?? 'unknown type'}, ${kiloBytes(b['data'])}]`;
    case 'resource_link':
      return `[resource link: ${typeof b['name'] === 'string' ? `${b['name']} ` : ''}${String(b['uri'])}${mime ? `, ${mime}` : ''}]`;
    case 'resource': {
      const r = (typeof b['resource'] === 'object' && b['resource'] !== null ? b['resource'] : {}) as Record<string, unknown>;
      if (typeof r['text'] === 'string') return r['text'];
      const rMime = typeof r['mimeType'] === 'string' ? r['mimeType'] : 'unknown type';
      return `[resource: ${String(r['uri'])}, ${rMime}, ${kiloBytes(r['blob'])}]`;
    }
    default:
      return `[${String(b['type'])} content]`;
  }
}

/**
 * Cuts `text` to at most `maxBytes` UTF-8 bytes, on a character boundary, appending a note with
 * the original size when it cuts (the note itself is not counted).
 */
export function cutToBytes(text: string, maxBytes: number): string {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= maxBytes) return text;
  let end = Math.max(0, maxBytes);
  // Step back over UTF-8 continuation bytes so no character is split.
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return `${bytes.subarray(0, end).toString('utf8')}\n[… output cut at ${end} of ${bytes.length} bytes]`;
}

/** The model's view of a tool result: one text block, never empty, at most `maxBytes` (+ note). */
export function toToolResult(raw: RawToolResult, maxBytes: number): McpToolResult {
  const blocks = Array.isArray(raw.content) ? raw.content : [];
  let text = blocks.map(describe).filter((t) => t !== '').join('\n');
  const structured = raw.structuredContent ?? raw.toolResult;
  if (text === '' && structured !== undefined) text = typeof structured === 'string' ? structured : JSON.stringify(structured);
  const isError = raw.isError === true;
  if (text === '') text = isError ? 'The tool failed without saying why.' : 'The tool returned no content.';
  return errorOr(isError, cutToBytes(text, maxBytes));
}

export function errorResult(text: string): McpToolResult {
  return errorOr(true, text);
}

function errorOr(isError: boolean, text: string): McpToolResult {
  return { isError, content: [{ type: 'text', text }] };
}
