/**
 * Runnable fake Anthropic upstream: `node src/fake-upstream/main.ts`.
 *
 * Environment:
 *   PORT                          listen port (default 8787; 0 = random)
 *   FAKE_UPSTREAM_KEY             accepted API key (default sk-ant-fake-upstream-key)
 *   FAKE_UPSTREAM_LATENCY_MS      delay before every response (default 0)
 *   FAKE_UPSTREAM_EVENT_DELAY_MS  delay between SSE events (default 0)
 *   FAKE_UPSTREAM_RECORD          "1" to keep every request in memory (default off: nobody can read them here)
 */
import { startFakeUpstream } from './server.ts';

function envInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v.trim() === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`fake-upstream: ${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
    process.exit(2);
  }
  return n;
}

const upstream = await startFakeUpstream({
  host: '127.0.0.1',
  port: envInt('PORT', 8787),
  apiKey: process.env['FAKE_UPSTREAM_KEY'] || 'sk-ant-fake-upstream-key',
  latencyMs: envInt('FAKE_UPSTREAM_LATENCY_MS', 0),
  eventDelayMs: envInt('FAKE_UPSTREAM_EVENT_DELAY_MS', 0),
  record: process.env['FAKE_UPSTREAM_RECORD'] === '1',
});

console.log(`fake Anthropic upstream listening on ${upstream.url}`);

let stopping = false;
function shutdown(signal: string): void {
  if (stopping) return;
  stopping = true;
  console.log(`fake-upstream: ${signal} received, closing`);
  upstream.close().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error('fake-upstream: error while closing', err);
      process.exit(1);
    },
  );
}
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGTERM', () => shutdown('SIGTERM'));
