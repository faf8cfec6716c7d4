/**
 * src/usage.ts: the SSE usage tap under every chunking, usage parsing and weighting, and the
 * usage recorder writing to a real SQLite store.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { seededRandom } from './fixtures.ts';
import { startFakeUpstream, type FakeUpstream } from '../src/fake-upstream/server.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { Store, UsageRecord } from '../src/store/types.ts';
import { billedTokens, emptyUsage, SseUsageTap, usageFromJson, UsageRecorder, type TokenUsage } from '../src/usage.ts';

const enc = new TextEncoder();

let fake: FakeUpstream;
beforeAll(async () => {
  fake = await startFakeUpstream();
});
afterAll(() => fake.close());

/** Raw bytes of a streamed /v1/messages response of the fake upstream, up to where it ends or breaks. */
async function fakeStream(headers: Record<string, string> = {}): Promise<{ bytes: Uint8Array; requestId: string }> {
  const res = await request(`${fake.url}/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': fake.apiKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'Hi there, how are you?' }] }),
  });
  expect(res.statusCode).toBe(200);
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of res.body) chunks.push(chunk as Buffer);
  } catch {
    // a cut stream ends in a socket error: keep what arrived
  }
  return { bytes: Buffer.concat(chunks), requestId: String(res.headers['request-id']) };
}

function tapOf(chunks: Iterable<Uint8Array>): SseUsageTap {
  const tap = new SseUsageTap();
  for (const chunk of chunks) tap.push(chunk);
  return tap;
}

/** What the tap would bill (max_tokens far away), and how the stream ended. */
function summary(tap: SseUsageTap) {
  return { usage: { ...tap.billableUsage(1_000_000) }, completed: tap.completed, sawError: tap.sawError };
}

const rng = seededRandom;

function* randomChunks(bytes: Uint8Array, random: () => number, maxSize: number): Generator<Uint8Array> {
  let at = 0;
  while (at < bytes.length) {
    const size = 1 + Math.floor(random() * maxSize);
    yield bytes.subarray(at, at + size);
    at += size;
  }
}

function* byteByByte(bytes: Uint8Array): Generator<Uint8Array> {
  for (let i = 0; i < bytes.length; i++) yield bytes.subarray(i, i + 1);
}

/** Checks that the tap yields `expected` for every two-piece split, byte by byte, and random chunkings. */
function expectSameUnderEveryChunking(bytes: Uint8Array, expected: ReturnType<typeof summary>): void {
  expect(summary(tapOf([bytes]))).toEqual(expected);
  for (let i = 0; i <= bytes.length; i++) {
    const got = summary(tapOf([bytes.subarray(0, i), bytes.subarray(i)]));
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      // Only build the (slow) diff for the failing split.
      expect({ split: i, ...got }).toEqual({ split: i, ...expected });
    }
  }
  expect(summary(tapOf(byteByByte(bytes)))).toEqual(expected);
  const random = rng(1234);
  for (let round = 0; round < 200; round++) {
    const got = summary(tapOf(randomChunks(bytes, random, 1 + (round % 40))));
    if (JSON.stringify(got) !== JSON.stringify(expected)) expect({ round, ...got }).toEqual({ round, ...expected });
  }
}

function sse(event: string, data: unknown, eol = '\n'): string {
  return `event: ${event}${eol}data: ${JSON.stringify(data)}${eol}${eol}`;
}

/** A hand-written stream in the API's shape with multi-byte text in every delta. */
function handStream(eol: string, options: { stop?: boolean } = {}): string {
  const parts = [
    sse('message_start', {
      type: 'message_start',
      message: {
        id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-haiku-4-5', content: [], stop_reason: null,
        usage: { input_tokens: 321, cache_creation_input_tokens: 17, cache_read_input_tokens: 5, output_tokens: 1 },
      },
    }, eol),
    sse('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }, eol),
    sse('ping', { type: 'ping' }, eol),
    // Text that looks like SSE framing must not confuse the tap.
    sse('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Grüße — 日本語 🎉\nevent: message_stop\n' } }, eol),
    sse('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'ñ€𝄞 data: {"usage":{"output_tokens":999}}' } }, eol),
    sse('content_block_stop', { type: 'content_block_stop', index: 0 }, eol),
    sse('message_delta', {
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: { input_tokens: 330, output_tokens: 42 },
    }, eol),
  ];
  if (options.stop !== false) parts.push(sse('message_stop', { type: 'message_stop' }, eol));
  return parts.join('');
}

describe('SseUsageTap', () => {
  it('reads the same usage from a real fake-upstream stream under every chunking', async () => {
    const { bytes, requestId } = await fakeStream({ 'x-fake-output-tokens': '23' });
    const reported = fake.reported.get(requestId);
    expect(reported?.output_tokens).toBe(23);
    expect(reported!.input_tokens).toBeGreaterThan(0);
    expectSameUnderEveryChunking(bytes, { usage: reported!, completed: true, sawError: false });
  });

  it('handles multi-byte UTF-8 split anywhere, with LF and with CRLF line endings', () => {
    const expected = {
      // message_delta's input_tokens overrides message_start's; the cache counts stay from message_start.
      usage: { input_tokens: 330, output_tokens: 42, cache_creation_input_tokens: 17, cache_read_input_tokens: 5 },
      completed: true,
      sawError: false,
    };
    for (const eol of ['\n', '\r\n']) {
      const bytes = enc.encode(handStream(eol));
      // The text really has multi-byte characters, so some splits land inside them.
      expect(bytes.length).toBeGreaterThan(handStream(eol).length);
      expectSameUnderEveryChunking(bytes, expected);
    }
  });

  it('message_delta usage overrides the fields it carries, and only those', () => {
    const stream =
      sse('message_start', { type: 'message_start', message: { usage: { input_tokens: 10, cache_creation_input_tokens: 3, cache_read_input_tokens: 2, output_tokens: 1 } } }) +
      sse('message_delta', { type: 'message_delta', usage: { output_tokens: 40, cache_read_input_tokens: 6 } }) +
      sse('message_stop', { type: 'message_stop' });
    const tap = tapOf([enc.encode(stream)]);
    expect(tap.usage).toEqual({ input_tokens: 10, output_tokens: 40, cache_creation_input_tokens: 3, cache_read_input_tokens: 6 });
    expect(tap.completed).toBe(true);
  });

  it('ignores usage-shaped data of other events and malformed usage events', () => {
    const stream =
      sse('message_start', { type: 'message_start', message: { usage: { input_tokens: 10, output_tokens: 1 } } }) +
      sse('content_block_delta', { type: 'content_block_delta', usage: { output_tokens: 500 } }) +
      'event: message_delta\ndata: {"usage": {"output_tokens": 7\n\n' + // broken JSON
      sse('message_delta', { type: 'message_delta', usage: { output_tokens: -3, input_tokens: 'x' } });
    const tap = tapOf([enc.encode(stream)]);
    expect(tap.usage).toEqual({ input_tokens: 10, output_tokens: 1, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 });
    expect(tap.completed).toBe(false);
  });

  it('a stream cut before message_delta bills its relayed text: one token per byte, never less than upstream counted', async () => {
    const { bytes, requestId } = await fakeStream({ 'x-fake-cut-after': '2' });
    const text = Buffer.from(bytes).toString('utf8');
    expect(text).toContain('event: message_start');
    expect(text).not.toContain('message_delta');
    // Upstream generated two tokens ("Hello", " from"); the tap saw message_start's count only.
    const reported = fake.reported.get(requestId)!;
    expect(reported.output_tokens).toBe(2);
    expect(tapOf([bytes]).usage.output_tokens).toBe(1);
    // Billed: the 10 bytes of "Hello from", at least the 2 tokens upstream generated.
    expectSameUnderEveryChunking(bytes, { usage: { ...reported, output_tokens: 10 }, completed: false, sawError: false });
    expect(tapOf([bytes]).billableUsage(4).output_tokens).toBe(4); // never past max_tokens

    // The hand-written stream without its message_stop: the message_delta usage still counts.
    expectSameUnderEveryChunking(enc.encode(handStream('\r\n', { stop: false })), {
      usage: { input_tokens: 330, output_tokens: 42, cache_creation_input_tokens: 17, cache_read_input_tokens: 5 },
      completed: false,
      sawError: false,
    });
  });

  it('an `event: error` sets sawError; the relayed text is billed', async () => {
    const { bytes, requestId } = await fakeStream({ 'x-fake-stream-error-after': '3' });
    expect(Buffer.from(bytes).toString('utf8')).toContain('event: error');
    const reported = fake.reported.get(requestId)!;
    expect(reported.output_tokens).toBe(3);
    expectSameUnderEveryChunking(bytes, { usage: { ...reported, output_tokens: 'Hello from the'.length }, completed: false, sawError: true });
  });

  it('estimates generated text of every delta kind, in canonical and other serialisations', () => {
    const delta = (d: object) => sse('content_block_delta', { type: 'content_block_delta', index: 0, delta: d });
    const stream =
      sse('message_start', { type: 'message_start', message: { usage: { input_tokens: 10, output_tokens: 1 } } }) +
      delta({ type: 'thinking_delta', thinking: 'héllo' }) + // 6 bytes
      delta({ type: 'signature_delta', signature: 'EqQBCgIYAhIM'.repeat(20) }) + // not generated text
      delta({ type: 'text_delta', text: 'a "quoted"\nline' }) + // escaped form: 18 bytes ≥ 15
      delta({ type: 'input_json_delta', partial_json: '{"city": "Par' }) + // escaped: 16 bytes
      // Not the canonical field order: parsed instead, the text measured exactly (3 bytes).
      'event: content_block_delta\ndata: {"delta": {"text": "abc", "type": "text_delta"}, "index": 1, "type": "content_block_delta"}\n\n';
    const bytes = enc.encode(stream);
    const expected = { usage: { input_tokens: 10, output_tokens: 6 + 18 + 16 + 3, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 }, completed: false, sawError: false };
    expectSameUnderEveryChunking(bytes, expected);
    // Once message_delta reports the output, that count is billed as it is.
    const finished = tapOf([bytes, enc.encode(sse('message_delta', { type: 'message_delta', usage: { output_tokens: 12 } }))]);
    expect(finished.billableUsage(1000).output_tokens).toBe(12);
  });
});

describe('billedTokens', () => {
  const usage: TokenUsage = { input_tokens: 100, output_tokens: 50, cache_creation_input_tokens: 20, cache_read_input_tokens: 1000 };

  it('sums every kind of token at weight 1', () => {
    expect(billedTokens(usage, { input: 1, output: 1, cache_creation: 1, cache_read: 1 })).toBe(1170);
  });

  it('applies weights and rounds up', () => {
    expect(billedTokens(usage, { input: 1, output: 5, cache_creation: 1.25, cache_read: 0.1 })).toBe(100 + 250 + 25 + 100);
    expect(billedTokens(usage, { input: 0, output: 0, cache_creation: 0, cache_read: 0 })).toBe(0);
    expect(billedTokens({ ...emptyUsage(), input_tokens: 3 }, { input: 0.5, output: 1, cache_creation: 1, cache_read: 1 })).toBe(2);
  });

  // BUG (src/usage.ts billedTokens): Math.ceil on a floating-point sum over-bills exact products
  // by a whole token: 100 output tokens at weight 1.1 = 110.00000000000001 → billed 111.
  it('does not over-bill exact weighted counts through floating-point error', () => {
    expect(billedTokens({ ...emptyUsage(), output_tokens: 100 }, { input: 1, output: 1.1, cache_creation: 1, cache_read: 1 })).toBe(110);
  });
});

describe('usageFromJson', () => {
  it('reads the usage of a Messages response', () => {
    const body = enc.encode(JSON.stringify({
      type: 'message',
      usage: { input_tokens: 12, output_tokens: 34, cache_creation_input_tokens: 5, cache_read_input_tokens: 6, service_tier: 'standard' },
    }));
    expect(usageFromJson(body)).toEqual({ input_tokens: 12, output_tokens: 34, cache_creation_input_tokens: 5, cache_read_input_tokens: 6 });
  });

  it('reads a body that is a view into a larger buffer', () => {
    const json = JSON.stringify({ usage: { input_tokens: 7, output_tokens: 8 } });
    const padded = enc.encode(`xxxx${json}yyyy`);
    expect(usageFromJson(padded.subarray(4, 4 + json.length))).toMatchObject({ input_tokens: 7, output_tokens: 8 });
  });

  it('gives zeros for bodies without usable usage', () => {
    expect(usageFromJson(enc.encode('not json'))).toEqual(emptyUsage());
    expect(usageFromJson(enc.encode('{"type":"message"}'))).toEqual(emptyUsage());
    expect(usageFromJson(enc.encode('null'))).toEqual(emptyUsage());
    expect(usageFromJson(new Uint8Array(0))).toEqual(emptyUsage());
    expect(usageFromJson(enc.encode('{"usage":{"input_tokens":-1,"output_tokens":"9","cache_read_input_tokens":null}}'))).toEqual(emptyUsage());
  });
});

describe('UsageRecorder', () => {
  let dir: string;
  let store: SqliteStore;
  const T = Date.UTC(2026, 2, 1, 12);

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'claudcode-usage-'));
    store = new SqliteStore(dir);
  });
  afterAll(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  let seq = 0;
  function record(keyId: string, over: Partial<UsageRecord> = {}): UsageRecord {
    seq++;
    return {
      ts: T, keyId, requestId: `req_${seq}`, endpoint: 'messages', model: 'claude-haiku-4-5', status: 200,
      inputTokens: 10, outputTokens: 5, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 15,
      latencyMs: 3, cached: false, streamed: false, outcome: 'ok', ...over,
    };
  }

  async function rowsOf(keyId: string) {
    const rows = await store.usageReport({ by: 'key', keyId });
    return rows[0] ?? null;
  }

  /** A store whose insertUsage fails `failures` times, then writes through. */
  function flakyStore(failures: number): { store: Store; batches: UsageRecord[][] } {
    const batches: UsageRecord[][] = [];
    let left = failures;
    const wrapper: Store = Object.create(store) as Store;
    wrapper.insertUsage = async (records) => {
      batches.push([...records]);
      if (left > 0) {
        left--;
        throw new Error('disk full (simulated)');
      }
      return store.insertUsage(records);
    };
    return { store: wrapper, batches };
  }

  it('writes queued records in one batch per flush; concurrent flushes share the write', async () => {
    const { store: spy, batches } = flakyStore(0);
    const onError = vi.fn();
    const recorder = new UsageRecorder(spy, { flushMs: 60_000, onError });
    for (let i = 0; i < 3; i++) recorder.record(record('key_batch', { outputTokens: i }));
    expect(recorder.pending).toBe(3);
    expect(await rowsOf('key_batch')).toBeNull();

    await Promise.all([recorder.flush(), recorder.flush()]);
    expect(batches.map((b) => b.length)).toEqual([3]);
    expect(recorder.pending).toBe(0);
    expect(await rowsOf('key_batch')).toMatchObject({ requests: 3, inputTokens: 30, outputTokens: 3, billedTokens: 45 });

    await recorder.flush(); // nothing queued: no write
    expect(batches).toHaveLength(1);
    await recorder.close();
    expect(onError).not.toHaveBeenCalled();
  });

  it('holds at most maxQueued records while the store is down, dropping the oldest and saying so', async () => {
    const { store: flaky, batches } = flakyStore(3);
    const onDrop = vi.fn();
    const recorder = new UsageRecorder(flaky, { flushMs: 60_000, onError: () => {}, maxQueued: 5, onDrop });
    for (let i = 0; i < 4; i++) recorder.record(record('key_bound', { outputTokens: i }));
    await recorder.flush(); // fails: the 4 stay queued
    for (let i = 4; i < 8; i++) recorder.record(record('key_bound', { outputTokens: i }));
    expect(recorder.pending).toBe(5);
    expect(onDrop.mock.calls.map(([dropped]) => dropped as number).reduce((a, b) => a + b, 0)).toBe(3);
    await recorder.flush(); // fails again
    await recorder.flush(); // fails a third time
    await recorder.flush(); // the store is back
    expect(recorder.pending).toBe(0);
    // The five newest were kept, in order.
    expect(batches.at(-1)!.map((r) => r.outputTokens)).toEqual([3, 4, 5, 6, 7]);
    await recorder.close();
  });

  it('writes a long backlog in batches of bounded size', async () => {
    const { store: counting, batches } = flakyStore(0);
    const recorder = new UsageRecorder(counting, { flushMs: 60_000, onError: () => {} });
    for (let i = 0; i < 12_000; i++) recorder.record(record('key_backlog'));
    await recorder.close();
    expect(batches.map((b) => b.length)).toEqual([5000, 5000, 2000]);
    expect(await rowsOf('key_backlog')).toMatchObject({ requests: 12_000 });
  });

  it('keeps a batch whose write failed and writes it with the next flush, in order', async () => {
    const { store: flaky, batches } = flakyStore(1);
    const onError = vi.fn();
    const recorder = new UsageRecorder(flaky, { flushMs: 60_000, onError });
    const first = [record('key_flaky'), record('key_flaky')];
    for (const r of first) recorder.record(r);
    await recorder.flush();
    expect(onError).toHaveBeenCalledTimes(1);
    expect((onError.mock.calls[0]![0] as Error).message).toBe('disk full (simulated)');
    expect(recorder.pending).toBe(2);
    expect(await rowsOf('key_flaky')).toBeNull();

    const late = record('key_flaky', { outputTokens: 100 });
    recorder.record(late);
    await recorder.flush();
    expect(batches.at(-1)!.map((r) => r.requestId)).toEqual([...first, late].map((r) => r.requestId));
    expect(recorder.pending).toBe(0);
    expect(await rowsOf('key_flaky')).toMatchObject({ requests: 3, outputTokens: 110 });
    await recorder.close();
  });

  it('coalesces refusals summing saved tokens like the other counts, and writes cache hits with theirs', async () => {
    const { store: spy, batches } = flakyStore(0);
    const recorder = new UsageRecorder(spy, { flushMs: 60_000, onError: () => {} });
    const refusal = (over: Partial<UsageRecord>) =>
      record('key_saved', { status: 429, outcome: 'rejected', inputTokens: 0, outputTokens: 0, billedTokens: 0, ts: T + 1_000, ...over });
    recorder.record(refusal({ savedTokens: 5 }));
    recorder.record(refusal({ ts: T + 2_000 }));
    recorder.record(refusal({ ts: T + 3_000, savedTokens: 7, requests: 2 }));
    recorder.record(record('key_saved', { cached: true, billedTokens: 0, savedTokens: 40 }));
    recorder.record(record('key_saved')); // served: saved nothing
    // Refusals with nothing saved stay without the field.
    recorder.record(refusal({ keyId: 'key_unsaved' }));
    recorder.record(refusal({ keyId: 'key_unsaved' }));
    await recorder.flush();
    const [batch] = batches;
    const merged = batch!.find((r) => r.keyId === 'key_saved' && r.outcome === 'rejected')!;
    expect(merged).toMatchObject({ requests: 4, savedTokens: 12, ts: T + 3_000 });
    expect(batch!.filter((r) => r.keyId === 'key_saved')).toHaveLength(3);
    expect(batch!.find((r) => r.keyId === 'key_unsaved')).not.toHaveProperty('savedTokens');
    expect(await rowsOf('key_saved')).toMatchObject({ requests: 6, errors: 4, cachedRequests: 1, savedTokens: 52, billedTokens: 15 });
    expect(await rowsOf('key_unsaved')).toMatchObject({ requests: 2, savedTokens: 0 });
    await recorder.close();
  });

  it('coalesces refusals, which no upstream served, apart from served records, which keep their upstreams', async () => {
    const { store: spy, batches } = flakyStore(0);
    const recorder = new UsageRecorder(spy, { flushMs: 60_000, onError: () => {} });
    const refusal = (over: Partial<UsageRecord>) =>
      record('key_up', { status: 429, outcome: 'rejected', inputTokens: 0, outputTokens: 0, billedTokens: 0, ts: T + 1_000, ...over });
    recorder.record(refusal({}));
    recorder.record(refusal({ ts: T + 2_000, upstream: '' })); // '' and no upstream are one and the same
    recorder.record(refusal({ ts: T + 3_000 }));
    recorder.record(record('key_up', { upstream: 'anthropic-main' }));
    recorder.record(record('key_up', { upstream: 'anthropic-main' }));
    recorder.record(record('key_up', { upstream: 'backup-eu' }));
    recorder.record(record('key_up', { cached: true, billedTokens: 0, savedTokens: 15 })); // a cache hit: no upstream
    // Were a refusal ever recorded with an upstream, its count would stay with that upstream.
    recorder.record(refusal({ ts: T + 4_000, upstream: 'backup-eu' }));
    await recorder.flush();
    const [batch] = batches;
    const refusals = batch!.filter((r) => r.outcome === 'rejected');
    expect(refusals.map((r) => [r.upstream ?? '', r.requests])).toEqual([['', 3], ['backup-eu', 1]]);
    expect(batch!.filter((r) => r.outcome === 'ok').map((r) => r.upstream ?? '')).toEqual(['anthropic-main', 'anthropic-main', 'backup-eu', '']);
    const report = await store.usageReport({ by: 'upstream', keyId: 'key_up' });
    expect(report.map((r) => [r.group, r.requests, r.errors, r.cachedRequests, r.billedTokens])).toEqual([
      ['', 4, 3, 1, 0],
      ['anthropic-main', 2, 0, 0, 30],
      ['backup-eu', 2, 1, 0, 15],
    ]);
    await recorder.close();
  });

  it('flushes on its timer', async () => {
    const recorder = new UsageRecorder(store, { flushMs: 20, onError: () => {} });
    recorder.record(record('key_timer'));
    const deadline = Date.now() + 1_500;
    while ((await rowsOf('key_timer')) === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(await rowsOf('key_timer')).toMatchObject({ requests: 1 });
    expect(recorder.pending).toBe(0);
    await recorder.close();
  });

  it('close() writes everything queued, retrying a failed write', async () => {
    const { store: flaky } = flakyStore(1);
    const onError = vi.fn();
    const recorder = new UsageRecorder(flaky, { flushMs: 60_000, onError });
    for (let i = 0; i < 5; i++) recorder.record(record('key_close'));
    await recorder.close();
    expect(onError).toHaveBeenCalledTimes(1);
    expect(recorder.pending).toBe(0);
    expect(await rowsOf('key_close')).toMatchObject({ requests: 5, billedTokens: 75 });
  });

  it('close() waits for a flush already in progress', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow: Store = Object.create(store) as Store;
    slow.insertUsage = async (records) => {
      await gate;
      return store.insertUsage(records);
    };
    const recorder = new UsageRecorder(slow, { flushMs: 60_000, onError: () => {} });
    recorder.record(record('key_slow'));
    const flushing = recorder.flush();
    recorder.record(record('key_slow'));
    const closing = recorder.close();
    release();
    await Promise.all([flushing, closing]);
    expect(await rowsOf('key_slow')).toMatchObject({ requests: 2 });
  });
});
