/**
 * The gateway's setup scripts, /setup.sh (bash) and /setup.ps1 (PowerShell): readable scripts
 * that scaffold the project `claudcode init` does, for one gateway URL, with the files embedded
 * from templates.ts (never a second copy of them) for every --lang choice.
 *
 * The scripts' code lives in setup.sh.in and setup.ps1.in, so that it reads (and can be checked)
 * as shell code rather than as a TypeScript string full of escaped `${` and backticks; this file
 * fills in their `{{NAME}}` slots with the URL, usage text and the files.
 *
 * How content is embedded so that nothing in it can run:
 * - bash: a quoted here-document (`<<'DELIM'`: no expansion at all), the delimiter a line no
 *   content has (`heredocDelimiter`).
 * - PowerShell: a single-quoted here-string (`@'` … `'@`: no expansion; only a line starting
 *   with `'@` would end it). Text a here-string cannot carry exactly (such a line, `\r`, or
 *   anything but printable ASCII, which Windows PowerShell 5.1 misreads in a BOM-less file) is
 *   embedded as base64 instead. templates.ts promises text that never needs it.
 * - The gateway URL: single-quoted in both, and `normalizeGatewayUrl` allows no quote in it.
 * - The key: never in the scripts. `.env` is written as the text of `envFile` around the key,
 *   which the script reads at run time.
 */
import { readFileSync } from 'node:fs';
import { envFile, heredocDelimiter, LANGS, MIN_NODE, normalizeGatewayUrl, projectFiles, type Lang, type ProjectFile } from './templates.ts';

/** The project for every choice of languages, and `.env` split around the key. */
export interface ScriptProject {
  /** Every non-empty set of LANGS (in LANGS order) with the files `projectFiles` gives it. */
  choices: { langs: Lang[]; files: ProjectFile[] }[];
  env: { beforeKey: string; afterKey: string };
}

/** Stands for the key in `envFile`'s text, which is then split around it. */
const KEY_SLOT = 'CLAUDCODE_KEY_SLOT';

/** Every non-empty subset of LANGS, each in LANGS order, the full set first. */
function langChoices(): Lang[][] {
  const choices: Lang[][] = [];
  for (let mask = (1 << LANGS.length) - 1; mask > 0; mask--) choices.push(LANGS.filter((_, i) => mask & (1 << (LANGS.length - 1 - i))));
  return choices.sort((a, b) => b.length - a.length);
}

/** The project the scripts embed, from templates.ts. */
export function scriptProject(gatewayUrl: string): ScriptProject {
  const url = normalizeGatewayUrl(gatewayUrl);
  const choices = langChoices().map((langs) => ({ langs, files: projectFiles({ gatewayUrl: url, langs }) }));
  const parts = envFile(url, KEY_SLOT).split(KEY_SLOT);
  if (parts.length !== 2) throw new Error('envFile must hold the key exactly once');
  return { choices, env: { beforeKey: parts[0]!, afterKey: parts[1]! } };
}

/** A relative path of plain names: nothing a script would have to quote, no `..`. */
const SAFE_PATH = /^(?!.*(?:^|\/)\.\.?(?:\/|$))[A-Za-z0-9._-]+(?:\/[A-Za-z0-9._-]+)*$/;

/** One distinct file text, with the name its bash function and PowerShell case carry. */
interface Variant {
  path: string;
  content: string;
  name: string;
}

/**
 * The distinct (path, content) pairs over all choices, named after the path (`README_md`), with
 * the first choice that uses it added when a path has several texts (`README_md__ts_py`).
 */
function variantsOf(project: ScriptProject): { variants: Variant[]; of: (file: ProjectFile) => Variant } {
  const byText = new Map<string, Variant>();
  const perPath = new Map<string, number>();
  for (const { files } of project.choices) {
    for (const file of files) {
      const id = `${file.path}\0${file.content}`;
      if (byText.has(id)) continue;
      byText.set(id, { ...file, name: '' });
      perPath.set(file.path, (perPath.get(file.path) ?? 0) + 1);
    }
  }
  for (const { langs, files } of project.choices) {
    for (const file of files) {
      const variant = byText.get(`${file.path}\0${file.content}`)!;
      if (variant.name) continue;
      const slug = file.path.replace(/[^A-Za-z0-9]+/g, '_').replace(/^_+|_+$/g, '');
      variant.name = perPath.get(file.path)! > 1 ? `${slug}__${langs.join('_')}` : slug;
    }
  }
  return { variants: [...byText.values()], of: (file) => byText.get(`${file.path}\0${file.content}`)! };
}

