/**
 * Reading WAL back from segment files (storage reference §2.1): a byte range from any LSN, across
 * segments, trying the `.partial` name before the complete one, since the segment being written is
 * `.partial` and a completed one was renamed. A segment with neither file is a NotFoundError: its WAL may
 * be in remote storage, and the caller decides whether to look there.
 *
 * Threads: `readWalSync` blocks, for worker threads; `readWal` uses fs/promises, for the main thread.
 * Both read whole ranges into one new buffer, bounded by READ_WAL_BYTES_MAX. Abort: neither is
 * abortable; a read finishes (or fails) before it returns.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { NotFoundError, StorageIoError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { type Lsn, isValidSegmentSize, segmentFileName } from '../wal/lsn.js';
import { segmentPath, storageError } from './layout.js';
import { closeFile, openIfExists, preadAll, segmentSpans } from './segment_io.js';
import { readUpTo } from './file_read.js';

/** A read asks for a few pages or at most a segment; this bound keeps a bad length from allocating GiBs. */
export const READ_WAL_BYTES_MAX = 64 * 1024 * 1024;

function checkRead(lengthBytes: number, segmentSizeBytes: number): void {
  assert(Number.isInteger(lengthBytes) && lengthBytes >= 0, 'read length is a whole number of bytes');
  assert(lengthBytes <= READ_WAL_BYTES_MAX, 'read length within READ_WAL_BYTES_MAX');
  assert(isValidSegmentSize(segmentSizeBytes), 'valid segment size');
}

const missingSegment = (dir: string, segno: bigint, segmentSizeBytes: number): NotFoundError =>
  new NotFoundError(`WAL segment ${segmentFileName(segno, segmentSizeBytes)} not found in ${dir}`);

/**
 * Reads `lengthBytes` of WAL from `startLsn`, across segments, trying `.partial` before the complete
 * name (§2.1). NotFoundError when a segment has neither file (it may be in remote storage). Blocking.
 */
export function readWalSync(dir: string, startLsn: Lsn, lengthBytes: number, segmentSizeBytes: number): Uint8Array {
  checkRead(lengthBytes, segmentSizeBytes);
  const out = new Uint8Array(lengthBytes);
  for (const { segno, segmentOffset, length, done } of segmentSpans(startLsn, lengthBytes, segmentSizeBytes)) {
    let path = segmentPath(dir, segno, segmentSizeBytes, true);
    let fd = openIfExists(path, 'r');
    if (fd === null) fd = openIfExists((path = segmentPath(dir, segno, segmentSizeBytes, false)), 'r');
    if (fd === null) throw missingSegment(dir, segno, segmentSizeBytes);
    try {
      preadAll(fd, path, out, done, length, segmentOffset);
    } finally {
      closeFile(fd, path);
    }
  }
  return out;
}

/**
 * Opens segment `segno` for reading under the name it has: `.partial` first (the segment being written),
 * or the complete name first with `completeFirst`. A file renamed between two attempts (completed, or
 * renamed back to `.partial` by a truncation) is found by a third, under the first name again. Null when
 * the segment has neither name; other open errors are thrown as they are. The caller closes the handle.
 */
export async function openSegmentFile(dir: string, segno: bigint, segmentSizeBytes: number, completeFirst = false): Promise<{ handle: FileHandle; path: string } | null> {
  const first = segmentPath(dir, segno, segmentSizeBytes, !completeFirst);
  const second = segmentPath(dir, segno, segmentSizeBytes, completeFirst);
  for (const path of [first, second, first]) {
    try {
      return { handle: await open(path, 'r'), path };
    } catch (error) {
      if ((error as { code?: unknown }).code !== 'ENOENT') throw error;
    }
  }
  return null;
}

/** `readWalSync` with fs/promises, for the main thread. */
export async function readWal(dir: string, startLsn: Lsn, lengthBytes: number, segmentSizeBytes: number): Promise<Uint8Array> {
  checkRead(lengthBytes, segmentSizeBytes);
  const out = new Uint8Array(lengthBytes);
  for (const { segno, segmentOffset, length, done } of segmentSpans(startLsn, lengthBytes, segmentSizeBytes)) {
    let path = segmentPath(dir, segno, segmentSizeBytes, true);
    try {
      const opened = await openSegmentFile(dir, segno, segmentSizeBytes);
      if (opened === null) throw missingSegment(dir, segno, segmentSizeBytes);
      path = opened.path;
      try {
        if ((await readUpTo(opened.handle, out, done, length, segmentOffset)) !== length) {
          throw new StorageIoError(`storage I/O error: read ${path}: segment file shorter than ${segmentOffset + length} bytes`);
        }
      } finally {
        await opened.handle.close();
      }
    } catch (error) {
      throw storageError(error, 'read', path); // our own errors (missing, short) pass through unchanged
    }
  }
  return out;
}
