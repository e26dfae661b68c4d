/**
 * TimelineWal: the main-thread half of a timeline's durable WAL pipeline, and the acceptor's WAL store.
 *
 * AppendRequest WAL is copied once, into the timeline's SharedArrayBuffer ring (`tryAppend`, synchronous on
 * the hot path). At most one write task per timeline is in flight in the writer pool; when it returns,
 * everything that arrived meanwhile goes into the next task (group commit: the batch grows with fsync
 * latency). The decoder state travels with each task, so any worker can take the next batch. The next
 * segment is prepared by a separate pool task while the current one is written (segment_preparer.ts); a
 * write that reaches a segment still being prepared waits for it, so the two never race on one file.
 *
 * Positions, in order (asserted): syncedLsn <= dispatchedLsn <= writeLsn; flushLsn <= syncedLsn, except
 * after an XLOG_SWITCH, whose record ends at the next segment start before the padding is written.
 *   writeLsn      end of bytes accepted into the ring
 *   dispatchedLsn end of bytes handed to write tasks
 *   syncedLsn     end of bytes durable on disk; ring bytes before it may be overwritten; published in the
 *                 state block, where WAL removal keeps the segment holding it (the one being written)
 *   flushLsn      end of the last complete, CRC-verified, durable record: the only LSN ever acknowledged
 * A write task that finds corrupt WAL (or fails on disk) moves every position back to the last verified
 * record end, keeps nothing after it, and fails further appends until the next truncation (a new election).
 *
 * The ring is allocated by the first append (DESIGN) and released when the timeline goes idle: when the last
 * proposer leaves (`releaseRing`), it is dropped once `ringReleaseDelayMs` passed without an append and every
 * byte in it is durable, so idle timelines hold no ring memory while a proposer that reconnects (a network
 * blip, a restarted walproposer) finds its ring still mapped. The kernel maps a ring's pages as the main
 * thread first writes them (a 16 MiB ring costs ~11 ms of page faults and zeroing over its first pass).
 * Touching them all ahead on a writer thread was tried: it moved that cost off the main thread, but made every
 * new proposer commit the whole ring at once and queue 11 ms of page touching in the writer pool, in front of
 * other timelines' writes (1,000 proposers connecting would commit 16 GiB and queue ~11 s of pool time), for
 * pages a slow timeline may not fill for hours.
 *
 * Readers (send/wal_reader.ts) copy recent WAL out of the ring with `copyFromRing`, which succeeds only while
 * the whole range is still held: [ringOldestLsn, writeLsn). The copy runs on the main thread, like the only
 * producer, so it is never torn. Cuts of the files (truncate, failAndCut) bump `cutSequence` to an odd value
 * while they run and to the next even value when done (a seqlock): a reader that read files across a change
 * of it discards what it read.
 * Main thread only; never blocks (all disk work happens in the pool).
 */
