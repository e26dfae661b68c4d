/**
 * Ingest through the real `safekeeper run` process: a test proposer (test/harness/test_proposer.ts) speaks
 * START_WAL_PUSH v2/v3 like walproposer does, and the tests check what a user can see: the segment files
 * (byte-identical to the source over the streamed range, readable by pg_waldump, `.partial` only on the
 * last), the acknowledged flush_lsns (monotonic record ends), elections and truncation (protocol doc §4.5,
 * neon-safekeeper-tests §2, §13), corrupt WAL, malformed protocol input, and a restart on the same data dir.
 * Nodes run with fsync on. Every node and temp dir is removed in after().
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { encodeProposerMessage } from '../../src/acceptor/messages_codec.js';
import { emptyMembership, type TenantId, type TimelineId } from '../../src/acceptor/state.js';
import { WAL_PAGE_SIZE_BYTES, formatLsn, segmentNumber, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { killAllNodes, spawnNode, testNodeArgs, type NodeProcess } from '../harness/node_process.js';
import { pgWaldump, type WaldumpRecord } from '../harness/pg.js';
import { DatabaseError, PgTestClient } from '../harness/pg_client.js';
import { realWal, recordEndLsn, type RealWal } from '../harness/real_wal.js';
import {
  StreamClosedError,
  TestProposer,
  assertAcksAreRecordEnds,
  assertNothingAfter,
  assertSameWal,
  copySegmentsForWaldump,
  electAndStream,
  listSegmentFiles,
  readTimelineWal,
  recordEndsOf,
  syntheticWal,
  timelineDirOf,
  timelineStatus,
  walRange,
  type TestProposerOptions,
  type WalSource,
} from '../harness/test_proposer.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

/** Synthetic WAL uses 1 MiB segments, so a few MiB cross several segment boundaries. */
const SYNTHETIC_SEGMENT_BYTES = 1 << 20;
const SYNTHETIC_PG_VERSION = 150008;
const SYNTHETIC_SYSTEM_ID = 7_350_000_000_000_000_001n;
/** The first synthetic segment: segment 1, like a fresh cluster. */
const SYNTHETIC_BASE_LSN = segmentStartLsn(1n, SYNTHETIC_SEGMENT_BYTES);
/**
 * Synthetic timelines start mid-page on the first page of their segment, as a compute's basebackup LSN
 * does: the safekeeper's initial segment image then fakes a record ending there, which pg_waldump accepts.
 */
const SYNTHETIC_START_LSN = SYNTHETIC_BASE_LSN + 0x128n;
const TEST_TIMEOUT_MS = 60_000;

const proposers = new Set<TestProposer>();
let wal: RealWal;

before(async () => {
  wal = await realWal();
});

after(async () => {
  for (const proposer of proposers) await proposer.close();
  await killAllNodes();
  await removeAllTempDirs();
});

const newIds = (): { tenantId: string; timelineId: string } => ({ tenantId: randomBytes(16).toString('hex'), timelineId: randomBytes(16).toString('hex') });

function track<T extends TestProposer>(proposer: T): T {
  proposers.add(proposer);
  return proposer;
}

/** Starts a node with fsync on (no --no-sync). If it dies on its own, its log goes to stderr, for the failure. */
async function startNode(dataDir: string): Promise<NodeProcess> {
  const node = await spawnNode(testNodeArgs(dataDir));
  node.process.once('exit', (code, signal) => {
    if (code !== 0 && signal === null) process.stderr.write(`safekeeper exited with code ${code}:\n${node.stderr().slice(-8000)}\n${node.stdout().slice(-8000)}\n`);
  });
  return node;
}

const realSource = (): WalSource => ({ bytes: wal.bytes, baseLsn: wal.startLsn, endLsn: wal.endLsn });
const realServer = (): Pick<TestProposerOptions, 'pgVersion' | 'systemId' | 'walSegSizeBytes'> => ({ pgVersion: wal.pgVersion, systemId: wal.systemId, walSegSizeBytes: wal.segmentSizeBytes });
const syntheticServer = (): Pick<TestProposerOptions, 'pgVersion' | 'systemId' | 'walSegSizeBytes'> => ({ pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, walSegSizeBytes: SYNTHETIC_SEGMENT_BYTES });
const recordKey = (record: WaldumpRecord): string => `${formatLsn(record.lsn)} ${record.rmgr} ${record.totalLengthBytes}`;

