/**
 * Crash recovery of the real `safekeeper run` process (fsync on): SIGKILL at random points while a proposer
 * streams, restart on the same data dir, and check what DESIGN.md promises: nothing acknowledged is lost
 * (the recovered flush_lsn is at least every flush_lsn acknowledged before the kill), the recovered position
 * is a record end, the WAL up to it is byte-identical to the source, and a new term continues from there.
 * The kill points come from a seeded generator; the seed is printed (set SK_TEST_SEED to replay one).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { formatLsn, parseLsn, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { StreamClosedError } from '../harness/acceptor_replies.js';
import { spawnNode, testNodeArgs, type NodeProcess } from '../harness/node_process.js';
import { pgWaldump } from '../harness/pg.js';
import { timelineStatus } from '../harness/proposer_session.js';
import { tearDownAfterAll } from '../harness/teardown.js';
import { TestProposer } from '../harness/test_proposer.js';
import { assertAcksAreRecordEnds, assertSameWal, copySegmentsForWaldump, readTimelineWal, timelineDirOf } from '../harness/timeline_wal.js';
import { makeTempDir } from '../harness/tmp.js';
import { seededRandom, syntheticWal, walRange } from '../harness/wal_source.js';

const SEGMENT_BYTES = 1 << 20;
const PG_VERSION = 150008;
const SYSTEM_ID = 7_350_000_000_000_000_002n;
/** Mid-page on the first page of segment 1, like a compute's start LSN. */
const START_LSN = segmentStartLsn(1n, SEGMENT_BYTES) + 0x128n;
/** Kill points per run: 5 in `npm test`; `npm run soak` sets SK_CRASH_TRIALS much higher. */
const TRIALS = Number(process.env['SK_CRASH_TRIALS'] ?? 5);
/** Each trial takes about a second here; the deadline grows with the count. */
const TIMEOUT_MS = 60_000 + TRIALS * 10_000;
/** A small chunk size gives the kill many points to land between messages, batches and fsyncs. */
const CHUNK_BYTES = 24 * 1024;
/**
 * The proposer keeps at most this much WAL unacknowledged, so the kill lands while the node is writing and
 * fsyncing, not long after it has merely buffered a burst. Above the largest synthetic record (~100 KiB).
 */
const IN_FLIGHT_BYTES_MAX = 512 * 1024;

const proposers = new Set<TestProposer>();
tearDownAfterAll(proposers);

