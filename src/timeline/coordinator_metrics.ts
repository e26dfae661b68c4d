/**
 * Mirrors the coordinator's metrics into this thread's prom-client registry (prom-client is per thread, so
 * what the managers count on the coordinator thread reaches /metrics only through here). Counters arrive as
 * running totals, and each scrape adds what they grew by since the last one; gauges are set as they are; the
 * per-timeline lags go to their TimelineGauges, which show them in this scrape only. Main thread, at scrape
 * time. Separate from coordinator_client.ts, which asks the coordinator for the snapshots: this module keeps
 * the last totals and writes the metrics, and knows nothing of the link.
 */
import * as metrics from '../metrics.js';
import type { CoordinatorMetrics, TimelineMetrics } from './coordinator_protocol.js';

export class CoordinatorMetricsMirror {
  readonly #lastTotals = new Map<string, number>();

  /** Adds each coordinator counter's growth since the last snapshot to its counter here, and sets the gauges. */
  copy(snapshot: CoordinatorMetrics): void {
    const advance = (counter: { inc(value: number): void }, key: string, total: number): void => {
      const delta = total - (this.#lastTotals.get(key) ?? 0);
      if (delta > 0) counter.inc(delta);
      this.#lastTotals.set(key, total);
    };
    advance(metrics.managerIterationsTotal, 'iterations', snapshot.managerIterationsTotal);
    advance(metrics.backupSegmentsUploadedTotal, 'segments', snapshot.backupSegmentsUploadedTotal);
    advance(metrics.backupBytesUploadedTotal, 'bytes', snapshot.backupBytesUploadedTotal);
    advance(metrics.backupUploadFailuresTotal, 'failures', snapshot.backupUploadFailuresTotal);
    advance(metrics.walSegmentsRemovedTotal, 'removed', snapshot.walSegmentsRemovedTotal);
    advance(metrics.partialBackupUploadsTotal, 'partial', snapshot.partialBackupUploadsTotal);
    advance({ inc: (value) => metrics.evictionEventsCompletedTotal.inc({ kind: 'evict' }, value) }, 'evictions', snapshot.evictionsTotal);
    advance({ inc: (value) => metrics.evictionEventsCompletedTotal.inc({ kind: 'restore' }, value) }, 'restores', snapshot.restoresTotal);
    for (const [key, total] of Object.entries(snapshot.remoteRequestsTotal)) {
      const [operation = '', outcome = ''] = key.split(' ');
      advance({ inc: (value) => metrics.remoteStorageRequestsTotal.inc({ operation, outcome }, value) }, `remote ${key}`, total);
    }
    metrics.backupUploadsRunning.set(snapshot.backupUploadsRunning);
    metrics.activeTimelines.set(snapshot.activeTimelines);
    metrics.evictedTimelines.set(snapshot.evictedTimelines);
    metrics.coordinatorHeapUsedBytes.set(snapshot.heapUsedBytes);
  }
}

/** Hands every manager's lags (`timeline_metrics`) to their TimelineGauges, which show them in this scrape only. */
export function publishTimelineLags(timelines: TimelineMetrics[]): void {
  metrics.backupLagBytes.set(timelines.map((t) => ({ tenantId: t.tenantId, timelineId: t.timelineId, value: t.backupLagBytes })));
  metrics.removalLagBytes.set(timelines.map((t) => ({ tenantId: t.tenantId, timelineId: t.timelineId, value: t.removalLagBytes })));
}
