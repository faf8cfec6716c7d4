/**
 * Maintenance mode, switchable at run time. The switch lives in the store's meta table (SQLite or
 * PostgreSQL, whichever every instance shares) as JSON `{"enabled":true,"since":<ms>,"by":"…"}`;
 * each instance keeps its own view of it (MaintenanceMode) and re-reads the store every 500 ms,
 * so a switch made anywhere (the admin API of any instance, the CLI on the store) reaches every
 * instance within a second. The instance that switches applies it at once.
 *
 * Polling rather than a Redis message: the store is the one thing every mode has, a read of one
 * meta row twice a second is nothing, and the keys' change counter is followed the same way. A
 * store outage keeps the last known state (logged every few seconds): an instance cannot tell
 * whether the switch moved, and flipping to either side on its own would be a guess.
 *
 * While on, every /v1 route answers 503 overloaded_error with Retry-After (gateway.ts); admin,
 * dashboard and health keep answering. Routes: GET and PUT /admin/maintenance.
 */
import { Hono } from 'hono';
import { z } from 'zod';
import { readJsonBody, validateInput } from './admin.ts';
import { throttled, type Logger } from './logger.ts';
import type { GatewayEnv } from './app-env.ts';
import type { MetaStore } from './store/types.ts';

/** The meta row holding the switch. */
export const MAINTENANCE_META = 'maintenance';

/** How often an instance re-reads the switch: well within the one second every instance must follow in. */
export const MAINTENANCE_POLL_MS = 500;

/** Who flipped the switch last: the admin API, the CLI on the store, or an instance's config at start. */
export type MaintenanceSource = 'admin-api' | 'cli' | 'config';

export interface MaintenanceState {
  enabled: boolean;
  /** Since when the switch is in this position (ms), or null if it was never set. */
  since: number | null;
  by: MaintenanceSource | null;
}

const NEVER_SET: MaintenanceState = { enabled: false, since: null, by: null };

const StoredState = z.object({
  enabled: z.boolean(),
  since: z.number().nullable().default(null),
  by: z.enum(['admin-api', 'cli', 'config']).nullable().catch(null).default(null),
});

