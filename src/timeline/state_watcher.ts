/**
 * StateWatcher: how the coordinator learns that state blocks changed (state_block.ts). It keeps one
 * `Atomics.waitAsync` per chunk of blocks, on the chunk's doorbell, rather than one per timeline: an idle
 * manager then holds a slot in a listener array instead of a pending wait (a promise and a native waiter
 * node, about 0.5 KiB each). When a doorbell rings, the watcher reads the doorbell, clears the chunk's
 * changed bitmap, calls the listener of every block that was marked, and waits again from the value it
 * read, so a change made meanwhile rings at once and none is missed (see the order in state_block.ts).
 * A listener is called for each change of its block (coalesced per ring), whatever it is waiting for;
 * it decides what the change means.
 *
 * Rate: after handling a ring, a chunk's wait is re-armed only `coalesceMs` later. An isolated change is
 * thus seen at once, but a streaming timeline, whose flush_lsn moves on every acknowledged append, wakes
 * this thread at most once per `coalesceMs` instead of once per append: each wake-up costs the writer a
 * cross-thread notification and this thread an event-loop turn and a manager pass (about 0.15 ms of CPU
 * together, measured with lone 8 KiB appends), which on a busy node is CPU taken from ingest. Changes made
 * meanwhile only set their bits and move the doorbell (no waiter: no notification), and the re-armed wait
 * returns at once for them. Nothing a manager does is that urgent: it backs up, removes, evicts and saves
 * on a scale of seconds. Coordinator thread.
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

/** The default `coalesceMs`: at most 100 wake-ups a second per chunk of 256 timelines. */
export const STATE_COALESCE_MS = 10;

export class StateWatcher {
  readonly #chunks = new Map<number, WatchedChunk>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #closed = false;

  /** `coalesceMs`: how long a chunk's wait stays unarmed after a ring was handled (0: re-arm at once). */
  constructor(private readonly coalesceMs = STATE_COALESCE_MS) {
    assert(Number.isFinite(coalesceMs) && coalesceMs >= 0, 'state watcher coalescing delay');
  }

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
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    for (const { chunk } of this.#chunks.values()) chunk.ringDoorbell();
  }

  /** Handles the chunk's marked blocks, then (after `coalesceMs`) waits for its doorbell to move. */
  #wait(watched: WatchedChunk): void {
    const seen = watched.chunk.doorbell;
    watched.chunk.takeChanged((index) => watched.listeners[index]?.onStateChanged());
    if (this.coalesceMs === 0) {
      this.#arm(watched, seen);
      return;
    }
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      this.#arm(watched, seen);
    }, this.coalesceMs);
    timer.unref(); // the coordinator's port keeps its thread alive, not this timer
    this.#timers.add(timer);
  }

  /** Resolves at once if the doorbell moved past `seen` (a change during the delay), else on the next ring. */
  #arm(watched: WatchedChunk, seen: number): void {
    void watched.chunk.waitForDoorbell(seen).then(() => {
      if (!this.#closed) this.#wait(watched);
    });
  }
}
