/**
 * WAL segment files (storage reference §2): creating, completing, truncating them and writing the
 * initial segment image. Every function here is SYNCHRONOUS and meant for the Piscina writer workers,
 * where blocking is the job (async fs would queue on libuv's small process-wide pool). The steady write
 * path lives in segment_writer.ts, reads in segment_read.ts, and the error-mapped fs calls they all use
 * in segment_io.ts.
 *
 * Files: a segment being written is `<24 hex>.partial`; a completed one has no suffix; both always have
 * the full segment length, with a zero tail (PostgreSQL-compatible). New files are built at
 * `<name>.partial.tmp` and durably renamed into place, so a crash never leaves a short `.partial`.
 * `prepareSegment` builds the next file ahead of time. When WAL removal left a recycled segment
 * (`recycled-<name>`, `wal_recycle_segments`), it takes it; else it makes a new file. For a timeline writing
 * small batches it writes real zero blocks (over the recycled file's old bytes, or into the new file), so a
 * small append's pwrite + fdatasync only flushes data and never waits on the journal. For one writing large
 * batches it writes no zeros: the recycled file's blocks are marked unwritten (FALLOC_FL_ZERO_RANGE), or the
 * new file is sparse, which saves the device a zero byte per WAL byte (the caller chooses, see
 * `SegmentFill`).
 *
 * Invariants: at most one writer per timeline touches these files at a time (the DESIGN's one write task
 * per timeline); it is what makes temp names and the existence checks race-free. The coordinator thread
 * only renames segments below the one being written to recycled names (WAL removal) or deletes recycled
 * files (eviction); taking a recycled file is a rename, so losing that race just means taking another. A
 * completed segment is never opened for writing. `noSync` (tests and benchmarks only) skips every fsync and fdatasync.
 * Errors: fs failures become DiskFullError / StorageIoError / NotFoundError (layout.ts `storageError`),
 * which a worker returns as data with `toIoErrorData`. Abort: nothing here is abortable; every call
 * finishes its I/O before it returns.
 */
