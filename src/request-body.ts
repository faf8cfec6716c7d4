/**
 * Reading a Messages API request body without holding up other clients.
 *
 * The body (up to 32 MiB) is read straight off the Node request and scanned as each chunk
 * arrives (json-scan.ts): the JSON is validated and the few top-level fields the gateway acts on
 * are picked out, in steps no larger than a socket chunk, and nothing else is materialised. A
 * whole-body JSON.parse on the event loop is what let one 32 MiB body of `{}`s freeze every other
 * client for seconds and cost a gigabyte of heap; a scan costs one pass over bytes already in
 * memory. A body found invalid part-way is refused at once, without reading the rest.
 */
import type { IncomingMessage } from 'node:http';
import { clip, InvalidRequestError, RequestTooLargeError } from './errors.ts';
import { JsonScanner, type ScannedField } from './json-scan.ts';

/** The top-level fields the gateway reads; everything else is upstream's to judge. */
const CAPTURED = ['model', 'max_tokens', 'messages', 'stream', 'mcp_servers'] as const;

/** Longest model id the gateway keeps or echoes (catalog ids are far shorter). */
const MAX_MODEL_CHARS = 256;

export interface ScannedRequest {
  /** The body exactly as the client sent it. */
  body: Buffer;
  model: string;
  /** Where the model value sits in `body`, so a catalog mapping can replace just those bytes. */
  modelField: ScannedField;
  /** Present on /v1/messages (validated there), absent on count_tokens. */
  maxTokens: number | undefined;
  stream: boolean;
  /** The request names MCP servers of its own (Anthropic's `mcp_servers`, the MCP connector). */
  hasMcpServers: boolean;
}

export interface BodyRules {
  limitBytes: number;
  /** /v1/messages requires max_tokens; count_tokens does not take it. */
  requireMaxTokens: boolean;
}

/**
 * Reads and scans the body, refusing it past `limitBytes` (declared or streamed) or as soon as
 * it is known to be malformed. Returns the body with the fields the gateway acts on.
 */
export async function readScannedRequest(incoming: IncomingMessage, rules: BodyRules): Promise<ScannedRequest> {
  const declared = Number(incoming.headers['content-length']);
  if (declared > rules.limitBytes) throw new RequestTooLargeError(rules.limitBytes);
  const scanner = new JsonScanner({ capture: CAPTURED, maxStringBytes: MAX_MODEL_CHARS * 4 });
  // The chunks that actually arrived, joined once at the end (a single-chunk body, the usual
  // small request, is used as it is). Nothing is allocated for what a client merely declares.
  const chunks: Buffer[] = [];
  let size = 0;
  await readChunks(incoming, (chunk) => {
    if (size + chunk.byteLength > rules.limitBytes) throw new RequestTooLargeError(rules.limitBytes);
    chunks.push(chunk);
    size += chunk.byteLength;
    return scanner.push(chunk);
  });
  const scan = scanner.end();
  if (!scan.ok) throw new InvalidRequestError(`Request body is not valid JSON: ${scan.message}`);
  if (scan.rootKind !== 'object') throw new InvalidRequestError('Request body must be a JSON object.');
  const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
  return { body, ...validateFields(scan.fields, rules) };
}

/**
 * Feeds each chunk of the body to `take` until it returns false, throws, or the body ends. Events
 * rather than `for await`: leaving a for-await loop early destroys the request, and with it the
 * socket the refusal must be written to. Here an early stop leaves the rest of the body flowing
 * to nobody (discarded as it arrives, never buffered), and the response goes out at once.
 */
function readChunks(incoming: IncomingMessage, take: (chunk: Buffer) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    if (incoming.destroyed) {
      reject(new Error('The client closed the connection before the request body was complete.'));
      return;
    }
    const stop = (err?: unknown) => {
      incoming.off('data', onData);
      incoming.off('end', onEnd);
      incoming.off('error', onError);
      incoming.off('close', onClose);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onData = (chunk: Buffer) => {
      try {
        if (!take(chunk)) {
          stop();
          return;
        }
      } catch (err) {
        stop(err);
        return;
      }
      // One chunk per upload per turn of the event loop: libuv reads a busy socket up to 32
      // times in a row, so without this a few fast 30 MiB uploads would be scanned megabytes at
      // a time while every other client waits. (A body already all in, the usual small request,
      // needs no turn.)
      if (incoming.complete) return;
      incoming.pause();
      setImmediate(resume);
    };
    const resume = () => {
      if (!incoming.destroyed) incoming.resume();
    };
    const onEnd = () => stop();
    const onError = (err: Error) => stop(err);
    const onClose = () => {
      if (!incoming.complete) stop(new Error('The client closed the connection before the request body was complete.'));
    };
    incoming.on('data', onData);
    incoming.on('end', onEnd);
    incoming.on('error', onError);
    incoming.on('close', onClose);
  });
}

/** The checks the gateway makes on the fields it acts on, with messages that name the field. */
function validateFields(fields: ReadonlyMap<string, ScannedField>, rules: BodyRules): Omit<ScannedRequest, 'body'> {
  const problems: string[] = [];
  const model = fields.get('model');
  let modelId = '';
  if (!model) problems.push('model: Field required');
  else if (model.kind !== 'string') problems.push(`model: expected a string, got ${describeKind(model)}`);
  else if (model.truncated || (model.value ?? '').length > MAX_MODEL_CHARS) {
    problems.push(`model: unknown model "${clip(model.prefix ?? model.value ?? '')}"`);
  } else if (!model.value) problems.push('model: must not be empty');
  else modelId = model.value;

  let maxTokens: number | undefined;
  const max = fields.get('max_tokens');
  if (rules.requireMaxTokens) {
    if (!max) problems.push('max_tokens: Field required');
    else if (max.kind !== 'number' || max.number === undefined || !Number.isSafeInteger(max.number) || max.number < 1) {
      problems.push(`max_tokens: expected a positive integer, got ${describeKind(max)}`);
    } else maxTokens = max.number;
  }

  const messages = fields.get('messages');
  if (!messages) problems.push('messages: Field required');
  else if (messages.kind !== 'array') problems.push(`messages: expected an array, got ${describeKind(messages)}`);

  const stream = fields.get('stream');
  if (stream && stream.kind !== 'true' && stream.kind !== 'false') problems.push(`stream: expected a boolean, got ${describeKind(stream)}`);

  const mcpServers = fields.get('mcp_servers');
  if (mcpServers && mcpServers.kind !== 'array' && mcpServers.kind !== 'null') problems.push(`mcp_servers: expected an array, got ${describeKind(mcpServers)}`);
  if (problems.length > 0) throw new InvalidRequestError(problems.join('; '));
  return { model: modelId, modelField: model!, maxTokens, stream: stream?.kind === 'true', hasMcpServers: mcpServers?.kind === 'array' };
}

function describeKind(field: ScannedField): string {
  if (field.kind === 'number') return field.number !== undefined && Math.abs(field.number) < 1e15 ? `the number ${field.number}` : 'a number';
  if (field.kind === 'true' || field.kind === 'false') return 'a boolean';
  return field.kind === 'array' ? 'an array' : field.kind === 'object' ? 'an object' : field.kind;
}

/** The body with its top-level model value replaced (a catalog id mapped to an upstream id). */
export function withModel(request: ScannedRequest, upstreamModel: string): Buffer {
  const { body, modelField } = request;
  return Buffer.concat([body.subarray(0, modelField.start), Buffer.from(JSON.stringify(upstreamModel)), body.subarray(modelField.end)]);
}
