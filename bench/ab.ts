/**
 * `npm run bench:ab -- DIR_A DIR_B`: gateway CPU per request of two checkouts of claudcode (e.g.
 * a `git worktree` of an older commit, with its node_modules linked, and this one), against one
 * fake upstream, interleaved so that the machine's drift hits both alike.
 *
 * Both gateways run at the default log level (info: an access-log line per request), pinned to
 * core 0 (one busy at a time), the fake upstream to core 1 (when taskset is there); 4 alternating runs of 8,000 requests at 32 in flight per kind (JSON, and
 * 56-event streams), after a warm-up of 16,000 requests per gateway and kind (V8 takes some
 * 30,000 requests to settle into its optimised code: shorter warm-ups measure the first runs
 * high); gateway CPU from /proc. Bounded: it stops by itself.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Pool } from 'undici';
import { freePort } from '../test/ports.ts';

const [dirA, dirB] = process.argv.slice(2).map((d) => resolve(d));
if (!dirA || !dirB) {
  console.error('usage: npm run bench:ab -- DIR_A DIR_B   (two claudcode checkouts, each with node_modules)');
  process.exit(2);
}
const NODE = process.execPath;
const pinned = spawnSync('taskset', ['-c', '0', 'true']).status === 0;
const onCore = (core: number, args: string[]): [string, string[]] => (pinned ? ['taskset', ['-c', String(core), NODE, ...args]] : [NODE, args]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A process's CPU time (user + system), ms, from /proc (clock ticks of 10 ms). */
const cpuMs = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
};
const children: ChildProcess[] = [];
const dirs: string[] = [];
const stop = () => {
  // SIGKILL: nothing of theirs needs to outlive the comparison (their data dirs go next).
  for (const c of children) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
};
setTimeout(() => {
  console.error('bench:ab: over its 10-minute bound, stopping');
  stop();
  process.exit(1);
}, 600_000).unref();

const fakePort = await freePort();
const [fakeCmd, fakeArgs] = onCore(1, ['src/fake-upstream/main.ts']);
children.push(spawn(fakeCmd, fakeArgs, { cwd: dirA, env: { PATH: process.env['PATH'] ?? '', PORT: String(fakePort), FAKE_UPSTREAM_KEY: 'sk-ant-ab' }, stdio: 'ignore' }));

interface Gateway { key: string; pid: number; pool: Pool }
async function gateway(dir: string): Promise<Gateway> {
  const data = mkdtempSync(join(tmpdir(), 'claudcode-ab-'));
  dirs.push(data);
  const env = { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', CLAUDCODE_DATA_DIR: data, CLAUDCODE_ADMIN_TOKEN: '0123456789abcdef0123', CLAUDCODE_LOG_LEVEL: 'info' };
  const created = spawnSync(NODE, ['src/cli.ts', 'keys', 'create', '--name', 'ab', '--rpm', '1000000', '--concurrent', '10000', '--budget', '1000000000000', '--json'], { cwd: dir, env, encoding: 'utf8' });
  const key = (JSON.parse(created.stdout) as { key: string }).key;
  const port = await freePort();
  const [cmd, args] = onCore(0, ['src/cli.ts', 'start']);
  const child = spawn(cmd, args, { cwd: dir, env: { ...env, PORT: String(port), CLAUDCODE_UPSTREAM_URL: `http://127.0.0.1:${fakePort}`, CLAUDCODE_UPSTREAM_KEY: 'sk-ant-ab' }, stdio: 'ignore' });
  children.push(child);
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 32 });
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health`)).ok) break;
    } catch {
      await sleep(100);
    }
  }
  // The node process itself, not taskset's wrapper (taskset execs it: same pid).
  return { key, pid: child.pid!, pool };
}

async function run(g: Gateway, stream: boolean, n: number): Promise<number> {
  const headers = { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': g.key, 'x-no-cache': 'true', 'x-fake-output-tokens': '50' };
  const body = JSON.stringify({ model: 'claude-haiku-4-5', max_tokens: 100, stream, messages: [{ role: 'user', content: 'hello there, how are you?' }] });
  let issued = 0;
  let ok = 0;
  const before = cpuMs(g.pid);
  await Promise.all(Array.from({ length: 32 }, async () => {
    while (issued++ < n) {
      const r = await g.pool.request({ method: 'POST', path: '/v1/messages', headers, body });
      await r.body.text();
      if (r.statusCode === 200) ok++;
    }
  }));
  if (ok === 0) throw new Error('no request succeeded');
  return ((cpuMs(g.pid) - before) * 1000) / ok;
}

try {
  const a = await gateway(dirA);
  const b = await gateway(dirB);
  for (const stream of [false, true]) for (const g of [a, b]) await run(g, stream, 16_000);
  const results = { A: { json: [] as number[], stream: [] as number[] }, B: { json: [] as number[], stream: [] as number[] } };
  for (let rep = 0; rep < 4; rep++) {
    for (const stream of [false, true]) {
      const order: Array<['A' | 'B', Gateway]> = rep % 2 ? [['B', b], ['A', a]] : [['A', a], ['B', b]];
      for (const [name, g] of order) results[name][stream ? 'stream' : 'json'].push(Math.round(await run(g, stream, 8000)));
    }
  }
  const median = (v: number[]) => [...v].sort((x, y) => x - y)[Math.floor(v.length / 2)]!;
  console.log(JSON.stringify(results));
  console.log(`gateway CPU per request (median of 4):  A ${dirA}: JSON ${median(results.A.json)} µs, stream ${median(results.A.stream)} µs`);
  console.log(`                                        B ${dirB}: JSON ${median(results.B.json)} µs, stream ${median(results.B.stream)} µs`);
  await a.pool.close();
  await b.pool.close();
} finally {
  stop();
}
process.exit(0);
