/** SyntheticSource.stream (src/proposer/synthetic_source.ts): a stop ends an unpaced run even when no write waits. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ShutdownError } from '../../src/errors.js';
import { SyntheticSource } from '../../src/proposer/synthetic_source.js';

test('an unpaced run with room in the window stops on the signal instead of running on to its duration', async () => {
  const source = new SyntheticSource({ tenantId: 'ab'.repeat(16), timelineId: 'cd'.repeat(16), recordBytes: 100, recordsPerSecond: null, durationMs: 60_000, totalBytes: null, startLsn: null });
  const controller = new AbortController();
  let writes = 0;
  const started = performance.now();
  const running = source.stream({
    startLsn: 0x100_0000n + 40n,
    prevRecordLsn: null,
    signal: controller.signal,
    write: async () => {
      writes += 1; // a window that never fills: nothing here waits on the signal
      if (writes === 5) controller.abort(new ShutdownError('stopping'));
    },
  });
  await assert.rejects(running, ShutdownError);
  assert.ok(performance.now() - started < 10_000, 'stopped at once, not at the 60 s duration');
  assert.equal(writes, 5, 'no batch is generated after the stop');
});
