/**
 * The per-timeline state block: the cross-thread watch channel. Every LSN and counter that the coordinator's
 * timeline manager watches lives in one small block of shared memory, one writer per slot. A writer stores
 * its slot, then bumps the block's change counter, marks the block changed in its chunk and rings the
 * chunk's doorbell (Atomics.add + Atomics.notify). The coordinator sleeps in `Atomics.waitAsync` on each
 * chunk's doorbell, and when it rings, wakes the managers of the blocks marked changed, which re-read a
 * whole snapshot: no state change needs a hand-written notification.
 *
 * Chunks: blocks live side by side in chunk SharedArrayBuffers (STATE_BLOCKS_PER_CHUNK blocks each, see
 * state_block_arena.ts), not one buffer each, and are watched per chunk, not per block: a node holds
 * 10,000 mostly idle timelines, and both a SharedArrayBuffer (a JS object and typed-array views on each
 * thread, a native backing store) and a pending `Atomics.waitAsync` (a promise and a native waiter node,
 * about 0.5 KiB) cost far more than a block's 200 bytes. A StateBlock is a chunk (whose views it shares)
 * and an index. The main thread's StateBlockArena hands blocks out and takes them back; the coordinator
 * receives each chunk once (coordinator_protocol.ts) and builds its blocks over it.
 *
 * Chunk layout (bytes), for a chunk of n blocks:
 *   0    Int32    doorbell: bumped and notified after every change of any block in the chunk
 *   4    Int32    reserved
 *   8    Int32[]  changed bitmap, ceil(n / 32) words: bit (i % 32) of word (i / 32) is set when block i
 *                 changes; the coordinator's watcher clears the words it reads (Atomics.exchange)
 *   H    blocks:  block i at H + i * STATE_BLOCK_BYTES, H = the above rounded up to 8 bytes
 * Block layout (bytes, from the block's start):
 *   0   Int32  change counter (Atomics.add by every writer)
 *   4   Int32  reserved (keeps the BigInt64 slots 8-byte aligned)
 *   8.. BigInt64 slots, in the order of `Slot` below
 * Order of a change (every step sequentially consistent): slot, block counter, changed bit, doorbell. A
 * watcher that reads the doorbell, then clears the bitmap, then waits for the doorbell to move from what
 * it read, therefore never misses a change. Slot writers: FLUSH/WRITE/SYNCED/COMMIT/PEER_HORIZON/TERM/
 * PROPOSERS/READERS/ACTIVITY: main thread; BACKUP, REMOTE_CONSISTENT, PERSISTED_(all), LOCAL_START, TIMELINE_START:
 * main thread too (`Timeline.publishState`: the acceptor's in-memory overlay and the control file live
 * there; the coordinator reports a confirmed backup_lsn to main, which merges it and publishes it);
 * REMOVED/EVICTED: coordinator. Readers: anyone.
 */
import { assert } from '../sync/assert.js';

export const Slot = {
  flushLsn: 0,
  writeLsn: 1,
  commitLsn: 2,
  backupLsn: 3,
  remoteConsistentLsn: 4,
  peerHorizonLsn: 5,
  term: 6,
  lastLogTerm: 7,
  proposerCount: 8,
  readerCount: 9,
  lastActivityMs: 10,
  localStartLsn: 11,
  removedUpToLsn: 12,
  persistedCommitLsn: 13,
  readerHorizonLsn: 14,
  persistedBackupLsn: 15,
  persistedPeerHorizonLsn: 16,
  persistedRemoteConsistentLsn: 17,
  timelineStartLsn: 18,
  /** 1 while the timeline is offloaded (coordinator). */
  evicted: 19,
  /**
   * End of the bytes durable on disk (TimelineWal's syncedLsn). Write tasks write only at or after it (a cut
   * is never below commit_lsn), so WAL removal keeps its segment. flushLsn can be ahead of it: after an
   * XLOG_SWITCH it is the next segment's start before the zero padding is written.
   */
  syncedLsn: 20,
} as const;
export type SlotName = keyof typeof Slot;

const SLOT_COUNT = 24;
const BLOCK_HEADER_BYTES = 8;
export const STATE_BLOCK_BYTES = BLOCK_HEADER_BYTES + SLOT_COUNT * 8;
/** Int32 index of a chunk's doorbell, and of the first word of its changed bitmap. */
const DOORBELL_INDEX = 0;
const CHANGED_BITMAP_INDEX = 2;
assert(Object.keys(Slot).length <= SLOT_COUNT, 'every slot fits in the block');
assert(STATE_BLOCK_BYTES % 8 === 0, 'blocks stay 8-byte aligned in a chunk');

/** Bytes before a chunk's first block: doorbell, reserved word, changed bitmap, padded to 8 bytes. */
const chunkHeaderBytes = (blockCount: number): number => Math.ceil((4 * CHANGED_BITMAP_INDEX + 4 * Math.ceil(blockCount / 32)) / 8) * 8;

/** The size of a chunk of `blockCount` state blocks. */
export const stateChunkBytes = (blockCount: number): number => chunkHeaderBytes(blockCount) + blockCount * STATE_BLOCK_BYTES;

/** Views over one chunk of state blocks, shared by every block in it, and the chunk's doorbell. Any thread. */
export class StateBlockChunk {
  readonly counters: Int32Array;
  readonly slots: BigInt64Array;
  readonly headerBytes: number;

