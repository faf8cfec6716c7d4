/**
 * The store's worker thread: owns the SQLite connection (sqlite-db.ts) and answers SqliteStore's
 * requests one at a time, in the order they were sent. Loaded by Node directly as TypeScript
 * (type stripping), so it imports only erasable-syntax .ts files.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SqliteDatabase } from './sqlite-db.ts';
import { serializeError, type SerializedError, type WorkerConfig, type WorkerRequest, type WorkerResponse } from './worker-protocol.ts';

const port = parentPort!;
const config = workerData as WorkerConfig;

function send(response: WorkerResponse): void {
  port.postMessage(response);
}

let database: SqliteDatabase | undefined;
let openError: SerializedError | undefined;
try {
  database = new SqliteDatabase(config.dataDir, config.options);
} catch (err) {
  // The store rejects what it has sent with this error and ends the thread; until it does,
  // every request gets the same answer.
  const cause = serializeError(err);
  openError = { ...cause, message: `cannot open the SQLite store in ${config.dataDir}: ${cause.message}` };
  send({ id: 0, ok: false, openFailed: true, error: openError });
}

port.on('message', (request: WorkerRequest) => {
  if (request.method === 'close') {
    try {
      database?.close();
      send({ id: request.id, ok: true, value: undefined });
    } catch (err) {
      send({ id: request.id, ok: false, error: serializeError(err) });
    }
    port.close(); // nothing else keeps the thread alive: it ends
  } else if (!database) {
    send({ id: request.id, ok: false, error: openError! });
  } else {
    try {
      const method = database[request.method] as (...args: unknown[]) => unknown;
      send({ id: request.id, ok: true, value: method.apply(database, request.args) });
    } catch (err) {
      send({ id: request.id, ok: false, error: serializeError(err) });
    }
  }
});
