/**
 * GET /setup.sh and /setup.ps1: the scripts a real gateway serves, run as a user would run them
 * (bash reading the script from a pipe, in a temporary folder), against the fake upstream.
 * The tree they write is compared with templates.ts — what `claudcode init` writes — and the
 * scaffolded project's `npm start` is run through the gateway.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scriptProject, setupPowerShellScript, setupShellScript } from '../src/setup/scripts.ts';
import { envFile, projectFiles, type Lang } from '../src/setup/templates.ts';
import { runCli } from './gateway-process.ts';
import { ADMIN_TOKEN, startStack, type Stack } from './helpers.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The repo's node_modules/.bin first: its `node` is Node 24 (the system's may be older). */
const PATH = [join(ROOT, 'node_modules', '.bin'), process.env.PATH ?? ''].join(delimiter);
/** A pseudo-terminal to type the key in (python3's pty module), and PowerShell: used when there. */
const HAS_PTY = spawnSync('python3', ['-c', 'import pty, termios']).status === 0;
const HAS_PWSH = spawnSync('pwsh', ['-NoProfile', '-Command', 'exit 0']).status === 0;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment of a run: no Anthropic or claudcode variables from the test's own shell. */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !/^(ANTHROPIC_|CLAUDCODE_|npm_)/.test(name)) env[name] = value;
  }
  return { ...env, PATH, ...extra };
}

/**
 * `bash -s -- ARGS` with the script on standard input, as `curl … | bash -s -- ARGS` runs it.
 * In a session of its own (detached), so it has no terminal to ask in.
 */
function run(command: string, args: string[], options: { cwd: string; env?: Record<string, string>; input?: string; timeoutMs?: number }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env: options.env ?? cleanEnv(), detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), options.timeoutMs ?? 15_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(options.input ?? '');
  });
}

const bash = (script: string, args: string[], cwd: string, env?: Record<string, string>) =>
  run('bash', ['-s', '--', ...args], { cwd, input: script, ...(env ? { env } : {}) });

/** Every file under `dir` (node_modules left out), path → text. */
function tree(dir: string, prefix = ''): Record<string, string> {
  const out: Record<string, string> = {};
  for (const entry of readdirSync(join(dir, prefix), { withFileTypes: true })) {
    const path = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.name === 'node_modules') continue;
    if (entry.isDirectory()) Object.assign(out, tree(dir, path));
    else out[path] = readFileSync(join(dir, path), 'utf8');
  }
  return out;
}

/** What `claudcode init` writes for this URL, key and languages (templates.ts). */
function expectedTree(url: string, key: string, langs: Lang[]): Record<string, string> {
  const files = Object.fromEntries(projectFiles({ gatewayUrl: url, langs }).map((f) => [f.path, f.content]));
  return { ...files, '.env': envFile(url, key) };
}

async function getText(url: string): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(url);
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

/** A GET with headers fetch will not send (Host), over node:http. */
function rawGet(url: string, headers: Record<string, string>): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.once('error', reject);
    req.end();
  });
}

/** A stack with a key made before the script at `path` is fetched (checked to be plain text). */
async function served(path: string): Promise<{ stack: Stack; key: string; script: string }> {
  const stack = await startStack();
  const key = (await stack.newKey()).key;
  const res = await getText(`${stack.url}${path}`);
  expect(res.status).toBe(200);
  expect(res.type).toBe('text/plain; charset=utf-8');
  return { stack, key, script: res.text };
}

const tempDirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'claudcode-setup-'));
  tempDirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

