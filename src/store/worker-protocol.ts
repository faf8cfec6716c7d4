/**
 * The messages between SqliteStore (sqlite.ts, the request thread) and its worker thread
 * (sqlite-worker.ts). Errors cross as plain data, since structured cloning keeps an Error's
 * message but drops the SQLite fields (code, errcode, errstr) a caller may branch on, such as
 * errcode 5, SQLITE_BUSY.
 */
import type { SqliteOptions, StoreMethod } from './sqlite-db.ts';

export interface WorkerConfig {
  dataDir: string;
  options: SqliteOptions;
}

/** `close` closes the connection after every request sent before it, then the thread ends. */
export interface WorkerRequest {
  id: number;
  method: StoreMethod | 'close';
  args: unknown[];
}

export interface SerializedError {
  message: string;
  /** 'ERR_SQLITE_ERROR' for SQLite's errors, or a Node error code. */
  code?: string;
  /** SQLite's (extended) result code, e.g. 5 for SQLITE_BUSY, 2067 for a UNIQUE violation. */
  errcode?: number;
  errstr?: string;
}

export type WorkerResponse =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: SerializedError }
  /** The database could not be opened (or migrated); the thread has nothing more to do. */
  | { id: 0; ok: false; openFailed: true; error: SerializedError };

export function serializeError(err: unknown): SerializedError {
  if (!(err instanceof Error)) return { message: String(err) };
  const { code, errcode, errstr } = err as Error & { code?: unknown; errcode?: unknown; errstr?: unknown };
  return {
    message: err.message,
    ...(typeof code === 'string' ? { code } : {}),
    ...(typeof errcode === 'number' ? { errcode } : {}),
    ...(typeof errstr === 'string' ? { errstr } : {}),
  };
}

/** An Error with the worker-side error's message and SQLite fields. */
export function deserializeError(error: SerializedError): Error & Omit<SerializedError, 'message'> {
  const { message, ...fields } = error;
  return Object.assign(new Error(message), fields);
}
