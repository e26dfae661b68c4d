/**
 * /metrics from a fresh process: every metric name the README lists is there before its first event,
 * labelled counters with a fixed set of label values included (they used to appear only once counted).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { renderMetrics } from '../../src/metrics.js';

describe('metrics', () => {
  it('renders the README metrics, and every series of fixed-label counters at 0, before any event', async () => {
    const { body } = await renderMetrics();
    for (const name of ['safekeeper_manager_iterations_total', 'safekeeper_backup_tasks_running', 'safekeeper_wal_ring_bytes']) {
      assert.match(body, new RegExp(`^${name} 0$`, 'm'), name);
    }
    for (const source of ['recycled', 'unwritten', 'zeroed', 'sparse', 'failed']) {
      assert.match(body, new RegExp(`^safekeeper_wal_segments_prepared_total\\{source="${source}"\\} 0$`, 'm'), source);
    }
    for (const kind of ['evict', 'restore']) assert.match(body, new RegExp(`^safekeeper_eviction_events_completed_total\\{kind="${kind}"\\} 0$`, 'm'), kind);
    assert.match(body, /^safekeeper_remote_storage_requests_total\{operation="put",outcome="ok"\} 0$/m);
    assert.match(body, /^safekeeper_remote_storage_requests_total\{operation="copy",outcome="error"\} 0$/m);
  });
});
