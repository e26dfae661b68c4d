/**
 * The on-disk layout of a data directory (DESIGN.md § On-disk layout) and what a failed fs call on it
 * means. Owns every path and file name the storage code uses, so no other module builds one by hand:
 *
 *   <data_dir>/<tenant_id>/<timeline_id>/safekeeper.control           control file (control_file.ts)
 *   <data_dir>/<tenant_id>/<timeline_id>/safekeeper.control.partial   its temp file while being replaced
 *   <data_dir>/<tenant_id>/<timeline_id>/<24 hex>[.partial]           WAL segments (segment_file.ts)
 *   <data_dir>/<tenant_id>/<timeline_id>/<24 hex>.partial.tmp         a segment being created
 *   <data_dir>/<tenant_id>/<timeline_id>/recycled-<24 hex>             a removed segment kept for reuse
 *   <data_dir>/tmp/<tenant>_<timeline>_<random>_temptli/              staging dir for create / pull
 *   <data_dir>/tmp/<tenant>_<timeline>_<random>_deleted/              a timeline dir being deleted
 *
 * Fs errors become SafekeeperErrors here, in one place: ENOSPC is DiskFullError (53100), ENOENT on a
 * file we were asked for is NotFoundError, anything else is StorageIoError naming the operation and
 * path. Between threads they travel as data (`toIoErrorData` / `ioErrorFromData`), since a worker
 * that throws has a bug. Pure path functions run on any thread; the listing and staging helpers are
 * async (fs/promises) for the main and coordinator threads; `listSegmentsSync` is for workers.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rm, stat } from 'node:fs/promises';
import { closeSync, fsyncSync, openSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { TenantId, TimelineId } from '../acceptor/state.js';
import { DiskFullError, NotFoundError, SafekeeperError, StorageIoError } from '../errors.js';
import { AssertionError, assert, unreachable } from '../sync/assert.js';
import { parseSegmentFileName, segmentFileName } from '../wal/lsn.js';

export const CONTROL_FILE_NAME = 'safekeeper.control';
export const CONTROL_FILE_PARTIAL_NAME = 'safekeeper.control.partial';
export const PARTIAL_SUFFIX = '.partial';
/** Suffix of a segment file being created; never a valid segment name, so listings skip it. */
export const SEGMENT_TEMP_SUFFIX = '.partial.tmp';
/**
 * Prefix of a removed segment file kept to be reused as a later segment (`wal_recycle_segments`). Not a
 * segment name, so listings skip it, and it does not start with one, so `ls 00000001*` shows live WAL only.
 */
export const RECYCLED_SEGMENT_PREFIX = 'recycled-';
export const TMP_DIR_NAME = 'tmp';
const STAGING_DIR_SUFFIX = '_temptli';
const DELETING_DIR_SUFFIX = '_deleted';
/** Temp file while re-downloading an evicted partial segment (Neon's name). */
export const REMOTE_PARTIAL_TEMP_NAME = 'remote_partial.tmp';
/** Random bytes in a staging dir name: enough that two concurrent creations never collide. */
const STAGING_RANDOM_BYTES = 8;

const ID_PATTERN = /^[0-9a-f]{32}$/;

/** `<data_dir>/<tenant_id>/<timeline_id>`. */
export function timelineDir(dataDir: string, tenantId: TenantId, timelineId: TimelineId): string {
  assert(ID_PATTERN.test(tenantId), 'tenant id is 32 lower-case hex chars');
  assert(ID_PATTERN.test(timelineId), 'timeline id is 32 lower-case hex chars');
  return join(dataDir, tenantId, timelineId);
}

/** True for directory names that can be a tenant or timeline dir (other names are ignored at load). */
export const isIdDirName = (name: string): boolean => ID_PATTERN.test(name);

export const controlFilePath = (dir: string): string => join(dir, CONTROL_FILE_NAME);
export const controlFilePartialPath = (dir: string): string => join(dir, CONTROL_FILE_PARTIAL_NAME);
export const remotePartialTempPath = (dir: string): string => join(dir, REMOTE_PARTIAL_TEMP_NAME);

/** The path of segment `segno`: `<dir>/<24 hex>` when complete, `<dir>/<24 hex>.partial` while written. */
export function segmentPath(dir: string, segno: bigint, segmentSizeBytes: number, partial: boolean): string {
  return join(dir, segmentFileName(segno, segmentSizeBytes) + (partial ? PARTIAL_SUFFIX : ''));
}

