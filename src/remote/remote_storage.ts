/**
 * Remote storage: one interface over object stores (DESIGN § Remote storage). A `RemoteBackend` does raw
 * requests (local_fs.ts, s3.ts); `RemoteStorage` wraps one and adds what every caller needs:
 * - digests: every put stores xxhash64 digests in the object's metadata (digest.ts), and every get checks
 *   the bytes it returns against them (a ranged get is widened to whole digest blocks first);
 * - bounded concurrency: at most `requestsMax` requests in flight (a Semaphore; callers queue);
 * - per-request timeouts: each attempt gets its own AbortSignal that fires after `requestTimeoutMs`;
 * - retries with exponential backoff and full jitter for transient failures (network errors, 5xx, 429,
 *   timeouts, and digest mismatches, which a re-download may fix), up to `attemptsMax` attempts.
 * Callers that must eventually succeed (WAL backup) retry again at their own, slower pace.
 *
 * Object layout (storage reference §6): `[prefix/]<tenant_id>/<timeline_id>/<object name>`; the prefix
 * belongs to the backend, keys here start at the tenant id (`timelineKeyPrefix`, `objectKey`).
 * Errors: NotFoundError for a missing object, RemoteStorageError (`retryable` says whether trying later
 * may help), RemoteObjectCorruptError when the bytes do not match the stored digest or are not the bytes
 * asked for (a reply of the wrong length or offset; retried like a mismatch). Abort: every call
 * takes a signal and rejects with its reason; a put that was aborted may or may not have happened.
 * Coordinator thread (tests use it anywhere).
 */
