/**
 * A small libpq-style client for tests, built on net + pg-protocol (serialize for frontend messages, its
 * Parser for backend messages). It speaks exactly what tests need: startup with options, simple queries
 * returning rows or a DatabaseError, and copy-both streams (send CopyData, receive CopyData in order).
 * `RawPgSocket` is the lower level: raw bytes in, raw bytes or typed messages out, for protocol abuse tests.
 * Every wait has a timeout so a broken server fails the test instead of hanging it.
 */
import net from 'node:net';
import { DatabaseError, serialize } from 'pg-protocol';
import type { BackendMessage, CommandCompleteMessage, CopyDataMessage, DataRowMessage, ParameterStatusMessage, RowDescriptionMessage } from 'pg-protocol/dist/messages.js';
import { Parser } from 'pg-protocol/dist/parser.js';

export { DatabaseError };

const WAIT_MS_DEFAULT = 10_000;

export interface PgClientOptions {
  port: number;
  host?: string;
  user?: string;
  database?: string;
  /** The startup `options` parameter, e.g. `-c timeline_id=<tl> tenant_id=<t>`. */
  options?: string;
  applicationName?: string;
  /** Extra startup parameters. */
  parameters?: Record<string, string>;
  /** Sent when the server asks for a cleartext password (Neon: the JWT). */
  password?: string;
  /** Send SSLRequest first and expect 'N'. */
  requestSsl?: boolean;
  waitMs?: number;
}

export interface QueryResult {
  fields: string[];
  rows: (string | null)[][];
  commandTag: string;
}

/** A queue of parsed backend messages with one waiter at a time. */
class MessageQueue {
  readonly #items: BackendMessage[] = [];
  #waiter: (() => void) | null = null;
  #closedError: Error | null = null;

  push(message: BackendMessage): void {
    this.#items.push(message);
    this.#wake();
  }

  close(error: Error): void {
    this.#closedError ??= error;
    this.#wake();
  }

  get closed(): boolean {
    return this.#closedError !== null;
  }

