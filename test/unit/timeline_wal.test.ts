/**
 * TimelineWal with the real writer pool and real files: group commit, record-aligned flush_lsn, ring
 * backpressure, corruption handling (nothing after the last good record kept) and truncation.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { StateBlock } from '../../src/ingest/state_block.js';
import { LAZY_FILL_MIN_BATCH_BYTES } from '../../src/ingest/segment_preparer.js';
import { TimelineWal } from '../../src/ingest/timeline_wal.js';
import { createWriterPool, type WriterPool } from '../../src/ingest/writer_pool.js';
import type { WriteResult } from '../../src/ingest/writer_protocol.js';
import { segmentPath } from '../../src/storage/layout.js';
import { StorageIoError, WalCorruptionError } from '../../src/errors.js';
import { segmentNumber, segmentOffsetBytes, type Lsn } from '../../src/wal/lsn.js';
import { decodePageHeader } from '../../src/wal/page.js';
import { damageRecordNear, messageWal, type MessageWal } from '../harness/message_wal.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';
import { OVERLAP_VERIFY_MIN_BYTES } from '../../workers/wal_writer.js';

const SEGMENT_BYTES = 1024 * 1024;
const PG_VERSION = 150008;
const START_LSN: Lsn = 0x100_0000n + 40n; // just after the long header of segment 16
const SYSTEM_ID = 7_300_000_000_000_000_001n;

let pool: WriterPool;
const opened: TimelineWal[] = [];
before(() => {
  pool = createWriterPool(2);
});
after(async () => {
  // As the registry does at shutdown: no task (a segment preparation, say) may outlive the pool.
  for (const wal of opened) await wal.quiesce(new AbortController().signal);
  await pool.close();
});

interface Harness {
  wal: TimelineWal;
  dir: string;
  batches: number[];
}

async function openWal(ringSizeBytes = 4 * 1024 * 1024, ringReleaseDelayMs = 0): Promise<Harness> {
  const dir = await makeTempDir('timeline-wal');
  const batches: number[] = [];
  const wal = new TimelineWal(
    { dir, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, ringSizeBytes, ringReleaseDelayMs, noSync: false, pool, state: new StateBlock(), onBatch: (bytes: number, _result: WriteResult) => batches.push(bytes) },
    0n,
  );
  opened.push(wal);
  await wal.truncate(START_LSN, new AbortController().signal);
  return { wal, dir, batches };
}

const buildWal = (count: number, payloadBytes: number): MessageWal => messageWal({ startLsn: START_LSN, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, count, payloadBytes });

const signal = (): AbortSignal => new AbortController().signal;

describe('TimelineWal', () => {
  test('acknowledges only complete records, and every byte lands in the segment files', async () => {
    const { wal, dir } = await openWal();
    const { bytes, ends } = buildWal(400, 3000); // crosses into a second 1 MiB segment
    const half = 1000; // cut inside the first record
    assert.equal(wal.tryAppend(START_LSN, bytes.subarray(0, half)), true);
    await wal.flushAll(signal());
    assert.equal(wal.flushLsn, START_LSN, 'no record is complete yet');
    assert.equal(wal.tryAppend(START_LSN + BigInt(half), bytes.subarray(half)), true);
    await wal.flushAll(signal());
    assert.equal(wal.flushLsn, ends.at(-1));
    const first = readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, false));
    const offset = segmentOffsetBytes(START_LSN, SEGMENT_BYTES);
    assert.deepEqual(first.subarray(offset), Buffer.from(bytes.subarray(0, SEGMENT_BYTES - offset)));
    const second = readFileSync(segmentPath(dir, 17n, SEGMENT_BYTES, true));
    assert.deepEqual(second.subarray(0, bytes.length - (SEGMENT_BYTES - offset)), Buffer.from(bytes.subarray(SEGMENT_BYTES - offset)));
  });

  test('after small batches the next segment is prepared zero-filled, after a large one sparse', async () => {
    const { wal, dir } = await openWal();
    const { bytes, ends } = buildWal(1800, 3000); // ~5.3 MiB: segments 16..21
    const allocated = (segno: bigint): number => statSync(segmentPath(dir, segno, SEGMENT_BYTES, true)).blocks * 512;
    // Small batches (one 64 KiB append durable before the next) into segment 17: 18 is prepared with zeros.
    let at = 0;
    while (segmentNumber(START_LSN + BigInt(at), SEGMENT_BYTES) < 17n) {
      const piece = bytes.subarray(at, at + 64 * 1024);
      assert.equal(wal.tryAppend(START_LSN + BigInt(at), piece), true);
      await wal.flushAll(signal());
      at += piece.length;
    }
    await wal.quiesce(signal());
    assert.ok(allocated(18n) >= SEGMENT_BYTES, 'segment 18: zero blocks');
    // One large batch from segment 17 into 20: 21 is prepared sparse.
    const large = bytes.subarray(at, at + 3 * SEGMENT_BYTES);
    assert.ok(large.length >= LAZY_FILL_MIN_BATCH_BYTES);
    assert.equal(wal.tryAppend(START_LSN + BigInt(at), large), true);
    at += large.length;
    await wal.flushAll(signal());
    await wal.quiesce(signal());
    const lastSegno = segmentNumber(START_LSN + BigInt(at) - 1n, SEGMENT_BYTES);
    assert.ok(allocated(lastSegno + 1n) < SEGMENT_BYTES / 2, `segment ${lastSegno + 1n}: sparse`);
    assert.ok(readFileSync(segmentPath(dir, lastSegno + 1n, SEGMENT_BYTES, true)).every((byte) => byte === 0), 'and reads as zeros');
    // WAL written into the zero-filled, sparse and fallback files is all there.
    assert.equal(wal.tryAppend(START_LSN + BigInt(at), bytes.subarray(at)), true);
    await wal.flushAll(signal());
    assert.equal(wal.flushLsn, ends.at(-1));
    const endLsn = START_LSN + BigInt(bytes.length);
    for (let segno = 17n; segno <= segmentNumber(endLsn - 1n, SEGMENT_BYTES); segno++) {
      const startLsn = segno * BigInt(SEGMENT_BYTES);
      const complete = segmentPath(dir, segno, SEGMENT_BYTES, false);
      const file = readFileSync(existsSync(complete) ? complete : segmentPath(dir, segno, SEGMENT_BYTES, true));
      const expected = bytes.subarray(Number(startLsn - START_LSN), Number(startLsn - START_LSN) + SEGMENT_BYTES);
      assert.deepEqual(file.subarray(0, expected.length), Buffer.from(expected), `segment ${segno}`);
      assert.ok(file.subarray(expected.length).every((byte) => byte === 0), `segment ${segno}: zeros after the WAL`);
    }
  });

  test('groups appends that arrive while a write is in flight into one batch', async () => {
    const { wal, batches } = await openWal();
    const { bytes, ends } = buildWal(2000, 100);
    const pieceBytes = 128;
    let lsn = START_LSN;
    for (let at = 0; at < bytes.length; at += pieceBytes) {
      const piece = bytes.subarray(at, Math.min(bytes.length, at + pieceBytes));
      assert.equal(wal.tryAppend(lsn, piece), true);
      lsn += BigInt(piece.length);
    }
    await wal.flushAll(signal());
    assert.equal(wal.flushLsn, ends.at(-1));
    const appends = Math.ceil(bytes.length / pieceBytes);
    assert.ok(batches.length < appends / 10, `${batches.length} batches for ${appends} appends`);
  });

  test('a full ring refuses tryAppend and append() waits for space', async () => {
    const ringBytes = 2 * 1024 * 1024;
    const { wal } = await openWal(ringBytes);
    const { bytes, ends } = buildWal(1400, 3000); // about 4 MiB: twice the ring
    let lsn = START_LSN;
    let refused = 0;
    for (let at = 0; at < bytes.length; at += 128 * 1024) {
      const piece = bytes.subarray(at, Math.min(bytes.length, at + 128 * 1024));
      if (!wal.tryAppend(lsn, piece)) {
        refused += 1;
        await wal.append(lsn, piece, signal());
      }
      lsn += BigInt(piece.length);
      assert.ok(wal.writeLsn - wal.syncedLsn <= BigInt(ringBytes), 'never more than the ring holds');
    }
    await wal.flushAll(signal());
    assert.ok(refused > 0, 'the ring filled up at least once');
    assert.equal(wal.flushLsn, ends.at(-1));
  });

  test('releasing the ring waits until everything in it is durable; an append cancels it; a new ring holds nothing older', async () => {
    const { wal } = await openWal();
    const { bytes, ends } = buildWal(600, 3000); // ~1.8 MiB
    const out = new Uint8Array(1000);
    const half = 300_000;
    assert.equal(wal.copyFromRing(START_LSN, 1000, out), false, 'no ring before the first append');
    assert.equal(wal.tryAppend(START_LSN, bytes.subarray(0, half)), true);
    assert.equal(wal.copyFromRing(START_LSN, 1000, out), true);
    // Released while bytes in it are not durable: the ring stays until they are, then goes.
    wal.releaseRing();
    assert.equal(wal.copyFromRing(START_LSN, 1000, out), true, 'not while bytes in it are not durable');
    await wal.flushAll(signal());
    assert.equal(wal.copyFromRing(START_LSN, 1000, out), false, 'released: readers go to the files');
    assert.equal(wal.syncedLsn, START_LSN + BigInt(half));
    // The next append makes a new ring, which holds nothing from before it; a later append cancels a release.
    assert.equal(wal.tryAppend(START_LSN + BigInt(half), bytes.subarray(half, half + 1000)), true);
    assert.equal(wal.copyFromRing(START_LSN + BigInt(half) - 1000n, 1000, out), false, 'a new ring holds nothing older');
    wal.releaseRing();
    assert.equal(wal.tryAppend(START_LSN + BigInt(half + 1000), bytes.subarray(half + 1000)), true, 'an append cancels the release');
    await wal.flushAll(signal());
    assert.equal(wal.copyFromRing(START_LSN + BigInt(half), 1000, out), true, 'kept: a proposer is appending again');
    assert.deepEqual(out, bytes.subarray(half, half + 1000));
    assert.equal(wal.flushLsn, ends.at(-1));
    // Released with nothing in flight: at once.
    wal.releaseRing();
    assert.equal(wal.copyFromRing(START_LSN + BigInt(half), 1000, out), false);
  });

  test('with a release delay, an append within it keeps the ring; after it the ring goes', async () => {
    const { wal } = await openWal(4 * 1024 * 1024, 100);
    const { bytes } = buildWal(100, 3000);
    const out = new Uint8Array(1000);
    assert.equal(wal.tryAppend(START_LSN, bytes.subarray(0, 100_000)), true);
    await wal.flushAll(signal());
    wal.releaseRing();
    assert.equal(wal.copyFromRing(START_LSN, 1000, out), true, 'kept during the delay, though durable');
    // A proposer came back within the delay: its append cancels the release, and the ring is never dropped.
    assert.equal(wal.tryAppend(START_LSN + 100_000n, bytes.subarray(100_000, 200_000)), true);
    await wal.flushAll(signal());
    await sleep(300); // a negative (no release happens) can only be shown by letting the delay pass, three times over
    assert.equal(wal.copyFromRing(START_LSN, 1000, out), true, 'the cancelled release never happens');
    wal.releaseRing();
    await waitFor(() => !wal.copyFromRing(START_LSN, 1000, out), { what: 'the ring to be released after the delay' });
  });

  test('corrupt WAL: nothing after the last good record is acknowledged or kept, until a truncation', async () => {
    const { wal, dir } = await openWal();
    const { bytes, ends } = buildWal(50, 500);
    const bad = bytes.slice();
    const victim = 20; // flip a byte inside the body of record 21 (it starts at ends[19])
    const victimOffset = Number(ends[victim - 1]! - START_LSN) + 100;
    bad[victimOffset] = bad[victimOffset]! ^ 0xff;
    assert.equal(wal.tryAppend(START_LSN, bad), true);
    await wal.flushAll(signal()); // resolves once the failure is handled: a vote may still flush and go on
    const failure = wal.failure.value;
    assert.ok(failure instanceof WalCorruptionError && failure.lsn === ends[victim - 1], 'the failure names the bad record');
    assert.equal(wal.flushLsn, ends[victim - 1]);
    assert.equal(wal.writeLsn, ends[victim - 1]);
    assert.throws(() => wal.tryAppend(wal.writeLsn, bytes.subarray(0, 8)), WalCorruptionError);
    await wal.quiesce(signal());
    const file = readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, true));
    const goodEnd = segmentOffsetBytes(ends[victim - 1]!, SEGMENT_BYTES);
    assert.deepEqual(file.subarray(segmentOffsetBytes(START_LSN, SEGMENT_BYTES), goodEnd), Buffer.from(bytes.subarray(0, goodEnd - segmentOffsetBytes(START_LSN, SEGMENT_BYTES))));
    assert.ok(file.subarray(goodEnd).every((byte) => byte === 0), 'the bad record and everything after it are zeroed');
    await wal.truncate(ends[victim - 1]!, signal());
    assert.equal(wal.failure.value, null);
    const rest = bytes.subarray(Number(ends[victim - 1]! - START_LSN));
    assert.equal(wal.tryAppend(ends[victim - 1]!, rest), true);
    await wal.flushAll(signal());
    assert.equal(wal.flushLsn, ends.at(-1));
  });

  // A batch this large is written before it is verified (workers/wal_writer.ts writeThenVerify); what is
  // acknowledged, kept and completed must be exactly what the verify-first path gives.
  for (const victimSegno of [16n, 17n]) {
    test(`corrupt record in segment ${victimSegno} of a large batch: the same cut, and only verified segments complete`, async () => {
      const { wal, dir, batches } = await openWal();
      const source = buildWal(500, 3000); // ~1.5 MiB: the rest of segment 16 and half of 17
      const { bytes, ends } = source;
      assert.ok(bytes.length >= OVERLAP_VERIFY_MIN_BYTES);
      // The bad record starts about 200 KB before the end of segment 16, or about 200 KB into segment 17.
      const { bad, goodEndLsn } = damageRecordNear(source, START_LSN, 17n * BigInt(SEGMENT_BYTES) + (victimSegno === 16n ? -200_000n : 200_000n));
      assert.equal(wal.tryAppend(START_LSN, bad), true);
      await wal.flushAll(signal());
      assert.equal(batches[0], bad.length, 'one batch, large enough to be verified while it syncs');
      const failure = wal.failure.value;
      assert.ok(failure instanceof WalCorruptionError && failure.lsn === goodEndLsn, 'the failure names the bad record');
      assert.equal(wal.flushLsn, goodEndLsn);
      await wal.quiesce(signal());
      const startOffset = segmentOffsetBytes(START_LSN, SEGMENT_BYTES);
      if (victimSegno === 16n) {
        assert.equal(existsSync(segmentPath(dir, 16n, SEGMENT_BYTES, false)), false, 'a segment holding the bad record is not completed');
        assert.equal(existsSync(segmentPath(dir, 17n, SEGMENT_BYTES, true)) && readFileSync(segmentPath(dir, 17n, SEGMENT_BYTES, true)).some((byte) => byte !== 0), false, 'nothing after the cut is kept');
        const file = readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, true));
        const goodEnd = segmentOffsetBytes(goodEndLsn, SEGMENT_BYTES);
        assert.deepEqual(file.subarray(startOffset, goodEnd), Buffer.from(bytes.subarray(0, goodEnd - startOffset)));
        assert.ok(file.subarray(goodEnd).every((byte) => byte === 0), 'the bad record and everything after it are zeroed');
      } else {
        const first = readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, false)); // verified to its end: completed
        assert.deepEqual(first.subarray(startOffset), Buffer.from(bytes.subarray(0, SEGMENT_BYTES - startOffset)));
        const second = readFileSync(segmentPath(dir, 17n, SEGMENT_BYTES, true));
        const goodEnd = segmentOffsetBytes(goodEndLsn, SEGMENT_BYTES);
        const secondStart = SEGMENT_BYTES - startOffset;
        assert.deepEqual(second.subarray(0, goodEnd), Buffer.from(bytes.subarray(secondStart, secondStart + goodEnd)));
        assert.ok(second.subarray(goodEnd).every((byte) => byte === 0), 'the bad record and everything after it are zeroed');
      }
      await wal.truncate(goodEndLsn, signal());
      assert.equal(wal.tryAppend(goodEndLsn, bytes.subarray(Number(goodEndLsn - START_LSN))), true);
      await wal.flushAll(signal());
      assert.equal(wal.flushLsn, ends.at(-1));
    });
  }
});

describe('recovery scan', () => {
  test('from a commit_lsn where no record can start: a clear failure (the timeline is broken), not a throw that stops the node', async () => {
    const dir = await makeTempDir('timeline-scan-start');
    const result = await pool.scan({ kind: 'scan', startLsn: 0x100_0003n, pgVersion: PG_VERSION, dir, segmentSizeBytes: SEGMENT_BYTES, noSync: false });
    assert.deepEqual(result, { ok: false, code: 'SK_WAL_CORRUPTION', detail: 'commit_lsn 0/1000003 is not 8-byte aligned: no record starts there' });
  });

  /** The kernel's count of dirty page-cache bytes, machine wide (/proc/meminfo is in KiB). */
  const dirtyBytes = (): number => Number(/^Dirty:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;

  test('syncs every segment it reads before it trusts it: bytes a killed writer left unsynced do not count until durable', async () => {
    // What a writer killed between pwrite and fdatasync leaves: WAL in segment files, only in the page cache.
    // The scan's end becomes flush_lsn (shown in votes, able to raise commit_lsn); a power loss after it
    // must not take those bytes away, so the scan syncs each segment. Observed as the page cache's dirty
    // bytes: 40 MiB written without a sync stay dirty for ~30 s (the kernel's writeback age) unless synced.
    const segmentBytes = 16 * 1024 * 1024;
    const startLsn = BigInt(segmentBytes) + 40n;
    const dir = await makeTempDir('timeline-scan');
    const { bytes, ends } = messageWal({ startLsn, segmentSizeBytes: segmentBytes, pgVersion: PG_VERSION, count: 5000, payloadBytes: 8000 });
    const image = new Uint8Array(3 * segmentBytes);
    image.set(bytes, 40);
    for (let segment = 0; segment < 3; segment += 1) {
      writeFileSync(segmentPath(dir, 1n + BigInt(segment), segmentBytes, segment === 2), image.subarray(segment * segmentBytes, (segment + 1) * segmentBytes));
    }
    const dirtyBefore = dirtyBytes();
    const result = await pool.scan({ kind: 'scan', startLsn, pgVersion: PG_VERSION, dir, segmentSizeBytes: segmentBytes, noSync: false });
    assert.ok(result.ok);
    assert.equal(result.endLsn, ends.at(-1));
    const synced = dirtyBefore - dirtyBytes();
    assert.ok(synced >= bytes.length * 0.75, `the scan synced the segments (${synced} of ${bytes.length} dirty bytes written back)`);
  });
});

