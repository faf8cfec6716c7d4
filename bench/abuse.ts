/**
 * `npm run bench:abuse`: can one client's huge uploads hold up everyone else? Measures the
 * gateway's `/health` latency (a stand-in for every other client) and its peak memory while
 * several clients send 30 MiB request bodies, against a quiet baseline in the same run.
 *
 *   quiet      nobody uploads
 *   at-limit   a key already at its concurrency limit sends 30 MiB bodies of `{}`s (each must be
 *              refused with 429; the gateway need not read a byte of them)
 *   admitted   a key with room sends 30 MiB bodies of `{}`s for a model it may not use (each is
 *              read and checked in full, then refused with 403; nothing goes upstream)
 *
 * The fake upstream and the gateway run as child processes; this process is the load. Every run
 * is bounded in time and stops by itself.
 *
 * Options:
 *   --gateway-dir DIR   run the gateway from another checkout (e.g. a worktree of an older
 *                       commit, for a before/after figure); default: this checkout
 *   --seconds S         length of each scenario (default 10)
 *   --clients N         parallel uploaders (default 4)
 *   --body-mib M        size of each upload (default 30)
 *
 * Writes bench/results/abuse-latest.json (or abuse-<label>.json with --label).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { freePort } from '../test/ports.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const NODE = process.execPath;

const { values: argv } = parseArgs({
  options: {
    'gateway-dir': { type: 'string' },
    seconds: { type: 'string', default: '10' },
    clients: { type: 'string', default: '4' },
    'body-mib': { type: 'string', default: '30' },
    label: { type: 'string', default: 'latest' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (argv.help) {
  console.log((readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0] ?? '').replace(/^\/\*\*\n?/, '').replace(/^ \* ?/gm, ''));
  process.exit(0);
}
const SECONDS = Math.min(120, Math.max(1, Number(argv.seconds)));
const CLIENTS = Math.min(32, Math.max(1, Math.trunc(Number(argv.clients))));
const BODY_BYTES = Math.min(64, Math.max(1, Number(argv['body-mib']))) * 1024 * 1024;
const GATEWAY_DIR = resolve(argv['gateway-dir'] ?? ROOT);
/** The whole run is killed after this long, whatever happens. */
const HARD_LIMIT_MS = (SECONDS * 3 + 120) * 1000;

const FAKE_KEY = `sk-ant-fake-abuse-${randomBytes(8).toString('hex')}`;
const ADMIN_TOKEN = randomBytes(16).toString('hex');

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

const children: ChildProcess[] = [];
let tempDir: string | undefined;

