/**
 * Eviction (offload) and un-eviction through a real `safekeeper run` with enable_offload and
 * delete_offloaded_wal (local-filesystem remote storage): an idle timeline whose WAL is all in remote
 * storage becomes Offloaded and keeps no segment file; a reader below the local start gets the WAL from
 * remote storage (on-demand download, digests checked); a new proposer connects, the timeline is unevicted
 * (the partial segment downloaded back), ingest continues where it stopped and nothing is lost; the
 * offloaded state survives a restart.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatLsn, segmentStartLsn } from '../../src/wal/lsn.js';
import {
  OFFLOAD_ARGS,
  SEGMENT_BYTES,
  controlFile,
  http,
  localSegmentNames,
  makeWal,
  metricValue,
  newIds,
  recordEndAtOrAfter,
  segnoOf,
  startNode,
  stream,
  timelineDir,
  timelineLsns,
  type Ids,
} from '../harness/background.js';
import type { NodeProcess } from '../harness/node_process.js';
import { tearDownAfterAll } from '../harness/teardown.js';
import type { TestProposer } from '../harness/test_proposer.js';
import { readTimelineWal } from '../harness/timeline_wal.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';
import { walRange } from '../harness/wal_source.js';

const proposers: TestProposer[] = [];
tearDownAfterAll(proposers);

async function waitEvicted(node: NodeProcess, dataDir: string, ids: Ids): Promise<void> {
  await waitFor(async () => (await controlFile(dataDir, ids)).evictionState.kind === 'Offloaded', { what: 'the timeline is offloaded', timeoutMs: 20_000 }).catch(async (error: unknown) => {
    throw new Error(`${String(error)}; local ${JSON.stringify(await localSegmentNames(dataDir, ids))}; control ${JSON.stringify((await controlFile(dataDir, ids)).partialBackup, (_k, v: unknown) => (typeof v === 'bigint' ? formatLsn(v) : v))}\n${node.stderr().slice(-2000)}`);
  });
  await waitFor(async () => (await localSegmentNames(dataDir, ids)).length === 0, { what: 'no local segment files' });
}

/** The `status` of the timeline's HTTP status document. */
async function timelineStatus(node: NodeProcess, ids: Ids): Promise<string> {
  const { bytes } = await http(node, 'GET', `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`);
  return (JSON.parse(new TextDecoder().decode(bytes)) as { status: string }).status;
}

async function remoteWal(node: NodeProcess, ids: Ids, startLsn: bigint, lengthBytes: number): Promise<{ status: number; bytes: Uint8Array }> {
  return http(node, 'GET', `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/remote_wal?start_lsn=${formatLsn(startLsn)}&length=${lengthBytes}`);
}

describe('eviction and un-eviction', { timeout: 85_000 }, () => {
  test('idle timeline is offloaded; remote reads serve old WAL; a proposer unevicts it and ingest continues', async () => {
    const dataDir = makeTempDir('sk-evict-data-');
    const remoteDir = makeTempDir('sk-evict-remote-');
    let node = await startNode(dataDir, `file://${remoteDir}`, OFFLOAD_ARGS);
    const ids = newIds();
    const wal = makeWal(4 * SEGMENT_BYTES + 200_000, 41);
    const firstEnd = recordEndAtOrAfter(wal, segmentStartLsn(3n, SEGMENT_BYTES) + 123_456n);
    const first = await stream(node, ids, wal, firstEnd);
    proposers.push(first.proposer);
    await first.proposer.close(); // idle now: no proposer, no reader

    await waitEvicted(node, dataDir, ids);
    const state = await controlFile(dataDir, ids);
    assert.deepEqual(state.evictionState, { kind: 'Offloaded', flushLsn: firstEnd });
    assert.equal(await metricValue(node, 'safekeeper_evicted_timelines'), 1);
    assert.equal((await timelineLsns(node, ids)).flushLsn, firstEnd, 'status still shows the WAL end');
    await waitFor(async () => (await timelineStatus(node, ids)) === 'offloaded', { what: 'the status says offloaded' });

    // On-demand download: a full segment (1) and the partial segment (3) of an evicted timeline.
    for (const [startLsn, lengthBytes] of [
      [segmentStartLsn(1n, SEGMENT_BYTES) + 70_000n, 50_000],
      [segmentStartLsn(2n, SEGMENT_BYTES) + 1000n, 2 * SEGMENT_BYTES], // clipped at the segment end
      [segmentStartLsn(3n, SEGMENT_BYTES) + 100n, Number(firstEnd - segmentStartLsn(3n, SEGMENT_BYTES) - 100n)],
    ] as const) {
      const { status, bytes } = await remoteWal(node, ids, startLsn, lengthBytes);
      assert.equal(status, 200, new TextDecoder().decode(bytes));
      const endLsn = startLsn + BigInt(Math.min(lengthBytes, Number(segmentStartLsn(segnoOf(startLsn) + 1n, SEGMENT_BYTES) - startLsn)));
      assert.deepEqual(bytes, walRange(wal, startLsn, endLsn), `remote WAL at ${formatLsn(startLsn)}`);
    }
    assert.equal((await remoteWal(node, ids, firstEnd + 8n, 100)).status, 404, 'nothing past the uploaded flush_lsn');

    // The offloaded state survives a restart.
    await node.stop();
    node = await startNode(dataDir, `file://${remoteDir}`, OFFLOAD_ARGS);
    assert.equal((await timelineLsns(node, ids)).flushLsn, firstEnd);
    await waitFor(async () => (await metricValue(node, 'safekeeper_evicted_timelines')) === 1, { what: 'offloaded after restart' });
    await waitFor(async () => (await timelineStatus(node, ids)) === 'offloaded', { what: 'the status says offloaded after restart' });

    // A new proposer: the greeting waits for the unevict, then streaming continues from flush_lsn.
    const second = await stream(node, ids, wal);
    proposers.push(second.proposer);
    assert.equal(second.startLsn, firstEnd, 'the new term starts where the evicted WAL ended');
    assert.deepEqual((await controlFile(dataDir, ids)).evictionState, { kind: 'Present' });
    assert.equal(await metricValue(node, 'safekeeper_eviction_events_completed_total', '{kind="restore"}'), 1);
    await waitFor(async () => (await timelineStatus(node, ids)) === 'active', { what: 'the status says active again' });
    const local = await readTimelineWal(timelineDir(dataDir, ids), segmentStartLsn(3n, SEGMENT_BYTES), wal.endLsn, SEGMENT_BYTES);
    assert.deepEqual(local, walRange(wal, segmentStartLsn(3n, SEGMENT_BYTES), wal.endLsn), 'downloaded partial segment + new WAL are byte-identical');
    await second.proposer.close();
    await node.stop();
  });
});
