/**
 * StateBlockArena: hands out the state blocks of one node's timelines (state_block.ts) from chunk
 * SharedArrayBuffers of STATE_BLOCKS_PER_CHUNK blocks, allocated as needed, and takes them back when a
 * timeline is deleted. A freed block is handed out again before a new chunk is made (last freed, first
 * reused), and is zeroed when it is handed out, so a new timeline starts from an all-zero block as it did
 * with a buffer of its own. Chunks are never returned: the arena holds the most blocks the node ever held
 * at once, as the registry's map does, and grows only with the number of timelines.
 *
 * A freed block must not be watched or written any more through its old place: `free` first moves the
 * StateBlock object into a standalone buffer (`moveToStandalone`), and the caller frees only once the
 * timeline's manager has stopped (its gate closed) and its write tasks have ended. Main thread.
 */
import { assert } from '../sync/assert.js';
import { StateBlock, StateBlockChunk } from './state_block.js';

/**
 * Blocks per chunk: 256 × 200 B = 50 KiB a chunk. Large enough that 10,000 timelines need only 40
 * SharedArrayBuffers (and the coordinator 40 doorbell waits), small enough that a node with a few
 * timelines wastes little, and that a doorbell wakes the watcher for at most 8 bitmap words.
 */
export const STATE_BLOCKS_PER_CHUNK = 256;

export class StateBlockArena {
  readonly #chunks: StateBlockChunk[] = [];
  /** Blocks handed out so far in the newest chunk (as if full before the first chunk). */
  #usedInLastChunk: number;
  /** Freed blocks, as `chunkId * blocksPerChunk + index`; reused last-in, first-out. */
  readonly #free: number[] = [];
  #allocated = 0;

  constructor(readonly blocksPerChunk: number = STATE_BLOCKS_PER_CHUNK) {
    assert(Number.isInteger(blocksPerChunk) && blocksPerChunk > 0, 'a chunk holds at least one block');
    this.#usedInLastChunk = blocksPerChunk;
  }

  /** Blocks handed out and not freed. */
  get allocatedCount(): number {
    return this.#allocated;
  }

  get chunkCount(): number {
    return this.#chunks.length;
  }

  /** A zeroed block: a freed one if any, else the next one of the newest chunk, else one of a new chunk. */
  allocate(): StateBlock {
    let chunk: StateBlockChunk;
    let index: number;
    const reused = this.#free.pop();
    if (reused !== undefined) {
      chunk = this.#chunks[Math.floor(reused / this.blocksPerChunk)] as StateBlockChunk;
      index = reused % this.blocksPerChunk;
    } else {
      if (this.#usedInLastChunk === this.blocksPerChunk) {
        this.#chunks.push(new StateBlockChunk(this.#chunks.length, this.blocksPerChunk));
        this.#usedInLastChunk = 0;
      }
      chunk = this.#chunks[this.#chunks.length - 1] as StateBlockChunk;
      index = this.#usedInLastChunk++;
    }
    const block = new StateBlock(chunk, index);
    block.zeroSlots();
    this.#allocated += 1;
    return block;
  }

  /**
   * Takes `block` back. Call only once nothing watches or writes it through its place any more (the
   * timeline's manager stopped, its tasks and writes ended); the object itself moves to a standalone
   * buffer, so a late use of it is harmless.
   */
  free(block: StateBlock): void {
    const chunk = block.chunk;
    // A freed block has moved to a standalone chunk (id -1), so this also refuses a second free.
    assert(this.#chunks[chunk.id] === chunk, 'a block is freed once, to the arena that handed it out');
    const number = chunk.id * this.blocksPerChunk + block.index;
    block.moveToStandalone();
    this.#free.push(number);
    this.#allocated -= 1;
    assert(this.#allocated >= 0, 'no more blocks freed than handed out');
  }
}
