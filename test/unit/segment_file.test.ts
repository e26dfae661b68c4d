import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, beforeEach, describe, test } from 'node:test';
import { DiskFullError, NotFoundError, StorageIoError } from '../../src/errors.js';
import { ioErrorFromData, segmentPath, storageError, toIoErrorData } from '../../src/storage/layout.js';
import {
  completeSegmentSync,
  listSegmentsSync,
  openSegmentForWrite,
  prepareSegment,
  truncateWalSync,
  writeInitialSegmentSync,
} from '../../src/storage/segment_file.js';
import { readWal, readWalSync } from '../../src/storage/segment_read.js';
import { SegmentWriter } from '../../src/storage/segment_writer.js';
import { AssertionError } from '../../src/sync/assert.js';
import { initialSegmentImage } from '../../src/wal/segment_image.js';
import { closeSync, openSync, writeSync } from 'node:fs';
import { NATIVE_ZERO_RANGE } from '../../src/native_fs.js';

const SEG = 1024 * 1024; // the smallest legal segment keeps the tests fast
const SYNC = { noSync: false };
const NOSYNC = { noSync: true };
const dirs: string[] = [];
let dir = '';

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sk-segments-'));
  dirs.push(dir);
});
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const names = (): string[] => readdirSync(dir).sort();
const partial = (segno: bigint): string => segmentPath(dir, segno, SEG, true);
const complete = (segno: bigint): string => segmentPath(dir, segno, SEG, false);
const pattern = (length: number, seed: number): Uint8Array => Uint8Array.from({ length }, (_, i) => (i * 31 + seed) % 251 || 1);

/** Whether the native ZERO_RANGE is built and the file system under `directory` supports it (tmpfs does not). */
function zeroRangeWorksIn(directory: string): boolean {
  if (NATIVE_ZERO_RANGE === null) return false;
  const probe = join(directory, 'zero-range-probe');
  writeFileSync(probe, pattern(8192, 3));
  const fd = openSync(probe, 'r+');
  try {
    return NATIVE_ZERO_RANGE(fd, 0, 8192);
  } finally {
    closeSync(fd);
    rmSync(probe);
  }
}
const isAllZero = (bytes: Uint8Array): boolean => bytes.every((b) => b === 0);

