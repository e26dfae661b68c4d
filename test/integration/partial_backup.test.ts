/**
 * Partial segment backup through a real `safekeeper run` (local-filesystem remote storage): once a
 * timeline is quiet for partial_backup_timeout, the segment being written is uploaded as
 * `<segment>_<term>_<flush_lsn>_<commit_lsn>_sk<node id>.partial` holding exactly the bytes below flush_lsn,
 * and the control file's partial_backup lists it as Uploaded; when more WAL arrives and the timeline is
 * quiet again, a new object replaces it and the old one is deleted.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatLsn, segmentOffsetBytes, segmentStartLsn } from '../../src/wal/lsn.js';
import {
  SEGMENT_BYTES,
  controlFile,
  localRemote,
  makeWal,
  newIds,
  recordEndAtOrAfter,
  remoteNames,
  segmentBytes,
  segmentName,
  segnoOf,
  startNode,
  stream,
  streamMore,
} from '../harness/background.js';
import { tearDownAfterAll } from '../harness/teardown.js';
import type { TestProposer } from '../harness/test_proposer.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

const proposers: TestProposer[] = [];
tearDownAfterAll(proposers);

const hex16 = (lsn: bigint): string => lsn.toString(16).toUpperCase().padStart(16, '0');
const signal = new AbortController().signal;

describe('partial segment backup', { timeout: 60_000 }, () => {
  test('a quiet timeline uploads its partial segment, and a newer one replaces it', async () => {
    const dataDir = makeTempDir('sk-partial-data-');
    const remoteDir = makeTempDir('sk-partial-remote-');
    const node = await startNode(dataDir, `file://${remoteDir}`, ['--partial-backup-timeout', '300ms', '--id', '7']);
    const remote = localRemote(remoteDir);
    const ids = newIds();
    const wal = makeWal(2 * SEGMENT_BYTES + 500_000, 31);
    const firstEnd = recordEndAtOrAfter(wal, segmentStartLsn(2n, SEGMENT_BYTES) + 300_000n);
    const session = await stream(node, ids, wal, firstEnd);
    proposers.push(session.proposer);
    const term = session.term;

    const firstName = `${segmentName(2n)}_${term}_${hex16(firstEnd)}_${hex16(firstEnd)}_sk7.partial`;
    await waitFor(async () => (await remoteNames(remote, ids)).includes(firstName), { what: `${firstName} uploaded`, timeoutMs: 15_000 }).catch(async (error: unknown) => {
      throw new Error(`${String(error)}: remote has ${JSON.stringify(await remoteNames(remote, ids))}`);
    });
    const body = await remote.get(`${ids.tenantId}/${ids.timelineId}/${firstName}`, signal);
    assert.equal(body.length, segmentOffsetBytes(firstEnd, SEGMENT_BYTES));
    assert.deepEqual(body, segmentBytes(wal, 2n).subarray(0, body.length));
    const head = await remote.head(`${ids.tenantId}/${ids.timelineId}/${firstName}`, signal);
    assert.equal(head?.metadata.sk_type, 'partial_segment');
    await waitFor(async () => (await controlFile(dataDir, ids)).partialBackup.segments.length === 1, { what: 'the control file lists one partial object' });
    assert.deepEqual((await controlFile(dataDir, ids)).partialBackup.segments, [{ status: 'Uploaded', name: firstName, commitLsn: firstEnd, flushLsn: firstEnd, term }]);

    // More WAL, then quiet again: a new object, and the old one is gone.
    await streamMore(session, wal, firstEnd, wal.endLsn);
    const secondName = `${segmentName(segnoOf(wal.endLsn))}_${term}_${hex16(wal.endLsn)}_${hex16(wal.endLsn)}_sk7.partial`;
    await waitFor(async () => {
      const names = (await remoteNames(remote, ids)).filter((name) => name.endsWith('.partial'));
      return names.length === 1 && names[0] === secondName;
    }, { what: `only ${secondName} in remote storage (flush ${formatLsn(wal.endLsn)})`, timeoutMs: 15_000 });
    await waitFor(async () => (await controlFile(dataDir, ids)).partialBackup.segments.every((segment) => segment.name === secondName && segment.status === 'Uploaded'), { what: 'the control file lists the new object only' });
    const second = await remote.get(`${ids.tenantId}/${ids.timelineId}/${secondName}`, signal);
    assert.deepEqual(second, segmentBytes(wal, segnoOf(wal.endLsn)).subarray(0, segmentOffsetBytes(wal.endLsn, SEGMENT_BYTES)));
    await session.proposer.close();
    await node.stop();
  });
});
