/**
 * `claudcode init`: the scaffolded project against a real gateway (with the fake upstream) —
 * written as a child process would write it, then run as a user runs it (`npm start`, `npm run
 * stream`, `python3 example.py`). The project's own node_modules is linked in instead of running
 * npm install, so nothing reaches the internet. Also the templates' promises to the setup
 * scripts that embed them (templates.ts), and the prompts' path with stand-in prompts.
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_MODELS } from '../src/config.ts';
import { runInit, type InitIo } from '../src/setup/init.ts';
import {
  EXAMPLE_MODEL, envFile, heredocDelimiter, normalizeGatewayUrl, projectFiles, SDK_VERSION_RANGE,
} from '../src/setup/templates.ts';
import { runCli, type CliRun } from './gateway-process.ts';
import { freePort } from './ports.ts';
import { startStack, type Stack } from './helpers.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** npm scripts in the scaffolded project run the project's Node 24, as npm does here. */
const PATH = [join(ROOT, 'node_modules', '.bin'), process.env.PATH ?? ''].join(delimiter);
const FAKE_ANSWER = 'Hello from the fake Anthropic upstream.';
const ALL_FILES = ['.env', '.gitignore', 'README.md', 'example.py', 'message.ts', 'package.json', 'requirements.txt', 'search.ts', 'stream.ts'];

const python = spawnSync('python3', ['--version']).status === 0;
const anthropicPy = python && spawnSync('python3', ['-c', 'import anthropic']).status === 0;
if (!python) process.stderr.write('\n[claudcode tests] init: python3 not found; skipping the Python example checks.\n');
else if (!anthropicPy) {
  process.stderr.write('\n[claudcode tests] init: the Python anthropic package is not importable; skipping example.py with the real SDK (it runs with a stand-in).\n');
}

let stack: Stack;
let tmp: string;

beforeAll(async () => {
  stack = await startStack();
  tmp = mkdtempSync(join(tmpdir(), 'claudcode-init-'));
});

