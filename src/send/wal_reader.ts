/**
 * WalReader: reads one timeline's WAL for one replication reader, from wherever it is (reference §5.1).
 *
 *   [segment start of timeline_start_lsn, timeline_start_lsn)  synthesised: the initial segment image
 *                                                              (wal/segment_image.ts), as Neon does
 *   [timeline_start_lsn, local_start_lsn), and segments removed
 *   locally after their backup (below removedUpToLsn)           remote storage (`readRemote`, through the
 *                                                              coordinator), else WalNotAvailableError
 *   [local_start_lsn, writeLsn)                                 the ring while it still holds the range
 *                                                              (TimelineWal.copyFromRing), else the
 *                                                              segment files, below syncedLsn only; a
 *                                                              segment file gone meanwhile: remote storage
 * Everything below the segment of timeline_start_lsn is refused. The caller (wal_sender.ts) never asks past
 * the end available to its reader, never past writeLsn, and never across a segment boundary.
 *
 * Tearing. A ring copy is synchronous on the main thread, the ring's only producer, so it is never torn.
 * Files are read asynchronously (fs/promises: the main thread never blocks) and only below syncedLsn,
 * where the bytes are durable and no writer touches them again; bytes at or above syncedLsn are always
 * still in the ring. Only a cut (truncation after an election, or the cut after a failed write) changes
 * durable bytes or renames files: reads that overlap one (TimelineWal.cutSequence changed or is odd) are
 * thrown away and redone.
 *
 * Sharing. Readers following the tip in lockstep ask for the same ranges: a copy out of the ring is kept in
 * the timeline's `RecentChunks` (the last RECENT_CHUNKS_MAX, keyed by range and cutSequence) and handed to
 * every reader asking for exactly that range, so N live readers cost one copy, not N. Copies are never
 * modified, so sharing them is safe.
 *
 * Bounds. Files and remote objects are read in blocks of at most WAL_READ_BLOCK_BYTES, kept until the reader
 * moves past them (one block per reader), and at most one segment file is open per reader. Returned bytes are never
 * modified afterwards, so the sender hands them to the socket without another copy.
 * Main thread. Abort: `read` takes a signal; an in-flight fs read finishes, and its result is dropped.
 */
import type { FileHandle } from 'node:fs/promises';
import { SafekeeperError, StorageIoError } from '../errors.js';
import type { TimelineWal } from '../ingest/timeline_wal.js';
import { segmentPath, storageError } from '../storage/layout.js';
import { assert } from '../sync/assert.js';
import { sleep } from '../sync/cancel.js';
import { type Lsn, formatLsn, segmentFileName, segmentNumber, segmentStartLsn } from '../wal/lsn.js';
import { initialSegmentImage } from '../wal/segment_image.js';
import { readUpTo } from '../storage/file_read.js';
import { openSegmentFile } from '../storage/segment_read.js';

/**
 * One file read serves several XLogData messages (each at most 128 KiB) and is the most a reader holds
 * besides its socket buffer: 16 readers catching up from disk hold 8 MiB.
 */
export const WAL_READ_BLOCK_BYTES = 512 * 1024;
/** Ring copies kept for sharing, per timeline: 16 × 128 KiB = 2 MiB at most, enough for readers a few messages apart. */
export const RECENT_CHUNKS_MAX = 16;
/** A cut of the files is a rare, short event (an election); a reader that meets one retries after this. */
const CUT_RETRY_MS = 5;

/** The WAL asked for is not held by this safekeeper (below its start, or its segment file is gone). */
export class WalNotAvailableError extends SafekeeperError {
  override readonly name = 'WalNotAvailableError';
  readonly code = 'SK_WAL_NOT_AVAILABLE';
  readonly sqlState = '58P01'; // undefined_file, as PostgreSQL's "requested WAL segment ... has already been removed"
  override readonly httpStatus = 404;
}

/**
 * The last ring copies of one timeline, shared by its readers (see the header). A cut changes cutSequence,
 * which makes every older entry unusable. Main thread.
 */
export class RecentChunks {
  readonly #entries: ({ lsn: Lsn; cutSequence: number; bytes: Uint8Array } | null)[] = new Array(RECENT_CHUNKS_MAX).fill(null);
  #next = 0;

  get(lsn: Lsn, lengthBytes: number, cutSequence: number): Uint8Array | null {
    for (const entry of this.#entries) {
      if (entry !== null && entry.lsn === lsn && entry.bytes.length === lengthBytes && entry.cutSequence === cutSequence) return entry.bytes;
    }
    return null;
  }