import type { TenantId, TimelineId } from '../acceptor/state.js';
import { NotFoundError, SafekeeperError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { abortReason, sleep } from '../sync/cancel.js';
import { Semaphore } from '../sync/semaphore.js';
import { DIGEST_BLOCK_BYTES_MIN, blockAlignedRange, digestBlockBytes, digestMetadata, verifyAgainstDigest } from './digest.js';

/** A remote storage request failed. `retryable`: a later attempt may succeed (network, 5xx, timeout). */
export class RemoteStorageError extends SafekeeperError {
  override readonly name = 'RemoteStorageError';
  readonly code = 'SK_REMOTE_STORAGE';
  readonly sqlState = '58030'; // io_error
  override readonly httpStatus = 503;
  constructor(message: string, readonly retryable: boolean, options?: ErrorOptions) {
    super(message, options);
  }
}

/** Downloaded bytes do not match the digest stored with the object, or are not the range asked for. */
export class RemoteObjectCorruptError extends SafekeeperError {
  override readonly name = 'RemoteObjectCorruptError';
  readonly code = 'SK_REMOTE_CORRUPT';
  readonly sqlState = 'XX001'; // data_corrupted
}

export interface RemoteObjectInfo {
  /** Key relative to the storage root (no backend prefix). */
  key: string;
  sizeBytes: number;
}

export interface RemoteObjectHead extends RemoteObjectInfo {
  metadata: Record<string, string>;
}

/** Byte range [startBytes, endBytes). endBytes past the object end reads up to the end. */
export interface ByteRange {
  startBytes: number;
  endBytes: number;
}

/** Raw requests against one store. No retries, no digests; errors as documented in the header. */
export interface RemoteBackend {
  readonly kind: 'file' | 's3';
  /** Human-readable location, for logs (no credentials). */
  readonly description: string;
  put(key: string, body: Uint8Array, metadata: Record<string, string>, signal: AbortSignal): Promise<void>;
  /**
   * `range` null = the whole object; a range holds at least one byte, and the body returned starts at its
   * start. Throws NotFoundError when the object does not exist.
   */
  get(key: string, range: ByteRange | null, signal: AbortSignal): Promise<{ body: Uint8Array; sizeBytes: number; metadata: Record<string, string> }>;
  head(key: string, signal: AbortSignal): Promise<RemoteObjectHead | null>;
  /** Every object whose key starts with `prefix`, sorted by key. */
  list(prefix: string, signal: AbortSignal): Promise<RemoteObjectInfo[]>;
  /** Deletes the objects that exist; missing keys are not an error. */
  delete(keys: readonly string[], signal: AbortSignal): Promise<void>;
  /** Server-side copy, metadata included. */
  copy(fromKey: string, toKey: string, signal: AbortSignal): Promise<void>;
  close(): Promise<void>;
}

export interface RemotePolicy {
  /** Requests in flight at once, over all callers. */
  requestsMax: number;
  /** One attempt's deadline; a hung request is aborted and retried. */
  requestTimeoutMs: number;
  /** Attempts per call, the first included. */
  attemptsMax: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
}

/** 16 requests keep S3 busy for a handful of timelines' uploads without flooding a small endpoint. */
export const REMOTE_REQUESTS_MAX_DEFAULT = 16;
export const REMOTE_POLICY_DEFAULT: Readonly<RemotePolicy> = Object.freeze({
  requestsMax: REMOTE_REQUESTS_MAX_DEFAULT,
  requestTimeoutMs: 60_000, // a 16 MiB segment at 1 MiB/s still fits
  attemptsMax: 4,
  backoffBaseMs: 100,
  backoffMaxMs: 5_000,
});

export type RemoteOperation = 'put' | 'get' | 'head' | 'list' | 'delete' | 'copy';
export type RemoteOutcome = 'ok' | 'retry' | 'error';

/** Told about every attempt (for metrics). Must not throw. */
export type RemoteObserver = (operation: RemoteOperation, outcome: RemoteOutcome, durationMs: number, bytes: number) => void;

const KEY_PATTERN = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/;

/** A key is relative, slash-separated, without empty, `.` or `..` parts: it stays inside the root. */
export function isValidKey(key: string): boolean {
  return KEY_PATTERN.test(key) && !key.split('/').some((part) => part === '.' || part === '..');
}

/** `<tenant_id>/<timeline_id>/`: the prefix of every object of one timeline. */
export const timelineKeyPrefix = (tenantId: TenantId, timelineId: TimelineId): string => `${tenantId}/${timelineId}/`;

/** `<tenant_id>/<timeline_id>/<name>`. */
export const objectKey = (tenantId: TenantId, timelineId: TimelineId, name: string): string => `${timelineKeyPrefix(tenantId, timelineId)}${name}`;

/** Full jitter: a uniform delay in [0, min(max, base × 2^(attempt−1))]. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceilingMs = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.floor(random() * ceilingMs);
}

/** Whether trying again may help: transient remote failures and digest mismatches. */
export function isRetryable(error: unknown): boolean {
  return (error instanceof RemoteStorageError && error.retryable) || error instanceof RemoteObjectCorruptError;
}

export class RemoteStorage {
  readonly #permits: Semaphore;

  constructor(
    readonly backend: RemoteBackend,
    readonly policy: Readonly<RemotePolicy> = REMOTE_POLICY_DEFAULT,
    private readonly observer: RemoteObserver = () => {},
  ) {
    assert(policy.attemptsMax >= 1, 'at least one attempt');
    assert(policy.requestTimeoutMs > 0, 'positive request timeout');
    this.#permits = new Semaphore(policy.requestsMax);
  }

  /** Requests running now. */
  get requestsInFlight(): number {
    return this.#permits.inUse;
  }

  /** Requests queued for a permit. */
  get requestsWaiting(): number {
    return this.#permits.waiting;
  }

  /** Stores `body` under `key` with its digests (and `metadata`, lower-case names). Overwrites. */
  async put(key: string, body: Uint8Array, signal: AbortSignal, metadata: Record<string, string> = {}): Promise<void> {
    assert(isValidKey(key), 'remote key is relative and clean');
    const all = { ...metadata, ...digestMetadata(body) };
    await this.#withRetries('put', key, signal, body.length, (attemptSignal) => this.backend.put(key, body, all, attemptSignal));
  }

  /**
   * The object's bytes, or `lengthBytes` of them from `offsetBytes` (fewer at the object end), checked
   * against the stored digests. NotFoundError when it does not exist. A range of zero bytes is empty
   * without a request (an HTTP range cannot be empty: S3 ignores `bytes=N-(N-1)` and sends the whole
   * object), so it does not tell whether the object exists.
   */
  async get(key: string, signal: AbortSignal, range?: { offsetBytes: number; lengthBytes: number }): Promise<Uint8Array> {
    assert(isValidKey(key), 'remote key is relative and clean');
    assert(range === undefined || (range.offsetBytes >= 0 && range.lengthBytes >= 0), 'range is non-negative');
    if (range !== undefined && range.lengthBytes === 0) {
      signal.throwIfAborted();
      return new Uint8Array(0);
    }
    return this.#withRetries('get', key, signal, 0, async (attemptSignal) => {
      if (range === undefined) {
        const got = await this.backend.get(key, null, attemptSignal);
        this.#verify(key, got, 0, got.sizeBytes);
        return got.body;
      }
      const wantedEnd = range.offsetBytes + range.lengthBytes;
      // Objects up to 64 MiB have 1 MiB digest blocks; a larger one is re-read with its own block size.
      let aligned: ByteRange = alignDown(range.offsetBytes, wantedEnd, DIGEST_BLOCK_BYTES_MIN);
      let got = await this.backend.get(key, aligned, attemptSignal);
      if (digestBlockBytes(got.sizeBytes) !== DIGEST_BLOCK_BYTES_MIN) {
        aligned = blockAlignedRange(Math.min(range.offsetBytes, got.sizeBytes), Math.min(wantedEnd, got.sizeBytes), got.sizeBytes);
        if (aligned.endBytes === aligned.startBytes) return new Uint8Array(0); // at the object end: no HTTP range is empty
        got = await this.backend.get(key, aligned, attemptSignal);
      }
      this.#verify(key, got, aligned.startBytes, Math.min(aligned.endBytes, got.sizeBytes));
      const from = Math.min(range.offsetBytes, got.sizeBytes) - aligned.startBytes;
      const to = Math.min(wantedEnd, got.sizeBytes) - aligned.startBytes;
      return got.body.subarray(Math.max(0, from), Math.max(0, to));
    });
  }

  async head(key: string, signal: AbortSignal): Promise<RemoteObjectHead | null> {
    assert(isValidKey(key), 'remote key is relative and clean');
    return this.#withRetries('head', key, signal, 0, (attemptSignal) => this.backend.head(key, attemptSignal));
  }

  async list(prefix: string, signal: AbortSignal): Promise<RemoteObjectInfo[]> {
    assert(prefix === '' || isValidKey(prefix.replace(/\/$/, '')), 'remote prefix is relative and clean');
    return this.#withRetries('list', prefix, signal, 0, (attemptSignal) => this.backend.list(prefix, attemptSignal));
  }

  async delete(keys: readonly string[], signal: AbortSignal): Promise<void> {
    if (keys.length === 0) return;
    for (const key of keys) assert(isValidKey(key), 'remote key is relative and clean');
    await this.#withRetries('delete', keys[0] ?? '', signal, 0, (attemptSignal) => this.backend.delete(keys, attemptSignal));
  }

  async copy(fromKey: string, toKey: string, signal: AbortSignal): Promise<void> {
    assert(isValidKey(fromKey) && isValidKey(toKey), 'remote keys are relative and clean');
    await this.#withRetries('copy', fromKey, signal, 0, (attemptSignal) => this.backend.copy(fromKey, toKey, attemptSignal));
  }

  async close(): Promise<void> {
    await this.backend.close();
  }

  /**
   * Checks that `got.body` is the object's bytes [startBytes, endBytes) and matches the stored digests. The
   * length is checked here: a body cut short at a digest block boundary verifies block by block, and would
   * otherwise come back as fewer bytes than asked for (or, whole, skip the whole-object digest).
   */
  #verify(key: string, got: { body: Uint8Array; sizeBytes: number; metadata: Readonly<Record<string, string>> }, startBytes: number, endBytes: number): void {
    const problem =
      got.body.length !== endBytes - startBytes
        ? `${got.body.length} bytes came back for [${startBytes}, ${endBytes}) of an object of ${got.sizeBytes} bytes`
        : verifyAgainstDigest(got.metadata, got.sizeBytes, startBytes, got.body);
    if (problem !== null) throw new RemoteObjectCorruptError(`remote object ${key}: ${problem}`);
  }

  async #withRetries<T>(operation: RemoteOperation, key: string, signal: AbortSignal, bytes: number, work: (attemptSignal: AbortSignal) => Promise<T>): Promise<T> {
    const { attemptsMax, backoffBaseMs, backoffMaxMs } = this.policy;
    for (let attempt = 1; ; attempt++) {
      const release = await this.#permits.acquire(signal);
      const startedMs = performance.now();
      let failure: unknown;
      try {
        const result = await this.#attempt(operation, key, signal, work);
        this.observer(operation, 'ok', performance.now() - startedMs, bytes + (result instanceof Uint8Array ? result.length : 0));
        return result;
      } catch (error) {
        failure = error;
      } finally {
        release();
      }
      if (signal.aborted) throw abortReason(signal);
      const last = attempt >= attemptsMax || !isRetryable(failure);
      this.observer(operation, last ? 'error' : 'retry', performance.now() - startedMs, 0);
      if (last) throw failure;
      await sleep(backoffMs(attempt, backoffBaseMs, backoffMaxMs), signal, true);
    }
  }

  /** One attempt under its own deadline. A timeout becomes a retryable RemoteStorageError. */
  async #attempt<T>(operation: RemoteOperation, key: string, signal: AbortSignal, work: (attemptSignal: AbortSignal) => Promise<T>): Promise<T> {
    const controller = new AbortController();
    const timeoutMs = this.policy.requestTimeoutMs;
    const timedOut = new RemoteStorageError(`remote ${operation} ${key} timed out after ${timeoutMs} ms`, true);
    const timer = setTimeout(() => controller.abort(timedOut), timeoutMs);
    const onAbort = (): void => controller.abort(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      return await work(controller.signal);
    } catch (error) {
      if (controller.signal.aborted && controller.signal.reason === timedOut) throw timedOut;
      throw error;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    }
  }
}

function alignDown(startBytes: number, endBytes: number, blockBytes: number): ByteRange {
  return { startBytes: Math.floor(startBytes / blockBytes) * blockBytes, endBytes: Math.ceil(endBytes / blockBytes) * blockBytes };
}

/** A NotFoundError for a missing object, the same from every backend. */
export const remoteNotFound = (key: string, options?: ErrorOptions): NotFoundError => new NotFoundError(`remote object ${key} not found`, options);
