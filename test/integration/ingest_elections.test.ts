/**
 * Elections and restarts on the real `safekeeper run` process, driven by test proposers over START_WAL_PUSH
 * with synthetic WAL (protocol doc §4.5, neon-safekeeper-tests §2, §13): votes for terms not above the
 * current one are refused, a higher term with a divergent history truncates at the highest common point,
 * an equal history resumes without truncating, a second connection is answered in order while another
 * proposer streams, and after SIGTERM and a restart on the same data dir the timeline keeps its term and
 * flush_lsn. Nodes run with fsync on. Every node and temp dir is removed in after().
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatLsn, segmentNumber } from '../../src/wal/lsn.js';
import { newIds } from '../harness/background.js';
import {
  INGEST_TEST_TIMEOUT_MS,
  SYNTHETIC_BASE_LSN,
  SYNTHETIC_PG_VERSION,
  SYNTHETIC_SEGMENT_BYTES,
  SYNTHETIC_START_LSN,
  SYNTHETIC_SYSTEM_ID,
  assertSegmentNames,
  startFsyncNode,
  syntheticServer,
  waldumpTimeline,
} from '../harness/ingest.js';
import type { NodeProcess } from '../harness/node_process.js';
import { electAndStream, timelineStatus } from '../harness/proposer_session.js';
import { trackedProposers } from '../harness/teardown.js';
import { TestProposer } from '../harness/test_proposer.js';
import { assertAcksAreRecordEnds, assertNothingAfter, assertSameWal, listSegmentFiles, readTimelineWal, timelineDirOf } from '../harness/timeline_wal.js';
import { makeTempDir } from '../harness/tmp.js';
import { syntheticWal, walRange } from '../harness/wal_source.js';

const { track } = trackedProposers();

/** GET /v1/tenant/{t}/timeline/{l}. */
async function httpStatus(node: NodeProcess, ids: { tenantId: string; timelineId: string }): Promise<{ flush_lsn: string; commit_lsn: string; acceptor_state: { term: unknown; term_history: { term: unknown; lsn: string }[] } }> {
  const response = await fetch(`${node.httpUrl}/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`);
  assert.equal(response.status, 200);
  return (await response.json()) as Awaited<ReturnType<typeof httpStatus>>;
}

