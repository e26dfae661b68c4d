/**
 * A frontend (client) connection of the PostgreSQL v3 protocol, on node:net: what the proposer uses to talk
 * to a PostgreSQL primary (physical replication) and to safekeepers (START_WAL_PUSH, START_REPLICATION).
 * It speaks startup with any parameters (options, application_name, replication), trust / cleartext / MD5 /
 * SCRAM-SHA-256 authentication, simple queries, and copy-both streams. This is the entry point callers
 * import; the pieces it is built from are:
 *   client_protocol.ts  the errors (re-exported here), the backend message shape, frontend message encoders
 *   client_inbox.ts     the byte-bounded queue of backend messages and its one reader
 *   client_startup.ts   the StartupMessage and the authentication exchange (bodies in client_auth.ts)
 *
 * Design: one incremental framer (`backend_parser.ts`) turns socket chunks into (tag, body) messages that go
 * into the inbox, which pauses the socket above QUEUE_BYTES_MAX_DEFAULT (TCP backpressure on the server) and
 * resumes it below half of it. ParameterStatus and NoticeResponse are absorbed here; every other message is
 * consumed in order by one reader at a time. Writes go straight to the socket; `write*` return what
 * `socket.write` returned and `drained()` waits for 'drain', so a sender can respect the socket's
 * high-water mark. Copy data is sent as header + parts under cork(), so a 45-byte header and a 128 KiB WAL
 * view leave in one writev without being copied together.
 * Errors: a server ErrorResponse becomes PgServerError (its SQLSTATE and fields kept); a refused, reset or
 * timed-out connection becomes PgConnectionError. Bad framing is a ProtocolViolationError, after which the
 * connection is destroyed. Abort-safe: an aborted wait rejects and leaves the connection as it was; the
 * owner decides whether to `destroy()` it. Main thread.
 */
import net from 'node:net';
import { abortReason } from '../sync/cancel.js';
import { BackendMessageParser, decodeDataRow, decodeErrorFields, decodeRowDescription, readCString } from './backend_parser.js';
import { BackendInbox } from './client_inbox.js';
import { type BackendMessage, PgConnectionError, PgServerError, queryMessage } from './client_protocol.js';
import { runStartup, type StartupOptions } from './client_startup.js';

export { PgConnectionError, PgServerError } from './client_protocol.js';

/** A backend message the proposer accepts: XLogData is at most 128 KiB + 25 bytes; query results are small. */
export const CLIENT_FRAME_BYTES_MAX = 8 * 1024 * 1024;
/** Unread bytes held before the socket is paused: a few dozen 128 KiB XLogData messages. */
export const QUEUE_BYTES_MAX_DEFAULT = 8 * 1024 * 1024;
export const CONNECT_TIMEOUT_MS_DEFAULT = 10_000;

export interface PgClientOptions extends StartupOptions {
  host: string;
  port: number;
  /** Deadline for TCP connect + authentication + ReadyForQuery. */
  connectTimeoutMs?: number;
  queueBytesMax?: number;
}

export interface QueryResult {
  fields: string[];
  rows: (string | null)[][];
  commandTag: string;
}

export type CopyEvent = { kind: 'data'; payload: Buffer } | { kind: 'done' };

export class PgClient {
  /** ParameterStatus values reported by the server (server_version, ...). */
  readonly parameters = new Map<string, string>();
  readonly closed: Promise<void>;
  readonly #socket: net.Socket;
  readonly #inbox: BackendInbox;

