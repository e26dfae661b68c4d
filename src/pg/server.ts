/**
 * Accepting pg connections: `servePgConnection` wraps an accepted socket in a PgConnection, counting it in
 * a PgConnectionSet with a limit. Over the limit, the connection still goes through SSL/GSS negotiation and
 * answers the StartupMessage with ErrorResponse 53300 (too_many_connections) before closing, as PostgreSQL
 * does, so every client shows the real reason. The set also closes every connection at shutdown.
 * Invariant: `size` counts connections whose socket has not closed, and at most `maxConnections` of them
 * are served (refused ones are counted too while they close, so a flood cannot exceed the bound by much:
 * refused connections are bounded by the accept rate and close at once). Main thread.
 */
import type { Socket } from 'node:net';
import { TooManyConnectionsError } from '../errors.js';
import { CONNECTIONS_MAX } from '../limits.js';
import { assert } from '../sync/assert.js';
import { PgConnection, type PgConnectionOptions, type PgQueryHandler } from './connection.js';

export class PgConnectionSet {
  readonly #connections = new Set<PgConnection>();
  #served = 0;

  constructor(readonly maxConnections: number = CONNECTIONS_MAX) {
    assert(Number.isInteger(maxConnections) && maxConnections > 0, 'maxConnections must be a positive integer');
  }

  /** Open connections, refused ones included until they close. */
  get size(): number {
    return this.#connections.size;
  }

  /** Connections being served (not refused). */
  get servedCount(): number {
    return this.#served;
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
  track(conn: PgConnection, served: boolean): void {
    this.#connections.add(conn);
    if (served) this.#served += 1;
    void conn.closed.then(() => {
      this.#connections.delete(conn);
      if (served) this.#served -= 1;
      assert(this.#served >= 0, 'served count never negative');
    });
  }
}

export interface ServePgOptions extends PgConnectionOptions {
  connections: PgConnectionSet;
}

/** Serves one accepted socket; the returned connection lives until its `closed` promise resolves. */
export function servePgConnection(socket: Socket, options: ServePgOptions, handler: PgQueryHandler): PgConnection {
  const { connections, ...connectionOptions } = options;
  const served = connections.servedCount < connections.maxConnections;
  if (served) {
    const conn = new PgConnection(socket, connectionOptions, handler);
    connections.track(conn, true);
    return conn;
  }
  const refuseWith = new TooManyConnectionsError(`sorry, too many clients already (max_connections ${connections.maxConnections})`);
  const conn = new PgConnection(socket, { ...connectionOptions, refuseWith }, handler);
  connections.track(conn, false);
  return conn;
}