describe('elections', { timeout: INGEST_TEST_TIMEOUT_MS }, () => {
  test('a second connection gets its greeting and vote answered before any AppendResponse, while another proposer streams', async () => {
    const node = await startFsyncNode(makeTempDir('sk-second-conn-'));
    const ids = newIds();
    const base = { port: node.pgPort, ...ids, protoVersion: 3 as const, ...syntheticServer() };
    const source = syntheticWal({ startLsn: SYNTHETIC_START_LSN, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: 6 * SYNTHETIC_SEGMENT_BYTES, seed: 5 });
    const middle = source.records[Math.floor(source.records.length / 4)]!.endLsn;
    const first = await electAndStream({ ...base, source, timelineStartLsn: source.firstRecordLsn, toLsn: middle });
    track(first.proposer);
    // The second connection greets; then the first proposer writes more, so flush_lsn moves under the second
    // connection before it votes. Its vote reply must still come first (the harness fails on an
    // AppendResponse that arrives before it on a connection that has not appended).
    const second = track(await TestProposer.connect({ ...base }));
    const greeting = await second.greet();
    await first.proposer.streamWal(walRange(source, middle), middle, { chunkBytes: 8 * 1024 });
    await first.proposer.waitForFlush(source.endLsn);
    const vote = await second.vote(greeting.term); // not above the current term: refused
    assert.equal(vote.voteGiven, false);
    await node.stop();
  });

  test('a vote for a term not above the current one is refused; a higher term with a divergent history truncates at the highest common point', async () => {
    const dataDir = makeTempDir('sk-election-');
    const node = await startFsyncNode(dataDir);
    const ids = newIds();
    const base = { port: node.pgPort, ...ids, protoVersion: 3 as const, ...syntheticServer() };
    const branch1 = syntheticWal({ startLsn: SYNTHETIC_START_LSN, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: 3.5 * SYNTHETIC_SEGMENT_BYTES, seed: 1 });
    const startLsn = branch1.firstRecordLsn;
    const dir = timelineDirOf(dataDir, ids.tenantId, ids.timelineId);

    // Proposer 1, term 1, writes up to X without committing any of it (its quorum never formed).
    const first = await electAndStream({ ...base, source: branch1, timelineStartLsn: startLsn, commit: 'none' });
    track(first.proposer);
    assert.equal(first.term, 1n);
    const xLsn = branch1.endLsn;
    assert.equal(first.proposer.flushLsn, xLsn);
    assertAcksAreRecordEnds(first.proposer.acknowledgedFlushLsns, new Set([startLsn, ...branch1.records.map((record) => record.endLsn)]));

    // Proposer 2 campaigns while proposer 1 is still connected.
    const second = track(await TestProposer.connect(base));
    assert.equal((await second.greet()).term, 1n);
    for (const term of [1n, 0n]) {
      const refused = await second.vote(term);
      assert.equal(refused.voteGiven, false, `vote for term ${term} refused`);
      assert.equal(refused.term, 1n);
      assert.equal(refused.flushLsn, xLsn);
    }
    const vote = await second.vote(2n);
    assert.equal(vote.voteGiven, true);
    assert.equal(vote.term, 2n);
    assert.equal(vote.flushLsn, xLsn);
    assert.deepEqual(vote.termHistory, [{ term: 1n, lsn: startLsn }]);

    // The old leader's next append is refused with the higher term (flush 0), which is fatal for it.
    first.proposer.clearReplies();
    await first.proposer.heartbeat(xLsn, 0n);
    const refusal = await first.proposer.nextAppendResponse();
    assert.equal(refusal.term, 2n);
    assert.equal(refusal.flushLsn, 0n);

    // Proposer 2's history says term 1 ended at Y < X (a record end in the second segment): the acceptor cuts there.
    const cut = branch1.records.find((record) => record.endLsn >= SYNTHETIC_BASE_LSN + BigInt(Math.floor(1.3 * SYNTHETIC_SEGMENT_BYTES)))!;
    const yLsn = cut.endLsn;
    assert.ok(yLsn < xLsn && segmentNumber(yLsn, SYNTHETIC_SEGMENT_BYTES) + 2n <= segmentNumber(xLsn, SYNTHETIC_SEGMENT_BYTES));
    await second.elect({ term: 2n, startStreamingAtLsn: yLsn, termHistory: [{ term: 1n, lsn: startLsn }, { term: 2n, lsn: yLsn }] });
    await second.heartbeat(yLsn);
    const afterCut = await second.nextAppendResponse();
    assert.equal(afterCut.term, 2n);
    assert.equal(afterCut.flushLsn, yLsn, 'flush_lsn is the truncation point');
    assert.equal((await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId))?.flushLsn, formatLsn(yLsn));
    const afterCutHttp = await httpStatus(node, ids);
    assert.equal(afterCutHttp.flush_lsn, formatLsn(yLsn));
    assert.equal(String(afterCutHttp.acceptor_state.term), '2');
    assert.deepEqual(afterCutHttp.acceptor_state.term_history.map((entry) => [String(entry.term), entry.lsn]), [['1', formatLsn(startLsn)], ['2', formatLsn(yLsn)]]);
    assertSameWal(await readTimelineWal(dir, startLsn, yLsn, SYNTHETIC_SEGMENT_BYTES), walRange(branch1, startLsn, yLsn), startLsn, 'WAL before the cut');
    await assertNothingAfter(dir, yLsn, SYNTHETIC_SEGMENT_BYTES);
    const cutSegno = segmentNumber(yLsn, SYNTHETIC_SEGMENT_BYTES);
    const files = await listSegmentFiles(dir, SYNTHETIC_SEGMENT_BYTES);
    assert.deepEqual(files.filter((file) => file.segno > cutSegno).map((file) => file.path), [], 'later segments are removed');
    assert.deepEqual(files.filter((file) => file.segno === cutSegno).map((file) => file.partial), [true], 'the cut segment is .partial again');

    // Term 2 streams its own branch from Y.
    const branch2 = syntheticWal({ startLsn: yLsn, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: 2 * SYNTHETIC_SEGMENT_BYTES, seed: 2, prevLsn: cut.startLsn, switchAtFraction: 0.4 });
    second.clearReplies();
    await second.streamWal(branch2.bytes, yLsn);
    await second.waitForFlush(branch2.endLsn);
    assertAcksAreRecordEnds(second.acknowledgedFlushLsns, new Set([yLsn, ...branch2.records.map((record) => record.endLsn)]));
    assertSameWal(await readTimelineWal(dir, startLsn, yLsn, SYNTHETIC_SEGMENT_BYTES), walRange(branch1, startLsn, yLsn), startLsn, 'term 1 WAL');
    assertSameWal(await readTimelineWal(dir, yLsn, branch2.endLsn, SYNTHETIC_SEGMENT_BYTES), branch2.bytes, yLsn, 'term 2 WAL');
    const dumped = await waldumpTimeline(dir, SYNTHETIC_SEGMENT_BYTES, startLsn, branch2.endLsn);
    const expectedStarts = [...branch1.records.filter((record) => record.startLsn < yLsn), ...branch2.records].map((record) => formatLsn(record.startLsn));
    assert.deepEqual(dumped.map((record) => formatLsn(record.lsn)), expectedStarts);
    await first.proposer.close();
    await second.close();

    // A third proposer sees both terms; a start point other than the common point is refused and changes nothing.
    const third = track(await TestProposer.connect(base));
    assert.equal((await third.greet()).term, 2n);
    const thirdVote = await third.vote(3n);
    assert.equal(thirdVote.voteGiven, true);
    assert.equal(thirdVote.flushLsn, branch2.endLsn);
    assert.deepEqual(thirdVote.termHistory, [{ term: 1n, lsn: startLsn }, { term: 2n, lsn: yLsn }]);
    await third.elect({ term: 3n, startStreamingAtLsn: yLsn, termHistory: [...thirdVote.termHistory, { term: 3n, lsn: branch2.endLsn }] });
    const error = await third.waitClosed();
    assert.equal(error?.code, '08P01');
    assert.match(error?.message ?? '', /unexpected truncation point/);
    assert.equal((await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId))?.flushLsn, formatLsn(branch2.endLsn));
    assertSameWal(await readTimelineWal(dir, yLsn, branch2.endLsn, SYNTHETIC_SEGMENT_BYTES), branch2.bytes, yLsn, 'term 2 WAL after the refused election');
  });

  test('a proposer with an equal history resumes at the acceptor\'s end without truncating', async () => {
    const dataDir = makeTempDir('sk-election-');
    const node = await startFsyncNode(dataDir);
    const ids = newIds();
    const base = { port: node.pgPort, ...ids, protoVersion: 2 as const, ...syntheticServer() };
    const source = syntheticWal({ startLsn: SYNTHETIC_START_LSN, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: 2.5 * SYNTHETIC_SEGMENT_BYTES, seed: 3 });
    const middle = source.records[Math.floor(source.records.length / 2)]!.endLsn;
    const first = await electAndStream({ ...base, source, timelineStartLsn: source.firstRecordLsn, toLsn: middle });
    track(first.proposer);
    await first.proposer.close();
    const second = await electAndStream({ ...base, source, timelineStartLsn: source.firstRecordLsn });
    track(second.proposer);
    assert.equal(second.term, 2n);
    assert.equal(second.startLsn, middle, 'the new term starts at the donor flush_lsn');
    assert.deepEqual(second.vote.termHistory, [{ term: 1n, lsn: source.firstRecordLsn }]);
    await second.proposer.close();
    const dir = timelineDirOf(dataDir, ids.tenantId, ids.timelineId);
    assertSameWal(await readTimelineWal(dir, source.firstRecordLsn, source.endLsn, SYNTHETIC_SEGMENT_BYTES), walRange(source, source.firstRecordLsn), source.firstRecordLsn, 'both terms');
  });
});

