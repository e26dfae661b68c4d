/**
 * The timeline manager's decisions (storage reference §5–§8) as one pure function: from a snapshot of the
 * state block and the manager's own facts (jobs running, retry times, what was uploaded and removed), which
 * jobs to start now and when to look again. No I/O and no clock of its own, so unit tests drive it with
 * made-up snapshots; `manager.ts` runs the jobs it asks for.
 *
 * Rules, in order:
 * - WAL backup: target = segno(commit_lsn); needed while a proposer is connected or
 *   segno(commit) > segno(backup). This node is always the offloader (one node, embedded broker).
 *   backup_lsn is reported to main when our confirmed upload end passes it.
 * - active set (broker): backup needed, or a proposer connected, or remote_consistent < commit (Neon).
 * - control-file save: when any in-memory LSN (commit, backup, peer horizon, remote consistent) is ahead of
 *   the persisted one: at once if `control_file_save_interval` has passed since our last save or persisted
 *   commit lags by ≥ 1 segment; else wake at the interval's end. (Quirk fix: our "last save" is the last
 *   save we asked for, not the load time.)
 * - WAL removal: horizon = min(persisted backup_lsn, persisted commit_lsn, flush_lsn, synced_lsn, and the
 *   readers' horizon while readers are connected); remove segments ≤ segno(horizon) − 1. Persisted values,
 *   so a restart never needs a segment that is gone. remote_consistent_lsn is not part of the horizon (Neon
 *   has it): a pageserver below the local start reads from remote storage (§11), and connected readers hold
 *   the horizon themselves. The segment being written is never below segno(horizon), because synced_lsn is
 *   in the min: write tasks write only at or after synced_lsn, and a cut (truncation) only at or after
 *   commit_lsn. flush_lsn alone is not enough: after an XLOG_SWITCH it is the next segment's start before
 *   the switch's padding (the rest of the segment) is written, and removing that segment then would unlink
 *   the `.partial` the writer still fills.
 * - recycled segments (`wal_recycle_segments`) of a quiet timeline are dropped: no proposer connected and
 *   nothing changed for `partial_backup_timeout`, and no removal running or planned. They only speed up
 *   the next segments of a timeline that is being written; on a node with thousands of idle timelines they
 *   would otherwise hold `wal_recycle_segments` segments of disk each until eviction.
 * - partial backup: when the Uploaded record differs from (flush, commit, last_log_term) and nothing
 *   changed for `partial_backup_timeout` (the timeline is quiet). Each upload ends by deleting the older objects
 *   (garbage collection); while PARTIAL_GARBAGE_RECORDS_MAX records wait for that (the deletes kept failing),
 *   no upload starts and the slot runs garbage collection alone, at once and then at each retry time, until
 *   they are gone. (Otherwise nothing but a restart retried it, and eviction, which needs the partial object
 *   current, stopped too.)
 * - eviction (`enable_offload`): no proposer, reader or guard; no job running or scheduled; control file
 *   saved; backup caught up; partial object current and its commit_lsn persisted; all older local WAL
 *   removed; and `evict_not_before` passed. (Not "not active": without a pageserver remote_consistent_lsn
 *   stays behind, and Neon's rule would then never evict.)
 * Any thread (pure).
 */
import type { PartialRemoteSegment } from '../acceptor/state.js';
import { needsUploading, uploadedPartial, type PartialCurrent } from '../remote/partial_backup.js';
import { lsnMin, segmentNumber, segmentStartLsn, type Lsn } from '../wal/lsn.js';

/**
 * Partial-backup records (uploads in progress or objects to delete) above which no new partial upload starts:
 * 64 records are ~16 KiB of the control file, well inside what its size budget leaves (control_file.ts).
 */
export const PARTIAL_GARBAGE_RECORDS_MAX = 64;

