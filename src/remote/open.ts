/**
 * Opens the configured remote storage: `file://` → LocalFsBackend, `s3://` → S3Backend, each wrapped in
 * RemoteStorage (digests, limits, deadlines, retries). Kept apart from remote_storage.ts so the backends
 * can import the interface without a cycle. Coordinator thread (and tests).
 */
import type { RemoteStorageConfig } from '../config/value_parsers.js';
import { unreachable } from '../sync/assert.js';
import { LocalFsBackend } from './local_fs.js';
import { REMOTE_POLICY_DEFAULT, RemoteStorage, type RemoteObserver, type RemotePolicy } from './remote_storage.js';
import { S3Backend } from './s3.js';

export interface OpenRemoteOptions {
  noSync: boolean;
  policy?: Partial<RemotePolicy>;
  observer?: RemoteObserver;
  /** S3 credentials; the SDK's default chain when absent. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

export function openRemoteStorage(config: RemoteStorageConfig, options: OpenRemoteOptions): RemoteStorage {
  const policy = { ...REMOTE_POLICY_DEFAULT, ...options.policy };
  switch (config.kind) {
    case 'file':
      return new RemoteStorage(new LocalFsBackend(config.path, { noSync: options.noSync }), policy, options.observer);
    case 's3':
      return new RemoteStorage(
        new S3Backend({
          bucket: config.bucket,
          prefix: config.prefix,
          endpoint: config.endpoint,
          region: config.region,
          ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
        }),
        policy,
        options.observer,
      );
    default:
      return unreachable(config, 'unknown remote storage kind');
  }
}
