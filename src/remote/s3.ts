/**
 * The S3 remote storage backend (`s3://bucket/prefix?endpoint=URL&region=R`), on @aws-sdk/client-s3.
 * Path-style addressing (`forcePathStyle`), so any S3-compatible endpoint works (s3rver, MinIO, Swift).
 * The SDK's own retries are off (`maxAttempts: 1`): `RemoteStorage` retries with its own backoff and
 * deadlines, and each request gets the attempt's AbortSignal. Checksums are computed only when S3 requires
 * them (`WHEN_REQUIRED`): we carry our own xxhash64 digests, and s3rver would store aws-chunked framing.
 * Bodies are Uint8Arrays (segments are at most 1 GiB; WAL backup reads a whole segment anyway).
 *
 * Ranged gets: S3 answers a satisfiable range with 206 and `Content-Range: bytes START-END/SIZE`, which is
 * checked against what was asked (start, end, body length) before the body is returned as starting at the
 * requested offset. A server or proxy that ignores `Range` answers 200 with the whole object; the range is
 * then cut out of it, which is bounded: the whole object is read only when its Content-Length is at most
 * `OBJECT_BYTES_MAX`.
 *
 * Errors: 404 NoSuchBucket → RemoteStorageError naming the bucket, not retryable (a wrong or deleted bucket
 * must not look like missing objects; a HEAD reply has no body, so `head` cannot tell and returns null);
 * any other 404 → NotFoundError; 5xx, 408, 429, `400 RequestTimeout` (the SDK classes it as transient),
 * network errors and aborted requests (a per-attempt timeout) → retryable RemoteStorageError; other 4xx
 * (auth, bad request) → not retryable. Credentials come from the SDK's default chain
 * (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, instance roles) unless given. Coordinator thread.
 */
