/**
 * Watch: a latest-value cell, like tokio's `watch`. `set()` stores a value and bumps `version`; waiters
 * call `changed(seenVersion, signal)` and wake once the version moves past what they saw. Intermediate
 * values may be skipped (latest wins), which is exactly what LSN progress needs. Single thread; the
 * cross-thread equivalent is the SharedArrayBuffer state block (`ingest/state_block.ts`).
 */
import { abortReason } from './cancel.js';

export class Watch<T> {
  #value: T;
  #version = 0;
  /** Allocated on the first wait: most watches (one per idle timeline, several each) never have a waiter. */
  #waiters: Set<() => void> | null = null;

  constructor(initial: T) {
    this.#value = initial;
  }

  get value(): T {
    return this.#value;
  }

  get version(): number {
    return this.#version;
  }

  set(value: T): void {
    this.#value = value;
    this.#version += 1;
    const waiters = this.#waiters;
    if (waiters === null) return;
    this.#waiters = null;
    for (const wake of waiters) wake();
  }

  /** Sets only when `value` differs (by ===); returns whether it did. */
  setIfChanged(value: T): boolean {
    if (Object.is(value, this.#value)) return false;
    this.set(value);
    return true;
  }

  /** Resolves with the current value once `version > seenVersion`. Rejects when `signal` fires. Abort-safe. */
  changed(seenVersion: number, signal: AbortSignal): Promise<T> {
    if (this.#version > seenVersion) return Promise.resolve(this.#value);
    if (signal.aborted) return Promise.reject(abortReason(signal));
    return new Promise<T>((resolve, reject) => {
      const wake = (): void => {
        signal.removeEventListener('abort', onAbort);
        resolve(this.#value);
      };
      const waiters = (this.#waiters ??= new Set());
      const onAbort = (): void => {
        waiters.delete(wake);
        reject(abortReason(signal));
      };
      waiters.add(wake);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Resolves with the first value (current or later) for which `predicate` holds. Abort-safe. */
  async waitFor(predicate: (value: T) => boolean, signal: AbortSignal): Promise<T> {
    for (;;) {
      const version = this.#version;
      if (predicate(this.#value)) return this.#value;
      await this.changed(version, signal);
    }
  }

  get waiterCount(): number {
    return this.#waiters?.size ?? 0;
  }
}
