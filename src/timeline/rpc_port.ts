/**
 * RpcPort: requests, replies and notifications over one MessagePort (or a Worker), used by both ends of the
 * main ⇄ coordinator link. A MessagePort has no limit of its own, so this one has: at most
 * `requestsInFlightMax` requests awaiting replies; one more is refused at once with CoordinatorBusyError
 * (the caller retries later or fails its own request). A request may carry a deadline; a late reply is
 * dropped. Notifications (no reply) are for facts the receiver merely records (logs, a confirmed LSN).
 *
 * Errors cross as data (`{ ok: false, code, detail }`, STYLE § Errors) and are rebuilt here as the
 * SafekeeperError classes callers branch on. A handler that throws anything else has a bug: the error is
 * rethrown outside the promise chain, which ends the thread (and, on the coordinator, the node).
 * Envelopes are structured-cloned; bigints, SharedArrayBuffers and transferred ArrayBuffers pass as is.
 * Either thread; single-threaded use of each instance.
 */
import type { TransferListItem } from 'node:worker_threads';
import { DiskFullError, InvalidArgumentError, NotFoundError, SafekeeperError, ShutdownError, StorageIoError } from '../errors.js';
import { RemoteObjectCorruptError, RemoteStorageError } from '../remote/remote_storage.js';
import { AssertionError } from '../sync/assert.js';

/** The other end: a `Worker` on the main thread, `parentPort` in the worker. */
export interface MessageEndpoint {
  postMessage(value: unknown, transferList?: readonly TransferListItem[]): void;
  on(event: 'message', listener: (value: unknown) => void): unknown;
}

export type ErrorData = { ok: false; code: string; detail: string; retryable?: boolean };
type Envelope =
  | { type: 'request'; id: number; body: unknown }
  | { type: 'reply'; id: number; reply: { ok: true; value: unknown } | ErrorData }
  | { type: 'notify'; body: unknown };

/** The other thread has too many requests of ours outstanding. */
export class CoordinatorBusyError extends SafekeeperError {
  override readonly name = 'CoordinatorBusyError';
  readonly code = 'SK_COORDINATOR_BUSY';
  readonly sqlState = '53000'; // insufficient_resources
  override readonly httpStatus = 503;
}

/** An operating error from the other thread whose class is not rebuilt here; `code` is the original. */
export class RemoteThreadError extends SafekeeperError {
  override readonly name = 'RemoteThreadError';
  readonly sqlState = 'XX000';
  constructor(readonly code: `SK_${string}`, detail: string) {
    super(detail);
  }
}

export function errorToData(error: unknown): ErrorData {
  if (error instanceof SafekeeperError) {
    return { ok: false, code: error.code, detail: error.message, ...(error instanceof RemoteStorageError ? { retryable: error.retryable } : {}) };
  }
  throw error; // a bug: let it end the thread
}

export function errorFromData(data: ErrorData): SafekeeperError {
  switch (data.code) {
    case 'SK_NOT_FOUND':
      return new NotFoundError(data.detail);
    case 'SK_SHUTDOWN':
      return new ShutdownError(data.detail);
    case 'SK_INVALID_ARGUMENT':
      return new InvalidArgumentError(data.detail);
    case 'SK_COORDINATOR_BUSY':
      return new CoordinatorBusyError(data.detail);
    case 'SK_REMOTE_STORAGE':
      return new RemoteStorageError(data.detail, data.retryable ?? true);
    case 'SK_REMOTE_CORRUPT':
      return new RemoteObjectCorruptError(data.detail);
    // A guard whose un-eviction hit a full or failing disk: the client sees 53100 or 58030, not XX000.
    case 'SK_DISK_FULL':
      return new DiskFullError(data.detail);
    case 'SK_STORAGE_IO':
      return new StorageIoError(data.detail);
    default:
      return new RemoteThreadError(data.code.startsWith('SK_') ? (data.code as `SK_${string}`) : 'SK_INTERNAL', data.detail);
  }
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  timer: NodeJS.Timeout | null;
}

export interface RpcHandlers {
  /** Answers one request; a rejection with a SafekeeperError becomes an error reply. */
  onRequest(body: unknown): Promise<{ value: unknown; transfer?: readonly TransferListItem[] }>;
  onNotify(body: unknown): void;
}

export class RpcPort {
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #closed: SafekeeperError | null = null;

  constructor(
    private readonly endpoint: MessageEndpoint,
    private readonly handlers: RpcHandlers,
    readonly requestsInFlightMax: number,
  ) {
    endpoint.on('message', (value) => this.#onMessage(value as Envelope));
  }

  get requestsInFlight(): number {
    return this.#pending.size;
  }

  /** Sends a request and resolves with the reply's value. `timeoutMs` rejects with `onTimeout()` if set. */
  request<T>(body: unknown, options: { timeoutMs?: number; onTimeout?: () => SafekeeperError; transfer?: readonly TransferListItem[] } = {}): Promise<T> {
    if (this.#closed !== null) return Promise.reject(this.#closed);
    if (this.#pending.size >= this.requestsInFlightMax) {
      return Promise.reject(new CoordinatorBusyError(`too many requests in flight to the other thread (${this.requestsInFlightMax})`));
    }
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(options.onTimeout?.() ?? new ShutdownError(`no reply from the other thread within ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      }
      this.#pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer });
      this.endpoint.postMessage({ type: 'request', id, body } satisfies Envelope, options.transfer);
    });
  }

  notify(body: unknown, transfer?: readonly TransferListItem[]): void {
    if (this.#closed !== null) return;
    this.endpoint.postMessage({ type: 'notify', body } satisfies Envelope, transfer);
  }

  /** Rejects every pending request with `reason`; later requests fail the same way. */
  close(reason: SafekeeperError = new ShutdownError()): void {
    this.#closed = reason;
    for (const pending of this.#pending.values()) {
      if (pending.timer !== null) clearTimeout(pending.timer);
      pending.reject(reason);
    }
    this.#pending.clear();
  }

  #onMessage(envelope: Envelope): void {
    switch (envelope.type) {
      case 'reply': {
        const pending = this.#pending.get(envelope.id);
        if (pending === undefined) return; // timed out meanwhile
        this.#pending.delete(envelope.id);
        if (pending.timer !== null) clearTimeout(pending.timer);
        if (envelope.reply.ok) pending.resolve(envelope.reply.value);
        else pending.reject(errorFromData(envelope.reply));
        return;
      }
      case 'notify':
        this.handlers.onNotify(envelope.body);
        return;
      case 'request':
        void this.handlers.onRequest(envelope.body).then(
          ({ value, transfer }) => this.endpoint.postMessage({ type: 'reply', id: envelope.id, reply: { ok: true, value } } satisfies Envelope, transfer),
          (error: unknown) => {
            if (error instanceof AssertionError || !(error instanceof SafekeeperError)) {
              setImmediate(() => {
                throw error;
              });
              return;
            }
            this.endpoint.postMessage({ type: 'reply', id: envelope.id, reply: errorToData(error) } satisfies Envelope);
          },
        );
        return;
    }
  }
}