function startChild(args: string[], cwd: string, env: Record<string, string>): { proc: ChildProcess; output: () => string } {
  const proc = spawn(NODE, args, { cwd, env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (d: Buffer) => {
    output = (output + d.toString()).slice(-8192);
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  children.push(proc);
  return { proc, output: () => output };
}

function cleanUp(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  if (tempDir) rmSync(tempDir, { recursive: true, force: true });
  tempDir = undefined;
}
process.on('exit', cleanUp);
setTimeout(() => {
  console.error(`bench:abuse: exceeded its hard limit of ${HARD_LIMIT_MS / 1000} s`);
  process.exit(2);
}, HARD_LIMIT_MS).unref();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, output: () => string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}:\n${output()}`);
}

function rssMiB(pid: number | undefined): number {
  try {
    const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb ? Number(kb) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]! : NaN;
}

interface ScenarioResult {
  scenario: string;
  health: { count: number; p50: number; p99: number; max: number };
  uploads: { sent: number; statuses: Record<string, number> };
  peakRssMiB: number;
}

/** 30 MiB of `{}`s in a messages array: cheap to send, as costly as JSON gets to parse. */
function hostileBody(model: string): Buffer {
  const head = Buffer.from(`{"model":"${model}","max_tokens":10,"messages":[`);
  const tail = Buffer.from('{}]}');
  const items = Math.floor((BODY_BYTES - head.length - tail.length) / 3);
  const body = Buffer.alloc(head.length + items * 3 + tail.length);
  head.copy(body, 0);
  body.fill('{},', head.length, head.length + items * 3);
  tail.copy(body, head.length + items * 3);
  return body;
}

async function runScenario(name: string, gatewayUrl: string, gatewayPid: number | undefined, upload: (() => Promise<number>) | undefined): Promise<ScenarioResult> {
  const deadline = performance.now() + SECONDS * 1000;
  const latencies: number[] = [];
  const statuses: Record<string, number> = {};
  let sent = 0;
  let peakRssMiB = rssMiB(gatewayPid);
  const sampler = setInterval(() => {
    peakRssMiB = Math.max(peakRssMiB, rssMiB(gatewayPid));
  }, 50);
  const health = new Pool(gatewayUrl, { connections: 1, keepAliveTimeout: 60_000, headersTimeout: 120_000 });

  const pinger = (async () => {
    while (performance.now() < deadline) {
      const started = performance.now();
      const res = await health.request({ method: 'GET', path: '/health' });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`/health answered ${res.statusCode}`);
      latencies.push(performance.now() - started);
      await sleep(10);
    }
  })();
  const uploaders = upload
    ? Array.from({ length: CLIENTS }, async () => {
        while (performance.now() < deadline) {
          let status: string;
          try {
            status = String(await upload());
          } catch (err) {
            status = `error ${(err as { code?: string }).code ?? (err as Error).message}`;
          }
          statuses[status] = (statuses[status] ?? 0) + 1;
          sent++;
        }
      })
    : [];
  await Promise.all([pinger, ...uploaders]);
  clearInterval(sampler);
  await health.close();
  latencies.sort((a, b) => a - b);
  const round = (x: number) => Math.round(x * 100) / 100;
  return {
    scenario: name,
    health: { count: latencies.length, p50: round(percentile(latencies, 50)), p99: round(percentile(latencies, 99)), max: round(latencies.at(-1) ?? NaN) },
    uploads: { sent, statuses },
    peakRssMiB: Math.round(peakRssMiB),
  };
}

async function adminCreateKey(gatewayUrl: string, body: Record<string, unknown>): Promise<string> {
  const res = await fetch(`${gatewayUrl}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as { key?: string };
  if (res.status !== 201 || !json.key) throw new Error(`creating a key failed: ${res.status} ${JSON.stringify(json)}`);
  return json.key;
}

async function main(): Promise<void> {
  tempDir = mkdtempSync(join(tmpdir(), 'claudcode-abuse-'));
  console.log(`claudcode abuse benchmark: Node ${process.version}; gateway from ${GATEWAY_DIR === ROOT ? 'this checkout' : GATEWAY_DIR}`);
  console.log(`${CLIENTS} clients × ${BODY_BYTES / 1024 / 1024} MiB bodies, ${SECONDS} s per scenario; /health probed every 10 ms\n`);

  const fake = startChild(['src/fake-upstream/main.ts'], ROOT, { PORT: '0', FAKE_UPSTREAM_KEY: FAKE_KEY });
  let fakeUrl = '';
  await until('the fake upstream', fake.output, async () => {
    fakeUrl = /listening on (http:\/\/[^\s]+)/.exec(fake.output())?.[1] ?? '';
    return fakeUrl !== '';
  });
  const port = await freePort();
  const gateway = startChild(['src/cli.ts', 'start'], GATEWAY_DIR, {
    HOST: '127.0.0.1',
    PORT: String(port),
    CLAUDCODE_DATA_DIR: join(tempDir, 'data'),
    CLAUDCODE_ADMIN_TOKEN: ADMIN_TOKEN,
    CLAUDCODE_LOG_LEVEL: 'warn',
    CLAUDCODE_UPSTREAM_URL: fakeUrl,
    CLAUDCODE_UPSTREAM_KEY: FAKE_KEY,
  });
  const gatewayUrl = `http://127.0.0.1:${port}`;
  await until('gateway /health', gateway.output, async () => (await fetch(`${gatewayUrl}/health`)).ok);

  const limitedKey = await adminCreateKey(gatewayUrl, { name: 'at-limit', concurrent: 1, rpm: 100_000 });
  const roomyKey = await adminCreateKey(gatewayUrl, { name: 'admitted', concurrent: 100, rpm: 100_000, models: ['claude-haiku-4-5'] });
  const uploads = new Pool(gatewayUrl, { connections: CLIENTS, keepAliveTimeout: 60_000, headersTimeout: 300_000, bodyTimeout: 300_000 });
  const send = (key: string, body: Buffer) => async () => {
    const res = await uploads.request({ method: 'POST', path: '/v1/messages', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body });
    await res.body.dump();
    return res.statusCode;
  };

  const results: ScenarioResult[] = [];
  results.push(await runScenario('quiet', gatewayUrl, gateway.proc.pid, undefined));

  // Hold the limited key's only slot with a slow stream for the whole scenario.
  const holder = new AbortController();
  const held = fetch(`${gatewayUrl}/v1/messages`, {
    method: 'POST',
    signal: holder.signal,
    headers: { 'x-api-key': limitedKey, 'content-type': 'application/json', 'x-fake-output-tokens': '4000', 'x-fake-event-delay-ms': '50' },
    body: JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 4096, stream: true, messages: [{ role: 'user', content: 'hold' }] }),
  }).then(async (res) => {
    if (res.status !== 200) throw new Error(`the slot-holding stream got ${res.status}`);
    for await (const _ of res.body!) void _;
  }).catch((err: unknown) => {
    if ((err as Error).name !== 'AbortError') throw err;
  });
  await sleep(300);
  results.push(await runScenario('at-limit', gatewayUrl, gateway.proc.pid, send(limitedKey, hostileBody('claude-haiku-4-5'))));
  holder.abort();
  await held;

  results.push(await runScenario('admitted', gatewayUrl, gateway.proc.pid, send(roomyKey, hostileBody('claude-opus-4-6'))));
  await uploads.close();

  console.log('scenario   /health p50   p99        max        uploads (status: count)          gateway peak RSS');
  for (const r of results) {
    const statuses = Object.entries(r.uploads.statuses).map(([s, n]) => `${s}: ${n}`).join(', ') || '-';
    console.log(
      `${r.scenario.padEnd(10)} ${`${r.health.p50} ms`.padEnd(13)} ${`${r.health.p99} ms`.padEnd(10)} ${`${r.health.max} ms`.padEnd(10)} ${statuses.padEnd(32)} ${r.peakRssMiB} MiB`,
    );
  }
  const resultsDir = join(ROOT, 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });
  const out = join(resultsDir, `abuse-${argv.label.replace(/[^\w.-]/g, '_')}.json`);
  writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), node: process.version, gatewayDir: GATEWAY_DIR === ROOT ? '.' : GATEWAY_DIR, clients: CLIENTS, bodyBytes: BODY_BYTES, seconds: SECONDS, results }, null, 2));
  console.log(`\nwrote ${out}`);
  for (const c of children) c.kill('SIGTERM');
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench:abuse: FAILED — ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
