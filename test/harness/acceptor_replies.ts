/**
 * The reading half of the test proposer (`test_proposer.ts`): a background loop that decodes every acceptor
 * message on a START_WAL_PUSH stream into a reply queue (`next()`), records every AppendResponse, and notes
 * how the stream ended (`serverError`, `closed`, `socketError`).
 *
 * Design: the loop starts with the reader and runs until the connection closes, so AppendResponses are
 * recorded even when no test waits for them (tests assert on the whole sequence of acknowledged flush_lsns).
 * An ErrorResponse ends the stream: it is kept, and every later wait throws it as a StreamClosedError.
 * The loop never throws; `done` resolves once it has ended and `closed` is set.
 */
import type { AcceptorGreeting, AcceptorMessage, AppendResponse, ProtocolVersion, VoteResponse } from '../../src/acceptor/messages.js';
import { decodeAcceptorMessage } from '../../src/acceptor/messages_codec.js';
import type { DatabaseError, PgTestClient } from './pg_client.js';

/** The background reader re-arms its wait this often; only an idle stream ever waits this long. */
const READER_POLL_MS = 60_000;

/** The server ended the stream (with an ErrorResponse, or by closing). */
export class StreamClosedError extends Error {
  constructor(readonly serverError: DatabaseError | null) {
    super(serverError === null ? 'the safekeeper closed the stream' : `the safekeeper ended the stream: ${serverError.code} ${serverError.message}`);
  }
}

export class AcceptorReplyReader {
  /** Every AppendResponse received, in order. */
  readonly appendResponses: AppendResponse[] = [];
  /** The ErrorResponse that ended the stream, if any. */
  serverError: DatabaseError | null = null;
  /** Whether the connection has closed. */
  closed = false;
  /** A socket error seen (e.g. ECONNRESET when the server closed with our bytes unread), for diagnostics. */
  socketError: Error | null = null;
  /** Resolves when the loop has ended (the connection closed). */
  readonly done: Promise<void>;
  readonly #client: PgTestClient;
  readonly #protoVersion: ProtocolVersion;
  readonly #replies: (AcceptorGreeting | VoteResponse | AppendResponse)[] = [];
  #wake: (() => void) | null = null;

  /** Starts reading `client`, a connection already inside START_WAL_PUSH. */
  constructor(client: PgTestClient, protoVersion: ProtocolVersion) {
    this.#client = client;
    this.#protoVersion = protoVersion;
    client.socket.on('error', (error) => (this.socketError ??= error));
    this.done = this.#readLoop();
  }

  /** The next greeting, vote or append reply, in arrival order. Throws if the stream ends first. */
  async next(waitMs: number): Promise<AcceptorMessage> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const reply = this.#replies.shift();
      if (reply !== undefined) return reply;
      if (this.closed) throw new StreamClosedError(this.serverError);
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0) throw new Error(`no reply from the safekeeper within ${waitMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remainingMs);
        this.#wake = () => (clearTimeout(timer), resolve());
      });
      this.#wake = null;
    }
  }

  /** Forgets replies not yet taken with next() (the AppendResponse record stays). */
  clear(): void {
    this.#replies.length = 0;
  }

  async #readLoop(): Promise<void> {
    try {
      for (;;) {
        let message;
        try {
          message = await this.#client.next(READER_POLL_MS);
        } catch (error) {
          if (this.#client.socket.destroyed || this.#client.socket.readableEnded) return;
          if (error instanceof Error && error.message.startsWith('no backend message')) continue;
          return;
        }
        if (message.name === 'copyData') {
          const payload = (message as unknown as { chunk: Buffer }).chunk;
          const decoded = decodeAcceptorMessage(payload, this.#protoVersion) as AcceptorGreeting | VoteResponse | AppendResponse;
          if (decoded.tag === 'append') this.appendResponses.push(decoded);
          this.#replies.push(decoded);
          this.#wake?.();
        } else if (message.name === 'error') {
          this.serverError = message as DatabaseError;
        }
        // CopyDone and anything else: the close that follows ends the loop.
      }
    } finally {
      this.closed = true;
      this.#wake?.();
    }
  }
}