describe('segment creation', () => {
  test('prepareSegment creates a full-size zero-filled .partial with real blocks, and is idempotent', () => {
    assert.equal(prepareSegment(dir, 3n, SEG, 'zeros', SYNC), 'zeroed');
    assert.deepEqual(names(), ['000000010000000000000003.partial']);
    const stat = statSync(partial(3n));
    assert.equal(stat.size, SEG);
    assert.ok(stat.blocks * 512 >= SEG, 'blocks are allocated, not sparse');
    assert.ok(isAllZero(readFileSync(partial(3n))));
    writeFileSync(partial(3n), pattern(SEG, 1)); // prepared again, it must not be touched
    assert.equal(prepareSegment(dir, 3n, SEG, 'zeros', SYNC), 'existing');
    assert.deepEqual(readFileSync(partial(3n)), Buffer.from(pattern(SEG, 1)));
  });

  test('prepareSegment does nothing when the segment is complete, and removes a stale temp file', () => {
    writeFileSync(complete(4n), pattern(SEG, 2));
    assert.equal(prepareSegment(dir, 4n, SEG, 'zeros', NOSYNC), 'existing');
    writeFileSync(join(dir, '000000010000000000000005.partial.tmp'), 'half-made');
    assert.equal(prepareSegment(dir, 5n, SEG, 'zeros', NOSYNC), 'zeroed');
    assert.deepEqual(names(), ['000000010000000000000004', '000000010000000000000005.partial']);
  });

  test('prepareSegment writes zeros over a recycled segment instead of allocating a new file', () => {
    const recycled = join(dir, 'recycled-000000010000000000000001');
    writeFileSync(recycled, pattern(SEG, 3));
    const inode = statSync(recycled).ino;
    assert.equal(prepareSegment(dir, 7n, SEG, 'zeros', SYNC), 'recycled');
    assert.deepEqual(names(), ['000000010000000000000007.partial'], 'the recycled file was taken');
    assert.equal(statSync(partial(7n)).ino, inode, 'the same file, renamed');
    assert.equal(statSync(partial(7n)).size, SEG);
    assert.ok(isAllZero(readFileSync(partial(7n))), 'none of the old WAL shows');
    // None left: the next one is a new file.
    assert.equal(prepareSegment(dir, 8n, SEG, 'zeros', NOSYNC), 'zeroed');
    assert.notEqual(statSync(partial(8n)).ino, inode);
    assert.ok(isAllZero(readFileSync(partial(8n))));
  });

  test('prepareSegment lazy: a new file is a full-length .partial without blocks that reads as zeros', () => {
    assert.equal(prepareSegment(dir, 3n, SEG, 'lazy', SYNC), 'sparse');
    const stat = statSync(partial(3n));
    assert.equal(stat.size, SEG);
    assert.ok(stat.blocks * 512 < SEG / 2, `no blocks allocated (${stat.blocks} blocks)`);
    assert.ok(isAllZero(readFileSync(partial(3n))));
  });

  test('prepareSegment lazy: a recycled file keeps its blocks, marked unwritten where the file system can, and reads as zeros', () => {
    const recycled = join(dir, 'recycled-000000010000000000000001');
    writeFileSync(recycled, pattern(SEG, 6));
    const inode = statSync(recycled).ino;
    const expected = zeroRangeWorksIn(dir) ? 'unwritten' : 'recycled';
    assert.equal(prepareSegment(dir, 4n, SEG, 'lazy', SYNC), expected);
    const stat = statSync(partial(4n));
    assert.equal(stat.ino, inode, 'the recycled file, renamed');
    assert.equal(stat.size, SEG);
    assert.ok(stat.blocks * 512 >= SEG, `its blocks stay allocated (${stat.blocks} blocks)`);
    assert.ok(isAllZero(readFileSync(partial(4n))), 'none of the old WAL shows');
    // Written through like any segment.
    const fd = openSegmentForWrite(dir, 4n, SEG, SYNC);
    try {
      writeSync(fd, pattern(4096, 9), 0, 4096, 8192);
    } finally {
      closeSync(fd);
    }
    const bytes = readFileSync(partial(4n));
    assert.deepEqual(bytes.subarray(8192, 8192 + 4096), Buffer.from(pattern(4096, 9)));
    assert.ok(isAllZero(bytes.subarray(0, 8192)) && isAllZero(bytes.subarray(8192 + 4096)));
  });

  test('a recycled file of another length is cut or grown to the segment size', () => {
    writeFileSync(join(dir, 'recycled-000000010000000000000001'), pattern(2 * SEG, 4));
    assert.equal(prepareSegment(dir, 3n, SEG, 'zeros', NOSYNC), 'recycled');
    assert.equal(statSync(partial(3n)).size, SEG);
    assert.ok(isAllZero(readFileSync(partial(3n))));
    writeFileSync(join(dir, 'recycled-000000010000000000000002'), pattern(SEG / 4, 5));
    assert.equal(prepareSegment(dir, 4n, SEG, 'zeros', NOSYNC), 'recycled');
    assert.equal(statSync(partial(4n)).size, SEG);
    assert.ok(isAllZero(readFileSync(partial(4n))));
    assert.deepEqual(names(), ['000000010000000000000003.partial', '000000010000000000000004.partial']);
  });

  test('openSegmentForWrite without a prepared file creates a full-size .partial', () => {
    const fd = openSegmentForWrite(dir, 9n, SEG, SYNC);
    closeSync(fd);
    assert.deepEqual(names(), ['000000010000000000000009.partial']);
    assert.equal(statSync(partial(9n)).size, SEG);
    assert.ok(isAllZero(readFileSync(partial(9n))));
  });

  test('opening a completed segment for writing is a bug', () => {
    writeFileSync(complete(2n), new Uint8Array(SEG));
    assert.throws(() => openSegmentForWrite(dir, 2n, SEG, NOSYNC), AssertionError);
  });
});

