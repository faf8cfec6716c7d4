/**
 * The embedded store: one SQLite file (node:sqlite, no native build) in the data directory, in
 * WAL mode so that the CLI can write keys while a gateway process reads them.
 *
 * node:sqlite is synchronous, so the connection lives on a worker thread (sqlite-worker.ts, with
 * the SQL in sqlite-db.ts) and this class, on the request thread, only forwards each call and
 * awaits the answer: a report over a million rows, or a write waiting out another process's lock
 * (busy_timeout), occupies that thread and never stalls requests. Calls run one at a time in the
 * order made. A failed call rejects with the worker's error (message, and SQLite's code, errcode
 * and errstr) and the store carries on. A worker that dies rejects the calls it held and a new
 * one serves the calls after. An idle worker does not keep the process alive; close() lets every
 * call made before it finish, then closes the database and ends the thread.
 */
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { DB_FILE, type SqliteOptions, type StoreMethod } from './sqlite-db.ts';
import type { BudgetBucket, KeyPatch, KeyRecord, Store, UsageQuery, UsageRecord, UsageRow, UsageSeriesQuery, UsageSeriesRow } from './types.ts';
import { deserializeError, PendingCalls, type WorkerConfig, type WorkerRequest, type WorkerResponse } from './worker-protocol.ts';

export type { SqliteOptions } from './sqlite-db.ts';

// A file URL: Node loads a worker's .ts file itself (type stripping), under vitest as well.
const WORKER_URL = new URL('./sqlite-worker.ts', import.meta.url);

/** One worker thread and the calls it has yet to answer. */
class StoreThread {
  /** Settles when the thread has ended, for whatever reason. */
  readonly exited: Promise<void>;
  private readonly worker: Worker;
  private readonly pending: PendingCalls;
  /** Set when the thread can take no more calls: it could not open the database, or it died. */
  private failure: Error | undefined;
  private closing = false;

  constructor(config: WorkerConfig, onExit: (thread: StoreThread) => void) {
    // No inherited Node flags: some the main thread accepts stop a worker from starting
    // (`node --input-type=module -e …` does), and the worker needs none.
    this.worker = new Worker(WORKER_URL, { workerData: config, execArgv: [] });
    this.worker.unref(); // referenced only while calls are outstanding
    this.pending = new PendingCalls(this.worker);
    this.worker.on('message', (response: WorkerResponse) => this.answer(response));
    this.worker.on('error', (err) => {
      this.failure ??= new Error(`the SQLite store's worker thread failed: ${err.message}`);
    });
    this.exited = new Promise((resolve) => {
      this.worker.once('exit', (code) => {
        this.failure ??= new Error(`the SQLite store's worker thread exited unexpectedly (exit code ${code})`);
        this.pending.rejectAll(this.failure);
        onExit(this);
        resolve();
      });
    });
  }

  /** False once the thread has failed or is closing: later calls need a new thread. */
  get usable(): boolean {
    return this.failure === undefined && !this.closing;
  }

  call(method: WorkerRequest['method'], args: unknown[]): Promise<unknown> {
    return this.pending.send((id) => ({ id, method, args }) satisfies WorkerRequest);
  }

  private answer(response: WorkerResponse): void {
    if ('openFailed' in response) {
      this.failure = deserializeError(response.error);
      this.pending.rejectAll(this.failure);
      void this.worker.terminate();
      return;
    }
    this.pending.settle(response);
  }

  /** Lets the calls already sent finish, closes the database, and waits for the thread to end. */
  async close(): Promise<void> {
    this.closing = true;
    // Held until the thread has ended, so that `await store.close()` returns even when nothing
    // else keeps the process alive.
    this.pending.hold();
    if (this.failure) {
      await this.worker.terminate();
      await this.exited;
      return;
    }
    let closeError: unknown;
    await this.call('close', []).catch((err: unknown) => {
      closeError = err;
    });
    await this.exited;
    if (closeError !== undefined) throw closeError;
  }
}

export class SqliteStore implements Store {
  readonly path: string;
  private readonly config: WorkerConfig;
  // Mutable state in one object, never reassigned: a wrapper made with Object.create(store)
  // (as tests do) then shares the store's thread instead of starting its own.
  private readonly state: { thread: StoreThread | undefined; closed: Promise<void> | undefined } = {
    thread: undefined,
    closed: undefined,
  };

  /**
   * Starts the worker, which creates the data directory (0700) and the database file (0600) if
   * need be and migrates the schema; calls made meanwhile wait for it. A file that cannot be
   * opened fails the calls made (each later call tries again).
   */
  constructor(dataDir: string, options: SqliteOptions = {}) {
    this.path = join(dataDir, DB_FILE);
    this.config = { dataDir, options };
    this.state.thread = this.startThread();
  }

  /** Constructs the store and waits until the database is open and migrated (or rejects). */
  static async open(dataDir: string, options: SqliteOptions = {}): Promise<SqliteStore> {
    const store = new SqliteStore(dataDir, options);
    try {
      await store.keysGeneration();
    } catch (err) {
      await store.close();
      throw err;
    }
    return store;
  }

  private startThread(): StoreThread {
    return new StoreThread(this.config, (thread) => {
      if (this.state.thread === thread) this.state.thread = undefined;
    });
  }

  private call<M extends StoreMethod>(method: M, ...args: Parameters<Store[M]>): ReturnType<Store[M]> {
    if (this.state.closed) return Promise.reject(new Error('the SQLite store is closed')) as ReturnType<Store[M]>;
    let thread = this.state.thread;
    if (!thread?.usable) thread = this.state.thread = this.startThread();
    return thread.call(method, args) as ReturnType<Store[M]>;
  }

  createKey(key: KeyRecord): Promise<void> {
    return this.call('createKey', key);
  }

  getKey(id: string): Promise<KeyRecord | null> {
    return this.call('getKey', id);
  }

  listKeys(): Promise<KeyRecord[]> {
    return this.call('listKeys');
  }

  updateKey(id: string, patch: KeyPatch): Promise<KeyRecord | null> {
    return this.call('updateKey', id, patch);
  }

  deleteKey(id: string): Promise<boolean> {
    return this.call('deleteKey', id);
  }

  keysGeneration(): Promise<number> {
    return this.call('keysGeneration');
  }

  insertUsage(records: UsageRecord[]): Promise<void> {
    return this.call('insertUsage', records);
  }

  budgetBuckets(sinceMs: number, options?: { keyId?: string; untilMs?: number }): Promise<BudgetBucket[]> {
    return options === undefined ? this.call('budgetBuckets', sinceMs) : this.call('budgetBuckets', sinceMs, options);
  }

  usageReport(query: UsageQuery): Promise<UsageRow[]> {
    return this.call('usageReport', query);
  }

  usageSeries(query: UsageSeriesQuery): Promise<UsageSeriesRow[]> {
    return this.call('usageSeries', query);
  }

  getMeta(name: string): Promise<string | null> {
    return this.call('getMeta', name);
  }

  setMeta(name: string, value: string): Promise<void> {
    return this.call('setMeta', name, value);
  }

  setMetaIfAbsent(name: string, value: string): Promise<string> {
    return this.call('setMetaIfAbsent', name, value);
  }

  ping(): Promise<void> {
    return this.call('ping');
  }

  get description(): string {
    return `SQLite ${this.path}`;
  }

  /** Idempotent. Calls made before it finish first; calls made after it reject. */
  close(): Promise<void> {
    this.state.closed ??= this.state.thread?.close() ?? Promise.resolve();
    return this.state.closed;
  }
}
