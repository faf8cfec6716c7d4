/** How the gateway words waits and windows, in 429 messages and /v1/key-status. */

/** "2h 15m", "15m", "40s": how the spec words a wait. Minutes round up. */
export function formatWait(ms: number): string {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.ceil(seconds / 60);
  const hours = Math.floor(minutes / 60);
  return hours > 0 ? `${hours}h ${minutes % 60}m` : `${minutes}m`;
}

/** "5h rolling", "90m rolling", "1d rolling". */
export function formatWindow(seconds: number): string {
  if (seconds % 86400 === 0) return `${seconds / 86400}d rolling`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h rolling`;
  if (seconds % 60 === 0) return `${seconds / 60}m rolling`;
  return `${seconds}s rolling`;
}