describe('SegmentWriter', () => {
  test('a write spanning a segment boundary lands in both files at the right offsets', () => {
    const writer = new SegmentWriter(dir, SEG, SYNC);
    prepareSegment(dir, 2n, SEG, 'zeros', SYNC);
    const start = 2n * BigInt(SEG) + BigInt(SEG - 1000);
    // The ring wrapped: two views of one SharedArrayBuffer, the second piece continuing the first.
    const ring = new Uint8Array(new SharedArrayBuffer(2048));
    ring.set(pattern(900, 4), 0);
    ring.set(pattern(600, 3), 2048 - 600);
    const first = ring.subarray(2048 - 600);
    const second = ring.subarray(0, 900);
    const completed = writer.writeWalAt(start, first, second);
    assert.deepEqual(completed, [2n]);
    assert.equal(writer.openSegno, 3n);
    assert.equal(writer.flush(), true);
    assert.equal(writer.flush(), false, 'nothing new to sync');
    const all = Buffer.concat([first, second]);
    assert.deepEqual(readFileSync(partial(2n)).subarray(SEG - 1000), all.subarray(0, 1000));
    assert.deepEqual(readFileSync(partial(3n)).subarray(0, 500), all.subarray(1000));
    assert.ok(isAllZero(readFileSync(partial(3n)).subarray(500)));
    assert.deepEqual(readWalSync(dir, start, all.length, SEG), new Uint8Array(all));
    writer.completeSegment(2n);
    assert.deepEqual(names(), ['000000010000000000000002', '000000010000000000000003.partial']);
    assert.deepEqual(readWalSync(dir, start, all.length, SEG), new Uint8Array(all));
    writer.close();
  });

  test('consecutive writes reuse the open segment and reading back returns them', async () => {
    const writer = new SegmentWriter(dir, SEG, NOSYNC);
    const base = 7n * BigInt(SEG);
    let lsn = base + 40n;
    const written: Uint8Array[] = [];
    for (let i = 0; i < 10; i++) {
      const piece = pattern(1000 + i, i);
      assert.deepEqual(writer.writeWalAt(lsn, piece), []);
      written.push(piece);
      lsn += BigInt(piece.length);
    }
    writer.flush();
    writer.close();
    const expected = new Uint8Array(Buffer.concat(written));
    assert.deepEqual(readWalSync(dir, base + 40n, expected.length, SEG), expected);
    assert.deepEqual(await readWal(dir, base + 40n, expected.length, SEG), expected);
  });

  test('a write that covers several whole segments reports each completed one', () => {
    const writer = new SegmentWriter(dir, SEG, NOSYNC);
    const bytes = pattern(2 * SEG + 10, 5);
    assert.deepEqual(writer.writeWalAt(BigInt(SEG), bytes), [1n, 2n]);
    for (const segno of [1n, 2n]) writer.completeSegment(segno);
    writer.flush();
    writer.close();
    assert.deepEqual(names(), ['000000010000000000000001', '000000010000000000000002', '000000010000000000000003.partial']);
    assert.deepEqual(readWalSync(dir, BigInt(SEG), bytes.length, SEG), bytes);
  });

  test('completeSegmentSync completes a segment no writer holds', () => {
    prepareSegment(dir, 4n, SEG, 'zeros', NOSYNC);
    completeSegmentSync(dir, 4n, SEG, SYNC);
    assert.deepEqual(names(), ['000000010000000000000004']);
  });
});

