/**
 * `node bench/json-scan.ts` (Node 24; `npx node bench/json-scan.ts` where the system Node is
 * older): throughput of src/json-scan.ts against JSON.parse on the same bytes, to check that
 * scanning bodies chunk by chunk on the event loop stays cheap.
 *
 * Inputs: a realistic 1 MiB Messages body (long prose with escapes and non-ASCII text), 32 MiB
 * of `{}`s in an array (the most state transitions per byte), and 32 MiB of arrays nested to the
 * depth limit. The scanner is fed 64 KiB chunks, as a socket delivers them; JSON.parse is timed
 * as the gateway used it (Buffer#toString then JSON.parse). Each figure is the median of several
 * runs after a warm-up; "longest push" is the worst single 64 KiB step, i.e. the longest the
 * scanner holds the event loop (the median over runs of each run's worst). On a shared machine
 * other processes' time slices land in it; compare runs, not single figures.
 */
import { performance } from 'node:perf_hooks';
import { JsonScanner, DEFAULT_MAX_DEPTH } from '../src/json-scan.ts';

const MiB = 1024 * 1024;
const CHUNK_BYTES = 64 * 1024;
const CAPTURE = ['model', 'max_tokens', 'stream', 'messages'];

/**
 * Deterministic prose as prompts look: mostly plain words, a newline every dozen words or so,
 * now and then a quote, a tab or a backslash (which JSON escapes), and some non-ASCII text.
 */
function prose(bytes: number): string {
  const words = ['the', 'gateway', 'reads', 'a', 'request', 'body', 'and', 'forwards', 'it', 'upstream,', 'with', 'usage', 'records', 'naïve', 'café', 'Grüße', '日本語', '🙂'];
  let seed = 12345;
  const next = (below: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % below;
  };
  const parts: string[] = [];
  let length = 0;
  while (length < bytes) {
    let word = words[next(words.length)]!;
    const roll = next(400);
    if (roll < 30) word += '.\n';
    else if (roll < 40) word = `"${word}"`;
    else if (roll < 42) word = `\t${word}`;
    else if (roll < 43) word = `C:\\${word}`;
    parts.push(word);
    length += Buffer.byteLength(word) + 1;
  }
  return parts.join(' ');
}

function messagesBody(totalBytes: number): Buffer {
  const messages: unknown[] = [];
  const turnBytes = 64 * 1024;
  for (let turn = 0; turn * turnBytes < totalBytes - 4096; turn++) {
    const text = prose(turnBytes);
    messages.push(
      turn % 2 === 0
        ? { role: 'user', content: [{ type: 'text', text }] }
        : { role: 'assistant', content: [{ type: 'text', text }, { type: 'tool_use', id: `toolu_${turn}`, name: 'search', input: { query: 'x', limit: 10 } }] },
    );
  }
  return Buffer.from(
    JSON.stringify({ model: 'claude-sonnet-4-6', max_tokens: 1024, stream: true, system: 'You are helpful.', messages, temperature: 0.7 }),
  );
}

function emptyObjects(totalBytes: number): Buffer {
  const count = Math.floor((totalBytes - 2) / 3);
  return Buffer.from(`[${'{},'.repeat(count - 1)}{}]`);
}

/** A root array of arrays nested to exactly DEFAULT_MAX_DEPTH levels, repeated to fill totalBytes. */
function nestedArrays(totalBytes: number): Buffer {
  const inner = DEFAULT_MAX_DEPTH - 1;
  const unit = `${'['.repeat(inner)}${']'.repeat(inner)}`;
  const count = Math.floor((totalBytes - 2) / (unit.length + 1));
  return Buffer.from(`[${Array.from({ length: count }, () => unit).join(',')}]`);
}

function scanInChunks(body: Buffer): { ms: number; longestPushMs: number } {
  const scanner = new JsonScanner({ capture: CAPTURE });
  let longestPushMs = 0;
  const started = performance.now();
  for (let offset = 0; offset < body.length; offset += CHUNK_BYTES) {
    const before = performance.now();
    scanner.push(body.subarray(offset, offset + CHUNK_BYTES));
    longestPushMs = Math.max(longestPushMs, performance.now() - before);
  }
  const result = scanner.end();
  const ms = performance.now() - started;
  if (!result.ok) throw new Error(`benchmark input rejected: ${result.message}`);
  return { ms, longestPushMs };
}

function parseWhole(body: Buffer): number {
  const started = performance.now();
  JSON.parse(body.toString('utf8'));
  return performance.now() - started;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function measure(name: string, body: Buffer, runs: number): void {
  scanInChunks(body);
  parseWhole(body);
  // All scans, then all parses: the parses leave garbage whose collection would land in the scans.
  const scans = Array.from({ length: runs }, () => scanInChunks(body));
  const parseMs = Array.from({ length: runs }, () => parseWhole(body));
  const mb = body.length / 1e6;
  const scanRate = mb / (median(scans.map((scan) => scan.ms)) / 1000);
  const parseRate = mb / (median(parseMs) / 1000);
  console.log(
    `${name.padEnd(28)} ${(body.length / MiB).toFixed(0).padStart(3)} MiB  ` +
      `scan ${scanRate.toFixed(0).padStart(4)} MB/s  JSON.parse ${parseRate.toFixed(0).padStart(4)} MB/s  ` +
      `(${(scanRate / parseRate).toFixed(1)}x)  longest push ${median(scans.map((scan) => scan.longestPushMs)).toFixed(2)} ms`,
  );
}

console.log(`JsonScanner fed ${CHUNK_BYTES / 1024} KiB chunks vs JSON.parse(buffer.toString()); medians of several runs`);
measure('Messages body, long text', messagesBody(MiB), 21);
measure('array of {}', emptyObjects(32 * MiB), 5);
measure(`arrays nested ${DEFAULT_MAX_DEPTH} deep`, nestedArrays(32 * MiB), 5);