  put(lsn: Lsn, bytes: Uint8Array, cutSequence: number): void {
    this.#entries[this.#next] = { lsn, cutSequence, bytes };
    this.#next = (this.#next + 1) % RECENT_CHUNKS_MAX;
  }
}

/** What a reader needs of its timeline; positions are fixed for the reader's lifetime. */
export interface WalReaderSource {
  dir: string;
  segmentSizeBytes: number;
  pgVersion: number;
  systemId: bigint;
  timelineStartLsn: Lsn;
  localStartLsn: Lsn;
  /** Segments below this were removed locally (WAL removal after backup); 0 when none were. Read live. */
  removedUpToLsn: () => Lsn;
  /** WAL from remote storage, at most to the end of `lsn`'s segment (full segments and the uploaded partial); null without remote storage. */
  readRemote: ((lsn: Lsn, lengthBytes: number) => Promise<Uint8Array>) | null;
  /** Ring copies shared with the timeline's other readers; null to copy privately. */
  recentChunks: RecentChunks | null;
  wal: Pick<TimelineWal, 'copyFromRing' | 'syncedLsn' | 'writeLsn' | 'cutSequence'>;
}

/** Where the bytes of each read came from, for metrics and the benchmark. */
export type WalReadSource = 'ring' | 'segment' | 'remote' | 'initial_image';

/** Throws WalNotAvailableError unless a reader may start at `lsn` (§5.1). */
export function checkReadStart(source: WalReaderSource, lsn: Lsn): void {
  const { timelineStartLsn, localStartLsn, segmentSizeBytes } = source;
  if (localStartLsn === 0n) throw new WalNotAvailableError('timeline has no WAL yet: no proposer was ever elected on it');
  const firstSegmentStartLsn = segmentStartLsn(segmentNumber(timelineStartLsn, segmentSizeBytes), segmentSizeBytes);
  if (lsn < firstSegmentStartLsn) {
    throw new WalNotAvailableError(
      `requested WAL at ${formatLsn(lsn)} is below the timeline's WAL: it starts at ${formatLsn(timelineStartLsn)}, in the segment starting at ${formatLsn(firstSegmentStartLsn)}`,
    );
  }
  if (source.readRemote !== null) return; // anything else not held locally is looked up in remote storage
  if (lsn >= timelineStartLsn && lsn < localStartLsn) {
    throw new WalNotAvailableError(`requested WAL at ${formatLsn(lsn)} is not held locally (local WAL starts at ${formatLsn(localStartLsn)}) and there is no remote storage`);
  }
  const removedUpToLsn = source.removedUpToLsn();
  if (lsn >= timelineStartLsn && lsn < removedUpToLsn) {
    throw new WalNotAvailableError(`requested WAL at ${formatLsn(lsn)} was removed locally (segments below ${formatLsn(removedUpToLsn)} are gone) and there is no remote storage`);
  }
}

export class WalReader {
  /** Bytes returned so far, by where they came from. */
  readonly bytesBySource: Record<WalReadSource, number> = { ring: 0, segment: 0, remote: 0, initial_image: 0 };
  readonly #source: WalReaderSource;
  readonly #segmentBytes: bigint;
  #file: { segno: bigint; handle: FileHandle; path: string; cutSequence: number } | null = null;
  /** The last block read from files (valid while cutSequence is unchanged) or remote storage (cutSequence null: immutable). */
  #block: { lsn: Lsn; bytes: Uint8Array; cutSequence: number | null } | null = null;
  #initialImage: Uint8Array | null = null;

  constructor(source: WalReaderSource) {
    this.#source = source;
    this.#segmentBytes = BigInt(source.segmentSizeBytes);
  }