describe('truncation', () => {
  test('deletes later segments, zeroes the tail, and renames a complete segment back to .partial', () => {
    const writer = new SegmentWriter(dir, SEG, NOSYNC);
    const bytes = pattern(3 * SEG - 100, 6);
    const completed = writer.writeWalAt(BigInt(SEG), bytes);
    for (const segno of completed) writer.completeSegment(segno);
    prepareSegment(dir, 4n, SEG, 'zeros', NOSYNC);
    assert.deepEqual(names(), ['000000010000000000000001', '000000010000000000000002', '000000010000000000000003.partial', '000000010000000000000004.partial']);
    const at = 2n * BigInt(SEG) + 5000n;
    writer.truncate(at);
    assert.deepEqual(names(), ['000000010000000000000001', '000000010000000000000002.partial']);
    const segment = readFileSync(partial(2n));
    assert.equal(segment.length, SEG);
    assert.deepEqual(segment.subarray(0, 5000), Buffer.from(bytes.subarray(SEG, SEG + 5000)));
    assert.ok(isAllZero(segment.subarray(5000)));
    assert.deepEqual(readWalSync(dir, BigInt(SEG), SEG + 5000, SEG), bytes.subarray(0, SEG + 5000));
    // Writing resumes at the truncation point.
    assert.deepEqual(writer.writeWalAt(at, pattern(10, 7)), []);
    writer.close();
  });

  test('truncating at a point in a .partial segment keeps its name; a missing segment is created', () => {
    const writer = new SegmentWriter(dir, SEG, NOSYNC);
    writer.writeWalAt(5n * BigInt(SEG), pattern(4000, 8));
    writer.close();
    truncateWalSync(dir, 5n * BigInt(SEG) + 100n, SEG, SYNC);
    assert.deepEqual(names(), ['000000010000000000000005.partial']);
    assert.ok(isAllZero(readFileSync(partial(5n)).subarray(100)));
    truncateWalSync(dir, 4n * BigInt(SEG) + 64n, SEG, NOSYNC);
    assert.deepEqual(names(), ['000000010000000000000004.partial']);
    assert.equal(statSync(partial(4n)).size, SEG);
  });

  test('a .partial left below the truncation point by a crash before its rename is completed', () => {
    const writer = new SegmentWriter(dir, SEG, NOSYNC);
    const full = pattern(SEG, 3);
    writer.writeWalAt(2n * BigInt(SEG), full); // written to its end, but never completed (the crash)
    writer.writeWalAt(3n * BigInt(SEG), pattern(500, 4));
    writer.close();
    assert.deepEqual(names(), ['000000010000000000000002.partial', '000000010000000000000003.partial']);
    truncateWalSync(dir, 3n * BigInt(SEG) + 200n, SEG, SYNC);
    assert.deepEqual(names(), ['000000010000000000000002', '000000010000000000000003.partial']);
    assert.deepEqual(new Uint8Array(readFileSync(complete(2n))), full);
  });
});

describe('initial segment and reads', () => {
  test('writeInitialSegmentSync writes the image into the .partial of the segment holding the LSN', () => {
    const lsn = 3n * BigInt(SEG) + 0x128n;
    const image = initialSegmentImage({ lsn, segmentSizeBytes: SEG, systemId: 42n, pgVersion: 150_000 });
    writeInitialSegmentSync(dir, lsn, SEG, image, NOSYNC);
    assert.deepEqual(names(), ['000000010000000000000003.partial']);
    assert.deepEqual(new Uint8Array(readFileSync(partial(3n))), image);
    const wrong = initialSegmentImage({ lsn: 2n * BigInt(SEG), segmentSizeBytes: SEG, systemId: 42n, pgVersion: 150_000 });
    assert.throws(() => writeInitialSegmentSync(dir, lsn, SEG, wrong, NOSYNC), AssertionError);
  });

  test('reads prefer .partial over the complete name, and a missing segment is NotFoundError', async () => {
    writeFileSync(complete(6n), new Uint8Array(SEG).fill(1));
    assert.equal(readWalSync(dir, 6n * BigInt(SEG), 4, SEG)[0], 1);
    writeFileSync(partial(6n), new Uint8Array(SEG).fill(2));
    assert.equal(readWalSync(dir, 6n * BigInt(SEG), 4, SEG)[0], 2);
    assert.equal((await readWal(dir, 6n * BigInt(SEG), 4, SEG))[0], 2);
    assert.throws(() => readWalSync(dir, 7n * BigInt(SEG) - 2n, 4, SEG), NotFoundError);
    await assert.rejects(readWal(dir, 7n * BigInt(SEG) - 2n, 4, SEG), NotFoundError);
    writeFileSync(partial(8n), new Uint8Array(100));
    await assert.rejects(readWal(dir, 8n * BigInt(SEG) + 96n, 8, SEG), (error: unknown) => error instanceof StorageIoError && /shorter than 104 bytes/.test(error.message));
    rmSync(partial(8n));
    assert.deepEqual(listSegmentsSync(dir, SEG).map((e) => [e.segno, e.partial]), [
      [6n, true],
      [6n, false],
    ]);
  });

  test('a short segment file is a StorageIoError, not zeros', () => {
    writeFileSync(partial(8n), new Uint8Array(100));
    assert.throws(() => readWalSync(dir, 8n * BigInt(SEG), 200, SEG), StorageIoError);
  });

  test('fs errors map to DiskFullError / StorageIoError and travel as data', () => {
    const enospc = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    const full = storageError(enospc, 'write', '/x/seg');
    assert.ok(full instanceof DiskFullError);
    assert.equal(full.sqlState, '53100');
    assert.match(full.message, /\/x\/seg/);
    const eio = storageError(Object.assign(new Error('i/o'), { code: 'EIO' }), 'fdatasync', '/x/seg');
    assert.ok(eio instanceof StorageIoError);
    assert.deepEqual(toIoErrorData(full), { code: 'SK_DISK_FULL', detail: full.message });
    assert.deepEqual(toIoErrorData(enospc).code, 'SK_DISK_FULL');
    assert.ok(ioErrorFromData(toIoErrorData(eio)) instanceof StorageIoError);
    assert.throws(() => toIoErrorData(new AssertionError('bug')), AssertionError);
  });

  test('creating a segment in a missing directory is NotFoundError naming the path', () => {
    const gone = join(dir, 'gone');
    assert.throws(() => prepareSegment(gone, 1n, SEG, 'zeros', NOSYNC), (e: unknown) => e instanceof NotFoundError && e.message.includes(gone));
    assert.equal(existsSync(gone), false);
  });
});

