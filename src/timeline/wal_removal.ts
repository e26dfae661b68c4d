/**
 * Local WAL removal (storage reference §7): deletes every segment file (complete or `.partial`) with a
 * segment number up to a limit the manager computed from its horizon, in ascending order, then fsyncs the
 * directory. Deleting in ascending order keeps the invariant that local WAL is one contiguous run of
 * segments: a crash in the middle leaves a higher start, and the next pass (which lists the directory
 * again) finishes the job. Also `localSegmentRange`, what the manager learns at start. The failpoint
 * `wal-removal-before-delete` fires before each file. Coordinator thread; async fs.
 */
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDirectory, listSegments } from '../storage/layout.js';
import type { Failpoints } from '../sync/failpoints.js';

export interface RemovalOptions {
  noSync: boolean;
  failpoints: Failpoints;
  signal: AbortSignal;
}

/** Removes the segments numbered ≤ `removeUpToSegno`. Returns how many files it deleted. */
export async function removeSegmentsUpTo(dir: string, segmentSizeBytes: number, removeUpToSegno: bigint, options: RemovalOptions): Promise<number> {
  let removed = 0;
  for (const entry of await listSegments(dir, segmentSizeBytes)) {
    if (entry.segno > removeUpToSegno) break; // sorted ascending
    options.signal.throwIfAborted();
    await options.failpoints.hit('wal-removal-before-delete', options.signal);
    await unlink(join(dir, entry.name)).catch((error: unknown) => {
      if ((error as { code?: string }).code !== 'ENOENT') throw error;
    });
    removed += 1;
  }
  if (removed > 0 && !options.noSync) await fsyncDirectory(dir);
  return removed;
}

/** The lowest and highest local segment numbers, or null when there is no segment file. */
export async function localSegmentRange(dir: string, segmentSizeBytes: number): Promise<{ lowest: bigint; highest: bigint } | null> {
  const entries = await listSegments(dir, segmentSizeBytes);
  const first = entries[0];
  const last = entries[entries.length - 1];
  return first === undefined || last === undefined ? null : { lowest: first.segno, highest: last.segno };
}

/** Removes every local segment numbered ≥ `fromSegno` (an offloaded timeline's partial and prepared files). */
export async function removeSegmentsFrom(dir: string, segmentSizeBytes: number, fromSegno: bigint, noSync: boolean): Promise<number> {
  let removed = 0;
  for (const entry of await listSegments(dir, segmentSizeBytes)) {
    if (entry.segno < fromSegno) continue;
    await unlink(join(dir, entry.name)).catch((error: unknown) => {
      if ((error as { code?: string }).code !== 'ENOENT') throw error;
    });
    removed += 1;
  }
  if (removed > 0 && !noSync) await fsyncDirectory(dir);
  return removed;
}
