/**
 * The client project `claudcode init` scaffolds, as data: one list of files that the CLI writes
 * and that the gateway's /setup.sh and /setup.ps1 embed, so the two ways of setting up a project
 * cannot drift apart.
 *
 * Guarantees the script writers rely on (test/init.test.ts checks them):
 * - No key in `projectFiles`: the key goes only into `.env` (`envFile`), which is written apart;
 *   the README refers to `$ANTHROPIC_API_KEY`.
 * - Every content is printable ASCII (0x20-0x7e) plus `\n`, ends with `\n`, and has no `\r` or
 *   tab. It is meant to be embedded literally — a quoted bash heredoc (`<<'DELIM'`) or a
 *   PowerShell single-quoted here-string (`@'` … `'@`) — and needs no interpolation. It may hold
 *   `$`, `${`, quotes, backslashes and backticks (shell commands in the README, Python strings),
 *   so do not embed it in an expanding heredoc or a double-quoted string. No line starts with
 *   `'@`. Pick a heredoc delimiter that no line equals (`heredocDelimiter` does).
 * - The gateway URL appears verbatim, and only as `normalizeGatewayUrl` returns it: letters,
 *   digits and `-._~:/[]%` alone.
 * - Deterministic: the same options give the same bytes, in the same order.
 */

export type Lang = 'ts' | 'py';
export const LANGS: readonly Lang[] = ['ts', 'py'];

/** One file of the project: a relative POSIX path and its text. */
export interface ProjectFile {
  path: string;
  content: string;
}

export interface ProjectOptions {
  /** The gateway's base URL, as `normalizeGatewayUrl` returns it. */
  gatewayUrl: string;
  /** Which examples to write (in any order; duplicates ignored). At least one. */
  langs: readonly Lang[];
}

/** The `@anthropic-ai/sdk` range the project asks for: the one this repository is tested with. */
export const SDK_VERSION_RANGE = '^1.14.0';
/** The model the examples ask for: in the gateway's default catalog (src/config.ts). */
export const EXAMPLE_MODEL = 'claude-sonnet-4-6';
/** Node.js that runs the TypeScript examples directly (type stripping on by default, --env-file). */
export const MIN_NODE = '22.18';

/** The characters a normalized gateway URL is made of (no quote, `$`, space or backslash). */
const SAFE_URL = /^[A-Za-z0-9\-._~:/[\]%]+$/;

/**
 * A gateway URL as the project stores it: http(s), no credentials, query or fragment, no trailing
 * slash or `/v1` (`http://127.0.0.1:8080`, `https://claude.example.com/gw`). Throws a message
 * naming what is wrong.
 */