  private constructor(socket: net.Socket, queueBytesMax: number) {
    this.#socket = socket;
    this.#inbox = new BackendInbox(socket, queueBytesMax);
    const parser = new BackendMessageParser(CLIENT_FRAME_BYTES_MAX);
    socket.on('data', (chunk: Buffer) => {
      try {
        parser.push(chunk, (tag, body) => this.#onMessage(tag, body));
      } catch (error) {
        this.destroy(error as Error);
      }
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('close', () => this.#inbox.close(new PgConnectionError('connection closed by the server')));
    socket.on('error', (error) => this.#inbox.close(new PgConnectionError(`connection failed: ${error.message}`, { cause: error })));
  }

  /** Connects, authenticates and waits for ReadyForQuery. Rejects with PgConnectionError, PgServerError or the abort reason. */
  static async connect(options: PgClientOptions, signal: AbortSignal): Promise<PgClient> {
    signal.throwIfAborted();
    const timeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS_DEFAULT;
    const socket = net.connect({ host: options.host, port: options.port, noDelay: true });
    const client = new PgClient(socket, options.queueBytesMax ?? QUEUE_BYTES_MAX_DEFAULT);
    const where = `${options.host}:${options.port}`;
    const timer = setTimeout(() => client.destroy(new PgConnectionError(`connecting to ${where}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = (): void => client.destroy(new PgConnectionError(`connecting to ${where}: cancelled`));
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      await runStartup({
        write: (bytes) => client.#write(bytes),
        next: (waitSignal) => client.#inbox.next(waitSignal),
        unexpected: (message, expected) => client.#unexpected(message, expected),
      }, options);
      return client;
    } catch (error) {
      client.destroy();
      if (signal.aborted) throw abortReason(signal);
      if (error instanceof PgConnectionError) throw new PgConnectionError(`${where}: ${error.message}`, { cause: error.cause });
      throw error;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    }
  }

  get destroyed(): boolean {
    return this.#socket.destroyed;
  }

  /** Runs one simple query; an ErrorResponse is thrown as PgServerError once ReadyForQuery has arrived. */
  async query(text: string, signal: AbortSignal): Promise<QueryResult> {
    this.#write(queryMessage(text));
    const result: QueryResult = { fields: [], rows: [], commandTag: '' };
    let failure: PgServerError | null = null;
    for (;;) {
      const message = await this.#inbox.next(signal);
      switch (String.fromCharCode(message.tag)) {
        case 'T':
          result.fields = decodeRowDescription(message.body);
          break;
        case 'D':
          result.rows.push(decodeDataRow(message.body));
          break;
        case 'C':
          result.commandTag = readCString(message.body, 0).value;
          break;
        case 'E':
          failure = new PgServerError(decodeErrorFields(message.body), text.split(/\s/)[0] ?? 'query');
          break;
        case 'Z':
          if (failure !== null) throw failure;
          return result;
        case 'I': // EmptyQueryResponse
          break;
        default:
          throw this.#unexpected(message, 'a query result');
      }
    }
  }

  /** Sends `text` (START_WAL_PUSH, START_REPLICATION) and waits for CopyBothResponse; an ErrorResponse is thrown. */
  async startCopyBoth(text: string, signal: AbortSignal): Promise<void> {
    this.#write(queryMessage(text));
    const message = await this.#inbox.next(signal);
    if (message.tag === 0x57) return; // W
    if (message.tag === 0x45) {
      const error = new PgServerError(decodeErrorFields(message.body), text.split(/\s/)[0] ?? 'query');
      await this.#inbox.next(signal).catch(() => undefined); // ReadyForQuery follows an error before the copy starts
      throw error;
    }
    throw this.#unexpected(message, 'CopyBothResponse');
  }

  /** The next copy event if one is already queued (lets a consumer drain a whole socket read without awaiting). */
  tryNextCopy(): CopyEvent | undefined {
    const message = this.#inbox.tryShift();
    return message === undefined ? undefined : this.#copyEvent(message);
  }

  /** The next copy event; an ErrorResponse (the server ending the stream) is thrown as PgServerError. */
  async nextCopy(signal: AbortSignal): Promise<CopyEvent> {
    return this.#copyEvent(await this.#inbox.next(signal));
  }

  /** Sends one CopyData whose payload is the concatenation of `parts`. Returns false when the socket buffer is full. */
  sendCopyData(...parts: Uint8Array[]): boolean {
    let payloadBytes = 0;
    for (const part of parts) payloadBytes += part.byteLength;
    const header = Buffer.allocUnsafe(5);
    header[0] = 0x64; // d
    header.writeInt32BE(payloadBytes + 4, 1);
    if (parts.length === 1) {
      const first = parts[0] as Uint8Array;
      if (first.byteLength <= 256) return this.#write(Buffer.concat([header, first]));
    }
    this.#socket.cork();
    let ok = this.#write(header);
    for (const part of parts) ok = this.#write(part);
    this.#socket.uncork();
    return ok;
  }

  /**
   * Runs `send` with the socket corked, so every CopyData it sends leaves in one write: messages that belong
   * together reach the server in one read. Returns what `send` returns.
   */
  sendTogether<T>(send: () => T): T {
    this.#socket.cork();
    try {
      return send();
    } finally {
      this.#socket.uncork();
    }
  }

  sendCopyDone(): void {
    this.#write(Buffer.from([0x63, 0, 0, 0, 4]));
  }

  /** Resolves once the socket's write buffer is below its high-water mark. Abort-safe. */
  drained(signal: AbortSignal): Promise<void> {
    if (!this.#socket.writableNeedDrain) return Promise.resolve();
    if (this.#inbox.closedError !== null) return Promise.reject(this.#inbox.closedError);
    return new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        this.#socket.off('drain', onDrain);
        this.#socket.off('close', onClose);
        signal.removeEventListener('abort', onAbort);
      };
      const onDrain = (): void => (cleanup(), resolve());
      const onClose = (): void => (cleanup(), reject(this.#inbox.closedError ?? new PgConnectionError('connection closed')));
      const onAbort = (): void => (cleanup(), reject(abortReason(signal)));
      this.#socket.on('drain', onDrain);
      this.#socket.on('close', onClose);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Sends Terminate and closes our side. */
  terminate(): void {
    if (!this.#socket.destroyed) this.#socket.end(Buffer.from([0x58, 0, 0, 0, 4]));
  }

  destroy(error?: Error): void {
    if (error !== undefined) this.#inbox.close(error);
    this.#socket.destroy();
  }

  #onMessage(tag: number, body: Buffer): void {
    if (tag === 0x53) { // S: ParameterStatus
      const name = readCString(body, 0);
      this.parameters.set(name.value, readCString(body, name.next).value);
      return;
    }
    if (tag === 0x4e) return; // N: NoticeResponse; nothing we send produces notices worth acting on
    this.#inbox.push({ tag, body });
  }

  #copyEvent(message: BackendMessage): CopyEvent {
    switch (message.tag) {
      case 0x64: // d
        return { kind: 'data', payload: message.body };
      case 0x63: // c
        return { kind: 'done' };
      case 0x45: // E
        throw new PgServerError(decodeErrorFields(message.body), 'copy stream');
      case 0x43: // C: CommandComplete after the server's CopyDone
      case 0x5a: // Z
        return { kind: 'done' };
      default:
        throw this.#unexpected(message, 'copy data');
    }
  }

  #unexpected(message: BackendMessage, expected: string): PgConnectionError {
    const error = new PgConnectionError(`protocol error: got message '${String.fromCharCode(message.tag)}' while waiting for ${expected}`);
    this.destroy(error);
    return error;
  }

  #write(bytes: Uint8Array): boolean {
    if (this.#socket.destroyed) return false;
    return this.#socket.write(bytes);
  }
}
