/**
 * WAL segment files (storage reference §2): creating, writing, completing, truncating and reading them.
 * Every write-side function here is SYNCHRONOUS and meant for the Piscina writer workers, where blocking
 * is the job (async fs would queue on libuv's small process-wide pool). Only `readWal` is async, for
 * readers on the main thread.
 *
 * Files: a segment being written is `<24 hex>.partial`; a completed one has no suffix; both always have
 * the full segment length, with a zero tail (PostgreSQL-compatible). New files are built at
 * `<name>.partial.tmp` and durably renamed into place, so a crash never leaves a short `.partial`.
 * `prepareSegment` builds the next file ahead of time with real zero blocks (not sparse), so the hot
 * path's pwrite + fdatasync only flushes data and never waits for block allocation in the journal.
 *
 * Invariants: at most one writer per timeline touches these files at a time (the DESIGN's one write task
 * per timeline); it is what makes temp names and the existence checks race-free. A completed segment is
 * never opened for writing. `noSync` (tests and benchmarks only) skips every fsync and fdatasync.
 * Errors: fs failures become DiskFullError / StorageIoError / NotFoundError (layout.ts `storageError`),
 * which a worker returns as data with `toIoErrorData`. Abort: nothing here is abortable; every call
 * finishes its I/O before it returns.
 */
