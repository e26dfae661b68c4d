/**
 * The S3 remote storage backend (`s3://bucket/prefix?endpoint=URL&region=R`), on @aws-sdk/client-s3.
 * Path-style addressing (`forcePathStyle`), so any S3-compatible endpoint works (s3rver, MinIO, Swift).
 * The SDK's own retries are off (`maxAttempts: 1`): `RemoteStorage` retries with its own backoff and
 * deadlines, and each request gets the attempt's AbortSignal. Checksums are computed only when S3 requires
 * them (`WHEN_REQUIRED`): we carry our own xxhash64 digests, and s3rver would store aws-chunked framing.
 * Bodies are Uint8Arrays (segments are at most 1 GiB; WAL backup reads a whole segment anyway).
 *
 * Errors: 404 → NotFoundError; 5xx, 408, 429, network errors and aborted requests (a per-attempt timeout)
 * → retryable RemoteStorageError; other 4xx (auth, bad request) → not retryable. Credentials come from the
 * SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, instance roles) unless given.
 * Coordinator thread.
 */
import {
  CopyObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { NotFoundError } from '../errors.js';
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

function s3Failure(operation: string, key: string, error: unknown): Error {
  if (error instanceof RemoteStorageError || error instanceof NotFoundError) return error;
  const sdk = (error ?? {}) as SdkError;
  if (!(error instanceof Error) || !isTransportOrServiceError(sdk)) return error instanceof Error ? error : new Error(String(error));
  const status = sdk.$metadata?.httpStatusCode;
  if (status === 404 || sdk.name === 'NoSuchKey' || sdk.name === 'NotFound') return remoteNotFound(key, { cause: error });
  // No status: the request never got an answer (reset, refused, aborted by our deadline): try again.
  const retryable = status === undefined || status >= 500 || status === 408 || status === 429;
  const what = status === undefined ? (sdk.name ?? 'network error') : `HTTP ${status} ${sdk.name ?? ''}`.trim();
  return new RemoteStorageError(`S3 ${operation} ${key}: ${what}: ${sdk.message ?? ''}`.trim(), retryable, { cause: error });
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
      throw s3Failure('put', key, error);
    }
  }

  async get(key: string, range: ByteRange | null, signal: AbortSignal): Promise<{ body: Uint8Array; sizeBytes: number; metadata: Record<string, string> }> {
    try {
      const input = { Bucket: this.options.bucket, Key: this.#fullKey(key), ...(range === null ? {} : { Range: `bytes=${range.startBytes}-${range.endBytes - 1}` }) };
      const response = await this.#client.send(new GetObjectCommand(input), { abortSignal: signal });
      const body = response.Body === undefined ? new Uint8Array(0) : await response.Body.transformToByteArray();
      const total = /\/(\d+)$/.exec(response.ContentRange ?? '')?.[1];
      const sizeBytes = total !== undefined ? Number(total) : (response.ContentLength ?? body.length);
      return { body, sizeBytes, metadata: response.Metadata ?? {} };
    } catch (error) {
      throw s3Failure('get', key, error);
    }
  }

  async head(key: string, signal: AbortSignal): Promise<RemoteObjectHead | null> {
    try {
      const response = await this.#client.send(new HeadObjectCommand({ Bucket: this.options.bucket, Key: this.#fullKey(key) }), { abortSignal: signal });
      return { key, sizeBytes: response.ContentLength ?? 0, metadata: response.Metadata ?? {} };
    } catch (error) {
      const failure = s3Failure('head', key, error);
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
      throw s3Failure('list', prefix, error);
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
        throw s3Failure('delete', batch[0] ?? '', error);
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
      throw s3Failure('copy', fromKey, error);
    }
  }

  async close(): Promise<void> {
    this.#client.destroy();
  }
}