  /**
   * WAL [lsn, lsn + lengthBytes), except that a read starting below timeline_start_lsn stops there. The range
   * must be available, received (below writeLsn), inside one segment and at most WAL_READ_BLOCK_BYTES long.
   * Empty when a cut of the files moved the durable end below the range meanwhile: the caller re-checks its
   * bounds. Do not modify the result.
   */
  async read(lsn: Lsn, lengthBytes: number, signal: AbortSignal): Promise<Uint8Array> {
    assert(Number.isInteger(lengthBytes) && lengthBytes > 0 && lengthBytes <= WAL_READ_BLOCK_BYTES, 'a read asks for 1 byte to a block');
    const endLsn = lsn + BigInt(lengthBytes);
    assert(endLsn <= (lsn / this.#segmentBytes + 1n) * this.#segmentBytes, 'a read never crosses a segment boundary');
    const source = this.#source;
    if (lsn < source.timelineStartLsn) return this.#fromInitialImage(lsn, lengthBytes);
    checkReadStart(source, lsn);
    if (lsn < source.localStartLsn) return this.#fromRemote(lsn, lengthBytes);
    const wal = source.wal;
    assert(endLsn <= wal.writeLsn, 'reads stay within received WAL');
    const shared = source.recentChunks?.get(lsn, lengthBytes, wal.cutSequence) ?? null;
    if (shared !== null) {
      this.#block = null;
      this.bytesBySource.ring += lengthBytes;
      return shared;
    }
    const out = Buffer.allocUnsafe(lengthBytes);
    if (wal.copyFromRing(lsn, lengthBytes, out)) {
      this.#block = null; // caught up with the ring: the file block is not needed again
      this.bytesBySource.ring += lengthBytes;
      source.recentChunks?.put(lsn, out, wal.cutSequence);
      return out;
    }
    if (lsn < source.removedUpToLsn()) return this.#fromRemote(lsn, lengthBytes);
    // Bytes at or above syncedLsn never leave the ring, so a range the ring lacks starts below syncedLsn.
    const syncedLsn = wal.syncedLsn;
    assert(lsn < syncedLsn, 'WAL missing from the ring is durable in the files');
    if (endLsn <= syncedLsn) return this.#fromFiles(lsn, lengthBytes, signal);
    // Straddling syncedLsn: copy the part at and above it from the ring now, before an await lets the
    // producer overwrite it, then the durable part below it from the files.
    const fileBytes = Number(syncedLsn - lsn);
    assert(wal.copyFromRing(syncedLsn, lengthBytes - fileBytes, out, fileBytes), 'WAL at or above syncedLsn is in the ring');
    const durable = await this.#fromFiles(lsn, fileBytes, signal);
    if (durable.length !== fileBytes) return durable; // a cut (empty), or a remote read that stopped early
    out.set(durable, 0);
    this.bytesBySource.ring += lengthBytes - fileBytes;
    return out;
  }

  /** Closes the open segment file, if any. The reader must not be used afterwards. */
  async close(): Promise<void> {
    this.#block = null;
    this.#initialImage = null;
    await this.#closeFile();
  }

  #fromInitialImage(lsn: Lsn, lengthBytes: number): Uint8Array {
    const source = this.#source;
    checkReadStart(source, lsn);
    const segmentStart = segmentStartLsn(segmentNumber(source.timelineStartLsn, source.segmentSizeBytes), source.segmentSizeBytes);
    // Keep only the prefix below the start: the rest of the 16 MiB image is never served from here.
    this.#initialImage ??= initialSegmentImage({ lsn: source.timelineStartLsn, segmentSizeBytes: source.segmentSizeBytes, systemId: source.systemId, pgVersion: source.pgVersion }).slice(
      0,
      Number(source.timelineStartLsn - segmentStart),
    );
    const offset = Number(lsn - segmentStart);
    const length = Math.min(lengthBytes, this.#initialImage.length - offset);
    assert(length > 0, 'the initial image covers the read');
    this.bytesBySource.initial_image += length;
    return this.#initialImage.subarray(offset, offset + length);
  }

  /**
   * [lsn, lsn + lengthBytes) from the segment files (all below syncedLsn) through the one-block cache; empty
   * after a cut. A segment file removed meanwhile (WAL removal) is read from remote storage instead.
   */
  async #fromFiles(lsn: Lsn, lengthBytes: number, signal: AbortSignal): Promise<Uint8Array> {
    const wal = this.#source.wal;
    for (;;) {
      signal.throwIfAborted();
      const cutSequence = wal.cutSequence;
      if (cutSequence % 2 === 1) {
        await this.#closeFile();
        await sleep(CUT_RETRY_MS, signal);
        continue;
      }
      const endLsn = lsn + BigInt(lengthBytes);
      if (wal.syncedLsn < endLsn) return new Uint8Array(0); // a cut moved the durable end into the range
      const block = this.#block;
      if (block !== null && block.cutSequence === cutSequence && lsn >= block.lsn && endLsn <= block.lsn + BigInt(block.bytes.length)) {
        const offset = Number(lsn - block.lsn);
        this.bytesBySource.segment += lengthBytes;
        return block.bytes.subarray(offset, offset + lengthBytes);
      }
      const segmentEndLsn = (lsn / this.#segmentBytes + 1n) * this.#segmentBytes;
      let blockEndLsn = lsn + BigInt(WAL_READ_BLOCK_BYTES);
      if (blockEndLsn > segmentEndLsn) blockEndLsn = segmentEndLsn;
      if (blockEndLsn > wal.syncedLsn) blockEndLsn = wal.syncedLsn;
      let bytes: Uint8Array;
      try {
        bytes = await this.#readSegment(lsn, Number(blockEndLsn - lsn), cutSequence);
      } catch (error) {
        if (wal.cutSequence === cutSequence) {
          if (error instanceof WalNotAvailableError && this.#source.readRemote !== null) return this.#fromRemote(lsn, lengthBytes);
          throw error;
        }
        bytes = new Uint8Array(0); // the files changed under us (a rename or a delete): read again
      }
      if (wal.cutSequence !== cutSequence) {
        this.#block = null;
        continue;
      }
      this.#block = { lsn, bytes, cutSequence };
    }
  }

  /**
   * [lsn, lsn + lengthBytes) from remote storage through the one-block cache, or less where the remote object
   * ends (an uploaded partial segment). Never empty: nothing there is an error.
   */
  async #fromRemote(lsn: Lsn, lengthBytes: number): Promise<Uint8Array> {
    const readRemote = this.#source.readRemote;
    if (readRemote === null) throw new WalNotAvailableError(`requested WAL at ${formatLsn(lsn)} is not held locally and there is no remote storage`);
    let block = this.#block;
    // A new block unless the cached one holds the whole range (or ends where the remote object ends).
    if (block === null || block.cutSequence !== null || lsn < block.lsn || lsn + BigInt(lengthBytes) > block.lsn + BigInt(block.bytes.length)) {
      const segmentEndLsn = (lsn / this.#segmentBytes + 1n) * this.#segmentBytes;
      const blockEndLsn = lsn + BigInt(WAL_READ_BLOCK_BYTES) < segmentEndLsn ? lsn + BigInt(WAL_READ_BLOCK_BYTES) : segmentEndLsn;
      const bytes = await readRemote(lsn, Number(blockEndLsn - lsn));
      if (bytes.length === 0) throw new WalNotAvailableError(`requested WAL at ${formatLsn(lsn)} is in neither the local files nor remote storage`);
      assert(bytes.length <= Number(blockEndLsn - lsn), 'remote storage returns at most what was asked');
      block = this.#block = { lsn, bytes, cutSequence: null };
    }
    const offset = Number(lsn - block.lsn);
    const length = Math.min(lengthBytes, block.bytes.length - offset);
    this.bytesBySource.remote += length;
    return block.bytes.subarray(offset, offset + length);
  }

  /** Reads [lsn, lsn + lengthBytes) of one segment, keeping its file open for the next read. */
  async #readSegment(lsn: Lsn, lengthBytes: number, cutSequence: number): Promise<Uint8Array> {
    const { dir, segmentSizeBytes } = this.#source;
    const segno = segmentNumber(lsn, segmentSizeBytes);
    let file = this.#file;
    if (file === null || file.segno !== segno || file.cutSequence !== cutSequence) {
      await this.#closeFile();
      const opened = await openSegment(dir, segno, segmentSizeBytes);
      file = this.#file = { segno, cutSequence, ...opened };
    }
    const out = Buffer.allocUnsafe(lengthBytes);
    const position = Number(lsn - segno * this.#segmentBytes);
    let read: number;
    try {
      read = await readUpTo(file.handle, out, 0, lengthBytes, position);
    } catch (error) {
      throw storageError(error, 'read', file.path);
    }
    if (read !== lengthBytes) throw new StorageIoError(`storage I/O error: read ${file.path}: segment file shorter than ${position + lengthBytes} bytes`);
    return out;
  }

  async #closeFile(): Promise<void> {
    const file = this.#file;
    this.#file = null;
    if (file === null) return;
    try {
      await file.handle.close();
    } catch (error) {
      throw storageError(error, 'close', file.path);
    }
  }
}

/** Opens a segment for reading: `.partial` first, then the complete name (§2.1). */
async function openSegment(dir: string, segno: bigint, segmentSizeBytes: number): Promise<{ handle: FileHandle; path: string }> {
  let opened;
  try {
    opened = await openSegmentFile(dir, segno, segmentSizeBytes);
  } catch (error) {
    throw storageError(error, 'open', segmentPath(dir, segno, segmentSizeBytes, true));
  }
  if (opened === null) throw new WalNotAvailableError(`WAL segment ${segmentFileName(segno, segmentSizeBytes)} is not found in ${dir}`);
  return opened;
}
