/**
 * The local-filesystem remote storage backend (`file:///path`, the embedded default). An object is two
 * files under the root: `<key>` (the body, byte for byte, so pg_waldump reads backed-up segments in place)
 * and `<key>.meta` (JSON: size and metadata). The `.meta` file is what makes an object exist:
 *
 *   put:    create the object's directory if needed, fsyncing the parent of each directory created (so
 *           the tenant and timeline directories survive a crash, not only the object's entry in its own);
 *           write `<key>.<random>.tmp` and `<key>.meta.<random>.tmp`, fsync both; unlink the old `.meta`
 *           (the old object stops existing); rename the body into place; rename the `.meta` into place;
 *           fsync the directory.
 *   delete: unlink `.meta` first, then the body; then remove the directories this left empty, up to the
 *           root (a deleted timeline leaves no tenant or timeline directory behind).
 * A crash at any point leaves the old object, no object, or the new one, never a body with someone else's
 * digests; leftover `*.tmp` files are ignored by list and overwritten by nothing (they carry a random part).
 * Directories are created and removed under one lock (`#mkdirLock`): a put that finds its directory made by
 * another put still in flight waits until that one has fsynced the parents, so no put reports success on
 * entries that a crash could lose; and a put counts its directory as in use (`#dirsInUse`) from its mkdir to
 * its end, so a delete never removes a directory, empty for the moment, that a put is about to fill. `noSync`
 * (tests and benchmarks) skips the fsyncs. Async fs (libuv pool); coordinator thread.
 */
