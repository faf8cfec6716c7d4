/**
 * The messages between SqliteStore (sqlite.ts, the request thread) and its worker thread
 * (sqlite-worker.ts). Errors cross as plain data, since structured cloning keeps an Error's
 * message but drops the SQLite fields (code, errcode, errstr) a caller may branch on, such as
 * errcode 5, SQLITE_BUSY.
 */
import type { Worker } from 'node:worker_threads';
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
  | CallResult
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

/** A call's answer from a worker: the value, or the error as plain data. */
export type CallResult = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: SerializedError };

/**
 * The calls sent to one worker thread and not yet answered (the SQLite store's and the SQLite
 * cache's). The worker is referenced only while calls are outstanding, or from `hold()` on (while
 * it closes), so an idle worker never keeps the process alive.
 */
export class PendingCalls {
  private readonly worker: Worker;
  private readonly calls = new Map<number, { resolve(value: unknown): void; reject(err: Error): void }>();
  private nextId = 1;
  private held = false;

  constructor(worker: Worker) {
    this.worker = worker;
  }

  /** Posts the message `build` makes for a fresh call id; resolves with the worker's answer. */
  send(build: (id: number) => object): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.worker.postMessage(build(id)); // throws if the message cannot be cloned
      if (this.calls.size === 0) this.worker.ref();
      this.calls.set(id, { resolve, reject });
    });
  }

  /** Settles the call `result` answers. */
  settle(result: CallResult): void {
    const call = this.calls.get(result.id);
    if (!call) return;
    this.calls.delete(result.id);
    if (this.calls.size === 0 && !this.held) this.worker.unref();
    if (result.ok) call.resolve(result.value);
    else call.reject(deserializeError(result.error));
  }

  rejectAll(err: Error): void {
    const calls = [...this.calls.values()];
    this.calls.clear();
    for (const call of calls) call.reject(err);
  }

  /** Keeps the worker referenced from now on, until it ends (closing). */
  hold(): void {
    this.held = true;
    this.worker.ref();
  }
}
