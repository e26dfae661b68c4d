/**
 * PgConnection: the server side of one PostgreSQL v3 connection on a net.Socket.
 *
 * Phases: startup (`startup_handshake.ts`: negotiation, optional password, ParameterStatus), then the
 * command loop (`command_loop.ts`: simple Query and the extended-protocol basics of reference §1.4), then,
 * once a command calls `startCopyBoth`, copy-both mode until the connection closes. The connection never
 * returns from copy-both mode to the command loop (as in Neon); `copy_both.ts` handles that phase. Socket
 * mechanics (CopyData writes, drain waits, the read timeout, the half-close) are in `connection_socket.ts`.
 *
 * Ordering and bounds. One message is handled at a time: while a command runs, reading is paused (decoder
 * and socket), so nothing queues beyond the socket's own high-water mark and the decoder's partial frame
 * (at most `frameBytesMax`). In copy-both mode every CopyData goes to the sink synchronously from the socket
 * 'data' handler as a view of the chunk, with no promise or allocation per message; the sink applies
 * backpressure with `pauseReading()`, which takes effect before the next message, even mid-chunk.
 * Replies are bounded the same way: after a reply, `pauseReadingUntilDrained()` stops reading while the
 * socket is over its high-water mark, so a client that sends without reading gets no further than the
 * high-water mark plus one reply (PostgreSQL blocks in its send the same way). The command loop does this
 * after every message; in copy-both mode the sink does it after its own replies.
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
import { ShutdownError } from '../errors.js';
import { FRAME_BYTES_MAX, SOCKET_READ_TIMEOUT_MS } from '../limits.js';
import { CancelToken } from '../sync/cancel.js';
import { assert } from '../sync/assert.js';
import * as encode from './backend_encoder.js';
import { CommandLoop, type PgQueryHandler } from './command_loop.js';
import type { CopyBothSink, PgConnectionOptions, PgLogger } from './connection_options.js';
import { CopyBothMode } from './copy_both.js';
import { ReadDeadline, endSocketGracefully, waitForDrain, writeCopyData, writeCopyDataParts } from './connection_socket.js';
import { FrameDecoder, FrontendTag } from './frame_decoder.js';
import { ConnectionLostError, errorFields, isUnexpectedError } from './sqlstate.js';
import type { StartupParams } from './startup.js';
import { StartupHandshake } from './startup_handshake.js';

export type { PgQueryHandler } from './command_loop.js';
export type { CopyBothSink, PgConnectionOptions, PgLogger } from './connection_options.js';

const PAUSED_BY_COMMAND = 1;
const PAUSED_BY_SINK = 2;
/** The client is not reading our replies: the socket is over its high-water mark until 'drain'. */
const PAUSED_BY_OUTPUT = 4;

const SILENT_LOGGER: PgLogger = { debug: () => undefined, warn: () => undefined, error: () => undefined };

let nextConnectionId = 1;

type Phase = 'startup' | 'authenticating' | 'commands' | 'copy_both' | 'closed';

export class PgConnection {
  /** u32 per process, from 1, wrapping; for logs and status only. */
  readonly id: number;
  readonly remoteAddress: string;
  /** Resolves when the socket has closed (never rejects). */
  readonly closed: Promise<void>;
  /** What `authenticate` returned (e.g. JWT claims); null without authentication. */
  auth: unknown = null;
  readonly #socket: Socket;
  readonly #log: PgLogger;
  readonly #decoder: FrameDecoder;
  readonly #handshake: StartupHandshake;
  readonly #commands: CommandLoop;
  readonly #copyBoth = new CopyBothMode(this);
  readonly #cancel = new CancelToken();
  readonly #readDeadline: ReadDeadline;
  #phase: Phase = 'startup';
  #startup: StartupParams | null = null;
  #pausedBy = 0;
  #flushTimer: NodeJS.Timeout | null = null;
  #resolveClosed: () => void = () => undefined;