describe('GET /setup.sh run with bash', () => {
  let stack: Stack;
  let key: string;
  let script: string;

  beforeAll(async () => {
    ({ stack, key, script } = await served('/setup.sh'));
  });
  afterAll(() => stack.close());

  it('is readable plain text for this gateway, with no key in it', () => {
    expect(script.startsWith('#!/usr/bin/env bash\n# claudcode setup for the gateway at ')).toBe(true);
    expect(script).toContain(`GATEWAY_URL='${stack.url}'`);
    expect(script).toContain('set -euo pipefail');
    expect(script).toContain('read -r -s -p');
    expect(script).toContain('</dev/tty');
    expect(script).not.toMatch(/sk-cc-[A-Za-z0-9]{8,}/);
    expect(script).not.toContain(key);
    // The only network tool is curl, against the gateway's key-status; nothing is piped into a
    // shell (comments and the usage text show how to run the script itself).
    const code = script
      .replace(/<<'([A-Z_0-9]+)'\n[\s\S]*?\n\1\n/g, '')
      .split('\n')
      .filter((l) => !l.trimStart().startsWith('#'));
    expect(code.filter((l) => /\bcurl\b/.test(l) && !/curl not found|command -v curl/.test(l))).toEqual([
      "    curl -K - -sS -o /dev/null -w '%{http_code}' --connect-timeout 10 --max-time 20 \\",
    ]);
    expect(code.filter((l) => /\b(wget|eval|source)\b|\|\s*(ba)?sh\b/.test(l))).toEqual([]);
  });

  it('writes the tree claudcode init writes, .env 0600 with the key; npm start answers through the gateway', async () => {
    const dir = tempDir();
    const result = await bash(script, ['--key', key, '--yes', '--no-install'], dir);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`The gateway at ${stack.url} accepts the key.`);
    expect(result.stdout).toContain('Wrote in .: .gitignore, .env (mode 600), README.md, package.json');
    expect(result.stdout).toContain('npm install && npm start');
    expect(result.stdout).not.toContain(key);

    expect(tree(dir)).toEqual(expectedTree(stack.url, key, ['ts', 'py']));
    expect(statSync(join(dir, '.env')).mode & 0o777).toBe(0o600);
    // And `claudcode init` itself, run for the same gateway and key, writes the same tree.
    const initDir = join(tempDir(), 'init');
    const init = await runCli(['init', initDir, '--yes', '--no-install', '--url', stack.url, '--key', key], {});
    expect(init.code).toBe(0);
    expect(tree(initDir)).toEqual(tree(dir));
    for (const [path, text] of Object.entries(tree(dir))) expect({ path, hasKey: text.includes(key) }).toEqual({ path, hasKey: path === '.env' });

    // The project runs: its node_modules is the repo's (no install in a test), its `node` Node 24.
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
    const start = await run('npm', ['start', '--silent'], { cwd: dir, timeoutMs: 30_000 });
    expect(start.stdout).toContain('Hello from the fake Anthropic upstream.');
    expect(start.code).toBe(0);
  }, 60_000);

  it('never replaces a file: a second run stops, listing them, and changes nothing', async () => {
    const dir = tempDir();
    expect((await bash(script, ['--key', key, '--yes', '--no-install'], dir)).code).toBe(0);
    const before = tree(dir);
    const again = await bash(script, ['--key', key, '--yes', '--no-install'], dir);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/these files exist in \. and this script never replaces files: \.gitignore README\.md package\.json .* \.env/);
    expect(tree(dir)).toEqual(before);

    // One file of the user's is enough to stop it before anything is written.
    const other = tempDir();
    writeFileSync(join(other, 'package.json'), '{"name":"mine"}\n');
    const blocked = await bash(script, ['--key', key, '--yes', '--no-install'], other);
    expect(blocked.code).toBe(1);
    expect(blocked.stderr).toContain('never replaces files: package.json');
    expect(tree(other)).toEqual({ 'package.json': '{"name":"mine"}\n' });

    // --force is not offered.
    const forced = await bash(script, ['--key', key, '--yes', '--force'], other);
    expect(forced.code).toBe(2);
    expect(forced.stderr).toMatch(/never replaces files/);
  });

  it('a key the gateway refuses: exit 1, nothing written (not even the folder)', async () => {
    const dir = tempDir();
    const wrong = `sk-cc-${'x'.repeat(32)}`;
    const result = await bash(script, ['--key', wrong, '--yes', 'project'], dir);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`the gateway at ${stack.url} refused this key`);
    expect(existsSync(join(dir, 'project'))).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('takes the key from CLAUDCODE_KEY, a folder and --lang', async () => {
    const dir = tempDir();
    const result = await bash(script, ['--yes', '--no-install', '--lang', 'ts', 'my project'], dir, cleanEnv({ CLAUDCODE_KEY: key }));
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(tree(join(dir, 'my project'))).toEqual(expectedTree(stack.url, key, ['ts']));
    expect(result.stdout).toContain("cd my\\ project && npm install && npm start");

    const py = tempDir();
    expect((await bash(script, ['--yes', '--lang=PY', `--dir=${py}/p`], py, cleanEnv({ CLAUDCODE_KEY: key }))).code).toBe(0);
    expect(tree(join(py, 'p'))).toEqual(expectedTree(stack.url, key, ['py']));
  });

  it('runs npm install in the new folder unless --no-install (npm stubbed here: no network)', async () => {
    const dir = tempDir();
    const bin = join(tempDir(), 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'npm'), `#!/bin/sh\necho "$PWD $*" >> '${dir}/npm-calls'\n[ -t 0 ] && echo tty >> '${dir}/npm-calls'\nread -r line && echo "stdin: $line" >> '${dir}/npm-calls'\nexit 0\n`);
    chmodSync(join(bin, 'npm'), 0o755);
    const result = await bash(script, ['--yes', 'app'], dir, cleanEnv({ CLAUDCODE_KEY: key, PATH: [bin, PATH].join(delimiter) }));
    expect(result.code).toBe(0);
    // In the project's folder, reading nothing of the script that comes on bash's stdin.
    expect(readFileSync(join(dir, 'npm-calls'), 'utf8')).toBe(`${join(dir, 'app')} install\n`);
    expect(result.stdout).toContain('cd app && npm start');
    expect(result.stdout).not.toContain('npm install &&');
  });

  it('without curl the key is not checked, with a note, and the project is written', async () => {
    const dir = tempDir();
    const bin = join(tempDir(), 'bin');
    mkdirSync(bin);
    // Only the tools the script uses for a Python project: no curl, node or npm.
    for (const tool of ['bash', 'cat', 'tr', 'dirname', 'mkdir', 'chmod']) {
      const found = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim();
      symlinkSync(found, join(bin, tool));
    }
    const result = await bash(script, ['--yes', '--lang', 'py'], dir, cleanEnv({ CLAUDCODE_KEY: key, PATH: bin }));
    expect(result.stderr).toBe('warning: curl not found: the key is not checked with the gateway (the examples will tell if it is wrong)\n');
    expect(result.code).toBe(0);
    expect(tree(dir)).toEqual(expectedTree(stack.url, key, ['py']));
  });

  it('usage errors: --yes without a key, unknown --lang, unknown option, no terminal to ask in', async () => {
    const dir = tempDir();
    const noKey = await bash(script, ['--yes'], dir);
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toContain('--yes needs the key: set CLAUDCODE_KEY');
    const lang = await bash(script, ['--lang', 'go', '--key', key], dir);
    expect(lang.code).toBe(2);
    expect(lang.stderr).toContain('--lang takes ts, py');
    const option = await bash(script, ['--url', 'http://elsewhere'], dir);
    expect(option.code).toBe(2);
    const noTty = await bash(script, [], dir);
    expect(noTty.code).toBe(1);
    expect(noTty.stderr).toContain('no terminal to ask for the key in');
    expect(readdirSync(dir)).toEqual([]);
    const help = await bash(script, ['--help'], dir);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: bash setup.sh/);
  });

  const prompt = 'asks for the key on the terminal, not echoed, while the script comes through a pipe';
  it.skipIf(!HAS_PTY)(HAS_PTY ? prompt : `${prompt} (skipped: no python3 with pty to be the terminal)`, async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'setup.sh'), script);
    // A pseudo-terminal: `cat setup.sh | bash -s` in it, the key typed once the prompt shows
    // and echo is off.
    const driver = `
import os, pty, select, sys, termios, time
script, key = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execvp('bash', ['bash', '-c', 'cat "$0" | bash -s -- --no-install --lang ts app', script])
out, sent = b'', False
deadline = time.time() + 20
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    if not sent and b'Your gateway key' in out and not (termios.tcgetattr(fd)[3] & termios.ECHO):
        os.write(fd, (key + '\\n').encode())
        sent = True
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode())
sys.exit(os.waitstatus_to_exitcode(status))
`;
    const result = await run('python3', ['-c', driver, join(dir, 'setup.sh'), key], { cwd: dir, timeoutMs: 30_000 });
    expect(result.stdout).toContain('Your gateway key (sk-cc-..., not shown as you type):');
    expect(result.stdout).not.toContain(key);
    expect(result.code).toBe(0);
    expect(tree(join(dir, 'app'))).toEqual(expectedTree(stack.url, key, ['ts']));
  }, 40_000);

  it('is served in maintenance mode too (it is not /v1)', async () => {
    const admin = (enabled: boolean) =>
      fetch(`${stack.url}/admin/maintenance`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ enabled }) });
    expect((await admin(true)).status).toBe(200);
    try {
      expect((await getText(`${stack.url}/setup.sh`)).status).toBe(200);
      expect((await getText(`${stack.url}/setup.ps1`)).status).toBe(200);
      expect((await fetch(`${stack.url}/v1/key-status`, { headers: { 'x-api-key': key } })).status).toBe(503);
    } finally {
      await admin(false);
    }
  });
});

