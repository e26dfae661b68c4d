/**
 * SegmentWriter: the steady write path of one timeline's WAL into its segment files (storage reference
 * §2), holding the fd of the segment being written so consecutive writes cost one pwrite each. The
 * writes carry no fsync; durability comes from `flush()` (fdatasync of every held segment) and
 * `completeSegment()` (fdatasync, rename `X.partial` → `X`, fsync the directory), so the caller can batch
 * many writes into one sync (group commit).
 *
 * Invariants: at most one writer per timeline at a time (segment_file.ts); a segment written to its end is
 * never written again, and the segment being written is never completed. Worker threads (Piscina), with
 * blocking fs calls; nothing is abortable, and every call finishes its I/O before it returns.
 */
import { assert } from '../sync/assert.js';
import { type Lsn, isValidSegmentSize } from '../wal/lsn.js';
import { fsyncDirectorySync, segmentPath } from './layout.js';
import { completeSegmentSync, openSegmentForWrite, truncateWalSync } from './segment_file.js';
import { type SyncOptions, closeFile, pwriteAll, renameFile, segmentSpans, syncData, syncDataAsync } from './segment_io.js';

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

  /**
   * `flush()` on libuv's thread pool, every dirty segment at once: this thread is free until it settles, but
   * must not write, complete or close meanwhile. Resolves with whether anything needed a sync.
   */
  async flushAsync(): Promise<boolean> {
    const dirty = [...this.#held()].filter(([, segment]) => segment.dirty);
    // allSettled: every fd stays in use until its own sync ends, even when another one failed first.
    const outcomes = await Promise.allSettled(dirty.map(([segno, segment]) => syncDataAsync(segment.fd, this.#path(segno), this.options)));
    const failed = outcomes.find((outcome) => outcome.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    for (const [, segment] of dirty) segment.dirty = false;
    return dirty.length > 0;
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
