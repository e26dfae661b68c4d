/**
 * Cancellation tree: node → timeline → task, like Neon's child cancellation tokens. Cancelling a parent
 * cancels every child; cancelling a child never touches the parent. A child detaches from its parent on
 * `release()`, so long-lived parents do not accumulate listeners (we avoid `AbortSignal.any`, which has
 * leaked with long-lived parents, nodejs/node#55351). Main thread or any worker; no I/O.
 */
import { CancelledError } from '../errors.js';

export class CancelToken {
  readonly #controller = new AbortController();
  #detach: (() => void) | null = null;

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  get cancelled(): boolean {
    return this.#controller.signal.aborted;
  }

  cancel(reason: unknown = new CancelledError()): void {
    if (!this.#controller.signal.aborted) this.#controller.abort(reason);
    this.release();
  }

  /** A token cancelled with this one (and by its own `cancel`). Call `release()` when the child's work ends. */
  child(): CancelToken {
    const child = new CancelToken();
    const parent = this.signal;
    const onAbort = (): void => child.cancel(parent.reason);
    if (parent.aborted) {
      onAbort();
    } else {
      parent.addEventListener('abort', onAbort, { once: true });
      child.#detach = () => parent.removeEventListener('abort', onAbort);
    }
    return child;
  }

  /** Detaches from the parent. Idempotent. */
  release(): void {
    const detach = this.#detach;
    this.#detach = null;
    detach?.();
  }
}

/** Throws the signal's reason (or a CancelledError) if it has fired. */
export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw abortReason(signal);
}

export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new CancelledError();
}

/**
 * Waits for `promise`, rejecting with the abort reason as soon as `signal` fires. Abort-safe for the
 * caller; `promise` itself goes on (its owner must still settle it).
 */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/** Sleeps `delayMs`, or rejects when `signal` fires. The timer is unref'd only if `unref` is set. */
export function sleep(delayMs: number, signal: AbortSignal, unref = false): Promise<void> {
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, delayMs);
    if (unref) timer.unref();
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