/** The temp path a new segment file is built at before its durable rename to `.partial`. */
export function segmentTempPath(dir: string, segno: bigint, segmentSizeBytes: number): string {
  return join(dir, segmentFileName(segno, segmentSizeBytes) + SEGMENT_TEMP_SUFFIX);
}

/** The name a removed segment file is kept under for reuse (it keeps its old segment name after the prefix). */
export const recycledSegmentName = (segmentName: string): string => RECYCLED_SEGMENT_PREFIX + segmentName;
export const isRecycledSegmentName = (name: string): boolean => name.startsWith(RECYCLED_SEGMENT_PREFIX);

/** One segment file found in a timeline dir. */
export interface SegmentFileEntry {
  segno: bigint;
  partial: boolean;
  /** The file name (no directory). */
  name: string;
}

/**
 * The segment files among `names`, sorted by segment number, a `.partial` before a complete file of the
 * same number (the order readers try them in). Other names (control file, temp files) are skipped.
 */
export function segmentEntriesFromNames(names: readonly string[], segmentSizeBytes: number): SegmentFileEntry[] {
  const entries: SegmentFileEntry[] = [];
  for (const name of names) {
    const parsed = parseSegmentFileName(name, segmentSizeBytes);
    if (parsed === null) continue;
    entries.push({ segno: parsed.segno, partial: parsed.partial, name });
  }
  entries.sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : Number(b.partial) - Number(a.partial)));
  return entries;
}

/** Every name in a timeline dir (segments, recycled segments, control and temp files). Async. */
export async function listTimelineDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (error) {
    throw storageError(error, 'readdir', dir);
  }
}

/** The segment files of a timeline dir (both `.partial` and complete). Async: main and coordinator threads. */
export async function listSegments(dir: string, segmentSizeBytes: number): Promise<SegmentFileEntry[]> {
  return segmentEntriesFromNames(await listTimelineDir(dir), segmentSizeBytes);
}

/** `listTimelineDir` with blocking fs, for worker threads. */
export function listTimelineDirSync(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (error) {
    throw storageError(error, 'readdir', dir);
  }
}

/** `listSegments` with blocking fs, for worker threads. */
export function listSegmentsSync(dir: string, segmentSizeBytes: number): SegmentFileEntry[] {
  return segmentEntriesFromNames(listTimelineDirSync(dir), segmentSizeBytes);
}

// ---- staging directory (tmp/) ----

export const tmpDirPath = (dataDir: string): string => join(dataDir, TMP_DIR_NAME);

/** `<data_dir>/tmp/<tenant>_<timeline>_<random>_temptli`, as Neon names it. */
export function stagingDirPath(dataDir: string, tenantId: TenantId, timelineId: TimelineId, random: string): string {
  assert(/^[0-9a-f]+$/.test(random), 'staging random part is hex');
  return join(tmpDirPath(dataDir), `${tenantId}_${timelineId}_${random}${STAGING_DIR_SUFFIX}`);
}

/**
 * `<data_dir>/tmp/<tenant>_<timeline>_<random>_deleted`: where delete renames a timeline dir before removing
 * it. Inside the data dir, so the rename stays on one filesystem (atomic), and under `tmp/`, which
 * `clearTmpDir` empties at startup, so a delete cut short by a crash finishes there.
 */
export function deletingDirPath(dataDir: string, tenantId: TenantId, timelineId: TimelineId): string {
  const random = randomBytes(STAGING_RANDOM_BYTES).toString('hex'); // repeated deletes never collide
  return join(tmpDirPath(dataDir), `${tenantId}_${timelineId}_${random}${DELETING_DIR_SUFFIX}`);
}

/** Creates a fresh, empty staging dir under `tmp/` and returns its path. */
export async function createStagingDir(dataDir: string, tenantId: TenantId, timelineId: TimelineId): Promise<string> {
  const path = stagingDirPath(dataDir, tenantId, timelineId, randomBytes(STAGING_RANDOM_BYTES).toString('hex'));
  try {
    await mkdir(tmpDirPath(dataDir), { recursive: true });
    await mkdir(path); // not recursive: an existing dir would be a collision, so it must fail
  } catch (error) {
    throw storageError(error, 'mkdir', path);
  }
  return path;
}

