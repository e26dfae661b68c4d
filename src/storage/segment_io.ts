/**
 * The blocking fs calls under the segment-file code (segment_file.ts, segment_writer.ts, segment_read.ts),
 * each with its failure mapped in one place: fs errors become DiskFullError / StorageIoError /
 * NotFoundError through layout.ts `storageError`, naming the operation and path. Also the split of a byte
 * range at segment boundaries, which writes and reads share.
 *
 * Design: every function here but `syncDataAsync` is SYNCHRONOUS, for the Piscina writer workers, where
 * blocking is the job (async fs would queue on libuv's small process-wide pool). Writes loop until every
 * byte is written, and `writeZeros` writes real zero blocks (not a sparse ftruncate) so later writes
 * allocate nothing.
 * `noSync` (tests and benchmarks only) makes `syncData` a no-op. Worker threads; nothing here is
 * abortable, and every call finishes its I/O before it returns.
 */
import { closeSync, fdatasync, fdatasyncSync, openSync, readSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { StorageIoError } from '../errors.js';
import { type Lsn, segmentNumber, segmentOffsetBytes } from '../wal/lsn.js';
import { storageError } from './layout.js';

/** How the segment-file functions sync; passed explicitly on every call, never read from a global. */
export interface SyncOptions {
  /** Skip fsync/fdatasync (tests and benchmarks only): a crash may then lose acknowledged WAL. */
  noSync: boolean;
}

/** Zeros are written in chunks of this size: large enough for few syscalls, small enough to keep around. */
const ZERO_CHUNK_BYTES = 1024 * 1024;
let zeroChunk: Uint8Array | null = null; // allocated on first use, shared by every call in this thread

/** Opens `path` with `flags` (as `fs.openSync`) and returns its fd. */
export function openFile(path: string, flags: string): number {
  try {
    return openSync(path, flags);
  } catch (error) {
    throw storageError(error, 'open', path);
  }
}

/** Opens `path` or returns null when it does not exist. */
export function openIfExists(path: string, flags: string): number | null {
  try {
    return openSync(path, flags);
  } catch (error) {
    if ((error as { code?: unknown }).code === 'ENOENT') return null;
    throw storageError(error, 'open', path);
  }
}

/** Closes `fd`; `path` names it in the error. */
export function closeFile(fd: number, path: string): void {
  try {
    closeSync(fd);
  } catch (error) {
    throw storageError(error, 'close', path);
  }
}

/** Writes `length` bytes of `bytes` from `offset` at file byte `position`, looping over short writes. */
export function pwriteAll(fd: number, path: string, bytes: Uint8Array, offset: number, length: number, position: number): void {
  try {
    let written = 0;
    while (written < length) written += writeSync(fd, bytes, offset + written, length - written, position + written);
  } catch (error) {
    throw storageError(error, 'write', path);
  }
}

/** Reads `length` bytes at file byte `position` into `into` at `offset`; a file that ends first is a StorageIoError. */
export function preadAll(fd: number, path: string, into: Uint8Array, offset: number, length: number, position: number): void {
  let read = 0;
  while (read < length) {
    let n: number;
    try {
      n = readSync(fd, into, offset + read, length - read, position + read);
    } catch (error) {
      throw storageError(error, 'read', path);
    }
    if (n === 0) throw new StorageIoError(`storage I/O error: read ${path}: segment file shorter than ${position + length} bytes`);
    read += n;
  }
}

/** Writes zeros over [fromBytes, toBytes): real blocks, unlike ftruncate, so later writes allocate nothing. */
export function writeZeros(fd: number, path: string, fromBytes: number, toBytes: number): void {
  zeroChunk ??= new Uint8Array(ZERO_CHUNK_BYTES);
  for (let position = fromBytes; position < toBytes; position += ZERO_CHUNK_BYTES) {
    pwriteAll(fd, path, zeroChunk, 0, Math.min(ZERO_CHUNK_BYTES, toBytes - position), position);
  }
}

/** fdatasync, unless `options.noSync`. */
export function syncData(fd: number, path: string, options: SyncOptions): void {
  if (options.noSync) return;
  try {
    fdatasyncSync(fd);
  } catch (error) {
    throw storageError(error, 'fdatasync', path);
  }
}

/**
 * fdatasync on libuv's thread pool, unless `options.noSync`: the calling thread goes on (a writer verifies
 * the WAL it just wrote while the disk syncs it). The fd must stay open until the promise settles.
 */
export function syncDataAsync(fd: number, path: string, options: SyncOptions): Promise<void> {
  if (options.noSync) return Promise.resolve();
  return new Promise((resolve, reject) => {
    fdatasync(fd, (error) => (error === null ? resolve() : reject(storageError(error, 'fdatasync', path))));
  });
}

/** Renames `from` to `to` (atomic within a directory; the caller fsyncs the directory). */
export function renameFile(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (error) {
    throw storageError(error, 'rename', from);
  }
}

/** Unlinks `path`; a missing file is a NotFoundError. */
export function removeFile(path: string): void {
  try {
    unlinkSync(path);
  } catch (error) {
    throw storageError(error, 'unlink', path);
  }
}

/** One piece of a byte range that lies in a single segment; `done` is the bytes of the range before it. */
export interface SegmentSpan {
  segno: bigint;
  /** Where the piece starts inside its segment, in bytes. */
  segmentOffset: number;
  /** The piece's length in bytes. */
  length: number;
  /** Bytes of the range before this piece. */
  done: number;
}

/** Splits [startLsn, startLsn + lengthBytes) at segment boundaries. */
export function* segmentSpans(startLsn: Lsn, lengthBytes: number, segmentSizeBytes: number): Generator<SegmentSpan> {
  for (let done = 0; done < lengthBytes; ) {
    const lsn = startLsn + BigInt(done);
    const segmentOffset = segmentOffsetBytes(lsn, segmentSizeBytes);
    const length = Math.min(lengthBytes - done, segmentSizeBytes - segmentOffset);
    yield { segno: segmentNumber(lsn, segmentSizeBytes), segmentOffset, length, done };
    done += length;
  }
}
