/**
 * PgConnection: the server side of one PostgreSQL v3 connection on a net.Socket.
 *
 * Phases: startup (SSLRequest/GSSENCRequest are refused with 'N', CancelRequest closes silently, the
 * StartupMessage gets AuthenticationOk or, with an `authenticate` hook, AuthenticationCleartextPassword
 * first), then the command loop (simple Query and the extended-protocol basics of reference §1.4), then,
 * once a command calls `startCopyBoth`, copy-both mode until the connection closes. The connection never
 * returns from copy-both mode to the command loop (as in Neon).
 *
 * Ordering and bounds. One message is handled at a time: while a command runs, reading is paused (decoder
 * and socket), so nothing queues beyond the socket's own high-water mark and the decoder's partial frame
 * (at most `frameBytesMax`). In copy-both mode every CopyData goes to the sink synchronously from the socket
 * 'data' handler as a view of the chunk, with no promise or allocation per message; the sink applies
 * backpressure with `pauseReading()`, which takes effect before the next message, even mid-chunk.
 *
 * Errors. Every error sent to the client goes through `sqlstate.ts`. A malformed message, an over-limit
 * frame or a throwing sink ends the connection with ErrorResponse (08P01 for protocol violations); a
 * failing command gets ErrorResponse + ReadyForQuery and the connection stays usable. Nothing here throws
 * into the socket's event handlers except AssertionErrors, which are bugs and end the process.
 *
 * Abort behaviour: `close()`, `endWithError()`, the parent `signal`, EOF, socket errors and the read timeout
 * all abort the signal passed to the running command, call the sink's `onClose` once, and resolve `closed`
 * when the socket is gone. Main thread.
 */
import type { Socket } from 'node:net';
import { ProtocolViolationError, ShutdownError, type SafekeeperError } from '../errors.js';
import { FRAME_BYTES_MAX, SOCKET_READ_TIMEOUT_MS } from '../limits.js';
import { abortReason, CancelToken } from '../sync/cancel.js';
import { assert } from '../sync/assert.js';
import * as encode from './backend_encoder.js';
import { CommandLoop, rethrowAsBug, type PgQueryHandler } from './command_loop.js';
import { FrameDecoder, FrontendTag } from './frame_decoder.js';
import { parseCopyFail, parsePassword } from './frontend_messages.js';
import { ConnectionLostError, errorFields, isUnexpectedError } from './sqlstate.js';
import { parseStartupPacket, type StartupParams } from './startup.js';

export type { PgQueryHandler } from './command_loop.js';

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
  /** Answer the StartupMessage with this error and close (used for connection limits). */
  refuseWith?: SafekeeperError;
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

/** PostgreSQL reports these, and drivers (psycopg2, JDBC) rely on them. */
const FIXED_SERVER_PARAMETERS: Readonly<Record<string, string>> = {
  client_encoding: 'UTF8',
  server_encoding: 'UTF8',
  integer_datetimes: 'on',
  DateStyle: 'ISO',
  standard_conforming_strings: 'on',
};
/** Neon's trust path reports 14.1 (reference §1.3); the caller overrides it with the timeline's version. */
export const SERVER_VERSION_DEFAULT = '14.1';
/** SSLRequest then GSSENCRequest is the longest legitimate negotiation. */
const NEGOTIATIONS_MAX = 2;
/** A closing socket that cannot flush (client not reading) is destroyed after this long. */
const CLOSE_FLUSH_TIMEOUT_MS = 10_000;
/** Payloads up to this size are copied behind their header (one write); larger ones are corked (writev). */
const COPY_DATA_INLINE_BYTES_MAX = 8 * 1024;
const PAUSED_BY_COMMAND = 1;
const PAUSED_BY_SINK = 2;

const SILENT_LOGGER: PgLogger = { debug: () => undefined, warn: () => undefined, error: () => undefined };
const NO_SINK: CopyBothSink = { onCopyData: () => undefined, onCopyDone: () => undefined, onCopyFail: () => undefined, onClose: () => undefined };

let nextConnectionId = 1;
const discardBytes = (): void => undefined;