import { StorageIoError, WalCorruptionError, DiskFullError, type SafekeeperError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { raceAbort } from '../sync/cancel.js';
import { Watch } from '../sync/watch.js';
import { initialDecoderState, type DecoderState } from '../wal/record_decoder.js';
import { segmentNumber, segmentStartLsn, type Lsn } from '../wal/lsn.js';
import { RingView } from './ring.js';
import { SegmentPreparer } from './segment_preparer.js';
import type { StateBlock } from './state_block.js';
import type { WriterPool } from './writer_pool.js';
import type { PrepareResult, WriteResult } from './writer_protocol.js';

export interface TimelineWalOptions {
  dir: string;
  segmentSizeBytes: number;
  pgVersion: number;
  ringSizeBytes: number;
  noSync: boolean;
  pool: WriterPool;
  state: StateBlock;
  /** Called with each finished write task, for metrics. */
  onBatch?: (bytes: number, result: WriteResult) => void;
  /** Called with each finished segment preparation, for metrics. */
  onPrepared?: (result: PrepareResult) => void;
  /** Called with the bytes of a ring taken (positive) or released (negative), for metrics. */
  onRingBytes?: (deltaBytes: number) => void;
  /** How long `releaseRing` keeps the ring for a proposer that comes back; 0 (the default): no wait. */
  ringReleaseDelayMs?: number;
}

export class TimelineWal {
  #ring: RingView | null = null;
  /** After the last proposer left: runs out ringReleaseDelayMs; then the release is due. An append clears both. */
  #ringReleaseTimer: NodeJS.Timeout | null = null;
  /** Drop the ring once everything in it is durable. */
  #ringReleaseDue = false;
  #writeLsn: Lsn;
  #dispatchedLsn: Lsn;
  #syncedLsn: Lsn;
  /** Decoder state at dispatchedLsn; null = a fresh decoder there (made on the next dispatch: idle timelines hold none). */
  #decoder: DecoderState | null = null;
  #inFlight: Promise<void> | null = null;
  #kickScheduled = false;
  readonly #preparer: SegmentPreparer;
  #truncationPending: boolean;
  #failure: SafekeeperError | null = null;
  /** The oldest LSN whose bytes the ring still holds (bytes in [ringOldestLsn, writeLsn) are valid). */
  #ringOldestLsn: Lsn;
  /** Even while no cut runs; odd while truncate/failAndCut changes the files (see the header). */
  #cutSequence = 0;
  /** Record-aligned durable end: the protocol's flush_lsn. */
  readonly flush: Watch<Lsn>;
  /** Bumped whenever a task finishes: ring space freed, durability advanced, or a failure recorded. */
  readonly progress = new Watch(0);
  /** The error that stopped ingest, until the next truncation. */
  readonly failure = new Watch<SafekeeperError | null>(null);

  /** `endLsn`: the recovered end of WAL (0 for a timeline with no WAL yet). */
  constructor(private readonly options: TimelineWalOptions, endLsn: Lsn) {
    this.#writeLsn = this.#dispatchedLsn = this.#syncedLsn = endLsn;
    this.#ringOldestLsn = endLsn;
    this.#preparer = new SegmentPreparer(options, endLsn, () => this.#kick());
    this.flush = new Watch(endLsn);
    // As in Neon, the first ProposerElected after every load must truncate before anything is written.
    this.#truncationPending = true;
    options.state.setMany({ writeLsn: endLsn, flushLsn: endLsn, syncedLsn: endLsn });
  }

  get writeLsn(): Lsn {
    return this.#writeLsn;
  }
  get flushLsn(): Lsn {
    return this.flush.value;
  }
  get syncedLsn(): Lsn {
    return this.#syncedLsn;
  }
  get truncationPending(): boolean {
    return this.#truncationPending;
  }
  /** Even while no cut of the files runs, odd during one; it changes at each start and end of a cut. */
  get cutSequence(): number {
    return this.#cutSequence;
  }

  /**
   * Copies WAL [lsn, lsn + length) into `target` at `targetOffset` if the ring still holds all of it, and
   * returns whether it did. Synchronous on the main thread (the producer's thread), so never torn.
   */
  copyFromRing(lsn: Lsn, length: number, target: Uint8Array, targetOffset = 0): boolean {
    const ring = this.#ring;
    if (ring === null || length === 0 || lsn < this.#ringOldestLsn || lsn + BigInt(length) > this.#writeLsn) return false;
    assert(this.#writeLsn - this.#ringOldestLsn <= BigInt(ring.capacityBytes), 'the ring holds at most its capacity');
    ring.copyOut(lsn, length, target, targetOffset);
    return true;
  }

  /**
   * The hot path: copies `wal` into the ring if it fits and schedules a write. Returns false when the ring
   * is full (the caller pauses its socket and retries after `progress` moves). Throws the recorded failure.
   */
  tryAppend(beginLsn: Lsn, wal: Uint8Array): boolean {
    if (this.#failure !== null) throw this.#failure;
    assert(!this.#truncationPending, 'append while a truncation is pending');
    assert(beginLsn === this.#writeLsn, 'appends are contiguous');
    if (this.#ringReleaseTimer !== null || this.#ringReleaseDue) this.#keepRing();
    if (this.#ring === null) {
      this.#ring = RingView.allocate(this.options.ringSizeBytes);
      this.#ringOldestLsn = beginLsn; // a new ring holds nothing older
      this.options.onRingBytes?.(this.#ring.capacityBytes);
    }
    const ring = this.#ring;
    assert(wal.length <= ring.capacityBytes, 'one append fits in the ring');
    if (this.#writeLsn - this.#syncedLsn + BigInt(wal.length) > BigInt(ring.capacityBytes)) return false;
    ring.write(beginLsn, wal);
    this.#writeLsn += BigInt(wal.length);
    const overwrittenBelowLsn = this.#writeLsn - BigInt(ring.capacityBytes);
    if (overwrittenBelowLsn > this.#ringOldestLsn) this.#ringOldestLsn = overwrittenBelowLsn;
    this.#scheduleKick();
    return true;
  }

  /**
   * The last proposer left: after ringReleaseDelayMs without an append, drop the ring (its memory goes back once
   * no thread refers to it) as soon as every byte in it is durable. Readers then read the files. An append
   * meanwhile cancels this.
   */
  releaseRing(): void {
    if (this.#ringReleaseTimer !== null || this.#ringReleaseDue) return;
    const delayMs = this.options.ringReleaseDelayMs ?? 0;
    if (delayMs === 0) return this.#releaseRingNowDue();
    this.#ringReleaseTimer = setTimeout(() => {
      this.#ringReleaseTimer = null;
      this.#releaseRingNowDue();
    }, delayMs).unref();
  }

  #releaseRingNowDue(): void {
    this.#ringReleaseDue = true;
    this.#releaseRingIfDone();
  }

  #keepRing(): void {
    if (this.#ringReleaseTimer !== null) clearTimeout(this.#ringReleaseTimer);
    this.#ringReleaseTimer = null;
    this.#ringReleaseDue = false;
  }

  #releaseRingIfDone(): void {
    if (!this.#ringReleaseDue || this.#inFlight !== null || this.#syncedLsn !== this.#writeLsn) return;
    this.#ringReleaseDue = false;
    if (this.#ring !== null) this.options.onRingBytes?.(-this.#ring.capacityBytes);
    this.#ring = null;
    this.#ringOldestLsn = this.#writeLsn;
  }

  /** Waits for ring space, then appends. Abort-safe: an aborted call appends nothing. */
  async append(beginLsn: Lsn, wal: Uint8Array, signal: AbortSignal): Promise<void> {
    for (;;) {
      const seen = this.progress.version;
      if (this.tryAppend(beginLsn, wal)) return;
      await this.progress.changed(seen, signal);
    }
  }

  /**
   * Resolves when every byte appended so far is durable (flushLsn then covers every complete record). After a
   * write failure it resolves once the cut at the last verified record is done: everything kept is durable and
   * nothing else will be written, so a VoteRequest (which flushes first) can still start the election whose
   * truncation clears the failure. The failure itself reaches the stream that caused it, and appends throw it.
   */
  async flushAll(signal: AbortSignal): Promise<void> {
    const target = this.#writeLsn;
    await this.progress.waitFor(() => (this.#failure !== null && this.#inFlight === null) || this.#syncedLsn >= target, signal);
  }

  /** Waits until no write or preparation task is running. */
  async quiesce(signal: AbortSignal): Promise<void> {
    for (;;) {
      const running = this.#inFlight ?? this.#preparer.preparing?.done ?? null;
      if (running === null && this.#dispatchedLsn === this.#writeLsn) return;
      if (running === null) {
        this.#kick();
        continue;
      }
      await raceAbort(running, signal);
    }
  }

  /**
   * Cuts WAL at `lsn` (a record boundary): later segments deleted, the rest of lsn's segment zeroed, and
   * every position set to lsn. Clears a recorded failure and the pending-truncation flag. A cut that fails
   * (a disk error) may have stopped part-way, with later segments already deleted: the positions still go
   * to lsn, so no vote claims WAL that may be gone, and a truncation is pending again (no append goes in)
   * until one succeeds.
   */
  async truncate(lsn: Lsn, signal: AbortSignal): Promise<void> {
    if (this.#failure === null) await this.flushAll(signal);
    await this.quiesce(signal);
    this.#cutSequence += 1; // odd: readers of the files discard what they read meanwhile
    const result = await this.options.pool.run({ kind: 'truncate', lsn, ...this.#files() }).finally(() => (this.#cutSequence += 1));
    this.#writeLsn = this.#dispatchedLsn = this.#syncedLsn = lsn;
    this.#ringOldestLsn = lsn; // conservative: ring bytes from before the cut are not served
    this.#decoder = null;
    this.flush.set(lsn);
    this.options.state.setMany({ writeLsn: lsn, flushLsn: lsn, syncedLsn: lsn });
    // Old WAL left after lsn by a failed cut could read as valid records: nothing may be written until a cut succeeds.
    this.#truncationPending = !result.ok;
    if (result.ok) {
      this.#preparer.cutAt(lsn);
      this.#failure = null;
      this.failure.set(null);
    }
    this.progress.set(this.progress.value + 1);
    if (!result.ok) throw toError(result.code, result.detail, null);
  }

  /** See AcceptorWalStore: a pending truncation again and, after a first election, no WAL. Nothing is in flight (the cut quiesced). */
  electionNotRecorded(first: boolean): void {
    this.#truncationPending = true;
    if (!first) return;
    this.#writeLsn = this.#dispatchedLsn = this.#syncedLsn = this.#ringOldestLsn = 0n;
    this.#decoder = null;
    this.flush.set(0n);
    this.options.state.setMany({ writeLsn: 0n, flushLsn: 0n, syncedLsn: 0n });
    this.progress.set(this.progress.value + 1);
  }

  /** Writes the initial segment image for WAL starting mid-segment at `lsn` (only before any WAL exists). */
  async initializeFirstSegment(lsn: Lsn, systemId: bigint, signal: AbortSignal): Promise<void> {
    assert(this.#writeLsn === 0n, 'first segment is initialised only on an empty timeline');
    signal.throwIfAborted();
    const result = await this.options.pool.run({ kind: 'init_segment', lsn, systemId, pgVersion: this.options.pgVersion, ...this.#files() });
    if (!result.ok) throw toError(result.code, result.detail, null);
  }

  #files(): { dir: string; segmentSizeBytes: number; noSync: boolean } {
    return { dir: this.options.dir, segmentSizeBytes: this.options.segmentSizeBytes, noSync: this.options.noSync };
  }

  #decoderAt(lsn: Lsn): DecoderState {
    return initialDecoderState({ startLsn: lsn, segmentSizeBytes: this.options.segmentSizeBytes, pgVersion: this.options.pgVersion });
  }

  /** Batches every append of one socket read into one task: the kick runs after the current macrotask. */
  #scheduleKick(): void {
    if (this.#kickScheduled || this.#inFlight !== null) return;
    this.#kickScheduled = true;
    queueMicrotask(() => {
      this.#kickScheduled = false;
      this.#kick();
    });
  }

  #kick(): void {
    if (this.#inFlight !== null || this.#failure !== null || this.#dispatchedLsn === this.#writeLsn) return;
    const ring = this.#ring;
    assert(ring !== null, 'a ring exists once bytes were appended');
    const beginLsn = this.#dispatchedLsn;
    let endLsn = this.#writeLsn;
    assert(this.#syncedLsn <= beginLsn && beginLsn < endLsn, 'write range follows the synced position');
    const segmentSize = this.options.segmentSizeBytes;
    const preparer = this.#preparer;
    const preparing = preparer.preparing;
    if (preparing !== null && preparing.segno <= segmentNumber(endLsn - 1n, segmentSize)) {
      // The batch reaches the segment being prepared: write what lies before it now; the rest waits.
      const preparingStartLsn = segmentStartLsn(preparing.segno, segmentSize);
      if (preparingStartLsn <= beginLsn) {
        preparer.kickWhenPrepared();
        return;
      }
      endLsn = preparingStartLsn;
    }
    const lastSegno = segmentNumber(endLsn - 1n, segmentSize);
    this.#dispatchedLsn = endLsn;
    const task = { kind: 'write' as const, ring: ring.buffer, beginLsn, endLsn, decoder: this.#decoder ?? this.#decoderAt(beginLsn), ...this.#files() };
    this.#inFlight = this.options.pool.write(task).then(
      async (result) => this.#onWriteDone(beginLsn, endLsn, result),
      (error: unknown) => {
        // A worker that throws has a bug; durability is unknown, so the node must stop.
        queueMicrotask(() => {
          throw error;
        });
      },
    );
    if (lastSegno + 1n > preparer.preparedUpTo && preparer.preparing === null) preparer.prepare(lastSegno + 1n, endLsn - beginLsn);
  }

  #onWriteDone(beginLsn: Lsn, endLsn: Lsn, result: WriteResult): void | Promise<void> {
    this.options.onBatch?.(Number(endLsn - beginLsn), result);
    if (!result.ok) return this.#failAndCut(endLsn, result);
    assert(result.recordEndLsn >= this.flush.value, 'flush_lsn never moves backwards');
    // No upper bound against endLsn: a record's end is reported MAXALIGNed, and after an XLOG_SWITCH as the
    // next segment start, before the padding or zero tail arrives. Those bytes are zeros in our files
    // (prepared, truncated or sparse), exactly what PostgreSQL writes there, so acknowledging them is safe.
    this.#inFlight = null;
    this.#syncedLsn = endLsn;
    this.#decoder = result.decoder;
    this.flush.setIfChanged(result.recordEndLsn);
    this.options.state.setMany({ writeLsn: this.#writeLsn, flushLsn: result.recordEndLsn, syncedLsn: endLsn });
    this.progress.set(this.progress.value + 1);
    this.#kick();
    this.#releaseRingIfDone();
  }

  /**
   * A write task failed: record the failure (further appends throw it), move every position back to the
   * last verified record end, and cut the files there, so nothing after it is kept, including bytes of the
   * bad record written by earlier batches. The cut is part of the in-flight work: a truncation or another
   * write waits for it. A failed cut leaves the failure in place; the next election's truncation retries.
   */
  async #failAndCut(endLsn: Lsn, result: Extract<WriteResult, { ok: false }>): Promise<void> {
    const endOfGood = result.recordEndLsn;
    assert(endOfGood >= this.flush.value, 'a failed write keeps every verified record');
    this.#failure = toError(result.code, result.detail, result);
    // After an XLOG_SWITCH the last record ends at the next segment start, which can be ahead of the padding
    // received so far: the positions move up to it (the files hold zeros there), but the ring never held those
    // bytes, so readers must take them from the files.
    if (endOfGood > this.#writeLsn) this.#ringOldestLsn = endOfGood;
    this.#writeLsn = this.#dispatchedLsn = this.#syncedLsn = endOfGood;
    this.#decoder = null;
    this.flush.setIfChanged(endOfGood);
    this.options.state.setMany({ writeLsn: endOfGood, flushLsn: endOfGood });
    this.failure.set(this.#failure);
    await this.#preparer.preparing?.done;
    this.#cutSequence += 1;
    const cut = await this.options.pool.run({ kind: 'truncate', lsn: endOfGood, ...this.#files() }).finally(() => (this.#cutSequence += 1));
    if (cut.ok) {
      this.#preparer.cutAt(endOfGood);
      // Only now: WAL removal may take segments below it, and the cut may just have completed one of them.
      this.options.state.set('syncedLsn', endOfGood);
    }
    this.#inFlight = null;
    this.progress.set(this.progress.value + 1);
    this.#releaseRingIfDone();
  }
}

function toError(code: string, detail: string, where: { errorLsn: Lsn | null; corruption: WalCorruptionError['kind'] | null } | null): SafekeeperError {
  switch (code) {
    case 'SK_WAL_CORRUPTION':
      assert(where !== null && where.errorLsn !== null && where.corruption !== null, 'corruption reports where it is');
      return new WalCorruptionError(where.corruption, where.errorLsn, detail);
    case 'SK_DISK_FULL':
      return new DiskFullError(detail);
    default:
      return new StorageIoError(detail);
  }
}
