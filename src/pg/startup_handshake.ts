/**
 * The startup phase of a PgConnection (reference §1.3): from the first packet to the first ReadyForQuery.
 * SSLRequest and GSSENCRequest are refused with 'N' (at most NEGOTIATIONS_MAX of them), a CancelRequest
 * closes silently (there are no cancellable backends), and the StartupMessage gets AuthenticationOk or,
 * with an `authenticate` hook, AuthenticationCleartextPassword first; then the ParameterStatus values and
 * ReadyForQuery, after which the connection enters its command phase.
 *
 * Design: like CommandLoop, this drives its connection through the public PgConnection API plus a small
 * `HandshakeControl` for what only the connection may change (reading, its phase, the decoder's switch to
 * typed frames), so the connection keeps one owner for each piece of state. A malformed packet throws;
 * the connection's data handler turns that into ErrorResponse 08P01 and the close.
 * Main thread. Abort: the `authenticate` hook runs under the connection's signal, and a result that
 * arrives after the close is dropped.
 */
import { ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';
import * as encode from './backend_encoder.js';
import { rethrowAsBug } from './command_loop.js';
import type { PgConnection } from './connection.js';
import type { PgConnectionOptions, PgLogger } from './connection_options.js';
import { FrontendTag } from './frame_decoder.js';
import { parsePassword } from './frontend_messages.js';
import { parseStartupPacket, type StartupParams } from './startup.js';

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

/** What the handshake may change on its connection beyond the public API. */
export interface HandshakeControl {
  /** Pause and resume reading on behalf of the running `authenticate` hook. */
  pause(): void;
  resume(): void;
  /** The StartupMessage arrived: typed frames follow, and `conn.startup` returns `startup`. */
  beginTypedPhase(startup: StartupParams): void;
  enterPhase(phase: 'authenticating' | 'commands'): void;
  /** Batch the writes between them into one socket write. */
  cork(): void;
  uncork(): void;
}

/** The connection options the handshake reads. */
export type HandshakeOptions = Pick<PgConnectionOptions, 'serverParameters' | 'authenticate'>;

/** One per connection; the connection passes it each message of the startup and authenticating phases. */
export class StartupHandshake {
  readonly #conn: PgConnection;
  readonly #options: HandshakeOptions;
  readonly #log: PgLogger;
  readonly #control: HandshakeControl;
  #negotiations = 0;

  constructor(conn: PgConnection, options: HandshakeOptions, log: PgLogger, control: HandshakeControl) {
    this.#conn = conn;
    this.#options = options;
    this.#log = log;
    this.#control = control;
  }

  /** One untyped packet of the startup phase: a negotiation request, a CancelRequest or the StartupMessage. */
  onStartupPacket(body: Buffer): void {
    const conn = this.#conn;
    const packet = parseStartupPacket(body);
    switch (packet.kind) {
      case 'ssl_request':
      case 'gss_enc_request':
        this.#negotiations += 1;
        if (this.#negotiations > NEGOTIATIONS_MAX) throw new ProtocolViolationError('startup', 'too many encryption requests');
        conn.write(encode.NEGOTIATION_REFUSED); // no TLS/GSS: the client goes on in plain text or gives up
        return;
      case 'cancel_request':
        this.#log.debug({ conn_id: conn.id }, 'cancel request refused'); // there are no cancellable backends
        conn.close();
        return;
      case 'startup':
        break;
    }
    const startup = packet.params;
    this.#control.beginTypedPhase(startup);
    if (startup.protocolMinorVersion > 0 || startup.unrecognisedProtocolOptions.length > 0) {
      conn.write(encode.negotiateProtocolVersion(0, startup.unrecognisedProtocolOptions));
    }
    if (this.#options.authenticate === undefined) return this.#completeStartup();
    this.#control.enterPhase('authenticating');
    conn.write(encode.AUTHENTICATION_CLEARTEXT_PASSWORD);
  }

  /** The client's PasswordMessage: reading stays paused while the `authenticate` hook runs. */
  onPassword(tag: number, body: Buffer): void {
    const conn = this.#conn;
    const authenticate = this.#options.authenticate;
    assert(authenticate !== undefined, 'authenticating only with an authenticate hook');
    if (tag !== FrontendTag.Password) throw new ProtocolViolationError(String.fromCharCode(tag), 'expected a password message');
    const password = parsePassword(body);
    this.#control.pause();
    // The promise is owned here: success completes startup, failure (AuthError, 28000) ends the connection.
    // errorFields() rethrows AssertionErrors, which then surface as an unhandled rejection and end the process.
    authenticate(conn.startup, password, conn.signal).then(
      (auth) => {
        if (conn.isClosed) return;
        conn.auth = auth;
        this.#completeStartup();
        this.#control.resume();
      },
      (error: unknown) => conn.endWithError(error),
    ).catch(rethrowAsBug);
  }

  #completeStartup(): void {
    const conn = this.#conn;
    const parameters = { server_version: SERVER_VERSION_DEFAULT, ...this.#options.serverParameters?.(conn.startup), ...FIXED_SERVER_PARAMETERS };
    this.#control.cork();
    conn.write(encode.AUTHENTICATION_OK);
    for (const [name, value] of Object.entries(parameters)) conn.write(encode.parameterStatus(name, value));
    conn.write(encode.readyForQuery('I'));
    this.#control.uncork();
    this.#control.enterPhase('commands');
  }
}
