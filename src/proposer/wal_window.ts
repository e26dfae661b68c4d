/**
 * The WAL window: the proposer's bounded in-memory copy of recent WAL, [startLsn, endLsn), which every
 * acceptor link streams from at its own pace. The source appends at the end; the proposer trims the start
 * once no acceptor needs it (or the window is nearly full and the WAL is committed or below the term start,
 * where the donor has it: `window_budget.ts`).
 *
 * Layout: chunks cover aligned blocks of APPEND_BYTES_MAX (128 KiB) bytes of LSN space, so the chunk of an
 * LSN is found by division, and a read never crosses a block, hence never a segment (segment sizes are
 * multiples of 128 KiB). A read returns a view of a chunk: bytes once written are never changed, so a view
 * stays valid while a socket holds it, even after the chunk is trimmed.
 * Backpressure: `waitForRoom()` makes the source wait while the window holds `capacityBytes` or more; room
 * comes only from `trim()`, so memory stays within capacity + one append.
 * Invariants: chunks are contiguous; startLsn <= endLsn; bytes == endLsn - startLsn. Main thread.
 */
import { assert } from '../sync/assert.js';
import { Watch } from '../sync/watch.js';
import type { Lsn } from '../wal/lsn.js';
import { APPEND_BYTES_MAX } from './limits.js';

const BLOCK_BYTES = BigInt(APPEND_BYTES_MAX);

interface Chunk {
  /** LSN of data[0]; the block start except for the first chunk after a reset. */
  startLsn: Lsn;
  /** Capacity: from startLsn to the end of its block. */
  data: Uint8Array;
  filledBytes: number;
}

export class WalWindow {
  readonly capacityBytes: number;
  /** Bumped on every append: senders wait on it for new WAL. The value is endLsn. */
  readonly end = new Watch<Lsn>(0n);
  /** Bumped on every trim or reset: the source waits on it for room. The value is startLsn. */
  readonly start = new Watch<Lsn>(0n);
  #chunks: Chunk[] = [];
  #head = 0;
  #startLsn: Lsn = 0n;
  #endLsn: Lsn = 0n;

  constructor(capacityBytes: number) {
    assert(Number.isInteger(capacityBytes) && capacityBytes >= 2 * APPEND_BYTES_MAX, 'window holds at least two appends');
    this.capacityBytes = capacityBytes;
  }

  get startLsn(): Lsn {
    return this.#startLsn;
  }

  get endLsn(): Lsn {
    return this.#endLsn;
  }

  get bytes(): number {
    return Number(this.#endLsn - this.#startLsn);
  }

  /** Empties the window; the next append must start at `lsn`. */
  reset(lsn: Lsn): void {
    this.#chunks = [];
    this.#head = 0;
    this.#startLsn = lsn;
    this.#endLsn = lsn;
    this.start.set(lsn);
    this.end.set(lsn);
  }

  /** Appends WAL that starts exactly at endLsn (copied: the caller may reuse `bytes`). */
  append(lsn: Lsn, bytes: Uint8Array): void {
    assert(lsn === this.#endLsn, 'window appends are contiguous');
    let done = 0;
    while (done < bytes.length) {
      let chunk = this.#chunks[this.#chunks.length - 1];
      if (chunk === undefined || chunk.filledBytes === chunk.data.length) {
        const position = this.#endLsn;
        const blockEnd = (position / BLOCK_BYTES + 1n) * BLOCK_BYTES;
        chunk = { startLsn: position, data: new Uint8Array(Number(blockEnd - position)), filledBytes: 0 };
        this.#chunks.push(chunk);
      }
      const pieceBytes = Math.min(chunk.data.length - chunk.filledBytes, bytes.length - done);
      chunk.data.set(bytes.subarray(done, done + pieceBytes), chunk.filledBytes);
      chunk.filledBytes += pieceBytes;
      done += pieceBytes;
      this.#endLsn += BigInt(pieceBytes);
    }
    if (bytes.length > 0) this.end.set(this.#endLsn);
  }

  /** A view of up to `maxBytes` of WAL at `lsn` (never crossing a 128 KiB block). Needs startLsn <= lsn < endLsn. */
  read(lsn: Lsn, maxBytes: number): Uint8Array {
    assert(lsn >= this.#startLsn && lsn < this.#endLsn, 'window read inside the window');
    const first = this.#chunks[this.#head];
    assert(first !== undefined, 'a non-empty window has chunks');
    const index = this.#head + Number(lsn / BLOCK_BYTES - first.startLsn / BLOCK_BYTES);
    const chunk = this.#chunks[index];
    assert(chunk !== undefined && lsn >= chunk.startLsn, 'the chunk of an LSN inside the window');
    const offset = Number(lsn - chunk.startLsn);
    assert(offset < chunk.filledBytes, 'read inside the filled part');
    return chunk.data.subarray(offset, Math.min(chunk.filledBytes, offset + maxBytes));
  }

  /** Drops whole chunks that end at or before `lsn`. Never moves the start past endLsn. */
  trim(lsn: Lsn): void {
    let moved = false;
    for (;;) {
      const chunk = this.#chunks[this.#head];
      if (chunk === undefined) break;
      const chunkEndLsn = chunk.startLsn + BigInt(chunk.data.length);
      if (chunk.filledBytes < chunk.data.length || chunkEndLsn > lsn) break;
      this.#chunks[this.#head] = undefined as unknown as Chunk;
      this.#head += 1;
      this.#startLsn = chunkEndLsn;
      moved = true;
    }
    if (this.#head > 256) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
    if (moved) this.start.set(this.#startLsn);
  }

  /** Waits while the window is at or over capacity. Abort-safe. */
  async waitForRoom(signal: AbortSignal): Promise<void> {
    while (this.bytes >= this.capacityBytes) await this.start.changed(this.start.version, signal);
  }
}