describe('XLOG_SWITCH', { timeout: INGEST_TEST_TIMEOUT_MS }, () => {
  test('a proposer that left inside the padding after a switch is followed by one that starts at the next segment', async () => {
    const dataDir = makeTempDir('sk-switch-');
    const node = await startFsyncNode(dataDir);
    const ids = newIds();
    const source = syntheticWal({ startLsn: SYNTHETIC_START_LSN, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: 4 * SYNTHETIC_SEGMENT_BYTES, seed: 8, switchAtFraction: 0.6 });
    const startLsn = source.firstRecordLsn;
    // The XLOG_SWITCH: its end is the next segment start, reached through zero padding.
    const xlogSwitch = source.records.find((record) => record.endLsn % BigInt(SYNTHETIC_SEGMENT_BYTES) === 0n && record.endLsn - record.startLsn > 100n)!;
    const receivedEndLsn = xlogSwitch.startLsn + 24n + 4096n; // the record and part of its padding
    assert.ok(receivedEndLsn < xlogSwitch.endLsn);
    const options = { port: node.pgPort, ...ids, protoVersion: 3 as const, ...syntheticServer() };
    const first = track(await TestProposer.connect(options));
    await first.greet();
    await first.vote(1n);
    await first.elect({ term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] });
    await first.streamWal(walRange(source, startLsn, receivedEndLsn), startLsn);
    assert.equal(await first.waitForFlush(xlogSwitch.endLsn), xlogSwitch.endLsn, 'the switch record is acknowledged up to the next segment start');
    await first.close();

    // What walproposer does next: it starts us at the flush_lsn our vote reports.
    const second = track(await TestProposer.connect(options));
    const greeting = await second.greet();
    const vote = await second.vote(greeting.term + 1n);
    assert.equal(vote.flushLsn, xlogSwitch.endLsn);
    await second.elect({ term: 2n, startStreamingAtLsn: vote.flushLsn, termHistory: [...vote.termHistory, { term: 2n, lsn: vote.flushLsn }] });
    await second.streamWal(walRange(source, xlogSwitch.endLsn), xlogSwitch.endLsn);
    assert.equal(await second.waitForFlush(source.endLsn), source.endLsn, 'the second proposer streams from the next segment');
    await second.close();
    const dir = timelineDirOf(dataDir, ids.tenantId, ids.timelineId);
    // The padding the first proposer never sent reads as the zeros PostgreSQL writes there.
    assertSameWal(await readTimelineWal(dir, startLsn, source.endLsn, SYNTHETIC_SEGMENT_BYTES), walRange(source, startLsn), startLsn, 'WAL across the switch');
    await node.stop();
  });
});