export function normalizeGatewayUrl(input: string): string {
  let url: URL;
  try {
    url = new URL(input.trim());
  } catch {
    throw new Error(`"${input}" is not a URL (expected e.g. http://127.0.0.1:8080)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`the gateway URL must start with http:// or https:// (got "${input}")`);
  }
  if (url.username || url.password) throw new Error('the gateway URL must not hold a user name or password');
  if (url.search || url.hash) throw new Error('the gateway URL must not have a query or fragment');
  // A base URL ending in /v1 (as some SDK settings have it) names the same gateway.
  const normalized = `${url.origin}${url.pathname}`.replace(/\/+$/, '').replace(/\/v1$/, '');
  if (!SAFE_URL.test(normalized)) throw new Error(`the gateway URL has characters it should not need: "${input}"`);
  return normalized;
}

/** Characters a key may have in `.env` (unquoted there, and read by Node, python-dotenv and sh). */
const SAFE_KEY = /^[A-Za-z0-9\-._~+/=]+$/;

/** Whether `key` can be written to `.env` as it is (gateway keys always can: sk-cc- + base62). */
export function isWritableKey(key: string): boolean {
  return SAFE_KEY.test(key);
}

/**
 * The `.env` text: the two variables the Anthropic SDKs and Claude Code read by themselves.
 * Values are unquoted, which Node's --env-file, python-dotenv and `set -a; . ./.env` all read.
 */
export function envFile(gatewayUrl: string, key: string): string {
  const url = normalizeGatewayUrl(gatewayUrl);
  if (!isWritableKey(key)) throw new Error('the key has characters a gateway key never has (spaces, quotes, ...)');
  return lines(
    '# The claudcode gateway and your key for it. The Anthropic SDKs and Claude Code read these',
    '# two variables by themselves. Keep this file secret: it is not committed (.gitignore).',
    `ANTHROPIC_BASE_URL=${url}`,
    `ANTHROPIC_API_KEY=${key}`,
  );
}

/** Every file of the scaffolded project except `.env`, in a fixed order. */
export function projectFiles(options: ProjectOptions): ProjectFile[] {
  const url = normalizeGatewayUrl(options.gatewayUrl);
  const ts = options.langs.includes('ts');
  const py = options.langs.includes('py');
  if (!ts && !py) throw new Error('choose at least one language (ts, py)');
  const files: ProjectFile[] = [
    { path: '.gitignore', content: gitignore() },
    { path: 'README.md', content: readme(url, ts, py) },
  ];
  if (ts) {
    files.push(
      { path: 'package.json', content: packageJson() },
      { path: 'message.ts', content: MESSAGE_TS },
      { path: 'stream.ts', content: STREAM_TS },
      { path: 'search.ts', content: SEARCH_TS },
    );
  }
  if (py) {
    files.push({ path: 'requirements.txt', content: REQUIREMENTS_TXT }, { path: 'example.py', content: EXAMPLE_PY });
  }
  return files;
}

/**
 * A heredoc / here-string delimiter that no line of `contents` equals (nor starts with, for
 * PowerShell's `'@` rule): `CLAUDCODE_EOF`, or with a number added until it is unique.
 */
export function heredocDelimiter(contents: readonly string[]): string {
  const all = new Set(contents.flatMap((c) => c.split('\n').map((l) => l.trim())));
  for (let i = 0; ; i++) {
    const candidate = i === 0 ? 'CLAUDCODE_EOF' : `CLAUDCODE_EOF_${i}`;
    if (!all.has(candidate)) return candidate;
  }
}

/** Lines joined with `\n`, ending with one. */
function lines(...text: string[]): string {
  return `${text.join('\n')}\n`;
}

/** The entries a project's `.gitignore` must have (`.env` first: the one that holds the key). */
export const GITIGNORE_ENTRIES = ['.env', 'node_modules/', '__pycache__/', '.venv/'] as const;

function gitignore(): string {
  return lines('# The key lives in .env: never commit it.', ...GITIGNORE_ENTRIES);
}

function packageJson(): string {
  const pkg = {
    name: 'claudcode-client',
    private: true,
    type: 'module',
    description: 'Claude through a claudcode gateway: TypeScript examples run by Node directly (no build step).',
    engines: { node: `>=${MIN_NODE}` },
    scripts: {
      start: 'node --env-file=.env message.ts',
      stream: 'node --env-file=.env stream.ts',
      search: 'node --env-file=.env search.ts',
    },
    dependencies: { '@anthropic-ai/sdk': SDK_VERSION_RANGE },
  };
  return `${JSON.stringify(pkg, null, 2)}\n`;
}

const MESSAGE_TS = lines(
  '// One question, one answer, through the claudcode gateway. Run: npm start',
  '// The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from the environment (npm start',
  '// loads them from .env with node --env-file), so nothing here names the gateway or the key.',
  "import Anthropic from '@anthropic-ai/sdk';",
  '',
  'const client = new Anthropic();',
  '',
  'const message = await client.messages.create({',
  `  model: '${EXAMPLE_MODEL}',`,
  '  max_tokens: 1024,',
  "  messages: [{ role: 'user', content: 'In two sentences: what is an API gateway for?' }],",
  '});',
  '',
  'for (const block of message.content) {',
  "  if (block.type === 'text') console.log(block.text);",
  '}',
);

const STREAM_TS = lines(
  '// The answer printed as it is generated, through the claudcode gateway. Run: npm run stream',
  "import Anthropic from '@anthropic-ai/sdk';",
  '',
  'const client = new Anthropic();',
  '',
  'const stream = client.messages.stream({',
  `  model: '${EXAMPLE_MODEL}',`,
  '  max_tokens: 1024,',
  "  messages: [{ role: 'user', content: 'Write a haiku about tokens and budgets.' }],",
  '});',
  "stream.on('text', (text) => process.stdout.write(text));",
  '',
  'const message = await stream.finalMessage();',
  'console.log(`\\n\\n(${message.usage.input_tokens} input and ${message.usage.output_tokens} output tokens)`);',
);

const SEARCH_TS = lines(
  '// A question that needs current information. Run: npm run search',
  '//',
  '// Nothing in this client is special: it is a plain messages.create. When the gateway operator',
  '// has given your key web-search tools (for example Tavily, attached to the gateway as an MCP',
  '// server), the gateway offers them to the model, runs its searches and returns an answer',
  '// written from the results. A key without such tools gets an answer from the model alone,',
  '// which may say that it cannot look things up.',
  "import Anthropic from '@anthropic-ai/sdk';",
  '',
  'const client = new Anthropic();',
  '',
  'const message = await client.messages.create({',
  `  model: '${EXAMPLE_MODEL}',`,
  '  max_tokens: 2048,',
  '  messages: [',
  "    { role: 'user', content: 'What is the latest Node.js LTS release, and when did it come out? Search the web.' },",
  '  ],',
  '});',
  '',
  'for (const block of message.content) {',
  "  if (block.type === 'text') console.log(block.text);",
  '}',
);

const REQUIREMENTS_TXT = lines('anthropic', 'python-dotenv');

const EXAMPLE_PY = lines(
  '"""One question, one answer, through the claudcode gateway. Run: python example.py',
  '',
  'The Anthropic SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from the environment; they',
  'come from .env (with python-dotenv if installed, else read here). Variables already set in',
  'the environment win, as with python-dotenv and Node.',
  '"""',
  'import os',
  'from pathlib import Path',
  '',
  '',
  'def load_env(path):',
  '    try:',
  '        from dotenv import load_dotenv',
  '    except ImportError:',
  '        if not path.exists():',
  '            return',
  '        for line in path.read_text().splitlines():',
  '            line = line.strip()',
  '            if not line or line.startswith("#") or "=" not in line:',
  '                continue',
  '            name, _, value = line.partition("=")',
  '            os.environ.setdefault(name.strip(), value.strip().strip("\\"\'"))',
  '    else:',
  '        load_dotenv(path)',
  '',
  '',
  'load_env(Path(__file__).with_name(".env"))',
  '',
  'import anthropic  # noqa: E402 (after .env is loaded)',
  '',
  'client = anthropic.Anthropic()',
  'message = client.messages.create(',
  `    model="${EXAMPLE_MODEL}",`,
  '    max_tokens=1024,',
  '    messages=[{"role": "user", "content": "In two sentences: what is an API gateway for?"}],',
  ')',
  'print("".join(block.text for block in message.content if block.type == "text"))',
);

function readme(url: string, ts: boolean, py: boolean): string {
  const out: string[] = [
    '# Claude through a claudcode gateway',
    '',
    `This project talks to Claude through the claudcode gateway at ${url}.`,
    '`.env` holds the two variables the Anthropic SDKs and Claude Code read by themselves:',
    '`ANTHROPIC_BASE_URL` (the gateway) and `ANTHROPIC_API_KEY` (your gateway key, `sk-cc-...`).',
    'It is listed in `.gitignore`: never commit it. Variables already set in your shell win over',
    '`.env` (Node and python-dotenv both work that way), so unset `ANTHROPIC_API_KEY`,',
    '`ANTHROPIC_AUTH_TOKEN` and `ANTHROPIC_BASE_URL` in a shell where they point elsewhere.',
    '',
  ];
  if (ts) {
    out.push(
      '## TypeScript',
      '',
      `Node.js ${MIN_NODE} or later runs the \`.ts\` files directly (no build step).`,
      '',
      '```sh',
      'npm install        # once (claudcode init did it unless told --no-install)',
      'npm start          # message.ts: one question, one answer',
      'npm run stream     # stream.ts: the answer as it is generated',
      'npm run search     # search.ts: a question answered with the gateway\'s web search tools',
      '```',
      '',
      '`search.ts` is a plain request: for keys the gateway operator has given web-search tools',
      '(for example Tavily), the gateway runs the searches and answers from their results.',
      '',
    );
  }
  if (py) {
    out.push(
      '## Python',
      '',
      '```sh',
      'python3 -m venv .venv',
      '. .venv/bin/activate            # Windows PowerShell: .venv\\Scripts\\Activate.ps1',
      'pip install -r requirements.txt',
      'python example.py',
      '```',
      '',
    );
  }
  out.push(
    '## Claude Code',
    '',
    'Claude Code reads the same two variables. Export them from `.env` and start it:',
    '',
    '```sh',
    'set -a; . ./.env; set +a',
    'claude',
    '```',
    '',
    'It asks once whether to use the API key from the environment: answer yes.',
    '',
    'In PowerShell:',
    '',
    '```powershell',
    "Get-Content .env | Where-Object { $_ -match '^([A-Z_]+)=(.*)$' } | ForEach-Object { Set-Item \"env:$($Matches[1])\" $Matches[2] }",
    'claude',
    '```',
    '',
    "The gateway is also an MCP server (your key's budget, usage, models, and the web search",
    'tools your key may use). Add it to Claude Code (after exporting `.env` as above; the key is',
    "stored in Claude Code's own settings):",
    '',
    '```sh',
    `claude mcp add --transport http claudcode ${url}/mcp --header "x-api-key: $ANTHROPIC_API_KEY"`,
    '```',
    '',
    '## Your key',
    '',
    'Remaining budget and limits:',
    '',
    '```sh',
    `curl -H "x-api-key: $ANTHROPIC_API_KEY" ${url}/v1/key-status`,
    '```',
  );
  return lines(...out);
}
