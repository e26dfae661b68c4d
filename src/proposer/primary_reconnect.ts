/**
 * Getting the primary back after the replication connection broke mid-stream (a primary restart, a
 * terminated walsender, a network cut). The WAL stream pauses while the safekeeper links and the term stay
 * as they are; `postgres_source.ts` resumes START_REPLICATION where the proposer's own WAL ends.
 *
 * Policy: the first attempt is immediate, later ones wait a capped exponential backoff with jitter
 * (`reconnectDelayMs`, pure), and the whole effort is bounded by `--primary-reconnect-timeout` counted from
 * the loss: an attempt still running at the deadline is cut, and then the proposer gives up with a
 * PrimaryLostError. Only trouble that can pass is retried (`isTransientPrimaryError`: the socket, a server
 * starting or shutting down, our old walsender still holding the slot); anything else the primary says
 * (a wrong system id, WAL it no longer has, a refused login) stops the proposer at once with that error,
 * since waiting would not change the answer.
 * Logs: the loss and every failed attempt (attempt number, next delay) at warn, the reconnect at info.
 * Abort-safe: the signal (SIGTERM) ends the backoff sleep and any attempt at once, rejecting with its reason.
 * Main thread.
 */
import type { Logger } from '../log.js';
import { PgConnectionError, PgServerError } from '../pg/client.js';
import { assert } from '../sync/assert.js';
import { abortReason, sleep, withDeadline } from '../sync/cancel.js';
import { PrimaryLostError, SourceError } from './errors.js';
import { PRIMARY_RECONNECT_BACKOFF_MS_MAX, PRIMARY_RECONNECT_BACKOFF_MS_MIN, jitteredBackoffMs } from './limits.js';

/** SQLSTATEs from the primary that a later attempt can get past. Class 08 (connection exceptions) is transient too. */
const TRANSIENT_SQLSTATES: ReadonlySet<string> = new Set([
  '57P01', // admin_shutdown: pg_terminate_backend of our walsender, or a fast shutdown
  '57P02', // crash_shutdown: another backend crashed and the postmaster restarts
  '57P03', // cannot_connect_now: the database system is starting up or shutting down
  '53300', // too_many_connections: max_wal_senders taken, e.g. by our old walsender not yet gone
  '55006', // object_in_use: our slot is still held by the old walsender
  '42704', // undefined_object: the slot vanished after READ_REPLICATION_SLOT; the next attempt recreates it
]);

/** Whether a later attempt may succeed: socket trouble and the SQLSTATEs above (also inside a SourceError). */
export function isTransientPrimaryError(error: unknown): boolean {
  const inner = error instanceof SourceError && error.cause !== undefined ? error.cause : error;
  if (inner instanceof PgConnectionError) return true;
  if (inner instanceof PgServerError) return inner.sqlState.startsWith('08') || TRANSIENT_SQLSTATES.has(inner.sqlState);
  return false;
}

/**
 * The wait after failed attempt number `attempt` (1-based): MIN · 2^(attempt-1), capped at MAX, times a
 * jitter factor in [1 - RATIO, 1 + RATIO] picked by `random` (a number in [0, 1)). Pure.
 */
export function reconnectDelayMs(attempt: number, random: number): number {
  assert(Number.isInteger(attempt) && attempt >= 1, 'attempts count from 1');
  assert(random >= 0 && random < 1, 'random in [0, 1)');
  return jitteredBackoffMs(attempt, PRIMARY_RECONNECT_BACKOFF_MS_MIN, PRIMARY_RECONNECT_BACKOFF_MS_MAX, random);
}

export interface ReconnectArgs<T> {
  /** `primary 127.0.0.1:5432`, for the give-up message. */
  what: string;
  /** The whole effort, from the loss (`--primary-reconnect-timeout`); 0 gives up at once. */
  timeoutMs: number;
  /** Why the connection was lost: logged, and reported if no attempt gets further. */
  lostError: unknown;
  /** Extra log fields (the resume LSN). */
  fields: Record<string, unknown>;
  log: Logger;
  signal: AbortSignal;
  /** One connection attempt; its signal fires at the deadline or on `signal`. */
  attempt(signal: AbortSignal): Promise<T>;
  /** [0, 1); Math.random unless a test pins it. */
  random?: () => number;
}

/** Retries `attempt` as described in the header; resolves with the first success. */
export async function reconnectPrimary<T>(args: ReconnectArgs<T>): Promise<T> {
  const { log, signal } = args;
  const random = args.random ?? Math.random;
  const lostMs = performance.now();
  const deadlineMs = lostMs + args.timeoutMs;
  let lastError = args.lostError;
  log.warn({ ...args.fields, err: messageOf(lastError), reconnect_timeout_ms: args.timeoutMs }, 'lost the replication connection to the primary; reconnecting');
  for (let attempt = 1; ; attempt += 1) {
    signal.throwIfAborted();
    const remainingMs = deadlineMs - performance.now();
    if (remainingMs <= 0) {
      throw new PrimaryLostError(
        `lost the ${args.what} and could not reconnect within ${args.timeoutMs} ms (--primary-reconnect-timeout; ${attempt - 1} attempts): ${messageOf(lastError)}`,
        { cause: lastError },
      );
    }
    try {
      const value = await attemptUntil(args.attempt, remainingMs, signal);
      log.info({ ...args.fields, attempts: attempt, down_ms: Math.round(performance.now() - lostMs) }, 'reconnected to the primary');
      return value;
    } catch (error) {
      if (signal.aborted) throw abortReason(signal);
      if (!isTransientPrimaryError(error)) throw error;
      lastError = error;
    }
    const delayMs = Math.max(0, Math.min(reconnectDelayMs(attempt, random()), Math.ceil(deadlineMs - performance.now())));
    log.warn({ ...args.fields, attempt, next_delay_ms: delayMs, err: messageOf(lastError) }, 'reconnecting to the primary failed');
    await sleep(delayMs, signal);
  }
}

/** Runs one attempt with a signal that also fires after `limitMs` (a PgConnectionError: transient, so the deadline check ends the loop). */
function attemptUntil<T>(attempt: (signal: AbortSignal) => Promise<T>, limitMs: number, signal: AbortSignal): Promise<T> {
  return withDeadline(attempt, limitMs, signal, () => new PgConnectionError(`no connection within the ${Math.round(limitMs)} ms left of the reconnect timeout`));
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
