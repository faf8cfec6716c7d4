/**
 * `npm run bench`: what the gateway costs on top of the upstream, measured in one run against
 * the fake upstream directly and through the gateway, interleaved so machine noise hits both.
 *
 *   added latency  p50/p99, 1 request in flight: JSON, and streaming (first byte, last byte)
 *   throughput     requests/s at a fixed concurrency (default 32): JSON and streaming
 *
 * Two gateways are measured beside the direct baseline when the machine's PostgreSQL
 * (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer: the embedded default (SQLite, limits in
 * process) and the scale-out mode (PostgreSQL + Redis, a fresh database and key prefix, removed
 * afterwards). Without them, or with --no-scale-out, only the embedded one.
 *
 * The embedded gateway is also measured with its response cache: a hit (the same request again)
 * and a miss (every request different, so each is keyed, sent upstream and stored). The other
 * gateway paths send `X-No-Cache: true`, so they measure proxying.
 *
 * The floor: a bare Node proxy (bench/bare-proxy.ts: the same HTTP server and undici client,
 * nothing else) on the gateway's core, measured like a gateway. What the gateway costs above it
 * is its own work; the floor is what one more HTTP exchange costs on the machine.
 *
 * Failover: two more embedded gateways with two upstreams each, both healthy or the first one a
 * dead port (its breaker open after the warm-up), measured at 1 in flight against each other.
 *
 * The fake upstream and the gateways run as child processes (pinned to cores 1 and 0 with
 * taskset when available); the load generator is this process (undici Pool, keep-alive).
 *
 * Options (argv, or the environment variable in brackets):
 *   --quick                 short smoke run (BENCH_QUICK=1)
 *   --reps N                repetitions of every measurement, medians reported (BENCH_REPS)
 *   --latency-requests N    requests per latency run (BENCH_LATENCY_REQUESTS)
 *   --seconds S             duration cap of each throughput run (BENCH_SECONDS)
 *   --concurrency C         requests in flight for throughput (BENCH_CONCURRENCY)
 *   --output-tokens N       text deltas per stream / words per JSON reply (BENCH_OUTPUT_TOKENS)
 *   --no-pin                do not pin the children to cores
 *   --cpu-prof              profile the gateway child (--cpu-prof) and summarise where its time goes
 *   --no-scale-out          do not measure the scale-out mode
 *
 * Writes bench/results/latest.json. Exits non-zero if any request failed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { freePort } from '../test/ports.ts';
import { formatProfileSummary, summariseProfile, type ProfileSummary } from './cpu-profile.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const RESULTS_DIR = join(ROOT, 'bench', 'results');
const NODE = process.execPath;

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

const { values: argv } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    reps: { type: 'string' },
    'latency-requests': { type: 'string' },
    seconds: { type: 'string' },
    concurrency: { type: 'string' },
    'output-tokens': { type: 'string' },
    'no-pin': { type: 'boolean', default: false },
    'cpu-prof': { type: 'boolean', default: false },
    'no-scale-out': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (argv.help) {
  const doc = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0] ?? '';
  console.log(doc.replace(/^\/\*\*\n?/, '').replace(/^ \* ?/gm, ''));
  process.exit(0);
}

function numberOption(flag: string | undefined, envName: string, fallback: number, min: number, max: number, integer = true): number {
  const raw = flag ?? process.env[envName];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    console.error(`bench: ${envName} (or its flag) must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}], got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
}

const QUICK = argv.quick || process.env['BENCH_QUICK'] === '1';
const OPTS = {
  quick: QUICK,
  reps: numberOption(argv.reps, 'BENCH_REPS', QUICK ? 2 : 5, 1, 15),
  latencyRequests: numberOption(argv['latency-requests'], 'BENCH_LATENCY_REQUESTS', QUICK ? 200 : 2000, 10, 100_000),
  /** A latency run also stops after this long, whatever its count. */
  latencyCapMs: QUICK ? 10_000 : 30_000,
  throughputSeconds: numberOption(argv.seconds, 'BENCH_SECONDS', QUICK ? 1 : 3, 0.2, 60, false),
  /** A throughput run also stops after this many requests. */
  throughputMaxRequests: QUICK ? 20_000 : 200_000,
  concurrency: numberOption(argv.concurrency, 'BENCH_CONCURRENCY', 32, 1, 1024),
  outputTokens: numberOption(argv['output-tokens'], 'BENCH_OUTPUT_TOKENS', 50, 1, 4096),
  warmupRequests: QUICK ? 100 : 300,
  warmupSeconds: QUICK ? 0.5 : 1.5,
  pin: !argv['no-pin'],
  cpuProf: argv['cpu-prof'],
  scaleOut: !argv['no-scale-out'],
};
/** A run during which other processes used this much of a core (in %) is flagged as noisy. */
const NOISY_PCT = 10;
/** The whole run is killed (and fails) after this long, whatever happens. */
const HARD_LIMIT_MS = QUICK ? 150_000 : 600_000;

// ---------------------------------------------------------------------------
// The request
// ---------------------------------------------------------------------------

const FAKE_KEY = `sk-ant-fake-bench-${randomBytes(8).toString('hex')}`;
const ADMIN_TOKEN = randomBytes(16).toString('hex'); // 32 characters

const MESSAGES_REQUEST = {
  model: 'claude-sonnet-4-6',
  max_tokens: 256,
  system: 'You are a concise assistant for a software engineering team. Answer in plain prose.',
  messages: [
    { role: 'user', content: 'What is the difference between a process and a thread? Keep it short.' },
    { role: 'assistant', content: 'A process has its own address space; the threads of a process share it and can touch the same memory.' },
    { role: 'user', content: 'Then which should a network server in Node.js use to scale across cores, and why?' },
  ],
};
const BODY: Record<Mode, string> = {
  json: JSON.stringify(MESSAGES_REQUEST),
  stream: JSON.stringify({ ...MESSAGES_REQUEST, stream: true }),
};
const STREAM_END = 'event: message_stop\ndata: {"type":"message_stop"}\n\n';

type Mode = 'json' | 'stream';
type PathName = 'direct' | 'bare' | 'gateway' | 'scaleout' | 'cachehit' | 'cachemiss';
const PATH_LABEL: Record<PathName, string> = { direct: 'direct', bare: 'bare proxy', gateway: 'embedded', scaleout: 'scale-out', cachehit: 'cache hit', cachemiss: 'cache miss' };

/** A different request every time (a counter in the last message), so every one is a cache miss. */
let missCounter = 0;
function uniqueBody(mode: Mode): string {
  const request = JSON.parse(BODY[mode]) as typeof MESSAGES_REQUEST;
  const last = request.messages.at(-1)!;
  last.content = `${last.content} (request ${++missCounter})`;
  return JSON.stringify(request);
}
const MODES: Mode[] = ['json', 'stream'];

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