/** GET /v1/tenant/{t}/timeline/{l}. */
async function httpStatus(node: NodeProcess, ids: { tenantId: string; timelineId: string }): Promise<{ flush_lsn: string; commit_lsn: string; acceptor_state: { term: unknown; term_history: { term: unknown; lsn: string }[] } }> {
  const response = await fetch(`${node.httpUrl}/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`);
  assert.equal(response.status, 200);
  return (await response.json()) as Awaited<ReturnType<typeof httpStatus>>;
}

/** pg_waldump over the safekeeper's own segment files. */
async function waldumpTimeline(dir: string, segmentSizeBytes: number, fromLsn: Lsn, toLsn: Lsn): Promise<WaldumpRecord[]> {
  const copy = makeTempDir('sk-ingest-waldump-');
  await copySegmentsForWaldump(dir, segmentSizeBytes, copy);
  return pgWaldump(copy, fromLsn, toLsn);
}

/** Asserts only the segment holding `endLsn` (if `endLsn` is inside it) is `.partial`, and no segment is missing. */
async function assertSegmentNames(dir: string, fromLsn: Lsn, endLsn: Lsn, segmentSizeBytes: number): Promise<void> {
  const files = await listSegmentFiles(dir, segmentSizeBytes);
  const endSegno = segmentNumber(endLsn, segmentSizeBytes);
  const endsAtBoundary = endLsn === segmentStartLsn(endSegno, segmentSizeBytes);
  for (let segno = segmentNumber(fromLsn, segmentSizeBytes); segno <= endSegno; segno += 1n) {
    if (segno === endSegno && endsAtBoundary) continue;
    const matching = files.filter((file) => file.segno === segno);
    assert.equal(matching.length, 1, `one file for segment ${segno}: ${matching.map((file) => file.path).join(', ')}`);
    const expectPartial = segno === endSegno;
    assert.equal(matching[0]!.partial, expectPartial, `segment ${segno} is ${expectPartial ? 'the last, still .partial' : 'complete, without .partial'}`);
  }
}

async function streamRealWalAndVerify(protoVersion: 2 | 3, chunkBytes: number): Promise<void> {
  const dataDir = makeTempDir('sk-ingest-');
  const node = await startNode(dataDir);
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
  await session.proposer.close();

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

describe('streaming real PostgreSQL 15 WAL', { timeout: TEST_TIMEOUT_MS }, () => {
  test('v3: segments are byte-identical over the streamed range, pg_waldump lists the same records, every ack is a record end', async () => {
    await streamRealWalAndVerify(3, 128 * 1024);
  });

  test('v2: the same, with AppendRequests that do not line up with pages', async () => {
    await streamRealWalAndVerify(2, 50_000);
  });

  test('pg_waldump reads from the first streamed record when it starts right after the long page header', async () => {
    const dataDir = makeTempDir('sk-ingest-');
    const node = await startNode(dataDir);
    const ids = newIds();
    const startLsn = wal.records[0]!.lsn;
    const toLsn = wal.records[20]!.lsn;
    const session = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...realServer(), source: realSource(), timelineStartLsn: startLsn, toLsn });
    await track(session.proposer).close();
    const dumped = await waldumpTimeline(timelineDirOf(dataDir, ids.tenantId, ids.timelineId), wal.segmentSizeBytes, startLsn, toLsn);
    assert.deepEqual(dumped.map(recordKey), wal.records.slice(0, 20).map(recordKey));
  });
});

