/**
 * A week of realistic usage for the dashboard's screenshots (npm run docs:screenshots): a few
 * teams' keys with their own models, working-hours peaks, cache hits, refusals and upstream
 * errors, written to the store as the gateway's usage recorder would write them. Deterministic
 * (a seeded generator), so the screenshots only change when the dashboard does.
 */
import type { Stack } from './helpers.ts';
import { seededRandom as generator } from './random.ts';
import type { UsageRecord } from '../src/store/types.ts';

interface Team {
  name: string;
  models: Array<[model: string, share: number]>;
  /** Requests in a busy hour. */
  peak: number;
  input: number;
  output: number;
  cacheShare: number;
  budgetTokens: number;
  windowSeconds: number;
  rpm: number;
  concurrent: number;
  disabled?: boolean;
}

const TEAMS: Team[] = [
  { name: 'web-app (prod)', models: [['claude-sonnet-4-6', 0.8], ['claude-haiku-4-5', 0.2]], peak: 34, input: 2400, output: 650, cacheShare: 0.22, budgetTokens: 20_000_000, windowSeconds: 5 * 3600, rpm: 600, concurrent: 40 },
  { name: 'ci-review-bot', models: [['claude-haiku-4-5', 1]], peak: 22, input: 5200, output: 300, cacheShare: 0.35, budgetTokens: 1_500_000, windowSeconds: 5 * 3600, rpm: 120, concurrent: 8 },
  { name: 'research', models: [['claude-opus-4-6', 0.7], ['claude-sonnet-4-6', 0.3]], peak: 7, input: 9000, output: 1800, cacheShare: 0.05, budgetTokens: 5_000_000, windowSeconds: 24 * 3600, rpm: 60, concurrent: 5 },
  { name: 'claude-code: platform team', models: [['claude-sonnet-4-6', 0.6], ['claude-opus-4-6', 0.4]], peak: 16, input: 14000, output: 900, cacheShare: 0.12, budgetTokens: 10_000_000, windowSeconds: 5 * 3600, rpm: 120, concurrent: 10 },
  { name: 'staging', models: [['claude-haiku-4-5', 1]], peak: 3, input: 800, output: 200, cacheShare: 0.4, budgetTokens: 1_000_000, windowSeconds: 3600, rpm: 30, concurrent: 3, disabled: true },
];

/**
 * Busy in working hours, quiet at night and over a weekend; the clock is set so that `now` is
 * mid-afternoon on a working day (the screenshots show a busy gateway whenever they are made).
 */
function activity(t: number, now: number): number {
  const hoursAgo = (now - t) / 3_600_000;
  const hour = (((15 - hoursAgo) % 24) + 24) % 24;
  const daysAgo = Math.floor((hoursAgo + 9) / 24);
  const working = Math.exp(-((hour - 14) ** 2) / 18);
  const weekend = daysAgo === 2 || daysAgo === 3 ? 0.3 : 1;
  return (0.08 + 0.92 * working) * weekend;
}

/** Creates the teams' keys and writes a week of their usage into the stack's store. */
export async function seedRealisticUsage(stack: Stack, now = Date.now(), upstreams = ['primary', 'backup']): Promise<void> {
  const random = generator(20261127);
  const pick = <T>(choices: Array<[T, number]>): T => {
    let r = random();
    for (const [value, share] of choices) {
      if ((r -= share) <= 0) return value;
    }
    return choices[0]![0];
  };
  const records: UsageRecord[] = [];
  const weekAgo = now - 7 * 86_400_000;
  for (const team of TEAMS) {
    const { id } = await stack.newKey({
      name: team.name, models: team.models.map(([m]) => m), budgetTokens: team.budgetTokens, windowSeconds: team.windowSeconds,
      rpm: team.rpm, concurrent: team.concurrent, disabled: team.disabled ?? false,
    });
    // Requests arrive as a Poisson-like stream at the team's rate for the time of day.
    for (let t = weekAgo; t < now; ) {
      const rate = Math.max(0.02, team.peak * activity(t, now)) / 3_600_000;
      t += -Math.log(1 - random()) / rate;
      if (t >= now || (team.disabled && t > now - 2 * 86_400_000)) break;
      const model = pick(team.models);
      const streamed = random() < 0.6;
      const r = random();
      const base = { ts: Math.floor(t), keyId: id, requestId: `req_seed_${records.length}`, endpoint: 'messages' as const, model, streamed };
      if (r < team.cacheShare) {
        const saved = Math.round(team.input * (0.5 + random()) + team.output * (0.5 + random()));
        records.push({ ...base, status: 200, inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0, latencyMs: 2 + Math.round(random() * 12), cached: true, savedTokens: saved, outcome: 'ok', upstream: '' });
        continue;
      }
      if (r < team.cacheShare + 0.012) {
        records.push({ ...base, status: 429, inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0, latencyMs: 1, cached: false, outcome: 'rejected', upstream: '' });
        continue;
      }
      const upstream = random() < 0.85 ? upstreams[0]! : upstreams[1]!;
      if (r < team.cacheShare + 0.02) {
        const status = random() < 0.7 ? 529 : 400;
        records.push({ ...base, status, inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0, billedTokens: 0, latencyMs: 300 + Math.round(random() * 900), cached: false, outcome: 'error', upstream });
        continue;
      }
      const input = Math.round(team.input * (0.3 + 1.4 * random()));
      const output = Math.round(team.output * (0.2 + 1.6 * random()));
      const cacheRead = random() < 0.5 ? Math.round(input * 2 * random()) : 0;
      const cacheCreation = random() < 0.15 ? Math.round(input * random()) : 0;
      const modelSpeed = model.includes('opus') ? 1.5 : model.includes('haiku') ? 0.45 : 1;
      const latencyMs = Math.round((500 + output * 12 * (0.6 + 0.8 * random())) * modelSpeed);
      const cut = random() < 0.006;
      records.push({
        ...base, status: 200, inputTokens: input, outputTokens: output, cacheCreationTokens: cacheCreation, cacheReadTokens: cacheRead,
        billedTokens: input + output + cacheCreation + cacheRead, latencyMs, cached: false, outcome: cut ? 'client_closed' : 'ok', upstream,
      });
    }
  }
  records.sort((a, b) => a.ts - b.ts);
  for (let i = 0; i < records.length; i += 2000) await stack.gateway.store.insertUsage(records.slice(i, i + 2000));
}
