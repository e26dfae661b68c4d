/**
 * WAL that comes back from remote storage: eviction's check of the local `.partial` against its remote
 * copy (storage reference §8.1), un-eviction's download of the partial segment (§8.2), and the on-demand
 * read of WAL a reader needs below the local start (§11).
 *
 * Un-eviction is crash-safe: the object is downloaded into `remote_partial.tmp`, its length checked
 * (= offset(flush_lsn)), extended with zeros to the segment size, fsynced and durably renamed to
 * `<segment>.partial`; only then does the caller persist `Present`. A crash before the rename leaves a temp
 * file that the next attempt overwrites; a crash after it leaves a valid local file that the next attempt
 * checks against the remote copy instead of downloading again.
 * Local fs failures become SafekeeperErrors naming the operation and path (layout.ts `storageError`: ENOSPC
 * is DiskFullError, ENOENT NotFoundError, anything else StorageIoError), so a full or failing disk fails the
 * guard request that needed the download with a clear error, instead of escaping the coordinator as a bug.
 * On-demand reads are not cached locally (as in Neon): a full segment object is read with a ranged GET;
 * the segment of an evicted timeline's flush_lsn comes from its partial object. Digests are checked by
 * RemoteStorage.
 * Memory: a compare holds the remote object and a local copy (up to a segment each), a download the object;
 * each runs under a coordinator-wide permit (a compare under one of `evictionPermits`, taken in
 * manager_eviction.ts; a download under one of `unevictionPermits`, in eviction.ts), so only a few do at once.
 * Coordinator thread; async fs.
 */
import { open, rename, rm } from 'node:fs/promises';
import type { PartialRemoteSegment, TenantId, TimelineId } from '../acceptor/state.js';
import { NotFoundError, SafekeeperError } from '../errors.js';
import { fsyncDirectory, remotePartialTempPath, segmentPath, storageCall, storageError } from '../storage/layout.js';
import { assert } from '../sync/assert.js';
import type { Failpoints } from '../sync/failpoints.js';
import { formatLsn, segmentFileName, segmentNumber, segmentOffsetBytes, segmentStartLsn, type Lsn } from '../wal/lsn.js';
import { objectKey, type RemoteStorage } from './remote_storage.js';
import { readUpTo } from '../storage/file_read.js';

export interface OffloadDeps {
  tenantId: TenantId;
  timelineId: TimelineId;
  dir: string;
  segmentSizeBytes: number;
  remote: RemoteStorage;
  failpoints: Failpoints;
  noSync: boolean;
  signal: AbortSignal;
}

/** The local partial segment differs from its remote copy: neither evict nor trust it. */
export class PartialSegmentMismatchError extends SafekeeperError {
  override readonly name = 'PartialSegmentMismatchError';
  readonly code = 'SK_PARTIAL_SEGMENT_MISMATCH';
  readonly sqlState = 'XX001';
}

/**
 * What the bytes of a local `.partial` after flush_lsn must be. The writer writes every byte it receives while
 * flush_lsn ends at the last complete record, so a proposer that died mid-record leaves unacknowledged bytes
 * there until a later election truncates them: eviction ignores them ('ignored'; they are never acknowledged and
 * un-eviction brings the segment back zero-filled). Un-eviction keeps a local copy only if it is exactly what a
 * download would give ('zeros').
 */
export type PartialTail = 'ignored' | 'zeros';

/**
 * Checks the local `.partial` of `record`'s segment against the remote object, which holds that segment's
 * first offset(flush_lsn) bytes (partial_backup.ts): those bytes must be equal, and the rest as `tail` says.
 * 'absent' when there is no local file; PartialSegmentMismatchError when it differs.
 */
export async function compareLocalPartial(deps: OffloadDeps, record: PartialRemoteSegment, tail: PartialTail): Promise<'absent' | 'matches'> {
  const segno = segmentNumber(record.flushLsn, deps.segmentSizeBytes);
  const path = segmentPath(deps.dir, segno, deps.segmentSizeBytes, true);
  const handle = await open(path, 'r').catch((error: unknown) => {
    if ((error as { code?: string }).code === 'ENOENT') return null;
    throw storageError(error, 'open', path);
  });
  if (handle === null) return 'absent';
  try {
    const { size } = await storageCall('stat', path, () => handle.stat());
    if (size !== deps.segmentSizeBytes) throw new PartialSegmentMismatchError(`${path} has ${size} bytes, not ${deps.segmentSizeBytes}`);
    const remote = await deps.remote.get(objectKey(deps.tenantId, deps.timelineId, record.name), deps.signal);
    const flushOffset = segmentOffsetBytes(record.flushLsn, deps.segmentSizeBytes);
    if (remote.length !== flushOffset) throw new PartialSegmentMismatchError(`remote ${record.name} has ${remote.length} bytes, flush_lsn says ${flushOffset}`);
    // Its size was checked above; a tail cut meanwhile reads as zeros.
    const local = new Uint8Array(tail === 'zeros' ? deps.segmentSizeBytes : flushOffset);
    await storageCall('read', path, () => readUpTo(handle, local, 0, local.length, 0));
    if (!Buffer.from(local.buffer, 0, flushOffset).equals(Buffer.from(remote.buffer, remote.byteOffset, remote.length))) {
      throw new PartialSegmentMismatchError(`${path} differs from remote ${record.name} below flush_lsn ${formatLsn(record.flushLsn)}`);
    }
    for (let index = flushOffset; index < local.length; index++) {
      if (local[index] !== 0) throw new PartialSegmentMismatchError(`${path} has data after flush_lsn ${formatLsn(record.flushLsn)} (offset ${index})`);
    }
  } finally {
    await storageCall('close', path, () => handle.close());
  }
  return 'matches';
}