import { randomBytes } from 'node:crypto';
import { open, readdir, readFile, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { NotFoundError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { Mutex } from '../sync/mutex.js';
import { RemoteStorageError, isValidKey, remoteNotFound, type ByteRange, type RemoteBackend, type RemoteObjectHead, type RemoteObjectInfo } from './remote_storage.js';
import { readUpTo } from '../storage/file_read.js';
import { makeDirectories } from '../storage/layout.js';

const META_SUFFIX = '.meta';
const TEMP_SUFFIX = '.tmp';

interface MetaFile {
  sizeBytes: number;
  metadata: Record<string, string>;
}

const errnoOf = (error: unknown): string | undefined => (error as { code?: string } | null)?.code;

/** fs errors of the local backend: missing → NotFoundError by the caller; anything else is retryable once. */
function fsFailure(operation: string, key: string, error: unknown): Error {
  if (error instanceof RemoteStorageError || error instanceof NotFoundError) return error;
  const code = errnoOf(error);
  if (code === undefined) return error instanceof Error ? error : new Error(String(error));
  // ENOSPC and EIO may clear up (space freed, a flaky device); EACCES will not.
  const retryable = code !== 'EACCES' && code !== 'EPERM' && code !== 'EROFS';
  return new RemoteStorageError(`local remote storage ${operation} ${key}: ${code}`, retryable, { cause: error });
}

export class LocalFsBackend implements RemoteBackend {
  readonly kind = 'file' as const;
  readonly description: string;
  readonly #mkdirLock = new Mutex();
  /** Directories a put has made sure of and not finished with, with how many puts; changed under `#mkdirLock`. */
  readonly #dirsInUse = new Map<string, number>();

  constructor(readonly root: string, private readonly options: { noSync: boolean } = { noSync: false }) {
    this.description = `file://${root}`;
  }

  #path(key: string): string {
    assert(isValidKey(key), 'remote key is relative and clean');
    return join(this.root, ...key.split('/'));
  }

  async put(key: string, body: Uint8Array, metadata: Record<string, string>, signal: AbortSignal): Promise<void> {
    const path = this.#path(key);
    const random = randomBytes(6).toString('hex');
    const bodyTemp = `${path}.${random}${TEMP_SUFFIX}`;
    const metaTemp = `${path}${META_SUFFIX}.${random}${TEMP_SUFFIX}`;
    const dir = resolve(dirname(path));
    let dirHeld = false;
    try {
      await this.#mkdirLock.run(signal, async () => {
        await this.#makeDirectoryDurably(dir);
        this.#dirsInUse.set(dir, (this.#dirsInUse.get(dir) ?? 0) + 1);
        dirHeld = true;
      });
      signal.throwIfAborted();
      await this.#writeDurably(bodyTemp, body);
      const meta: MetaFile = { sizeBytes: body.length, metadata };
      await this.#writeDurably(metaTemp, new TextEncoder().encode(JSON.stringify(meta)));
      signal.throwIfAborted();
      await unlink(`${path}${META_SUFFIX}`).catch((error: unknown) => {
        if (errnoOf(error) !== 'ENOENT') throw error;
      });
      await rename(bodyTemp, path);
      await rename(metaTemp, `${path}${META_SUFFIX}`);
      await this.#fsyncDir(dirname(path));
    } catch (error) {
      await unlink(bodyTemp).catch(() => undefined);
      await unlink(metaTemp).catch(() => undefined);
      if (signal.aborted && errnoOf(error) === undefined) throw error;
      throw fsFailure('put', key, error);
    } finally {
      if (dirHeld) {
        const left = this.#dirsInUse.get(dir)! - 1;
        if (left === 0) this.#dirsInUse.delete(dir);
        else this.#dirsInUse.set(dir, left);
      }
    }
  }

  async get(key: string, range: ByteRange | null, signal: AbortSignal): Promise<{ body: Uint8Array; sizeBytes: number; metadata: Record<string, string> }> {
    const path = this.#path(key);
    const meta = await this.#readMeta(key, path);
    signal.throwIfAborted();
    const startBytes = range === null ? 0 : range.startBytes;
    const endBytes = range === null ? meta.sizeBytes : Math.min(range.endBytes, meta.sizeBytes);
    if (startBytes > meta.sizeBytes) throw new RemoteStorageError(`remote get ${key}: range starts at ${startBytes}, past the object end ${meta.sizeBytes}`, false);
    try {
      const handle = await open(path, 'r');
      try {
        const body = new Uint8Array(endBytes - startBytes);
        await readUpTo(handle, body, 0, body.length, startBytes); // shorter than its metadata says: the digest check reports it
        return { body, sizeBytes: meta.sizeBytes, metadata: meta.metadata };
      } finally {
        await handle.close();
      }
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') throw remoteNotFound(key, { cause: error });
      throw fsFailure('get', key, error);
    }
  }

  async head(key: string, _signal: AbortSignal): Promise<RemoteObjectHead | null> {
    try {
      const meta = await this.#readMeta(key, this.#path(key));
      return { key, sizeBytes: meta.sizeBytes, metadata: meta.metadata };
    } catch (error) {
      if (error instanceof NotFoundError) return null;
      throw error;
    }
  }

  async list(prefix: string, signal: AbortSignal): Promise<RemoteObjectInfo[]> {
    // Walk from the deepest directory the prefix names; keep keys that start with the whole prefix.
    const slash = prefix.lastIndexOf('/');
    const base = slash < 0 ? this.root : join(this.root, ...prefix.slice(0, slash).split('/'));
    const found: RemoteObjectInfo[] = [];
    const walk = async (dir: string): Promise<void> => {
      signal.throwIfAborted();
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (error) {
        if (errnoOf(error) === 'ENOENT' || errnoOf(error) === 'ENOTDIR') return;
        throw fsFailure('list', prefix, error);
      }
      for (const entry of entries) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) {
          await walk(path);
          continue;
        }
        if (!entry.name.endsWith(META_SUFFIX)) continue;
        const key = relative(this.root, path.slice(0, -META_SUFFIX.length)).split(sep).join('/');
        if (!key.startsWith(prefix) || !isValidKey(key)) continue;
        const sizeBytes = await stat(path.slice(0, -META_SUFFIX.length)).then(
          (stats) => stats.size,
          () => null,
        );
        if (sizeBytes !== null) found.push({ key, sizeBytes });
      }
    };
    await walk(base);
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(keys: readonly string[], signal: AbortSignal): Promise<void> {
    const dirs = new Set<string>();
    for (const key of keys) {
      signal.throwIfAborted();
      const path = this.#path(key);
      for (const file of [`${path}${META_SUFFIX}`, path]) {
        await unlink(file).catch((error: unknown) => {
          if (errnoOf(error) !== 'ENOENT') throw fsFailure('delete', key, error);
        });
      }
      dirs.add(dirname(path));
    }
    for (const dir of dirs) await this.#fsyncDir(dir).catch(() => undefined);
    await this.#mkdirLock.run(signal, async () => {
      for (const dir of dirs) await this.#removeEmptyDirectories(dir);
    });
  }

  /**
   * Removes `dir` and then each parent while they are empty, stopping below the root, at a directory with
   * entries, or at one a put is using (or under which one is). Best effort: an empty directory left behind
   * (by a crash, or an error here) is harmless and removed by the next delete in it. Under `#mkdirLock`.
   */
  async #removeEmptyDirectories(dir: string): Promise<void> {
    const root = resolve(this.root);
    for (let current = resolve(dir); current !== root && current.startsWith(`${root}${sep}`); current = dirname(current)) {
      for (const used of this.#dirsInUse.keys()) if (used === current || used.startsWith(`${current}${sep}`)) return;
      try {
        await rmdir(current);
      } catch {
        return; // ENOTEMPTY (objects or a temp file remain), ENOENT (already gone), or an error: leave it
      }
    }
  }

  async copy(fromKey: string, toKey: string, signal: AbortSignal): Promise<void> {
    const got = await this.get(fromKey, null, signal);
    await this.put(toKey, got.body, got.metadata, signal);
  }

  async close(): Promise<void> {}

  async #readMeta(key: string, path: string): Promise<MetaFile> {
    let text: string;
    try {
      text = await readFile(`${path}${META_SUFFIX}`, 'utf8');
    } catch (error) {
      if (errnoOf(error) === 'ENOENT' || errnoOf(error) === 'ENOTDIR') throw remoteNotFound(key, { cause: error });
      throw fsFailure('head', key, error);
    }
    let meta: Partial<MetaFile> | null = null;
    try {
      meta = JSON.parse(text) as Partial<MetaFile>;
    } catch {
      meta = null;
    }
    if (meta === null || typeof meta.sizeBytes !== 'number' || typeof meta.metadata !== 'object' || meta.metadata === null) {
      throw new RemoteStorageError(`local remote storage: malformed metadata file for ${key}`, false);
    }
    return { sizeBytes: meta.sizeBytes, metadata: meta.metadata };
  }

  async #writeDurably(path: string, bytes: Uint8Array): Promise<void> {
    const handle = await open(path, 'wx');
    try {
      for (let done = 0; done < bytes.length; ) done += (await handle.write(bytes, done, bytes.length - done, done)).bytesWritten;
      if (!this.options.noSync) await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /**
   * `mkdir -p dir` (`makeDirectories`), then an fsync of the parent of every directory it created (from the first one created,
   * which mkdir returns, down to `dir`); `dir`'s own entries are fsynced by the put that fills it.
   */
  async #makeDirectoryDurably(dir: string): Promise<void> {
    const firstCreated = await makeDirectories(dir);
    if (firstCreated === undefined || this.options.noSync) return;
    const first = resolve(firstCreated);
    for (let created = resolve(dir); ; created = dirname(created)) {
      assert(created !== dirname(created), 'the first directory created is an ancestor of the one asked for');
      await this.#fsyncDir(dirname(created));
      if (created === first) break;
    }
  }

  async #fsyncDir(dir: string): Promise<void> {
    if (this.options.noSync) return;
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}