/**
 * `mkdir -p path`: creates `path` and its missing ancestors, and returns the first one it created (undefined when
 * `path` was already a directory), as `mkdir(path, { recursive: true })` does. Not that call, because Node 20's
 * spins forever at 100% CPU when the kernel answers ENOENT for a directory whose parent exists (anywhere under
 * /proc, e.g. `--data-dir /proc/x`). Here each level is tried once more after its parent exists, so such a path
 * fails with that ENOENT. Errors are Node's fs errors (the caller names what the directory is for).
 */
export async function makeDirectories(path: string): Promise<string | undefined> {
  const target = resolve(path);
  try {
    await mkdir(target);
    return target;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      if ((await stat(target)).isDirectory()) return undefined; // stat follows a symlink to a directory
      throw error;
    }
    if (code !== 'ENOENT' || dirname(target) === target) throw error;
  }
  const firstCreated = await makeDirectories(dirname(target));
  try {
    await mkdir(target);
  } catch (error) {
    // Made meanwhile by someone else: fine when it is a directory.
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || !(await stat(target)).isDirectory()) throw error;
    return firstCreated;
  }
  return firstCreated ?? target;
}

/** Removes `tmp/` and everything in it. Run at startup: anything staged there belongs to a dead process. */
export async function clearTmpDir(dataDir: string): Promise<void> {
  const path = tmpDirPath(dataDir);
  try {
    await rm(path, { recursive: true, force: true });
  } catch (error) {
    throw storageError(error, 'rm', path);
  }
}

// ---- directory fsync ----

/** Makes a rename or unlink in `dir` durable. */
export async function fsyncDirectory(dir: string): Promise<void> {
  try {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (error) {
    throw storageError(error, 'fsync directory', dir);
  }
}

/** `fsyncDirectory` with blocking fs, for worker threads. */
export function fsyncDirectorySync(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    throw storageError(error, 'fsync directory', dir);
  }
}

// ---- fs errors ----

/** Codes of the operating errors storage code raises; what crosses threads in `IoErrorData.code`. */
export type IoErrorCode = 'SK_DISK_FULL' | 'SK_STORAGE_IO' | 'SK_NOT_FOUND';

/** An operating storage error as plain data, for a worker's result (`{ ok: false, code, detail }`). */
export interface IoErrorData {
  code: IoErrorCode;
  detail: string;
}

const errnoCode = (error: unknown): string | undefined => {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
};

/**
 * Maps a thrown value from an fs call on `path` to a SafekeeperError. AssertionErrors (bugs) and
 * SafekeeperErrors pass through unchanged; an fs error becomes DiskFullError (ENOSPC, EDQUOT),
 * NotFoundError (ENOENT) or StorageIoError; anything else is not an fs failure and is rethrown as is.
 */
export function storageError(error: unknown, operation: string, path: string): Error {
  if (error instanceof AssertionError || error instanceof SafekeeperError) return error;
  const code = errnoCode(error);
  if (!(error instanceof Error)) return new AssertionError(`non-Error thrown by ${operation}`);
  if (code === undefined) return error;
  const detail = `${operation} ${path}: ${code}`;
  if (code === 'ENOSPC' || code === 'EDQUOT') return new DiskFullError(`disk full: ${detail}`, { cause: error });
  if (code === 'ENOENT') return new NotFoundError(`not found: ${detail}`, { cause: error });
  return new StorageIoError(`storage I/O error: ${detail} (${error.message})`, { cause: error });
}

/** Runs one async fs call on `path`; its failure becomes the storage error naming `operation` and `path`. */
export async function storageCall<T>(operation: string, path: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw storageError(error, operation, path);
  }
}

/** The data form of a storage error. Anything that is not an operating storage error is a bug: rethrown. */
export function toIoErrorData(error: unknown): IoErrorData {
  if (error instanceof DiskFullError || error instanceof StorageIoError || error instanceof NotFoundError) {
    return { code: error.code, detail: error.message };
  }
  if (errnoCode(error) !== undefined && !(error instanceof SafekeeperError)) return toIoErrorData(storageError(error, 'fs', '?'));
  throw error;
}

/** Rebuilds the error on the receiving thread, so callers branch on its class and code as usual. */
export function ioErrorFromData(data: IoErrorData): SafekeeperError {
  switch (data.code) {
    case 'SK_DISK_FULL':
      return new DiskFullError(data.detail);
    case 'SK_STORAGE_IO':
      return new StorageIoError(data.detail);
    case 'SK_NOT_FOUND':
      return new NotFoundError(data.detail);
    default:
      return unreachable(data.code, 'unknown storage error code');
  }
}
