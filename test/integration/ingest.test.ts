/**
 * Ingest of real PostgreSQL 15 WAL through the real `safekeeper run` process: a test proposer
 * (test/harness/test_proposer.ts) speaks START_WAL_PUSH v2/v3 like walproposer does, and the tests check what
 * a user can see: the segment files (byte-identical to the source over the streamed range, readable by
 * pg_waldump, `.partial` only on the last), the acknowledged flush_lsns (monotonic record ends), and corrupt
 * WAL (XX001, nothing after the last good record kept, a new election repairs the timeline).
 * Elections and restarts are in ingest_elections.test.ts, malformed protocol input in ingest_malformed.test.ts.
 * Nodes run with fsync on. Every node and temp dir is removed in after().
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { RING_SIZE_BYTES_DEFAULT } from '../../src/limits.js';
import { WAL_PAGE_SIZE_BYTES, formatLsn, type Lsn } from '../../src/wal/lsn.js';
import { StreamClosedError } from '../harness/acceptor_replies.js';
import { metricValue, newIds } from '../harness/background.js';
import { INGEST_TEST_TIMEOUT_MS, assertSegmentNames, startFsyncNode, waldumpTimeline } from '../harness/ingest.js';
import type { WaldumpRecord } from '../harness/pg.js';
import { electAndStream, timelineStatus } from '../harness/proposer_session.js';
import { realWal, recordEndLsn, type RealWal } from '../harness/real_wal.js';
import { trackedProposers } from '../harness/teardown.js';
import { TestProposer, type TestProposerOptions } from '../harness/test_proposer.js';
import { assertAcksAreRecordEnds, assertNothingAfter, assertSameWal, readTimelineWal, recordEndsOf, timelineDirOf } from '../harness/timeline_wal.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';
import { walRange, type WalSource } from '../harness/wal_source.js';

let wal: RealWal;

before(async () => {
  wal = await realWal();
});

const { track } = trackedProposers();

const realSource = (): WalSource => ({ bytes: wal.bytes, baseLsn: wal.startLsn, endLsn: wal.endLsn });
const realServer = (): Pick<TestProposerOptions, 'pgVersion' | 'systemId' | 'walSegSizeBytes'> => ({ pgVersion: wal.pgVersion, systemId: wal.systemId, walSegSizeBytes: wal.segmentSizeBytes });
const recordKey = (record: WaldumpRecord): string => `${formatLsn(record.lsn)} ${record.rmgr} ${record.totalLengthBytes}`;

async function streamRealWalAndVerify(protoVersion: 2 | 3, chunkBytes: number): Promise<void> {
  const dataDir = makeTempDir('sk-ingest-');
  const node = await startFsyncNode(dataDir, ['--ring-release-delay', '200ms']);
  const ids = newIds();
  const startLsn = wal.records[0]!.lsn;
  const segmentBytes = wal.segmentSizeBytes;
  const session = await electAndStream({ port: node.pgPort, ...ids, protoVersion, ...realServer(), source: realSource(), timelineStartLsn: startLsn, chunkBytes });
  track(session.proposer);
  assert.equal(session.greeting.term, 0n);
  assert.equal(session.vote.flushLsn, 0n, 'a new timeline has no WAL');
  assert.equal(session.startLsn, startLsn);
  assert.equal(session.proposer.flushLsn, wal.endLsn, 'flush_lsn reaches the end of the last record');
  const acks = session.proposer.acknowledgedFlushLsns;
  assert.ok(acks.length >= 2, `several group commits were acknowledged (${acks.length})`);
  assertAcksAreRecordEnds(acks, new Set([startLsn, ...recordEndsOf(wal.records, segmentBytes)]));
  // As walproposer does when idle: a heartbeat carrying the commit_lsn that the last acknowledgement allows.
  session.proposer.clearReplies();
  await session.proposer.heartbeat(wal.endLsn);
  const idleReply = await session.proposer.nextAppendResponse();
  assert.equal(idleReply.flushLsn, wal.endLsn);
  assert.equal(idleReply.commitLsn, wal.endLsn);
  assert.equal(await metricValue(node, 'safekeeper_wal_ring_bytes'), RING_SIZE_BYTES_DEFAULT, 'the streaming timeline holds one ring');
  await session.proposer.close();
  // The last proposer left, everything is durable, and ring_release_delay passed: the ring is released.
  await waitFor(async () => (await metricValue(node, 'safekeeper_wal_ring_bytes')) === 0);

  const dir = timelineDirOf(dataDir, ids.tenantId, ids.timelineId);
  assertSameWal(await readTimelineWal(dir, startLsn, wal.endLsn, segmentBytes), walRange(realSource(), startLsn), startLsn, 'streamed range');
  await assertNothingAfter(dir, wal.endLsn, segmentBytes);
  await assertSegmentNames(dir, startLsn, wal.endLsn, segmentBytes);

  // pg_waldump from the first record on the second page (the test below starts at the very first record).
  const secondPageLsn = startLsn - (startLsn % BigInt(WAL_PAGE_SIZE_BYTES)) + BigInt(WAL_PAGE_SIZE_BYTES);
  const dumped = await waldumpTimeline(dir, segmentBytes, secondPageLsn, wal.endLsn);
  const expected = wal.records.filter((record) => record.lsn >= secondPageLsn);
  assert.ok(expected.length > 1000, 'pg_waldump checks most of the fixture');
  assert.deepEqual(dumped.map(recordKey), expected.map(recordKey));

  const status = await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId);
  assert.equal(status?.flushLsn, formatLsn(wal.endLsn));
  assert.equal(status?.commitLsn, formatLsn(wal.endLsn), 'commit_lsn follows the acknowledged flush (quorum of one)');
  const exit = await node.stop();
  assert.equal(exit.code, 0, `clean exit after SIGTERM\n${node.stderr()}`);
}

describe('streaming real PostgreSQL 15 WAL', { timeout: INGEST_TEST_TIMEOUT_MS }, () => {
  test('v3: segments are byte-identical over the streamed range, pg_waldump lists the same records, every ack is a record end', async () => {
    await streamRealWalAndVerify(3, 128 * 1024);
  });

  test('v2: the same, with AppendRequests that do not line up with pages', async () => {
    await streamRealWalAndVerify(2, 50_000);
  });

  test('pg_waldump reads from the first streamed record when it starts right after the long page header', async () => {
    const dataDir = makeTempDir('sk-ingest-');
    const node = await startFsyncNode(dataDir);
    const ids = newIds();
    const startLsn = wal.records[0]!.lsn;
    const toLsn = wal.records[20]!.lsn;
    const session = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...realServer(), source: realSource(), timelineStartLsn: startLsn, toLsn });
    await track(session.proposer).close();
    const dumped = await waldumpTimeline(timelineDirOf(dataDir, ids.tenantId, ids.timelineId), wal.segmentSizeBytes, startLsn, toLsn);
    assert.deepEqual(dumped.map(recordKey), wal.records.slice(0, 20).map(recordKey));
  });
});

describe('corrupt WAL', { timeout: INGEST_TEST_TIMEOUT_MS }, () => {
  /** The real WAL with one byte flipped inside the data of a record in the second segment. */
  function corruptRealWal(): { source: WalSource; bad: WaldumpRecord; goodEndLsn: Lsn } {
    const segmentBytes = wal.segmentSizeBytes;
    // A record whose first data bytes sit on the same page as its header, so the flip is inside the record.
    const badIndex = wal.records.findIndex((record, index) =>
      index > 0 && record.lsn > wal.startLsn + BigInt(segmentBytes) + 4096n && record.totalLengthBytes > 64 && Number(record.lsn % BigInt(WAL_PAGE_SIZE_BYTES)) + 64 < WAL_PAGE_SIZE_BYTES);
    const bad = wal.records[badIndex]!;
    const previous = wal.records[badIndex - 1]!;
    const bytes = Uint8Array.from(wal.bytes);
    bytes[Number(bad.lsn - wal.startLsn) + 24 + 3]! ^= 0xff;
    return { source: { bytes, baseLsn: wal.startLsn, endLsn: wal.endLsn }, bad, goodEndLsn: recordEndLsn(previous.lsn, previous.totalLengthBytes, segmentBytes) };
  }

  async function electFresh(port: number, ids: { tenantId: string; timelineId: string }, startLsn: Lsn): Promise<TestProposer> {
    const proposer = track(await TestProposer.connect({ port, ...ids, protoVersion: 3, ...realServer() }));
    await proposer.greet();
    assert.equal((await proposer.vote(1n)).voteGiven, true);
    await proposer.elect({ term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] });
    return proposer;
  }

  /** Streams, tolerating the server ending the stream (which is what these tests provoke). */
  async function streamUntilClosed(proposer: TestProposer, bytes: Uint8Array, startLsn: Lsn): Promise<void> {
    try {
      await proposer.streamWal(bytes, startLsn);
    } catch (error) {
      if (!(error instanceof StreamClosedError)) throw error;
    }
  }

  test('a flipped byte ends the stream with XX001 naming the record; nothing after the last good record is acknowledged or kept; another timeline is unaffected', async () => {
    const dataDir = makeTempDir('sk-corrupt-');
    const node = await startFsyncNode(dataDir);
    const startLsn = wal.records[0]!.lsn;
    const segmentBytes = wal.segmentSizeBytes;
    const { source: corruptSource, bad, goodEndLsn } = corruptRealWal();
    const badIds = newIds();
    const goodIds = newIds();

    // The corrupt stream: everything up to shortly before the bad record, acknowledged; then the bad record and
    // a little more, and no further bytes (the next test keeps streaming past it).
    const streamCorrupt = async (): Promise<TestProposer> => {
      const proposer = await electFresh(node.pgPort, badIds, startLsn);
      const beforeBad = wal.records.filter((record) => record.lsn < bad.lsn - 256n * 1024n).at(-1)!.lsn;
      await proposer.streamWal(walRange(corruptSource, startLsn, beforeBad), startLsn);
      await proposer.waitForFlush(beforeBad);
      await streamUntilClosed(proposer, walRange(corruptSource, beforeBad, bad.lsn + 128n * 1024n), beforeBad);
      await proposer.waitClosed();
      return proposer;
    };
    const [corrupt, clean] = await Promise.all([
      streamCorrupt(),
      electAndStream({ port: node.pgPort, ...goodIds, protoVersion: 3, ...realServer(), source: realSource(), timelineStartLsn: startLsn }),
    ]);
    track(clean.proposer);

    const error = corrupt.serverError;
    assert.ok(error !== null, `an ErrorResponse ended the stream (socket error: ${corrupt.socketError?.message ?? 'none'})`);
    assert.equal(error.code, 'XX001', error.message);
    assert.match(error.message, new RegExp(formatLsn(bad.lsn).replace('/', '\\/')), 'the error names the bad record');
    // The operator sees it too: the stream's end is logged with the timeline and the error.
    await waitFor(() => node.stdout().includes('proposer stream ended: its WAL failed verification') || node.stderr().includes('proposer stream ended: its WAL failed verification'), { what: 'the failure in the node log' });
    const logLine = (node.stdout() + node.stderr()).split('\n').find((line) => line.includes('proposer stream ended'))!;
    assert.match(logLine, new RegExp(`"timeline_id":"${badIds.timelineId}"`));
    const acks = corrupt.acknowledgedFlushLsns;
    assertAcksAreRecordEnds(acks, new Set([startLsn, ...recordEndsOf(wal.records, segmentBytes)]));
    assert.ok(acks.every((lsn) => lsn <= goodEndLsn), `no ack past the last good record end ${formatLsn(goodEndLsn)}: ${acks.map(formatLsn).join(', ')}`);
    const badDir = timelineDirOf(dataDir, badIds.tenantId, badIds.timelineId);
    assert.equal((await timelineStatus(node.pgPort, badIds.tenantId, badIds.timelineId))?.flushLsn, formatLsn(goodEndLsn));
    assertSameWal(await readTimelineWal(badDir, startLsn, goodEndLsn, segmentBytes), walRange(realSource(), startLsn, goodEndLsn), startLsn, 'WAL before the bad record');
    await waitFor(async () => (await assertNothingAfter(badDir, goodEndLsn, segmentBytes), true), { timeoutMs: 10_000, what: 'the bad record to be cut from disk' });

    assert.equal(clean.proposer.flushLsn, wal.endLsn);
    const goodDir = timelineDirOf(dataDir, goodIds.tenantId, goodIds.timelineId);
    assertSameWal(await readTimelineWal(goodDir, startLsn, wal.endLsn, segmentBytes), walRange(realSource(), startLsn), startLsn, 'the other timeline');
    await clean.proposer.close();

    // A new election on the damaged timeline truncates at the last good record and takes the clean WAL.
    const resumed = await electAndStream({ port: node.pgPort, ...badIds, protoVersion: 3, ...realServer(), source: realSource(), timelineStartLsn: startLsn });
    track(resumed.proposer);
    assert.equal(resumed.vote.flushLsn, goodEndLsn);
    assert.equal(resumed.startLsn, goodEndLsn);
    await resumed.proposer.close();
    assertSameWal(await readTimelineWal(badDir, startLsn, wal.endLsn, segmentBytes), walRange(realSource(), startLsn), startLsn, 'repaired timeline');
  });

  test('a proposer that keeps streaming past the corrupt record still receives the XX001 ErrorResponse', async () => {
    const node = await startFsyncNode(makeTempDir('sk-corrupt-'));
    const startLsn = wal.records[0]!.lsn;
    const { source, bad } = corruptRealWal();
    for (let attempt = 0; attempt < 4; attempt += 1) {
      const proposer = await electFresh(node.pgPort, newIds(), startLsn);
      await streamUntilClosed(proposer, walRange(source, startLsn), startLsn);
      const error = await proposer.waitClosed();
      assert.ok(error !== null, `attempt ${attempt}: an ErrorResponse ended the stream (socket error: ${proposer.socketError?.message ?? 'none'})`);
      assert.equal(error.code, 'XX001', error.message);
      assert.match(error.message, new RegExp(formatLsn(bad.lsn).replace('/', '\\/')));
      await proposer.close();
    }
  });
});