describe('GET /setup.ps1', () => {
  let stack: Stack;
  let key: string;
  let script: string;

  beforeAll(async () => {
    ({ stack, key, script } = await served('/setup.ps1'));
  });
  afterAll(() => stack.close());

  /** The script without its comments (`# …` lines and the `<# … #>` block). */
  const code = () =>
    script
      .replace(/^<#[\s\S]*?^#>$/m, '')
      .replace(/@'\n[\s\S]*?\n'@/g, '')
      .split('\n')
      .filter((l) => !l.trimStart().startsWith('#'))
      .join('\n');

  it('names this gateway, every file of the project, and asks for the key masked', () => {
    expect(script).toContain(`$GatewayUrl = '${stack.url}'`);
    expect(script).toContain(`claudcode setup for the gateway at ${stack.url}`);
    for (const langs of [['ts', 'py'], ['ts'], ['py']] as Lang[][]) {
      for (const file of projectFiles({ gatewayUrl: stack.url, langs })) expect(script).toContain(`Path = '${file.path}'`);
    }
    expect(script).toContain('Read-Host -Prompt');
    expect(script).toContain('-AsSecureString');
    expect(script).toContain("$ErrorActionPreference = 'Stop'");
    expect(script).toMatch(/^[\x20-\x7e\n]*$/);
  });

  it('holds no key, downloads nothing and runs nothing remote', () => {
    expect(script).not.toContain(key);
    expect(script).not.toMatch(/sk-cc-[A-Za-z0-9]{8,}/);
    const body = code();
    expect(body).not.toMatch(/\b(iex|Invoke-Expression|Invoke-WebRequest|iwr|Start-BitsTransfer|DownloadString|DownloadFile|WebClient|curl|wget)\b/i);
    // One web request: the key check against this gateway.
    expect(body.match(/Invoke-RestMethod[^\n]*/g)).toEqual(['Invoke-RestMethod -Uri "$GatewayUrl/v1/key-status" -Headers @{ \'x-api-key\' = $Key } -TimeoutSec 20 -UseBasicParsing']);
    // Only npm among external programs (and chmod 600 for .env off Windows).
    expect(body.match(/& (\w+)/g)).toEqual(['& chmod', '& npm', '& node']);
  });

  it('carries each file as a here-string with exactly its text', () => {
    for (const file of projectFiles({ gatewayUrl: stack.url, langs: ['ts', 'py'] })) {
      expect(script).toContain(`(@'\n${file.content.slice(0, -1)}\n'@).Replace("\`r\`n", "\`n") + "\`n"`);
    }
  });

  // pwsh is seldom installed where these tests run: then the script is checked as text only.
  const pwsh = 'runs under pwsh like the bash one';
  it.skipIf(!HAS_PWSH)(HAS_PWSH ? pwsh : `${pwsh} (skipped: pwsh is not installed)`, async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'setup.ps1'), script);
    const result = await run('pwsh', ['-NoProfile', '-NonInteractive', '-File', join(dir, 'setup.ps1'), '-Yes', '-NoInstall', '-Dir', 'app'], {
      cwd: dir,
      env: cleanEnv({ CLAUDCODE_KEY: key }),
      timeoutMs: 60_000,
    });
    expect(result.code).toBe(0);
    expect(tree(join(dir, 'app'))).toEqual(expectedTree(stack.url, key, ['ts', 'py']));
    expect(statSync(join(dir, 'app', '.env')).mode & 0o777).toBe(0o600);
  }, 90_000);
});

