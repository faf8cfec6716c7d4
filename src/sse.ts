/**
 * Server-sent events as the Messages API sends them: `event: NAME` and `data: JSON` lines, an
 * empty line between events. The relay of a plain request never parses events (it passes bytes
 * and taps usage); the tool loop, which rewrites them, reads them with this.
 */

export interface SseEvent {
  event: string;
  data: Record<string, unknown>;
}

/** Splits a byte stream into events; `push` returns the events completed by a chunk. */
export class SseEventReader {
  private readonly decoder = new TextDecoder();
  private carry = '';
  private name = '';
  private data: string[] = [];

  push(chunk: Uint8Array): SseEvent[] {
    const text = this.carry + this.decoder.decode(chunk, { stream: true });
    const events: SseEvent[] = [];
    let start = 0;
    let newline = text.indexOf('\n');
    while (newline !== -1) {
      const line = text.charCodeAt(newline - 1) === 13 ? text.slice(start, newline - 1) : text.slice(start, newline);
      start = newline + 1;
      newline = text.indexOf('\n', start);
      if (line === '') {
        if (this.data.length > 0) events.push(this.dispatch());
        continue;
      }
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(line.charCodeAt(colon + 1) === 32 ? colon + 2 : colon + 1);
      if (field === 'event') this.name = value;
      else if (field === 'data') this.data.push(value);
    }
    this.carry = text.slice(start);
    return events;
  }

  private dispatch(): SseEvent {
    const raw = this.data.join('\n');
    const name = this.name;
    this.name = '';
    this.data = [];
    let data: Record<string, unknown>;
    try {
      const parsed = JSON.parse(raw) as unknown;
      data = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : { value: parsed };
    } catch {
      data = { type: 'unparsable', raw };
    }
    return { event: name || String(data['type'] ?? 'message'), data };
  }
}

/** One event as the API writes it. */
export function sseEvent(data: Record<string, unknown>, event = String(data['type'])): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}
