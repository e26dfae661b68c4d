/** The SharedArrayBuffer ring (wraparound, LSN addressing) and the state block (slots, change counter wakeups). */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { RingView } from '../../src/ingest/ring.js';
import { StateBlock, StateBlockChunk } from '../../src/ingest/state_block.js';

describe('RingView', () => {
  test('writes and reads back at every offset, wrapping at the end', () => {
    const ring = RingView.allocate(64);
    for (let start = 0n; start < 200n; start += 5n) {
      const data = Uint8Array.from({ length: 40 }, (_, i) => (Number(start) + i) & 0xff);
      ring.write(start, data);
      const pieces = ring.pieces(start, data.length);
      assert.deepEqual(Buffer.concat(pieces.map((piece) => Buffer.from(piece))), Buffer.from(data));
      assert.equal(pieces.length, Number(start % 64n) + 40 > 64 ? 2 : 1);
      const copy = new Uint8Array(40);
      ring.copyOut(start, 40, copy);
      assert.deepEqual(copy, data);
    }
  });

  test('a second view over the same buffer (another thread) sees the same bytes', () => {
    const ring = RingView.allocate(16);
    ring.write(12n, Uint8Array.of(1, 2, 3, 4, 5, 6));
    const other = new RingView(ring.buffer);
    assert.deepEqual([...other.pieces(12n, 6).flatMap((piece) => [...piece])], [1, 2, 3, 4, 5, 6]);
  });
});

  test('large copies at every alignment of source and ring offset (the memcpy path) wrap and read back exactly', () => {
    const ring = RingView.allocate(4096);
    const frame = Buffer.from(Uint8Array.from({ length: 3000 }, (_, i) => (i * 31 + 7) & 0xff));
    for (let sourceOffset = 0; sourceOffset < 8; sourceOffset++) {
      for (const start of [0n, 3n, 8n, 1500n, 4096n - 1000n, 4096n + 5n]) {
        for (const length of [255, 256, 1000, 2500]) {
          const data = frame.subarray(sourceOffset, sourceOffset + length);
          ring.write(start, data);
          const copy = Buffer.alloc(length + 16, 0xee);
          ring.copyOut(start, length, copy, 3);
          assert.deepEqual(copy.subarray(3, 3 + length), data, `source +${sourceOffset}, ring ${start}, ${length} bytes`);
          assert.equal(copy[2], 0xee, 'nothing written before the target range');
          assert.equal(copy[3 + length], 0xee, 'nothing written after the target range');
        }
      }
    }
  });

describe('StateBlock', () => {
  test('set bumps the change counter only when the value changes', () => {
    const block = new StateBlock();
    const before = block.changeCount;
    block.set('flushLsn', 10n);
    block.set('flushLsn', 10n);
    assert.equal(block.changeCount, before + 1);
    block.setMany({ commitLsn: 5n, flushLsn: 10n });
    assert.equal(block.changeCount, before + 2);
    assert.equal(block.snapshot().commitLsn, 5n);
  });

  test('a waiter in another thread wakes on the doorbell of a change made here', async () => {
    const block = new StateBlock();
    const worker = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       const words = new Int32Array(workerData);
       const seen = Atomics.load(words, 0); // the chunk's doorbell: Int32 0 (state_block.ts layout)
       const result = Atomics.waitAsync(words, 0, seen, 10000);
       // A pending waitAsync holds no handle: without this timer the thread may exit while it waits
       // (the coordinator's own waits are kept alive by its message port).
       const alive = setTimeout(() => {}, 10000);
       parentPort.postMessage('waiting'); // after waitAsync registered: the change below must wake it
       Promise.resolve(result.value).then((outcome) => { clearTimeout(alive); parentPort.postMessage(outcome); });`,
      { eval: true, workerData: block.chunk.buffer },
    );
    const done = new Promise<string>((resolve) => worker.on('message', (message: string) => message !== 'waiting' && resolve(message)));
    await new Promise<void>((resolve) => worker.once('message', () => resolve()));
    block.set('flushLsn', 42n);
    assert.equal(await done, 'ok');
    const changed: number[] = [];
    block.chunk.takeChanged((index) => changed.push(index));
    assert.deepEqual(changed, [0], 'the block is marked changed');
    assert.equal(block.get('flushLsn'), 42n);
    await worker.terminate();
  });

  test('the changed bitmap marks exactly the blocks that changed, and reading clears it', () => {
    const chunk = new StateBlockChunk(0, 70); // three bitmap words
    const blocks = [0, 31, 32, 69].map((index) => new StateBlock(chunk, index));
    const doorbell = chunk.doorbell;
    for (const block of blocks) block.set('commitLsn', 1n);
    blocks[0]?.set('commitLsn', 1n); // no change: no mark, no ring
    const changed: number[] = [];
    chunk.takeChanged((index) => changed.push(index));
    assert.deepEqual(changed.sort((a, b) => a - b), [0, 31, 32, 69]);
    assert.equal(chunk.doorbell, doorbell + 4);
    chunk.takeChanged(() => assert.fail('the bitmap was cleared'));
    assert.equal(new StateBlock(chunk, 1).get('commitLsn'), 0n, 'neighbours are untouched');
  });
});
