/**
 * Reading a request body (src/request-body.ts) without a socket: the fields the gateway acts on,
 * the checks on them, the size limit, an early stop on malformed input, and the model splice.
 */
import type { IncomingMessage } from 'node:http';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { InvalidRequestError, RequestTooLargeError } from '../src/errors.ts';
import { readScannedRequest, withModel } from '../src/request-body.ts';

/** A stand-in for Node's IncomingMessage: a stream of `chunks` with headers and `complete`. */
function incoming(chunks: (string | Buffer)[], headers: Record<string, string> = {}, leaveOpen = false): IncomingMessage & { pulled: number } {
  const stream = new PassThrough() as unknown as IncomingMessage & { pulled: number };
  Object.assign(stream, { headers, complete: false, pulled: 0 });
  stream.on('end', () => Object.assign(stream, { complete: true }));
  let i = 0;
  const feed = () => {
    if (i === chunks.length) {
      if (!leaveOpen) (stream as unknown as PassThrough).end();
      return;
    }
    stream.pulled = i + 1;
    (stream as unknown as PassThrough).write(chunks[i++]);
    setImmediate(feed);
  };
  feed();
  return stream;
}

const MESSAGES_RULES = { limitBytes: 1024, requireMaxTokens: true };

async function refusal(promise: Promise<unknown>): Promise<Error> {
  const err = await promise.then(() => undefined, (e: unknown) => e as Error);
  if (!err) throw new Error('expected a refusal');
  return err;
}

describe('readScannedRequest', () => {
  it('returns the body as sent and the fields the gateway acts on, across chunks', async () => {
    const text = '{"model":"claude-haiku-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}';
    const request = await readScannedRequest(incoming([text.slice(0, 7), text.slice(7, 30), text.slice(30)]), MESSAGES_RULES);
    expect(request.body.toString()).toBe(text);
    expect(request).toMatchObject({ model: 'claude-haiku-4-5', maxTokens: 64, stream: true });
    // The model bytes alone are replaced when the catalog maps the id; the rest is untouched.
    expect(JSON.parse(withModel(request, 'claude-haiku-4-5-20251001').toString())).toEqual({ ...JSON.parse(text), model: 'claude-haiku-4-5-20251001' });
  });

  it('names each field that is wrong', async () => {
    const err = await refusal(readScannedRequest(incoming(['{"model":42,"max_tokens":1.5,"messages":"hi","stream":"yes"}']), MESSAGES_RULES));
    expect(err).toBeInstanceOf(InvalidRequestError);
    expect(err.message).toBe(
      'model: expected a string, got the number 42; max_tokens: expected a positive integer, got the number 1.5; messages: expected an array, got string; stream: expected a boolean, got string',
    );
    const missing = await refusal(readScannedRequest(incoming(['{}']), MESSAGES_RULES));
    expect(missing.message).toBe('model: Field required; max_tokens: Field required; messages: Field required');
    // count_tokens takes no max_tokens.
    await expect(readScannedRequest(incoming(['{"model":"m","messages":[]}']), { limitBytes: 1024, requireMaxTokens: false })).resolves.toMatchObject({ maxTokens: undefined });
  });

  it('refuses a duplicate model key, however it is spelled', async () => {
    const err = await refusal(readScannedRequest(incoming(['{"model":"claude-haiku-4-5","mod\\u0065l":"claude-opus-4-6","max_tokens":5,"messages":[]}']), MESSAGES_RULES));
    expect(err).toBeInstanceOf(InvalidRequestError);
    expect(err.message).toMatch(/duplicate key "model"/);
  });

  it('clips an overlong model instead of echoing it', async () => {
    const err = await refusal(readScannedRequest(incoming([`{"model":"${'x'.repeat(5000)}","max_tokens":5,"messages":[]}`]), { limitBytes: 10_000, requireMaxTokens: true }));
    expect(err.message).toMatch(/^model: unknown model "x{64}…"$/);
  });

  it('stops reading at the first malformed byte', async () => {
    const source = incoming(['{"model" "x"', 'a'.repeat(500), 'b'.repeat(500), '}']);
    const err = await refusal(readScannedRequest(source, MESSAGES_RULES));
    expect(err.message).toMatch(/^Request body is not valid JSON: Unexpected character/);
    expect(source.pulled).toBeLessThan(4);
  });

  it('refuses a body past the limit, declared or as it streams', async () => {
    expect(await refusal(readScannedRequest(incoming(['{}'], { 'content-length': '2048' }), MESSAGES_RULES))).toBeInstanceOf(RequestTooLargeError);
    const streamed = await refusal(readScannedRequest(incoming(['{"model":"', 'x'.repeat(600), 'x'.repeat(600), '"}']), MESSAGES_RULES));
    expect(streamed).toBeInstanceOf(RequestTooLargeError);
  });

  it('reports a client that goes away mid-body', async () => {
    const source = incoming(['{"model":'], {}, true);
    setTimeout(() => source.destroy(), 20);
    await expect(readScannedRequest(source, MESSAGES_RULES)).rejects.toThrow(/closed the connection/);
  });
});
