/**
 * Refusing pg connections over the limit, and serving sockets from a plain net.Server.
 *
 * `PgRefusals` answers a socket over `max_connections` with ErrorResponse 53300 (too_many_connections) as
 * the reply to its StartupMessage. An SSLRequest or GSSENCRequest before it gets 'N' first, as on a served
 * connection: current libpq (psql 15.18 here; the fix for CVE-2024-10977) does not show an error sent in
 * reply to an SSLRequest, only "server sent an error response during SSL exchange", so answering at once,
 * as PostgreSQL's postmaster does when it cannot start a backend, hid the reason from psql with its default
 * sslmode=prefer. A client that sends no whole packet within REFUSED_NEGOTIATION_WAIT_MS (bounded by half the
 * linger time) gets the ErrorResponse then. A refused socket must not outlive its purpose, or the limit
 * bounds nothing and enough clients exhaust the file descriptors WAL segments need:
 * - it is read, and the bytes after its first packets discarded, so the client's FIN is seen and closing
 *   never resets a socket with unread bytes (a reset can make the client lose the ErrorResponse);
 * - it is destroyed when the client closes its side (once our reply is written) or on an error, and after
 *   REFUSED_SOCKET_LINGER_MS in any case (an unref'd timer: it never keeps the process alive);
 * - at most REFUSED_SOCKETS_MAX are open at once; beyond that a socket is destroyed without a reply.
 * So open pg sockets stay under max_connections + REFUSED_SOCKETS_MAX however many clients connect.
 *
 * node.ts accepts its sockets itself (the gate, conn ids) and refuses through a PgRefusals (services.ts).
 * `servePgConnection` with a `PgConnectionSet` is the same limit and refusal for a plain net.Server; the
 * pg connection integration tests serve with it. Main thread.
 */
import type { Socket } from 'node:net';
import { TooManyConnectionsError, type SafekeeperError } from '../errors.js';
import { CONNECTIONS_MAX } from '../limits.js';
import { assert } from '../sync/assert.js';
import { errorResponse, NEGOTIATION_REFUSED } from './backend_encoder.js';
import { PgConnection, type PgConnectionOptions, type PgQueryHandler } from './connection.js';
import { StartupCode } from './frame_decoder.js';
import { errorFields } from './sqlstate.js';

/**
 * Refused sockets open at once. Each holds a file descriptor for at most REFUSED_SOCKET_LINGER_MS, so this
 * admits a burst of a few hundred connection attempts per second while keeping the total small next to
 * CONNECTIONS_MAX and the usual descriptor limits (ulimit -n is often 1024 to 65536).
 */
export const REFUSED_SOCKETS_MAX = 256;
/**
 * How long a refused socket may stay open. Our ErrorResponse leaves at once; a client needs one round trip
 * to read it and close, so a second is plenty even far away, and a client that never closes is cut off soon.
 */
export const REFUSED_SOCKET_LINGER_MS = 1_000;

/**
 * How long a refused socket waits for its first packet before the ErrorResponse goes out anyway. libpq sends
 * its SSLRequest as soon as it is connected, half a round trip after our accept.
 */
export const REFUSED_NEGOTIATION_WAIT_MS = 200;
/** Length of an SSLRequest or GSSENCRequest: int32 length + int32 code. */
const NEGOTIATION_PACKET_BYTES = 8;
/** SSLRequest then GSSENCRequest is the longest legitimate negotiation (startup_handshake.ts). */
const NEGOTIATIONS_MAX = 2;

export class PgRefusals {
  #openCount = 0;

  constructor(
    readonly socketsMax: number = REFUSED_SOCKETS_MAX,
    readonly lingerMs: number = REFUSED_SOCKET_LINGER_MS,
    readonly negotiationWaitMs: number = REFUSED_NEGOTIATION_WAIT_MS,
  ) {
    assert(Number.isInteger(socketsMax) && socketsMax >= 0, 'socketsMax must be a non-negative integer');
    assert(Number.isInteger(lingerMs) && lingerMs > 0, 'lingerMs must be a positive integer');
    assert(Number.isInteger(negotiationWaitMs) && negotiationWaitMs >= 0, 'negotiationWaitMs must be a non-negative integer');
  }