import { closeSync, fdatasyncSync, fsyncSync, ftruncateSync, openSync, readSync, renameSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { NotFoundError, StorageIoError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { type Lsn, isValidSegmentSize, segmentFileName, segmentNumber, segmentOffsetBytes, segmentStartLsn } from '../wal/lsn.js';
import { fsyncDirectorySync, listSegmentsSync, segmentPath, segmentTempPath, storageError } from './layout.js';

export { listSegments, listSegmentsSync, toIoErrorData, ioErrorFromData, type IoErrorData, type SegmentFileEntry } from './layout.js';

export interface SyncOptions {
  /** Skip fsync/fdatasync (tests and benchmarks only): a crash may then lose acknowledged WAL. */
  noSync: boolean;
}

/** Zeros are written in chunks of this size: large enough for few syscalls, small enough to keep around. */
const ZERO_CHUNK_BYTES = 1024 * 1024;
/** A read asks for a few pages or at most a segment; this bound keeps a bad length from allocating GiBs. */
export const READ_WAL_BYTES_MAX = 64 * 1024 * 1024;
let zeroChunk: Uint8Array | null = null; // allocated on first use, shared by every call in this thread

// ---- fs calls with error mapping ----

function openFile(path: string, flags: string): number {
  try {
    return openSync(path, flags);
  } catch (error) {
    throw storageError(error, 'open', path);
  }
}

/** Opens `path` or returns null when it does not exist. */
function openIfExists(path: string, flags: string): number | null {
  try {
    return openSync(path, flags);
  } catch (error) {
    if ((error as { code?: unknown }).code === 'ENOENT') return null;
    throw storageError(error, 'open', path);
  }
}

function closeFile(fd: number, path: string): void {
  try {
    closeSync(fd);
  } catch (error) {
    throw storageError(error, 'close', path);
  }
}

function pwriteAll(fd: number, path: string, bytes: Uint8Array, offset: number, length: number, position: number): void {
  try {
    let written = 0;
    while (written < length) written += writeSync(fd, bytes, offset + written, length - written, position + written);
  } catch (error) {
    throw storageError(error, 'write', path);
  }
}

function preadAll(fd: number, path: string, into: Uint8Array, offset: number, length: number, position: number): void {
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
function writeZeros(fd: number, path: string, fromBytes: number, toBytes: number): void {
  zeroChunk ??= new Uint8Array(ZERO_CHUNK_BYTES);
  for (let position = fromBytes; position < toBytes; position += ZERO_CHUNK_BYTES) {
    pwriteAll(fd, path, zeroChunk, 0, Math.min(ZERO_CHUNK_BYTES, toBytes - position), position);
  }
}

function syncData(fd: number, path: string, options: SyncOptions): void {
  if (options.noSync) return;
  try {
    fdatasyncSync(fd);
  } catch (error) {
    throw storageError(error, 'fdatasync', path);
  }
}

function renameFile(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (error) {
    throw storageError(error, 'rename', from);
  }
}

function removeFile(path: string): void {
  try {
    unlinkSync(path);
  } catch (error) {
    throw storageError(error, 'unlink', path);
  }
}

/** One piece of a byte range that lies in a single segment; `done` is the bytes of the range before it. */
interface SegmentSpan {
  segno: bigint;
  segmentOffset: number;
  length: number;
  done: number;
}

/** Splits [startLsn, startLsn + lengthBytes) at segment boundaries. */
function* segmentSpans(startLsn: Lsn, lengthBytes: number, segmentSizeBytes: number): Generator<SegmentSpan> {
  for (let done = 0; done < lengthBytes; ) {
    const lsn = startLsn + BigInt(done);
    const segmentOffset = segmentOffsetBytes(lsn, segmentSizeBytes);
    const length = Math.min(lengthBytes - done, segmentSizeBytes - segmentOffset);
    yield { segno: segmentNumber(lsn, segmentSizeBytes), segmentOffset, length, done };
    done += length;
  }
}

// ---- creating ----

/**
 * Builds segment `segno` at its temp name, full length (zero blocks when `fill` is 'zeros', a sparse
 * ftruncate when 'sparse'), fsyncs it, renames it to `.partial` and fsyncs the directory. A crash
 * leaves at most a stale temp file, which the next creation removes.
 */
function createSegmentFile(dir: string, segno: bigint, segmentSizeBytes: number, fill: 'zeros' | 'sparse', options: SyncOptions): void {
  const tempPath = segmentTempPath(dir, segno, segmentSizeBytes);
  try {
    rmSync(tempPath, { force: true });
  } catch (error) {
    throw storageError(error, 'unlink', tempPath);
  }
  const fd = openFile(tempPath, 'wx');
  try {
    if (fill === 'zeros') writeZeros(fd, tempPath, 0, segmentSizeBytes);
    else ftruncateSync(fd, segmentSizeBytes);
    if (!options.noSync) fsyncSync(fd); // fsync, not fdatasync: the new size must be durable too
  } catch (error) {
    closeSync(fd);
    rmSync(tempPath, { force: true }); // if this throws as well, that error says more about the disk
    throw storageError(error, 'create', tempPath);
  }
  closeFile(fd, tempPath);
  renameFile(tempPath, segmentPath(dir, segno, segmentSizeBytes, true));
  if (!options.noSync) fsyncDirectorySync(dir);
}

const segmentExists = (dir: string, segno: bigint, segmentSizeBytes: number, partial: boolean): boolean => {
  const path = segmentPath(dir, segno, segmentSizeBytes, partial);
  const fd = openIfExists(path, 'r');
  if (fd === null) return false;
  closeFile(fd, path);
  return true;
};

/**
 * Creates segment `segno` as a zero-filled `.partial` ahead of time. Idempotent: does nothing (and returns
 * false) when the segment exists, partial or complete. Returns true when it created the file.
 */
export function prepareSegment(dir: string, segno: bigint, segmentSizeBytes: number, options: SyncOptions): boolean {
  assert(isValidSegmentSize(segmentSizeBytes), 'valid segment size');
  if (segmentExists(dir, segno, segmentSizeBytes, true) || segmentExists(dir, segno, segmentSizeBytes, false)) return false;
  createSegmentFile(dir, segno, segmentSizeBytes, 'zeros', options);
  return true;
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
  createSegmentFile(dir, segno, segmentSizeBytes, 'sparse', options);
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

// ---- writing ----

interface OpenSegment {
  fd: number;
  /** Written since its last fdatasync. */
  dirty: boolean;
}

/**
 * Writes one timeline's WAL into its segment files, holding the fd of the segment being written so
 * consecutive writes cost one pwrite each. One worker serves many timelines, and the caller owns this
 * object (it may keep one per timeline or build one per task: construction only stores fields).
 * Segments whose end a write reaches are returned by `writeWalAt` and stay open until the caller
 * completes them with `completeSegment`. `close()` releases every fd without syncing: call `flush()`
 * first when the bytes must be durable.
 */
export class SegmentWriter {
  #segno: bigint | null = null;
  #current: OpenSegment | null = null;
  /** Segments written to their end, waiting for `completeSegment`. */
  readonly #awaitingCompletion = new Map<bigint, OpenSegment>();

  constructor(
    readonly dir: string,
    readonly segmentSizeBytes: number,
    readonly options: SyncOptions,
  ) {
    assert(isValidSegmentSize(segmentSizeBytes), 'valid segment size');
  }

  /** The segment whose fd is held for writing, if any. */
  get openSegno(): bigint | null {
    return this.#segno;
  }

  /**
   * pwrites `first` then `second` (two pieces of a wrapped ring) contiguously from `startLsn`, split at
   * segment boundaries. Returns the segment numbers whose last byte this call wrote, ascending.
   * No fsync: durability comes from `flush()` and `completeSegment()`.
   */
  writeWalAt(startLsn: Lsn, first: Uint8Array, second?: Uint8Array): bigint[] {
    const completed: bigint[] = [];
    let lsn = startLsn;
    for (const piece of second === undefined ? [first] : [first, second]) {
      for (const { segno, segmentOffset, length, done } of segmentSpans(lsn, piece.length, this.segmentSizeBytes)) {
        const segment = this.#segmentForWrite(segno);
        pwriteAll(segment.fd, this.#path(segno), piece, done, length, segmentOffset);
        segment.dirty = true;
        if (segmentOffset + length === this.segmentSizeBytes) {
          this.#awaitingCompletion.set(segno, segment);
          this.#segno = null;
          this.#current = null;
          completed.push(segno);
        }
      }
      lsn += BigInt(piece.length);
    }
    return completed;
  }

  /** fdatasyncs every held segment with unsynced writes. Returns whether anything needed it. */
  flush(): boolean {
    let synced = false;
    for (const [segno, segment] of this.#held()) {
      if (!segment.dirty) continue;
      syncData(segment.fd, this.#path(segno), this.options);
      segment.dirty = false;
      synced = true;
    }
    return synced;
  }

  /** Completes a segment `writeWalAt` reported (or one written by an earlier writer): see `completeSegmentSync`. */
  completeSegment(segno: bigint): void {
    assert(segno !== this.#segno, 'the segment being written is not complete');
    const segment = this.#awaitingCompletion.get(segno);
    if (segment === undefined) return completeSegmentSync(this.dir, segno, this.segmentSizeBytes, this.options);
    this.#awaitingCompletion.delete(segno);
    const path = this.#path(segno);
    try {
      if (segment.dirty) syncData(segment.fd, path, this.options);
    } finally {
      closeFile(segment.fd, path);
    }
    renameFile(path, segmentPath(this.dir, segno, this.segmentSizeBytes, false));
    if (!this.options.noSync) fsyncDirectorySync(this.dir);
  }

  /** Flushes and closes everything held, then truncates WAL at `lsn` (see `truncateWalSync`). */
  truncate(lsn: Lsn): void {
    this.flush();
    this.close();
    truncateWalSync(this.dir, lsn, this.segmentSizeBytes, this.options);
  }

  /** Closes every held fd without syncing. The writer can be used again afterwards. */
  close(): void {
    const held = [...this.#held()];
    this.#segno = null;
    this.#current = null;
    this.#awaitingCompletion.clear();
    for (const [segno, segment] of held) closeFile(segment.fd, this.#path(segno));
  }

  *#held(): Iterable<[bigint, OpenSegment]> {
    yield* this.#awaitingCompletion;
    if (this.#segno !== null && this.#current !== null) yield [this.#segno, this.#current];
  }

  #path(segno: bigint): string {
    return segmentPath(this.dir, segno, this.segmentSizeBytes, true);
  }

  #segmentForWrite(segno: bigint): OpenSegment {
    if (this.#segno === segno && this.#current !== null) return this.#current;
    assert(!this.#awaitingCompletion.has(segno), 'a segment written to its end is not written again');
    if (this.#segno !== null && this.#current !== null) {
      // Leaving a segment before its end (a jump in LSN): make it durable now, since flush() forgets it.
      const path = this.#path(this.#segno);
      if (this.#current.dirty) syncData(this.#current.fd, path, this.options);
      closeFile(this.#current.fd, path);
      this.#segno = null;
      this.#current = null;
    }
    const fd = openSegmentForWrite(this.dir, segno, this.segmentSizeBytes, this.options);
    this.#segno = segno;
    this.#current = { fd, dirty: false };
    return this.#current;
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

// ---- reading ----

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

/** `readWalSync` with fs/promises, for the main thread. */
export async function readWal(dir: string, startLsn: Lsn, lengthBytes: number, segmentSizeBytes: number): Promise<Uint8Array> {
  checkRead(lengthBytes, segmentSizeBytes);
  const out = new Uint8Array(lengthBytes);
  for (const { segno, segmentOffset, length, done } of segmentSpans(startLsn, lengthBytes, segmentSizeBytes)) {
    let path = segmentPath(dir, segno, segmentSizeBytes, true);
    try {
      const handle = await open(path, 'r').catch(async (error: unknown) => {
        if ((error as { code?: unknown }).code !== 'ENOENT') throw error;
        path = segmentPath(dir, segno, segmentSizeBytes, false);
        return open(path, 'r');
      });
      try {
        for (let read = 0; read < length; ) {
          const { bytesRead } = await handle.read(out, done + read, length - read, segmentOffset + read);
          if (bytesRead === 0) throw new StorageIoError(`storage I/O error: read ${path}: segment file shorter than ${segmentOffset + length} bytes`);
          read += bytesRead;
        }
      } finally {
        await handle.close();
      }
    } catch (error) {
      if ((error as { code?: unknown }).code === 'ENOENT') throw missingSegment(dir, segno, segmentSizeBytes);
      throw storageError(error, 'read', path);
    }
  }
  return out;
}
