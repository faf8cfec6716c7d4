/**
 * The machine's real PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and Redis
 * (127.0.0.1:6379) for the scale-out suites. `.ci/run` makes sure both are up; a plain `npm test`
 * without them skips those suites and says so (printed once per file, and in the summary).
 *
 * Every suite gets its own PostgreSQL database and its own Redis key prefix, so test files
 * running in parallel never see each other's data.
 */
import { randomBytes } from 'node:crypto';
import { Socket } from 'node:net';
import pg from 'pg';

export const POSTGRES_ADMIN_URL = process.env.CLAUDCODE_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const REDIS_URL = process.env.CLAUDCODE_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

function reachable(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('error', () => done(false));
    socket.connect(Number(port), hostname, () => done(true));
  });
}

/** Whether PostgreSQL and Redis answer; each missing one is reported once per test file. */
export const services = await (async () => {
  const [postgres, redis] = await Promise.all([reachable(POSTGRES_ADMIN_URL), reachable(REDIS_URL)]);
  const missing = [!postgres && `PostgreSQL (${new URL(POSTGRES_ADMIN_URL).host})`, !redis && `Redis (${new URL(REDIS_URL).host})`].filter(Boolean);
  if (missing.length > 0 && !process.env.CI) {
    process.stderr.write(`\n[claudcode tests] skipping scale-out suites: ${missing.join(' and ')} not reachable. Run .ci/run (it starts them) to include them.\n`);
  }
  if (missing.length > 0 && process.env.CI) {
    throw new Error(`CI: ${missing.join(' and ')} not reachable; .ci/run should have started them`);
  }
  return { postgres, redis, both: postgres && redis };
})();

/** A fresh, empty PostgreSQL database for one suite; `drop()` removes it. */
export async function createTestDatabase(label: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `claudcode_test_${label.replace(/\W/g, '_')}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(POSTGRES_ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const client = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await client.end();
      }
    },
  };
}

/** A Redis key prefix no other suite or run uses. */
export function testRedisPrefix(label: string): string {
  return `cctest:${label}:${randomBytes(4).toString('hex')}:`;
}
