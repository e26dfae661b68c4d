/**
 * The types a PgConnection's owner supplies: the connection's options (limits, hooks, parent signal,
 * logger) and the sink that copy-both mode delivers to. connection.ts re-exports them, since its users
 * import them from there. Types only; they describe main-thread objects.
 */
import type { StartupParams } from './startup.js';

/** pino-compatible subset; fields first, constant message second. */
export interface PgLogger {
  debug(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}

export interface PgConnectionOptions {
  /** Largest declared length of a frontend message (int32 field, counting itself); at most FRAME_BYTES_MAX. */
  frameBytesMax: number;
  /** A client that sends nothing for this long is dropped (time spent paused by us does not count). */
  readTimeoutMs?: number;
  /** Extra ParameterStatus values, e.g. server_version from the timeline's pg version. */
  serverParameters?: (startup: StartupParams) => Record<string, string>;
  /** When set, the client must send a password (Neon: a JWT); a rejection ends the connection. Its result is `conn.auth`. */
  authenticate?: (startup: StartupParams, password: string, signal: AbortSignal) => Promise<unknown>;
  /** Parent cancellation (node shutdown): closing with ErrorResponse 57P01. */
  signal?: AbortSignal;
  log?: PgLogger;
}

/** Where copy-both mode delivers. All calls are synchronous, from the socket's 'data' handler. */
export interface CopyBothSink {
  /** One CopyData payload; the view is valid only during the call. A throw ends the connection. */
  onCopyData(payload: Uint8Array): void;
  onCopyDone(): void;
  onCopyFail(message: string): void;
  /** Called once when the connection ends: no error for Terminate or a close of ours, else why. */
  onClose(error?: unknown): void;
}
