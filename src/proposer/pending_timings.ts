/**
 * When each piece of WAL started waiting, until an acknowledgement covers it: WAL from the primary until
 * the quorum commits it (`postgres_source.ts`), a batch of synthetic records likewise (`synthetic_source.ts`,
 * weighted by its record count), an AppendRequest until its safekeeper reports the flush (`link_stream.ts`).
 * Pieces are noted in LSN order and settled by an LSN that only grows.
 * Bounded: past `piecesMax` pieces waiting, a new piece joins the newest one (its wait then counts from that
 * piece's start: an overestimate, never an underestimate), so a stalled acknowledger costs fixed memory.
 * Pure; main thread.
 */
import { assert } from '../sync/assert.js';
import type { Lsn } from '../wal/lsn.js';

/** Settled pieces are compacted away once this many pile up at the head (amortised O(1) shift). */
const COMPACT_AFTER_PIECES = 4096;

export class PendingTimings {
  readonly #pieces: { endLsn: Lsn; startMs: number; weight: number }[] = [];
  #head = 0;

  constructor(readonly piecesMax: number) {
    assert(Number.isInteger(piecesMax) && piecesMax > 0, 'room for at least one piece');
  }

  get waiting(): number {
    return this.#pieces.length - this.#head;
  }

  /** WAL up to `endLsn` starts waiting at `nowMs`; `weight` (e.g. a record count) is reported with its wait. */
  note(endLsn: Lsn, nowMs: number, weight = 1): void {
    const last = this.#pieces[this.#pieces.length - 1];
    assert(last === undefined || this.#head === this.#pieces.length || endLsn >= last.endLsn, 'pieces in LSN order');
    if (last !== undefined && this.waiting >= this.piecesMax) {
      last.endLsn = endLsn;
      last.weight += weight;
    } else {
      this.#pieces.push({ endLsn, startMs: nowMs, weight });
    }
  }

  /** Every piece ending at or below `lsn` is acknowledged at `nowMs`: `observe` gets its wait in ms and weight. */
  settle(lsn: Lsn, nowMs: number, observe: (waitMs: number, weight: number) => void): void {
    while (this.#head < this.#pieces.length) {
      const piece = this.#pieces[this.#head] as { endLsn: Lsn; startMs: number; weight: number };
      if (piece.endLsn > lsn) break;
      observe(nowMs - piece.startMs, piece.weight);
      this.#head += 1;
    }
    if (this.#head === this.#pieces.length || this.#head > COMPACT_AFTER_PIECES) {
      this.#pieces.splice(0, this.#head);
      this.#head = 0;
    }
  }

  /** Forgets every piece (the acknowledger went away; its answers will not come). */
  clear(): void {
    this.#pieces.length = 0;
    this.#head = 0;
  }
}
