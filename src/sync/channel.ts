/**
 * BoundedChannel: a FIFO with a capacity. A full channel makes `send()` wait, and that wait is the
 * backpressure; `trySend()` says no instead. `receive()` waits while empty. Single thread.
 */
import { assert } from './assert.js';
import { Watch } from './watch.js';

export class BoundedChannel<T> {
  readonly #items: T[] = [];
  readonly #pushes = new Watch(0);
  readonly #shifts = new Watch(0);
  #closed = false;

  constructor(readonly capacity: number) {
    assert(Number.isInteger(capacity), 'channel capacity must be an integer');
    assert(capacity > 0, 'channel capacity must be positive');
  }

  get length(): number {
    return this.#items.length;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Waits for room, then enqueues. Abort-safe: an aborted send enqueues nothing. */
  async send(item: T, signal: AbortSignal): Promise<void> {
    while (this.#items.length >= this.capacity) await this.#shifts.changed(this.#shifts.version, signal);
    this.#push(item);
  }

  /** Enqueues if there is room; returns false when full. */
  trySend(item: T): boolean {
    if (this.#items.length >= this.capacity) return false;
    this.#push(item);
    return true;
  }

  /** Waits for an item. After `close()`, drains what is left, then returns undefined. Abort-safe. */
  async receive(signal: AbortSignal): Promise<T | undefined> {
    while (this.#items.length === 0) {
      if (this.#closed) return undefined;
      await this.#pushes.changed(this.#pushes.version, signal);
    }
    const item = this.#items.shift() as T;
    this.#shifts.set(this.#shifts.value + 1);
    return item;
  }

  /** No more sends are expected; wakes receivers so they can finish. */
  close(): void {
    this.#closed = true;
    this.#pushes.set(this.#pushes.value + 1);
  }

  #push(item: T): void {
    assert(!this.#closed, 'send on a closed channel');
    this.#items.push(item);
    this.#pushes.set(this.#pushes.value + 1);
  }
}