type Phase = 'startup' | 'authenticating' | 'commands' | 'copy_both' | 'copy_both_client_done' | 'closed';

export class PgConnection {
  /** u32 per process, from 1, wrapping; for logs and status only. */
  readonly id: number;
  readonly remoteAddress: string;
  /** Resolves when the socket has closed (never rejects). */
  readonly closed: Promise<void>;
  /** What `authenticate` returned (e.g. JWT claims); null without authentication. */
  auth: unknown = null;
  readonly #socket: Socket;
  readonly #options: PgConnectionOptions;
  readonly #log: PgLogger;
  readonly #decoder: FrameDecoder;
  readonly #commands: CommandLoop;
  readonly #cancel = new CancelToken();
  readonly #readTimeoutMs: number;
  #phase: Phase = 'startup';
  #startup: StartupParams | null = null;
  #sink: CopyBothSink = NO_SINK;
  #pausedBy = 0;
  #negotiations = 0;
  #lastReadMs = Date.now();
  #readTimer: NodeJS.Timeout | null = null;
  #flushTimer: NodeJS.Timeout | null = null;
  #resolveClosed: () => void = () => undefined;

  constructor(socket: Socket, options: PgConnectionOptions, handler: PgQueryHandler) {
    assert(Number.isInteger(options.frameBytesMax) && options.frameBytesMax <= FRAME_BYTES_MAX, 'frameBytesMax within FRAME_BYTES_MAX');
    const readTimeoutMs = options.readTimeoutMs ?? SOCKET_READ_TIMEOUT_MS;
    assert(Number.isInteger(readTimeoutMs) && readTimeoutMs > 0, 'readTimeoutMs must be a positive integer');
    this.id = nextConnectionId;
    nextConnectionId = nextConnectionId >= 0xffff_ffff ? 1 : nextConnectionId + 1;
    this.#socket = socket;
    this.#options = options;
    this.#log = options.log ?? SILENT_LOGGER;
    this.#readTimeoutMs = readTimeoutMs;
    this.#decoder = new FrameDecoder(options.frameBytesMax);
    this.remoteAddress = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.#commands = new CommandLoop(this, handler, {
      pause: () => this.#pauseRead(PAUSED_BY_COMMAND),
      resume: () => this.#resumeRead(PAUSED_BY_COMMAND),
      isCopyBoth: () => this.#phase === 'copy_both' || this.#phase === 'copy_both_client_done',
    });
    socket.setNoDelay(true);
    socket.on('data', this.#onData);
    socket.on('end', () => this.#close(this.#phase === 'commands' ? undefined : new ConnectionLostError('client closed the connection')));
    socket.on('error', (error: Error) => {
      this.#log.debug({ conn_id: this.id, err: error }, 'pg socket error'); // resets are routine; the close says the rest
      this.#close(new ConnectionLostError(`socket error: ${error.message}`, { cause: error }));
    });
    socket.on('close', () => {
      this.#close(new ConnectionLostError('connection closed'));
      if (this.#flushTimer !== null) clearTimeout(this.#flushTimer);
      this.#resolveClosed();
    });
    const parent = options.signal;
    if (parent !== undefined) {
      const onAbort = (): void => this.endWithError(new ShutdownError());
      if (parent.aborted) queueMicrotask(onAbort);
      else parent.addEventListener('abort', onAbort, { once: true });
      void this.closed.then(() => parent.removeEventListener('abort', onAbort));
    }
    this.#armReadTimer(readTimeoutMs);
  }

  /** The parsed StartupMessage; available from the first command on. */
  get startup(): StartupParams {
    assert(this.#startup !== null, 'startup parameters exist after the StartupMessage');
    return this.#startup;
  }

  /** Aborted when the connection ends; commands run under it. */
  get signal(): AbortSignal {
    return this.#cancel.signal;
  }

  get isClosed(): boolean {
    return this.#phase === 'closed';
  }

  /** False while the socket's buffer is above its high-water mark (or closed): wait with `drained()`. */
  get writable(): boolean {
    return this.#phase !== 'closed' && !this.#socket.writableNeedDrain;
  }

  /** Resolves once the socket buffer has drained; rejects when the connection closes or `signal` fires. */
  drained(signal: AbortSignal): Promise<void> {
    if (this.#phase === 'closed') return Promise.reject(new ConnectionLostError('connection closed'));
    if (!this.#socket.writableNeedDrain) return Promise.resolve();
    if (signal.aborted) return Promise.reject(abortReason(signal));
    return new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        this.#socket.off('drain', onDrain);
        this.#cancel.signal.removeEventListener('abort', onClosed);
        signal.removeEventListener('abort', onAbort);
      };
      const onDrain = (): void => (cleanup(), resolve());
      const onClosed = (): void => (cleanup(), reject(new ConnectionLostError('connection closed')));
      const onAbort = (): void => (cleanup(), reject(abortReason(signal)));
      this.#socket.on('drain', onDrain);
      this.#cancel.signal.addEventListener('abort', onClosed, { once: true });
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Writes one encoded backend message (see backend_encoder.ts). Returns false when the caller should wait for `drained()`. */
  write(message: Uint8Array): boolean {
    if (this.#phase === 'closed') return false;
    return this.#socket.write(message);
  }

  /** RowDescription, DataRows and CommandComplete in one go: the usual reply to a command returning rows. */
  sendRows(columns: readonly encode.ColumnDescription[], rows: readonly (readonly (string | null)[])[], commandTag: string): void {
    this.#socket.cork();
    this.write(encode.rowDescription(columns));
    for (const row of rows) this.write(encode.dataRow(row));
    this.write(encode.commandComplete(commandTag));
    this.#socket.uncork();
  }

  /**
   * Enters copy-both mode from inside `onQuery` (sends CopyBothResponse). From then on CopyData goes to
   * `sink` and the connection never returns to the command loop; `onQuery` may return at once or later.
   */
  startCopyBoth(sink: CopyBothSink): void {
    assert(this.#phase === 'commands' && this.#commands.running, 'copy-both starts from a running command');
    this.#sink = sink;
    this.#phase = 'copy_both';
    this.write(encode.COPY_BOTH_RESPONSE);
    // Deliver buffered CopyData after startCopyBoth returns, never from inside it.
    queueMicrotask(() => this.#resumeRead(PAUSED_BY_COMMAND));
  }

  /** Stops delivery before the next message (even mid-chunk) until `resumeReading()`. */
  pauseReading(): void {
    this.#pauseRead(PAUSED_BY_SINK);
  }

  resumeReading(): void {
    this.#resumeRead(PAUSED_BY_SINK);
  }

  /** Sends one CopyData. Do not modify `payload` afterwards: large payloads are written without a copy. */
  sendCopyData(payload: Uint8Array): boolean {
    if (this.#phase === 'closed') return false;
    if (payload.length <= COPY_DATA_INLINE_BYTES_MAX) {
      const message = Buffer.allocUnsafe(encode.MESSAGE_HEADER_BYTES + payload.length);
      message.set(payload, encode.writeCopyDataHeader(message, 0, payload.length));
      return this.#socket.write(message);
    }
    const header = Buffer.allocUnsafe(encode.MESSAGE_HEADER_BYTES);
    encode.writeCopyDataHeader(header, 0, payload.length);
    this.#socket.cork();
    this.#socket.write(header);
    const ok = this.#socket.write(payload);
    this.#socket.uncork();
    return ok;
  }

  /** Sends one CopyData whose payload is `header` then `body`, without concatenating a large body. */
  sendCopyDataParts(header: Uint8Array, body: Uint8Array): boolean {
    if (this.#phase === 'closed') return false;
    const payloadBytes = header.length + body.length;
    const inline = payloadBytes <= COPY_DATA_INLINE_BYTES_MAX;
    const first = Buffer.allocUnsafe(encode.MESSAGE_HEADER_BYTES + header.length + (inline ? body.length : 0));
    const bodyOffset = encode.writeCopyDataHeader(first, 0, payloadBytes) + header.length;
    first.set(header, encode.MESSAGE_HEADER_BYTES);
    if (inline) {
      first.set(body, bodyOffset);
      return this.#socket.write(first);
    }
    this.#socket.cork();
    this.#socket.write(first);
    const ok = this.#socket.write(body);
    this.#socket.uncork();
    return ok;
  }

  sendCopyDone(): boolean {
    return this.write(encode.COPY_DONE);
  }

  /** Sends ErrorResponse (mapped by sqlstate.ts; an internal error is logged here, once) and closes. */
  endWithError(error: unknown): void {
    if (this.#phase === 'closed') return;
    this.write(encode.errorResponse(this.reportableFields(error)));
    this.#close(error);
  }

  /** Closes without an ErrorResponse, flushing what was written. */
  close(): void {
    this.#close(undefined);
  }

  /** errorFields() plus the one log line an unexpected error deserves. For the command loop too. */
  reportableFields(error: unknown): encode.ErrorResponseFields {
    const fields = errorFields(error);
    if (isUnexpectedError(error)) this.#log.error({ conn_id: this.id, err: error }, 'internal error on a pg connection');
    return fields;
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#lastReadMs = Date.now();
    try {
      this.#decoder.push(chunk, this.#onMessage);
    } catch (error) {
      this.endWithError(error);
    }
  };

  readonly #onMessage = (tag: number, body: Buffer): void => {
    if (tag === FrontendTag.CopyData && this.#phase === 'copy_both') this.#sink.onCopyData(body);
    else this.#onOtherMessage(tag, body);
  };

  #onOtherMessage(tag: number, body: Buffer): void {
    switch (this.#phase) {
      case 'startup':
        return this.#onStartupPacket(body);
      case 'authenticating':
        return this.#onPassword(tag, body);
      case 'commands':
        if (tag === FrontendTag.Terminate) return this.#close(undefined);
        return this.#commands.onMessage(tag, body);
      case 'copy_both':
      case 'copy_both_client_done':
        return this.#onCopyMessage(tag, body);
      case 'closed':
        return;
    }
  }

  #onCopyMessage(tag: number, body: Buffer): void {
    switch (tag) {
      case FrontendTag.CopyDone:
        if (this.#phase !== 'copy_both') break;
        this.#phase = 'copy_both_client_done';
        return this.#sink.onCopyDone();
      case FrontendTag.CopyFail:
        if (this.#phase !== 'copy_both') break;
        this.#phase = 'copy_both_client_done';
        return this.#sink.onCopyFail(parseCopyFail(body));
      case FrontendTag.Flush:
      case FrontendTag.Sync:
        return; // PostgreSQL ignores these during COPY
      case FrontendTag.Terminate:
        return this.#close(undefined);
      default:
        break;
    }
    this.endWithError(new ProtocolViolationError(String.fromCharCode(tag), 'unexpected during COPY'));
  }

  #onStartupPacket(body: Buffer): void {
    const packet = parseStartupPacket(body);
    switch (packet.kind) {
      case 'ssl_request':
      case 'gss_enc_request':
        this.#negotiations += 1;
        if (this.#negotiations > NEGOTIATIONS_MAX) throw new ProtocolViolationError('startup', 'too many encryption requests');
        this.write(encode.NEGOTIATION_REFUSED); // no TLS/GSS: the client goes on in plain text or gives up
        return;
      case 'cancel_request':
        this.#log.debug({ conn_id: this.id }, 'cancel request refused'); // there are no cancellable backends
        this.#close(undefined);
        return;
      case 'startup':
        break;
    }
    const startup = packet.params;
    this.#decoder.startTypedPhase();
    this.#startup = startup;
    if (this.#options.refuseWith !== undefined) return this.endWithError(this.#options.refuseWith);
    if (startup.protocolMinorVersion > 0 || startup.unrecognisedProtocolOptions.length > 0) {
      this.write(encode.negotiateProtocolVersion(0, startup.unrecognisedProtocolOptions));
    }
    if (this.#options.authenticate === undefined) return this.#completeStartup();
    this.#phase = 'authenticating';
    this.write(encode.AUTHENTICATION_CLEARTEXT_PASSWORD);
  }

  #onPassword(tag: number, body: Buffer): void {
    const authenticate = this.#options.authenticate;
    assert(authenticate !== undefined, 'authenticating only with an authenticate hook');
    if (tag !== FrontendTag.Password) throw new ProtocolViolationError(String.fromCharCode(tag), 'expected a password message');
    const password = parsePassword(body);
    this.#pauseRead(PAUSED_BY_COMMAND);
    // The promise is owned here: success completes startup, failure (AuthError, 28000) ends the connection.
    // errorFields() rethrows AssertionErrors, which then surface as an unhandled rejection and end the process.
    authenticate(this.startup, password, this.#cancel.signal).then(
      (auth) => {
        if (this.#phase === 'closed') return;
        this.auth = auth;
        this.#completeStartup();
        this.#resumeRead(PAUSED_BY_COMMAND);
      },
      (error: unknown) => this.endWithError(error),
    ).catch(rethrowAsBug);
  }

  #completeStartup(): void {
    const parameters = { server_version: SERVER_VERSION_DEFAULT, ...this.#options.serverParameters?.(this.startup), ...FIXED_SERVER_PARAMETERS };
    this.#socket.cork();
    this.write(encode.AUTHENTICATION_OK);
    for (const [name, value] of Object.entries(parameters)) this.write(encode.parameterStatus(name, value));
    this.write(encode.readyForQuery('I'));
    this.#socket.uncork();
    this.#phase = 'commands';
  }

  #pauseRead(reason: number): void {
    this.#pausedBy |= reason;
    this.#decoder.pause();
    this.#socket.pause();
  }

  #resumeRead(reason: number): void {
    this.#pausedBy &= ~reason;
    if (this.#pausedBy !== 0 || this.#phase === 'closed') return;
    this.#lastReadMs = Date.now(); // time we spent paused is not the client's silence
    try {
      this.#decoder.resume(this.#onMessage);
    } catch (error) {
      this.endWithError(error);
    }
    if (this.#pausedBy === 0 && !this.isClosed) this.#socket.resume();
  }

  /** One timer per connection, re-armed lazily: reading a chunk only stores a timestamp. */
  #armReadTimer(delayMs: number): void {
    this.#readTimer = setTimeout(() => {
      this.#readTimer = null;
      if (this.#phase === 'closed') return;
      const nowMs = Date.now();
      if (this.#pausedBy !== 0) this.#lastReadMs = nowMs;
      const silentMs = nowMs - this.#lastReadMs;
      if (silentMs < this.#readTimeoutMs) return this.#armReadTimer(this.#readTimeoutMs - silentMs);
      this.#log.warn({ conn_id: this.id, read_timeout_ms: this.#readTimeoutMs }, 'pg connection read timeout');
      this.#close(new ConnectionLostError(`nothing received for ${this.#readTimeoutMs} ms`));
    }, delayMs);
    this.#readTimer.unref();
  }

  /** Idempotent. Stops delivery, aborts the running command, tells the sink, then flushes and closes the socket. */
  #close(error: unknown): void {
    if (this.#phase === 'closed') return;
    const wasCopyBoth = this.#phase === 'copy_both' || this.#phase === 'copy_both_client_done';
    this.#phase = 'closed';
    this.#decoder.discard();
    if (this.#readTimer !== null) clearTimeout(this.#readTimer);
    this.#readTimer = null;
    this.#cancel.cancel(error ?? new ConnectionLostError('connection closed'));
    const socket = this.#socket;
    if (!socket.destroyed) {
      // Half-close, then keep reading (and discarding) until the client closes its side. Destroying the
      // socket while the client's bytes are still unread makes the kernel send a reset, and the client
      // can lose our final ErrorResponse. The timer bounds how long a client that never closes may take.
      socket.off('data', this.#onData);
      socket.on('data', discardBytes);
      if (socket.readableEnded) socket.end(() => socket.destroy());
      else {
        socket.once('end', () => socket.destroy());
        socket.resume();
        socket.end();
      }
      this.#flushTimer = setTimeout(() => socket.destroy(), CLOSE_FLUSH_TIMEOUT_MS);
      this.#flushTimer.unref();
    }
    if (wasCopyBoth) {
      const sink = this.#sink;
      this.#sink = NO_SINK;
      sink.onClose(error);
    }
  }
}