  /** Refused sockets not closed yet; at most `socketsMax`. */
  get openCount(): number {
    return this.#openCount;
  }

  /** Sends ErrorResponse for `error` (through sqlstate.ts) and closes `socket`, within the bounds in the header. */
  refuse(socket: Socket, error: SafekeeperError): void {
    if (socket.destroyed) return;
    if (this.#openCount >= this.socketsMax) {
      socket.destroy(); // a flood: no reply, but no descriptor held either
      return;
    }
    this.#openCount += 1;
    const timer = setTimeout(() => socket.destroy(), this.lingerMs);
    timer.unref();
    socket.once('close', () => {
      clearTimeout(timer);
      this.#openCount -= 1;
      assert(this.#openCount >= 0, 'refused sockets never counted twice');
    });
    socket.on('error', () => socket.destroy()); // resets are routine here; there is nothing to report
    socket.once('end', () => (socket.writableFinished ? socket.destroy() : socket.once('finish', () => socket.destroy())));
    let answered = false;
    const answer = (): void => {
      if (answered) return;
      answered = true;
      clearTimeout(waitTimer);
      socket.end(errorResponse(errorFields(error)));
    };
    const waitTimer = setTimeout(answer, Math.min(this.negotiationWaitMs, Math.floor(this.lingerMs / 2)));
    waitTimer.unref();
    // Until answered, `pending` holds less than one negotiation packet; after that, bytes are discarded.
    let pending: Buffer = Buffer.alloc(0);
    let negotiations = 0;
    socket.on('data', (chunk: Buffer) => {
      if (answered) return;
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      while (!answered && pending.length >= NEGOTIATION_PACKET_BYTES) {
        const code = pending.readInt32BE(4);
        const negotiation = pending.readInt32BE(0) === NEGOTIATION_PACKET_BYTES && (code === StartupCode.SslRequest || code === StartupCode.GssEncRequest);
        if (!negotiation || negotiations >= NEGOTIATIONS_MAX) {
          answer(); // a StartupMessage (or anything else): the ErrorResponse is its reply
          break;
        }
        negotiations += 1;
        socket.write(NEGOTIATION_REFUSED);
        pending = pending.subarray(NEGOTIATION_PACKET_BYTES);
      }
      if (answered) pending = Buffer.alloc(0);
    });
    socket.resume();
  }
}

/** Connections served by `servePgConnection`: at most `maxConnections`; the rest are refused. */
export class PgConnectionSet {
  readonly #connections = new Set<PgConnection>();

  constructor(
    readonly maxConnections: number = CONNECTIONS_MAX,
    readonly refusals: PgRefusals = new PgRefusals(),
  ) {
    assert(Number.isInteger(maxConnections) && maxConnections > 0, 'maxConnections must be a positive integer');
  }

  /** Connections being served whose socket has not closed. */
  get servedCount(): number {
    return this.#connections.size;
  }

  connections(): IterableIterator<PgConnection> {
    return this.#connections.values();
  }

  /** Ends every connection with `error` (e.g. ShutdownError, 57P01) and waits until their sockets closed. */
  async closeAll(error: unknown): Promise<void> {
    const closing = [...this.#connections];
    for (const conn of closing) conn.endWithError(error);
    await Promise.all(closing.map((conn) => conn.closed));
  }

  /** Internal: counts `conn` until its socket closes. */
  track(conn: PgConnection): void {
    this.#connections.add(conn);
    void conn.closed.then(() => this.#connections.delete(conn));
  }
}

export interface ServePgOptions extends PgConnectionOptions {
  connections: PgConnectionSet;
}

/**
 * Serves one accepted socket: a PgConnection that lives until its `closed` promise resolves, or null when
 * the set is full and the socket was refused (53300) through the set's PgRefusals.
 */
export function servePgConnection(socket: Socket, options: ServePgOptions, handler: PgQueryHandler): PgConnection | null {
  const { connections, ...connectionOptions } = options;
  if (connections.servedCount >= connections.maxConnections) {
    connections.refusals.refuse(socket, new TooManyConnectionsError(`sorry, too many clients already (max_connections ${connections.maxConnections})`));
    return null;
  }
  const conn = new PgConnection(socket, connectionOptions, handler);
  connections.track(conn);
  return conn;
}
