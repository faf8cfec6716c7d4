/**
 * Small test fixtures shared by the suites: seeded randomness (random.ts, which the benchmarks
 * use too), temp directories removed after the file's tests, and usage records with every field
 * filled in.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import type { UsageRecord } from '../src/store/types.ts';

export { seededRandom } from './random.ts';


/** A function making fresh temp directories (named after `prefix`), all removed after the file's tests. */
export function tempDirs(prefix: string): () => string {
  const dirs: string[] = [];
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    const dir = mkdtempSync(join(tmpdir(), `claudcode-${prefix}-`));
    dirs.push(dir);
    return dir;
  };
}

let sequence = 0;

/** A usage record of a served request at `defaults.ts`, with `over` applied; request ids are unique. */
export function usageRecordAt(defaults: Pick<UsageRecord, 'ts' | 'keyId'>, over: Partial<UsageRecord> = {}): UsageRecord {
  sequence++;
  return {
    ...defaults, requestId: `req_${sequence}`, endpoint: 'messages', model: 'claude-haiku-4-5', status: 200,
    inputTokens: 10, outputTokens: 20, cacheCreationTokens: 1, cacheReadTokens: 2, billedTokens: 33, latencyMs: 100,
    cached: false, streamed: false, outcome: 'ok', ...over,
  };
}
