/**
 * Mutex: a FIFO async lock. Each timeline's acceptor state changes in one place, in order; several proposer
 * connections (or an HTTP call) may race for it, so async acceptor operations hold this lock. Single thread.
 */
import { abortReason } from './cancel.js';

export class Mutex {
  #held = false;
  #waiters: Array<() => void> = [];

  get locked(): boolean {
    return this.#held;
  }

  /** Waits for the lock and returns the function that releases it (idempotent). Abort-safe. */
  async lock(signal: AbortSignal): Promise<() => void> {
    if (!this.#held) {
      this.#held = true;
      return this.#releaser();
    }
    if (signal.aborted) throw abortReason(signal);
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

  async run<T>(signal: AbortSignal, work: () => Promise<T>): Promise<T> {
    const release = await this.lock(signal);
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
      if (next === undefined) this.#held = false;
      else next(); // ownership passes straight to the next waiter
    };
  }
}
