/**
 * Waits of the WAL senders: joining cancellation sources into one token, and waiting for the first of
 * several Watches to change with a timeout (the keepalive interval), without leaving waiters or timers
 * behind. Main thread; abort-safe.
 */
import { abortReason, CancelToken } from '../sync/cancel.js';
import type { Watch } from '../sync/watch.js';

/** Cancels `token` when any of `signals` fires; returns the function that detaches the listeners. */
export function linkCancellation(token: CancelToken, signals: readonly AbortSignal[]): () => void {
  const detachers: (() => void)[] = [];
  for (const signal of signals) {
    if (signal.aborted) {
      token.cancel(abortReason(signal));
      continue;
    }
    const onAbort = (): void => token.cancel(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    detachers.push(() => signal.removeEventListener('abort', onAbort));
  }
  return () => {
    for (const detach of detachers) detach();
  };
}

const TIMED_OUT = Symbol('timed out');

/** True once any watch changes after now, false after `timeoutMs`; rejects when `signal` fires. Abort-safe. */
export async function waitForAnyChange(watches: readonly Watch<unknown>[], timeoutMs: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) throw abortReason(signal);
  const local = new CancelToken();
  const unlink = linkCancellation(local, [signal]);
  const timer = setTimeout(() => local.cancel(TIMED_OUT), timeoutMs);
  try {
    await Promise.race(watches.map((watch) => watch.changed(watch.version, local.signal)));
    return true;
  } catch (error) {
    if (error === TIMED_OUT && !signal.aborted) return false;
    throw error;
  } finally {
    clearTimeout(timer);
    unlink();
    local.cancel(); // releases the waiters of the watches that did not fire
  }
}