describe('native zeroRange (fallocate FALLOC_FL_ZERO_RANGE)', { skip: NATIVE_ZERO_RANGE === null ? 'native/fs_calls is not built here' : false }, () => {
  const zeroRange = NATIVE_ZERO_RANGE!;

  test('zeros the range and nothing else, keeping size and blocks', { skip: process.platform !== 'linux' || !zeroRangeWorksIn(tmpdir()) ? 'no ZERO_RANGE on this file system' : false }, () => {
    const path = join(dir, 'file');
    const original = pattern(64 * 1024, 7);
    writeFileSync(path, original);
    const fd = openSync(path, 'r+');
    try {
      assert.equal(zeroRange(fd, 4096, 16 * 1024), true);
    } finally {
      closeSync(fd);
    }
    const bytes = readFileSync(path);
    assert.equal(bytes.length, original.length);
    assert.ok(isAllZero(bytes.subarray(4096, 4096 + 16 * 1024)));
    assert.deepEqual(bytes.subarray(0, 4096), Buffer.from(original.subarray(0, 4096)));
    assert.deepEqual(bytes.subarray(20 * 1024), Buffer.from(original.subarray(20 * 1024)));
    assert.ok(statSync(path).blocks * 512 >= original.length, 'blocks stay allocated');
  });

  test('a bad fd throws an Error with code EBADF; bad arguments throw a TypeError', () => {
    assert.throws(() => zeroRange(1_000_000, 0, 4096), (e: unknown) => e instanceof Error && (e as NodeJS.ErrnoException).code === 'EBADF' && /fallocate\(1000000, FALLOC_FL_ZERO_RANGE, 0, 4096\) failed/.test(e.message));
    assert.throws(() => zeroRange(-1, 0, 4096), TypeError);
    assert.throws(() => zeroRange(0, 0.5, 4096), TypeError);
    assert.throws(() => zeroRange(0, 0, 0), TypeError);
    assert.throws(() => (zeroRange as unknown as (fd: unknown) => boolean)('3'), TypeError);
  });

  test('a read-only fd is refused with an error, and the file is unchanged', () => {
    const path = join(dir, 'ro');
    writeFileSync(path, pattern(8192, 2));
    const fd = openSync(path, 'r');
    try {
      assert.throws(() => zeroRange(fd, 0, 8192), (e: unknown) => e instanceof Error && (e as NodeJS.ErrnoException).code === 'EBADF');
    } finally {
      closeSync(fd);
    }
    assert.deepEqual(readFileSync(path), Buffer.from(pattern(8192, 2)));
  });
});
