/**
 * What the frontend client's modules share (`client.ts`, `client_inbox.ts`, `client_startup.ts`): the shape of
 * a framed backend message, the encoders of the frontend messages the client sends, and the two errors a
 * caller branches on.
 *
 * Design: these live apart from `client.ts` so the startup exchange can use them without importing the
 * client class (no import cycle); `client.ts` re-exports the errors, which is where callers import them from.
 * Errors: a server ErrorResponse becomes PgServerError (its SQLSTATE and fields kept); a refused, reset or
 * timed-out connection, or a message the client did not expect, becomes PgConnectionError.
 * Pure (encoders allocate a fresh buffer per call); main thread.
 */
import { SafekeeperError } from '../errors.js';

/** An ErrorResponse from the server. `sqlState` is the server's code (field C). */
export class PgServerError extends SafekeeperError {
  override readonly name = 'PgServerError';
  readonly code = 'SK_PG_SERVER_ERROR';
  readonly sqlState: string;
  constructor(readonly fields: Readonly<Record<string, string>>, context: string) {
    super(`${context}: ${fields['S'] ?? 'ERROR'}: ${fields['M'] ?? 'unknown error'}${fields['D'] === undefined ? '' : ` (${fields['D']})`}`);
    this.sqlState = fields['C'] ?? 'XX000';
  }
}

/** The connection could not be made, broke, or timed out. */
export class PgConnectionError extends SafekeeperError {
  override readonly name = 'PgConnectionError';
  readonly code = 'SK_PG_CONNECTION';
  readonly sqlState = '08006'; // connection_failure
}

/** One framed backend message: its type byte and its body (the length word stripped). */
export interface BackendMessage {
  tag: number;
  body: Buffer;
}

/** A typed frontend message: the tag byte, an int32 length that counts itself, then `body`. */
export function typedMessage(tag: number, body: Uint8Array): Buffer {
  const message = Buffer.allocUnsafe(5 + body.byteLength);
  message[0] = tag;
  message.writeInt32BE(4 + body.byteLength, 1);
  message.set(body, 5);
  return message;
}

/** Query ('Q'): one simple-protocol statement, NUL-terminated. */
export function queryMessage(text: string): Buffer {
  return typedMessage(0x51, Buffer.from(`${text}\0`, 'utf8'));
}
