/**
 * Partial segment backup (storage reference §6.3): the segment being written is uploaded as
 * `<segment>_<term>_<flush_lsn %016X>_<commit_lsn %016X>_sk<node_id>.partial`, holding the first
 * offset(flush_lsn) bytes of the local `.partial` file (metadata `sk_type=partial_segment`). The name
 * carries term and flush LSN because the bytes after commit_lsn may still be truncated by a new term:
 * an object is only ever used for exactly the (term, flush) it names.
 *
 * The control file's `partialBackup.segments` lists every partial object that may exist, so none leaks
 * across a crash. Upload protocol (each persist goes through the main thread, the only control-file
 * writer):
 *   1. persist the list + the new record as InProgress;
 *   2. upload; then check that last_log_term is unchanged and flush_lsn did not move below the uploaded
 *      one (a truncation while we read), else fail: the InProgress record is collected later;
 *   3. persist with every older record Deleting and the new one Uploaded;
 *   4. garbage collection: delete every non-Uploaded object, then persist the list with only Uploaded.
 * A crash between steps leaves records that step 4 of a later upload (or `collectPartialGarbage` at
 * manager start) removes.
 * Memory: steps 1-3 run under a permit of the coordinator-wide `permits` semaphore, taken first (as Neon
 * takes its `--partial-backup-concurrency` permit before preparing the upload), so at most that many
 * partial segments are read into memory at once, whatever the number of timelines due together (after a
 * restart, every timeline with writes not yet uploaded is due at start + partial_backup_timeout) and however
 * long S3 keeps each put. Coordinator thread; abort-safe at every await (the persisted list stays valid).
 */
import type { PartialRemoteSegment, TenantId, TimelineId } from '../acceptor/state.js';
import { SafekeeperError } from '../errors.js';
import type { Failpoints } from '../sync/failpoints.js';
import type { Semaphore } from '../sync/semaphore.js';
import { segmentFileName, segmentNumber, segmentOffsetBytes, type Lsn } from '../wal/lsn.js';
import { objectKey, type RemoteStorage } from './remote_storage.js';
import { readUpTo } from '../storage/file_read.js';
import { openSegmentFile } from '../storage/segment_read.js';

/** What a partial object must match to be current: the manager's snapshot. */
export interface PartialCurrent {
  flushLsn: Lsn;
  commitLsn: Lsn;
  term: bigint;
}

export class PartialBackupStaleError extends SafekeeperError {
  override readonly name = 'PartialBackupStaleError';
  readonly code = 'SK_PARTIAL_BACKUP_STALE';
  readonly sqlState = '40001'; // serialization_failure: the WAL changed under the upload
}

const hex16 = (lsn: Lsn): string => lsn.toString(16).toUpperCase().padStart(16, '0');

export function partialObjectName(segmentSizeBytes: number, current: PartialCurrent, nodeId: bigint): string {
  const segment = segmentFileName(segmentNumber(current.flushLsn, segmentSizeBytes), segmentSizeBytes);
  return `${segment}_${current.term}_${hex16(current.flushLsn)}_${hex16(current.commitLsn)}_sk${nodeId}.partial`;
}

/** The record of the object that is in place, if any. */
export function uploadedPartial(segments: readonly PartialRemoteSegment[]): PartialRemoteSegment | null {
  return segments.find((segment) => segment.status === 'Uploaded') ?? null;
}

/** Neon's `needs_uploading`: no Uploaded record, or it names another (flush, commit, term). */
export function needsUploading(segments: readonly PartialRemoteSegment[], current: PartialCurrent): boolean {
  const uploaded = uploadedPartial(segments);
  return uploaded === null || uploaded.flushLsn !== current.flushLsn || uploaded.commitLsn !== current.commitLsn || uploaded.term !== current.term;
}