describe('restart', { timeout: INGEST_TEST_TIMEOUT_MS }, () => {
  test('after SIGTERM and a new start on the same data dir the timeline keeps its flush_lsn and commit_lsn (the stop saves the latter), and a new term continues from there', async () => {
    const dataDir = makeTempDir('sk-restart-');
    const ids = newIds();
    const source = syntheticWal({ startLsn: SYNTHETIC_START_LSN, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: 4 * SYNTHETIC_SEGMENT_BYTES, seed: 4, switchAtFraction: 0.3 });
    const startLsn = source.firstRecordLsn;
    const stopAt = source.records.find((record) => record.endLsn > SYNTHETIC_BASE_LSN + BigInt(Math.floor(2.2 * SYNTHETIC_SEGMENT_BYTES)))!.endLsn;

    let node = await startFsyncNode(dataDir, ['--control-file-save-interval', '1h']);
    const first = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...syntheticServer(), source, timelineStartLsn: startLsn, toLsn: stopAt });
    track(first.proposer);
    // As walproposer does when idle: a heartbeat carrying the commit_lsn that the last acknowledgement allows.
    first.proposer.clearReplies();
    await first.proposer.heartbeat(stopAt);
    await first.proposer.nextAppendResponse();
    await first.proposer.close();
    const statusBefore = await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId);
    assert.equal(statusBefore?.flushLsn, formatLsn(stopAt));
    assert.equal(statusBefore?.commitLsn, formatLsn(stopAt));
    const exit = await node.stop();
    assert.equal(exit.code, 0, `clean exit after SIGTERM\n${node.stderr()}`);

    node = await startFsyncNode(dataDir);
    const afterRestart = await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId);
    assert.equal(afterRestart?.flushLsn, statusBefore?.flushLsn, 'flush_lsn survives the restart');
    // The stop saves the commit_lsn learned since the last periodic save (that one is an hour away here).
    assert.equal(afterRestart?.commitLsn, statusBefore?.commitLsn, 'commit_lsn survives a clean restart');
    const httpAfterRestart = await httpStatus(node, ids);
    assert.equal(httpAfterRestart.flush_lsn, formatLsn(stopAt));
    assert.equal(String(httpAfterRestart.acceptor_state.term), '1');
    const second = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...syntheticServer(), source, timelineStartLsn: startLsn });
    track(second.proposer);
    assert.equal(second.greeting.term, 1n, 'the term survives the restart');
    assert.equal(second.vote.flushLsn, stopAt);
    assert.deepEqual(second.vote.termHistory, [{ term: 1n, lsn: startLsn }]);
    assert.equal(second.startLsn, stopAt);
    assertAcksAreRecordEnds(second.proposer.acknowledgedFlushLsns, new Set([stopAt, ...source.records.map((record) => record.endLsn)]));
    await second.proposer.close();
    const dir = timelineDirOf(dataDir, ids.tenantId, ids.timelineId);
    assertSameWal(await readTimelineWal(dir, startLsn, source.endLsn, SYNTHETIC_SEGMENT_BYTES), walRange(source, startLsn), startLsn, 'WAL across the restart');
    await assertSegmentNames(dir, startLsn, source.endLsn, SYNTHETIC_SEGMENT_BYTES);
  });
});