describe("the scripts' URL: configured, from Host, or from a trusted proxy's headers", () => {
  let plain: Stack;
  let proxied: Stack;
  let configured: Stack;

  beforeAll(async () => {
    plain = await startStack();
    proxied = await startStack({ config: { trustedProxies: ['127.0.0.1/8'] } });
    configured = await startStack({ config: { publicUrl: 'https://claude.example.com/gw/', trustedProxies: ['127.0.0.1/8'] } });
  });
  afterAll(async () => {
    await Promise.all([plain.close(), proxied.close(), configured.close()]);
  });

  const urlIn = (script: string) => /^GATEWAY_URL='([^']*)'$/m.exec(script)?.[1];
  const forwarded = { host: 'internal:9000', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'gw.example.com' };

  it('the configured publicUrl wins over Host and forwarded headers', async () => {
    const res = await rawGet(`${configured.url}/setup.sh`, forwarded);
    expect(urlIn(res.text)).toBe('https://claude.example.com/gw');
    expect((await rawGet(`${configured.url}/setup.ps1`, forwarded)).text).toContain("$GatewayUrl = 'https://claude.example.com/gw'");
  });

  it('Host otherwise; X-Forwarded-* only from a trusted proxy', async () => {
    expect(urlIn((await rawGet(`${plain.url}/setup.sh`, { host: 'gateway.lan:8080' })).text)).toBe('http://gateway.lan:8080');
    expect(urlIn((await rawGet(`${plain.url}/setup.sh`, forwarded)).text)).toBe('http://internal:9000');
    expect(urlIn((await rawGet(`${proxied.url}/setup.sh`, forwarded)).text)).toBe('https://gw.example.com');
    expect(urlIn((await rawGet(`${proxied.url}/setup.sh`, { host: 'internal:9000', forwarded: 'for=10.0.0.1;proto=https;host="gw.example.com:8443"' })).text)).toBe(
      'https://gw.example.com:8443',
    );
  });

  it('a Host or forwarded host with shell metacharacters is refused, never put in a script', async () => {
    const hostile = ["gw.example.com'; touch /tmp/pwned; '", 'gw.example.com$(id)', 'gw`id`.example.com', 'gw.example.com "x"', 'a;b', 'x\\y'];
    for (const host of hostile) {
      for (const path of ['/setup.sh', '/setup.ps1']) {
        const direct = await rawGet(`${plain.url}${path}`, { host });
        expect({ host, status: direct.status }).toEqual({ host, status: 400 });
        // A Host that makes no URL at all (spaces, quotes, backslash) @hono/node-server refuses
        // itself, with an empty 400, before the app sees it; the rest get the gateway's own.
        if (direct.text) expect(JSON.parse(direct.text).error.type).toBe('invalid_request_error');
        expect(direct.text).not.toContain('#!/usr/bin/env bash');
        const viaProxy = await rawGet(`${proxied.url}${path}`, { host: 'internal', 'x-forwarded-host': host });
        expect({ host, status: viaProxy.status }).toEqual({ host, status: 400 });
        expect(viaProxy.text).not.toContain('#!/usr/bin/env bash');
      }
    }
    expect((await rawGet(`${proxied.url}/setup.sh`, { host: 'internal', 'x-forwarded-proto': 'javascript' })).status).toBe(400);
    // From an untrusted address the forwarded host is not even looked at.
    expect((await rawGet(`${plain.url}/setup.sh`, { host: 'ok.example.com', 'x-forwarded-host': 'bad$(id)' })).status).toBe(200);
  });
});