  async next(waitMs: number): Promise<BackendMessage> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) return item;
      if (this.#closedError !== null) throw this.#closedError;
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0) throw new Error(`no backend message within ${waitMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remainingMs);
        this.#waiter = () => (clearTimeout(timer), resolve());
      });
      this.#waiter = null;
    }
  }

  #wake(): void {
    this.#waiter?.();
  }
}

export class PgTestClient {
  readonly parameters = new Map<string, string>();
  readonly socket: net.Socket;
  readonly closed: Promise<void>;
  readonly #queue = new MessageQueue();
  readonly #waitMs: number;

  private constructor(socket: net.Socket, waitMs: number) {
    this.socket = socket;
    this.#waitMs = waitMs;
    const parser = new Parser();
    socket.on('data', (chunk: Buffer) =>
      parser.parse(chunk, (message) => {
        // pg-protocol hands out CopyData as a view of a buffer it reuses: keep a copy.
        if (message.name === 'copyData') (message as unknown as { chunk: Buffer }).chunk = Buffer.from((message as CopyDataMessage).chunk);
        this.#queue.push(message);
      }),
    );
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('close', () => this.#queue.close(new Error('connection closed by the server')));
    socket.on('error', (error) => this.#queue.close(error));
  }

  static async connect(options: PgClientOptions): Promise<PgTestClient> {
    const socket = await openSocket(options.port, options.host ?? '127.0.0.1');
    const waitMs = options.waitMs ?? WAIT_MS_DEFAULT;
    if (options.requestSsl === true) {
      socket.write(serialize.requestSsl());
      const answer = await readBytes(socket, 1, waitMs);
      if (answer.toString('latin1') !== 'N') throw new Error(`unexpected SSL answer ${answer.toString('latin1')}`);
    }
    const client = new PgTestClient(socket, waitMs);
    const parameters: Record<string, string> = { user: options.user ?? 'test', database: options.database ?? 'test', ...options.parameters };
    if (options.options !== undefined) parameters['options'] = options.options;
    if (options.applicationName !== undefined) parameters['application_name'] = options.applicationName;
    socket.write(serialize.startup(parameters));
    for (;;) {
      const message = await client.next();
      if (message.name === 'authenticationCleartextPassword') socket.write(serialize.password(options.password ?? ''));
      else if (message.name === 'parameterStatus') {
        const status = message as ParameterStatusMessage;
        client.parameters.set(status.parameterName, status.parameterValue);
      } else if (message.name === 'error') {
        socket.destroy();
        throw message;
      } else if (message.name === 'readyForQuery') return client;
    }
  }

  /** The next backend message (any kind). */
  next(waitMs = this.#waitMs): Promise<BackendMessage> {
    return this.#queue.next(waitMs);
  }

  /** Runs one simple query; an ErrorResponse is thrown as DatabaseError once ReadyForQuery has arrived. */
  async simpleQuery(text: string): Promise<QueryResult> {
    this.socket.write(serialize.query(text));
    const result: QueryResult = { fields: [], rows: [], commandTag: '' };
    let failure: DatabaseError | null = null;
    for (;;) {
      const message = await this.next();
      switch (message.name) {
        case 'rowDescription':
          result.fields = (message as RowDescriptionMessage).fields.map((field) => field.name);
          break;
        case 'dataRow':
          result.rows.push((message as DataRowMessage).fields as (string | null)[]);
          break;
        case 'commandComplete':
          result.commandTag = (message as CommandCompleteMessage).text;
          break;
        case 'error':
          failure = message as DatabaseError;
          break;
        case 'readyForQuery':
          if (failure !== null) throw failure;
          return result;
        default:
          break;
      }
    }
  }

  /** Sends `text` (e.g. START_WAL_PUSH) and waits for CopyBothResponse; an ErrorResponse is thrown. */
  async startCopyBoth(text: string): Promise<void> {
    this.socket.write(serialize.query(text));
    const message = await this.next();
    if (message.name === 'replicationStart') return;
    if (message.name === 'error') throw message;
    throw new Error(`expected CopyBothResponse, got ${message.name}`);
  }

  sendCopyData(payload: Uint8Array): boolean {
    return this.socket.write(serialize.copyData(Buffer.from(payload.buffer, payload.byteOffset, payload.length)));
  }

  sendCopyDone(): void {
    this.socket.write(serialize.copyDone());
  }

  sendCopyFail(message: string): void {
    this.socket.write(serialize.copyFail(message));
  }

  /** The next CopyData payload; throws the DatabaseError if the server ends the stream with one. */
  async nextCopyData(waitMs = this.#waitMs): Promise<Buffer> {
    const message = await this.next(waitMs);
    if (message.name === 'copyData') return (message as CopyDataMessage).chunk;
    if (message.name === 'error') throw message;
    throw new Error(`expected CopyData, got ${message.name}`);
  }

  /** CopyData payloads until the server's CopyDone or close; an ErrorResponse is thrown (00000 included). */
  async *copyData(): AsyncIterableIterator<Buffer> {
    for (;;) {
      let message: BackendMessage;
      try {
        message = await this.next();
      } catch (error) {
        if (this.#queue.closed) return;
        throw error;
      }
      if (message.name === 'copyData') yield (message as CopyDataMessage).chunk;
      else if (message.name === 'copyDone') return;
      else if (message.name === 'error') throw message;
    }
  }

  /** Sends Terminate and waits for the server to close. */
  async terminate(): Promise<void> {
    if (!this.socket.destroyed) this.socket.end(serialize.end());
    await this.closed;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

function openSocket(port: number, host: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host, noDelay: true });
    socket.once('connect', () => (socket.off('error', reject), resolve(socket)));
    socket.once('error', reject);
  });
}

/** Reads exactly `count` bytes that arrive before any other listener sees them. */
function readBytes(socket: net.Socket, count: number, waitMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (cleanup(), reject(new Error(`no ${count}-byte answer within ${waitMs} ms`))), waitMs);
    let received = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      received = Buffer.concat([received, chunk]);
      if (received.length < count) return;
      cleanup();
      if (received.length > count) socket.unshift(received.subarray(count));
      resolve(received.subarray(0, count));
    };
    const onClose = (): void => (cleanup(), reject(new Error('closed before the answer')));
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

/** Raw bytes to and from a server, for tests that break the protocol on purpose. */
export class RawPgSocket {
  readonly #chunks: Buffer[] = [];
  #ended = false;
  #wake: (() => void) | null = null;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => (this.#chunks.push(chunk), this.#wake?.()));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('close', () => ((this.#ended = true), this.#wake?.()));
    socket.on('error', () => undefined); // a reset after the server closed is expected in these tests
  }

  static async connect(port: number, host = '127.0.0.1'): Promise<RawPgSocket> {
    return new RawPgSocket(await openSocket(port, host));
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Exactly `count` bytes; rejects if the connection closes first. */
  async read(count: number, waitMs = WAIT_MS_DEFAULT): Promise<Buffer> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const buffered = Buffer.concat(this.#chunks);
      if (buffered.length >= count) {
        this.#chunks.length = 0;
        if (buffered.length > count) this.#chunks.push(buffered.subarray(count));
        return buffered.subarray(0, count);
      }
      if (this.#ended) throw new Error(`closed after ${buffered.length} of ${count} bytes`);
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0) throw new Error(`no ${count} bytes within ${waitMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remainingMs);
        this.#wake = () => (clearTimeout(timer), resolve());
      });
      this.#wake = null;
    }
  }

  /** One typed backend message: its tag letter and body. */
  async readMessage(waitMs = WAIT_MS_DEFAULT): Promise<{ tag: string; body: Buffer }> {
    const header = await this.read(5, waitMs);
    const body = await this.read(header.readInt32BE(1) - 4, waitMs);
    return { tag: String.fromCharCode(header[0] as number), body };
  }

  /** Messages until ReadyForQuery (included). */
  async readUntilReady(waitMs = WAIT_MS_DEFAULT): Promise<{ tag: string; body: Buffer }[]> {
    const messages: { tag: string; body: Buffer }[] = [];
    for (;;) {
      const message = await this.readMessage(waitMs);
      messages.push(message);
      if (message.tag === 'Z') return messages;
    }
  }

  /** Resolves when the server has closed the connection; rejects if it is still open after `waitMs`. */
  async expectClosed(waitMs = WAIT_MS_DEFAULT): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`still open after ${waitMs} ms`)), waitMs);
    });
    try {
      await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** The fields of an ErrorResponse body, keyed by field letter (S, V, C, M, D). */
export function errorResponseFields(body: Buffer): Record<string, string> {
  const fields: Record<string, string> = {};
  let offset = 0;
  while (offset < body.length && body[offset] !== 0) {
    const end = body.indexOf(0, offset + 1);
    fields[String.fromCharCode(body[offset] as number)] = body.toString('utf8', offset + 1, end);
    offset = end + 1;
  }
  return fields;
}
