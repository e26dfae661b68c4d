/**
 * The command loop of a PgConnection: simple Query and the extended-protocol basics of reference §1.4
 * (Parse → ParseComplete, Bind → BindComplete, Describe → ParameterDescription(0) + NoData for a statement
 * or NoData for a portal, Execute runs the portal's text, Close → CloseComplete, Sync → ReadyForQuery).
 * Neon answers every Describe with ParameterDescription + NoData; we follow PostgreSQL for portals, which
 * strict drivers expect. After an extended-protocol error, messages are skipped until Sync (as PostgreSQL
 * does; Neon does not skip).
 * One command at a time: reading is paused while `onQuery` runs and resumed after its reply, unless the
 * command entered copy-both mode, after which this loop is never used again. After every reply, reading
 * also stays paused while the socket is over its high-water mark (`conn.pauseReadingUntilDrained()`): a
 * client pipelining messages without reading the replies (Sync, Parse, an unsupported query echoed back in
 * its ErrorResponse) makes us wait, never buffer. Prepared statements and portals are kept by name, at most
 * STATEMENTS_MAX of each. Main thread.
 */
import { InvalidArgumentError, ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';
import * as encode from './backend_encoder.js';
import type { PgConnection } from './connection.js';
import { FrontendTag } from './frame_decoder.js';
import { parseBind, parseExecute, parseParse, parseQuery, parseTarget } from './frontend_messages.js';

/** Runs one query text. Errors it throws become ErrorResponse (via sqlstate.ts); see PgConnection for replies. */
export interface PgQueryHandler {
  onQuery(text: string, conn: PgConnection, signal: AbortSignal): Promise<void>;
}

/** How the loop pauses and resumes the connection's reading, and learns that copy-both mode began. */
export interface ReadControl {
  pause(): void;
  resume(): void;
  isCopyBoth(): boolean;
}

/** Named statements and portals a client may hold; drivers use the unnamed ones or a few names. */
export const STATEMENTS_MAX = 64;

/** An AssertionError escaping a callback is a bug: rethrow it outside any promise so the process ends. */
export function rethrowAsBug(error: unknown): void {
  process.nextTick(() => {
    throw error;
  });
}

export class CommandLoop {
  readonly #conn: PgConnection;
  readonly #handler: PgQueryHandler;
  readonly #control: ReadControl;
  readonly #statements = new Map<string, string>();
  readonly #portals = new Map<string, string>();
  #running = false;
  #skipUntilSync = false;

  constructor(conn: PgConnection, handler: PgQueryHandler, control: ReadControl) {
    this.#conn = conn;
    this.#handler = handler;
    this.#control = control;
  }

  /** True from the start of `onQuery` until it settles (copy-both mode may begin meanwhile). */
  get running(): boolean {
    return this.#running;
  }

  /** One frontend message of the command phase (Terminate is handled by the connection). */
  onMessage(tag: number, body: Buffer): void {
    assert(!this.#running, 'no message is delivered while a command runs');
    this.#handle(tag, body);
    this.#conn.pauseReadingUntilDrained(); // answered at once (or Execute began): bound what the client leaves unread
  }

  #handle(tag: number, body: Buffer): void {
    if (this.#skipUntilSync && tag !== FrontendTag.Sync) return;
    switch (tag) {
      case FrontendTag.Query: {
        const text = parseQuery(body);
        if (text.trim() !== '') return this.#run(text, 'simple');
        this.#conn.write(encode.EMPTY_QUERY_RESPONSE);
        this.#conn.write(encode.readyForQuery('I'));
        return;
      }
      case FrontendTag.Parse: {
        const { statement, query } = parseParse(body);
        if (!this.#remember(this.#statements, statement, query)) return;
        this.#conn.write(encode.PARSE_COMPLETE);
        return;
      }
      case FrontendTag.Bind: {
        const { portal, statement } = parseBind(body);
        const query = this.#statements.get(statement);
        if (query === undefined) return this.#extendedError(new InvalidArgumentError(`prepared statement "${statement}" does not exist`));
        if (!this.#remember(this.#portals, portal, query)) return;
        this.#conn.write(encode.BIND_COMPLETE);
        return;
      }
      case FrontendTag.Describe: {
        const { target } = parseTarget(body, 'Describe');
        if (target === 'S') this.#conn.write(encode.parameterDescription([]));
        this.#conn.write(encode.NO_DATA);
        return;
      }
      case FrontendTag.Execute: {
        const portal = parseExecute(body);
        const query = this.#portals.get(portal);
        if (query === undefined) return this.#extendedError(new InvalidArgumentError(`portal "${portal}" does not exist`));
        if (query.trim() !== '') return this.#run(query, 'extended');
        this.#conn.write(encode.EMPTY_QUERY_RESPONSE);
        return;
      }
      case FrontendTag.Close: {
        const { target, name } = parseTarget(body, 'Close');
        (target === 'S' ? this.#statements : this.#portals).delete(name);
        this.#conn.write(encode.CLOSE_COMPLETE);
        return;
      }
      case FrontendTag.Sync:
        this.#skipUntilSync = false;
        this.#portals.delete(''); // the unnamed portal lives until the end of the transaction
        this.#conn.write(encode.readyForQuery('I'));
        return;
      case FrontendTag.Flush:
        return; // every reply is written at once
      case FrontendTag.CopyData:
      case FrontendTag.CopyDone:
      case FrontendTag.CopyFail:
        return; // PostgreSQL ignores these outside COPY: the client may still be sending after a failed COPY
      default:
        throw new ProtocolViolationError(String.fromCharCode(tag), 'unknown or unexpected message type');
    }
  }

  #remember(names: Map<string, string>, name: string, query: string): boolean {
    if (name !== '' && !names.has(name) && names.size >= STATEMENTS_MAX) {
      this.#extendedError(new InvalidArgumentError(`more than ${STATEMENTS_MAX} prepared statements or portals`));
      return false;
    }
    names.set(name, query);
    return true;
  }

  #extendedError(error: unknown): void {
    this.#conn.write(encode.errorResponse(this.#conn.reportableFields(error)));
    this.#skipUntilSync = true;
  }

  #run(text: string, mode: 'simple' | 'extended'): void {
    this.#running = true;
    this.#control.pause();
    this.#execute(text, mode).catch(rethrowAsBug);
  }

  /** Never rejects, except with an AssertionError (a bug). */
  async #execute(text: string, mode: 'simple' | 'extended'): Promise<void> {
    const conn = this.#conn;
    let failure: { error: unknown } | null = null;
    try {
      await this.#handler.onQuery(text, conn, conn.signal);
    } catch (error) {
      failure = { error };
    }
    this.#running = false;
    if (conn.isClosed) {
      if (failure !== null) conn.reportableFields(failure.error); // logs it if unexpected; the client is gone
      return;
    }
    if (this.#control.isCopyBoth()) {
      if (failure !== null) conn.endWithError(failure.error); // the stream owns the connection now
      return;
    }
    if (failure !== null) conn.write(encode.errorResponse(conn.reportableFields(failure.error)));
    if (mode === 'simple') conn.write(encode.readyForQuery('I'));
    else if (failure !== null) this.#skipUntilSync = true;
    conn.pauseReadingUntilDrained(); // first: then resume() below reads on only once the reply has drained
    this.#control.resume();
  }
}
