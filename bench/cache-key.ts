/**
 * `node bench/cache-key.ts` (Node 24; `npx node bench/cache-key.ts` where the system Node is
 * older): the cost of src/cache/key.ts's `cacheKey` for Claude Code–like agent requests of about
 * 100 kB and 1 MB, i.e. the time the cache adds to every request before it can answer a hit.
 *
 * The requests look like an agent's: a system prompt in text blocks with `cache_control`, 24
 * tools with nested JSON schemas, and a long history of turns where the assistant calls tools
 * (`tool_use` with nested input) and the user answers with `tool_result` blocks holding file
 * contents and command output (prose with newlines, quotes, backslashes and non-ASCII text).
 *
 * Most tool results hold some non-ASCII text (which makes V8 store those strings as UTF-16); a
 * third case is all ASCII, where hashing UTF-16LE doubles the bytes hashed (the form's worst case).
 *
 * Printed for each case: the median time of `cacheKey` on the parsed body, and for scale
 * `JSON.parse` of the same bytes (which the gateway does anyway) and the obvious alternative
 * without key sorting, `JSON.stringify` then SHA-256 of the text as UTF-8. Medians of many runs
 * after a warm-up; on a shared machine compare runs, not single figures.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { cacheKey } from '../src/cache/key.ts';
import { seededRandom } from '../test/random.ts';

const random = seededRandom(12345);
const next = (below: number): number => Math.floor(random() * below);

const ASCII_WORDS = ['the', 'gateway', 'reads', 'a', 'request', 'function', 'const', 'return', 'await', 'import', 'export', 'interface', 'string', 'number', 'if', '(x)', '{', '}', '=>', 'src/cache/key.ts'];
const MIXED_WORDS = [...ASCII_WORDS, 'naïve', 'café', 'Grüße', '日本語', '🙂'];
let WORDS = MIXED_WORDS;

/** Prose and code as tool results look: newlines, indentation, quotes, backslashes, non-ASCII. */
function text(bytes: number): string {
  const parts: string[] = [];
  let length = 0;
  while (length < bytes) {
    let word = WORDS[next(WORDS.length)]!;
    const roll = next(200);
    if (roll < 25) word += '\n  ';
    else if (roll < 32) word = `"${word}"`;
    else if (roll < 34) word = `\t${word}`;
    else if (roll < 35) word = `C:\\${word}`;
    parts.push(word);
    length += Buffer.byteLength(word) + 1;
  }
  return parts.join(' ');
}

function schema(i: number): unknown {
  return {
    type: 'object',
    properties: {
      path: { type: 'string', description: `The absolute path of the file to operate on (tool ${i}). ${text(200)}` },
      offset: { type: 'integer', minimum: 0, description: 'Line to start at.' },
      limit: { type: 'integer', minimum: 1, maximum: 2000 },
      options: {
        type: 'object',
        properties: {
          recursive: { type: 'boolean', default: false },
          glob: { type: 'array', items: { type: 'string' } },
          mode: { type: 'string', enum: ['read', 'write', 'append', 'replace'] },
        },
        required: ['mode'],
        additionalProperties: false,
      },
    },
    required: ['path'],
    additionalProperties: false,
    $schema: 'http://json-schema.org/draft-07/schema#',
  };
}

function agentRequest(targetBytes: number): string {
  const tools = Array.from({ length: 24 }, (_, i) => ({
    name: `tool_${i}`,
    description: text(600),
    input_schema: schema(i),
  }));
  const system = [
    { type: 'text', text: 'You are Claude Code, an interactive CLI tool.' },
    { type: 'text', text: text(12_000), cache_control: { type: 'ephemeral' } },
  ];
  const body = {
    model: 'claude-sonnet-4-6',
    max_tokens: 32_000,
    stream: true,
    temperature: 1,
    metadata: { user_id: 'user_0123456789abcdef_account_fedcba9876543210_session_00000000' },
    system,
    tools,
    thinking: { type: 'enabled', budget_tokens: 10_000 },
    messages: [] as unknown[],
  };
  const baseBytes = Buffer.byteLength(JSON.stringify(body));
  let bytes = baseBytes;
  for (let turn = 0; bytes < targetBytes; turn++) {
    const id = `toolu_01${turn.toString(16).padStart(22, '0')}`;
    const user =
      turn === 0
        ? { role: 'user', content: [{ type: 'text', text: text(400) }] }
        : {
            role: 'user',
            content: [{ type: 'tool_result', tool_use_id: `toolu_01${(turn - 1).toString(16).padStart(22, '0')}`, content: [{ type: 'text', text: text(1_500 + next(3_000)) }] }],
          };
    const assistant = {
      role: 'assistant',
      content: [
        { type: 'text', text: text(80 + next(300)) },
        { type: 'tool_use', id, name: `tool_${next(24)}`, input: { path: `/work/src/file_${turn}.ts`, offset: next(500), options: { mode: 'read', glob: ['*.ts', '**/*.json'] } } },
      ],
    };
    body.messages.push(user, assistant);
    bytes += Buffer.byteLength(JSON.stringify(user)) + Buffer.byteLength(JSON.stringify(assistant)) + 2;
  }
  body.messages.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_last', content: 'ok', is_error: false }] });
  return JSON.stringify(body);
}

function median(runs: number, fn: () => unknown): number {
  const times: number[] = [];
  for (let i = 0; i < Math.max(5, runs / 5); i++) fn();
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    fn();
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]! * 1000;
}

const fmt = (us: number) => `${us.toFixed(0).padStart(7)} µs`;

const CASES = [
  ['100 kB', 100_000, 1000, MIXED_WORDS],
  ['1 MB', 1_000_000, 200, MIXED_WORDS],
  ['1 MB ASCII', 1_000_000, 200, ASCII_WORDS],
] as const;

for (const [label, target, runs, words] of CASES) {
  WORDS = [...words];
  const raw = agentRequest(target);
  const body = JSON.parse(raw) as Record<string, unknown>;
  const input = { body, upstreamModel: 'claude-sonnet-4-6', anthropicVersion: '2023-06-01', anthropicBeta: 'interleaved-thinking-2025-05-14, fine-grained-tool-streaming-2025-05-14', scope: 'key_0123456789' };
  const key = median(runs, () => cacheKey(input));
  const parse = median(runs, () => JSON.parse(raw));
  const naive = median(runs, () => createHash('sha256').update(JSON.stringify(body)).digest('hex'));
  console.log(
    `${label}: body ${(Buffer.byteLength(raw) / 1000).toFixed(0)} kB, ${(body['messages'] as unknown[]).length} messages, 24 tools\n` +
      `  cacheKey                             ${fmt(key)}\n` +
      `  for scale: JSON.parse                ${fmt(parse)}\n` +
      `             JSON.stringify + sha256   ${fmt(naive)}`,
  );
}
