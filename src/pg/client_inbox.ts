/**
 * The frontend client's inbox: backend messages framed off the socket wait here, in order, until the one
 * reader takes them (`next`, or `tryShift` when it must not await).
 *
 * Design: the queue is bounded in bytes, not messages. Above `queueBytesMax` the socket is paused, so TCP
 * backpressure reaches the server, and it resumes once the queue is down to half of it: the gap keeps a
 * reader that takes one message at a time from toggling the socket on every message. The array is consumed
 * from a head index and compacted in blocks, so taking a message is O(1) and a consumed body is released at once.
 * Invariants: at most one reader waits at a time (asserted); `close(error)` keeps the first error, and once
 * the queue is empty every read throws it. Abort-safe: an aborted `next` rejects with the abort reason and
 * leaves the queue as it was. Main thread.
 */
import type net from 'node:net';
import { assert } from '../sync/assert.js';
import { abortReason } from '../sync/cancel.js';
import type { BackendMessage } from './client_protocol.js';

/** Consumed slots at the head of the array before it is compacted: amortises the splice. */
const QUEUE_COMPACT_AFTER_MESSAGES = 1024;

export class BackendInbox {
  readonly #socket: Pick<net.Socket, 'pause' | 'resume'>;
  readonly #queueBytesMax: number;
  readonly #queue: BackendMessage[] = [];
  #queueHead = 0;
  #queuedBytes = 0;
  #paused = false;
  #closedError: Error | null = null;
  #wake: (() => void) | null = null;

  /** `queueBytesMax`: unread body bytes held before `socket` is paused. */
  constructor(socket: Pick<net.Socket, 'pause' | 'resume'>, queueBytesMax: number) {
    this.#socket = socket;
    this.#queueBytesMax = queueBytesMax;
  }

  /** Why the connection ended (the first error given to `close`), or null while it is open. */
  get closedError(): Error | null {
    return this.#closedError;
  }

  /** Queues a message from the socket, pausing the socket when the queue goes above its bound. */
  push(message: BackendMessage): void {
    this.#queue.push(message);
    this.#queuedBytes += message.body.length;
    if (!this.#paused && this.#queuedBytes > this.#queueBytesMax) {
      this.#paused = true;
      this.#socket.pause();
    }
    this.#wakeReader();
  }

  /** The next message if one is queued; undefined if none is, or the close error once the queue is empty. */
  tryShift(): BackendMessage | undefined {
    if (this.#queueHead >= this.#queue.length) {
      if (this.#closedError !== null) throw this.#closedError;
      return undefined;
    }
    return this.#shift();
  }

  /** The next message, waiting for one. Rejects with the close error, or the abort reason. Abort-safe. */
  async next(signal: AbortSignal): Promise<BackendMessage> {
    for (;;) {
      if (this.#queueHead < this.#queue.length) return this.#shift();
      if (this.#closedError !== null) throw this.#closedError;
      signal.throwIfAborted();
      assert(this.#wake === null, 'one reader at a time');
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => {
          this.#wake = null;
          reject(abortReason(signal));
        };
        this.#wake = () => {
          this.#wake = null;
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        signal.addEventListener('abort', onAbort, { once: true });
      });
    }
  }

  /** Records why the connection ended (the first reason wins) and wakes the reader. */
  close(error: Error): void {
    this.#closedError ??= error;
    this.#wakeReader();
  }

  #shift(): BackendMessage {
    const message = this.#queue[this.#queueHead];
    assert(message !== undefined, 'shift from an empty queue');
    this.#queue[this.#queueHead] = undefined as unknown as BackendMessage; // release the body
    this.#queueHead += 1;
    if (this.#queueHead === this.#queue.length) {
      this.#queue.length = 0;
      this.#queueHead = 0;
    } else if (this.#queueHead >= QUEUE_COMPACT_AFTER_MESSAGES) {
      this.#queue.splice(0, this.#queueHead);
      this.#queueHead = 0;
    }
    this.#queuedBytes -= message.body.length;
    if (this.#paused && this.#queuedBytes <= this.#queueBytesMax / 2) {
      this.#paused = false;
      this.#socket.resume();
    }
    return message;
  }

  #wakeReader(): void {
    this.#wake?.();
  }
}
