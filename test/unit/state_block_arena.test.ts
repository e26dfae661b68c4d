/** src/ingest/state_block_arena.ts: state blocks handed out from shared chunks, reused after a delete. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StateBlock, stateChunkBytes } from '../../src/ingest/state_block.js';
import { STATE_BLOCKS_PER_CHUNK, StateBlockArena } from '../../src/ingest/state_block_arena.js';
import { AssertionError } from '../../src/sync/assert.js';

describe('StateBlockArena', () => {
  test('hands out consecutive blocks of one chunk, then starts a new chunk', () => {
    const arena = new StateBlockArena(3);
    const blocks = Array.from({ length: 4 }, () => arena.allocate());
    assert.deepEqual(blocks.map((block) => [block.chunk.id, block.index]), [[0, 0], [0, 1], [0, 2], [1, 0]]);
    assert.equal(blocks[0]?.chunk, blocks[2]?.chunk, 'blocks of one chunk share its buffer and views');
    assert.equal(blocks[0]?.chunk.buffer.byteLength, stateChunkBytes(3));
    assert.equal(arena.chunkCount, 2);
    assert.equal(arena.allocatedCount, 4);
  });

  test('the default chunk holds STATE_BLOCKS_PER_CHUNK blocks', () => {
    const arena = new StateBlockArena();
    const blocks = Array.from({ length: STATE_BLOCKS_PER_CHUNK + 1 }, () => arena.allocate());
    assert.equal(arena.chunkCount, 2);
    assert.equal(blocks.at(-1)?.index, 0);
    assert.equal(blocks.at(-2)?.index, STATE_BLOCKS_PER_CHUNK - 1);
  });

  test('blocks of one chunk are independent: slots and change counters', () => {
    const arena = new StateBlockArena(4);
    const [first, second, third] = [arena.allocate(), arena.allocate(), arena.allocate()];
    assert.ok(first !== undefined && second !== undefined && third !== undefined);
    const counts = [first.changeCount, second.changeCount, third.changeCount];
    second.set('flushLsn', 7n);
    second.set('evicted', 1n); // the last named slot: stays inside its own block
    assert.equal(first.get('flushLsn'), 0n);
    assert.equal(third.get('flushLsn'), 0n);
    assert.equal(second.get('flushLsn'), 7n);
    assert.equal(third.snapshot().evicted, 0n);
    assert.deepEqual([first.changeCount, second.changeCount, third.changeCount], [counts[0], (counts[1] ?? 0) + 2, counts[2]]);
  });

  test('a freed block is reused (zeroed) before a new one is taken, and the freed object keeps its values apart', () => {
    const arena = new StateBlockArena(2);
    const first = arena.allocate();
    const second = arena.allocate();
    const chunk = first.chunk;
    first.setMany({ flushLsn: 100n, proposerCount: 2n });
    arena.free(first);
    assert.equal(arena.allocatedCount, 1);
    assert.equal(first.chunk.id, -1, 'a freed block moved to a standalone buffer');
    assert.equal(first.get('flushLsn'), 100n, 'with its values');
    const reused = arena.allocate();
    assert.equal(reused.chunk, chunk);
    assert.equal(reused.index, 0);
    assert.equal(arena.chunkCount, 1, 'no new chunk while a freed block is available');
    assert.deepEqual(Object.values(reused.snapshot()), Object.values(new StateBlock().snapshot()), 'a reused block starts at zero');
    first.set('flushLsn', 200n); // a late write through the freed object
    assert.equal(reused.get('flushLsn'), 0n, 'never reaches the block it used to be');
    assert.equal(second.get('flushLsn'), 0n);
  });

  test('refuses a second free and a block of another arena', () => {
    const arena = new StateBlockArena(2);
    const block = arena.allocate();
    arena.free(block);
    assert.throws(() => arena.free(block), AssertionError);
    assert.throws(() => arena.free(new StateBlockArena(2).allocate()), AssertionError);
    assert.throws(() => arena.free(new StateBlock()), AssertionError);
  });

  test('a block index must lie inside its chunk', () => {
    const arena = new StateBlockArena(2);
    const chunk = arena.allocate().chunk;
    assert.throws(() => new StateBlock(chunk, 2), AssertionError);
    assert.throws(() => new StateBlock(chunk, -1), AssertionError);
    assert.doesNotThrow(() => new StateBlock(chunk, 1));
  });
});