/** The switch as stored; null (never set) is off. Undefined when the row holds something unreadable. */
export function parseMaintenance(text: string | null): MaintenanceState | undefined {
  if (text === null) return NEVER_SET;
  try {
    const parsed = StoredState.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** The switch as the store holds it now (the CLI's `status`); an unreadable row is an error. */
export async function readMaintenance(store: MetaStore): Promise<MaintenanceState> {
  const text = await store.getMeta(MAINTENANCE_META);
  const state = parseMaintenance(text);
  if (!state) throw new Error(`the store's "${MAINTENANCE_META}" setting is unreadable: ${text?.slice(0, 100)}`);
  return state;
}

/**
 * Puts the switch in the store. Already in that position: left as it is, so `since` keeps saying
 * since when (switching on twice does not restart the clock). Returns the state now stored.
 */
export async function writeMaintenance(store: MetaStore, enabled: boolean, by: MaintenanceSource, now = Date.now()): Promise<MaintenanceState> {
  const current = parseMaintenance(await store.getMeta(MAINTENANCE_META));
  if (current && current.enabled === enabled && current.since !== null) return current;
  const next: MaintenanceState = { enabled, since: now, by };
  await store.setMeta(MAINTENANCE_META, JSON.stringify(next));
  return next;
}

/** The wire shape of the switch (admin API, CLI --json). */
export function describeMaintenance(state: MaintenanceState) {
  return { enabled: state.enabled, since: state.since === null ? null : new Date(state.since).toISOString(), by: state.by };
}
export type MaintenanceView = ReturnType<typeof describeMaintenance>;

/** One line for the CLI: "maintenance mode: on since 2026-… (admin-api)". */
export function maintenanceLine(view: MaintenanceView): string {
  const since = view.since ? ` since ${view.since}` : '';
  const by = view.by ? ` (by ${view.by})` : '';
  return `maintenance mode: ${view.enabled ? 'on' : 'off'}${since}${by}`;
}

/** One instance's view of the switch, kept current by polling the store. */
export class MaintenanceMode {
  readonly #store: MetaStore;
  readonly #logger: Logger;
  readonly #pollMs: number;
  readonly #warn = throttled(5000);
  #state: MaintenanceState = NEVER_SET;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Bumped around each local write: a poll that overlapped one read a value it must not apply. */
  #writes = 0;

  constructor(store: MetaStore, options: { logger: Logger; pollMs?: number }) {
    this.#store = store;
    this.#logger = options.logger;
    this.#pollMs = options.pollMs ?? MAINTENANCE_POLL_MS;
  }

  /** Whether /v1 answers 503 on this instance now (a field read: on every request's path). */
  get enabled(): boolean {
    return this.#state.enabled;
  }

  get state(): MaintenanceState {
    return this.#state;
  }

  /**
   * Reads the switch, or, when the config gives it (`initial`), writes it for every instance;
   * then follows the store. A store that fails here fails the start, as any other start-up read.
   */
  async start(initial: boolean | undefined): Promise<void> {
    if (initial === undefined) await this.refresh();
    else await this.set(initial, 'config');
    this.#schedule();
  }

  /** Re-reads the store now. Throws when it cannot be read (the state stays as it was). */
  async refresh(): Promise<void> {
    const writes = this.#writes;
    const text = await this.#store.getMeta(MAINTENANCE_META);
    if (writes !== this.#writes) return;
    const state = parseMaintenance(text);
    if (!state) throw new Error(`the store's "${MAINTENANCE_META}" setting is unreadable: ${text?.slice(0, 100)}`);
    this.#apply(state);
  }

  /** Flips the switch for every instance; this one follows at once. */
  async set(enabled: boolean, by: MaintenanceSource): Promise<MaintenanceState> {
    this.#writes++;
    try {
      const state = await writeMaintenance(this.#store, enabled, by);
      this.#apply(state);
      return state;
    } finally {
      this.#writes++;
    }
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#poll(), this.#pollMs);
    this.#timer.unref();
  }

  async #poll(): Promise<void> {
    try {
      await this.refresh();
    } catch (err) {
      this.#warn((suppressed) =>
        this.#logger.warn({ err, suppressed, enabled: this.#state.enabled }, 'maintenance switch unreadable in the store; keeping the last known state'),
      );
    } finally {
      this.#schedule();
    }
  }

  #apply(next: MaintenanceState): void {
    const previous = this.#state;
    this.#state = next;
    if (next.enabled !== previous.enabled) {
      const fields = { since: next.since === null ? null : new Date(next.since).toISOString(), by: next.by };
      if (next.enabled) this.#logger.warn(fields, 'maintenance mode on: the API answers 503 until it is switched off');
      else this.#logger.info(fields, 'maintenance mode off: serving the API');
    }
  }
}

const MaintenanceInput = z.strictObject({ enabled: z.boolean({ error: 'expected true or false' }) });

/**
 * The admin routes, mounted under /admin/maintenance by the gateway (behind the admin token):
 *
 *   GET /admin/maintenance                     → {"enabled", "since": ISO or null, "by"}
 *   PUT /admin/maintenance {"enabled": bool}   → the same, after the switch
 *
 * GET answers this instance's view, at most half a second behind the store.
 */
export function maintenanceAdminRoutes(mode: MaintenanceMode): Hono<GatewayEnv> {
  const routes = new Hono<GatewayEnv>();
  routes.get('/', (c) => c.json(describeMaintenance(mode.state)));
  routes.put('/', async (c) => {
    const { enabled } = validateInput(MaintenanceInput, await readJsonBody(c.req.raw));
    return c.json(describeMaintenance(await mode.set(enabled, 'admin-api')));
  });
  return routes;
}