import { createHash } from 'node:crypto';
import {
  CopyObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type GetObjectCommandOutput,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { NotFoundError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { SEGMENT_SIZE_BYTES_MAX } from '../wal/lsn.js';
import { RemoteStorageError, remoteNotFound, type ByteRange, type RemoteBackend, type RemoteObjectHead, type RemoteObjectInfo } from './remote_storage.js';

export interface S3BackendOptions {
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing slashes; "" for none. */
  prefix: string;
  endpoint: string | null;
  region: string | null;
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** DeleteObjects takes at most this many keys per request (an S3 limit). */
const DELETE_KEYS_PER_REQUEST_MAX = 1000;
const REGION_DEFAULT = 'us-east-1';
/**
 * The largest object a 200 reply to a ranged get may carry whole: WAL objects are at most a segment, and a
 * segment is at most 1 GiB. A larger one is not ours to read into memory for a few blocks.
 */
export const OBJECT_BYTES_MAX = SEGMENT_SIZE_BYTES_MAX;
/** Error codes S3 sends with a 400 that the SDK's own retry strategy classes as transient. */
const TRANSIENT_ERROR_NAMES: ReadonlySet<string> = new Set(['RequestTimeout', 'RequestTimeoutException']);
const CONTENT_RANGE_PATTERN = /^bytes (\d+)-(\d+)\/(\d+)$/;

interface SdkError {
  name?: string;
  code?: unknown;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

/** An error from the SDK or the network, as opposed to a bug (a TypeError in our own call). */
function isTransportOrServiceError(error: SdkError): boolean {
  if (error.$metadata?.httpStatusCode !== undefined || typeof error.code === 'string') return true;
  return /abort|timeout|network|socket|ECONN|EPIPE/i.test(`${error.name ?? ''} ${error.message ?? ''}`);
}

function s3Failure(operation: string, key: string, bucket: string, error: unknown): Error {
  if (error instanceof RemoteStorageError || error instanceof NotFoundError) return error;
  const sdk = (error ?? {}) as SdkError;
  if (!(error instanceof Error) || !isTransportOrServiceError(sdk)) return error instanceof Error ? error : new Error(String(error));
  const status = sdk.$metadata?.httpStatusCode;
  if (sdk.name === 'NoSuchBucket') return new RemoteStorageError(`S3 ${operation} ${key}: bucket ${JSON.stringify(bucket)} does not exist (check remote_storage)`, false, { cause: error });
  if (status === 404 || sdk.name === 'NoSuchKey' || sdk.name === 'NotFound') return remoteNotFound(key, { cause: error });
  // No status: the request never got an answer (reset, refused, aborted by our deadline): try again.
  const retryable = status === undefined || status >= 500 || status === 408 || status === 429 || TRANSIENT_ERROR_NAMES.has(sdk.name ?? '');
  const what = status === undefined ? (sdk.name ?? 'network error') : `HTTP ${status} ${sdk.name ?? ''}`.trim();
  return new RemoteStorageError(`S3 ${operation} ${key}: ${what}: ${sdk.message ?? ''}`.trim(), retryable, { cause: error });
}

async function readBody(response: GetObjectCommandOutput): Promise<Uint8Array> {
  return response.Body === undefined ? new Uint8Array(0) : response.Body.transformToByteArray();
}

/** Drops a reply body without reading it (its socket is closed rather than drained). */
function discardBody(response: GetObjectCommandOutput): void {
  (response.Body as { destroy?: () => void } | undefined)?.destroy?.();
}

/**
 * The object size from a 206 reply's Content-Range, after checking that the reply is the range asked for
 * (clipped at the object end) and that the body is as long as the header says. A reply that is not is
 * retryable: another attempt may get the right bytes.
 */
function checkedContentRange(key: string, range: ByteRange, contentRange: string | undefined, bodyBytes: number): number {
  const match = CONTENT_RANGE_PATTERN.exec(contentRange ?? '');
  const [startBytes, lastBytes, sizeBytes] = match === null ? [NaN, NaN, NaN] : [Number(match[1]), Number(match[2]), Number(match[3])];
  const asked = `bytes ${range.startBytes}-${range.endBytes - 1}`;
  if (match === null || startBytes !== range.startBytes || lastBytes !== Math.min(range.endBytes, sizeBytes) - 1) {
    throw new RemoteStorageError(`S3 get ${key}: asked for ${asked}, the reply's Content-Range is ${JSON.stringify(contentRange ?? null)}`, true);
  }
  if (bodyBytes !== lastBytes - startBytes + 1) throw new RemoteStorageError(`S3 get ${key}: Content-Range ${contentRange ?? ''} but the body has ${bodyBytes} bytes`, true);
  return sizeBytes;
}

export class S3Backend implements RemoteBackend {
  readonly kind = 's3' as const;
  readonly description: string;
  readonly #client: S3Client;

  constructor(private readonly options: S3BackendOptions) {
    const config: S3ClientConfig = {
      region: options.region ?? REGION_DEFAULT,
      forcePathStyle: true,
      maxAttempts: 1,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    };
    if (options.endpoint !== null) config.endpoint = options.endpoint;
    if (options.credentials !== undefined) config.credentials = { ...options.credentials }; // the SDK annotates it: never pass a frozen object
    this.#client = new S3Client(config);
    // S3-compatible stores that require Content-MD5 on DeleteObjects (MinIO and Ceph versions) refuse this SDK's
    // request, which carries a CRC32 checksum instead (aws/aws-sdk-js-v3#6920): partial-backup cleanup and
    // timeline deletes would fail there forever. So it carries both.
    this.#client.middlewareStack.add(
      (next, context) => async (args) => {
        const request = args.request as { headers?: Record<string, string>; body?: unknown };
        if (context.commandName === 'DeleteObjectsCommand' && request.headers !== undefined && (typeof request.body === 'string' || request.body instanceof Uint8Array)) {
          request.headers['content-md5'] = createHash('md5').update(request.body).digest('base64');
        }
        return next(args);
      },
      { step: 'build', name: 'deleteObjectsContentMd5' },
    );
    this.description = `s3://${options.bucket}/${options.prefix}${options.endpoint !== null ? ` at ${options.endpoint}` : ''}`;
  }

  #fullKey(key: string): string {
    return this.options.prefix === '' ? key : `${this.options.prefix}/${key}`;
  }

  #relativeKey(fullKey: string): string {
    return this.options.prefix === '' ? fullKey : fullKey.slice(this.options.prefix.length + 1);
  }

  async put(key: string, body: Uint8Array, metadata: Record<string, string>, signal: AbortSignal): Promise<void> {
    try {
      await this.#client.send(
        new PutObjectCommand({ Bucket: this.options.bucket, Key: this.#fullKey(key), Body: body, ContentLength: body.length, Metadata: metadata }),
        { abortSignal: signal },
      );
    } catch (error) {
      throw s3Failure('put', key, this.options.bucket, error);
    }
  }

  async get(key: string, range: ByteRange | null, signal: AbortSignal): Promise<{ body: Uint8Array; sizeBytes: number; metadata: Record<string, string> }> {
    // An HTTP range holds at least one byte; RemoteStorage answers an empty one without a request.
    assert(range === null || (range.startBytes >= 0 && range.endBytes > range.startBytes), 'a ranged get asks for at least one byte');
    try {
      const input = { Bucket: this.options.bucket, Key: this.#fullKey(key), ...(range === null ? {} : { Range: `bytes=${range.startBytes}-${range.endBytes - 1}` }) };
      const response = await this.#client.send(new GetObjectCommand(input), { abortSignal: signal });
      const metadata = response.Metadata ?? {};
      if (range !== null && response.$metadata.httpStatusCode === 200) return { ...(await this.#rangeOfWhole(key, range, response)), metadata };
      const body = await readBody(response);
      if (range === null) return { body, sizeBytes: response.ContentLength ?? body.length, metadata };
      return { body, sizeBytes: checkedContentRange(key, range, response.ContentRange, body.length), metadata };
    } catch (error) {
      throw s3Failure('get', key, this.options.bucket, error);
    }
  }

  /** `range` cut out of a 200 reply that carries the whole object (its server ignored `Range`). */
  async #rangeOfWhole(key: string, range: ByteRange, response: GetObjectCommandOutput): Promise<{ body: Uint8Array; sizeBytes: number }> {
    const lengthBytes = response.ContentLength;
    if (lengthBytes === undefined || lengthBytes > OBJECT_BYTES_MAX) {
      discardBody(response);
      throw new RemoteStorageError(`S3 get ${key}: the server ignored Range and sent the whole object (${lengthBytes ?? 'unknown'} bytes, at most ${OBJECT_BYTES_MAX} are read whole)`, false);
    }
    const whole = await readBody(response);
    // A short or long body is left to the caller's length and digest checks, as with any reply.
    if (range.startBytes > whole.length) throw new RemoteStorageError(`S3 get ${key}: range starts at ${range.startBytes}, past the object end ${whole.length}`, false);
    return { body: whole.subarray(range.startBytes, Math.min(range.endBytes, whole.length)), sizeBytes: whole.length };
  }

  async head(key: string, signal: AbortSignal): Promise<RemoteObjectHead | null> {
    try {
      const response = await this.#client.send(new HeadObjectCommand({ Bucket: this.options.bucket, Key: this.#fullKey(key) }), { abortSignal: signal });
      return { key, sizeBytes: response.ContentLength ?? 0, metadata: response.Metadata ?? {} };
    } catch (error) {
      const failure = s3Failure('head', key, this.options.bucket, error);
      if (failure instanceof NotFoundError) return null;
      throw failure;
    }
  }

  async list(prefix: string, signal: AbortSignal): Promise<RemoteObjectInfo[]> {
    const found: RemoteObjectInfo[] = [];
    let token: string | undefined;
    try {
      do {
        const response = await this.#client.send(
          new ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: this.#fullKey(prefix), ...(token === undefined ? {} : { ContinuationToken: token }) }),
          { abortSignal: signal },
        );
        for (const item of response.Contents ?? []) {
          if (item.Key === undefined) continue;
          found.push({ key: this.#relativeKey(item.Key), sizeBytes: item.Size ?? 0 });
        }
        token = response.IsTruncated === true ? response.NextContinuationToken : undefined;
      } while (token !== undefined);
    } catch (error) {
      throw s3Failure('list', prefix, this.options.bucket, error);
    }
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(keys: readonly string[], signal: AbortSignal): Promise<void> {
    for (let index = 0; index < keys.length; index += DELETE_KEYS_PER_REQUEST_MAX) {
      const batch = keys.slice(index, index + DELETE_KEYS_PER_REQUEST_MAX);
      try {
        const response = await this.#client.send(
          new DeleteObjectsCommand({ Bucket: this.options.bucket, Delete: { Objects: batch.map((key) => ({ Key: this.#fullKey(key) })), Quiet: true } }),
          { abortSignal: signal },
        );
        const failed = (response.Errors ?? []).filter((entry) => entry.Code !== 'NoSuchKey');
        if (failed.length > 0) {
          throw new RemoteStorageError(`S3 delete: ${failed.length} keys failed, first ${failed[0]?.Key ?? '?'}: ${failed[0]?.Code ?? '?'}`, true);
        }
      } catch (error) {
        throw s3Failure('delete', batch[0] ?? '', this.options.bucket, error);
      }
    }
  }

  async copy(fromKey: string, toKey: string, signal: AbortSignal): Promise<void> {
    try {
      const source = `${this.options.bucket}/${this.#fullKey(fromKey)}`.split('/').map(encodeURIComponent).join('/');
      await this.#client.send(
        new CopyObjectCommand({ Bucket: this.options.bucket, Key: this.#fullKey(toKey), CopySource: source, MetadataDirective: 'COPY' }),
        { abortSignal: signal },
      );
    } catch (error) {
      throw s3Failure('copy', fromKey, this.options.bucket, error);
    }
  }

  async close(): Promise<void> {
    this.#client.destroy();
  }
}
