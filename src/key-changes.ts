/**
 * Telling every instance that keys changed. Each instance polls the store's key generation every
 * 500 ms, which alone keeps a change within a second everywhere; in the scale-out mode a Redis
 * pub/sub message (redis-key-changes.ts) makes it near-instant, with polling kept as the
 * fallback for a lost message or a Redis outage.
 */

export interface KeyChangeSignal {
  /** Tells every instance that keys changed. Never throws: polling covers a lost signal. */
  publish(): Promise<void>;
  /** Calls `listener` whenever an instance or the CLI publishes a change. */
  subscribe(listener: () => void): Promise<void>;
  close(): Promise<void>;
}

/** The embedded mode's signal: one process, whose own changes refresh it directly. */
export const NO_KEY_CHANGE_SIGNAL: KeyChangeSignal = {
  publish: async () => {},
  subscribe: async () => {},
  close: async () => {},
};
