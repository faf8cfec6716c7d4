/**
 * `claudcode init [dir]`: scaffolds a client project pointed at a gateway (the files come from
 * templates.ts, shared with the gateway's /setup.sh and /setup.ps1).
 *
 * Order matters: the key is checked against the gateway's /v1/key-status before anything is
 * written, so a wrong key or URL leaves the disk untouched. Then the files are written without
 * replacing any that exist (unless --force), `.gitignore` before `.env` so the key never sits in
 * a folder that does not ignore it, then `npm install`, then the next commands.
 *
 * Choices:
 * - The key comes from --key, else CLAUDCODE_KEY (the setup scripts' name), else a masked
 *   prompt. ANTHROPIC_API_KEY is not read: in most shells it holds a real Anthropic key.
 *   The URL: --url, else CLAUDCODE_URL, else a prompt (default http://127.0.0.1:8080).
 * - A key without the `sk-cc-` prefix gets a warning, not a refusal: the gateway's answer is
 *   what decides (and what the error then names).
 * - An existing `.gitignore` without `.env` gets a `.env` line appended (appending loses
 *   nothing; leaving the key unignored would be worse). An existing `.env` gets the missing
 *   ANTHROPIC_ variables appended likewise; one that sets them to other values is left alone,
 *   with a warning.
 * - Python dependencies are never installed into the system: the venv and pip commands are
 *   printed instead.
 * Exit codes: 0 done, 1 failure (gateway refused or unreachable, write or install failed),
 * 2 usage error.
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  envFile, isWritableKey, LANGS, MIN_NODE, normalizeGatewayUrl, projectFiles, type Lang, type ProjectFile,
} from './templates.ts';

export const INIT_USAGE = `Usage: claudcode init [dir] [--url URL] [--key KEY] [--lang ts,py] [--yes] [--no-install] [--force]

Scaffolds a project that talks to Claude through a claudcode gateway: .env (ANTHROPIC_BASE_URL,
ANTHROPIC_API_KEY; mode 0600, git-ignored), TypeScript examples (package.json, message.ts,
stream.ts, search.ts), Python ones (requirements.txt, example.py) and a README that also shows
how to point Claude Code at the gateway. The key is checked with the gateway first.

  dir            where to write (default: the current folder; created if missing)
  --url URL      the gateway (default: CLAUDCODE_URL, else asked; http://127.0.0.1:8080)
  --key KEY      your gateway key, sk-cc-... (default: CLAUDCODE_KEY, else asked, masked)
  --lang ts,py   which examples (default: both)
  --yes          ask nothing (then --url/CLAUDCODE_URL and --key/CLAUDCODE_KEY are required)
  --no-install   do not run npm install
  --force        replace files that exist (default: keep them)`;

export const DEFAULT_GATEWAY_URL = 'http://127.0.0.1:8080';

/** What init needs from the outside world; tests replace parts of it. */
export interface InitIo {
  env: Record<string, string | undefined>;
  cwd: string;
  /** Whether prompts may be shown (stdin and stdout are terminals). */
  interactive: boolean;
  out(line: string): void;
  err(line: string): void;
  askUrl(defaultUrl: string): Promise<string>;
  askKey(): Promise<string>;
  /** Runs `npm install` in `dir` with the terminal's stdio; the exit status. */
  install(dir: string): number;
  /** `node --version` of the node on PATH (what npm start runs), or null if there is none. */
  nodeVersion(): string | null;
}

class InitError extends Error {
  readonly code: 1 | 2;
  constructor(message: string, code: 1 | 2) {
    super(message);
    this.code = code;
  }
}

const usageError = (message: string) => new InitError(`${message}\n\n${INIT_USAGE}`, 2);

/** `sk-cc-…abcd`: enough to recognise a key, never the key. */
export function keyPreview(key: string): string {
  return key.length > 14 ? `${key.slice(0, 6)}...${key.slice(-4)}` : '(a short key)';
}

/** The key's view from GET /v1/key-status (see src/keys.ts keyStatusReport). */
interface KeyStatus {
  key?: string;
  status?: string;
  budget?: { total_tokens?: number; remaining_tokens?: number; window?: string; resets_in?: string };
  rate_limit?: { rpm?: number; concurrent?: number };
}

/**
 * Asks the gateway about the key. Resolves with its status, or throws an InitError saying what
 * went wrong in words a user can act on.
 */
