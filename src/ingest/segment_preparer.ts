/**
 * SegmentPreparer: prepares a timeline's next WAL segment in the writer pool while TimelineWal's write task
 * fills the current one, from a recycled segment when there is one, else as a new file. It writes real zeros
 * into it, or, when the batch that asked for it was large (LAZY_FILL_MIN_BATCH_BYTES), none: the recycled
 * file's blocks are marked unwritten or the new file is sparse (segment_file.ts `SegmentFill` says why).
 *
 * Invariants: at most one preparation per timeline runs at a time (the writer pool's queue bound counts on
 * it), and it never races a write or a cut on one file. TimelineWal ends each write batch before the start
 * of the segment being prepared (`preparing`); when nothing before it is left to write, `kickWhenPrepared`
 * has TimelineWal dispatch the rest once the segment is ready. A cut waits for a running preparation first
 * (truncate quiesces, a failed write awaits `preparing.done`), and reports where it cut with `cutAt`.
 * Nothing here runs per append. Per write task TimelineWal reads `preparing` and `preparedUpTo`, and calls
 * in only when a segment must be prepared or waited for.
 * Main thread only; never blocks (the disk work is a pool task). Not abortable: a preparation runs to its
 * end, and TimelineWal.quiesce waits for it. A failed preparation is not an error here (see `prepare`); a
 * worker that throws has a bug, and the node stops.
 */
import { assert } from '../sync/assert.js';
import { segmentNumber, type Lsn } from '../wal/lsn.js';
import type { SegmentFill } from '../storage/segment_file.js';
import type { WriterPool } from './writer_pool.js';
import type { PrepareResult } from './writer_protocol.js';

/**
 * A write batch at least this large has the next segment prepared 'lazy' (no zeros written: a recycled file's
 * blocks marked unwritten, a new file sparse). Zero-filling writes (and syncs) a zero byte for every WAL byte;
 * lazy, each fdatasync also commits the conversion or allocation of the blocks written in the journal, which
 * costs a lone small append ~0.04–0.07 ms (p50 0.21 against 0.14 ms for 8 KiB into a sparse file on this
 * machine's ext4, 0.12 against 0.08 into unwritten blocks) but is lost in a large batch's sync. Measured with
 * pwrite + fdatasync loops of 64 files round robin, 4 MiB batches, the next segment of each prepared by another
 * thread: 855–1,085 MiB/s into sparse files against 505–532 into zero-filled new ones; one file, 6 MiB
 * batches: 676–763 sparse against ~780 zero-filled ahead (segment_file.ts has the recycled numbers). The same
 * size as the writer's large-batch mode (wal_writer.ts OVERLAP_VERIFY_MIN_BYTES), where sync time dwarfs a
 * journal commit.
 */
export const LAZY_FILL_MIN_BATCH_BYTES = 1024 * 1024;
const LAZY_FILL_MIN_BATCH = BigInt(LAZY_FILL_MIN_BATCH_BYTES);

/** The part of TimelineWalOptions preparation uses (TimelineWal passes its own options object). */
export interface SegmentPreparerOptions {
  dir: string;
  segmentSizeBytes: number;
  noSync: boolean;
  pool: WriterPool;
  /** Called with each finished segment preparation, for metrics. */
  onPrepared?: (result: PrepareResult) => void;
}

/** One per TimelineWal, made with it (see the header). */
export class SegmentPreparer {
  /** A kick is already registered to run when the segment being prepared is ready. */
  #kickAfterPrepare = false;
  #preparing: { segno: bigint; done: Promise<void> } | null = null;
  #preparedUpTo: bigint;

  /**
   * `endLsn`: the recovered end of WAL (0 for a timeline with no WAL yet). `kick`: TimelineWal's dispatch of
   * the next write task, called once a segment a write waits for is ready.
   */
  constructor(
    private readonly options: SegmentPreparerOptions,
    endLsn: Lsn,
    private readonly kick: () => void,
  ) {
    this.#preparedUpTo = endLsn === 0n ? -1n : segmentNumber(endLsn, options.segmentSizeBytes);
  }

  /** The segment being prepared, and a promise that settles when its preparation is over; null when none is. */
  get preparing(): { readonly segno: bigint; readonly done: Promise<void> } | null {
    return this.#preparing;
  }

  /**
   * The highest segment not to prepare (again): the last one whose preparation finished (even a failed one:
   * the writer then creates it), or the segment of the end of WAL at load or after a cut (-1 before any WAL).
   */
  get preparedUpTo(): bigint {
    return this.#preparedUpTo;
  }

  /** A write waits for the segment being prepared: kick the writer (once) when it is ready. */
  kickWhenPrepared(): void {
    const preparing = this.#preparing;
    assert(preparing !== null, 'a write waits only for a preparation that runs');
    if (!this.#kickAfterPrepare) {
      this.#kickAfterPrepare = true;
      void preparing.done.then(() => {
        this.#kickAfterPrepare = false;
        this.kick();
      });
    }
  }

  /** Starts preparing segment `segno`, after a write batch of `batchBytes` (its size picks the fill). */
  prepare(segno: bigint, batchBytes: bigint): void {
    const fill: SegmentFill = batchBytes >= LAZY_FILL_MIN_BATCH ? 'lazy' : 'zeros';
    const { dir, segmentSizeBytes, noSync } = this.options;
    const done = this.options.pool.prepare({ kind: 'prepare', segno, fill, dir, segmentSizeBytes, noSync }).then(
      (result) => {
        // A failed preparation (e.g. disk full) is not fatal: the writer creates the file itself when it
        // gets there, and reports the error then. Do not retry this segment from here.
        this.#preparedUpTo = segno;
        this.#preparing = null;
        this.options.onPrepared?.(result);
      },
      (error: unknown) => {
        queueMicrotask(() => {
          throw error;
        });
      },
    );
    this.#preparing = { segno, done };
  }

  /** The files were cut at `lsn` (no preparation running): lsn's segment is the last one that exists. */
  cutAt(lsn: Lsn): void {
    this.#preparedUpTo = segmentNumber(lsn, this.options.segmentSizeBytes);
  }
}