import { closeSync, fstatSync, fsyncSync, ftruncateSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { assert } from '../sync/assert.js';
import { type Lsn, isValidSegmentSize, segmentNumber, segmentOffsetBytes, segmentStartLsn } from '../wal/lsn.js';
import { fsyncDirectorySync, isRecycledSegmentName, listSegmentsSync, listTimelineDirSync, segmentPath, segmentTempPath, storageError } from './layout.js';
import { NATIVE_ZERO_RANGE } from '../native_fs.js';
import { type SyncOptions, closeFile, openFile, openIfExists, pwriteAll, removeFile, renameFile, syncData, writeZeros } from './segment_io.js';

export { listSegments, listSegmentsSync, toIoErrorData, ioErrorFromData, type IoErrorData, type SegmentFileEntry } from './layout.js';

// ---- creating ----

/**
 * Zeros of a new segment are made durable every this many bytes while they are written, not all at the end.
 * One fsync of 16 MiB keeps the device busy for ~10 ms here, and a WAL fdatasync issued meanwhile (the
 * writer goes on in the current segment while the next one is prepared) waits behind all of it: a lone
 * 8 KiB append took ~16 ms at every segment preparation, against ~0.4 ms typically. Syncing as it goes
 * bounds that wait by one chunk's write-back. Measured with lone 8 KiB appends: the largest latency went
 * from ~16 ms to 8–9 ms, none of the remaining outliers at preparation. Smaller chunks cost throughput
 * (256 KiB: 128 KiB appends ~15% slower, from the extra device flushes); at 2 MiB it is unchanged.
 */
const PREPARE_SYNC_CHUNK_BYTES = 2 * 1024 * 1024;

/**
 * How preparation makes a segment read as zeros (see `prepareSegment`):
 *   - 'zeros': real zero blocks, written and synced (over a recycled file's old bytes, or into a new file).
 *     A later pwrite + fdatasync then flushes data alone: what a small append's latency needs.
 *   - 'lazy': no zeros written. A recycled file's blocks are marked unwritten (fallocate ZERO_RANGE, where the
 *     file system and the native addon allow; else zeros are written), a new file is sparse. Each fdatasync
 *     then also commits the conversion or allocation of the blocks written in the journal, which a large
 *     batch's sync hides, and the device writes each WAL byte once instead of a zero and then the byte.
 */
export type SegmentFill = 'zeros' | 'lazy';

/**
 * What preparing a segment did: took a recycled file and wrote zeros over it ('recycled') or marked its blocks
 * unwritten ('unwritten'), made a new zero-filled ('zeroed') or sparse ('sparse') one, or nothing ('existing').
 */
export type PreparedSegment = 'recycled' | 'unwritten' | 'zeroed' | 'sparse' | 'existing';

/**
 * Builds segment `segno` at its temp name, full length, fsyncs it, renames it to `.partial` and fsyncs the
 * directory. A crash leaves at most a stale temp file, which the next creation removes. With `recycle`, a
 * recycled segment is taken when there is one: its blocks are allocated, so no block allocation is committed in
 * the journal at each later sync. Measured on this machine's ext4 with a pwrite + fdatasync loop of 6 MiB
 * batches and the next segment prepared by another thread: 856–1,099 MiB/s into recycled files zeroed ahead
 * against 507–683 into new ones. With `fill` 'zeros' zeros go over its blocks (synced as they are written, see
 * PREPARE_SYNC_CHUNK_BYTES); with 'lazy' they are marked unwritten instead: 8 such files round robin, 6 MiB
 * batches, preparation included, 1,536–1,740 MiB/s against 951–972 zeroed, and 0.28 against 0.38 ms of CPU
 * per MiB; but a lone 8 KiB pwrite + fdatasync into unwritten blocks takes 0.12 ms against 0.08 (p50), as it
 * commits the conversion in the journal. The old bytes never show: the file gets a segment name only after
 * the zeros (or the unwritten marks, through the fsync) are durable. Otherwise a new file: zero blocks when
 * `fill` is 'zeros', a sparse ftruncate when 'lazy'. Returns how it made the file.
 */
function createSegmentFile(dir: string, segno: bigint, segmentSizeBytes: number, fill: SegmentFill, recycle: boolean, options: SyncOptions): Exclude<PreparedSegment, 'existing'> {
  const tempPath = segmentTempPath(dir, segno, segmentSizeBytes);
  try {
    rmSync(tempPath, { force: true });
  } catch (error) {
    throw storageError(error, 'unlink', tempPath);
  }
  const recycled = recycle && takeRecycledSegment(dir, tempPath);
  const fd = openFile(tempPath, recycled ? 'r+' : 'wx');
  let made: Exclude<PreparedSegment, 'existing'>;
  try {
    // A recycled file is a complete segment, so of this size; a different one (another segment size) is cut.
    if (recycled && fstatSync(fd).size !== segmentSizeBytes) ftruncateSync(fd, segmentSizeBytes);
    if (recycled && fill === 'lazy' && NATIVE_ZERO_RANGE !== null && NATIVE_ZERO_RANGE(fd, 0, segmentSizeBytes)) made = 'unwritten';
    else if (recycled || fill === 'zeros') {
      for (let from = 0; from < segmentSizeBytes; from += PREPARE_SYNC_CHUNK_BYTES) {
        const to = Math.min(segmentSizeBytes, from + PREPARE_SYNC_CHUNK_BYTES);
        writeZeros(fd, tempPath, from, to);
        if (to < segmentSizeBytes) syncData(fd, tempPath, options); // the last chunk is in the fsync below
      }
      made = recycled ? 'recycled' : 'zeroed';
    } else {
      ftruncateSync(fd, segmentSizeBytes);
      made = 'sparse';
    }
    // fsync, not fdatasync: the new size, and the unwritten marks, must be durable too.
    if (!options.noSync) fsyncSync(fd);
  } catch (error) {
    closeSync(fd);
    rmSync(tempPath, { force: true }); // if this throws as well, that error says more about the disk
    throw storageError(error, 'create', tempPath);
  }
  closeFile(fd, tempPath);
  renameFile(tempPath, segmentPath(dir, segno, segmentSizeBytes, true));
  if (!options.noSync) fsyncDirectorySync(dir);
  return made;
}

/**
 * Renames one recycled segment of `dir` to `tempPath` and returns true, or false when there is none. The
 * rename needs no sync: a crash leaves either name, and neither is a segment.
 */
function takeRecycledSegment(dir: string, tempPath: string): boolean {
  for (const name of listTimelineDirSync(dir)) {
    if (!isRecycledSegmentName(name)) continue;
    try {
      renameSync(join(dir, name), tempPath);
      return true;
    } catch (error) {
      // Deleted meanwhile (an eviction removes recycled files): try the next one.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw storageError(error, 'rename', join(dir, name));
    }
  }
  return false;
}

const segmentExists = (dir: string, segno: bigint, segmentSizeBytes: number, partial: boolean): boolean => {
  const path = segmentPath(dir, segno, segmentSizeBytes, partial);
  const fd = openIfExists(path, 'r');
  if (fd === null) return false;
  closeFile(fd, path);
  return true;
};

/**
 * Creates segment `segno` as a `.partial` ahead of time, from a recycled file when there is one, else a new
 * file, zero-filled as `fill` says (see `SegmentFill`; the caller chooses by its batch size, see
 * segment_preparer.ts). Every way reads as zeros past the WAL written, as PostgreSQL's segments do.
 * Idempotent: does nothing (and returns 'existing') when the segment exists, partial or complete.
 */
export function prepareSegment(dir: string, segno: bigint, segmentSizeBytes: number, fill: SegmentFill, options: SyncOptions): PreparedSegment {
  assert(isValidSegmentSize(segmentSizeBytes), 'valid segment size');
  if (segmentExists(dir, segno, segmentSizeBytes, true) || segmentExists(dir, segno, segmentSizeBytes, false)) return 'existing';
  return createSegmentFile(dir, segno, segmentSizeBytes, fill, true, options);
}

/**
 * Opens `<name>.partial` for writing and returns its fd (the caller closes it). Without a prepared file,
 * creates one (sparse, §2.2). Opening a completed segment for writing is a bug (Neon asserts too).
 */
export function openSegmentForWrite(dir: string, segno: bigint, segmentSizeBytes: number, options: SyncOptions): number {
  const partialPath = segmentPath(dir, segno, segmentSizeBytes, true);
  const fd = openIfExists(partialPath, 'r+');
  if (fd !== null) return fd;
  assert(!segmentExists(dir, segno, segmentSizeBytes, false), 'a completed segment is never opened for writing');
  createSegmentFile(dir, segno, segmentSizeBytes, 'lazy', false, options);
  return openFile(partialPath, 'r+');
}

/**
 * Completes segment `segno` when no writer holds it: fdatasync, rename `X.partial` → `X`, fsync the
 * directory. Quirk fix: Neon does not fsync the directory here; we do, so a crash cannot bring the
 * `.partial` name back after WAL backup has seen (and uploaded) the complete one.
 */
export function completeSegmentSync(dir: string, segno: bigint, segmentSizeBytes: number, options: SyncOptions): void {
  const partialPath = segmentPath(dir, segno, segmentSizeBytes, true);
  const fd = openFile(partialPath, 'r+');
  try {
    syncData(fd, partialPath, options);
  } finally {
    closeFile(fd, partialPath);
  }
  renameFile(partialPath, segmentPath(dir, segno, segmentSizeBytes, false));
  if (!options.noSync) fsyncDirectorySync(dir);
}

/**
 * fdatasyncs segment `segno` under whichever name it has (`.partial` first), unless `options.noSync`; nothing
 * when it has neither. Recovery syncs what it is about to trust: a killed writer may have left pwritten,
 * unsynced bytes in the page cache, which a scan would read as WAL and a power loss would then take away.
 */
export function syncSegmentIfExistsSync(dir: string, segno: bigint, segmentSizeBytes: number, options: SyncOptions): void {
  if (options.noSync) return;
  for (const partial of [true, false]) {
    const path = segmentPath(dir, segno, segmentSizeBytes, partial);
    const fd = openIfExists(path, 'r');
    if (fd === null) continue;
    try {
      syncData(fd, path, options);
    } finally {
      closeFile(fd, path);
    }
    return;
  }
}

// ---- truncating ----

/**
 * Truncates WAL at `lsn` (§2.4 steps 4–5): deletes every segment file after the one holding `lsn`,
 * zeroes that segment from offset(lsn) to its end (written zeros: the blocks stay allocated), syncs it,
 * renames it back to `.partial` if it was complete, and fsyncs the directory. No writer may hold fds of
 * this timeline (`SegmentWriter.truncate` closes its own first).
 */
export function truncateWalSync(dir: string, lsn: Lsn, segmentSizeBytes: number, options: SyncOptions): void {
  const target = segmentNumber(lsn, segmentSizeBytes);
  for (const entry of listSegmentsSync(dir, segmentSizeBytes)) {
    if (entry.segno > target) removeFile(join(dir, entry.name));
    // WAL goes on past this segment, so it is complete: a crash between writing its last byte and the
    // rename left it `.partial`. Finish the rename now, or it would stay `.partial` forever.
    else if (entry.segno < target && entry.partial) completeSegmentSync(dir, entry.segno, segmentSizeBytes, options);
  }
  const partialPath = segmentPath(dir, target, segmentSizeBytes, true);
  const completePath = segmentPath(dir, target, segmentSizeBytes, false);
  // Neon's open-or-create: the `.partial` first, else the complete file, else a new `.partial`.
  let path = partialPath;
  let fd = openIfExists(partialPath, 'r+');
  if (fd === null) {
    fd = openIfExists(completePath, 'r+');
    if (fd !== null) path = completePath;
  }
  const wasComplete = path === completePath;
  fd ??= openSegmentForWrite(dir, target, segmentSizeBytes, options);
  try {
    writeZeros(fd, path, segmentOffsetBytes(lsn, segmentSizeBytes), segmentSizeBytes);
    syncData(fd, path, options);
  } finally {
    closeFile(fd, path);
  }
  if (wasComplete) renameFile(completePath, partialPath);
  if (!options.noSync) fsyncDirectorySync(dir);
}

/**
 * Writes the initial segment image (wal/segment_image.ts, §2.7) into the segment holding `lsn`,
 * creating the `.partial` file if needed. Neon writes it without an fsync; we fdatasync (unless noSync),
 * which costs one sync at the first election only.
 */
export function writeInitialSegmentSync(dir: string, lsn: Lsn, segmentSizeBytes: number, image: Uint8Array, options: SyncOptions): void {
  const segno = segmentNumber(lsn, segmentSizeBytes);
  assert(image.length === segmentSizeBytes, 'the image is one whole segment');
  const pageAddress = new DataView(image.buffer, image.byteOffset, image.byteLength).getBigUint64(8, true);
  assert(pageAddress === segmentStartLsn(segno, segmentSizeBytes), 'the image belongs to the segment holding lsn');
  const path = segmentPath(dir, segno, segmentSizeBytes, true);
  const fd = openSegmentForWrite(dir, segno, segmentSizeBytes, options);
  try {
    pwriteAll(fd, path, image, 0, image.length, 0);
    syncData(fd, path, options);
  } finally {
    closeFile(fd, path);
  }
}
