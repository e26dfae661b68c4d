/**
 * Condition waits for tests: poll a condition until it holds or a deadline passes. Tests wait on what they
 * need (a port accepting, a file appearing, an LSN reached), never on a fixed sleep; the interval only
 * bounds how often the condition is checked. A timeout names what was awaited and the last error seen.
 */
import { setTimeout as delay } from 'node:timers/promises';

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
  /** What is awaited, for the timeout message ("postgres accepting connections"). */
  what?: string;
}

export const WAIT_TIMEOUT_MS_DEFAULT = 10_000;
export const WAIT_INTERVAL_MS_DEFAULT = 20;

/**
 * Calls `condition` until it returns a value other than false/undefined/null (which is returned), or throws
 * after `timeoutMs`. A throwing condition counts as not yet satisfied; its last error is reported on timeout.
 */
export async function waitFor<T>(condition: () => T | Promise<T>, options: WaitOptions = {}): Promise<Exclude<T, false | null | undefined>> {
  const timeoutMs = options.timeoutMs ?? WAIT_TIMEOUT_MS_DEFAULT;
  const intervalMs = options.intervalMs ?? WAIT_INTERVAL_MS_DEFAULT;
  const deadlineMs = Date.now() + timeoutMs;
  let lastError: unknown = undefined;
  for (;;) {
    try {
      const value = await condition();
      if (value !== false && value !== null && value !== undefined) return value as Exclude<T, false | null | undefined>;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadlineMs) {
      const suffix = lastError === undefined ? '' : `; last error: ${lastError instanceof Error ? lastError.message : String(lastError)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${options.what ?? 'condition'}${suffix}`, { cause: lastError });
    }
    await delay(intervalMs);
  }
}

/** Resolves with `promise`, or fails after `timeoutMs` naming `what` (a commit that never returns would hang a test). */
export async function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs)));
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
