/**
 * Summarises a V8 .cpuprofile (as written by `node --cpu-prof`): where the busy time went, by
 * package / source file (self time) and by the gateway's own functions (inclusive time).
 *
 * Standalone: `node bench/cpu-profile.ts FILE.cpuprofile`.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface ProfileEntry {
  name: string;
  ms: number;
  /** Share of the busy (non-idle) time, in percent. */
  pct: number;
}

export interface ProfileSummary {
  file: string;
  wallMs: number;
  busyMs: number;
  idleMs: number;
  /** Self time by package (node_modules), gateway source file, node core area, GC, native. */
  selfByArea: ProfileEntry[];
  /** Self time by function. */
  selfByFunction: ProfileEntry[];
  /** Inclusive time of the gateway's own (src/) functions: everything they called counts too. */
  inclusiveSrcFunctions: ProfileEntry[];
  /** Inclusive time by package / area (time with at least one frame of that area on the stack). */
  inclusiveByArea: ProfileEntry[];
}

/** Which area a frame belongs to: "hono", "undici", "src/pipeline.ts", "node:internal/streams", "(garbage collector)". */
function areaOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const parts = url.slice(nm + '/node_modules/'.length).split('/');
    const first = parts[0] ?? '?';
    return first.startsWith('@') ? `${first}/${parts[1] ?? ''}` : first;
  }
  if (url.startsWith('node:')) {
    const parts = url.slice(5).split('/');
    return parts[0] === 'internal' && parts.length > 2 ? `node:internal/${parts[1]}` : `node:${parts.slice(0, 2).join('/')}`;
  }
  const src = url.indexOf('/src/');
  if (src >= 0) return url.slice(src + 1);
  return url.replace(/^file:\/\//, '');
}

function functionLabel(frame: CallFrame): string {
  const name = frame.functionName || '(anonymous)';
  if (!frame.url) return name;
  return `${name} (${areaOf(frame)}:${frame.lineNumber + 1})`;
}

function top(map: Map<string, number>, busyUs: number, n: number): ProfileEntry[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([name, us]) => ({ name, ms: Math.round(us / 100) / 10, pct: Math.round((us / busyUs) * 1000) / 10 }));
}

const add = (map: Map<string, number>, key: string, us: number) => map.set(key, (map.get(key) ?? 0) + us);

export function summariseProfile(file: string, topN = 12): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];

  const selfArea = new Map<string, number>();
  const selfFn = new Map<string, number>();
  const inclSrc = new Map<string, number>();
  const inclArea = new Map<string, number>();
  let idleUs = 0;
  let busyUs = 0;
  for (let i = 0; i < samples.length; i++) {
    // A sample's time is the gap to the next sample (the last one gets the previous gap).
    const us = Math.max(0, deltas[i + 1] ?? deltas[i] ?? 0);
    const leaf = byId.get(samples[i]!);
    if (!leaf) continue;
    if (leaf.callFrame.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    busyUs += us;
    add(selfArea, areaOf(leaf.callFrame), us);
    add(selfFn, functionLabel(leaf.callFrame), us);
    const seenFns = new Set<string>();
    const seenAreas = new Set<string>();
    for (let node: ProfileNode | undefined = leaf; node; node = byId.get(parent.get(node.id) ?? -1)) {
      const area = areaOf(node.callFrame);
      if (area === '(root)') continue;
      seenAreas.add(area);
      if (area.startsWith('src/')) seenFns.add(functionLabel(node.callFrame));
    }
    for (const fn of seenFns) add(inclSrc, fn, us);
    for (const area of seenAreas) add(inclArea, area, us);
  }
  const busy = Math.max(busyUs, 1);
  return {
    file,
    wallMs: Math.round((profile.endTime - profile.startTime) / 1000),
    busyMs: Math.round(busyUs / 1000),
    idleMs: Math.round(idleUs / 1000),
    selfByArea: top(selfArea, busy, topN),
    selfByFunction: top(selfFn, busy, topN),
    inclusiveSrcFunctions: top(inclSrc, busy, topN),
    inclusiveByArea: top(inclArea, busy, topN),
  };
}

export function formatProfileSummary(s: ProfileSummary): string {
  const section = (title: string, entries: ProfileEntry[]) =>
    [title, ...entries.map((e) => `  ${e.pct.toFixed(1).padStart(5)}%  ${String(e.ms).padStart(9)} ms  ${e.name}`)].join('\n');
  return [
    `CPU profile of the gateway: ${s.file}`,
    `  wall ${s.wallMs} ms, busy ${s.busyMs} ms, idle ${s.idleMs} ms (percentages are of busy time)`,
    section('Self time by area:', s.selfByArea),
    section('Inclusive time by area:', s.inclusiveByArea),
    section('Self time by function:', s.selfByFunction),
    section('Inclusive time of gateway (src/) functions:', s.inclusiveSrcFunctions),
  ].join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node bench/cpu-profile.ts FILE.cpuprofile');
    process.exit(2);
  }
  console.log(formatProfileSummary(summariseProfile(file, 20)));
}
