/**
 * What the ingest test files share (test/integration/ingest*.test.ts): the synthetic timeline's server
 * parameters and start LSN, a node started with fsync on, and checks on a timeline's files (segment names,
 * pg_waldump over the safekeeper's own segments).
 *
 * Design: synthetic WAL uses 1 MiB segments, so a few MiB cross several segment boundaries, and starts
 * mid-page on the first page of segment 1, as a compute's basebackup LSN does. Ingest nodes run with fsync
 * on (no --no-sync): these tests are about what is durable. Temp dirs come from tmp.ts, so the file's
 * teardown (teardown.ts) removes them.
 */
import assert from 'node:assert/strict';
import { segmentNumber, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { spawnNode, testNodeArgs, type NodeProcess } from './node_process.js';
import { pgWaldump, type WaldumpRecord } from './pg.js';
import type { TestProposerOptions } from './test_proposer.js';
import { copySegmentsForWaldump, segmentFilesWithRemote } from './timeline_wal.js';
import { makeTempDir } from './tmp.js';

/** The deadline of each ingest describe block. */
export const INGEST_TEST_TIMEOUT_MS = 60_000;
export const SYNTHETIC_SEGMENT_BYTES = 1 << 20;
export const SYNTHETIC_PG_VERSION = 150008;
export const SYNTHETIC_SYSTEM_ID = 7_350_000_000_000_000_001n;
/** The first synthetic segment: segment 1, like a fresh cluster. */
export const SYNTHETIC_BASE_LSN = segmentStartLsn(1n, SYNTHETIC_SEGMENT_BYTES);
/**
 * Synthetic timelines start mid-page on the first page of their segment, as a compute's basebackup LSN
 * does: the safekeeper's initial segment image then fakes a record ending there, which pg_waldump accepts.
 */
export const SYNTHETIC_START_LSN = SYNTHETIC_BASE_LSN + 0x128n;

/** The greeting's server parameters for synthetic WAL. */
export const syntheticServer = (): Pick<TestProposerOptions, 'pgVersion' | 'systemId' | 'walSegSizeBytes'> => ({ pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, walSegSizeBytes: SYNTHETIC_SEGMENT_BYTES });

/** Starts a node with fsync on (no --no-sync). If it dies on its own, its log goes to stderr, for the failure. */
export async function startFsyncNode(dataDir: string, extraArgs: readonly string[] = []): Promise<NodeProcess> {
  const node = await spawnNode(testNodeArgs(dataDir, extraArgs));
  node.process.once('exit', (code, signal) => {
    if (code !== 0 && signal === null) process.stderr.write(`safekeeper exited with code ${code}:\n${node.stderr().slice(-8000)}\n${node.stdout().slice(-8000)}\n`);
  });
  return node;
}

/** pg_waldump over the safekeeper's own segment files. */
export async function waldumpTimeline(dir: string, segmentSizeBytes: number, fromLsn: Lsn, toLsn: Lsn): Promise<WaldumpRecord[]> {
  const copy = makeTempDir('sk-ingest-waldump-');
  await copySegmentsForWaldump(dir, segmentSizeBytes, copy);
  return pgWaldump(copy, fromLsn, toLsn);
}

/**
 * Asserts only the segment holding `endLsn` (if `endLsn` is inside it) is `.partial`, and no segment is missing.
 * A complete segment may already be in the node's remote storage only: the node removes local WAL once it is
 * uploaded and committed (that copy counts, as it is complete by construction).
 */
export async function assertSegmentNames(dir: string, fromLsn: Lsn, endLsn: Lsn, segmentSizeBytes: number): Promise<void> {
  const files = await segmentFilesWithRemote(dir, segmentSizeBytes);
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
