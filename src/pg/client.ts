/**
 * A frontend (client) connection of the PostgreSQL v3 protocol, on node:net: what the proposer uses to talk
 * to a PostgreSQL primary (physical replication) and to safekeepers (START_WAL_PUSH, START_REPLICATION).
 * It speaks startup with any parameters (options, application_name, replication), trust / cleartext / MD5 /
 * SCRAM-SHA-256 authentication, simple queries, and copy-both streams.
 *
 * Design: one incremental framer (`backend_parser.ts`) turns socket chunks into (tag, body) messages that go
 * into one queue with a byte bound: above QUEUE_BYTES_MAX_DEFAULT the socket is paused (TCP backpressure on
 * the server), and it resumes below half of it. ParameterStatus and NoticeResponse are absorbed here; every
 * other message is consumed in order by one reader at a time (`#next`). Writes go straight to the socket;
 * `write*` return what `socket.write` returned and `drained()` waits for 'drain', so a sender can respect
 * the socket's high-water mark. Copy data is sent as header + parts under cork(), so a 45-byte header and a
 * 128 KiB WAL view leave in one writev without being copied together.
 * Errors: a server ErrorResponse becomes PgServerError (its SQLSTATE and fields kept); a refused, reset or
 * timed-out connection becomes PgConnectionError. Bad framing is a ProtocolViolationError, after which the
 * connection is destroyed. Abort-safe: an aborted wait rejects and leaves the connection as it was; the
 * owner decides whether to `destroy()` it. Main thread.
 */