describe('a truncation that fails', () => {
  test('claims no WAL past the cut, and nothing is appended until a truncation succeeds', async () => {
    // A disk error can stop a cut part-way, after later segments were deleted. A real disk will not fail on
    // cue, so a writer pool that writes nothing and fails the first cut stands in for it.
    const SEGMENT = 1024 * 1024;
    const startLsn = 0x100_0000n + 40n;
    const cuts: boolean[] = [true, false, true]; // the initial cut, the failing one, the retry
    const fakePool: WriterPool = {
      write: async (task) => ({ ok: true, decoder: task.decoder, recordEndLsn: task.endLsn, completedSegments: 0, timings: { decodeMs: 0, writeMs: 0, fsyncMs: 0 } }),
      prepare: async () => ({ ok: true, prepared: 'zeroed' }),
      run: async () => (cuts.shift() ? { ok: true } : { ok: false, code: 'SK_STORAGE_IO', detail: 'unlink: input/output error' }),
      scan: async () => ({ ok: true, endLsn: 0n, detail: '' }),
      close: async () => undefined,
    };
    const state = new StateBlock();
    const wal = new TimelineWal({ dir: await makeTempDir('timeline-wal-cut'), segmentSizeBytes: SEGMENT, pgVersion: PG_VERSION, ringSizeBytes: 256 * 1024, noSync: true, pool: fakePool, state }, 0n);
    await wal.truncate(startLsn, signal());
    assert.equal(wal.tryAppend(startLsn, new Uint8Array(64 * 1024)), true);
    await wal.flushAll(signal());
    const endLsn = startLsn + 64n * 1024n;
    assert.equal(wal.flushLsn, endLsn);
    assert.equal(state.get('syncedLsn'), endLsn, 'published for WAL removal, which keeps the segment holding it');
    const cutLsn = startLsn + 1024n;
    await assert.rejects(wal.truncate(cutLsn, signal()), StorageIoError);
    assert.equal(wal.flushLsn, cutLsn, 'no vote claims WAL the failed cut may have deleted');
    assert.equal(wal.writeLsn, cutLsn);
    assert.equal(state.get('flushLsn'), cutLsn, 'the managers see the same');
    assert.equal(state.get('syncedLsn'), cutLsn);
    assert.equal(wal.truncationPending, true, 'old WAL may be left after the cut: no appends');
    assert.equal(wal.copyFromRing(startLsn, 1024, new Uint8Array(1024)), false, 'the ring serves nothing from before the cut');
    await wal.truncate(cutLsn, signal());
    assert.equal(wal.truncationPending, false);
    assert.equal(wal.tryAppend(cutLsn, new Uint8Array(1024)), true);
  });
});