afterAll(async () => {
  await stack?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

let dirs = 0;
function freshDir(): string {
  return join(tmp, `project-${++dirs}`);
}

/** `claudcode init ARGS` as a child process, with no ANTHROPIC_ or CLAUDCODE_ variables but `env`. */
function init(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return runCli(['init', ...args], { PATH, ...env });
}

/** A command run in `cwd` with PATH leading to the project's Node 24 and nothing of ours set. */
function run(command: string, args: string[], cwd: string): Promise<CliRun> {
  return new Promise((resolve) => {
    const env = { PATH, HOME: process.env.HOME ?? '', SYSTEMROOT: process.env.SYSTEMROOT ?? '' };
    execFile(command, args, { cwd, env, timeout: 30_000, shell: process.platform === 'win32' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function listing(dir: string): string[] {
  return readdirSync(dir).filter((name) => name !== 'node_modules').sort();
}

function snapshot(dir: string): Record<string, { content: string; mtimeMs: number; mode: number }> {
  return Object.fromEntries(
    listing(dir).map((name) => {
      const s = statSync(join(dir, name));
      return [name, { content: readFileSync(join(dir, name), 'utf8'), mtimeMs: s.mtimeMs, mode: s.mode }];
    }),
  );
}

describe('claudcode init against a running gateway', () => {
  let key: string;
  let dir: string;
  let first: CliRun;

  beforeAll(async () => {
    ({ key } = await stack.newKey({ name: 'init' }));
    dir = freshDir();
    first = await init([dir, '--yes', '--url', `${stack.url}/`, '--key', key, '--no-install']);
  });

  it('checks the key, writes the whole project, and says what to run next', () => {
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(listing(dir)).toEqual(ALL_FILES);
    expect(first.stdout).toMatch(/Key sk-cc-\.\.\.\w{4} at http:\/\/127\.0\.0\.1:\d+: active, [\d,]+ of [\d,]+ tokens left/);
    expect(first.stdout).toMatch(/Wrote in .*: .*\.env \(mode 600\)/);
    expect(first.stdout).toMatch(/Next:\n {2}cd .*project-\d+ && npm install && npm start/);
    expect(first.stdout).toContain('pip install -r requirements.txt');
    expect(first.stdout).not.toContain(key);
  });

  it('.env holds the two variables, mode 0600, and is git-ignored; no other file holds the key', () => {
    const env = readFileSync(join(dir, '.env'), 'utf8');
    expect(env).toContain(`ANTHROPIC_BASE_URL=${stack.url}\n`);
    expect(env).toContain(`ANTHROPIC_API_KEY=${key}\n`);
    if (process.platform !== 'win32') expect(statSync(join(dir, '.env')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, '.gitignore'), 'utf8').split('\n')).toContain('.env');
    for (const name of ALL_FILES.filter((n) => n !== '.env')) expect(readFileSync(join(dir, name), 'utf8')).not.toContain(key);
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    expect(pkg.scripts.start).toBe('node --env-file=.env message.ts');
    expect(pkg.dependencies['@anthropic-ai/sdk']).toBe(SDK_VERSION_RANGE);
  });

  it('npm start and npm run stream print the answer through the gateway', async () => {
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'junction');
    const [start, stream] = await Promise.all([run('npm', ['start'], dir), run('npm', ['run', 'stream'], dir)]);
    expect(start.code, start.stderr).toBe(0);
    expect(start.stdout).toContain(FAKE_ANSWER);
    expect(stream.code, stream.stderr).toBe(0);
    expect(stream.stdout).toContain(FAKE_ANSWER);
    expect(stream.stdout).toMatch(/\(\d+ input and \d+ output tokens\)/);
  });

  it('the TypeScript examples type-check against the installed SDK', async () => {
    if (!existsSync(join(dir, 'node_modules'))) symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'junction');
    const tsc = await run(process.execPath, [
      join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict', '--target', 'es2022',
      '--module', 'nodenext', '--types', 'node', '--skipLibCheck', 'message.ts', 'stream.ts', 'search.ts',
    ], dir);
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.code).toBe(0);
  });

  it('a second init overwrites nothing and says so', async () => {
    const before = snapshot(dir);
    const again = await init([dir, '--yes', '--url', stack.url, '--key', key, '--no-install']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).not.toContain('Wrote');
    expect(again.stdout).toContain(`Kept (already there; --force replaces them): ${['.gitignore', '.env', 'README.md', 'package.json', 'message.ts', 'stream.ts', 'search.ts', 'requirements.txt', 'example.py'].join(', ')}`);
    expect(snapshot(dir)).toEqual(before);
  });

  it.skipIf(!python)('example.py compiles', async () => {
    const compiled = await run('python3', ['-m', 'py_compile', 'example.py'], dir);
    expect(compiled.stderr).toBe('');
    expect(compiled.code).toBe(0);
  });

  it.skipIf(!python)('example.py reads .env by itself and prints the answer (a stand-in anthropic module calls the gateway)', async () => {
    // The real SDK is not installed here: a few lines of urllib stand in for anthropic.Anthropic,
    // reading the same two variables, so the example's .env loading and output are exercised.
    const stub = join(tmp, 'stub-anthropic');
    mkdirSync(stub, { recursive: true });
    writeFileSync(join(stub, 'anthropic.py'), [
      'import json, os, urllib.request',
      'from types import SimpleNamespace',
      'class _Messages:',
      '    def create(self, **body):',
      '        req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=json.dumps(body).encode(),',
      '            headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json", "anthropic-version": "2023-06-01"})',
      '        with urllib.request.urlopen(req) as res:',
      '            data = json.load(res)',
      '        return SimpleNamespace(content=[SimpleNamespace(**b) for b in data["content"]])',
      'class Anthropic:',
      '    def __init__(self):',
      '        self.messages = _Messages()',
      '',
    ].join('\n'));
    const result = await new Promise<CliRun>((resolve) => {
      execFile('python3', ['example.py'], { cwd: dir, env: { PATH, PYTHONPATH: stub, PYTHONDONTWRITEBYTECODE: '1' }, timeout: 30_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? -1 : 0, stdout, stderr }));
    });
    expect(result.stderr).toBe('');
    expect(result.stdout).toContain(FAKE_ANSWER);
  });

  it.skipIf(!anthropicPy)('example.py runs through the gateway with the real anthropic package', async () => {
    const result = await run('python3', ['example.py'], dir);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(FAKE_ANSWER);
  });
});

describe('claudcode init: choices and failures', () => {
  it('--force rewrites the files, and .env is 0600 again', async () => {
    const { key } = await stack.newKey({ name: 'force' });
    const dir = freshDir();
    mkdirSync(dir);
    writeFileSync(join(dir, 'message.ts'), '// mine\n');
    writeFileSync(join(dir, '.env'), 'ANTHROPIC_API_KEY=old\n', { mode: 0o644 });
    const kept = await init([dir, '--yes', '--url', stack.url, '--key', key, '--no-install', '--lang', 'ts']);
    expect(kept.code).toBe(0);
    expect(readFileSync(join(dir, 'message.ts'), 'utf8')).toBe('// mine\n');
    expect(kept.stdout).toContain('Kept (already there; --force replaces them): .env, message.ts');
    // The existing .env is kept, its other value too; the missing variable is added.
    expect(kept.stderr).toBe('warning: the existing .env sets ANTHROPIC_API_KEY to another value (kept; --force replaces .env)\n');
    expect(kept.stdout).toContain('Added ANTHROPIC_BASE_URL to the existing .env.');
    expect(readFileSync(join(dir, '.env'), 'utf8')).toBe(`ANTHROPIC_API_KEY=old\nANTHROPIC_BASE_URL=${stack.url}\n`);
    expect(listing(dir)).toEqual(['.env', '.gitignore', 'README.md', 'message.ts', 'package.json', 'search.ts', 'stream.ts']);

    const forced = await init([dir, '--yes', '--url', stack.url, '--key', key, '--no-install', '--lang', 'ts', '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stdout).not.toContain('Kept');
    expect(readFileSync(join(dir, 'message.ts'), 'utf8')).toContain('client.messages.create');
    expect(readFileSync(join(dir, '.env'), 'utf8')).toBe(envFile(stack.url, key));
    if (process.platform !== 'win32') expect(statSync(join(dir, '.env')).mode & 0o777).toBe(0o600);
  });

  it('an existing .gitignore without .env gets it appended, nothing else changed', async () => {
    const { key } = await stack.newKey({ name: 'gitignore' });
    const dir = freshDir();
    mkdirSync(dir);
    writeFileSync(join(dir, '.gitignore'), 'dist');
    const result = await init([dir, '--yes', '--url', stack.url, '--key', key, '--no-install', '--lang', 'py']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('Added .env to the existing .gitignore.');
    expect(readFileSync(join(dir, '.gitignore'), 'utf8')).toBe('dist\n.env\n');
    expect(listing(dir)).toEqual(['.env', '.gitignore', 'README.md', 'example.py', 'requirements.txt']);
    expect(result.stdout).not.toContain('npm');
  });

  it('a wrong key: exit 1, the gateway\'s refusal named, nothing written', async () => {
    const dir = freshDir();
    const result = await init([dir, '--yes', '--url', stack.url, '--key', 'sk-cc-0000000000000000000000000000wrong', '--no-install']);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`claudcode init: the gateway at ${stack.url} refused this key (invalid x-api-key): check it`);
    expect(result.stderr).not.toContain('0000wrong');
    expect(existsSync(dir)).toBe(false);
  });

  it('a disabled key is refused with the gateway\'s reason', async () => {
    const { key } = await stack.newKey({ name: 'disabled', disabled: true });
    const result = await init([freshDir(), '--yes', '--url', stack.url, '--key', key, '--no-install']);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('refused this key (This API key has been disabled.)');
  });

  it('an unreachable gateway: exit 1, said plainly, nothing written', async () => {
    const dir = freshDir();
    const url = `http://127.0.0.1:${await freePort()}`;
    const result = await init([dir, '--yes', '--url', url, '--key', 'sk-cc-abcdefghijklmnopqrstuvwxyz012345', '--no-install']);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`could not reach the gateway at ${url} (ECONNREFUSED): is it running`);
    expect(existsSync(dir)).toBe(false);
  });

  it('usage errors exit 2: --yes without a key or URL, a bad URL, an unknown language', async () => {
    const dir = freshDir();
    const [noKey, noUrl, badUrl, badLang, badFlag] = await Promise.all([
      init([dir, '--yes', '--url', stack.url]),
      init([dir, '--yes', '--key', 'sk-cc-x']),
      init([dir, '--yes', '--url', 'ftp://example.com', '--key', 'sk-cc-x']),
      init([dir, '--yes', '--url', stack.url, '--key', 'sk-cc-x', '--lang', 'go']),
      init([dir, '--frobnicate']),
    ]);
    expect(noKey.stderr).toContain('--yes needs --key KEY (or CLAUDCODE_KEY)');
    expect(noUrl.stderr).toContain('--yes needs --url URL (or CLAUDCODE_URL)');
    expect(badUrl.stderr).toContain('must start with http:// or https://');
    expect(badLang.stderr).toContain('--lang takes ts, py');
    expect(badFlag.stderr).toContain("Unknown option '--frobnicate'");
    expect([noKey, noUrl, badUrl, badLang, badFlag].map((r) => r.code)).toEqual([2, 2, 2, 2, 2]);
    expect(existsSync(dir)).toBe(false);
  });

  it('takes the URL and key from CLAUDCODE_URL and CLAUDCODE_KEY', async () => {
    const { key } = await stack.newKey({ name: 'env' });
    const dir = freshDir();
    const result = await init([dir, '--yes', '--no-install', '--lang', 'py'], { CLAUDCODE_URL: `${stack.url}/v1`, CLAUDCODE_KEY: key });
    expect(result.code, result.stderr).toBe(0);
    expect(readFileSync(join(dir, '.env'), 'utf8')).toBe(envFile(stack.url, key));
  });
});

describe('claudcode init in process: prompts and npm install', () => {
  function io(answers: { url?: string; keys: string[] }, cwd: string) {
    const out: string[] = [];
    const err: string[] = [];
    const asked: string[] = [];
    const value: InitIo = {
      env: {},
      cwd,
      interactive: true,
      out: (line) => out.push(line),
      err: (line) => err.push(line),
      askUrl: async (defaultUrl) => {
        asked.push(`url (default ${defaultUrl})`);
        return answers.url ?? defaultUrl;
      },
      askKey: async () => {
        asked.push('key');
        return answers.keys.shift() ?? '';
      },
      install: () => {
        throw new Error('install must not run with --no-install');
      },
      nodeVersion: () => 'v20.0.0',
    };
    return { io: value, out, err, asked };
  }

  it('asks for the URL and the key, asks again after a refused key, and never prints it', async () => {
    const { key } = await stack.newKey({ name: 'prompted' });
    const dir = freshDir();
    const t = io({ url: stack.url, keys: ['sk-cc-typo000000000000000000000000000', key] }, tmp);
    expect(await runInit([dir, '--no-install', '--lang', 'ts'], t.io)).toBe(0);
    expect(t.asked).toEqual(['url (default http://127.0.0.1:8080)', 'key', 'key']);
    expect(t.err[0]).toContain('refused this key (invalid x-api-key)');
    expect(t.err.join('\n')).toContain('warning: the node on PATH is v20.0.0; the TypeScript examples need Node.js 22.18 or later (https://nodejs.org)');
    expect(readFileSync(join(dir, '.env'), 'utf8')).toContain(`ANTHROPIC_API_KEY=${key}\n`);
    expect([...t.out, ...t.err].join('\n')).not.toContain(key);
  });

  it('runs npm install in the folder (TypeScript only); a failed install is exit 1 with the files written', async () => {
    const { key } = await stack.newKey({ name: 'install' });
    const installs: string[] = [];
    const ok = io({ keys: [] }, tmp);
    ok.io.install = (dir) => (installs.push(dir), 0);
    const dir = freshDir();
    expect(await runInit([dir, '--yes', '--url', stack.url, '--key', key], ok.io)).toBe(0);
    expect(installs).toEqual([dir]);
    expect(ok.out.join('\n')).toMatch(/Next:\n {2}cd .* && npm start {6}#/);

    const failed = io({ keys: [] }, tmp);
    failed.io.install = () => 7;
    const dir2 = freshDir();
    expect(await runInit([dir2, '--yes', '--url', stack.url, '--key', key], failed.io)).toBe(1);
    expect(failed.err.join('\n')).toContain(`npm install failed (exit 7) in ${dir2}. The files are written`);
    expect(listing(dir2)).toEqual(ALL_FILES);

    const py = io({ keys: [] }, tmp);
    expect(await runInit([freshDir(), '--yes', '--url', stack.url, '--key', key, '--lang', 'py'], py.io)).toBe(0);
  });

  it('--yes asks nothing, even in a terminal', async () => {
    const t = io({ keys: [] }, tmp);
    expect(await runInit([freshDir(), '--yes', '--url', stack.url], t.io)).toBe(2);
    expect(t.asked).toEqual([]);
  });
});

describe('templates (what the setup scripts embed)', () => {
  const url = 'https://claude.example.com/gw';
  const files = projectFiles({ gatewayUrl: url, langs: ['ts', 'py'] });

  it('embeddable text: printable ASCII and newlines, no line starting with \'@, ends with a newline', () => {
    for (const file of [...files, { path: '.env', content: envFile(url, 'sk-cc-abc') }]) {
      expect(file.content, file.path).toMatch(/^[\x20-\x7e\n]*\n$/);
      expect(file.content.split('\n').some((line) => line.startsWith("'@")), file.path).toBe(false);
    }
    const delimiter = heredocDelimiter(files.map((f) => f.content));
    expect(files.every((f) => !f.content.split('\n').includes(delimiter))).toBe(true);
    expect(heredocDelimiter(['x\nCLAUDCODE_EOF\n'])).toBe('CLAUDCODE_EOF_1');
  });

  it('deterministic, keyless, and in step with this repository (SDK range, model catalog)', () => {
    expect(projectFiles({ gatewayUrl: url, langs: ['py', 'ts', 'py'] })).toEqual(files);
    expect(files.map((f) => f.path)).toEqual(['.gitignore', 'README.md', 'package.json', 'message.ts', 'stream.ts', 'search.ts', 'requirements.txt', 'example.py']);
    expect(JSON.stringify(files)).not.toMatch(/sk-cc-\w/);
    const readme = files.find((f) => f.path === 'README.md')!.content;
    expect(readme).toContain(`claude mcp add --transport http claudcode ${url}/mcp --header "x-api-key: $ANTHROPIC_API_KEY"`);
    expect(readme).toContain(`curl -H "x-api-key: $ANTHROPIC_API_KEY" ${url}/v1/key-status`);
    const repo = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    expect(SDK_VERSION_RANGE).toBe(repo.devDependencies['@anthropic-ai/sdk']);
    expect(DEFAULT_MODELS.map((m) => m.id)).toContain(EXAMPLE_MODEL);
    expect(projectFiles({ gatewayUrl: url, langs: ['py'] }).map((f) => f.path)).toEqual(['.gitignore', 'README.md', 'requirements.txt', 'example.py']);
  });

  it('gateway URLs are normalized, and only safe ones accepted', () => {
    expect(normalizeGatewayUrl(' http://127.0.0.1:8080/ ')).toBe('http://127.0.0.1:8080');
    expect(normalizeGatewayUrl('https://claude.example.com/v1')).toBe('https://claude.example.com');
    expect(normalizeGatewayUrl('http://[::1]:8080')).toBe('http://[::1]:8080');
    for (const bad of ['claude.example.com', 'ftp://x', 'http://u:p@x', 'http://x/?a=1', 'http://x/#f', "http://x/a'b", 'http://x/$HOME']) {
      expect(() => normalizeGatewayUrl(bad), bad).toThrow();
    }
    expect(() => envFile(url, 'sk-cc-has space')).toThrow();
  });
});
