/**
 * The dashboard's usage explorer (data.ts `ExplorerQuery`, `ExplorerRow`): usage by key, model,
 * upstream, UTC day or UTC hour over a range, narrowed to a key, model and/or upstream, priced
 * per model; and the same rows as CSV for a spreadsheet.
 *
 * The store's usageReport does the reading (rollups for whole days and hours, raw rows at the
 * edges; by hour, the hourly rollup); reports.ts `sumByGroup` prices the per-model rows and adds
 * them up per group, as for the admin report; here key ids are labelled with the key's name.
 *
 * The CSV is RFC 4180 (a header row, CRLF line ends, fields with a comma, quote, CR or LF quoted,
 * quotes doubled) and safe to open in a spreadsheet: key names are user input, so a text cell
 * that starts with = + - @, a tab or a CR (what Excel, LibreOffice and Sheets would run as a
 * formula) gets a leading apostrophe, which shows the text as typed.
 */
import type { ModelCatalog } from '../catalog.ts';
import { sumByGroup } from '../reports.ts';
import type { KeyRecord, UsageStore } from '../store/types.ts';
import type { ExplorerGrouping, ExplorerQuery, ExplorerRow } from './data.ts';

/** Label of the upstream group of requests no upstream served (cache hits, refusals), as the CLI shows it. */
export const NO_UPSTREAM_LABEL = '(none)';

/**
 * The explorer's rows: one per group, all models added up, ordered by group (bytewise; days and
 * hours in time order). `keys` names the key groups (a key no longer there keeps no label).
 */
export async function explorerReport(
  store: Pick<UsageStore, 'usageReport'>,
  catalog: ModelCatalog,
  keys: Iterable<Pick<KeyRecord, 'id' | 'name'>>,
  query: ExplorerQuery,
): Promise<ExplorerRow[]> {
  const rows = await store.usageReport({
    by: query.by,
    sinceMs: query.sinceMs,
    untilMs: query.untilMs,
    ...(query.keyId === undefined ? {} : { keyId: query.keyId }),
    ...(query.model === undefined ? {} : { model: query.model }),
    ...(query.upstream === undefined ? {} : { upstream: query.upstream }),
  });
  const { groups } = sumByGroup(rows, catalog);
  const names = query.by === 'key' ? new Map([...keys].map((k) => [k.id, k.name])) : undefined;
  return [...groups].map(([group, usage]) => {
    const label = names ? names.get(group) : query.by === 'upstream' && group === '' ? NO_UPSTREAM_LABEL : undefined;
    return { group, ...(label === undefined ? {} : { label }), ...usage };
  });
}

/** The CSV columns after the group and label, and the row field each holds. */
const CSV_COLUMNS = [
  ['requests', 'requests'], ['errors', 'errors'], ['cached_requests', 'cachedRequests'], ['input_tokens', 'inputTokens'],
  ['output_tokens', 'outputTokens'], ['cache_creation_tokens', 'cacheCreationTokens'], ['cache_read_tokens', 'cacheReadTokens'],
  ['billed_tokens', 'billedTokens'], ['saved_tokens', 'savedTokens'], ['cost_usd', 'costUsd'], ['avg_latency_ms', 'avgLatencyMs'],
] as const satisfies readonly (readonly [string, keyof ExplorerRow])[];

/** A text cell a spreadsheet would take for a formula, as text: a leading apostrophe. */
function neutralise(text: string): string {
  return /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
}

/** One RFC 4180 field: quoted when it holds a comma, a quote, CR or LF, its quotes doubled. */
function field(text: string): string {
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/**
 * The rows as CSV: a header row, then a line per row, CRLF after each. The first two columns are
 * the group and its label (named `key`/`name` when `by` says the groups are keys, `<by>`/`label`
 * for other groupings, `group`/`label` without `by`); text cells are neutralised against formula
 * injection, numbers are written as JSON writes them.
 */
export function explorerCsv(rows: readonly ExplorerRow[], by?: ExplorerGrouping): string {
  const header = [by ?? 'group', by === 'key' ? 'name' : 'label', ...CSV_COLUMNS.map(([name]) => name)];
  const lines = [header.join(',')];
  for (const row of rows) {
    const text = [row.group, row.label ?? ''].map((cell) => field(neutralise(cell)));
    lines.push([...text, ...CSV_COLUMNS.map(([, key]) => String(row[key]))].join(','));
  }
  return lines.map((line) => `${line}\r\n`).join('');
}