describe('an election that is not recorded', () => {
  test('after a first one the timeline holds no WAL again, and the next first election writes its own first segment', async () => {
    const dir = await makeTempDir('timeline-wal-first');
    const state = new StateBlock();
    const wal = new TimelineWal({ dir, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, ringSizeBytes: 256 * 1024, noSync: false, pool, state }, 0n);
    opened.push(wal);
    const firstTryLsn = START_LSN + BigInt(SEGMENT_BYTES); // a segment later than the start that finally wins
    await wal.initializeFirstSegment(firstTryLsn, SYSTEM_ID, signal());
    await wal.truncate(firstTryLsn, signal());
    wal.electionNotRecorded(true); // its term history could not be persisted
    assert.deepEqual([wal.writeLsn, wal.flushLsn, state.get('flushLsn'), state.get('syncedLsn')], [0n, 0n, 0n, 0n]);
    assert.equal(wal.truncationPending, true);

    await wal.initializeFirstSegment(START_LSN, SYSTEM_ID, signal());
    await wal.truncate(START_LSN, signal());
    const { bytes, ends } = buildWal(20, 1000);
    assert.equal(wal.tryAppend(START_LSN, bytes), true);
    await wal.flushAll(signal());
    assert.equal(wal.flushLsn, ends.at(-1));
    const header = decodePageHeader(readFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, true)));
    assert.equal(header.pageAddrLsn, 0x100_0000n, 'segment 16 begins with its own long page header');
    assert.equal(header.long?.systemId, SYSTEM_ID);
    // Segment 17 may exist again, prepared ahead (zeros); the first try's header must be gone from it.
    const next = segmentPath(dir, 17n, SEGMENT_BYTES, true);
    if (existsSync(next)) assert.equal(readFileSync(next).subarray(0, 40).every((byte) => byte === 0), true, 'the first try\'s segment is cut away');
  });
});
