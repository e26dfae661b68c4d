/**
 * Copy-both mode of a PgConnection, the phase a replication command (START_REPLICATION, START_WAL_PUSH)
 * runs in once it called `startCopyBoth`: every client message from then on arrives here and goes to the
 * command's CopyBothSink. CopyData goes to `onCopyData` as a view of the socket chunk, with no promise or
 * allocation per message. CopyDone or CopyFail ends the client's side once; after it only Flush, Sync
 * (ignored, as PostgreSQL does during COPY) and Terminate are accepted, and anything else ends the
 * connection with 08P01.
 *
 * Design: like StartupHandshake and CommandLoop, this handles one phase through the connection's public
 * API; the connection keeps the phase itself and calls `close` once when it ends, so the sink hears
 * `onClose` exactly once. Main thread; every call is synchronous, from the socket's 'data' handler.
 */
import { ProtocolViolationError } from '../errors.js';
import type { PgConnection } from './connection.js';
import type { CopyBothSink } from './connection_options.js';
import { FrontendTag } from './frame_decoder.js';
import { parseCopyFail } from './frontend_messages.js';

const NO_SINK: CopyBothSink = { onCopyData: () => undefined, onCopyDone: () => undefined, onCopyFail: () => undefined, onClose: () => undefined };

/** One per connection, idle until `start`; see the header. */
export class CopyBothMode {
  readonly #conn: PgConnection;
  #sink: CopyBothSink = NO_SINK;
  /** The client sent CopyDone or CopyFail: its half of the copy is over. */
  #clientDone = false;

  constructor(conn: PgConnection) {
    this.#conn = conn;
  }

  /** Delivers every later message to `sink`. */
  start(sink: CopyBothSink): void {
    this.#sink = sink;
  }

  /** One frontend message of copy-both mode. */
  onMessage(tag: number, body: Buffer): void {
    if (tag === FrontendTag.CopyData && !this.#clientDone) return this.#sink.onCopyData(body);
    switch (tag) {
      case FrontendTag.CopyDone:
        if (this.#clientDone) break;
        this.#clientDone = true;
        return this.#sink.onCopyDone();
      case FrontendTag.CopyFail:
        if (this.#clientDone) break;
        this.#clientDone = true;
        return this.#sink.onCopyFail(parseCopyFail(body));
      case FrontendTag.Flush:
      case FrontendTag.Sync:
        return; // PostgreSQL ignores these during COPY
      case FrontendTag.Terminate:
        return this.#conn.close();
      default:
        break;
    }
    this.#conn.endWithError(new ProtocolViolationError(String.fromCharCode(tag), 'unexpected during COPY'));
  }

  /** The connection ended: tells the sink (once) and drops it. */
  close(error: unknown): void {
    const sink = this.#sink;
    this.#sink = NO_SINK;
    sink.onClose(error);
  }
}
