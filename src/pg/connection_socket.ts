/**
 * The socket mechanics of a PgConnection, apart from any protocol phase: CopyData writes that avoid
 * copying large payloads, waiting for 'drain' with cancellation, the read timeout, and the graceful
 * half-close.
 *
 * Design: a small CopyData is copied behind its header and written once; a large one is written as
 * header + payload under cork (one writev), so WAL chunks are never copied again. Closing half-closes
 * and keeps reading (discarding) until the client closes its side, because destroying a socket with
 * unread bytes makes the kernel send a reset and the client can lose our final ErrorResponse; a timer
 * bounds how long a client that never closes may take. The read timeout is one timer per connection,
 * re-armed lazily, so reading a chunk only stores a timestamp. Main thread. The writes never wait; `waitForDrain`
 * rejects on the connection's close or on `signal` (abort-safe).
 */
import type { Socket } from 'node:net';
import { abortReason } from '../sync/cancel.js';
import * as encode from './backend_encoder.js';
import { ConnectionLostError } from './sqlstate.js';

/** A closing socket that cannot flush (client not reading) is destroyed after this long. */
const CLOSE_FLUSH_TIMEOUT_MS = 10_000;
/** Payloads up to this size are copied behind their header (one write); larger ones are corked (writev). */
const COPY_DATA_INLINE_BYTES_MAX = 8 * 1024;

const discardBytes = (): void => undefined;

/** Writes one CopyData message holding `payload`. Returns what `socket.write` returned (false: wait for 'drain'). */
export function writeCopyData(socket: Socket, payload: Uint8Array): boolean {
  if (payload.length <= COPY_DATA_INLINE_BYTES_MAX) {
    const message = Buffer.allocUnsafe(encode.MESSAGE_HEADER_BYTES + payload.length);
    message.set(payload, encode.writeCopyDataHeader(message, 0, payload.length));
    return socket.write(message);
  }
  const header = Buffer.allocUnsafe(encode.MESSAGE_HEADER_BYTES);
  encode.writeCopyDataHeader(header, 0, payload.length);
  socket.cork();
  socket.write(header);
  const ok = socket.write(payload);
  socket.uncork();
  return ok;
}

/** Writes one CopyData message whose payload is `header` then `body`, without concatenating a large body. */
export function writeCopyDataParts(socket: Socket, header: Uint8Array, body: Uint8Array): boolean {
  const payloadBytes = header.length + body.length;
  const inline = payloadBytes <= COPY_DATA_INLINE_BYTES_MAX;
  const first = Buffer.allocUnsafe(encode.MESSAGE_HEADER_BYTES + header.length + (inline ? body.length : 0));
  const bodyOffset = encode.writeCopyDataHeader(first, 0, payloadBytes) + header.length;
  first.set(header, encode.MESSAGE_HEADER_BYTES);
  if (inline) {
    first.set(body, bodyOffset);
    return socket.write(first);
  }
  socket.cork();
  socket.write(first);
  const ok = socket.write(body);
  socket.uncork();
  return ok;
}

/**
 * Resolves once `socket` has drained (at once if it needs no drain); rejects with ConnectionLostError when
 * `closed` fires (the connection ended) or with the abort reason when `signal` fires.
 */
export function waitForDrain(socket: Socket, closed: AbortSignal, signal: AbortSignal): Promise<void> {
  if (!socket.writableNeedDrain) return Promise.resolve();
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<void>((resolve, reject) => {
    const cleanup = (): void => {
      socket.off('drain', onDrain);
      closed.removeEventListener('abort', onClosed);
      signal.removeEventListener('abort', onAbort);
    };
    const onDrain = (): void => (cleanup(), resolve());
    const onClosed = (): void => (cleanup(), reject(new ConnectionLostError('connection closed')));
    const onAbort = (): void => (cleanup(), reject(abortReason(signal)));
    socket.on('drain', onDrain);
    closed.addEventListener('abort', onClosed, { once: true });
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Ends a live socket gracefully: stops `onData`, discards what still arrives, half-closes, and destroys
 * the socket once the client has closed its side. Returns the timer that destroys it after
 * CLOSE_FLUSH_TIMEOUT_MS anyway (already unref'd); clear it when the socket closes.
 */
export function endSocketGracefully(socket: Socket, onData: (chunk: Buffer) => void): NodeJS.Timeout {
  socket.off('data', onData);
  socket.on('data', discardBytes);
  if (socket.readableEnded) socket.end(() => socket.destroy());
  else {
    socket.once('end', () => socket.destroy());
    socket.resume();
    socket.end();
  }
  const flushTimer = setTimeout(() => socket.destroy(), CLOSE_FLUSH_TIMEOUT_MS);
  flushTimer.unref();
  return flushTimer;
}

/** What a ReadDeadline asks its connection when the timer fires. */
export interface ReadDeadlineHooks {
  isClosed(): boolean;
  /** True while we paused reading: that time is not the client's silence. */
  isPaused(): boolean;
  /** The client sent nothing for the whole timeout: log and close. */
  onTimeout(): void;
}

/** Drops a client that sends nothing for `timeoutMs` (time spent paused by us does not count). */
export class ReadDeadline {
  #lastReadMs = Date.now();
  #timer: NodeJS.Timeout | null = null;

  constructor(
    readonly timeoutMs: number,
    private readonly hooks: ReadDeadlineHooks,
  ) {}

  /** Bytes arrived, or reading resumed after a pause of ours. */
  touch(): void {
    this.#lastReadMs = Date.now();
  }

  /** Starts the timer; it re-arms itself until the client is silent for `timeoutMs` or the connection closes. */
  arm(delayMs = this.timeoutMs): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (this.hooks.isClosed()) return;
      const nowMs = Date.now();
      if (this.hooks.isPaused()) this.#lastReadMs = nowMs;
      const silentMs = nowMs - this.#lastReadMs;
      if (silentMs < this.timeoutMs) return this.arm(this.timeoutMs - silentMs);
      this.hooks.onTimeout();
    }, delayMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