describe('elections', { timeout: TEST_TIMEOUT_MS }, () => {
  test('a second connection gets its greeting and vote answered before any AppendResponse, while another proposer streams', async () => {
    const node = await startNode(makeTempDir('sk-second-conn-'));
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
    const node = await startNode(dataDir);
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
    const node = await startNode(dataDir);
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

describe('corrupt WAL', { timeout: TEST_TIMEOUT_MS }, () => {
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
    const node = await startNode(dataDir);
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
    const node = await startNode(makeTempDir('sk-corrupt-'));
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

describe('malformed START_WAL_PUSH input', { timeout: TEST_TIMEOUT_MS }, () => {
  let node: NodeProcess;
  let dataDir: string;
  before(async () => {
    dataDir = makeTempDir('sk-malformed-');
    node = await startNode(dataDir);
  });

  const connectNew = async (protoVersion: 2 | 3 = 3): Promise<{ proposer: TestProposer; ids: { tenantId: string; timelineId: string } }> => {
    const ids = newIds();
    return { proposer: track(await TestProposer.connect({ port: node.pgPort, ...ids, protoVersion, ...syntheticServer() })), ids };
  };

  /** The stream ends with an ErrorResponse of `code` matching `message`, and the node still serves new connections. */
  async function expectStreamError(proposer: TestProposer, code: string, message: RegExp): Promise<void> {
    const error = await proposer.waitClosed();
    assert.ok(error !== null, 'an ErrorResponse before the close');
    assert.equal(error.code, code, `SQLSTATE of "${error.message}"`);
    assert.match(error.message, message);
    await assertNodeServes();
  }

  async function assertNodeServes(): Promise<void> {
    const ids = newIds();
    assert.equal(await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId), null, 'a new connection is served');
  }

  const greeting = (ids: { tenantId: string; timelineId: string }, protoVersion: 2 | 3): Uint8Array =>
    encodeProposerMessage({ tag: 'greeting', tenantId: ids.tenantId as TenantId, timelineId: ids.timelineId as TimelineId, mconf: emptyMembership(), pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, walSegSizeBytes: SYNTHETIC_SEGMENT_BYTES }, protoVersion);

  test('a truncated greeting', async () => {
    for (const protoVersion of [2, 3] as const) {
      const { proposer, ids } = await connectNew(protoVersion);
      await proposer.sendRaw(greeting(ids, protoVersion).subarray(0, 30));
      await expectStreamError(proposer, '08P01', /greeting/i);
    }
  });

  test('an AppendRequest whose WAL is shorter than its LSN range', async () => {
    const { proposer } = await connectNew();
    await proposer.greet();
    await proposer.vote(1n);
    const startLsn = SYNTHETIC_START_LSN;
    await proposer.elect({ term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] });
    const header = new Uint8Array(45);
    const view = new DataView(header.buffer);
    view.setUint8(0, 0x61);
    view.setBigUint64(5, 1n);
    view.setBigUint64(13, startLsn);
    view.setBigUint64(21, startLsn + 1000n);
    await proposer.sendRaw(Buffer.concat([header, Buffer.alloc(10)]));
    await expectStreamError(proposer, '08P01', /AppendRequest message: reading WAL: only 10 bytes left, wanted 1000/);
  });

  test('a message with an unknown tag', async () => {
    for (const protoVersion of [2, 3] as const) {
      const { proposer } = await connectNew(protoVersion);
      await proposer.sendRaw(Buffer.from([0x7a, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]));
      await expectStreamError(proposer, '08P01', /unknown proposer-acceptor message tag: 0x7a/);
    }
  });

  test('a CopyData above max_message_size', async () => {
    const { proposer } = await connectNew();
    const header = Buffer.alloc(5);
    header.write('d', 0, 'latin1');
    header.writeInt32BE(512 * 1024 + 4, 1); // the default limit is 256 KiB
    proposer.client.socket.write(Buffer.concat([header, Buffer.alloc(1024)]));
    await expectStreamError(proposer, '08P01', /declared length 524292/);
  });

  test('garbage after startup', async () => {
    for (const garbage of [Buffer.from('GARBAGE GARBAGE GARBAGE'), Buffer.from([0x3f, 0, 0, 0, 8, 1, 2, 3, 4])]) {
      const ids = newIds();
      const client = await PgTestClient.connect({ port: node.pgPort, options: `-c timeline_id=${ids.timelineId} tenant_id=${ids.tenantId}` });
      client.socket.write(garbage);
      const message = await client.next();
      assert.equal(message.name, 'error', `an ErrorResponse for ${JSON.stringify(garbage.toString('latin1'))}`);
      assert.equal((message as DatabaseError).code, '08P01');
      assert.match((message as DatabaseError).message, /declared length|unknown or unexpected message type/);
      await client.closed;
      await assertNodeServes();
    }
  });

  test('an AppendRequest or VoteRequest before the greeting', async () => {
    {
      const { proposer } = await connectNew();
      await proposer.append({ beginLsn: SYNTHETIC_START_LSN, wal: new Uint8Array(0), term: 1n, commitLsn: 0n, truncateLsn: 0n });
      await expectStreamError(proposer, '08P01', /instead of greeting/);
    }
    {
      const { proposer } = await connectNew(2);
      await proposer.send({ tag: 'vote', generation: 0, term: 1n });
      await expectStreamError(proposer, '08P01', /instead of greeting/);
    }
  });

  test('an AppendRequest before ProposerElected', async () => {
    const { proposer } = await connectNew();
    await proposer.greet();
    assert.equal((await proposer.vote(1n)).voteGiven, true);
    // The term the vote granted, but no ProposerElected: nothing may be written before the truncation point is known.
    await proposer.append({ beginLsn: SYNTHETIC_START_LSN, wal: new Uint8Array(0), term: 1n, commitLsn: 0n, truncateLsn: 0n });
    await expectStreamError(proposer, '08P01', /truncation pending|before ProposerElected/);
    // A term above the acceptor's, with no election at all.
    const second = (await connectNew()).proposer;
    await second.greet();
    await second.append({ beginLsn: SYNTHETIC_START_LSN, wal: new Uint8Array(0), term: 5n, commitLsn: 0n, truncateLsn: 0n });
    await expectStreamError(second, '08P01', /before ProposerElected/);
  });

  test('ProposerElected before any vote is handled as Neon does: the term is adopted, no error', async () => {
    // Neon's handle_elected has no "voted" precondition (safekeeper.rs): a higher term is persisted and the
    // election proceeds. A later vote for that same term is then refused.
    const { proposer, ids } = await connectNew();
    await proposer.greet();
    const startLsn = SYNTHETIC_START_LSN;
    await proposer.elect({ term: 4n, startStreamingAtLsn: startLsn, termHistory: [{ term: 4n, lsn: startLsn }] });
    await proposer.heartbeat(startLsn);
    const reply = await proposer.nextAppendResponse();
    assert.equal(reply.term, 4n);
    assert.equal(reply.flushLsn, startLsn);
    await proposer.close();
    const other = track(await TestProposer.connect({ port: node.pgPort, ...ids, protoVersion: 3, ...syntheticServer() }));
    assert.equal((await other.greet()).term, 4n);
    assert.equal((await other.vote(4n)).voteGiven, false);
    await other.close();
  });
});

describe('restart', { timeout: TEST_TIMEOUT_MS }, () => {
  test('after SIGTERM and a new start on the same data dir the timeline keeps its flush_lsn, and a new term continues from there', async () => {
    const dataDir = makeTempDir('sk-restart-');
    const ids = newIds();
    const source = syntheticWal({ startLsn: SYNTHETIC_START_LSN, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: 4 * SYNTHETIC_SEGMENT_BYTES, seed: 4, switchAtFraction: 0.3 });
    const startLsn = source.firstRecordLsn;
    const stopAt = source.records.find((record) => record.endLsn > SYNTHETIC_BASE_LSN + BigInt(Math.floor(2.2 * SYNTHETIC_SEGMENT_BYTES)))!.endLsn;

    let node = await startNode(dataDir);
    const first = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...syntheticServer(), source, timelineStartLsn: startLsn, toLsn: stopAt });
    track(first.proposer);
    await first.proposer.close();
    const statusBefore = await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId);
    assert.equal(statusBefore?.flushLsn, formatLsn(stopAt));
    const exit = await node.stop();
    assert.equal(exit.code, 0, `clean exit after SIGTERM\n${node.stderr()}`);

    node = await startNode(dataDir);
    const afterRestart = await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId);
    assert.equal(afterRestart?.flushLsn, statusBefore?.flushLsn, 'flush_lsn survives the restart');
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