test('kill -9 at random points while streaming loses nothing acknowledged, and streaming resumes after each restart', { timeout: TIMEOUT_MS }, async (t) => {
  const seed = process.env['SK_TEST_SEED'] !== undefined ? Number(process.env['SK_TEST_SEED']) : Math.floor(Math.random() * 0x7fff_ffff);
  t.diagnostic(`seed ${seed} (SK_TEST_SEED=${seed} replays these kill points)`);
  const random = seededRandom(seed);
  const source = syntheticWal({ startLsn: START_LSN, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: SYSTEM_ID, totalBytes: 10 * SEGMENT_BYTES, seed: 11, switchAtFraction: 0.45 });
  const recordEnds = new Set<Lsn>([START_LSN, ...source.records.map((record) => record.endLsn)]);
  const dataDir = makeTempDir('sk-crash-');
  const ids = { tenantId: randomBytes(16).toString('hex'), timelineId: randomBytes(16).toString('hex') };
  const dir = timelineDirOf(dataDir, ids.tenantId, ids.timelineId);
  const server = { pgVersion: PG_VERSION, systemId: SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES };

  let ackedLsn = 0n; // the highest flush_lsn ever acknowledged
  let recoveredLsn = START_LSN; // where the last recovery left the timeline
  for (let trial = 0; trial <= TRIALS; trial += 1) {
    const node: NodeProcess = await spawnNode(testNodeArgs(dataDir)); // fsync on
    node.process.once('exit', (code, signal) => {
      // SIGKILL is ours; a node that dies on its own shows its log with the failure.
      if (code !== 0 && signal === null) process.stderr.write(`safekeeper exited with code ${code}:\n${node.stderr().slice(-8000)}\n`);
    });
    if (trial > 0) recoveredLsn = await checkRecovered(node, trial);

    const proposer = await TestProposer.connect({ port: node.pgPort, ...ids, protoVersion: 3, ...server });
    proposers.add(proposer);
    const greeting = await proposer.greet();
    const term = greeting.term + 1n;
    const vote = await proposer.vote(term);
    assert.equal(vote.voteGiven, true);
    const donorFlushLsn = vote.flushLsn === 0n ? START_LSN : vote.flushLsn;
    if (trial > 0) assert.equal(donorFlushLsn, recoveredLsn, 'the vote reports the recovered flush_lsn');
    await proposer.elect({ term, startStreamingAtLsn: donorFlushLsn, termHistory: [...vote.termHistory, { term, lsn: donorFlushLsn }] });

    const remaining = walRange(source, donorFlushLsn);
    if (trial === TRIALS) {
      // The last session runs to the end without a crash.
      await proposer.streamWal(remaining, donorFlushLsn, { chunkBytes: CHUNK_BYTES });
      await proposer.waitForFlush(source.endLsn);
      assertAcksAreRecordEnds(proposer.acknowledgedFlushLsns, recordEnds);
      await proposer.close();
      assert.equal((await node.stop()).code, 0, node.stderr());
      break;
    }
    // Kill somewhere in the first 70% of what is left, so every trial leaves WAL for the next one.
    const killAtLsn = donorFlushLsn + BigInt(Math.floor(random() * remaining.length * 0.7)) + 1n;
    t.diagnostic(`trial ${trial}: term ${term} streams from ${formatLsn(donorFlushLsn)}, SIGKILL after sending ${formatLsn(killAtLsn)}`);
    let killed = false;
    try {
      await proposer.streamWal(remaining, donorFlushLsn, {
        chunkBytes: CHUNK_BYTES,
        onSent: async (sentLsn) => {
          if (!killed && sentLsn >= killAtLsn) {
            killed = true;
            await node.kill9();
          }
          if (!killed && sentLsn - proposer.flushLsn > BigInt(IN_FLIGHT_BYTES_MAX)) await proposer.waitForFlush(sentLsn - BigInt(IN_FLIGHT_BYTES_MAX));
        },
      });
    } catch (error) {
      if (!(error instanceof StreamClosedError)) throw error;
    }
    if (!killed) await node.kill9(); // everything was sent before the kill point was reached
    await proposer.waitClosed();
    await proposer.close();
    // Every acknowledgement that reached us was sent after its fsync, even one read after the kill.
    assertAcksAreRecordEnds(proposer.acknowledgedFlushLsns, recordEnds);
    if (proposer.flushLsn > ackedLsn) ackedLsn = proposer.flushLsn;
    t.diagnostic(`trial ${trial}: ${proposer.acknowledgedFlushLsns.length} acknowledgements, highest ${formatLsn(proposer.flushLsn)}`);
  }

  assertSameWal(await readTimelineWal(dir, START_LSN, source.endLsn, SEGMENT_BYTES), walRange(source, START_LSN), START_LSN, 'WAL after all the crashes');
  const copy = makeTempDir('sk-crash-waldump-');
  const dumped = await pgWaldump(await copySegmentsForWaldump(dir, SEGMENT_BYTES, copy), START_LSN, source.endLsn);
  assert.deepEqual(dumped.map((record) => record.lsn), source.records.map((record) => record.startLsn));

  /** After a restart: TIMELINE_STATUS shows a record end ≥ every ack, with the source's bytes up to it. */
  async function checkRecovered(node: NodeProcess, trial: number): Promise<Lsn> {
    const status = await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId);
    assert.ok(status !== null, 'the timeline loads after the crash');
    const flushLsn = parseLsn(status.flushLsn);
    t.diagnostic(`trial ${trial}: recovered flush_lsn ${status.flushLsn}, highest acknowledged ${formatLsn(ackedLsn)}`);
    if (flushLsn === 0n) {
      // Killed before the first election was durable: nothing was acknowledged, so nothing need be kept,
      // and the timeline starts over at START_LSN.
      assert.equal(ackedLsn, 0n, `flush_lsn 0/0 after acknowledging ${formatLsn(ackedLsn)}`);
      return START_LSN;
    }
    assert.ok(flushLsn >= ackedLsn, `recovered flush_lsn ${status.flushLsn} is below the acknowledged ${formatLsn(ackedLsn)}`);
    assert.ok(flushLsn >= recoveredLsn, `flush_lsn ${status.flushLsn} went below the previous recovery point ${formatLsn(recoveredLsn)}`);
    assert.ok(recordEnds.has(flushLsn), `recovered flush_lsn ${status.flushLsn} is a record end`);
    assertSameWal(await readTimelineWal(dir, START_LSN, flushLsn, SEGMENT_BYTES), walRange(source, START_LSN, flushLsn), START_LSN, `WAL up to the recovered flush_lsn (trial ${trial})`);
    return flushLsn;
  }
});
