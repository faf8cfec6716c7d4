/**
 * The gateway as an operator runs it, for tests: `claudcode start` in its own process on a free
 * loopback port, and the other CLI commands as child processes.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.ts';

/** The Node running the tests (the project's Node 24), for the gateway processes too. */
const NODE = process.execPath;
/** The checkout, wherever it was cloned: the processes run its src/cli.ts. */
const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface GatewayProcess {
  child: ChildProcess;
  url: string;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Starts `claudcode start` with `env` on a free loopback port; resolves once /health answers. */
export async function startGatewayProcess(env: Record<string, string>): Promise<GatewayProcess> {
  const port = await freePort();
  let out = '';
  let err = '';
  const child = spawn(NODE, ['src/cli.ts', 'start'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', PORT: String(port), HOST: '127.0.0.1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`gateway exited: ${err}`);
    try {
      if ((await fetch(`${url}/health`)).ok) return { child, url, stdout: () => out, stderr: () => err, exited };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error(`gateway did not start: ${err}`);
}


export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `claudcode ARGS` with only `env` (plus PATH and HOME) and collects what it printed. */
export function runCli(args: string[], env: Record<string, string>): Promise<CliRun> {
  const fullEnv = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env };
  return new Promise((resolve) => {
    execFile(NODE, ['src/cli.ts', ...args], { cwd: ROOT, env: fullEnv, timeout: 15_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}
