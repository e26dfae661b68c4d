/**
 * The writer worker's write task, called directly (no pool): a small batch is verified before it is written,
 * a large one is written first and verified while it syncs. Both must acknowledge exactly the verified
 * records, and complete (rename) a segment only once its last byte is verified, since a crash may come
 * before the caller's cut of a corrupt tail.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { RingView } from '../../src/ingest/ring.js';
import type { WriteResult } from '../../src/ingest/writer_protocol.js';
import { segmentPath } from '../../src/storage/layout.js';
import { segmentOffsetBytes, type Lsn } from '../../src/wal/lsn.js';
import { initialDecoderState } from '../../src/wal/record_decoder.js';
import runTask, { OVERLAP_VERIFY_MIN_BYTES } from '../../workers/wal_writer.js';
import { damageRecordNear, messageWal, type MessageWal } from '../harness/message_wal.js';
import { makeTempDir } from '../harness/tmp.js';

const SEGMENT_BYTES = 1024 * 1024;
const PG_VERSION = 150008;
const START_LSN: Lsn = 16n * BigInt(SEGMENT_BYTES) + 40n; // just after the long header of segment 16

const buildWal = (count: number, payloadBytes: number): MessageWal => messageWal({ startLsn: START_LSN, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, count, payloadBytes });

/** Runs one write task over `bytes` placed in a fresh ring at START_LSN. */
async function writeTask(dir: string, bytes: Uint8Array): Promise<WriteResult> {
  const ring = RingView.allocate(4 * SEGMENT_BYTES);
  ring.write(START_LSN, bytes);
  const decoder = initialDecoderState({ startLsn: START_LSN, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION });
  const task = { kind: 'write', ring: ring.buffer, beginLsn: START_LSN, endLsn: START_LSN + BigInt(bytes.length), decoder, dir, segmentSizeBytes: SEGMENT_BYTES, noSync: false } as const;
  return (await runTask(task)) as WriteResult;
}

const startOffset = segmentOffsetBytes(START_LSN, SEGMENT_BYTES);

describe('write task', () => {
  for (const [label, count] of [['small batch (verify, then write)', 60], ['large batch (write, verify while syncing)', 500]] as const) {
    test(`${label}: clean WAL is acknowledged to its last record, and a filled segment completes`, async () => {
      const dir = makeTempDir('wal-writer-task');
      const { bytes, ends } = buildWal(count, 3000);
      assert.equal(bytes.length >= OVERLAP_VERIFY_MIN_BYTES, count === 500, 'the batch size picks the path');
      const result = await writeTask(dir, bytes);
      assert.ok(result.ok);
      assert.equal(result.recordEndLsn, ends.at(-1));
      const segmentsFilled = bytes.length > SEGMENT_BYTES - startOffset ? 1 : 0;
      assert.equal(result.completedSegments, segmentsFilled);
      const first = readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, segmentsFilled === 0));
      assert.deepEqual(first.subarray(startOffset, startOffset + Math.min(bytes.length, SEGMENT_BYTES - startOffset)), Buffer.from(bytes.subarray(0, SEGMENT_BYTES - startOffset)));
    });
  }

  test('small corrupt batch: only the verified prefix is written', async () => {
    const dir = makeTempDir('wal-writer-task');
    const wal = buildWal(60, 3000);
    const { bytes } = wal;
    const { bad, goodEndLsn } = damageRecordNear(wal, START_LSN, START_LSN + 90_000n);
    const result = await writeTask(dir, bad);
    assert.ok(!result.ok && result.corruption === 'crc_mismatch' && result.errorLsn === goodEndLsn && result.recordEndLsn === goodEndLsn);
    const file = readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, true));
    const goodEnd = segmentOffsetBytes(goodEndLsn, SEGMENT_BYTES);
    assert.deepEqual(file.subarray(startOffset, goodEnd), Buffer.from(bytes.subarray(0, goodEnd - startOffset)));
    assert.ok(file.subarray(goodEnd).every((byte) => byte === 0));
  });

  test('large batch, bad record in its first segment: that segment is not completed (the caller cuts the rest)', async () => {
    const dir = makeTempDir('wal-writer-task');
    const wal = buildWal(500, 3000);
    const { bytes } = wal;
    const { bad, goodEndLsn } = damageRecordNear(wal, START_LSN, 17n * BigInt(SEGMENT_BYTES) - 200_000n);
    const result = await writeTask(dir, bad);
    assert.ok(!result.ok && result.corruption === 'crc_mismatch' && result.errorLsn === goodEndLsn && result.recordEndLsn === goodEndLsn);
    assert.equal(existsSync(segmentPath(dir, 16n, SEGMENT_BYTES, false)), false, 'not renamed: it holds unverified bytes');
    const file = readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, true));
    const goodEnd = segmentOffsetBytes(goodEndLsn, SEGMENT_BYTES);
    assert.deepEqual(file.subarray(startOffset, goodEnd), Buffer.from(bytes.subarray(0, goodEnd - startOffset)), 'the verified prefix is there');
  });

  test('large batch, bad record in its second segment: the first, verified to its end, is completed', async () => {
    const dir = makeTempDir('wal-writer-task');
    const wal = buildWal(500, 3000);
    const { bytes } = wal;
    const { bad, goodEndLsn } = damageRecordNear(wal, START_LSN, 17n * BigInt(SEGMENT_BYTES) + 200_000n);
    const result = await writeTask(dir, bad);
    assert.ok(!result.ok && result.errorLsn === goodEndLsn && result.recordEndLsn === goodEndLsn);
    const first = readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, false));
    assert.deepEqual(first.subarray(startOffset), Buffer.from(bytes.subarray(0, SEGMENT_BYTES - startOffset)));
    assert.equal(existsSync(segmentPath(dir, 17n, SEGMENT_BYTES, false)), false);
  });
});
