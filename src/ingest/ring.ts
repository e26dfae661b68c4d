/**
 * The per-timeline WAL ring: a SharedArrayBuffer the main thread fills with AppendRequest WAL (the one copy
 * of those bytes) and the timeline's writer task reads in a Piscina worker. Byte `lsn` lives at ring offset
 * `lsn mod capacity`, so any LSN still held can be found without an index (readers of recent WAL use this).
 *
 * Layout: one SharedArrayBuffer of `capacityBytes`, no header. Positions are plain numbers/bigints owned by
 * the main thread (`ingest/timeline_wal.ts`): the producer is only the main thread and the consumer only the
 * in-flight writer task of this timeline; the range a task reads is passed to it in the task message, and
 * postMessage orders the producer's writes before the task's reads, so no Atomics are needed on the data.
 *
 * Invariant (asserted by the owner): bytes in [releasedLsn, writeLsn) are never overwritten, i.e.
 * writeLsn - releasedLsn <= capacityBytes. Any thread may construct a RingView over the same buffer.
 */
import { assert } from '../sync/assert.js';
import type { Lsn } from '../wal/lsn.js';

export class RingView {
  readonly bytes: Uint8Array;
  readonly capacityBytes: number;
  readonly #capacity: bigint;

  constructor(readonly buffer: SharedArrayBuffer) {
    assert(buffer.byteLength > 0 && buffer.byteLength % 8 === 0, 'ring capacity is a positive multiple of 8');
    this.bytes = new Uint8Array(buffer);
    this.capacityBytes = buffer.byteLength;
    this.#capacity = BigInt(buffer.byteLength);
  }

  static allocate(capacityBytes: number): RingView {
    return new RingView(new SharedArrayBuffer(capacityBytes));
  }

  offsetOf(lsn: Lsn): number {
    return Number(lsn % this.#capacity);
  }

  /** Copies `data` into the ring at `lsn` (wrapping). The caller guarantees the space is free. */
  write(lsn: Lsn, data: Uint8Array): void {
    assert(data.length <= this.capacityBytes, 'ring write larger than the ring');
    const offset = this.offsetOf(lsn);
    const first = Math.min(data.length, this.capacityBytes - offset);
    this.bytes.set(first === data.length ? data : data.subarray(0, first), offset);
    if (first < data.length) this.bytes.set(data.subarray(first), 0);
  }

  /**
   * Views of [lsn, lsn + length) as one or two pieces (two when the range wraps). Zero-copy: the views
   * alias the shared ring, so they are valid only while the range stays unreleased.
   */
  pieces(lsn: Lsn, length: number): [Uint8Array] | [Uint8Array, Uint8Array] {
    assert(length >= 0 && length <= this.capacityBytes, 'ring read length within the ring');
    const offset = this.offsetOf(lsn);
    const first = Math.min(length, this.capacityBytes - offset);
    const head = this.bytes.subarray(offset, offset + first);
    if (first === length) return [head];
    return [head, this.bytes.subarray(0, length - first)];
  }

  /** Copies [lsn, lsn + length) out of the ring into `target` at `targetOffset`. */
  copyOut(lsn: Lsn, length: number, target: Uint8Array, targetOffset = 0): void {
    let at = targetOffset;
    for (const piece of this.pieces(lsn, length)) {
      target.set(piece, at);
      at += piece.length;
    }
  }
}
