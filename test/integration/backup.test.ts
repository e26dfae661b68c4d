/**
 * WAL backup and removal through a real `safekeeper run` process with the local-filesystem remote storage:
 * complete segments appear remotely under `<tenant>/<timeline>/<24-hex name>` with the source's bytes and
 * an xxhash64 digest; backup_lsn in GET /v1/tenant/{t}/timeline/{l} follows the uploads; local segments
 * are removed only after their upload is confirmed and persisted (checkpoint route), never the segment
 * being written; a paused upload (failpoint) holds removal back; /metrics shows the lags.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { xxhash64Hex } from '../../src/remote/digest.js';
import { formatLsn, segmentStartLsn } from '../../src/wal/lsn.js';
import {
  SEGMENT_BYTES,
  checkpoint,
  failpointHits,
  http,
  localRemote,
  localSegmentNames,
  makeWal,
  metricValue,
  recordEndAtOrAfter,
  newIds,
  remoteNames,
  segmentBytes,
  segmentName,
  segnoOf,
  setFailpoint,
  startNode,
  stream,
  streamMore,
  timelineDir,
  timelineLsns,
} from '../harness/background.js';
import { PgTestClient } from '../harness/pg_client.js';
import { tearDownAfterAll } from '../harness/teardown.js';
import type { TestProposer } from '../harness/test_proposer.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';
import { walRange } from '../harness/wal_source.js';

const proposers: TestProposer[] = [];
tearDownAfterAll(proposers);

const signal = new AbortController().signal;

describe('WAL backup to the local filesystem', { timeout: 80_000 }, () => {
  test('complete segments are uploaded with their digests, backup_lsn follows, removal waits for the upload', async () => {
    const dataDir = makeTempDir('sk-backup-data-');
    const remoteDir = makeTempDir('sk-backup-remote-');
    const node = await startNode(dataDir, `file://${remoteDir}`);
    const remote = localRemote(remoteDir);
    const ids = newIds();
    const wal = makeWal(5 * SEGMENT_BYTES + 300_000, 11);
    const session = await stream(node, ids, wal);
    proposers.push(session.proposer);
    const commitSegno = segnoOf(wal.endLsn);
    assert.equal(commitSegno, 6n);

    // Segments 1..5 (below commit_lsn's segment) appear, named as on disk, with the source's bytes.
    const expected = [1n, 2n, 3n, 4n, 5n].map(segmentName);
    await waitFor(
      async () => {
        const names = await remoteNames(remote, ids);
        return expected.every((name) => names.includes(name));
      },
      { what: 'five segments uploaded', timeoutMs: 20_000 },
    ).catch(async (error: unknown) => {
      throw new Error(`${String(error)}; remote has ${JSON.stringify(await remoteNames(remote, ids))}\n${node.stderr().slice(-3000)}`);
    });
    for (const segno of [1n, 2n, 3n, 4n, 5n]) {
      const key = `${ids.tenantId}/${ids.timelineId}/${segmentName(segno)}`;
      const head = await remote.head(key, signal);
      assert.ok(head !== null, key);
      assert.equal(head.sizeBytes, SEGMENT_BYTES);
      const body = await remote.get(key, signal); // checked against its digests on the way
      assert.equal(head.metadata.xxhash64, xxhash64Hex(body), `digest of ${key}`);
      // Segment 1 starts with the safekeeper's own initial image (its WAL starts after the page header).
      const from = segno === 1n ? Number(wal.firstRecordLsn - wal.baseLsn) : 0;
      assert.deepEqual(body.subarray(from), segmentBytes(wal, segno).subarray(from), `bytes of ${key}`);
    }
    // backup_lsn follows: the end of the last uploaded segment.
    await waitFor(async () => (await timelineLsns(node, ids)).backupLsn === segmentStartLsn(commitSegno, SEGMENT_BYTES), { what: 'backup_lsn = start of segment 6' });

    // A checkpoint persists backup_lsn, and removal deletes segments ≤ 5, keeping the one being written.
    await checkpoint(node, ids);
    const local = await localSegmentNames(dataDir, ids);
    assert.ok(!local.some((name) => name.startsWith(segmentName(5n))), `segment 5 removed: ${local.join(',')}`);
    assert.ok(local.includes(`${segmentName(6n)}.partial`), `segment being written kept: ${local.join(',')}`);
    assert.ok((await metricValue(node, 'safekeeper_wal_removed_segments_total')) >= 5);
    await session.proposer.close();

    // DELETE with only_local keeps the remote objects; a plain DELETE removes them too.
    const kept = newIds();
    const keptSession = await stream(node, kept, makeWal(2 * SEGMENT_BYTES + 100_000, 12));
    proposers.push(keptSession.proposer);
    await waitFor(async () => (await remoteNames(remote, kept)).includes(segmentName(1n)), { what: 'a segment of the second timeline uploaded', timeoutMs: 20_000 });
    await keptSession.proposer.close();
    assert.equal((await http(node, 'DELETE', `/v1/tenant/${kept.tenantId}/timeline/${kept.timelineId}?only_local=true`)).status, 200);
    assert.ok((await remoteNames(remote, kept)).includes(segmentName(1n)), 'only_local keeps remote objects');
    assert.equal((await http(node, 'DELETE', `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`)).status, 200);
    assert.deepEqual(await remoteNames(remote, ids), [], 'a delete removes the remote objects');
    assert.equal(existsSync(join(remoteDir, ids.tenantId)), false, 'and leaves no empty directory behind');
    await node.stop();
  });

  test('removed segments are recycled: at most wal_recycle_segments kept, a later segment is prepared in one, and a quiet timeline drops them', async () => {
    const dataDir = makeTempDir('sk-backup-data-');
    const remoteDir = makeTempDir('sk-backup-remote-');
    const node = await startNode(dataDir, `file://${remoteDir}`, ['--wal-recycle-segments', '2', '--partial-backup-timeout', '1s']);
    const ids = newIds();
    const wal = makeWal(9 * SEGMENT_BYTES + 300_000, 14);
    // Stop in segment 5: segment 6 is prepared already (a new file), 7 not yet.
    const firstEnd = recordEndAtOrAfter(wal, segmentStartLsn(5n, SEGMENT_BYTES) + 300_000n);
    const session = await stream(node, ids, wal, firstEnd);
    proposers.push(session.proposer);
    await waitFor(async () => (await timelineLsns(node, ids)).backupLsn === segmentStartLsn(5n, SEGMENT_BYTES), { what: 'backup_lsn = start of segment 5', timeoutMs: 20_000 });
    await checkpoint(node, ids); // persists backup_lsn and waits for the removal of segments 1..4
    const dir = timelineDir(dataDir, ids);
    const recycled = (): string[] => readdirSync(dir).filter((name) => name.startsWith('recycled-')).sort();
    assert.deepEqual(recycled(), [`recycled-${segmentName(1n)}`, `recycled-${segmentName(2n)}`], 'the first two removed are kept');
    assert.deepEqual((await localSegmentNames(dataDir, ids)).filter((name) => name < segmentName(5n)), [], 'segments 1..4 are gone as segments');
    const inodes = recycled().map((name) => statSync(join(dir, name)).ino);

    // The first write into segment 6 prepares segment 7 in one of them: zeros over its blocks. (A batch that
    // runs past every prepared segment makes the rest itself, as new files: hence two steps.)
    const inSix = recordEndAtOrAfter(wal, segmentStartLsn(6n, SEGMENT_BYTES) + 100_000n);
    await streamMore(session, wal, firstEnd, inSix);
    await streamMore(session, wal, inSix, wal.endLsn);
    assert.ok(inodes.includes(statSync(join(dir, segmentName(7n))).ino), 'segment 7 is a recycled file');
    assert.ok((await metricValue(node, 'safekeeper_wal_segments_prepared_total', '{source="recycled"}')) >= 1, '/metrics counts it');
    assert.ok((await metricValue(node, 'safekeeper_wal_segments_prepared_total', '{source="zeroed"}')) >= 1, 'and the new zero-filled ones before it');
    for (const segno of [5n, 6n, 7n, 8n, 9n]) {
      assert.deepEqual(readFileSync(join(dir, segmentName(segno))), Buffer.from(segmentBytes(wal, segno)), `segment ${segno} holds the source's bytes`);
    }
    const last = readFileSync(join(dir, `${segmentName(10n)}.partial`));
    const kept = Number(wal.endLsn - segmentStartLsn(10n, SEGMENT_BYTES));
    assert.deepEqual(last.subarray(0, kept), Buffer.from(segmentBytes(wal, 10n).subarray(0, kept)));
    assert.ok(last.subarray(kept).every((byte) => byte === 0), 'the segment being written has a zero tail');
    assert.ok(recycled().length <= 2, `never more than wal_recycle_segments: ${recycled().join(',')}`);
    await session.proposer.close();
    // No proposer, nothing new for partial_backup_timeout: the recycled files go, live WAL stays.
    await waitFor(() => recycled().length === 0, { what: 'recycled segments of the quiet timeline deleted', timeoutMs: 20_000 });
    assert.ok((await localSegmentNames(dataDir, ids)).includes(`${segmentName(10n)}.partial`), 'the segment being written stays');
    await node.stop();
  });

  test('a paused upload holds removal back; once it resumes, segments go up and then away', async () => {
    const dataDir = makeTempDir('sk-backup-data-');
    const remoteDir = makeTempDir('sk-backup-remote-');
    const node = await startNode(dataDir, `file://${remoteDir}`);
    const remote = localRemote(remoteDir);
    const ids = newIds();
    await setFailpoint(node, 'backup-before-upload', 'pause');
    const wal = makeWal(3 * SEGMENT_BYTES + 100_000, 12);
    const session = await stream(node, ids, wal); // ingest acknowledges while uploads are stuck
    proposers.push(session.proposer);
    await waitFor(async () => (await failpointHits(node, 'backup-before-upload')) >= 1, { what: 'an upload reached the failpoint' });
    await checkpoint(node, ids);
    assert.deepEqual(await remoteNames(remote, ids), []);
    const before = await localSegmentNames(dataDir, ids);
    for (const segno of [1n, 2n, 3n]) assert.ok(before.includes(segmentName(segno)), `segment ${segno} kept while not uploaded: ${before.join(',')}`);
    assert.equal((await timelineLsns(node, ids)).backupLsn, wal.firstRecordLsn, 'backup_lsn has not moved');
    assert.ok((await metricValue(node, 'safekeeper_backup_lag_bytes', `{tenant_id="${ids.tenantId}",timeline_id="${ids.timelineId}"}`)) > 3 * SEGMENT_BYTES - SEGMENT_BYTES);

    await setFailpoint(node, 'backup-before-upload', 'off');
    await waitFor(async () => (await timelineLsns(node, ids)).backupLsn === segmentStartLsn(4n, SEGMENT_BYTES), { what: 'backup_lsn reaches segment 4' });
    assert.deepEqual(await remoteNames(remote, ids), [1n, 2n, 3n].map(segmentName));
    await checkpoint(node, ids);
    const after = await localSegmentNames(dataDir, ids);
    assert.deepEqual(after.filter((name) => name < segmentName(4n)), [], `segments 1..3 removed: ${after.join(',')}`);
    assert.ok((await metricValue(node, 'safekeeper_manager_iterations_total')) > 0);
    assert.equal(await metricValue(node, 'safekeeper_backup_lag_bytes', `{tenant_id="${ids.tenantId}",timeline_id="${ids.timelineId}"}`), Number(wal.endLsn - segmentStartLsn(4n, SEGMENT_BYTES)));
    const lsns = await timelineLsns(node, ids);
    assert.equal(await metricValue(node, 'safekeeper_flush_lsn', `{tenant_id="${ids.tenantId}",timeline_id="${ids.timelineId}"}`), Number(lsns.flushLsn));
    assert.equal(await metricValue(node, 'safekeeper_commit_lsn', `{tenant_id="${ids.tenantId}",timeline_id="${ids.timelineId}"}`), Number(lsns.commitLsn));
    assert.ok((await metricValue(node, 'safekeeper_wal_ingest_appends_total')) > 0);
    await session.proposer.close();
    await node.stop();
  });

  test('the control file is saved on its own interval, and removal follows without a checkpoint; a restart resumes', async () => {
    const dataDir = makeTempDir('sk-backup-data-');
    const remoteDir = makeTempDir('sk-backup-remote-');
    const args = ['--control-file-save-interval', '300ms'];
    let node = await startNode(dataDir, `file://${remoteDir}`, args);
    const remote = localRemote(remoteDir);
    const ids = newIds();
    const wal = makeWal(4 * SEGMENT_BYTES + 200_000, 13);
    const first = await stream(node, ids, wal, recordEndAtOrAfter(wal, segmentStartLsn(3n, SEGMENT_BYTES) + 5000n));
    proposers.push(first.proposer);
    await waitFor(async () => !(await localSegmentNames(dataDir, ids)).includes(segmentName(1n)), { what: 'segment 1 removed without a checkpoint', timeoutMs: 15_000 });
    await first.proposer.close();
    await node.stop();

    node = await startNode(dataDir, `file://${remoteDir}`, args);
    const second = await stream(node, ids, wal);
    proposers.push(second.proposer);
    await waitFor(async () => (await remoteNames(remote, ids)).includes(segmentName(4n)), { what: 'segment 4 uploaded after the restart' });
    await waitFor(async () => !(await localSegmentNames(dataDir, ids)).includes(segmentName(4n)), { what: 'segment 4 removed after the restart', timeoutMs: 15_000 });
    assert.deepEqual(await remoteNames(remote, ids), [1n, 2n, 3n, 4n].map(segmentName));
    await second.proposer.close();
    await node.stop();
  });

  test('a connected reader holds removal at its position; after removal a reader below the local start is served from remote storage', async () => {
    const dataDir = makeTempDir('sk-backup-data-');
    const remoteDir = makeTempDir('sk-backup-remote-');
    const node = await startNode(dataDir, `file://${remoteDir}`);
    const ids = newIds();
    const wal = makeWal(4 * SEGMENT_BYTES + 100_000, 14);
    const session = await stream(node, ids, wal);
    proposers.push(session.proposer);
    await waitFor(async () => (await timelineLsns(node, ids)).backupLsn === segmentStartLsn(5n, SEGMENT_BYTES), { what: 'backup_lsn = segment 5' });

    // A reader that started in segment 2 and never reports progress: segments from 2 on stay.
    const readerStartLsn = segmentStartLsn(2n, SEGMENT_BYTES) + 4096n;
    const reader = await PgTestClient.connect({ port: node.pgPort, options: `-c timeline_id=${ids.timelineId} tenant_id=${ids.tenantId}` });
    await reader.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(readerStartLsn)}`);
    await reader.nextCopyData(); // it is streaming
    await checkpoint(node, ids);
    const held = await localSegmentNames(dataDir, ids);
    assert.ok(!held.includes(segmentName(1n)), `segment 1 (below the reader) removed: ${held.join(',')}`);
    for (const segno of [2n, 3n, 4n]) assert.ok(held.includes(segmentName(segno)), `segment ${segno} held for the reader: ${held.join(',')}`);
    await reader.terminate();
    await waitFor(async () => {
      await checkpoint(node, ids);
      return !(await localSegmentNames(dataDir, ids)).includes(segmentName(4n));
    }, { what: 'segments 2..4 removed once the reader left' });

    // A new reader from segment 1: its WAL is only in remote storage now.
    const late = await PgTestClient.connect({ port: node.pgPort, options: `-c timeline_id=${ids.timelineId} tenant_id=${ids.tenantId}` });
    const fromLsn = segmentStartLsn(1n, SEGMENT_BYTES) + 8192n;
    await late.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(fromLsn)}`);
    let received = 0;
    while (received < 64 * 1024) {
      const message = await late.nextCopyData();
      if (message[0] !== 0x77) continue; // 'w' XLogData: start(8) end(8) time(8) data
      const startLsn = message.readBigUInt64BE(1);
      const data = message.subarray(25);
      assert.deepEqual(new Uint8Array(data), walRange(wal, startLsn, startLsn + BigInt(data.length)), `WAL at ${formatLsn(startLsn)} from remote storage`);
      received += data.length;
    }
    await late.terminate();
    await session.proposer.close();
    await node.stop();
  });
});
