/**
 * Every Prometheus metric of the process, in one registry (prom-client), like Neon's
 * `safekeeper/src/metrics.rs`. Names start with `safekeeper_` and end in a base unit (`_seconds`,
 * `_bytes`, `_total`); labels are snake_case. Code measures in ms and converts to seconds only here, at
 * observation (`observeMs`). The registry also carries prom-client's default process metrics
 * (`process_cpu_seconds_total`, `nodejs_eventloop_lag_seconds`, ...), collected on scrape.
 *
 * prom-client state is per thread: metrics are updated on the main thread only. Workers (WAL writers,
 * coordinator) return their measurements in task results, and the main thread observes them here.
 * Per-timeline series (`tenant_id`, `timeline_id`) are TimelineGauges, set by scrape hooks at each
 * scrape and kept by nobody in between, so a deleted timeline simply drops out and idle timelines cost
 * no series memory. Labelled counters whose label values are a fixed set start with every series at 0, so
 * each name the README lists is in /metrics from the start and rate() sees the first event.
 * Add new metrics to this file.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RemoteOperation, RemoteOutcome } from './remote/remote_storage.js';
import type { PreparedSegment } from './storage/segment_file.js';

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

export const walSegmentsPreparedTotal = new Counter({
  name: 'safekeeper_wal_segments_prepared_total',
  help: 'Segment files prepared ahead of the writer, by source: recycled (zeros over a removed segment), unwritten (a removed segment with its blocks marked unwritten, for large batches), zeroed (a new zero-filled file), sparse (a new file without blocks, for large batches), failed',
  labelNames: ['source'] as const,
  registers: [registry],
});
for (const source of ['recycled', 'unwritten', 'zeroed', 'sparse', 'failed'] as const satisfies readonly (Exclude<PreparedSegment, 'existing'> | 'failed')[]) walSegmentsPreparedTotal.inc({ source }, 0);

export const walRingBytes = new Gauge({
  name: 'safekeeper_wal_ring_bytes',
  help: 'Memory held by the WAL rings of timelines: one per timeline with a proposer, released ring_release_delay after the last proposer left, once its bytes are durable',
  registers: [registry],
});

export const walIngestAppendsTotal = new Counter({
  name: 'safekeeper_wal_ingest_appends_total',
  help: 'AppendRequest messages received from proposers',
  registers: [registry],
});

/** `source` is where the bytes were read from: ring, segment (local files), remote (remote storage) or initial_image (synthesised, §5.1). */
export const walSentBytesTotal = new Counter({
  name: 'safekeeper_wal_sent_bytes_total',
  help: 'WAL bytes sent to replication readers (START_REPLICATION), by where they were read from',
  labelNames: ['source'] as const,
  registers: [registry],
});

export const walReaders = new Gauge({
  name: 'safekeeper_wal_readers',
  help: 'Connected replication readers (START_REPLICATION streams)',
  registers: [registry],
});

// ---- background work (coordinator thread): set on the main thread at scrape time from the coordinator's
// counters (`CoordinatorClient.collectMetrics`, registered with `onScrape`). Counters advance by the delta.

export const managerIterationsTotal = new Counter({
  name: 'safekeeper_manager_iterations_total',
  help: 'Passes of timeline managers (snapshot, decide, start jobs)',
  registers: [registry],
});

export const backupUploadsRunning = new Gauge({
  name: 'safekeeper_backup_tasks_running',
  help: 'WAL segment uploads in flight, over all timelines',
  registers: [registry],
});

export const backupSegmentsUploadedTotal = new Counter({
  name: 'safekeeper_backup_segments_uploaded_total',
  help: 'Complete WAL segments uploaded to remote storage',
  registers: [registry],
});

export const backupBytesUploadedTotal = new Counter({
  name: 'safekeeper_backup_uploaded_bytes_total',
  help: 'Bytes of complete WAL segments uploaded to remote storage',
  registers: [registry],
});

export const backupUploadFailuresTotal = new Counter({
  name: 'safekeeper_backup_upload_failures_total',
  help: 'Segment uploads that failed after their retries (each is tried again later)',
  registers: [registry],
});

export const walSegmentsRemovedTotal = new Counter({
  name: 'safekeeper_wal_removed_segments_total',
  help: 'Local WAL segment files removed after backup',
  registers: [registry],
});

export const partialBackupUploadsTotal = new Counter({
  name: 'safekeeper_partial_backup_uploads_total',
  help: 'Partial segments uploaded to remote storage',
  registers: [registry],
});

/** `kind` is evict or restore, as in Neon. */
export const evictionEventsCompletedTotal = new Counter({
  name: 'safekeeper_eviction_events_completed_total',
  help: 'Evictions and restores (unevictions) completed',
  labelNames: ['kind'] as const,
  registers: [registry],
});
for (const kind of ['evict', 'restore'] as const) evictionEventsCompletedTotal.inc({ kind }, 0);

