/**
 * How the gateway connects to Redis (the limiter in redis.ts, the key-change signal in
 * ../redis-key-changes.ts): one place for the options that make an outage fail fast instead of
 * hang, and for naming a Redis in logs without its password.
 *
 * - A command sent while disconnected fails at once (no offline queue), one that gets no answer
 *   fails after `commandTimeoutMs`, and a command whose connection dropped is failed, never
 *   re-sent after the reconnect (an admission the caller was already refused must not take a
 *   place later).
 * - The client reconnects by itself (every 100 ms … 1 s) for as long as the process runs;
 *   'error' events are logged (at most every few seconds), so an outage never crashes it.
 */
import { Redis } from 'ioredis';
import type { Logger } from '../logger.ts';

export type { Redis };

/** "Redis host:port", for logs and readiness: no user, no password. */
export function describeRedis(url: string): string {
  try {
    const { hostname, port } = new URL(url);
    return `Redis ${hostname}:${port || '6379'}`;
  } catch {
    return 'Redis';
  }
}

import { throttled } from '../logger.ts';

export { throttled };


export interface ConnectOptions {
  logger: Logger;
  /** What the connection is for, in logs and CLIENT LIST ("limits", "key-changes"). */
  role: string;
  /** How long a command may go unanswered before it fails (default 1000 ms). */
  commandTimeoutMs?: number;
}

/** A connected client, or an error naming the Redis (not its password) when it cannot connect. */
export async function connectRedis(url: string, options: ConnectOptions): Promise<Redis> {
  const { logger, role } = options;
  const redis = new Redis(url, {
    lazyConnect: true,
    connectionName: `claudcode-${role}`,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    commandTimeout: options.commandTimeoutMs ?? 1000,
    connectTimeout: 2000,
    retryStrategy: (attempt: number) => Math.min(attempt * 100, 1000),
    // Commands issued in one turn of the event loop go out in one write: under load that turns
    // a socket write per admit and per finish into one per batch (the profile's biggest cost).
    enableAutoPipelining: true,
  });
  const warn = throttled(5000);
  redis.on('error', (err: Error) => {
    warn((suppressed) => logger.warn({ err: { message: err.message }, suppressed }, `${describeRedis(url)} (${role}): connection error`));
  });
  try {
    await redis.connect();
  } catch (err) {
    redis.disconnect();
    throw new Error(`${describeRedis(url)} is not reachable (${role}): ${(err as Error).message}`);
  }
  return redis;
}

/** Quits a client; one that cannot reach its server is just disconnected (no reconnecting). */
export async function quitRedis(redis: Redis): Promise<void> {
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  }
}