/** Too many partial-backup records wait for deletion: the partial-backup job only collects garbage. */
export function partialGarbageFull(segments: readonly PartialRemoteSegment[]): boolean {
  let garbage = 0;
  for (const segment of segments) if (segment.status !== 'Uploaded') garbage += 1;
  return garbage >= PARTIAL_GARBAGE_RECORDS_MAX;
}

/** The state-block slots the decisions read. */
export interface ManagerSnapshot {
  flushLsn: Lsn;
  /** End of the bytes durable on disk; the writer writes only at or after it (state_block.ts). */
  syncedLsn: Lsn;
  commitLsn: Lsn;
  backupLsn: Lsn;
  peerHorizonLsn: Lsn;
  remoteConsistentLsn: Lsn;
  persistedCommitLsn: Lsn;
  persistedBackupLsn: Lsn;
  persistedPeerHorizonLsn: Lsn;
  persistedRemoteConsistentLsn: Lsn;
  lastLogTerm: bigint;
  proposerCount: bigint;
  readerCount: bigint;
  readerHorizonLsn: Lsn;
}

/** What the manager itself knows: its jobs, retry times (ms, its monotonic clock) and remote state. */
export interface ManagerFacts {
  nowMs: number;
  segmentSizeBytes: number;
  offloaded: boolean;
  uploadedEndSegno: bigint;
  backupRunning: number;
  backupRetryAtMs: number | null;
  persistRunning: boolean;
  lastSaveMs: number;
  saveRetryAtMs: number;
  removalRunning: boolean;
  removalRetryAtMs: number;
  /** Every local segment numbered ≤ this is gone (−1 when none ever was). */
  lastRemovedSegno: bigint;
  /** The timeline directory may hold recycled segments (a removal kept some, or the manager just started). */
  recycledHeld: boolean;
  partialRunning: boolean;
  partialRetryAtMs: number;
  partialSegments: readonly PartialRemoteSegment[];
  /** When flush, commit or last_log_term last changed. */
  lastChangeMs: number;
  guards: number;
  evictRunning: boolean;
  evictNotBeforeMs: number;
  evictRetryAtMs: number;
}

export interface ManagerSettings {
  controlFileSaveIntervalMs: number;
  partialBackupTimeoutMs: number;
  enableOffload: boolean;
}

export interface ManagerPlan {
  /** Advance the backup queue to this segment (exclusive); null when offloaded. */
  backupTargetSegno: bigint | null;
  /** Tell main this backup_lsn (our confirmed upload end); null when it already knows. */
  reportBackupLsn: Lsn | null;
  active: boolean;
  save: boolean;
  removeUpToSegno: bigint | null;
  /** Delete the recycled segments (in the removal slot). */
  dropRecycled: boolean;
  /** Start the partial-backup job (`ManagerJobs.startPartialUpload`): an upload, or garbage collection alone. */
  uploadPartial: boolean;
  /** The planned partial-backup job is garbage collection alone (`partialGarbageFull`); implies `uploadPartial`. */
  collectPartialGarbage: boolean;
  evict: boolean;
  /** Look again at this time even if nothing changes (Infinity: only on a change). */
  wakeAtMs: number;
  status: string;
}

export const partialCurrentOf = (snapshot: ManagerSnapshot): PartialCurrent => ({ flushLsn: snapshot.flushLsn, commitLsn: snapshot.commitLsn, term: snapshot.lastLogTerm });

export function isControlFileAhead(snapshot: ManagerSnapshot): boolean {
  return (
    snapshot.commitLsn > snapshot.persistedCommitLsn ||
    snapshot.backupLsn > snapshot.persistedBackupLsn ||
    snapshot.peerHorizonLsn > snapshot.persistedPeerHorizonLsn ||
    snapshot.remoteConsistentLsn > snapshot.persistedRemoteConsistentLsn
  );
}