import net from 'node:net';
import { SafekeeperError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { abortReason } from '../sync/cancel.js';
import { BackendMessageParser, decodeDataRow, decodeErrorFields, decodeRowDescription, readCString } from './backend_parser.js';
import { cleartextPasswordBody, md5PasswordBody, SCRAM_SHA_256, ScramClient } from './client_auth.js';

/** A backend message the proposer accepts: XLogData is at most 128 KiB + 25 bytes; query results are small. */
export const CLIENT_FRAME_BYTES_MAX = 8 * 1024 * 1024;
/** Unread bytes held before the socket is paused: a few dozen 128 KiB XLogData messages. */
export const QUEUE_BYTES_MAX_DEFAULT = 8 * 1024 * 1024;
export const CONNECT_TIMEOUT_MS_DEFAULT = 10_000;
const PROTOCOL_VERSION_3 = 196608;

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

export interface PgClientOptions {
  host: string;
  port: number;
  user: string;
  database?: string;
  password?: string;
  applicationName?: string;
  /** The startup `options` parameter, e.g. `-c timeline_id=<tl> tenant_id=<t>`. */
  options?: string;
  /** `true` for a physical replication connection (walsender), `database` for a logical one. */
  replication?: 'true' | 'database';
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

interface Message {
  tag: number;
  body: Buffer;
}

export class PgClient {
  /** ParameterStatus values reported by the server (server_version, ...). */
  readonly parameters = new Map<string, string>();
  readonly closed: Promise<void>;
  readonly #socket: net.Socket;
  readonly #queue: Message[] = [];
  #queueHead = 0;
  #queuedBytes = 0;
  readonly #queueBytesMax: number;
  #paused = false;
  #closedError: Error | null = null;
  #wake: (() => void) | null = null;

  private constructor(socket: net.Socket, queueBytesMax: number) {
    this.#socket = socket;
    this.#queueBytesMax = queueBytesMax;
    const parser = new BackendMessageParser(CLIENT_FRAME_BYTES_MAX);
    socket.on('data', (chunk: Buffer) => {
      try {
        parser.push(chunk, (tag, body) => this.#onMessage(tag, body));
      } catch (error) {
        this.destroy(error as Error);
      }
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('close', () => this.#close(new PgConnectionError('connection closed by the server')));
    socket.on('error', (error) => this.#close(new PgConnectionError(`connection failed: ${error.message}`, { cause: error })));
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
      await client.#startup(options);
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
      const message = await this.#next(signal);
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
    const message = await this.#next(signal);
    if (message.tag === 0x57) return; // W
    if (message.tag === 0x45) {
      const error = new PgServerError(decodeErrorFields(message.body), text.split(/\s/)[0] ?? 'query');
      await this.#next(signal).catch(() => undefined); // ReadyForQuery follows an error before the copy starts
      throw error;
    }
    throw this.#unexpected(message, 'CopyBothResponse');
  }

  /** The next copy event if one is already queued (lets a consumer drain a whole socket read without awaiting). */
  tryNextCopy(): CopyEvent | undefined {
    if (this.#queueHead >= this.#queue.length) {
      if (this.#closedError !== null) throw this.#closedError;
      return undefined;
    }
    return this.#copyEvent(this.#shift());
  }

  /** The next copy event; an ErrorResponse (the server ending the stream) is thrown as PgServerError. */
  async nextCopy(signal: AbortSignal): Promise<CopyEvent> {
    return this.#copyEvent(await this.#next(signal));
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

  sendCopyDone(): void {
    this.#write(Buffer.from([0x63, 0, 0, 0, 4]));
  }

  /** Resolves once the socket's write buffer is below its high-water mark. Abort-safe. */
  drained(signal: AbortSignal): Promise<void> {
    if (!this.#socket.writableNeedDrain) return Promise.resolve();
    if (this.#closedError !== null) return Promise.reject(this.#closedError);
    return new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        this.#socket.off('drain', onDrain);
        this.#socket.off('close', onClose);
        signal.removeEventListener('abort', onAbort);
      };
      const onDrain = (): void => (cleanup(), resolve());
      const onClose = (): void => (cleanup(), reject(this.#closedError ?? new PgConnectionError('connection closed')));
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
    if (error !== undefined) this.#close(error);
    this.#socket.destroy();
  }

  async #startup(options: PgClientOptions): Promise<void> {
    const parameters: [string, string][] = [['user', options.user], ['database', options.database ?? options.user], ['client_encoding', 'UTF8']];
    if (options.applicationName !== undefined) parameters.push(['application_name', options.applicationName]);
    if (options.options !== undefined) parameters.push(['options', options.options]);
    if (options.replication !== undefined) parameters.push(['replication', options.replication]);
    this.#write(startupMessage(parameters));
    const never = new AbortController().signal; // the connect timeout bounds the whole startup
    let scram: ScramClient | null = null;
    for (;;) {
      const message = await this.#next(never);
      switch (String.fromCharCode(message.tag)) {
        case 'R':
          scram = this.#authenticate(message.body, options, scram);
          break;
        case 'K': // BackendKeyData: we never cancel
          break;
        case 'E':
          throw new PgServerError(decodeErrorFields(message.body), 'startup');
        case 'Z':
          return;
        case 'v': // NegotiateProtocolVersion: the server ignores parameters it does not know
          break;
        default:
          throw this.#unexpected(message, 'an authentication message');
      }
    }
  }

  #authenticate(body: Buffer, options: PgClientOptions, scram: ScramClient | null): ScramClient | null {
    const code = body.readInt32BE(0);
    const password = options.password;
    const needPassword = (): string => {
      if (password === undefined) throw new PgConnectionError(`the server asks for a password for user ${JSON.stringify(options.user)} and none was given`);
      return password;
    };
    switch (code) {
      case 0: // AuthenticationOk
        return null;
      case 3: // cleartext
        this.#write(typedMessage(0x70, cleartextPasswordBody(needPassword())));
        return null;
      case 5: // MD5 with a 4-byte salt
        this.#write(typedMessage(0x70, md5PasswordBody(options.user, needPassword(), body.subarray(4, 8))));
        return null;
      case 10: { // SASL: a list of mechanisms
        const mechanisms = body.toString('utf8', 4).split('\0').filter((name) => name !== '');
        if (!mechanisms.includes(SCRAM_SHA_256)) throw new PgConnectionError(`no supported SASL mechanism among ${mechanisms.join(', ')}`);
        const client = new ScramClient(needPassword());
        this.#write(typedMessage(0x70, client.firstMessage()));
        return client;
      }
      case 11: // SASLContinue: server-first-message
        if (scram === null) throw new PgConnectionError('SASLContinue without a SASL exchange');
        this.#write(typedMessage(0x70, scram.finalMessage(body.toString('utf8', 4))));
        return scram;
      case 12: // SASLFinal: server-final-message
        if (scram === null) throw new PgConnectionError('SASLFinal without a SASL exchange');
        scram.verify(body.toString('utf8', 4));
        return null;
      default:
        throw new PgConnectionError(`unsupported authentication method ${code} (trust, password, md5 and scram-sha-256 are supported)`);
    }
  }

  #onMessage(tag: number, body: Buffer): void {
    if (tag === 0x53) { // S: ParameterStatus
      const name = readCString(body, 0);
      this.parameters.set(name.value, readCString(body, name.next).value);
      return;
    }
    if (tag === 0x4e) return; // N: NoticeResponse; nothing we send produces notices worth acting on
    this.#queue.push({ tag, body });
    this.#queuedBytes += body.length;
    if (!this.#paused && this.#queuedBytes > this.#queueBytesMax) {
      this.#paused = true;
      this.#socket.pause();
    }
    this.#wakeReader();
  }

  #shift(): Message {
    const message = this.#queue[this.#queueHead];
    assert(message !== undefined, 'shift from an empty queue');
    this.#queue[this.#queueHead] = undefined as unknown as Message; // release the body
    this.#queueHead += 1;
    if (this.#queueHead === this.#queue.length) {
      this.#queue.length = 0;
      this.#queueHead = 0;
    } else if (this.#queueHead >= 1024) {
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

  async #next(signal: AbortSignal): Promise<Message> {
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

  #copyEvent(message: Message): CopyEvent {
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

  #unexpected(message: Message, expected: string): PgConnectionError {
    const error = new PgConnectionError(`protocol error: got message '${String.fromCharCode(message.tag)}' while waiting for ${expected}`);
    this.destroy(error);
    return error;
  }

  #write(bytes: Uint8Array): boolean {
    if (this.#socket.destroyed) return false;
    return this.#socket.write(bytes);
  }

  #close(error: Error): void {
    this.#closedError ??= error;
    this.#wakeReader();
  }

  #wakeReader(): void {
    this.#wake?.();
  }
}

function typedMessage(tag: number, body: Uint8Array): Buffer {
  const message = Buffer.allocUnsafe(5 + body.byteLength);
  message[0] = tag;
  message.writeInt32BE(4 + body.byteLength, 1);
  message.set(body, 5);
  return message;
}

function queryMessage(text: string): Buffer {
  return typedMessage(0x51, Buffer.from(`${text}\0`, 'utf8'));
}

function startupMessage(parameters: readonly [string, string][]): Buffer {
  const body = Buffer.from(`${parameters.map(([name, value]) => `${name}\0${value}\0`).join('')}\0`, 'utf8');
  const message = Buffer.allocUnsafe(8 + body.length);
  message.writeInt32BE(8 + body.length, 0);
  message.writeInt32BE(PROTOCOL_VERSION_3, 4);
  message.set(body, 8);
  return message;
}
