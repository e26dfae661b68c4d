/**
 * Mutex: a FIFO async lock, a Semaphore with one permit. Each timeline's acceptor state changes in one
 * place, in order; several proposer connections (or an HTTP call) may race for it, so async acceptor
 * operations hold this lock, and the synchronous hot path runs only while it is free (`locked`).
 * Single thread.
 */
import { Semaphore } from './semaphore.js';

export class Mutex {
  readonly #semaphore = new Semaphore(1);

  get locked(): boolean {
    return this.#semaphore.inUse > 0;
  }

  /** Waits for the lock and returns the function that releases it (idempotent). Abort-safe. */
  lock(signal: AbortSignal): Promise<() => void> {
    return this.#semaphore.acquire(signal);
  }

  run<T>(signal: AbortSignal, work: () => Promise<T>): Promise<T> {
    return this.#semaphore.run(signal, work);
  }
}