/** The highest segment removal may delete, or −1. Always below the segment the writer is in (see the header). */
export function removalLimitSegno(snapshot: ManagerSnapshot, segmentSizeBytes: number): bigint {
  let horizon = lsnMin(lsnMin(snapshot.persistedBackupLsn, snapshot.persistedCommitLsn), snapshot.flushLsn);
  horizon = lsnMin(horizon, snapshot.syncedLsn); // flush_lsn runs ahead of it after an XLOG_SWITCH
  if (snapshot.readerCount > 0n) horizon = lsnMin(horizon, snapshot.readerHorizonLsn);
  return segmentNumber(horizon, segmentSizeBytes) - 1n;
}

export function planPass(snapshot: ManagerSnapshot, facts: ManagerFacts, settings: ManagerSettings): ManagerPlan {
  const { nowMs, segmentSizeBytes } = facts;
  let wakeAtMs = Infinity;
  const wakeAt = (atMs: number): void => void (wakeAtMs = Math.min(wakeAtMs, atMs));
  const plan: ManagerPlan = { backupTargetSegno: null, reportBackupLsn: null, active: false, save: false, removeUpToSegno: null, dropRecycled: false, uploadPartial: false, collectPartialGarbage: false, evict: false, wakeAtMs, status: 'idle' };
  if (facts.offloaded) return { ...plan, status: 'offloaded' };
  const segno = (lsn: Lsn): bigint => segmentNumber(lsn, segmentSizeBytes);

  // WAL backup.
  const commitSegno = segno(snapshot.commitLsn);
  const uploadedEndLsn = segmentStartLsn(facts.uploadedEndSegno, segmentSizeBytes);
  const knownBackupLsn = uploadedEndLsn > snapshot.backupLsn ? uploadedEndLsn : snapshot.backupLsn;
  const backupNeeded = snapshot.proposerCount > 0n || commitSegno > segno(knownBackupLsn);
  if (commitSegno > facts.uploadedEndSegno) plan.backupTargetSegno = commitSegno;
  if (uploadedEndLsn > snapshot.backupLsn) plan.reportBackupLsn = uploadedEndLsn;
  if (facts.backupRetryAtMs !== null) wakeAt(facts.backupRetryAtMs);
  plan.active = backupNeeded || snapshot.proposerCount > 0n || snapshot.remoteConsistentLsn < snapshot.commitLsn;

  // Control-file save.
  const ahead = isControlFileAhead(snapshot);
  if (ahead && !facts.persistRunning) {
    const dueMs = Math.max(facts.lastSaveMs + settings.controlFileSaveIntervalMs, facts.saveRetryAtMs);
    const lagsSegment = snapshot.commitLsn - snapshot.persistedCommitLsn >= BigInt(segmentSizeBytes);
    if ((nowMs >= dueMs || lagsSegment) && nowMs >= facts.saveRetryAtMs) plan.save = true;
    else wakeAt(lagsSegment ? facts.saveRetryAtMs : dueMs);
  }

  // WAL removal.
  const limitSegno = removalLimitSegno(snapshot, segmentSizeBytes);
  if (limitSegno > facts.lastRemovedSegno && !facts.removalRunning) {
    if (nowMs >= facts.removalRetryAtMs) plan.removeUpToSegno = limitSegno;
    else wakeAt(facts.removalRetryAtMs);
  }

  // Recycled segments of a quiet timeline.
  if (facts.recycledHeld && snapshot.proposerCount === 0n && !facts.removalRunning && plan.removeUpToSegno === null) {
    const dueMs = Math.max(facts.lastChangeMs + settings.partialBackupTimeoutMs, facts.removalRetryAtMs);
    if (nowMs >= dueMs) plan.dropRecycled = true;
    else wakeAt(dueMs);
  }

  // Partial backup.
  const partialStale = planPartialBackup(snapshot, facts, settings, plan, wakeAt);

  // Eviction.
  if (settings.enableOffload && !facts.evictRunning && evictionReady(snapshot, facts, plan, { backupNeeded, ahead, partialStale })) {
    const dueMs = Math.max(facts.evictNotBeforeMs, facts.evictRetryAtMs);
    if (nowMs >= dueMs) plan.evict = true;
    else wakeAt(dueMs);
  }

  plan.wakeAtMs = wakeAtMs;
  plan.status = describe(plan, facts);
  return plan;
}

