/**
 * Cancellation tree: node → timeline → task, like Neon's child cancellation tokens. Cancelling a parent
 * cancels every child; cancelling a child never touches the parent. A child detaches from its parent on
 * `release()`, so long-lived parents do not accumulate children (we avoid `AbortSignal.any`, which has
 * leaked with long-lived parents, nodejs/node#55351). Main thread or any worker; no I/O.
 *
 * Memory: a node holds one token per timeline, and most timelines sit idle, so a token is a plain object
 * until someone reads its `signal`: the AbortController (an EventTarget with its listener maps, about
 * 1 KiB) is created on that first read. Parents therefore keep their children (and `onCancel` listeners)
 * in a Set of their own rather than as abort listeners on their signal. On `cancel()` the token's own
 * signal fires first, then its children and listeners are cancelled, in the order they attached.
 */
import { CancelledError } from '../errors.js';

/** Called once, with the reason, when the token it was attached to is cancelled. */
export type CancelListener = (reason: unknown) => void;

export class CancelToken {
  /** Created on the first `signal` read (see the header). */
  #controller: AbortController | null = null;
  #cancelled = false;
  #reason: unknown = undefined;
  #parent: CancelToken | null = null;
  /** Children and `onCancel` listeners, cancelled with this token; allocated on the first one. */
  #attached: Set<CancelToken | CancelListener> | null = null;

  get signal(): AbortSignal {
    if (this.#controller === null) {
      this.#controller = new AbortController();
      if (this.#cancelled) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  get cancelled(): boolean {
    return this.#cancelled;
  }

  /** Children and listeners attached now (tests check that released ones are gone). */
  get attachedCount(): number {
    return this.#attached?.size ?? 0;
  }

  cancel(reason: unknown = new CancelledError()): void {
    if (!this.#cancelled) {
      this.#cancelled = true;
      this.#reason = reason;
      this.#controller?.abort(reason);
      const attached = this.#attached;
      this.#attached = null;
      for (const entry of attached ?? []) {
        if (entry instanceof CancelToken) entry.cancel(reason);
        else callListener(entry, reason);
      }
    }
    this.release();
  }

  /** A token cancelled with this one (and by its own `cancel`). Call `release()` when the child's work ends. */
  child(): CancelToken {
    const child = new CancelToken();
    if (this.#cancelled) {
      child.cancel(this.#reason);
    } else {
      child.#parent = this;
      (this.#attached ??= new Set()).add(child);
    }
    return child;
  }

  /**
   * Calls `listener` once when this token is cancelled (at once if it already is), without creating the
   * signal. Returns the function that detaches it (idempotent).
   */
  onCancel(listener: CancelListener): () => void {
    if (this.#cancelled) {
      callListener(listener, this.#reason);
      return () => {};
    }
    (this.#attached ??= new Set()).add(listener);
    return () => {
      this.#attached?.delete(listener);
    };
  }

  /** Detaches from the parent. Idempotent. */
  release(): void {
    const parent = this.#parent;
    this.#parent = null;
    if (parent !== null) parent.#attached?.delete(this);
  }
}

/** As an EventTarget does for its listeners: a listener that throws is reported as uncaught, the others still run. */
function callListener(listener: CancelListener, reason: unknown): void {
  try {
    listener(reason);
  } catch (error) {
    queueMicrotask(() => {
      throw error;
    });
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

/**
 * Runs `work` with a signal that fires when `signal` does or after `limitMs`. When the deadline cut it, rejects
 * with `deadlineError()` (made then, so it can say what was missing at that moment) instead of whatever the cut
 * wait threw; on `signal`, with what the work threw. Abort-safe as far as `work` is.
 */
export async function withDeadline<T>(work: (signal: AbortSignal) => Promise<T>, limitMs: number, signal: AbortSignal, deadlineError: () => Error): Promise<T> {
  const token = new CancelToken();
  const onAbort = (): void => token.cancel(abortReason(signal));
  signal.addEventListener('abort', onAbort, { once: true });
  if (signal.aborted) onAbort();
  const timer = setTimeout(() => token.cancel(deadlineError()), limitMs);
  try {
    return await work(token.signal);
  } catch (error) {
    if (token.cancelled && !signal.aborted) throw token.signal.reason;
    throw error;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
    token.release();
  }
}