  constructor(socket: Socket, options: PgConnectionOptions, handler: PgQueryHandler) {
    assert(Number.isInteger(options.frameBytesMax) && options.frameBytesMax <= FRAME_BYTES_MAX, 'frameBytesMax within FRAME_BYTES_MAX');
    const readTimeoutMs = options.readTimeoutMs ?? SOCKET_READ_TIMEOUT_MS;
    assert(Number.isInteger(readTimeoutMs) && readTimeoutMs > 0, 'readTimeoutMs must be a positive integer');
    this.id = nextConnectionId;
    nextConnectionId = nextConnectionId >= 0xffff_ffff ? 1 : nextConnectionId + 1;
    this.#socket = socket;
    this.#log = options.log ?? SILENT_LOGGER;
    this.#readDeadline = new ReadDeadline(readTimeoutMs, {
      isClosed: () => this.#phase === 'closed',
      // Our own pauses (a command running, a full ring) suspend the deadline; waiting for the client to read our
      // replies does not: a client that reads nothing for the whole timeout would otherwise hold its slot forever.
      isPaused: () => (this.#pausedBy & ~PAUSED_BY_OUTPUT) !== 0,
      onTimeout: () => {
        const unread = (this.#pausedBy & PAUSED_BY_OUTPUT) !== 0;
        this.#log.warn({ conn_id: this.id, read_timeout_ms: readTimeoutMs, replies_unread: unread }, 'pg connection read timeout');
        this.#close(new ConnectionLostError(unread ? `the client read none of our replies for ${readTimeoutMs} ms` : `nothing received for ${readTimeoutMs} ms`));
      },
    });
    this.#decoder = new FrameDecoder(options.frameBytesMax);
    this.remoteAddress = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    // The handshake's password check and a running command pause reading for the same reason.
    const commandReads = { pause: () => this.#pauseRead(PAUSED_BY_COMMAND), resume: () => this.#resumeRead(PAUSED_BY_COMMAND) };
    this.#handshake = new StartupHandshake(this, options, this.#log, {
      ...commandReads,
      beginTypedPhase: (startup) => {
        this.#decoder.startTypedPhase();
        this.#startup = startup;
      },
      enterPhase: (phase) => void (this.#phase = phase),
      cork: () => socket.cork(),
      uncork: () => socket.uncork(),
    });
    this.#commands = new CommandLoop(this, handler, {
      ...commandReads,
      isCopyBoth: () => this.#phase === 'copy_both',
    });
    this.#watch(socket, options.signal);
    this.#readDeadline.arm();
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
    return waitForDrain(this.#socket, this.#cancel.signal, signal);
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
    this.#copyBoth.start(sink);
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

  /**
   * Call after writing replies. While the socket is over its high-water mark, stops reading (before the next
   * message, even mid-chunk) until it drains, so the client's next requests wait until it has read our
   * replies. Independent of the other pauses; a no-op when the socket is writable. Time paused here counts
   * against the read timeout: a client that reads none of our replies for that long is closed, so it cannot
   * hold a connection slot forever.
   */
  pauseReadingUntilDrained(): void {
    if (this.#phase === 'closed' || !this.#socket.writableNeedDrain || (this.#pausedBy & PAUSED_BY_OUTPUT) !== 0) return;
    this.#pauseRead(PAUSED_BY_OUTPUT);
    this.#socket.once('drain', this.#onDrain); // one listener at a time: the flag above stays set until it fires
  }

  /** Sends one CopyData. Do not modify `payload` afterwards: large payloads are written without a copy. */
  sendCopyData(payload: Uint8Array): boolean {
    if (this.#phase === 'closed') return false;
    return writeCopyData(this.#socket, payload);
  }

  /** Sends one CopyData whose payload is `header` then `body`, without concatenating a large body. */
  sendCopyDataParts(header: Uint8Array, body: Uint8Array): boolean {
    if (this.#phase === 'closed') return false;
    return writeCopyDataParts(this.#socket, header, body);
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
    this.#readDeadline.touch();
    try {
      this.#decoder.push(chunk, this.#onMessage);
    } catch (error) {
      this.endWithError(error);
    }
  };

  readonly #onDrain = (): void => this.#resumeRead(PAUSED_BY_OUTPUT);

  readonly #onMessage = (tag: number, body: Buffer): void => {
    if (this.#phase === 'copy_both') this.#copyBoth.onMessage(tag, body); // first: the hot path
    else this.#onOtherMessage(tag, body);
  };

  #onOtherMessage(tag: number, body: Buffer): void {
    switch (this.#phase) {
      case 'startup':
        return this.#handshake.onStartupPacket(body);
      case 'authenticating':
        return this.#handshake.onPassword(tag, body);
      case 'commands':
        if (tag === FrontendTag.Terminate) return this.#close(undefined);
        return this.#commands.onMessage(tag, body);
      case 'copy_both': // handled by #onMessage
      case 'closed':
        return;
    }
  }

  /** Socket events and the parent signal: each ends the connection through `#close` or `endWithError`. */
  #watch(socket: Socket, parent: AbortSignal | undefined): void {
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
    if (parent !== undefined) {
      const onAbort = (): void => this.endWithError(new ShutdownError());
      if (parent.aborted) queueMicrotask(onAbort);
      else parent.addEventListener('abort', onAbort, { once: true });
      void this.closed.then(() => parent.removeEventListener('abort', onAbort));
    }
  }

  #pauseRead(reason: number): void {
    this.#pausedBy |= reason;
    this.#decoder.pause();
    this.#socket.pause();
  }

  #resumeRead(reason: number): void {
    this.#pausedBy &= ~reason;
    // Whichever pause ends: our own was not the client's silence, and a drain means the client read our replies.
    this.#readDeadline.touch();
    if (this.#pausedBy !== 0 || this.#phase === 'closed') return;
    try {
      this.#decoder.resume(this.#onMessage);
    } catch (error) {
      this.endWithError(error);
    }
    if (this.#pausedBy === 0 && !this.isClosed) this.#socket.resume();
  }

  /** Idempotent. Stops delivery, aborts the running command, tells the sink, then flushes and closes the socket. */
  #close(error: unknown): void {
    if (this.#phase === 'closed') return;
    const wasCopyBoth = this.#phase === 'copy_both';
    this.#phase = 'closed';
    this.#decoder.discard();
    this.#readDeadline.stop();
    this.#cancel.cancel(error ?? new ConnectionLostError('connection closed'));
    // Half-close and drain rather than destroy, so the client gets our final ErrorResponse (see connection_socket.ts).
    if (!this.#socket.destroyed) this.#flushTimer = endSocketGracefully(this.#socket, this.#onData);
    if (wasCopyBoth) this.#copyBoth.close(error);
  }
}