/**
 * The partial-backup part of `planPass`: sets `plan.uploadPartial` and `plan.collectPartialGarbage`, or asks
 * `wakeAt` for when to look again. Returns whether the partial object is stale (eviction waits for it).
 */
function planPartialBackup(snapshot: ManagerSnapshot, facts: ManagerFacts, settings: ManagerSettings, plan: ManagerPlan, wakeAt: (atMs: number) => void): boolean {
  const { nowMs } = facts;
  // Not while too many older objects wait for their deletion: each upload leaves one more record in the
  // control file when deletes keep failing, and the file's size is bounded. Those deletes are retried on
  // their own instead.
  // Garbage left by a failed cleanup while the upload itself is current is collected on the uploads' cadence
  // (a quiet timeline's next upload would otherwise be the only retry, which may never come).
  const current = partialCurrentOf(snapshot);
  const partialStale = snapshot.flushLsn > 0n && needsUploading(facts.partialSegments, current);
  const partialGarbage = facts.partialSegments.some((segment) => segment.status !== 'Uploaded');
  if (!facts.partialRunning && partialGarbageFull(facts.partialSegments)) {
    if (nowMs >= facts.partialRetryAtMs) {
      plan.uploadPartial = true;
      plan.collectPartialGarbage = true;
    } else wakeAt(facts.partialRetryAtMs);
  } else if ((partialStale || partialGarbage) && !facts.partialRunning) {
    const dueMs = Math.max(facts.lastChangeMs + settings.partialBackupTimeoutMs, facts.partialRetryAtMs);
    if (nowMs >= dueMs) {
      plan.uploadPartial = true;
      plan.collectPartialGarbage = !partialStale; // an upload collects the garbage after it anyway
    } else wakeAt(dueMs);
  }
  return partialStale;
}

/**
 * Whether eviction may start, its not-before and retry times aside (see the header): nothing connected or
 * guarded, no job running, retried or planned this pass, everything remote and only the last segment local.
 */
function evictionReady(snapshot: ManagerSnapshot, facts: ManagerFacts, plan: ManagerPlan, pending: { backupNeeded: boolean; ahead: boolean; partialStale: boolean }): boolean {
  const uploaded = uploadedPartial(facts.partialSegments);
  const quiet = snapshot.proposerCount === 0n && snapshot.readerCount === 0n && facts.guards === 0;
  const noJobs = facts.backupRunning === 0 && facts.backupRetryAtMs === null && !facts.persistRunning && !facts.removalRunning && !facts.partialRunning;
  const allRemote = !pending.backupNeeded && !pending.ahead && !pending.partialStale && uploaded !== null && uploaded.commitLsn === snapshot.persistedCommitLsn;
  const onlyLastSegmentLocal = facts.lastRemovedSegno + 1n >= segmentNumber(snapshot.flushLsn, facts.segmentSizeBytes);
  return quiet && noJobs && allRemote && onlyLastSegmentLocal && !plan.save && plan.removeUpToSegno === null && !plan.dropRecycled && !plan.uploadPartial;
}

function describe(plan: ManagerPlan, facts: ManagerFacts): string {
  const parts: string[] = [];
  if (facts.backupRunning > 0 || plan.backupTargetSegno !== null) parts.push('backup');
  if (facts.backupRetryAtMs !== null) parts.push('backup-retry');
  if (facts.persistRunning || plan.save) parts.push('save');
  if (facts.removalRunning || plan.removeUpToSegno !== null || plan.dropRecycled) parts.push('removal');
  if (plan.collectPartialGarbage) parts.push('partial-gc');
  else if (facts.partialRunning || plan.uploadPartial) parts.push('partial');
  if (facts.evictRunning || plan.evict) parts.push('evict');
  return parts.length === 0 ? (Number.isFinite(plan.wakeAtMs) ? 'waiting' : 'idle') : parts.join('+');
}
