/**
 * Every Prometheus metric of the process, in one registry (prom-client), like Neon's
 * `safekeeper/src/metrics.rs`. Names start with `safekeeper_` and end in a base unit (`_seconds`,
 * `_bytes`, `_total`); labels are snake_case. Code measures in ms and converts to seconds only here, at
 * observation (`observeMs`). The registry also carries prom-client's default process metrics
 * (`process_cpu_seconds_total`, `nodejs_eventloop_lag_seconds`, ...), collected on scrape.
 *
 * prom-client state is per thread: metrics are updated on the main thread only. Workers (WAL writers,
 * coordinator) return their measurements in task results, and the main thread observes them here.
 * Per-timeline series (`tenant_id`, `timeline_id`) must be removed when the timeline is deleted or
 * evicted (`removeTimelineSeries`), or the registry grows without bound. Add new metrics to this file.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const registry = new Registry();
collectDefaultMetrics({ register: registry });

/** Disk write and fsync latency buckets, in seconds: 50 µs (page cache) to 10 s (a stalled device). */
export const DISK_LATENCY_SECONDS_BUCKETS = [0.00005, 0.0001, 0.0005, 0.001, 0.003, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10];

/** Always 1; the `version` label says which build runs. Set once at node start. */
export const buildInfo = new Gauge({
  name: 'safekeeper_build_info',
  help: 'Build information; the value is always 1',
  labelNames: ['version'] as const,
  registers: [registry],
});

export const pgConnectionsTotal = new Counter({
  name: 'safekeeper_pg_connections_total',
  help: 'Connections accepted on the pg port',
  registers: [registry],
});

/** `query` is the command kind (START_WAL_PUSH, START_REPLICATION, IDENTIFY_SYSTEM, ...), never raw SQL text. */
export const pgQueriesReceivedTotal = new Counter({
  name: 'safekeeper_pg_queries_received_total',
  help: 'Queries received on the pg port, by command kind',
  labelNames: ['query'] as const,
  registers: [registry],
});

/** LSNs as gauges: a float64 is exact up to 2^53 bytes of WAL (8 PiB), which is enough for a dashboard. */
export const flushLsn = new Gauge({
  name: 'safekeeper_flush_lsn',
  help: 'End of the last durably flushed, verified WAL record, as a byte position',
  labelNames: ['tenant_id', 'timeline_id'] as const,
  registers: [registry],
});

export const commitLsn = new Gauge({
  name: 'safekeeper_commit_lsn',
  help: 'Commit LSN told by the proposer (flushed by a quorum), as a byte position',
  labelNames: ['tenant_id', 'timeline_id'] as const,
  registers: [registry],
});

export const writeWalBytesTotal = new Counter({
  name: 'safekeeper_write_wal_bytes_total',
  help: 'WAL bytes written to segment files',
  registers: [registry],
});

export const writeWalSeconds = new Histogram({
  name: 'safekeeper_write_wal_seconds',
  help: 'Time to write one batch of WAL to segment files (pwrite only)',
  buckets: DISK_LATENCY_SECONDS_BUCKETS,
  registers: [registry],
});

export const fsyncSeconds = new Histogram({
  name: 'safekeeper_fsync_seconds',
  help: 'Time of one fdatasync of a segment file',
  buckets: DISK_LATENCY_SECONDS_BUCKETS,
  registers: [registry],
});

export const walIngestAppendsTotal = new Counter({
  name: 'safekeeper_wal_ingest_appends_total',
  help: 'AppendRequest messages received from proposers',
  registers: [registry],
});

/** Observes a latency measured in milliseconds on a histogram in seconds. */
export function observeMs(histogram: Histogram, durationMs: number): void {
  histogram.observe(durationMs / 1000);
}

/** Sets an LSN gauge. Precision above 2^53 is lost, which only a dashboard sees. */
export function setLsnGauge(gauge: Gauge<'tenant_id' | 'timeline_id'>, tenantId: string, timelineId: string, lsn: bigint): void {
  gauge.set({ tenant_id: tenantId, timeline_id: timelineId }, Number(lsn));
}

/** Drops a timeline's series from every per-timeline metric (on delete or eviction). */
export function removeTimelineSeries(tenantId: string, timelineId: string): void {
  const labels = { tenant_id: tenantId, timeline_id: timelineId };
  for (const gauge of [flushLsn, commitLsn]) gauge.remove(labels);
}

/** The registry in Prometheus text format, for GET /metrics. */
export async function renderMetrics(): Promise<{ contentType: string; body: string }> {
  return { contentType: registry.contentType, body: await registry.metrics() };
}
