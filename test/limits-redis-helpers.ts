/**
 * Helpers of the Redis limiter and key-change suites: removing a suite's keys, and a logger
 * whose lines the tests can read.
 */
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import { createLogger, type Logger } from '../src/logger.ts';
import { REDIS_URL } from './services.ts';

/** Every Redis key under `prefix`. */
export async function keysUnder(prefix: string): Promise<string[]> {
  const redis = new Redis(REDIS_URL);
  try {
    const keys: string[] = [];
    for await (const batch of redis.scanStream({ match: `${prefix}*`, count: 1000 })) keys.push(...(batch as string[]));
    return keys;
  } finally {
    redis.disconnect();
  }
}

/** Deletes every Redis key under `prefix`. */
export async function deleteKeys(prefix: string): Promise<void> {
  const keys = await keysUnder(prefix);
  if (keys.length === 0) return;
  const redis = new Redis(REDIS_URL);
  try {
    await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
}

/** A logger at `level` whose lines land in `lines` (parsed). */
export function capturedLogger(level = 'debug'): { logger: Logger; lines: Array<{ level: number; msg: string; [k: string]: unknown }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: createLogger(level, sink), lines };
}