export const evictedTimelines = new Gauge({
  name: 'safekeeper_evicted_timelines',
  help: 'Timelines offloaded to remote storage',
  registers: [registry],
});

export const activeTimelines = new Gauge({
  name: 'safekeeper_active_timelines',
  help: 'Timelines in the active set (backup needed, a proposer connected, or pageserver behind commit)',
  registers: [registry],
});

export const coordinatorHeapUsedBytes = new Gauge({
  name: 'safekeeper_coordinator_heap_used_bytes',
  help: 'V8 heap in use on the coordinator thread (timeline managers, remote storage client)',
  registers: [registry],
});

export const remoteStorageRequestsTotal = new Counter({
  name: 'safekeeper_remote_storage_requests_total',
  help: 'Remote storage request attempts, by operation and outcome (ok, retry, error)',
  labelNames: ['operation', 'outcome'] as const,
  registers: [registry],
});
const REMOTE_OPERATIONS: readonly RemoteOperation[] = ['put', 'get', 'head', 'list', 'delete', 'copy'];
const REMOTE_OUTCOMES: readonly RemoteOutcome[] = ['ok', 'retry', 'error'];
for (const operation of REMOTE_OPERATIONS) for (const outcome of REMOTE_OUTCOMES) remoteStorageRequestsTotal.inc({ operation, outcome }, 0);

/** One series of a per-timeline gauge, as one scrape renders it. */
export interface TimelineSample {
  tenantId: string;
  timelineId: string;
  value: number;
}

/**
 * A gauge with one series per timeline that keeps nothing between scrapes: a prom-client Gauge keeps each
 * series' labels and value (about 0.5 KiB a series), and a node holds 10,000 mostly idle timelines. A
 * scrape hook (`onScrape`, the coordinator client) sets the values just before the render, and the render
 * consumes them. It sits in `registry` like any other metric: prom-client calls `get()` (and `reset()`),
 * and renders the text as for its own gauges.
 */
export class TimelineGauge {
  readonly type = 'gauge';
  readonly aggregator = 'sum';
  #samples: readonly TimelineSample[] = [];

  constructor(
    readonly name: string,
    readonly help: string,
  ) {
    // prom-client types accept only its own classes; the registry needs name, help, type, get() and reset().
    registry.registerMetric(this as unknown as Gauge);
  }

  /** The values the next render shows (then forgets). */
  set(samples: readonly TimelineSample[]): void {
    this.#samples = samples;
  }

  async get(): Promise<{ name: string; help: string; type: 'gauge'; aggregator: 'sum'; values: { value: number; labels: { tenant_id: string; timeline_id: string } }[] }> {
    const samples = this.#samples;
    this.#samples = [];
    const values = samples.map((sample) => ({ value: sample.value, labels: { tenant_id: sample.tenantId, timeline_id: sample.timelineId } }));
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.#samples = [];
  }
}

export const backupLagBytes = new TimelineGauge('safekeeper_backup_lag_bytes', 'flush_lsn minus backup_lsn: WAL not yet confirmed in remote storage');

export const removalLagBytes = new TimelineGauge('safekeeper_removal_lag_bytes', 'flush_lsn minus the start of local WAL: WAL kept on local disk');

// LSNs as gauges: a float64 is exact up to 2^53 bytes of WAL (8 PiB), which is enough for a dashboard.
export const flushLsn = new TimelineGauge('safekeeper_flush_lsn', 'End of the last durably flushed, verified WAL record, as a byte position');

export const commitLsn = new TimelineGauge('safekeeper_commit_lsn', 'Commit LSN told by the proposer (flushed by a quorum), as a byte position');

const scrapeHooks: (() => Promise<void>)[] = [];

/** Runs `hook` before every /metrics render (to fetch another thread's values). */
export function onScrape(hook: () => Promise<void>): () => void {
  scrapeHooks.push(hook);
  return () => {
    const index = scrapeHooks.indexOf(hook);
    if (index >= 0) scrapeHooks.splice(index, 1);
  };
}

/** Observes a latency measured in milliseconds on a histogram in seconds. */
export function observeMs(histogram: Histogram, durationMs: number): void {
  histogram.observe(durationMs / 1000);
}

/** The render in progress, which every scrape that arrives meanwhile shares. */
let rendering: Promise<{ contentType: string; body: string }> | null = null;

/**
 * The registry in Prometheus text format, for GET /metrics. Scrapes that arrive while a render runs get its
 * result: a render asks the coordinator thread for its counters and formats every series on the main thread,
 * so a burst of scrapes (a client pipelining thousands) must cost one render, not one each.
 */
export function renderMetrics(): Promise<{ contentType: string; body: string }> {
  rendering ??= renderNow().finally(() => (rendering = null));
  return rendering;
}

async function renderNow(): Promise<{ contentType: string; body: string }> {
  for (const hook of scrapeHooks) await hook();
  return { contentType: registry.contentType, body: await registry.metrics() };
}
