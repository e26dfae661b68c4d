/** The SharedArrayBuffer ring (wraparound, LSN addressing) and the state block (slots, change counter wakeups). */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { RingView } from '../../src/ingest/ring.js';
import { StateBlock } from '../../src/ingest/state_block.js';

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

  test('a waiter in another thread wakes on a change made here', async () => {
    const block = new StateBlock();
    const worker = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       const counter = new Int32Array(workerData, 0, 2);
       const seen = Atomics.load(counter, 0);
       const result = Atomics.waitAsync(counter, 0, seen, 10000);
       parentPort.postMessage('waiting'); // after waitAsync registered: the change below must wake it
       Promise.resolve(result.async ? result.value : result.value).then((outcome) => {
         parentPort.postMessage(outcome + ':' + new BigInt64Array(workerData, 8, 16)[0]);
       });`,
      { eval: true, workerData: block.buffer },
    );
    const messages: string[] = [];
    const done = new Promise<string>((resolve) => worker.on('message', (message: string) => (messages.push(message), message !== 'waiting' && resolve(message))));
    await new Promise<void>((resolve) => worker.once('message', () => resolve()));
    block.set('flushLsn', 42n);
    assert.equal(await done, 'ok:42');
    await worker.terminate();
  });
});
