/**
 * Free loopback ports, for tests and benchmarks alike: no vitest import here, so that a
 * benchmark can import it without pulling in the test runner.
 */
import { createServer } from 'node:net';

/** A loopback port nothing listens on: taken from the OS and freed again before it resolves. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