describe('script generation', () => {
  it('embeds text that looks like the end of a here-document or here-string exactly', async () => {
    const url = 'http://127.0.0.1:1';
    const project = scriptProject(url);
    const tricky = "CLAUDCODE_EOF\n'@ not the end\n  '@\n$(touch pwned) `id` ${HOME} \\ \"q\" 'q'\nno final newline";
    for (const choice of project.choices) choice.files.push({ path: 'tricky.txt', content: tricky });
    const sh = setupShellScript(url, project);
    expect(sh).toContain("<<'CLAUDCODE_EOF_1'");
    const ps = setupPowerShellScript(url, project);
    expect(ps).toContain(Buffer.from(tricky).toString('base64'));

    // The bash functions print the text exactly (without running the script: curl would be needed).
    const dir = tempDir();
    const functions = sh.slice(sh.indexOf('text_of() {'), sh.indexOf('trimmed() {')) + sh.slice(sh.indexOf('# tricky.txt'), sh.indexOf('# .env up to the key'));
    const result = await run('bash', ['-c', `${functions}\nfile_tricky_txt > out.txt`], { cwd: dir });
    expect(result.code).toBe(0);
    expect(readFileSync(join(dir, 'out.txt'), 'utf8')).toBe(tricky);
    expect(existsSync(join(dir, 'pwned'))).toBe(false);
  });

  it('refuses URLs and paths it cannot embed safely', () => {
    expect(() => setupShellScript("http://x/'$(id)'")).toThrow();
    const project = scriptProject('http://127.0.0.1:1');
    project.choices[0]!.files.push({ path: '../escape', content: 'x\n' });
    expect(() => setupShellScript('http://127.0.0.1:1', project)).toThrow(/path/);
    expect(() => setupPowerShellScript('http://127.0.0.1:1', project)).toThrow(/path/);
  });
});
