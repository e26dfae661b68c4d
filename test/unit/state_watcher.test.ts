/** src/timeline/state_watcher.ts: one doorbell wait per chunk wakes the listeners of the blocks that changed. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { StateBlock, StateBlockChunk } from '../../src/ingest/state_block.js';
import { AssertionError } from '../../src/sync/assert.js';
import { StateWatcher } from '../../src/timeline/state_watcher.js';
import { waitFor } from '../harness/wait.js';
import { ManagerWakeup } from '../../src/timeline/manager_wakeup.js';

/** For the assertions that nothing happens: far longer than a doorbell ring takes to reach the watcher. */
const quiet = (): Promise<void> => sleep(50);

function counter(): { calls: number; onStateChanged(): void } {
  return {
    calls: 0,
    onStateChanged() {
      this.calls += 1;
    },
  };
}

describe('StateWatcher', () => {
  test('wakes the listener of each changed block, and only those', async () => {
    const watcher = new StateWatcher();
    const chunk = new StateBlockChunk(0, 40);
    watcher.addChunk(chunk);
    const [first, second, third] = [new StateBlock(chunk, 0), new StateBlock(chunk, 33), new StateBlock(chunk, 39)];
    const listeners = [counter(), counter(), counter()];
    watcher.watch(first, listeners[0]!);
    watcher.watch(second, listeners[1]!);
    watcher.watch(third, listeners[2]!);
    first.set('flushLsn', 1n);
    second.set('flushLsn', 1n);
    await waitFor(() => listeners[0]!.calls === 1 && listeners[1]!.calls === 1);
    assert.deepEqual(listeners.map((listener) => listener.calls), [1, 1, 0]);
    second.set('commitLsn', 5n);
    await waitFor(() => listeners[1]!.calls === 2);
    assert.deepEqual(listeners.map((listener) => listener.calls), [1, 2, 0], 'waits again after each ring');
    watcher.close();
  });

  test('an unwatched block wakes nobody; a block of a chunk never added is refused', async () => {
    const watcher = new StateWatcher();
    const chunk = new StateBlockChunk(3, 2);
    watcher.addChunk(chunk);
    const block = new StateBlock(chunk, 1);
    const listener = counter();
    watcher.watch(block, listener);
    assert.throws(() => watcher.watch(block, counter()), AssertionError, 'one listener per block');
    watcher.unwatch(block, listener);
    block.set('flushLsn', 9n);
    await quiet();
    assert.equal(listener.calls, 0);
    assert.equal(watcher.chunk(3), chunk);
    assert.throws(() => watcher.watch(new StateBlock(new StateBlockChunk(4, 2), 0), counter()), AssertionError);
    watcher.close();
  });

  test('a change from another StateBlock object over the same memory (the other thread) wakes the listener', async () => {
    const watcher = new StateWatcher();
    const main = new StateBlockChunk(0, 4);
    const coordinatorView = new StateBlockChunk(0, 4, main.buffer); // as the coordinator builds it from the message
    watcher.addChunk(coordinatorView);
    const listener = counter();
    watcher.watch(new StateBlock(coordinatorView, 2), listener);
    new StateBlock(main, 2).add('proposerCount', 1n);
    await waitFor(() => listener.calls === 1);
    assert.equal(listener.calls, 1);
    watcher.close();
  });
});

describe('StateWatcher coalescing', () => {
  /** A watcher with `coalesceMs`, one chunk of one block, and a counting listener on it. */
  function watchedBlock(coalesceMs: number): { watcher: StateWatcher; block: StateBlock; listener: ReturnType<typeof counter> } {
    const watcher = new StateWatcher(coalesceMs);
    const chunk = new StateBlockChunk(0, 1);
    watcher.addChunk(chunk); // its first pass runs now; the wait is armed `coalesceMs` later
    const block = new StateBlock(chunk, 0);
    const listener = counter();
    watcher.watch(block, listener);
    return { watcher, block, listener };
  }

  test('after a pass, changes wake nobody until coalesceMs passed', async () => {
    const { watcher, block, listener } = watchedBlock(60_000);
    block.set('flushLsn', 1n);
    await quiet();
    assert.equal(listener.calls, 0, 'the wait is armed only after the delay (60 s here)');
    watcher.close();
  });

  test('changes during the delay wake the listener once when it ends; later changes are still seen', async () => {
    const { watcher, block, listener } = watchedBlock(200);
    for (let i = 1n; i <= 5n; i++) {
      block.set('flushLsn', i); // inside the first delay: no wake-up until it ends, then one
      await new Promise((resolve) => setImmediate(resolve));
    }
    await waitFor(() => listener.calls === 1);
    block.set('commitLsn', 9n);
    await waitFor(() => listener.calls === 2);
    watcher.close();
  });

  test('coalesceMs 0 re-arms at once: each separate change wakes the listener', async () => {
    const { watcher, block, listener } = watchedBlock(0);
    block.set('flushLsn', 1n);
    await waitFor(() => listener.calls === 1);
    block.set('flushLsn', 2n);
    await waitFor(() => listener.calls === 2);
    watcher.close();
  });
});

describe('ManagerWakeup', () => {
  test('wakes on a block change only while armed with a seen counter', async () => {
    const watcher = new StateWatcher();
    const chunk = new StateBlockChunk(0, 1);
    watcher.addChunk(chunk);
    const block = new StateBlock(chunk, 0);
    const wakeup = new ManagerWakeup(block, watcher, () => performance.now());
    let woken = 0;
    wakeup.arm(null, Infinity, () => (woken += 1));
    block.set('flushLsn', 1n);
    await quiet();
    assert.equal(woken, 0, 'not watching the block');
    wakeup.kick();
    assert.equal(woken, 1);
    wakeup.reset();
    wakeup.arm(block.changeCount, Infinity, () => (woken += 1));
    block.set('flushLsn', 2n);
    await waitFor(() => woken === 2);
    assert.equal(woken, 2, 'woken by the change');
    wakeup.reset();
    const seen = block.changeCount;
    block.set('flushLsn', 3n); // a change between the snapshot and the arm
    wakeup.arm(seen, Infinity, () => (woken += 1));
    await waitFor(() => woken === 3);
    assert.equal(woken, 3, 'a counter past `seen` wakes at once');
    wakeup.release();
    block.set('flushLsn', 4n);
    await quiet();
    assert.equal(woken, 3);
    watcher.close();
  });

  test('wakes at its deadline', async () => {
    const watcher = new StateWatcher();
    const chunk = new StateBlockChunk(0, 1);
    watcher.addChunk(chunk);
    const wakeup = new ManagerWakeup(new StateBlock(chunk, 0), watcher, () => performance.now());
    let woken = false;
    wakeup.arm(null, performance.now() + 5, () => (woken = true));
    await sleep(30);
    assert.equal(woken, true);
    wakeup.release();
    watcher.close();
  });
});