/** Throws unless the project can be embedded as the scripts assume. */
function checkProject(url: string, project: ScriptProject): void {
  if (/['"`$\\\s]/.test(url)) throw new Error(`gateway URL not safe to embed in a script: ${url}`);
  for (const { langs, files } of project.choices) {
    if (!files.some((f) => f.path === '.gitignore')) throw new Error(`no .gitignore for ${langs.join(',')}: .env would sit unignored`);
    for (const file of files) {
      if (!SAFE_PATH.test(file.path) || file.path === '.env') throw new Error(`file path not safe to embed in a script: ${file.path}`);
      if (file.content.includes('\0')) throw new Error(`${file.path}: NUL in content`);
      if (file.content.includes(KEY_SLOT) || /sk-cc-[A-Za-z0-9]{8,}/.test(file.content)) throw new Error(`${file.path}: holds a key`);
    }
  }
}

/** `{{NAME}}` slots of a template filled; every slot must be given and used. */
function fill(template: string, values: Record<string, string>): string {
  const used = new Set<string>();
  const out = template.replace(/\{\{([A-Z_]+)\}\}/g, (_, name: string) => {
    const value = values[name];
    if (value === undefined) throw new Error(`setup script template: no value for {{${name}}}`);
    used.add(name);
    return value;
  });
  const unused = Object.keys(values).filter((k) => !used.has(k));
  if (unused.length) throw new Error(`setup script template: unused values ${unused.join(', ')}`);
  return out;
}

const templates = new Map<string, string>();
function template(name: 'setup.sh.in' | 'setup.ps1.in'): string {
  let text = templates.get(name);
  if (text === undefined) {
    text = readFileSync(new URL(`./${name}`, import.meta.url), 'utf8');
    templates.set(name, text);
  }
  return text;
}

/** The file lists for the script's header: what every choice writes, and what each language adds. */
function fileSummary(project: ScriptProject): Record<'FILES_ALWAYS' | 'FILES_TS' | 'FILES_PY', string> {
  const paths = (langs: Lang[]) => project.choices.find((c) => c.langs.join() === langs.join())!.files.map((f) => f.path);
  const all = project.choices.map((c) => new Set(c.files.map((f) => f.path)));
  const always = paths([...LANGS]).filter((p) => all.every((set) => set.has(p)));
  always.splice(always.indexOf('.gitignore') + 1, 0, '.env');
  const only = (lang: Lang) => paths([lang]).filter((p) => !always.includes(p)).join(', ');
  return { FILES_ALWAYS: always.join(', '), FILES_TS: only('ts'), FILES_PY: only('py') };
}

// ---------------------------------------------------------------------------------------------
// bash

const SH_USAGE = (url: string) => `Usage: bash setup.sh [DIR] [--dir DIR] [--lang ts,py] [--key KEY] [--yes] [--no-install]
  DIR, --dir DIR   where to write (default: the current folder; created if missing)
  --lang ts,py     which examples (default: both)
  --key KEY        your gateway key, sk-cc-... (default: $CLAUDCODE_KEY, else asked). A key on
                   the command line lands in your shell history: prefer the prompt or
                   CLAUDCODE_KEY.
  --yes            ask nothing (then CLAUDCODE_KEY or --key is required)
  --no-install     do not run npm install
Through a pipe, options follow \`bash -s --\`:
  curl -fsSL ${url}/setup.sh | bash -s -- --lang ts my-project
Without a terminal (CI, scripts):
  CLAUDCODE_KEY=sk-cc-... bash setup.sh --yes my-project
Exit status: 0 done, 1 failed (key refused, gateway unreachable, a file exists, npm install
failed), 2 usage error.`;

/**
 * A bash function `name` printing `content` exactly: a quoted here-document, whose final newline
 * `text_of` (in the template) takes off again for content that has none.
 */
function bashFunction(name: string, content: string, delimiter: string, comment?: string): { definition: string; call: string } {
  const head = comment ? `# ${comment}\n` : '';
  if (content === '') return { definition: `${head}${name}() {\n  :\n}\n`, call: name };
  if (content.endsWith('\n')) return { definition: `${head}${name}() {\n  cat <<'${delimiter}'\n${content}${delimiter}\n}\n`, call: name };
  return { definition: `${head}${name}_lines() {\n  cat <<'${delimiter}'\n${content}\n${delimiter}\n}\n${name}() {\n  text_of ${name}_lines\n}\n`, call: name };
}

/** bash's `'…'` for text known to have no quote (paths, names). */
function shQuote(text: string): string {
  if (text.includes("'")) throw new Error(`cannot quote for bash: ${text}`);
  return `'${text}'`;
}

/** The bash setup script for `gatewayUrl`: plain text, no key in it. */
export function setupShellScript(gatewayUrl: string, project: ScriptProject = scriptProject(gatewayUrl)): string {
  const url = normalizeGatewayUrl(gatewayUrl);
  checkProject(url, project);
  const { variants, of } = variantsOf(project);
  const usage = SH_USAGE(url);
  const delimiter = heredocDelimiter([...variants.map((v) => v.content), project.env.beforeKey, project.env.afterKey]);
  if (usage.split('\n').includes('USAGE')) throw new Error('usage text must not hold the line USAGE');

  const functions = variants.map((v) => bashFunction(`file_${v.name}`, v.content, delimiter, v.path).definition);
  const before = bashFunction('env_before_key', project.env.beforeKey, delimiter, '.env up to the key');
  const after = bashFunction('env_after_key', project.env.afterKey, delimiter, '.env after the key');
  functions.push(before.definition, after.definition);

  const choices = project.choices.map(({ langs, files }) =>
    [
      `    ${langs.join(',')})`,
      `      FILE_PATHS=(${files.map((f) => shQuote(f.path)).join(' ')})`,
      `      FILE_WRITERS=(${files.map((f) => `file_${of(f).name}`).join(' ')})`,
      '      ;;',
    ].join('\n'),
  );
  return fill(template('setup.sh.in'), {
    GATEWAY_URL: url,
    MIN_NODE,
    ...fileSummary(project),
    USAGE_COMMENT: usage.split('\n').map((l) => `# ${l}`.trimEnd()).join('\n'),
    USAGE_TEXT: usage,
    LANG_NAMES: LANGS.join(' '),
    LANG_LIST: LANGS.join(', '),
    ENV_BEFORE_KEY: before.call,
    ENV_AFTER_KEY: after.call,
    DELIMITER: delimiter,
    FILE_CHOICES: choices.join('\n'),
    FILE_FUNCTIONS: functions.join('\n'),
  });
}

// ---------------------------------------------------------------------------------------------
// PowerShell

const PS_USAGE = (url: string) => `Usage: setup.ps1 [[-Dir] DIR] [-Lang ts,py] [-Key KEY] [-Yes] [-NoInstall]
  -Dir DIR     where to write (default: the current folder; created if missing)
  -Lang ts,py  which examples (default: both)
  -Key KEY     your gateway key, sk-cc-... (default: $env:CLAUDCODE_KEY, else asked, masked). A
               key on the command line lands in your history: prefer the prompt or CLAUDCODE_KEY.
  -Yes         ask nothing (then $env:CLAUDCODE_KEY or -Key is required)
  -NoInstall   do not run npm install
With options, through irm:
  & ([scriptblock]::Create((irm ${url}/setup.ps1))) -Lang ts -Dir my-project
Without a terminal (CI, scripts):
  $env:CLAUDCODE_KEY = 'sk-cc-...'; .\\setup.ps1 -Yes -Dir my-project
Errors stop the script with a message (exit status 1 when run as a file).`;

/** Printable ASCII, tabs and `\n`: what a single-quoted here-string holds exactly. */
const HERE_STRING_SAFE = /^[\x20-\x7e\t\n]*$/;

/** A PowerShell expression whose value is `content` exactly. */
function psText(content: string): string {
  if (content === '') return "''";
  if (content === '\n') return '"`n"';
  const lines = content.split('\n');
  const closes = lines.some((l) => l.trimStart().startsWith("'@"));
  if (HERE_STRING_SAFE.test(content) && !closes) {
    const body = content.endsWith('\n') ? content.slice(0, -1) : content;
    // .Replace: LF line ends even if this script was saved with CRLF ones.
    return `(@'\n${body}\n'@).Replace("\`r\`n", "\`n")${content.endsWith('\n') ? ' + "`n"' : ''}`;
  }
  const base64 = Buffer.from(content, 'utf8').toString('base64');
  return `[System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String('${base64}'))`;
}

/** PowerShell's `'…'`. */
function psQuote(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

/** The PowerShell setup script for `gatewayUrl`: plain ASCII text, no key in it. */
export function setupPowerShellScript(gatewayUrl: string, project: ScriptProject = scriptProject(gatewayUrl)): string {
  const url = normalizeGatewayUrl(gatewayUrl);
  checkProject(url, project);
  const { variants, of } = variantsOf(project);
  const usage = PS_USAGE(url);

  const texts = variants.map((v) => {
    const expression = psText(v.content);
    const note = expression.startsWith('[System.Text') ? `      # ${v.path} as base64: its text is more than a here-string holds exactly (setup.sh has it readable)\n` : '';
    return `    ${psQuote(v.name)} {\n${note}      # ${v.path}\n      return ${expression}\n    }`;
  });
  const choices = project.choices.map(({ langs, files }) =>
    [
      `    ${psQuote(langs.join(','))} {`,
      '      return @(',
      ...files.map((f) => `        [pscustomobject] @{ Path = ${psQuote(f.path)}; Text = ${psQuote(of(f).name)} }`),
      '      )',
      '    }',
    ].join('\n'),
  );
  const script = fill(template('setup.ps1.in'), {
    GATEWAY_URL: url,
    MIN_NODE,
    ...fileSummary(project),
    USAGE_TEXT: usage,
    DEFAULT_LANGS: LANGS.join(','),
    LANG_LIST: LANGS.join(', '),
    LANG_ARRAY: LANGS.map(psQuote).join(', '),
    ENV_BEFORE_KEY: psText(project.env.beforeKey),
    ENV_AFTER_KEY: psText(project.env.afterKey),
    FILE_TEXTS: texts.join('\n'),
    FILE_CHOICES: choices.join('\n'),
  });
  if (!HERE_STRING_SAFE.test(script.replaceAll('\r', ''))) throw new Error('setup.ps1 must be ASCII (Windows PowerShell 5.1 reads BOM-less files as ANSI)');
  return script;
}