/** Downloads `record`'s object into place as `<segment>.partial` (see the header). */
export async function downloadPartialSegment(deps: OffloadDeps, record: PartialRemoteSegment): Promise<void> {
  const segno = segmentNumber(record.flushLsn, deps.segmentSizeBytes);
  const flushOffset = segmentOffsetBytes(record.flushLsn, deps.segmentSizeBytes);
  const body = await deps.remote.get(objectKey(deps.tenantId, deps.timelineId, record.name), deps.signal);
  if (body.length !== flushOffset) throw new PartialSegmentMismatchError(`remote ${record.name} has ${body.length} bytes, flush_lsn says ${flushOffset}`);
  const temp = remotePartialTempPath(deps.dir);
  await storageCall('rm', temp, () => rm(temp, { force: true }));
  const handle = await storageCall('create', temp, () => open(temp, 'wx'));
  try {
    await storageCall('write', temp, async () => {
      for (let done = 0; done < body.length; ) done += (await handle.write(body, done, body.length - done, done)).bytesWritten;
    });
    await storageCall('truncate', temp, () => handle.truncate(deps.segmentSizeBytes)); // the zero tail, as every segment file has
    if (!deps.noSync) await storageCall('fsync', temp, () => handle.sync());
  } finally {
    await storageCall('close', temp, () => handle.close());
  }
  await deps.failpoints.hit('unevict-before-rename', deps.signal);
  await storageCall('rename', temp, () => rename(temp, segmentPath(deps.dir, segno, deps.segmentSizeBytes, true)));
  if (!deps.noSync) await fsyncDirectory(deps.dir);
}

/** What the manager knows is in remote storage. */
export interface RemoteWalExtent {
  /** Every segment below segno(backupLsn) has a full object. */
  backupLsn: Lsn;
  uploadedPartial: PartialRemoteSegment | null;
}

/**
 * Up to `lengthBytes` of WAL from `startLsn`, never past its segment's end, from remote storage.
 * NotFoundError when no object holds it.
 */
export async function readRemoteWal(
  deps: Pick<OffloadDeps, 'tenantId' | 'timelineId' | 'segmentSizeBytes' | 'remote' | 'signal'>,
  startLsn: Lsn,
  lengthBytes: number,
  extent: RemoteWalExtent,
): Promise<Uint8Array> {
  assert(Number.isInteger(lengthBytes) && lengthBytes >= 0, 'read length is a whole number of bytes');
  const segno = segmentNumber(startLsn, deps.segmentSizeBytes);
  const offsetBytes = segmentOffsetBytes(startLsn, deps.segmentSizeBytes);
  const inSegmentBytes = Math.min(lengthBytes, deps.segmentSizeBytes - offsetBytes);
  const name = segmentFileName(segno, deps.segmentSizeBytes);
  if (segno < segmentNumber(extent.backupLsn, deps.segmentSizeBytes)) {
    return deps.remote.get(objectKey(deps.tenantId, deps.timelineId, name), deps.signal, { offsetBytes, lengthBytes: inSegmentBytes });
  }
  const partial = extent.uploadedPartial;
  if (partial !== null && segmentNumber(partial.flushLsn, deps.segmentSizeBytes) === segno && startLsn < partial.flushLsn) {
    const available = Number(partial.flushLsn - startLsn);
    return deps.remote.get(objectKey(deps.tenantId, deps.timelineId, partial.name), deps.signal, { offsetBytes, lengthBytes: Math.min(inSegmentBytes, available) });
  }
  throw new NotFoundError(`WAL at ${formatLsn(startLsn)} (segment ${name}, from ${formatLsn(segmentStartLsn(segno, deps.segmentSizeBytes))}) is not in remote storage`);
}