export interface PartialBackupDeps {
  tenantId: TenantId;
  timelineId: TimelineId;
  dir: string;
  segmentSizeBytes: number;
  nodeId: bigint;
  remote: RemoteStorage;
  /** Shared by every timeline's partial uploads: each holds one while its segment prefix is in memory. */
  permits: Semaphore;
  failpoints: Failpoints;
  signal: AbortSignal;
  /**
   * Persists the list as the control file's partialBackup.segments (through main). The caller's own copy of the
   * list follows each persist that succeeded, inside this callback: a step that fails later (a delete during
   * garbage collection, say) then leaves that copy as last persisted, so the next persist drops no record whose
   * object may still exist.
   */
  persist: (segments: PartialRemoteSegment[]) => Promise<void>;
  /** A fresh snapshot, for the check after the upload. */
  current: () => PartialCurrent;
}

/**
 * Runs the upload protocol for `current`, waiting for a permit first (abort-safe: an aborted wait takes
 * none). Returns the list as persisted at the end.
 */
export async function uploadPartialSegment(deps: PartialBackupDeps, segments: readonly PartialRemoteSegment[], current: PartialCurrent): Promise<PartialRemoteSegment[]> {
  const name = partialObjectName(deps.segmentSizeBytes, current, deps.nodeId);
  const record: PartialRemoteSegment = { status: 'InProgress', name, commitLsn: current.commitLsn, flushLsn: current.flushLsn, term: current.term };
  let list = [...segments.filter((segment) => segment.name !== name), record];
  const release = await deps.permits.acquire(deps.signal);
  try {
    await deps.persist(list);
    const body = await readPartialPrefix(deps.dir, current.flushLsn, deps.segmentSizeBytes);
    await deps.remote.put(objectKey(deps.tenantId, deps.timelineId, name), body, deps.signal, { sk_type: 'partial_segment' });
    await deps.failpoints.hit('partial-backup-after-upload', deps.signal);
    const after = deps.current();
    if (after.term !== current.term || after.flushLsn < current.flushLsn) {
      throw new PartialBackupStaleError(`WAL changed during the partial upload of ${name} (term ${after.term}, flush_lsn ${after.flushLsn})`);
    }
    list = list.map((segment) => (segment.name === name ? { ...segment, status: 'Uploaded' } : { ...segment, status: 'Deleting' }));
    await deps.persist(list);
  } finally {
    release(); // garbage collection only deletes: it holds no segment
  }
  return collectPartialGarbage(deps, list);
}

/** Deletes every object whose record is not Uploaded, then persists the list without them. */
export async function collectPartialGarbage(deps: PartialBackupDeps, segments: readonly PartialRemoteSegment[]): Promise<PartialRemoteSegment[]> {
  const garbage = segments.filter((segment) => segment.status !== 'Uploaded');
  if (garbage.length === 0) return [...segments];
  await deps.remote.delete(garbage.map((segment) => objectKey(deps.tenantId, deps.timelineId, segment.name)), deps.signal);
  const kept = segments.filter((segment) => segment.status === 'Uploaded');
  await deps.persist(kept);
  return kept;
}

/** The first offset(flushLsn) bytes of the segment holding flushLsn (its `.partial`, else complete file). */
export async function readPartialPrefix(dir: string, flushLsn: Lsn, segmentSizeBytes: number): Promise<Uint8Array> {
  const segno = segmentNumber(flushLsn, segmentSizeBytes);
  const lengthBytes = segmentOffsetBytes(flushLsn, segmentSizeBytes);
  const body = new Uint8Array(lengthBytes);
  if (lengthBytes === 0) return body;
  const opened = await openSegmentFile(dir, segno, segmentSizeBytes);
  if (opened === null) throw new PartialBackupStaleError(`segment ${segmentFileName(segno, segmentSizeBytes)} is not on local disk any more`);
  const { handle } = opened;
  try {
    if ((await readUpTo(handle, body, 0, lengthBytes, 0)) !== lengthBytes) {
      throw new PartialBackupStaleError(`segment ${segmentFileName(segno, segmentSizeBytes)} is shorter than ${lengthBytes} bytes`);
    }
  } finally {
    await handle.close();
  }
  return body;
}