interface Child {
  name: string;
  proc: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

const children: Child[] = [];
let tempDir: string | undefined;
let expectingExit = false;

function canPin(): boolean {
  if (availableParallelism() < 2) return false;
  const probe = spawnSync('taskset', ['-c', '0,1', 'true'], { stdio: 'ignore', timeout: 5000 });
  return probe.status === 0;
}

function startChild(name: string, args: string[], env: Record<string, string>, core: number | undefined): Child {
  const command = core === undefined ? NODE : 'taskset';
  const fullArgs = core === undefined ? args : ['-c', String(core), NODE, ...args];
  const proc = spawn(command, fullArgs, {
    cwd: ROOT,
    env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (d: Buffer) => {
    output = (output + d.toString()).slice(-8192);
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const child: Child = { name, proc, output: () => output, exited };
  proc.once('exit', (code, signal) => {
    if (!expectingExit) {
      console.error(`\nbench: ${name} exited unexpectedly (code ${code}, signal ${signal}). Its last output:\n${output}`);
      fatal(`${name} died`);
    }
  });
  children.push(child);
  return child;
}


const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what: string, child: Child, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.proc.exitCode !== null) throw new Error(`${child.name} exited before ${what}:\n${child.output()}`);
    try {
      if (await check()) return;
    } catch {
      // not there yet
    }
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}:\n${child.output()}`);
}

async function stopChildren(): Promise<void> {
  expectingExit = true;
  await Promise.all(
    children.map(async (c) => {
      if (c.proc.exitCode !== null || c.proc.signalCode !== null) return;
      c.proc.kill('SIGTERM');
      const timer = setTimeout(() => c.proc.kill('SIGKILL'), 10_000);
      await c.exited;
      clearTimeout(timer);
    }),
  );
}

function killChildrenNow(): void {
  expectingExit = true;
  for (const c of children) {
    if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
  }
  if (tempDir) {
    rmSync(tempDir, { recursive: true, force: true });
    tempDir = undefined;
  }
}

let fatalCalled = false;
function fatal(reason: string, code = 1): void {
  if (fatalCalled) return;
  fatalCalled = true;
  console.error(`\nbench: FAILED — ${reason}. Killing child processes.`);
  killChildrenNow();
  process.exit(code);
}

process.on('exit', killChildrenNow);
process.on('SIGINT', () => fatal('interrupted (SIGINT)', 130));
process.on('SIGTERM', () => fatal('terminated (SIGTERM)', 143));
process.on('uncaughtException', (err) => fatal(`uncaught exception: ${err.stack ?? String(err)}`));
process.on('unhandledRejection', (err) => fatal(`unhandled rejection: ${(err as Error)?.stack ?? String(err)}`));
setTimeout(() => fatal(`the run exceeded its hard limit of ${HARD_LIMIT_MS / 1000} s`, 2), HARD_LIMIT_MS).unref();

// ---------------------------------------------------------------------------
// CPU accounting of the children (Linux /proc), so the gateway's cost per request shows directly
// ---------------------------------------------------------------------------

const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 });
  const n = Number(r.stdout?.trim());
  return Number.isFinite(n) && n > 0 ? n : 100;
})();

/** CPU time (user + system) of a process, in ms, or undefined where /proc is unavailable. */
function cpuMsOf(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
  } catch {
    return undefined;
  }
}

/** CPU time the whole machine spent busy (all cores), in ms, from /proc/stat. */
function machineBusyMs(): number | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
    return (busy * 1000) / CLK_TCK;
  } catch {
    return undefined;
  }
}

/**
 * CPU time of the scale-out mode's services (every postgres and redis-server process), in ms:
 * their work for the scale-out gateway is ours, not noise.
 */
function servicesCpuMs(): number {
  let total = 0;
  try {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
        if (comm !== 'postgres' && comm !== 'redis-server') continue;
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        total += ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
      } catch {
        // the process ended meanwhile
      }
    }
  } catch {
    // no /proc
  }
  return total;
}

/** The processes whose CPU a run counts as its own (the services too, for the scale-out mode). */
interface Pids {
  gateway?: number;
  fake?: number;
  services?: boolean;
}

/** CPU used by processes other than ours over `windowMs`, in % of one core (undefined without /proc). */
async function foreignCpuOver(windowMs: number, pids: Pids): Promise<number | undefined> {
  const snap = () => ({
    machine: machineBusyMs(), gateway: cpuMsOf(pids.gateway), fake: cpuMsOf(pids.fake), services: pids.services ? servicesCpuMs() : 0,
    self: process.cpuUsage(), at: performance.now(),
  });
  const b = snap();
  await sleep(windowMs);
  const a = snap();
  if (a.machine === undefined || b.machine === undefined || a.gateway === undefined || b.gateway === undefined || a.fake === undefined || b.fake === undefined) return undefined;
  const self = process.cpuUsage(b.self);
  const ours = a.gateway - b.gateway + (a.fake - b.fake) + (a.services - b.services) + (self.user + self.system) / 1000;
  return Math.max(0, ((a.machine - b.machine - ours) / (a.at - b.at)) * 100);
}

let quietBudgetMs = QUICK ? 5_000 : 40_000;
let quietWaitedMs = 0;

/** Waits (within a budget for the whole run) until other processes leave the cores alone. */
async function waitForQuiet(pids: Pids): Promise<void> {
  let announced = false;
  while (quietBudgetMs > 0 && !fatalCalled) {
    const started = performance.now();
    const foreign = await foreignCpuOver(250, pids);
    if (foreign === undefined || foreign < NOISY_PCT) break;
    if (!announced) {
      process.stdout.write(`  (other processes use ${Math.round(foreign)}% of a core: waiting for quiet, ${Math.round(quietBudgetMs / 1000)} s of waiting left)\n`);
      announced = true;
    }
    const spent = performance.now() - started;
    quietBudgetMs -= spent;
    quietWaitedMs += spent;
  }
}

// ---------------------------------------------------------------------------
// Load generation
// ---------------------------------------------------------------------------

interface Target {
  name: PathName;
  pool: Pool;
  headers: Record<Mode, Record<string, string>>;
  /** The request body; the same one every time unless given. */
  body?: (mode: Mode) => string;
}

class Failures {
  total = 0;
  readonly reasons = new Map<string, number>();
  add(reason: string): void {
    this.total++;
    this.reasons.set(reason, (this.reasons.get(reason) ?? 0) + 1);
  }
}
const failures = new Failures();

interface Samples {
  ok: number;
  failed: number;
  /** Time to last byte, ms. */
  total: number[];
  /** Time to first body byte, ms. */
  first: number[];
}

async function oneRequest(t: Target, mode: Mode, s: Samples): Promise<void> {
  const started = performance.now();
  let first = -1;
  try {
    const res = await t.pool.request({ method: 'POST', path: '/v1/messages', headers: t.headers[mode], body: t.body ? t.body(mode) : BODY[mode] });
    const chunks: Buffer[] = [];
    let tail = '';
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      if (first < 0) first = performance.now() - started;
      if (mode === 'json') chunks.push(chunk);
      else tail = (tail + chunk.toString('latin1', Math.max(0, chunk.length - STREAM_END.length))).slice(-STREAM_END.length);
    }
    const total = performance.now() - started;
    let problem: string | undefined;
    if (res.statusCode !== 200) problem = `HTTP ${res.statusCode}`;
    else if (mode === 'stream') {
      if (!String(res.headers['content-type']).startsWith('text/event-stream')) problem = 'stream not text/event-stream';
      else if (tail !== STREAM_END) problem = 'stream did not end with message_stop';
    } else {
      const message = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { type?: string; usage?: { output_tokens?: number } };
      if (message.type !== 'message' || message.usage?.output_tokens !== OPTS.outputTokens) problem = 'unexpected JSON body';
    }
    if (problem) {
      s.failed++;
      failures.add(`${t.name} ${mode}: ${problem}`);
      return;
    }
    s.ok++;
    s.total.push(total);
    s.first.push(first);
  } catch (err) {
    s.failed++;
    const e = err as { code?: string; message?: string };
    failures.add(`${t.name} ${mode}: ${e.code ?? e.message ?? String(err)}`);
  }
}

/** `concurrency` workers issue requests until `maxRequests` were issued or `durationMs` passed. */
async function load(t: Target, mode: Mode, concurrency: number, maxRequests: number, durationMs: number): Promise<Samples & { elapsedMs: number }> {
  const s: Samples = { ok: 0, failed: 0, total: [], first: [] };
  let issued = 0;
  const started = performance.now();
  const deadline = started + durationMs;
  const worker = async () => {
    while (issued < maxRequests && performance.now() < deadline && !fatalCalled) {
      issued++;
      await oneRequest(t, mode, s);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { ...s, elapsedMs: performance.now() - started };
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))]!;
}

function median(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

const round = (x: number, digits = 3) => (Number.isFinite(x) ? Math.round(x * 10 ** digits) / 10 ** digits : null);

interface Distribution {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  max: number;
}

function distribution(values: number[]): Distribution {
  const sorted = [...values].sort((a, b) => a - b);
  const mean = sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length);
  return { p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), mean, max: sorted.at(-1) ?? NaN };
}

interface RunResult {
  rep: number;
  ok: number;
  failed: number;
  elapsedMs: number;
  rps: number;
  /** Time to last byte. */
  latency: Distribution;
  /** Time to first body byte. */
  firstByte: Distribution;
  /** CPU time per completed request, in microseconds (undefined without /proc). */
  cpuUsPerRequest: { gateway?: number; fake?: number; services?: number; loadGenerator: number };
  /** CPU used during the run by processes other than these three, in % of one core: noise. */
  foreignCpuPct?: number;
}

/**
 * Waits (up to 10 s) until the gateway process is idle. After a run, that is when the work its
 * requests left behind is done — the response cache writing the entries of a run of misses on
 * its SQLite thread, a usage batch — so it counts as theirs, not as the next run's (the hit runs
 * share a gateway with the miss runs).
 */
async function waitForIdle(pid: number | undefined): Promise<void> {
  for (let waited = 0; pid !== undefined && waited < 10_000; waited += 200) {
    const before = cpuMsOf(pid);
    await sleep(200);
    const after = cpuMsOf(pid);
    // /proc counts in clock ticks (10 ms): at most one tick in 200 ms is idle enough.
    if (before === undefined || after === undefined || after - before <= 10) return;
  }
}

async function measure(t: Target, mode: Mode, kind: 'latency' | 'throughput', rep: number, pids: Pids): Promise<RunResult> {
  const before = { gateway: cpuMsOf(pids.gateway), fake: cpuMsOf(pids.fake), services: pids.services ? servicesCpuMs() : 0, self: process.cpuUsage(), machine: machineBusyMs() };
  const r =
    kind === 'latency'
      ? await load(t, mode, 1, OPTS.latencyRequests, OPTS.latencyCapMs)
      : await load(t, mode, OPTS.concurrency, OPTS.throughputMaxRequests, OPTS.throughputSeconds * 1000);
  const self = process.cpuUsage(before.self);
  const after = { gateway: cpuMsOf(pids.gateway), fake: cpuMsOf(pids.fake), services: pids.services ? servicesCpuMs() : 0, machine: machineBusyMs() };
  // The gateway's CPU per request includes what its requests left to do after the run.
  await waitForIdle(pids.gateway);
  const gatewayAfterIdle = cpuMsOf(pids.gateway);
  let foreignCpuPct: number | undefined;
  if (after.machine !== undefined && before.machine !== undefined && after.gateway !== undefined && before.gateway !== undefined && after.fake !== undefined && before.fake !== undefined) {
    const ours = after.gateway - before.gateway + (after.fake - before.fake) + (after.services - before.services) + (self.user + self.system) / 1000;
    foreignCpuPct = Math.max(0, ((after.machine - before.machine - ours) / r.elapsedMs) * 100);
  }
  const perReq = (after: number | undefined, b: number | undefined) =>
    after === undefined || b === undefined || r.ok === 0 ? undefined : ((after - b) * 1000) / r.ok;
  const gatewayCpu = t.name === 'direct' ? undefined : perReq(gatewayAfterIdle, before.gateway);
  const fakeCpu = perReq(after.fake, before.fake);
  const servicesCpu = pids.services ? perReq(after.services, before.services) : undefined;
  return {
    rep,
    ok: r.ok,
    failed: r.failed,
    elapsedMs: r.elapsedMs,
    rps: (r.ok * 1000) / r.elapsedMs,
    latency: distribution(r.total),
    firstByte: distribution(r.first),
    cpuUsPerRequest: {
      ...(gatewayCpu === undefined ? {} : { gateway: gatewayCpu }),
      ...(fakeCpu === undefined ? {} : { fake: fakeCpu }),
      ...(servicesCpu === undefined ? {} : { services: servicesCpu }),
      loadGenerator: (self.user + self.system) / Math.max(1, r.ok),
    },
    ...(foreignCpuPct === undefined ? {} : { foreignCpuPct }),
  };
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

/**
 * A second gateway in the scale-out mode on the machine's PostgreSQL and Redis: a fresh database
 * and key prefix, both removed by `cleanUp`. Undefined (with a note) when either is unreachable.
 */
async function startScaleOut(
  gatewayEnv: Record<string, string>,
  fakeUrl: string,
  pinned: boolean,
): Promise<{ child: Child; url: string; key: string; cleanUp: () => Promise<void> } | undefined> {
  const reachable = (port: number) =>
    new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port, timeout: 1000 });
      socket.once('connect', () => (socket.destroy(), resolve(true)));
      socket.once('error', () => resolve(false));
      socket.once('timeout', () => (socket.destroy(), resolve(false)));
    });
  if (!(await reachable(5432)) || !(await reachable(6379))) {
    console.log('Scale-out mode not measured: PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) is not reachable.');
    return undefined;
  }
  const { default: pg } = await import('pg');
  const { Redis } = await import('ioredis');
  const suffix = randomBytes(4).toString('hex');
  const database = `claudcode_bench_${suffix}`;
  const prefix = `claudcode-bench-${suffix}:`;
  const adminUrl = 'postgres://postgres@127.0.0.1:5432/postgres';
  const sql = async (statement: string) => {
    const client = new pg.Client({ connectionString: adminUrl });
    await client.connect();
    try {
      await client.query(statement);
    } finally {
      await client.end();
    }
  };
  await sql(`CREATE DATABASE ${database}`);
  const cleanUp = async () => {
    await sql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch((err: unknown) => console.error(`bench: could not drop ${database}: ${String(err)}`));
    const redis = new Redis('redis://127.0.0.1:6379', { lazyConnect: true });
    try {
      await redis.connect();
      for await (const keys of redis.scanStream({ match: `${prefix}*`, count: 1000 }) as AsyncIterable<string[]>) {
        if (keys.length > 0) await redis.del(...keys);
      }
    } finally {
      redis.disconnect();
    }
  };
  const port = await freePort();
  const child = startChild(
    'scale-out gateway',
    ['src/cli.ts', 'start'],
    {
      ...gatewayEnv,
      PORT: String(port),
      DATABASE_URL: `postgres://postgres@127.0.0.1:5432/${database}`,
      REDIS_URL: 'redis://127.0.0.1:6379',
      CLAUDCODE_REDIS_PREFIX: prefix,
      CLAUDCODE_UPSTREAM_URL: fakeUrl,
      CLAUDCODE_UPSTREAM_KEY: FAKE_KEY,
    },
    pinned ? 0 : undefined,
  );
  const url = `http://127.0.0.1:${port}`;
  await waitFor('scale-out gateway /health', child, async () => (await fetch(`${url}/health`)).ok);
  const created = await fetch(`${url}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'bench', rpm: 1_000_000, concurrent: 10_000, budget_tokens: 1_000_000_000_000 }),
  });
  const key = ((await created.json()) as { key?: string }).key;
  if (created.status !== 201 || !key) throw new Error(`creating the scale-out key failed (${created.status})`);
  return { child, url, key, cleanUp };
}

/**
 * Failover's cost: two more embedded gateways, each with two upstreams by priority — both the
 * fake ("healthy"), or a dead port (nothing listening) first and the fake second ("dead first").
 * Once the dead upstream's breaker is open the pool skips it; what is left is the cost of that
 * check. Latency at 1 in flight, the two measured back to back, rotating which goes first.
 */
async function measureFailover(gatewayEnv: Record<string, string>, fakeUrl: string, gatewayKey: string, pinned: boolean, pids: Pids) {
  const dead = `http://127.0.0.1:${await freePort()}`;
  const pools = {
    healthy: [
      { name: 'first', url: fakeUrl, key: FAKE_KEY, priority: 0 },
      { name: 'second', url: fakeUrl, key: FAKE_KEY, priority: 1 },
    ],
    deadFirst: [
      { name: 'dead', url: dead, key: FAKE_KEY, priority: 0 },
      { name: 'second', url: fakeUrl, key: FAKE_KEY, priority: 1 },
    ],
  };
  const poolOptions = { connections: 1, pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: 15_000, bodyTimeout: 15_000 };
  const headers = { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': gatewayKey, 'x-fake-output-tokens': String(OPTS.outputTokens), 'x-no-cache': 'true' };
  const targets: Record<keyof typeof pools, Target> = {} as Record<keyof typeof pools, Target>;
  const started: Child[] = [];
  for (const [name, upstreams] of Object.entries(pools) as [keyof typeof pools, typeof pools.healthy][]) {
    const file = join(tempDir!, `failover-${name}.json`);
    writeFileSync(file, JSON.stringify({ upstreams }));
    const port = await freePort();
    const child = startChild(`failover gateway (${name})`, ['src/cli.ts', 'start'], { ...gatewayEnv, PORT: String(port), CLAUDCODE_CONFIG: file }, pinned ? 0 : undefined);
    const url = `http://127.0.0.1:${port}`;
    await waitFor(`failover gateway (${name}) /health`, child, async () => (await fetch(`${url}/health`)).ok);
    targets[name] = { name: 'gateway', pool: new Pool(url, poolOptions), headers: { json: headers, stream: { ...headers, accept: 'text/event-stream' } } };
    started.push(child);
  }
  // Open the dead upstream's breaker (and warm both up), then check that it is open.
  for (const t of Object.values(targets)) for (const mode of MODES) await load(t, mode, 1, OPTS.warmupRequests, OPTS.latencyCapMs);
  const ready = (await (await targets.deadFirst.pool.request({ method: 'GET', path: '/health/ready' })).body.json()) as { upstreams: { name: string; state: string }[] };
  const deadState = ready.upstreams.find((u) => u.name === 'dead')?.state;
  if (deadState !== 'open') throw new Error(`the dead upstream's breaker is ${deadState}, not open, after the warm-up`);

  const results: Record<string, RunResult[]> = {};
  const order = Object.keys(targets) as (keyof typeof pools)[];
  for (let rep = 1; rep <= OPTS.reps; rep++) {
    for (const mode of MODES) {
      await waitForQuiet(pids);
      for (const name of rep % 2 ? order : [...order].reverse()) {
        const result = await measure(targets[name], mode, 'latency', rep, { ...pids, gateway: started[order.indexOf(name)]!.proc.pid });
        (results[`${mode}.${name}`] ??= []).push(result);
        console.log(`  rep ${rep}/${OPTS.reps}  failover   ${mode.padEnd(6)} ${name.padEnd(9)}  ${String(result.ok).padStart(6)} ok  p50 ${result.latency.p50.toFixed(3)} ms  p99 ${result.latency.p99.toFixed(3)} ms${result.failed ? `  ${result.failed} FAILED` : ''}`);
      }
    }
  }
  await Promise.all(Object.values(targets).map((t) => t.pool.close()));
  const med = (key: string, pick: (r: RunResult) => number) => median((results[key] ?? []).map(pick));
  return MODES.map((mode) => {
    const pick = mode === 'json' ? (r: RunResult) => r.latency.p50 : (r: RunResult) => r.firstByte.p50;
    const pick99 = mode === 'json' ? (r: RunResult) => r.latency.p99 : (r: RunResult) => r.firstByte.p99;
    const healthyP50Ms = med(`${mode}.healthy`, pick);
    const deadFirstP50Ms = med(`${mode}.deadFirst`, pick);
    const healthyP99Ms = med(`${mode}.healthy`, pick99);
    const deadFirstP99Ms = med(`${mode}.deadFirst`, pick99);
    return {
      scenario: mode === 'json' ? 'JSON' : 'Stream, first byte',
      healthyP50Ms, deadFirstP50Ms, addedP50Ms: deadFirstP50Ms - healthyP50Ms,
      healthyP99Ms, deadFirstP99Ms, addedP99Ms: deadFirstP99Ms - healthyP99Ms,
    };
  });
}

/**
 * CPU per stream event: the gateway's CPU per stream at two lengths (the run's streams and
 * 500-delta ones), measured back to back at the throughput concurrency; the difference over the
 * extra events is what one more event costs, apart from what every stream costs once.
 */
const LONG_STREAM_TOKENS = 500;
async function measureStreamEvents(target: Target, pids: Pids) {
  const withTokens = (tokens: number): Target => ({
    ...target,
    headers: { ...target.headers, stream: { ...target.headers.stream, 'x-fake-output-tokens': String(tokens) } },
  });
  const short = withTokens(OPTS.outputTokens);
  const long = withTokens(LONG_STREAM_TOKENS);
  const cpu: Record<'short' | 'long', number[]> = { short: [], long: [] };
  const reps = Math.max(2, Math.min(3, OPTS.reps));
  for (let rep = 1; rep <= reps; rep++) {
    await waitForQuiet(pids);
    for (const [name, t] of rep % 2 ? ([['short', short], ['long', long]] as const) : ([['long', long], ['short', short]] as const)) {
      const result = await measure(t, 'stream', 'throughput', rep, pids);
      cpu[name].push(result.cpuUsPerRequest.gateway ?? NaN);
      console.log(`  rep ${rep}/${reps}  events     ${name.padEnd(6)} ${target.name.padEnd(9)}  ${String(result.ok).padStart(6)} ok  ${Math.round(result.cpuUsPerRequest.gateway ?? NaN)} µs gateway CPU per stream${result.failed ? `  ${result.failed} FAILED` : ''}`);
    }
  }
  const shortUs = median(cpu.short);
  const longUs = median(cpu.long);
  const shortEvents = OPTS.outputTokens + 6;
  const longEvents = LONG_STREAM_TOKENS + 6;
  return { shortEvents, longEvents, shortUs, longUs, perEventUs: (longUs - shortUs) / (longEvents - shortEvents) };
}

async function main(): Promise<void> {
  const runStarted = performance.now();
  const pinned = OPTS.pin && canPin();
  tempDir = mkdtempSync(join(tmpdir(), 'claudcode-bench-'));
  const dataDir = join(tempDir, 'data');
  const profDir = join(RESULTS_DIR, 'cpu-profiles');
  mkdirSync(RESULTS_DIR, { recursive: true });

  console.log(`claudcode benchmark (${QUICK ? 'quick' : 'full'} run): Node ${process.version}, ${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} cores`);
  console.log(
    pinned
      ? 'Pinned: fake upstream on cpu 1, gateway on cpu 0 (taskset); load generator (this process) unpinned.'
      : 'Not pinned (taskset unavailable or --no-pin): all three processes share the cores.',
  );

  // The gateway key, created in the data dir before the gateway starts.
  const gatewayEnv = {
    HOST: '127.0.0.1',
    CLAUDCODE_DATA_DIR: dataDir,
    CLAUDCODE_ADMIN_TOKEN: ADMIN_TOKEN,
    CLAUDCODE_LOG_LEVEL: 'warn',
  };
  const created = spawnSync(
    NODE,
    ['src/cli.ts', 'keys', 'create', '--name', 'bench', '--rpm', '1000000', '--concurrent', '10000', '--budget', '1000000000000', '--json'],
    { cwd: ROOT, env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', ...gatewayEnv }, encoding: 'utf8', timeout: 30_000 },
  );
  if (created.status !== 0) throw new Error(`keys create failed (${created.status}): ${created.stderr}`);
  const gatewayKey = (JSON.parse(created.stdout) as { key: string }).key;
  if (!gatewayKey?.startsWith('sk-cc-')) throw new Error(`keys create returned no sk-cc key: ${created.stdout}`);

  // The fake upstream: PORT=0 picks a free port, which it prints.
  const fake = startChild('fake upstream', ['src/fake-upstream/main.ts'], { PORT: '0', FAKE_UPSTREAM_KEY: FAKE_KEY }, pinned ? 1 : undefined);
  let fakeUrl = '';
  await waitFor('the fake upstream to listen', fake, async () => {
    fakeUrl = /listening on (http:\/\/[^\s]+)/.exec(fake.output())?.[1] ?? '';
    return fakeUrl !== '';
  });

  // The gateway.
  const gatewayPort = await freePort();
  const gatewayArgs = OPTS.cpuProf ? ['--cpu-prof', '--cpu-prof-dir', profDir, 'src/cli.ts', 'start'] : ['src/cli.ts', 'start'];
  const profilesBefore = OPTS.cpuProf ? listProfiles(profDir) : new Set<string>();
  const gateway = startChild(
    'gateway',
    gatewayArgs,
    { ...gatewayEnv, PORT: String(gatewayPort), CLAUDCODE_UPSTREAM_URL: fakeUrl, CLAUDCODE_UPSTREAM_KEY: FAKE_KEY },
    pinned ? 0 : undefined,
  );
  const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
  await waitFor('gateway /health', gateway, async () => (await fetch(`${gatewayUrl}/health`)).ok);

  // The floor (bench/bare-proxy.ts): the same HTTP server and client, doing nothing else, on the gateway's core.
  const bare = startChild('bare proxy', ['bench/bare-proxy.ts'], { PORT: '0', UPSTREAM_URL: fakeUrl }, pinned ? 0 : undefined);
  let bareUrl = '';
  await waitFor('the bare proxy to listen', bare, async () => {
    bareUrl = /listening on (http:\/\/[^\s]+)/.exec(bare.output())?.[1] ?? '';
    return bareUrl !== '';
  });

  // The scale-out gateway: the same code on PostgreSQL and Redis, when the machine has them.
  const scaleOut = OPTS.scaleOut ? await startScaleOut(gatewayEnv, fakeUrl, pinned) : undefined;

  const poolOptions = { connections: OPTS.concurrency, pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: 15_000, bodyTimeout: 15_000 };
  const headersFor = (key: string, cache = false): Record<Mode, Record<string, string>> => {
    const base: Record<string, string> = { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': key, 'x-fake-output-tokens': String(OPTS.outputTokens) };
    if (!cache) base['x-no-cache'] = 'true';
    return { json: base, stream: { ...base, accept: 'text/event-stream' } };
  };
  const targets: Partial<Record<PathName, Target>> = {
    direct: { name: 'direct', pool: new Pool(fakeUrl, poolOptions), headers: headersFor(FAKE_KEY) },
    bare: { name: 'bare', pool: new Pool(bareUrl, poolOptions), headers: headersFor(FAKE_KEY) },
    gateway: { name: 'gateway', pool: new Pool(gatewayUrl, poolOptions), headers: headersFor(gatewayKey) },
    ...(scaleOut ? { scaleout: { name: 'scaleout' as const, pool: new Pool(scaleOut.url, poolOptions), headers: headersFor(scaleOut.key) } } : {}),
    cachehit: { name: 'cachehit', pool: new Pool(gatewayUrl, poolOptions), headers: headersFor(gatewayKey, true) },
    cachemiss: { name: 'cachemiss', pool: new Pool(gatewayUrl, poolOptions), headers: headersFor(gatewayKey, true), body: uniqueBody },
  };
  const paths = Object.keys(targets) as PathName[];
  const pids = { gateway: gateway.proc.pid, fake: fake.proc.pid };
  // The bare proxy's CPU is counted where a gateway's is: it stands in for one.
  const pidsFor = (path: PathName): Pids =>
    path === 'scaleout' ? { gateway: scaleOut!.child.proc.pid, fake: fake.proc.pid, services: true } : path === 'bare' ? { gateway: bare.proc.pid, fake: fake.proc.pid } : pids;

  // Both paths must answer correctly before anything is measured.
  for (const t of Object.values(targets)) {
    for (const mode of MODES) {
      const s: Samples = { ok: 0, failed: 0, total: [], first: [] };
      await oneRequest(t, mode, s);
      if (s.ok !== 1) throw new Error(`the first ${mode} request ${t.name} failed: ${[...failures.reasons.keys()].join('; ')}`);
    }
  }

  process.stdout.write('Warming up');
  for (const mode of MODES) {
    for (const t of Object.values(targets)) {
      await load(t, mode, 1, OPTS.warmupRequests, OPTS.latencyCapMs);
      await load(t, mode, OPTS.concurrency, OPTS.throughputMaxRequests, OPTS.warmupSeconds * 1000);
      process.stdout.write('.');
    }
  }
  process.stdout.write('\n');

  // Measurements: every (kind, mode) runs each path back to back, rotating which goes first
  // from one repetition to the next.
  type Key = `${'latency' | 'throughput'}.${Mode}.${PathName}`;
  const runs = new Map<Key, RunResult[]>();
  const discarded: (RunResult & { key: Key })[] = [];
  let retriesLeft = OPTS.quick ? 2 : 10;
  const isNoisy = (r: RunResult) => (r.foreignCpuPct ?? 0) >= NOISY_PCT;
  for (let rep = 1; rep <= OPTS.reps; rep++) {
    const order: PathName[] = paths.map((_, i) => paths[(i + rep - 1) % paths.length]!);
    for (const kind of ['latency', 'throughput'] as const) {
      for (const mode of MODES) {
        // A pair measured while other processes were busy is measured again (a bounded number of times).
        for (let attempt = 1; ; attempt++) {
          await waitForQuiet(pids);
          const pair: [PathName, RunResult][] = [];
          for (const path of order) {
            const result = await measure(targets[path]!, mode, kind, rep, pidsFor(path));
            pair.push([path, result]);
            const line =
              kind === 'latency'
                ? `p50 ${result.latency.p50.toFixed(3)} ms  p99 ${result.latency.p99.toFixed(3)} ms`
                : `${result.rps.toFixed(0)} req/s`;
            const noise = isNoisy(result) ? `  (other processes used ${Math.round(result.foreignCpuPct!)}% of a core)` : '';
            console.log(`  rep ${rep}/${OPTS.reps}  ${kind.padEnd(10)} ${mode.padEnd(6)} ${PATH_LABEL[path].padEnd(9)}  ${String(result.ok).padStart(6)} ok  ${line}${result.failed ? `  ${result.failed} FAILED` : ''}${noise}`);
          }
          if (pair.some(([, r]) => isNoisy(r)) && retriesLeft > 0) {
            retriesLeft--;
            for (const [path, r] of pair) discarded.push({ key: `${kind}.${mode}.${path}`, ...r });
            console.log(`  ... noisy: measuring this pair again (${retriesLeft} retries left)`);
            continue;
          }
          for (const [path, r] of pair) {
            const key: Key = `${kind}.${mode}.${path}`;
            runs.set(key, [...(runs.get(key) ?? []), r]);
          }
          break;
        }
      }
    }
  }

  console.log('CPU per stream event: streams of two lengths, back to back');
  const streamEvents = {
    embedded: await measureStreamEvents(targets.gateway!, pids),
    ...(scaleOut ? { scaleOut: await measureStreamEvents(targets.scaleout!, pidsFor('scaleout')) } : {}),
  };

  console.log('Failover: the first upstream dead (breaker open) against both healthy');
  const failover = await measureFailover(gatewayEnv, fakeUrl, gatewayKey, pinned, pids);

  await Promise.all(Object.values(targets).map((t) => t.pool.close()));
  await stopChildren();
  await scaleOut?.cleanUp();
  const noisyRuns = [...runs.values()].flat().filter((r) => (r.foreignCpuPct ?? 0) >= NOISY_PCT).length;
  const foreignMax = Math.max(0, ...[...runs.values()].flat().map((r) => r.foreignCpuPct ?? 0));

  let profile: ProfileSummary | undefined;
  if (OPTS.cpuProf) {
    const fresh = [...listProfiles(profDir)].filter((f) => !profilesBefore.has(f));
    const file = fresh.sort().at(-1);
    if (file) profile = summariseProfile(join(profDir, file));
    else console.error('bench: --cpu-prof given but the gateway wrote no profile');
  }

  // Medians over repetitions.
  const get = (kind: 'latency' | 'throughput', mode: Mode, path: PathName) => runs.get(`${kind}.${mode}.${path}`) ?? [];
  const med = (kind: 'latency' | 'throughput', mode: Mode, path: PathName, pick: (r: RunResult) => number | undefined) =>
    median(get(kind, mode, path).map((r) => pick(r) ?? NaN));

  const latencyRows: { label: string; mode: Mode; metric: string; pick: (r: RunResult) => number }[] = [
    { label: 'JSON', mode: 'json', metric: 'p50', pick: (r) => r.latency.p50 },
    { label: 'JSON', mode: 'json', metric: 'p99', pick: (r) => r.latency.p99 },
    { label: 'Stream, first byte', mode: 'stream', metric: 'p50', pick: (r) => r.firstByte.p50 },
    { label: 'Stream, first byte', mode: 'stream', metric: 'p99', pick: (r) => r.firstByte.p99 },
    { label: 'Stream, last byte', mode: 'stream', metric: 'p50', pick: (r) => r.latency.p50 },
    { label: 'Stream, last byte', mode: 'stream', metric: 'p99', pick: (r) => r.latency.p99 },
  ];
  const latency = latencyRows.map((row) => {
    const direct = med('latency', row.mode, 'direct', row.pick);
    const gw = med('latency', row.mode, 'gateway', row.pick);
    const so = scaleOut ? med('latency', row.mode, 'scaleout', row.pick) : NaN;
    return { scenario: row.label, metric: row.metric, directMs: direct, gatewayMs: gw, addedMs: gw - direct, scaleOutMs: so, scaleOutAddedMs: so - direct };
  });
  const throughput = MODES.map((mode) => {
    const direct = med('throughput', mode, 'direct', (r) => r.rps);
    const gw = med('throughput', mode, 'gateway', (r) => r.rps);
    const so = scaleOut ? med('throughput', mode, 'scaleout', (r) => r.rps) : NaN;
    return {
      scenario: mode === 'json' ? 'JSON' : 'Stream',
      directRps: direct,
      gatewayRps: gw,
      ratio: gw / direct,
      scaleOutRps: so,
      scaleOutRatio: so / direct,
      /** The scale-out mode's throughput as a share of the embedded mode's. */
      scaleOutVsEmbedded: so / gw,
      directLatencyP50Ms: med('throughput', mode, 'direct', (r) => r.latency.p50),
      gatewayLatencyP50Ms: med('throughput', mode, 'gateway', (r) => r.latency.p50),
      directLatencyP99Ms: med('throughput', mode, 'direct', (r) => r.latency.p99),
      gatewayLatencyP99Ms: med('throughput', mode, 'gateway', (r) => r.latency.p99),
    };
  });
  const cpu = MODES.map((mode) => ({
    scenario: mode === 'json' ? 'JSON' : 'Stream',
    gatewayUsPerRequest: med('throughput', mode, 'gateway', (r) => r.cpuUsPerRequest.gateway),
    scaleOutGatewayUsPerRequest: scaleOut ? med('throughput', mode, 'scaleout', (r) => r.cpuUsPerRequest.gateway) : NaN,
    scaleOutServicesUsPerRequest: scaleOut ? med('throughput', mode, 'scaleout', (r) => r.cpuUsPerRequest.services) : NaN,
    fakeUsPerRequestDirect: med('throughput', mode, 'direct', (r) => r.cpuUsPerRequest.fake),
    fakeUsPerRequestViaGateway: med('throughput', mode, 'gateway', (r) => r.cpuUsPerRequest.fake),
    loadGeneratorUsPerRequestDirect: med('throughput', mode, 'direct', (r) => r.cpuUsPerRequest.loadGenerator),
    loadGeneratorUsPerRequestGateway: med('throughput', mode, 'gateway', (r) => r.cpuUsPerRequest.loadGenerator),
  }));

  // The floor: what a bare Node proxy (bench/bare-proxy.ts) adds and costs, against the gateway.
  const floorRows = [
    // JSON p50 and p99, a stream's first byte p50 and p99.
    ...latencyRows.slice(0, 4).map((row) => {
      const direct = med('latency', row.mode, 'direct', row.pick);
      const bareAdded = med('latency', row.mode, 'bare', row.pick) - direct;
      const gatewayAdded = med('latency', row.mode, 'gateway', row.pick) - direct;
      return { scenario: `${row.label}, ${row.metric} added (1 in flight)`, unit: 'ms' as const, bare: bareAdded, gateway: gatewayAdded };
    }),
    ...MODES.map((mode) => {
      const direct = med('throughput', mode, 'direct', (r) => r.rps);
      return { scenario: `${mode === 'json' ? 'JSON' : 'Stream'} throughput (${OPTS.concurrency} in flight), of direct`, unit: 'ratio' as const, bare: med('throughput', mode, 'bare', (r) => r.rps) / direct, gateway: med('throughput', mode, 'gateway', (r) => r.rps) / direct };
    }),
    ...MODES.map((mode) => ({
      scenario: `CPU per ${mode === 'json' ? 'JSON request' : `${OPTS.outputTokens + 6}-event stream`} (${OPTS.concurrency} in flight)`,
      unit: 'us' as const,
      bare: med('throughput', mode, 'bare', (r) => r.cpuUsPerRequest.gateway),
      gateway: med('throughput', mode, 'gateway', (r) => r.cpuUsPerRequest.gateway),
    })),
  ];

  // ---- Report ----
  const ms = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)} ms` : 'n/a');
  const plusMs = (x: number) => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${x.toFixed(2)} ms` : 'n/a');
  const rps = (x: number) => (Number.isFinite(x) ? `${Math.round(x).toLocaleString('en-US')} req/s` : 'n/a');
  const us = (x: number) => (Number.isFinite(x) ? `${Math.round(x)} µs` : 'n/a');
  const events = OPTS.outputTokens + 6;
  const table = (header: string[], rows: string[][]) => {
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
    return [header, ...rows].map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('   ')).join('\n');
  };

  console.log(`\nAdded latency, 1 request in flight (${OPTS.latencyRequests} requests per run, median of ${OPTS.reps} runs)`);
  console.log(
    table(
      ['', 'direct', 'embedded', 'added', ...(scaleOut ? ['scale-out', 'added'] : [])],
      latency.map((l) => [
        `${l.scenario} ${l.metric}`, ms(l.directMs), ms(l.gatewayMs), plusMs(l.addedMs), ...(scaleOut ? [ms(l.scaleOutMs), plusMs(l.scaleOutAddedMs)] : []),
      ]),
    ),
  );
  console.log(`\nThroughput, ${OPTS.concurrency} in flight (${OPTS.throughputSeconds} s per run, median of ${OPTS.reps} runs)`);
  console.log(
    table(
      ['', 'direct', 'embedded', 'ratio', ...(scaleOut ? ['scale-out', 'ratio', 'vs embedded'] : []), 'p50 direct', 'p50 embedded', 'p99 direct', 'p99 embedded'],
      throughput.map((t) => [
        t.scenario, rps(t.directRps), rps(t.gatewayRps), `${t.ratio.toFixed(2)}×`,
        ...(scaleOut ? [rps(t.scaleOutRps), `${t.scaleOutRatio.toFixed(2)}×`, `${(t.scaleOutVsEmbedded * 100).toFixed(0)} %`] : []),
        ms(t.directLatencyP50Ms), ms(t.gatewayLatencyP50Ms), ms(t.directLatencyP99Ms), ms(t.gatewayLatencyP99Ms),
      ]),
    ),
  );
  console.log(`\nCPU per request at ${OPTS.concurrency} in flight (from /proc; the gateway's figure is its whole cost)`);
  console.log(
    table(
      ['', 'gateway', ...(scaleOut ? ['scale-out gw', 'pg + redis'] : []), 'fake (direct)', 'fake (via gw)', 'load gen (direct)', 'load gen (via gw)'],
      cpu.map((c) => [
        c.scenario, us(c.gatewayUsPerRequest), ...(scaleOut ? [us(c.scaleOutGatewayUsPerRequest), us(c.scaleOutServicesUsPerRequest)] : []),
        us(c.fakeUsPerRequestDirect), us(c.fakeUsPerRequestViaGateway),
        us(c.loadGeneratorUsPerRequestDirect), us(c.loadGeneratorUsPerRequestGateway),
      ]),
    ),
  );

  const floorCell = (unit: 'ms' | 'ratio' | 'us', x: number) => (unit === 'ms' ? plusMs(x) : unit === 'us' ? us(x) : `${x.toFixed(2)}×`);
  const floorOwn = (row: (typeof floorRows)[number]) => (row.unit === 'ratio' ? `${(row.gateway / row.bare).toFixed(2)}× of the floor` : row.unit === 'us' ? `+${us(row.gateway - row.bare)}` : plusMs(row.gateway - row.bare));
  console.log(`\nThe floor: a bare Node proxy (bench/bare-proxy.ts: the same HTTP server and client, nothing else) on the gateway's core`);
  console.log(table(['', 'bare proxy', 'embedded gateway', "gateway's own"], floorRows.map((row) => [row.scenario, floorCell(row.unit, row.bare), floorCell(row.unit, row.gateway), floorOwn(row)])));

  const cacheRows = MODES.map((mode) => ({
    scenario: mode === 'json' ? 'JSON' : 'Stream',
    directP50Ms: med('latency', mode, 'direct', (r) => r.latency.p50),
    hitP50Ms: med('latency', mode, 'cachehit', (r) => r.latency.p50),
    hitP99Ms: med('latency', mode, 'cachehit', (r) => r.latency.p99),
    missP50Ms: med('latency', mode, 'cachemiss', (r) => r.latency.p50),
    missP99Ms: med('latency', mode, 'cachemiss', (r) => r.latency.p99),
    directRps: med('throughput', mode, 'direct', (r) => r.rps),
    hitRps: med('throughput', mode, 'cachehit', (r) => r.rps),
    missRps: med('throughput', mode, 'cachemiss', (r) => r.rps),
    hitCpuUs: med('throughput', mode, 'cachehit', (r) => r.cpuUsPerRequest.gateway),
    missCpuUs: med('throughput', mode, 'cachemiss', (r) => r.cpuUsPerRequest.gateway),
  }));
  console.log(`\nResponse cache (embedded gateway): a hit against a miss and against the upstream itself`);
  console.log(
    table(
      ['', 'p50 direct', 'p50 hit', 'p50 miss', 'p99 hit', 'p99 miss', 'req/s direct', 'req/s hit', 'req/s miss', 'CPU/req hit', 'CPU/req miss'],
      cacheRows.map((r) => [
        r.scenario, ms(r.directP50Ms), ms(r.hitP50Ms), ms(r.missP50Ms), ms(r.hitP99Ms), ms(r.missP99Ms),
        rps(r.directRps), rps(r.hitRps), rps(r.missRps), us(r.hitCpuUs), us(r.missCpuUs),
      ]),
    ),
  );

  console.log(`\nCPU per stream event (gateway CPU per stream at ${OPTS.concurrency} in flight, two lengths)`);
  console.log(
    table(
      ['', `${streamEvents.embedded.shortEvents}-event stream`, `${streamEvents.embedded.longEvents}-event stream`, 'per event'],
      Object.entries(streamEvents).map(([name, e]) => [name === 'embedded' ? 'embedded' : 'scale-out', us(e.shortUs), us(e.longUs), `${e.perEventUs.toFixed(2)} µs`]),
    ),
  );

  console.log(`\nFailover (embedded gateway, two upstreams by priority): the first one dead, its breaker open, against both healthy`);
  console.log(
    table(
      ['', 'p50 healthy', 'p50 dead first', 'added', 'p99 healthy', 'p99 dead first', 'added'],
      failover.map((f) => [f.scenario, ms(f.healthyP50Ms), ms(f.deadFirstP50Ms), plusMs(f.addedP50Ms), ms(f.healthyP99Ms), ms(f.deadFirstP99Ms), plusMs(f.addedP99Ms)]),
    ),
  );

  const cpuModel = cpus()[0]?.model ?? 'unknown CPU';
  const markdown = [
    scaleOut
      ? '| Scenario | Direct to upstream | Embedded (SQLite) | Cost | Scale-out (PostgreSQL + Redis) | Cost |'
      : '| Scenario | Direct to upstream | Through claudcode | Gateway cost |',
    scaleOut ? '|---|--:|--:|--:|--:|--:|' : '|---|--:|--:|--:|',
    ...latency.map((l) => `| ${l.scenario}, ${l.metric} (1 in flight) | ${ms(l.directMs)} | ${ms(l.gatewayMs)} | ${plusMs(l.addedMs)} |${scaleOut ? ` ${ms(l.scaleOutMs)} | ${plusMs(l.scaleOutAddedMs)} |` : ''}`),
    ...throughput.map((t) => `| ${t.scenario} throughput (${OPTS.concurrency} in flight) | ${rps(t.directRps)} | ${rps(t.gatewayRps)} | ${t.ratio.toFixed(2)}× |${scaleOut ? ` ${rps(t.scaleOutRps)} | ${t.scaleOutRatio.toFixed(2)}× (${(t.scaleOutVsEmbedded * 100).toFixed(0)} % of embedded) |` : ''}`),
    '',
    "| The floor | Bare Node proxy | Embedded gateway | The gateway's own |",
    '|---|--:|--:|--:|',
    ...floorRows.map((row) => `| ${row.scenario} | ${floorCell(row.unit, row.bare)} | ${floorCell(row.unit, row.gateway)} | ${floorOwn(row)} |`),
    '',
    '| Response cache (embedded) | Direct to upstream | Cache hit | Cache miss |',
    '|---|--:|--:|--:|',
    ...cacheRows.flatMap((r) => [
      `| ${r.scenario}, p50 (1 in flight) | ${ms(r.directP50Ms)} | ${ms(r.hitP50Ms)} | ${ms(r.missP50Ms)} |`,
      `| ${r.scenario} throughput (${OPTS.concurrency} in flight) | ${rps(r.directRps)} | ${rps(r.hitRps)} | ${rps(r.missRps)} |`,
      `| ${r.scenario}, gateway CPU per request | – | ${us(r.hitCpuUs)} | ${us(r.missCpuUs)} |`,
    ]),
    '',
    `| CPU per stream event (${OPTS.concurrency} in flight) | ${streamEvents.embedded.shortEvents}-event stream | ${streamEvents.embedded.longEvents}-event stream | Per event |`,
    '|---|--:|--:|--:|',
    ...Object.entries(streamEvents).map(([name, e]) => `| ${name === 'embedded' ? 'Embedded' : 'Scale-out'} gateway | ${us(e.shortUs)} | ${us(e.longUs)} | ${e.perEventUs.toFixed(2)} µs |`),
    '',
    '| Failover (embedded, 1 in flight) | Both upstreams healthy | First upstream dead (breaker open) | Added |',
    '|---|--:|--:|--:|',
    ...failover.flatMap((f) => [
      `| ${f.scenario}, p50 | ${ms(f.healthyP50Ms)} | ${ms(f.deadFirstP50Ms)} | ${plusMs(f.addedP50Ms)} |`,
      `| ${f.scenario}, p99 | ${ms(f.healthyP99Ms)} | ${ms(f.deadFirstP99Ms)} | ${plusMs(f.addedP99Ms)} |`,
    ]),
    '',
    `Fake upstream with no added latency; ${events}-event streams (${OPTS.outputTokens} text deltas), ${Buffer.byteLength(BODY.json)}-byte requests; ` +
      `medians of ${OPTS.reps} interleaved runs (${OPTS.latencyRequests} requests each for latency, ${OPTS.throughputSeconds} s each for throughput). ` +
      `Node ${process.version}, ${cpuModel}, ${availableParallelism()} cores shared by load generator, gateway and upstream${scaleOut ? ' (and PostgreSQL and Redis, unpinned)' : ''}` +
      `${pinned ? ' (gateway and upstream pinned to one core each)' : ''}${OPTS.cpuProf ? '; gateway under --cpu-prof (figures inflated)' : ''}.` +
      `${noisyRuns > 0 ? ` Other processes were busy during ${noisyRuns} of the ${[...runs.values()].flat().length} runs (noisy figures).` : ''}` +
      ' With an upstream this fast a whole stream arrives in one or two reads, so first byte ≈ last byte.',
  ].join('\n');
  console.log('\nMarkdown (for the README):\n');
  console.log(markdown);

  if (profile) console.log(`\n${formatProfileSummary(profile)}`);
  if (noisyRuns > 0) {
    console.log(`\nNote: other processes used ≥${NOISY_PCT}% of a core in ${noisyRuns} of the ${[...runs.values()].flat().length} runs kept (up to ${Math.round(foreignMax)}%; ${discarded.length} noisy runs were measured again): the figures are noisier than usual.`);
  }

  const command =
    process.env['npm_lifecycle_event'] === 'bench'
      ? `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`
      : [relative(process.cwd(), process.execPath) || process.execPath, ...process.argv.slice(1).map((a) => relative(process.cwd(), a) || a)].join(' ');
  const ok = failures.total === 0;
  const results = {
    ok,
    date: new Date().toISOString(),
    command,
    argv: process.argv,
    node: process.version,
    cpu: cpuModel,
    cores: availableParallelism(),
    pinned: pinned ? { fake: 1, gateway: 0, loadGenerator: 'unpinned' } : false,
    options: { ...OPTS, requestBodyBytes: Buffer.byteLength(BODY.json), streamEvents: events, model: MESSAGES_REQUEST.model, maxTokens: MESSAGES_REQUEST.max_tokens },
    durationSeconds: round((performance.now() - runStarted) / 1000, 1),
    failures: { total: failures.total, reasons: Object.fromEntries(failures.reasons) },
    noise: { noisyRuns, discardedNoisyRuns: discarded.length, foreignCpuMaxPct: round(foreignMax, 1), thresholdPct: NOISY_PCT, waitedForQuietSeconds: round(quietWaitedMs / 1000, 1) },
    summary: {
      latency: latency.map((l) => ({ ...l, directMs: round(l.directMs), gatewayMs: round(l.gatewayMs), addedMs: round(l.addedMs) })),
      throughput: throughput.map((t) =>
        Object.fromEntries(Object.entries(t).map(([k, v]) => [k, typeof v === 'number' ? round(v, k === 'ratio' ? 3 : 1) : v])),
      ),
      cpuUsPerRequest: cpu.map((c) => Object.fromEntries(Object.entries(c).map(([k, v]) => [k, typeof v === 'number' ? round(v, 0) : v]))),
      floor: floorRows.map((f) => ({ ...f, bare: round(f.bare, 3), gateway: round(f.gateway, 3) })),
      cache: cacheRows.map((c) => Object.fromEntries(Object.entries(c).map(([k, v]) => [k, typeof v === 'number' ? round(v, 3) : v]))),
      streamEvents: Object.fromEntries(Object.entries(streamEvents).map(([k, e]) => [k, Object.fromEntries(Object.entries(e).map(([f, v]) => [f, round(v, 2)]))])),
      failover: failover.map((f) => Object.fromEntries(Object.entries(f).map(([k, v]) => [k, typeof v === 'number' ? round(v, 3) : v]))),
    },
    runs: Object.fromEntries(
      [...runs.entries()].map(([k, list]) => [k, list.map((r) => JSON.parse(JSON.stringify(r, (_key, v) => (typeof v === 'number' ? round(v) : v))) as unknown)]),
    ),
    discardedRuns: discarded.map((r) => JSON.parse(JSON.stringify(r, (_key, v) => (typeof v === 'number' ? round(v) : v))) as unknown),
    markdown,
    ...(profile ? { gatewayCpuProfile: profile } : {}),
  };
  const out = join(RESULTS_DIR, 'latest.json');
  writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nWrote ${relative(process.cwd(), out)} (${results.durationSeconds} s run)`);

  if (!ok) {
    console.error(`\n!!! BENCHMARK FAILED: ${failures.total} request(s) failed — the figures above are not trustworthy !!!`);
    for (const [reason, n] of failures.reasons) console.error(`  ${n} × ${reason}`);
    process.exitCode = 1;
  }
}

function listProfiles(dir: string): Set<string> {
  try {
    return new Set(readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')));
  } catch {
    return new Set();
  }
}

main().then(
  () => {
    killChildrenNow();
    process.exit(process.exitCode ?? 0);
  },
  (err: unknown) => fatal((err as Error)?.stack ?? String(err)),
);
