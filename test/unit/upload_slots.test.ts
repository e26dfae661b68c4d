/**
 * UploadSlots: a bounded number of concurrent uploads, each lending one reusable segment buffer; a buffer
 * whose upload did not settle cleanly is never lent again; free buffers are released after idleness.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { UploadSlots } from '../../src/remote/upload_slots.js';

const SEGMENT_BYTES = 1024 * 1024;
const never = new AbortController().signal;

describe('UploadSlots', () => {
  test('a released reusable buffer is lent to the next slot instead of a new one', async () => {
    const slots = new UploadSlots(2);
    const first = await slots.acquire(never);
    const buffer = first.buffer(SEGMENT_BYTES + 1);
    assert.ok(buffer.length >= SEGMENT_BYTES + 1);
    assert.equal(first.buffer(SEGMENT_BYTES + 1), buffer, 'one buffer per slot');
    first.release(true);
    assert.equal(slots.freeBuffers, 1);
    const second = await slots.acquire(never);
    assert.equal(second.buffer(SEGMENT_BYTES + 1), buffer);
    second.release(true);
  });

  test('a buffer whose upload may still be in flight is dropped, never reused', async () => {
    const slots = new UploadSlots(2);
    const first = await slots.acquire(never);
    const buffer = first.buffer(SEGMENT_BYTES + 1);
    first.release(false);
    assert.equal(slots.freeBuffers, 0);
    const second = await slots.acquire(never);
    assert.notEqual(second.buffer(SEGMENT_BYTES + 1), buffer);
    second.release(true);
  });

  test('concurrent slots get distinct buffers; a larger request is not served by a smaller buffer', async () => {
    const slots = new UploadSlots(3);
    const a = await slots.acquire(never);
    const b = await slots.acquire(never);
    const small = a.buffer(SEGMENT_BYTES + 1);
    assert.notEqual(b.buffer(SEGMENT_BYTES + 1), small);
    a.release(true);
    const c = await slots.acquire(never);
    const large = c.buffer(4 * SEGMENT_BYTES + 1);
    assert.notEqual(large, small);
    assert.ok(large.length >= 4 * SEGMENT_BYTES + 1);
    b.release(true);
    c.release(true);
    assert.ok(slots.freeBuffers <= slots.permits, 'never more free buffers than slots');
  });

  test('bounds concurrent holders; a waiter gets the slot (and its buffer) when one is released', async () => {
    const slots = new UploadSlots(1);
    const holder = await slots.acquire(never);
    const buffer = holder.buffer(SEGMENT_BYTES + 1);
    let granted = false;
    const waiting = slots.acquire(never).then((slot) => {
      granted = true;
      return slot;
    });
    await new Promise(setImmediate);
    assert.equal(granted, false, 'the only slot is held');
    holder.release(true);
    holder.release(true); // idempotent
    const next = await waiting;
    assert.equal(slots.inUse, 1);
    assert.equal(next.buffer(SEGMENT_BYTES + 1), buffer);
    next.release(true);
    assert.equal(slots.inUse, 0);
  });

  test('an aborted wait takes no slot', async () => {
    const slots = new UploadSlots(1);
    const holder = await slots.acquire(never);
    const controller = new AbortController();
    const waiting = slots.acquire(controller.signal);
    controller.abort(new Error('stop'));
    await assert.rejects(waiting, /stop/);
    holder.release(true);
    assert.equal(slots.inUse, 0);
  });

  test('free buffers are released once no upload ran for the idle time, and kept while uploads go on', async () => {
    const slots = new UploadSlots(2, 30);
    const slot = await slots.acquire(never);
    slot.buffer(SEGMENT_BYTES + 1);
    slot.release(true);
    assert.equal(slots.freeBuffers, 1);
    const again = await slots.acquire(never); // cancels the idle release
    again.buffer(SEGMENT_BYTES + 1);
    assert.equal(slots.freeBuffers, 0, 'lent again');
    again.release(true);
    for (const started = performance.now(); slots.freeBuffers > 0; ) {
      assert.ok(performance.now() - started < 5_000, 'idle buffers are released');
      await sleep(10);
    }
  });
});
