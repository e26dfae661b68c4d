/**
 * The only mapper from errors to ErrorResponse fields (like Neon's `pg_error_code` in
 * libs/postgres_backend). Every end of a connection and every failed command goes through `errorFields`.
 *   - AssertionError: a bug in our code. It is rethrown, never reported to the client, and the node exits.
 *   - SafekeeperError: its own SQLSTATE and message; the chain of causes becomes the detail.
 *   - anything else: XX000 "internal error". The caller logs the error once, with its stack (see
 *     `isUnexpectedError`), and the client learns nothing about our internals.
 * Two errors that only connections raise live here too; they could move to `errors.ts`.
 * Pure; any thread.
 */
import { SafekeeperError } from '../errors.js';
import { AssertionError } from '../sync/assert.js';
import type { ErrorResponseFields } from './backend_encoder.js';

export const SQLSTATE_INTERNAL_ERROR = 'XX000';
export const SQLSTATE_SUCCESSFUL_COMPLETION = '00000';
/** Causes deeper than this are left out of the detail; chains are short, the bound is against cycles. */
const CAUSE_DEPTH_MAX = 8;

/**
 * A replication stream ended on purpose: sent as ErrorResponse 00000 (reference §4.9), e.g. "received
 * CopyFail", or "ending streaming to ... at X/Y" (the pageserver matches on "ending streaming").
 */
export class StreamEndedError extends SafekeeperError {
  override readonly name = 'StreamEndedError';
  readonly code = 'SK_STREAM_ENDED';
  readonly sqlState = SQLSTATE_SUCCESSFUL_COMPLETION;
}

/** The client sent nothing for the read timeout, or the socket failed. Nothing can be sent back. */
export class ConnectionLostError extends SafekeeperError {
  override readonly name = 'ConnectionLostError';
  readonly code = 'SK_CONNECTION_LOST';
  readonly sqlState = '08006'; // connection_failure
}

export function errorFields(error: unknown): ErrorResponseFields {
  if (error instanceof AssertionError) throw error;
  if (error instanceof SafekeeperError) {
    const detail = causeChain(error.cause);
    return detail === '' ? { code: error.sqlState, message: error.message } : { code: error.sqlState, message: error.message, detail };
  }
  return { code: SQLSTATE_INTERNAL_ERROR, message: 'internal error' };
}

/** True when `errorFields` hides the error behind XX000: the caller must log it (once, with its stack). */
export function isUnexpectedError(error: unknown): boolean {
  return !(error instanceof SafekeeperError) && !(error instanceof AssertionError);
}

/** Messages of the SafekeeperError causes, joined by ": " as Neon joins an error chain. */
function causeChain(cause: unknown): string {
  const messages: string[] = [];
  let current = cause;
  while (current instanceof SafekeeperError && messages.length < CAUSE_DEPTH_MAX) {
    messages.push(current.message);
    current = current.cause;
  }
  return messages.join(': ');
}
