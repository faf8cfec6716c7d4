/**
 * Prometheus metrics (prom-client), served at GET /metrics.
 *
 * One registry per gateway, not prom-client's global one: several gateways in one process (the
 * test suites) keep their own counts. Counters move where the request pipeline already does its
 * bookkeeping — `RequestMeter.finish`, the one exit every metered request takes, and each
 * upstream attempt in the pool — so a metric can never disagree with the usage records. Gauges
 * that mirror state (in flight, cache size, breaker state) are read when Prometheus scrapes.
 *
 * Labels carry no key material. A key's id (never the key) is a label only when the operator
 * turns `metrics.perKeyLabels` on: with thousands of keys it multiplies every series.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { CacheStats } from './cache/types.ts';
import type { UpstreamState } from './upstream/pool.ts';
import type { TokenUsage } from './usage.ts';

/** What a finished request tells the metrics. */
export interface FinishedRequest {
  keyId: string;
  endpoint: string;
  model: string;
  status: number;
  outcome: string;
  /** hit, miss, bypass, or none (count_tokens, refusals before the cache stage). */
  cache: string;
  latencyMs: number;
  /** Upstream's counts, as the usage record has them. */
  tokens: TokenUsage;
}

export interface MetricsSources {
  /** Requests being served now. */
  inFlight: () => number;
  cacheStats: () => Promise<Record<string, CacheStats>>;
  upstreams: () => UpstreamState[];
}

/**
 * A counter series counted in a plain field on the hot path and added to its prom-client child
 * when the registry is scraped (`flush`). prom-client hashes the label set on every `inc()`, even
 * on a bound child (about 0.3 µs each, four a request); this is one addition.
 */
class PendingCount {
  n = 0;
  private readonly child: { inc(n: number): void };

  constructor(child: { inc(n: number): void }) {
    this.child = child;
  }

  flush(): void {
    if (this.n === 0) return;
    this.child.inc(this.n);
    this.n = 0;
  }
}

interface RequestSeries {
  requests: PendingCount;
  input: PendingCount;
  output: PendingCount;
  cacheCreation: PendingCount;
  cacheRead: PendingCount;
  duration: { observe(seconds: number): void };
}

