/**
 * Mutex: a FIFO async lock, a Semaphore with one permit. Each timeline's acceptor state changes in one
 * place, in order; several proposer connections (or an HTTP call) may race for it, so async acceptor
 * operations hold this lock, and the synchronous hot path runs only while it is free (`locked`).
 * Memory: every timeline has two (acceptor, control file) and idle ones never lock them, so the semaphore
 * is created on the first lock. Single thread.
 */
import { Semaphore } from './semaphore.js';

export class Mutex {
  #semaphore: Semaphore | null = null;

  get locked(): boolean {
    return this.#semaphore !== null && this.#semaphore.inUse > 0;
  }

  /** Waits for the lock and returns the function that releases it (idempotent). Abort-safe. */
  lock(signal: AbortSignal): Promise<() => void> {
    return (this.#semaphore ??= new Semaphore(1)).acquire(signal);
  }

  run<T>(signal: AbortSignal, work: () => Promise<T>): Promise<T> {
    return (this.#semaphore ??= new Semaphore(1)).run(signal, work);
  }
}