  /**
   * `id`: the chunk's number on this node (how the coordinator names it); -1 for a standalone block.
   * `buffer`: a new one (zeroed) by default, else one the other thread made with this `blockCount`.
   */
  constructor(
    readonly id: number,
    readonly blockCount: number,
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(stateChunkBytes(blockCount)),
  ) {
    assert(Number.isInteger(blockCount) && blockCount > 0, 'a chunk holds at least one block');
    assert(buffer.byteLength === stateChunkBytes(blockCount), 'a chunk buffer has the size of its blocks');
    this.headerBytes = chunkHeaderBytes(blockCount);
    this.counters = new Int32Array(buffer);
    this.slots = new BigInt64Array(buffer);
  }

  get doorbell(): number {
    return Atomics.load(this.counters, DOORBELL_INDEX);
  }

  /** Resolves once the doorbell differs from `seen`. Never blocks the thread; one pending wait per chunk. */
  waitForDoorbell(seen: number): Promise<unknown> {
    const result = Atomics.waitAsync(this.counters, DOORBELL_INDEX, seen, Infinity);
    return result.async ? result.value : Promise.resolve(result.value);
  }

  /** Rings the doorbell without a change: wakes the watcher (it stops its wait when closing). */
  ringDoorbell(): void {
    Atomics.add(this.counters, DOORBELL_INDEX, 1);
    Atomics.notify(this.counters, DOORBELL_INDEX);
  }

  /** Clears the changed bitmap and calls `visit` with the index of every block that was marked. */
  takeChanged(visit: (index: number) => void): void {
    const words = Math.ceil(this.blockCount / 32);
    for (let word = 0; word < words; word++) {
      let bits = Atomics.exchange(this.counters, CHANGED_BITMAP_INDEX + word, 0);
      while (bits !== 0) {
        const bit = 31 - Math.clz32(bits);
        bits &= ~(1 << bit);
        visit(word * 32 + bit);
      }
    }
  }
}

export class StateBlock {
  #chunk: StateBlockChunk;
  #index: number;

  /** Block `index` of `chunk`. Without arguments: a standalone block in a chunk of its own (tests). */
  constructor(chunk: StateBlockChunk = new StateBlockChunk(-1, 1), index = 0) {
    assert(Number.isInteger(index) && index >= 0 && index < chunk.blockCount, 'state block index inside its chunk');
    this.#chunk = chunk;
    this.#index = index;
  }

  get chunk(): StateBlockChunk {
    return this.#chunk;
  }

  /** The block's index in its chunk. */
  get index(): number {
    return this.#index;
  }

  /**
   * Moves this block into a standalone chunk of its own, with its current values (the arena then hands the
   * old place to another timeline). A late reader or writer of a deleted timeline thus never sees or
   * changes the block's next owner. Main thread; call only once nothing else watches the old place.
   */
  moveToStandalone(): void {
    const standalone = new StateBlock();
    standalone.#setCounter(this.changeCount);
    for (const name of Object.keys(Slot) as SlotName[]) Atomics.store(standalone.#chunk.slots, standalone.#slotIndex(name), this.get(name));
    this.#chunk = standalone.#chunk;
    this.#index = 0;
  }

  /** Sets every slot to 0, without a change (the arena, before handing a reused block out). */
  zeroSlots(): void {
    const first = this.#slotIndex('flushLsn');
    for (let slot = 0; slot < SLOT_COUNT; slot++) Atomics.store(this.#chunk.slots, first + slot, 0n);
  }

  get(slot: SlotName): bigint {
    return Atomics.load(this.#chunk.slots, this.#slotIndex(slot));
  }

  /** Stores the slot and, if it changed, bumps the change counter and rings the doorbell. */
  set(slot: SlotName, value: bigint): void {
    const previous = Atomics.exchange(this.#chunk.slots, this.#slotIndex(slot), value);
    if (previous !== value) this.#bump();
  }

  /** Stores several slots and bumps the counter once. */
  setMany(values: Partial<Record<SlotName, bigint>>): void {
    let changed = false;
    for (const [slot, value] of Object.entries(values) as [SlotName, bigint][]) {
      changed = Atomics.exchange(this.#chunk.slots, this.#slotIndex(slot), value) !== value || changed;
    }
    if (changed) this.#bump();
  }

  add(slot: SlotName, delta: bigint): void {
    Atomics.add(this.#chunk.slots, this.#slotIndex(slot), delta);
    this.#bump();
  }

  get changeCount(): number {
    return Atomics.load(this.#chunk.counters, this.#counterIndex());
  }

  snapshot(): Record<SlotName, bigint> {
    const out = {} as Record<SlotName, bigint>;
    for (const name of Object.keys(Slot) as SlotName[]) out[name] = this.get(name);
    return out;
  }

  #counterIndex(): number {
    return (this.#chunk.headerBytes + this.#index * STATE_BLOCK_BYTES) / 4;
  }

  #slotIndex(slot: SlotName): number {
    return (this.#chunk.headerBytes + this.#index * STATE_BLOCK_BYTES + BLOCK_HEADER_BYTES) / 8 + Slot[slot];
  }

  #setCounter(value: number): void {
    Atomics.store(this.#chunk.counters, this.#counterIndex(), value);
  }

  /** See the header for why this order. */
  #bump(): void {
    const counters = this.#chunk.counters;
    Atomics.add(counters, this.#counterIndex(), 1);
    Atomics.or(counters, CHANGED_BITMAP_INDEX + (this.#index >>> 5), 1 << (this.#index & 31));
    Atomics.add(counters, DOORBELL_INDEX, 1);
    Atomics.notify(counters, DOORBELL_INDEX);
  }
}