/** Buckets (seconds) from a cache hit (~0.3 ms) to a long streamed answer (minutes). */
const REQUEST_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class GatewayMetrics {
  readonly registry = new Registry();
  private readonly perKey: boolean;
  private readonly requests: Counter;
  private readonly tokens: Counter;
  private readonly duration: Histogram;
  private readonly upstreamDuration: Histogram;
  private readonly upstreamAttempts: Counter;
  /** Label-bound series by request kind (as many as the label combinations prom-client holds). */
  private readonly series = new Map<string, RequestSeries>();
  private readonly attemptSeries = new Map<string, { attempts: PendingCount; duration: { observe(seconds: number): void } }>();

  constructor(options: { perKeyLabels: boolean; sources: MetricsSources }) {
    this.perKey = options.perKeyLabels;
    const registers = [this.registry];
    const keyLabel = this.perKey ? ['key'] : [];
    // The counters' series are counted in PendingCount fields and handed over when scraped.
    const collect = () => this.flushPendingCounts();
    this.requests = new Counter({
      name: 'claudcode_requests_total',
      help: 'Metered API requests by model, endpoint, status, outcome and cache decision.',
      labelNames: ['model', 'endpoint', 'status', 'outcome', 'cache', ...keyLabel],
      registers,
      collect,
    });
    this.tokens = new Counter({
      name: 'claudcode_tokens_total',
      help: 'Tokens by model and kind (input, output, cache_creation, cache_read), as upstream reported them.',
      labelNames: ['model', 'kind', ...keyLabel],
      registers,
      collect,
    });
    this.duration = new Histogram({
      name: 'claudcode_request_duration_seconds',
      help: 'Time from a metered request arriving to its response ending (a stream: its last byte).',
      labelNames: ['endpoint', 'model'],
      buckets: REQUEST_BUCKETS,
      registers,
    });
    this.upstreamDuration = new Histogram({
      name: 'claudcode_upstream_duration_seconds',
      help: "Time from sending an attempt upstream to its answer's headers (and first stream chunk).",
      labelNames: ['upstream', 'result'],
      buckets: REQUEST_BUCKETS,
      registers,
    });
    this.upstreamAttempts = new Counter({
      name: 'claudcode_upstream_attempts_total',
      help: 'Upstream attempts by upstream and result (ok, or the failure that made the pool fail over).',
      labelNames: ['upstream', 'result'],
      registers,
      collect,
    });
    const { sources } = options;
    new Gauge({
      name: 'claudcode_in_flight_requests',
      help: 'Requests being served now (streams until their last byte).',
      registers,
      collect() {
        this.set(sources.inFlight());
      },
    });
    // Cache size by tier, entries and bytes (the registry collects gauges concurrently, so each
    // reads the stats itself; a scrape every few seconds makes that nothing).
    for (const [name, help, field] of [
      ['claudcode_cache_entries', 'Response cache entries, by tier.', 'entries'],
      ['claudcode_cache_bytes', 'Response cache size in bytes, by tier.', 'bytes'],
    ] as const) {
      new Gauge({
        name,
        help,
        labelNames: ['tier'],
        registers,
        async collect() {
          for (const [tier, stats] of Object.entries(await sources.cacheStats())) this.set({ tier }, stats[field]);
        },
      });
    }
    new Gauge({
      name: 'claudcode_upstream_up',
      help: "1 while an upstream's circuit breaker lets requests through (closed or half-open), 0 while it is open.",
      labelNames: ['upstream'],
      registers,
      collect() {
        for (const u of sources.upstreams()) this.set({ upstream: u.name }, u.state === 'open' ? 0 : 1);
      },
    });
    collectDefaultMetrics({ register: this.registry, prefix: 'claudcode_' });
  }

  /** A metered request ended (called once per request, from RequestMeter.finish). */
  requestFinished(r: FinishedRequest): void {
    const series = this.seriesFor(r);
    series.requests.n++;
    series.input.n += r.tokens.input_tokens;
    series.output.n += r.tokens.output_tokens;
    series.cacheCreation.n += r.tokens.cache_creation_input_tokens;
    series.cacheRead.n += r.tokens.cache_read_input_tokens;
    series.duration.observe(r.latencyMs / 1000);
  }

  /** The series of one kind of request, looked up once and kept. */
  private seriesFor(r: FinishedRequest): RequestSeries {
    const id = `${r.model}\u0000${r.endpoint}\u0000${r.status}\u0000${r.outcome}\u0000${r.cache}${this.perKey ? `\u0000${r.keyId}` : ''}`;
    let series = this.series.get(id);
    if (!series) {
      const key = this.perKey ? { key: r.keyId } : {};
      const tokens = (kind: string) => new PendingCount(this.tokens.labels({ model: r.model, kind, ...key }));
      series = {
        requests: new PendingCount(this.requests.labels({ model: r.model, endpoint: r.endpoint, status: String(r.status), outcome: r.outcome, cache: r.cache, ...key })),
        input: tokens('input'),
        output: tokens('output'),
        cacheCreation: tokens('cache_creation'),
        cacheRead: tokens('cache_read'),
        duration: this.duration.labels({ endpoint: r.endpoint, model: r.model }),
      };
      this.series.set(id, series);
    }
    return series;
  }

  /** One upstream attempt ended: `result` is ok, or the failure (e.g. 529, connect_error). */
  upstreamAttempt(upstream: string, result: string, seconds: number): void {
    const id = `${upstream}\u0000${result}`;
    let series = this.attemptSeries.get(id);
    if (!series) {
      series = {
        attempts: new PendingCount(this.upstreamAttempts.labels({ upstream, result })),
        duration: this.upstreamDuration.labels({ upstream, result: result === 'ok' ? 'ok' : 'failure' }),
      };
      this.attemptSeries.set(id, series);
    }
    series.attempts.n++;
    series.duration.observe(seconds);
  }

  /** Hands every counted series to prom-client (before a scrape reads the counters). */
  private flushPendingCounts(): void {
    for (const series of this.series.values()) {
      series.requests.flush();
      series.input.flush();
      series.output.flush();
      series.cacheCreation.flush();
      series.cacheRead.flush();
    }
    for (const series of this.attemptSeries.values()) series.attempts.flush();
  }

  /** The text Prometheus scrapes. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