export async function checkKey(url: string, key: string, timeoutMs = 10_000): Promise<KeyStatus> {
  let res: Response;
  try {
    res = await fetch(`${url}/v1/key-status`, { headers: { 'x-api-key': key }, signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const why =
      (err as Error).name === 'TimeoutError' ? `no answer within ${timeoutMs / 1000} s`
      // fetch (the SDKs' too) refuses ports such as 1, 6000 and 6667, as browsers do.
      : cause?.message === 'bad port' ? 'a port fetch refuses to use: choose another'
      : cause?.code ?? cause?.message ?? (err as Error).message;
    throw new InitError(`could not reach the gateway at ${url} (${why}): is it running, and is the URL right?`, 1);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const message = (body as { error?: { message?: unknown } } | undefined)?.error?.message;
  const said = typeof message === 'string' ? message : `HTTP ${res.status}`;
  if (res.status === 401 || res.status === 403) {
    throw new InitError(`the gateway at ${url} refused this key (${said}): check it, or ask the gateway's operator for one`, 1);
  }
  if (res.status === 404) {
    throw new InitError(`${url} has no /v1/key-status: is it a claudcode gateway's URL?`, 1);
  }
  if (!res.ok || typeof body !== 'object' || body === null || !('status' in body)) {
    throw new InitError(`the gateway at ${url} could not check the key (${said})`, 1);
  }
  return body as KeyStatus;
}

/** One line about the key: its state, budget left and limits. */
export function describeStatus(url: string, key: string, s: KeyStatus): string {
  const n = (v: number | undefined) => (v === undefined ? '?' : v.toLocaleString('en-US'));
  const b = s.budget;
  // Nothing used yet: nothing to reset.
  const resets = b && b.remaining_tokens !== b.total_tokens ? `, resets in ${b.resets_in ?? '?'}` : '';
  const budget = b ? `${n(b.remaining_tokens)} of ${n(b.total_tokens)} tokens left (${b.window ?? '?'} window${resets})` : 'budget unknown';
  const limits = s.rate_limit ? `; ${n(s.rate_limit.rpm)} requests/min, ${n(s.rate_limit.concurrent)} at a time` : '';
  return `Key ${s.key ?? keyPreview(key)} at ${url}: ${s.status ?? 'unknown'}, ${budget}${limits}.`;
}

function parseLangs(value: string | undefined): Lang[] {
  if (value === undefined) return [...LANGS];
  const names = value.split(',').map((l) => l.trim().toLowerCase()).filter(Boolean);
  const unknown = names.filter((l) => !(LANGS as readonly string[]).includes(l));
  if (unknown.length || names.length === 0) throw usageError(`--lang takes ${LANGS.join(', ')} (comma-separated), got "${value}"`);
  return LANGS.filter((l) => names.includes(l));
}

/** Shell-quotes a path for the printed next commands (only when it needs it). */
function shellPath(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replaceAll("'", "'\\''")}'`;
}

/** The names an existing .env sets, with their values. */
function envValues(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const match = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
    if (match) values.set(match[1]!, match[2]!.replace(/^(['"])(.*)\1$/, '$2'));
  }
  return values;
}

/** Whether a .gitignore's lines already ignore `.env` at the project's root. */
function ignoresEnv(text: string): boolean {
  return text.split(/\r?\n/).some((line) => ['.env', '/.env', '.env*', '/.env*', '*.env'].includes(line.trim()));
}

/** Appends lines to a file, starting on a line of their own. */
function appendLines(path: string, existing: string, added: string[]): void {
  appendFileSync(path, `${existing === '' || existing.endsWith('\n') ? '' : '\n'}${added.join('\n')}\n`);
}

function compareVersions(a: string, b: string): number {
  const pa = a.replace(/^v/, '').split('.').map(Number);
  const pb = b.replace(/^v/, '').split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

export async function runInit(argv: string[], io: InitIo = processIo()): Promise<number> {
  try {
    await init(argv, io);
    return 0;
  } catch (err) {
    if (err instanceof InitError) {
      io.err(`claudcode init: ${err.message}`);
      return err.code;
    }
    if ((err as Error).name === 'ExitPromptError') {
      io.err('claudcode init: cancelled, nothing written');
      return 1;
    }
    if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS_')) {
      io.err(`claudcode init: ${(err as Error).message}\n\n${INIT_USAGE}`);
      return 2;
    }
    io.err(`claudcode init: ${(err as Error).stack ?? String(err)}`);
    return 1;
  }
}

async function init(argv: string[], io: InitIo): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      url: { type: 'string' },
      key: { type: 'string' },
      lang: { type: 'string' },
      yes: { type: 'boolean', short: 'y', default: false },
      'no-install': { type: 'boolean', default: false },
      force: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.out(INIT_USAGE);
    return;
  }
  if (positionals.length > 1) throw usageError(`init takes one folder, got ${positionals.length}`);
  const langs = parseLangs(values.lang);
  const dir = resolve(io.cwd, positionals[0] ?? '.');
  if (existsSync(dir) && !statSync(dir).isDirectory()) throw usageError(`${dir} exists and is not a folder`);
  const canAsk = io.interactive && !values.yes;

  // The gateway URL.
  let url: string;
  const givenUrl = values.url ?? (io.env.CLAUDCODE_URL || undefined);
  if (givenUrl === undefined && !canAsk) {
    throw usageError(values.yes ? '--yes needs --url URL (or CLAUDCODE_URL)' : 'no --url given and no terminal to ask in: pass --url URL');
  }
  try {
    url = normalizeGatewayUrl(givenUrl ?? (await io.askUrl(DEFAULT_GATEWAY_URL)));
  } catch (err) {
    if (err instanceof Error && err.name !== 'ExitPromptError') throw usageError(err.message);
    throw err;
  }

  // The key, checked with the gateway before anything is written. A key typed at the prompt
  // may be typed again (three tries); a given one fails at once.
  const givenKey = values.key ?? (io.env.CLAUDCODE_KEY || undefined);
  if (givenKey === undefined && !canAsk) {
    throw usageError(values.yes ? '--yes needs --key KEY (or CLAUDCODE_KEY)' : 'no --key given and no terminal to ask in: pass --key KEY');
  }
  let key = '';
  let status: KeyStatus | undefined;
  for (let attempt = 1; status === undefined; attempt++) {
    key = (givenKey ?? (await io.askKey())).trim();
    if (!key) throw usageError('the key is empty');
    if (!isWritableKey(key)) throw usageError('the key has characters a gateway key never has (spaces, quotes, ...)');
    if (key.startsWith('sk-ant-')) io.err('warning: this looks like an Anthropic API key; the gateway wants a key it issued (sk-cc-...)');
    else if (!key.startsWith('sk-cc-')) io.err('warning: gateway keys start with sk-cc-; checking this one with the gateway anyway');
    try {
      status = await checkKey(url, key);
    } catch (err) {
      const retry = givenKey === undefined && attempt < 3 && err instanceof InitError && /refused this key/.test(err.message);
      if (!retry) throw err;
      io.err(`claudcode init: ${err.message}`);
    }
  }
  io.out(describeStatus(url, key, status));

  // The files: .gitignore first, so .env never sits unignored; then .env; then the rest.
  const files: ProjectFile[] = projectFiles({ gatewayUrl: url, langs });
  const ordered = [files.find((f) => f.path === '.gitignore')!, { path: '.env', content: envFile(url, key) }, ...files.filter((f) => f.path !== '.gitignore')];
  const written: string[] = [];
  const kept: string[] = [];
  const notes: string[] = [];
  try {
    mkdirSync(dir, { recursive: true });
    for (const file of ordered) {
      const path = join(dir, file.path);
      const isEnv = file.path === '.env';
      if (existsSync(path) && !values.force) {
        kept.push(file.path);
        if (file.path === '.gitignore') {
          const text = readFileSync(path, 'utf8');
          if (!ignoresEnv(text)) {
            appendLines(path, text, ['.env']);
            notes.push('Added .env to the existing .gitignore.');
          }
        }
        if (isEnv) notes.push(...keepEnv(path, url, key));
        continue;
      }
      writeFileSync(path, file.content, isEnv ? { mode: 0o600 } : {});
      // The mode given above applies only to a new file; an overwritten one keeps its own.
      if (isEnv) chmodSync(path, 0o600);
      written.push(isEnv ? '.env (mode 600)' : file.path);
    }
  } catch (err) {
    throw new InitError(`could not write the project in ${dir}: ${(err as Error).message}`, 1);
  }
  // How to name the folder in what is printed: relative below the current folder, else absolute.
  const below = relative(io.cwd, dir);
  const where = below === '' ? '.' : below.startsWith('..') || isAbsolute(below) ? dir : below;
  if (written.length) io.out(`Wrote in ${where}: ${written.join(', ')}`);
  if (kept.length) io.out(`Kept (already there; --force replaces them): ${kept.join(', ')}`);
  for (const note of notes) (note.startsWith('warning:') ? io.err : io.out)(note);

  // Dependencies.
  const ts = langs.includes('ts');
  let installed = false;
  if (ts && !values['no-install']) {
    io.out(`Running npm install in ${where} ...`);
    const code = io.install(dir);
    if (code !== 0) {
      throw new InitError(`npm install failed (exit ${code}) in ${dir}. The files are written: fix the problem and run npm install there.`, 1);
    }
    installed = true;
  }
  if (ts) {
    const version = io.nodeVersion();
    const need = `the TypeScript examples need Node.js ${MIN_NODE} or later (https://nodejs.org)`;
    if (version === null) io.err(`warning: no node on PATH; ${need}`);
    else if (compareVersions(version, MIN_NODE) < 0) io.err(`warning: the node on PATH is ${version}; ${need}`);
  }

  // What to run next.
  const cd = where === '.' ? '' : `cd ${shellPath(where)} && `;
  io.out('\nNext:');
  if (ts) io.out(`  ${cd}${installed ? '' : 'npm install && '}npm start      # also: npm run stream, npm run search`);
  if (langs.includes('py')) {
    io.out(`  ${cd}python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && python example.py`);
  }
  io.out(`  Claude Code and the gateway's MCP tools: see ${where === '.' ? '' : `${where}/`}README.md`);
}

/**
 * An existing .env is kept; the ANTHROPIC_ variables it lacks are appended. One that sets them
 * to other values is left alone, with a warning (never printing a key).
 */
function keepEnv(path: string, url: string, key: string): string[] {
  const text = readFileSync(path, 'utf8');
  const have = envValues(text);
  const notes: string[] = [];
  const missing: string[] = [];
  const wanted: [string, string][] = [['ANTHROPIC_BASE_URL', url], ['ANTHROPIC_API_KEY', key]];
  for (const [name, value] of wanted) {
    const current = have.get(name);
    if (current === undefined) missing.push(`${name}=${value}`);
    else if (current !== value) notes.push(`warning: the existing .env sets ${name} to another value (kept; --force replaces .env)`);
  }
  if (missing.length) {
    appendLines(path, text, missing);
    chmodSync(path, 0o600);
    notes.push(`Added ${missing.map((m) => m.split('=')[0]).join(' and ')} to the existing .env.`);
  } else if (process.platform !== 'win32' && (statSync(path).mode & 0o077) !== 0) {
    notes.push(`warning: the existing .env is readable by others (mode ${(statSync(path).mode & 0o777).toString(8)}): chmod 600 .env`);
  }
  return notes;
}

/** The real terminal, prompts (Inquirer), npm and node. */
export function processIo(): InitIo {
  return {
    env: process.env,
    cwd: process.cwd(),
    interactive: Boolean(process.stdin.isTTY && process.stdout.isTTY),
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
    async askUrl(defaultUrl) {
      const { default: input } = await import('@inquirer/input');
      return input({
        message: 'Gateway URL',
        default: defaultUrl,
        validate: (value) => {
          try {
            normalizeGatewayUrl(value);
            return true;
          } catch (err) {
            return (err as Error).message;
          }
        },
      });
    },
    async askKey() {
      const { default: password } = await import('@inquirer/password');
      return password({
        message: 'Your gateway key (sk-cc-...)',
        mask: '*',
        validate: (value) => (value.trim() === '' ? 'the key is empty' : isWritableKey(value.trim()) || 'that is not a key (spaces, quotes, ...)'),
      });
    },
    install(dir) {
      // npm is npm.cmd on Windows, which only a shell runs.
      const result = spawnSync('npm', ['install'], { cwd: dir, stdio: 'inherit', shell: process.platform === 'win32' });
      return result.status ?? 1;
    },
    nodeVersion() {
      const result = spawnSync('node', ['--version'], { encoding: 'utf8' });
      return result.status === 0 ? result.stdout.trim() : null;
    },
  };
}
