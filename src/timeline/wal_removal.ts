/**
 * Local WAL removal (storage reference §7): deletes every segment file (complete or `.partial`) with a
 * segment number up to a limit the manager computed from its horizon, in ascending order, then fsyncs the
 * directory. Deleting in ascending order keeps the invariant that local WAL is one contiguous run of
 * segments: a crash in the middle leaves a higher start, and the next pass (which lists the directory
 * again) finishes the job. Up to `recycleMax` complete segments are renamed to `recycled-<name>` instead of
 * deleted, for the writer to prepare a later segment in (segment_file.ts; PostgreSQL recycles its segments
 * too, but we zero them before reuse, so a segment's tail is always zeros). Also `localWal`, what the
 * manager learns at start, and `dropRecycledSegments` for a quiet timeline. The failpoint
 * `wal-removal-before-delete` fires before each segment file.
 * Coordinator thread; async fs.
 */
import { rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDirectory, isRecycledSegmentName, listTimelineDir, recycledSegmentName, segmentEntriesFromNames, storageError } from '../storage/layout.js';
import type { Failpoints } from '../sync/failpoints.js';

export interface RemovalOptions {
  noSync: boolean;
  /** Removed segments kept for reuse per timeline (`wal_recycle_segments`), counting those already kept. */
  recycleMax: number;
  failpoints: Failpoints;
  signal: AbortSignal;
}

/** Removes the segments numbered ≤ `removeUpToSegno`. Returns how many segment files it removed. */
export async function removeSegmentsUpTo(dir: string, segmentSizeBytes: number, removeUpToSegno: bigint, options: RemovalOptions): Promise<number> {
  const names = await listTimelineDir(dir);
  let recycled = names.filter(isRecycledSegmentName).length;
  let removed = 0;
  for (const entry of segmentEntriesFromNames(names, segmentSizeBytes)) {
    if (entry.segno > removeUpToSegno) break; // sorted ascending
    options.signal.throwIfAborted();
    await options.failpoints.hit('wal-removal-before-delete', options.signal);
    const path = join(dir, entry.name);
    // A `.partial` below the horizon is a leftover (a crash before its rename): the horizon is at most
    // synced_lsn, so no writer touches it again. Only complete segments are reused.
    const recycle = !entry.partial && recycled < options.recycleMax;
    await ignoringMissing(recycle ? 'rename' : 'unlink', path, recycle ? rename(path, join(dir, recycledSegmentName(entry.name))) : unlink(path));
    if (recycle) recycled += 1;
    removed += 1;
  }
  if (removed > 0 && !options.noSync) await fsyncDirectory(dir);
  return removed;
}

/**
 * Deletes the recycled segments of `dir`; returns how many. No directory fsync: a recycled name is never a
 * segment, so one that comes back after a crash is only disk space until the next drop or reuse. A writer
 * taking one at the same time (segment_file.ts) renames it first or finds it gone; both are fine.
 */
export async function dropRecycledSegments(dir: string): Promise<number> {
  return unlinkAll(dir, (await listTimelineDir(dir)).filter(isRecycledSegmentName));
}

/** What a timeline directory holds of WAL: the lowest and highest segment numbers, and recycled files. */
export interface LocalWal {
  /** null when there is no segment file. */
  range: { lowest: bigint; highest: bigint } | null;
  recycledFiles: number;
}

export async function localWal(dir: string, segmentSizeBytes: number): Promise<LocalWal> {
  const names = await listTimelineDir(dir);
  const entries = segmentEntriesFromNames(names, segmentSizeBytes);
  const first = entries[0];
  const last = entries[entries.length - 1];
  const range = first === undefined || last === undefined ? null : { lowest: first.segno, highest: last.segno };
  return { range, recycledFiles: names.filter(isRecycledSegmentName).length };
}

/**
 * Removes every local segment numbered ≥ `fromSegno` (an offloaded timeline's partial and prepared files),
 * and every recycled segment: an offloaded timeline keeps no WAL-sized files locally.
 */
export async function removeSegmentsFrom(dir: string, segmentSizeBytes: number, fromSegno: bigint, noSync: boolean): Promise<number> {
  const names = await listTimelineDir(dir);
  const segments = segmentEntriesFromNames(names, segmentSizeBytes).filter((entry) => entry.segno >= fromSegno);
  const removed = await unlinkAll(dir, [...segments.map((entry) => entry.name), ...names.filter(isRecycledSegmentName)]);
  if (removed > 0 && !noSync) await fsyncDirectory(dir);
  return removed;
}

/** Unlinks each of `names` in `dir` (one already gone is fine); returns how many names there were. */
async function unlinkAll(dir: string, names: readonly string[]): Promise<number> {
  for (const name of names) await ignoringMissing('unlink', join(dir, name), unlink(join(dir, name)));
  return names.length;
}

/** Awaits an unlink or rename of `path`; a file already gone is fine (a crash or an earlier pass got there). */
async function ignoringMissing(operation: 'unlink' | 'rename', path: string, work: Promise<void>): Promise<void> {
  await work.catch((error: unknown) => {
    if ((error as { code?: string }).code !== 'ENOENT') throw storageError(error, operation, path);
  });
}
