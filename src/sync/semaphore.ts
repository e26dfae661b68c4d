/**
 * Semaphore: at most `permits` holders at once, FIFO for waiters. Bounds concurrent remote requests and
 * uploads (each holder may own a large buffer, so the bound is also a memory bound). The waiting queue is
 * bounded by the callers (a fixed number of jobs per timeline), not here. Single thread.
 */
import { assert } from './assert.js';
import { abortReason } from './cancel.js';

export class Semaphore {
  #available: number;
  #waiters: Array<() => void> = [];

  constructor(readonly permits: number) {
    assert(Number.isInteger(permits) && permits > 0, 'a semaphore has at least one permit');
    this.#available = permits;
  }

  /** Permits held right now. */
  get inUse(): number {
    return this.permits - this.#available;
  }

  get waiting(): number {
    return this.#waiters.length;
  }

  /** Waits for a permit and returns its (idempotent) release. Abort-safe: an aborted wait takes nothing. */
  async acquire(signal: AbortSignal): Promise<() => void> {
    if (signal.aborted) throw abortReason(signal);
    if (this.#available > 0) {
      this.#available -= 1;
      return this.#releaser();
    }
    await new Promise<void>((resolve, reject) => {
      const grant = (): void => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = (): void => {
        this.#waiters = this.#waiters.filter((waiter) => waiter !== grant);
        reject(abortReason(signal));
      };
      this.#waiters.push(grant);
      signal.addEventListener('abort', onAbort, { once: true });
    });
    return this.#releaser();
  }

  /**
   * A permit now, or null when none is free; never waits. It cannot pass anyone queued: there are waiters only
   * while no permit is free.
   */
  tryAcquire(): (() => void) | null {
    if (this.#available === 0) return null;
    this.#available -= 1;
    return this.#releaser();
  }

  async run<T>(signal: AbortSignal, work: () => Promise<T>): Promise<T> {
    const release = await this.acquire(signal);
    try {
      return await work();
    } finally {
      release();
    }
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiters.shift();
      if (next === undefined) this.#available += 1;
      else next(); // the permit passes straight to the next waiter
      assert(this.#available <= this.permits, 'released more permits than exist');
    };
  }
}
