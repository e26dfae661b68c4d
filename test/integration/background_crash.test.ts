/**
 * kill -9 in the middle of background tasks, at named failpoints (`N*off->exit` kills the process on the
 * spot at the (N+1)th hit), then a restart on the same data directory: the upload queue resumes from the
 * persisted backup_lsn, a half-done removal finishes, and an interrupted eviction or un-eviction leaves a
 * state the restarted node completes (it downloads again, or deletes what an eviction left behind).
 * After each restart: remote objects are complete and correct, backup_lsn and the control file agree with
 * them, and the WAL a proposer streams on top is byte-identical.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { segmentStartLsn } from '../../src/wal/lsn.js';
import {
  OFFLOAD_ARGS,
  SEGMENT_BYTES,
  checkpoint,
  controlFile,
  localRemote,
  localSegmentNames,
  makeWal,
  newIds,
  recordEndAtOrAfter,
  remoteNames,
  segmentBytes,
  segmentName,
  setFailpoint,
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

const signal = new AbortController().signal;

/** Streams and swallows the failure the node's own death causes. */
async function streamUntilKilled(node: NodeProcess, ids: Ids, wal: ReturnType<typeof makeWal>): Promise<void> {
  try {
    const session = await stream(node, ids, wal);
    proposers.push(session.proposer);
  } catch {
    // the node killed itself at the failpoint
  }
  const exit = await node.waitExit();
  assert.equal(exit.signal, 'SIGKILL', 'the node died at the failpoint');
}

describe('kill -9 during background tasks', { timeout: 85_000 }, () => {
  test('during an upload: the restarted node uploads everything again from the persisted backup_lsn', async () => {
    const dataDir = makeTempDir('sk-crash-data-');
    const remoteDir = makeTempDir('sk-crash-remote-');
    let node = await startNode(dataDir, `file://${remoteDir}`);
    const ids = newIds();
    const wal = makeWal(4 * SEGMENT_BYTES + 100_000, 51);
    await setFailpoint(node, 'backup-after-upload', '1*off->exit'); // the second upload is in S3, unreported
    await streamUntilKilled(node, ids, wal);

    node = await startNode(dataDir, `file://${remoteDir}`);
    const session = await stream(node, ids, wal);
    proposers.push(session.proposer);
    await waitFor(async () => (await timelineLsns(node, ids)).backupLsn === segmentStartLsn(5n, SEGMENT_BYTES), { what: 'backup_lsn = segment 5', timeoutMs: 20_000 });
    const remote = localRemote(remoteDir);
    assert.deepEqual(await remoteNames(remote, ids), [1n, 2n, 3n, 4n].map(segmentName));
    for (const segno of [2n, 3n, 4n]) assert.deepEqual(await remote.get(`${ids.tenantId}/${ids.timelineId}/${segmentName(segno)}`, signal), segmentBytes(wal, segno));
    await checkpoint(node, ids);
    assert.equal((await controlFile(dataDir, ids)).backupLsn, segmentStartLsn(5n, SEGMENT_BYTES));
    await session.proposer.close();
    await node.stop();
  });

  test('during a removal: the restarted node finishes it, and keeps everything not uploaded', async () => {
    const dataDir = makeTempDir('sk-crash-data-');
    const remoteDir = makeTempDir('sk-crash-remote-');
    let node = await startNode(dataDir, `file://${remoteDir}`);
    const ids = newIds();
    const wal = makeWal(4 * SEGMENT_BYTES + 100_000, 52);
    const session = await stream(node, ids, wal);
    proposers.push(session.proposer);
    await waitFor(async () => (await timelineLsns(node, ids)).backupLsn === segmentStartLsn(5n, SEGMENT_BYTES), { what: 'backup_lsn = segment 5' });
    await setFailpoint(node, 'wal-removal-before-delete', '1*off->exit'); // one file deleted, then killed
    await checkpoint(node, ids).catch(() => undefined);
    assert.equal((await node.waitExit()).signal, 'SIGKILL');
    const half = await localSegmentNames(dataDir, ids);
    assert.ok(!half.includes(segmentName(1n)) && half.includes(segmentName(2n)), `half removed: ${half.join(',')}`);

    node = await startNode(dataDir, `file://${remoteDir}`);
    await checkpoint(node, ids);
    const local = await localSegmentNames(dataDir, ids);
    assert.deepEqual(local.filter((name) => name < segmentName(5n)), [], `removal finished: ${local.join(',')}`);
    assert.ok(local.includes(`${segmentName(5n)}.partial`), 'the segment being written is kept');
    assert.deepEqual(await remoteNames(localRemote(remoteDir), ids), [1n, 2n, 3n, 4n].map(segmentName));
    await node.stop();
  });

  for (const point of ['evict-after-persist', 'unevict-before-rename', 'unevict-before-persist']) {
    test(`during ${point.startsWith('evict') ? 'an eviction' : 'an un-eviction'} (${point}): the restarted node unevicts and ingest continues`, async () => {
      const dataDir = makeTempDir('sk-crash-data-');
      const remoteDir = makeTempDir('sk-crash-remote-');
      let node = await startNode(dataDir, `file://${remoteDir}`, OFFLOAD_ARGS);
      const ids = newIds();
      const wal = makeWal(3 * SEGMENT_BYTES + 300_000, 53);
      const firstEnd = recordEndAtOrAfter(wal, segmentStartLsn(3n, SEGMENT_BYTES) + 77_777n);
      if (point === 'evict-after-persist') await setFailpoint(node, point, 'exit');
      const first = await stream(node, ids, wal, firstEnd);
      await first.proposer.close();
      if (point === 'evict-after-persist') {
        assert.equal((await node.waitExit()).signal, 'SIGKILL');
      } else {
        await waitFor(async () => (await controlFile(dataDir, ids)).evictionState.kind === 'Offloaded' && (await localSegmentNames(dataDir, ids)).length === 0, { what: 'evicted', timeoutMs: 20_000 });
        await setFailpoint(node, point, 'exit');
        await streamUntilKilled(node, ids, wal); // the greeting's guard unevicts, and dies there
      }
      assert.deepEqual((await controlFile(dataDir, ids)).evictionState, { kind: 'Offloaded', flushLsn: firstEnd }, 'Offloaded is what is persisted');

      node = await startNode(dataDir, `file://${remoteDir}`, OFFLOAD_ARGS);
      await waitFor(async () => (await localSegmentNames(dataDir, ids)).length === 0, { what: 'leftover local WAL of the offloaded timeline deleted' });
      const second = await stream(node, ids, wal);
      proposers.push(second.proposer);
      assert.equal(second.startLsn, firstEnd);
      assert.deepEqual((await controlFile(dataDir, ids)).evictionState, { kind: 'Present' });
      const from = segmentStartLsn(3n, SEGMENT_BYTES);
      assert.deepEqual(await readTimelineWal(timelineDir(dataDir, ids), from, wal.endLsn, SEGMENT_BYTES), walRange(wal, from, wal.endLsn));
      await second.proposer.close();
      await node.stop();
    });
  }
});
