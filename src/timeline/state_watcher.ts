/**
 * StateWatcher: how the coordinator learns that state blocks changed (state_block.ts). It keeps one
 * `Atomics.waitAsync` per chunk of blocks, on the chunk's doorbell, rather than one per timeline: an idle
 * manager then holds a slot in a listener array instead of a pending wait (a promise and a native waiter
 * node, about 0.5 KiB each). When a doorbell rings, the watcher reads the doorbell, clears the chunk's
 * changed bitmap, calls the listener of every block that was marked, and waits again from the value it
 * read, so a change made meanwhile rings at once and none is missed (see the order in state_block.ts).
 * A listener is called for each change of its block (coalesced per ring), whatever it is waiting for;
 * it decides what the change means. Coordinator thread.
 */
import type { StateBlock, StateBlockChunk } from '../ingest/state_block.js';
import { assert } from '../sync/assert.js';

export interface StateChangeListener {
  /** Its block changed since the last call (or since it started listening). Must not throw. */
  onStateChanged(): void;
}

interface WatchedChunk {
  readonly chunk: StateBlockChunk;
  /** By block index; null where no manager listens. */
  readonly listeners: (StateChangeListener | null)[];
}

export class StateWatcher {
  readonly #chunks = new Map<number, WatchedChunk>();
  #closed = false;

  /** Starts watching a chunk main sent (once per chunk, before any block of it is watched). */
  addChunk(chunk: StateBlockChunk): void {
    assert(!this.#closed, 'no chunk is added after close');
    assert(!this.#chunks.has(chunk.id), 'each chunk is watched once');
    const watched: WatchedChunk = { chunk, listeners: new Array<StateChangeListener | null>(chunk.blockCount).fill(null) };
    this.#chunks.set(chunk.id, watched);
    this.#wait(watched);
  }

  /** The chunk `id` as added, for building the blocks of a registration; undefined if never added. */
  chunk(id: number): StateBlockChunk | undefined {
    return this.#chunks.get(id)?.chunk;
  }

  /** Calls `listener` on every change of `block` from now on, until `unwatch`. One listener per block. */
  watch(block: StateBlock, listener: StateChangeListener): void {
    const watched = this.#chunks.get(block.chunk.id);
    assert(watched !== undefined && watched.chunk === block.chunk, 'a watched block is in a chunk of this watcher');
    assert(watched.listeners[block.index] === null, 'one listener per state block');
    watched.listeners[block.index] = listener;
  }

  unwatch(block: StateBlock, listener: StateChangeListener): void {
    const watched = this.#chunks.get(block.chunk.id);
    if (watched !== undefined && watched.listeners[block.index] === listener) watched.listeners[block.index] = null;
  }

  /** Ends every wait (the coordinator is shutting down): nothing stays pending on the shared memory. */
  close(): void {
    this.#closed = true;
    for (const { chunk } of this.#chunks.values()) chunk.ringDoorbell();
  }

  #wait(watched: WatchedChunk): void {
    const seen = watched.chunk.doorbell;
    watched.chunk.takeChanged((index) => watched.listeners[index]?.onStateChanged());
    void watched.chunk.waitForDoorbell(seen).then(() => {
      if (!this.#closed) this.#wait(watched);
    });
  }
}
