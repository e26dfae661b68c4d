/**
 * A timeline manager's background jobs and their bookkeeping. The manager's loop
 * (`manager.ts`) decides when a job runs (`manager_decisions.ts`); this module starts it, holds its slot (at most one
 * job of each kind at a time) and keeps what the next decision needs: retry times, the last save, the last removed
 * segment, the partial segment records. Jobs: control-file saves (through main), WAL removal (`wal_removal.ts`),
 * partial segment upload and garbage collection (`remote/partial_backup.ts`), and eviction and restore with the
 * residency guards (`manager_eviction.ts`, over `eviction.ts`; this module delegates them there and resets the
 * local WAL bookkeeping on a restore). The segment backup queue retries on its own and is `manager_backup.ts`;
 * this module reads how far it got, for the decisions and for WAL read from remote storage.
 *
 * Nothing restarts the loop, so a job failure is logged and becomes a retry time (`JOB_RETRY_MS` later; a failed
 * eviction backs off as Neon's does), never a throw; an abort (the manager stopping) is silent (the runner is
 * `manager_job_runner.ts`). Every job ends by kicking the loop. Coordinator-wide permits bound the segments these
 * jobs hold in memory: a partial upload waits for one of `partialBackupPermits` (partial_backup.ts); eviction and
 * un-eviction permits, and the eviction control's memory, are `manager_eviction.ts`'s.
 * Partial-backup records waiting for deletion are bounded: at PARTIAL_GARBAGE_RECORDS_MAX the partial-backup slot
 * runs garbage collection alone (retried like any job) until they are gone. Coordinator thread.
 * Abort: jobs run under the manager's signal (uploads abort; a removal or a rename finishes its file first), and
 * `ended()` waits for them.
 */
import type { PartialRemoteSegment } from '../acceptor/state.js';
import type { StateBlock } from '../ingest/state_block.js';
import { collectPartialGarbage, uploadPartialSegment, uploadedPartial, type PartialBackupDeps } from '../remote/partial_backup.js';
import { readRemoteWal } from '../remote/wal_download.js';
import { AssertionError, assert } from '../sync/assert.js';
import { formatLsn, segmentNumber, segmentStartLsn, type Lsn } from '../wal/lsn.js';
import type { ManagerPersist, TimelineRegistration } from './coordinator_protocol.js';
import type { ManagerBackup } from './manager_backup.js';
import { partialCurrentOf, type ManagerFacts, type ManagerSnapshot } from './manager_decisions.js';
import { ManagerEviction, type EvictionJobsHost } from './manager_eviction.js';
import { describeError, runJob, type Job, type JobsOwner } from './manager_job_runner.js';
import type { ManagerShared } from './manager_shared.js';
import { dropRecycledSegments, localWal, removeSegmentsUpTo } from './wal_removal.js';

export class ManagerJobs implements EvictionJobsHost {
  readonly #eviction: ManagerEviction;
  #partialSegments: PartialRemoteSegment[];
  #persistJob: Job = null;
  #removalJob: Job = null;
  #partialJob: Job = null;
  #lastSaveMs: number;
  #saveRetryAtMs = 0;
  #removalRetryAtMs = 0;
  #partialRetryAtMs = 0;
  #lastRemovedSegno = -1n;
  /** Recycled segments may be on disk (a removal kept some; at start, until `init` has looked). */
  #recycledHeld = true;

  /** `startMs`: when the manager was made (its clock); the first save and eviction are timed from it. */
  constructor(
    private readonly owner: JobsOwner,
    registration: TimelineRegistration,
    private readonly block: StateBlock,
    private readonly shared: ManagerShared,
    private readonly backup: ManagerBackup,
    startMs: number,
  ) {
    this.#partialSegments = registration.partialSegments; // deserialized from the message: ours alone
    this.#lastSaveMs = startMs;
    // The jobs are the eviction's host themselves: no closures per timeline (a node may hold 10,000 idle ones).
    this.#eviction = new ManagerEviction(owner, block, shared, this, registration.evictionState, startMs);
  }

  get offloaded(): boolean {
    return this.#eviction.offloaded;
  }

  /** The running WAL removal, if any (a checkpoint waits for it). */
  get removalJob(): Promise<void> | null {
    return this.#removalJob;
  }

  /** The decisions' input: what the jobs and the backup queue know, at `nowMs`, with the loop's `lastChangeMs`. */
  facts(nowMs: number, lastChangeMs: number): ManagerFacts {
    const { backup } = this;
    return {
      nowMs,
      segmentSizeBytes: this.owner.segmentSizeBytes,
      offloaded: this.offloaded,
      uploadedEndSegno: backup.uploadedEndSegno,
      backupRunning: backup.running,
      backupRetryAtMs: backup.retryAtMs,
      persistRunning: this.#persistJob !== null,
      lastSaveMs: this.#lastSaveMs,
      saveRetryAtMs: this.#saveRetryAtMs,
      removalRunning: this.#removalJob !== null,
      removalRetryAtMs: this.#removalRetryAtMs,
      lastRemovedSegno: this.#lastRemovedSegno,
      recycledHeld: this.#recycledHeld,
      partialRunning: this.#partialJob !== null,
      partialRetryAtMs: this.#partialRetryAtMs,
      partialSegments: this.#partialSegments,
      lastChangeMs,
      guards: this.#eviction.guardCount,
      evictRunning: this.#eviction.job !== null,
      evictNotBeforeMs: this.#eviction.notBeforeMs,
      evictRetryAtMs: this.#eviction.retryAtMs,
    };
  }

  /**
   * Learns where local WAL starts and whether recycled segments are there (so a node with thousands of
   * timelines does not list every directory again when they all turn quiet), and finishes what a crash may
   * have left half done. A failure here is logged and left to the jobs (removal lists the directory again;
   * eviction cleanup repeats at restart).
   */
  async init(): Promise<void> {
    try {
      const { range, recycledFiles } = await localWal(this.owner.dir, this.owner.segmentSizeBytes);
      this.#recycledHeld = recycledFiles > 0;
      this.#lastRemovedSegno = range !== null ? range.lowest - 1n : this.#segno(this.block.get('flushLsn')) - 1n;
      this.#publishLocalStart();
      if (this.offloaded) {
        this.block.set('evicted', 1n);
        await this.#eviction.removeLeftovers();
      }
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      if (!this.owner.stopping) this.owner.log('warn', 'timeline manager start: local WAL scan or cleanup failed', { err: describeError(error) });
    } finally {
      this.#eviction.dropIdle();
    }
    if (this.#partialSegments.some((segment) => segment.status !== 'Uploaded')) this.#startPartialGarbageCollection();
  }

  /** Waits until every running job has ended (the manager is stopping and has cancelled its signal). */
  async ended(): Promise<void> {
    await Promise.all([this.#persistJob, this.#removalJob, this.#partialJob, this.#eviction.job]);
  }

  /** Saves the control file (through main) and notes when. */
  async save(): Promise<void> {
    await this.persist({});
    this.#lastSaveMs = this.shared.nowMs();
  }

  /** Grants residency guard `guardId` (chosen by main), unevicting first when offloaded (manager_eviction.ts). */
  acquireGuard(guardId: number): Promise<void> {
    return this.#eviction.acquireGuard(guardId);
  }

  /** Releases guard `guardId`, or ends its pending grant (and any wait for a permit). */
  releaseGuard(guardId: number): void {
    this.#eviction.releaseGuard(guardId);
  }

  /** WAL from remote storage for a reader (§11): at most up to the end of `startLsn`'s segment. */
  async readRemoteWal(startLsn: Lsn, lengthBytes: number): Promise<Uint8Array> {
    const { owner } = this;
    const backupLsn = this.backup.backupLsn;
    const deps = { tenantId: owner.tenantId, timelineId: owner.timelineId, segmentSizeBytes: owner.segmentSizeBytes, remote: this.shared.remote, signal: owner.signal() };
    return readRemoteWal(deps, startLsn, lengthBytes, { backupLsn, uploadedPartial: uploadedPartial(this.#partialSegments) });
  }

  startSave(): void {
    const job = runJob(this.owner, this.shared, 'control file save', () => this.save(), (atMs) => (this.#saveRetryAtMs = atMs));
    this.#persistJob = job.finally(() => this.#jobEnded(() => (this.#persistJob = null)));
  }

  startRemoval(removeUpToSegno: bigint): void {
    assert(removeUpToSegno < this.#segno(this.block.get('flushLsn')), 'removal never reaches the segment being written');
    const job = runJob(this.owner, this.shared, 'WAL removal', async () => {
      const removed = await removeSegmentsUpTo(this.owner.dir, this.owner.segmentSizeBytes, removeUpToSegno, { noSync: this.shared.config.noSync, recycleMax: this.shared.config.walRecycleSegments, failpoints: this.shared.failpoints, signal: this.owner.signal() });
      this.#lastRemovedSegno = removeUpToSegno;
      if (removed > 0 && this.shared.config.walRecycleSegments > 0) this.#recycledHeld = true;
      this.shared.counters.segmentsRemoved += removed;
      this.#publishLocalStart();
      if (removed > 0) this.owner.log('debug', 'removed local WAL', { removed_segments: removed, up_to_segno: String(removeUpToSegno) });
    }, (atMs) => (this.#removalRetryAtMs = atMs));
    this.#removalJob = job.finally(() => this.#jobEnded(() => (this.#removalJob = null)));
  }

  /** Deletes the recycled segments of a quiet timeline, in the removal slot (the two never overlap). */
  startRecycledDrop(): void {
    const job = runJob(this.owner, this.shared, 'recycled segment cleanup', async () => {
      const dropped = await dropRecycledSegments(this.owner.dir);
      this.#recycledHeld = false;
      if (dropped > 0) this.owner.log('debug', 'deleted the recycled segments of a quiet timeline', { segments: dropped });
    }, (atMs) => (this.#removalRetryAtMs = atMs));
    this.#removalJob = job.finally(() => this.#jobEnded(() => (this.#removalJob = null)));
  }

  /**
   * Starts the partial-backup job the decisions planned (`plan.uploadPartial`): an upload, or garbage collection
   * alone (`plan.collectPartialGarbage`).
   */
  startPartialUpload(snapshot: ManagerSnapshot, garbageOnly: boolean): void {
    if (garbageOnly) return this.#startPartialGarbageCollection();
    const current = partialCurrentOf(snapshot);
    const job = runJob(this.owner, this.shared, 'partial segment upload', async () => {
      this.#partialSegments = await uploadPartialSegment(this.#partialDeps(), this.#partialSegments, current);
      this.shared.counters.partialUploads += 1;
      this.owner.log('debug', 'uploaded partial segment', { flush_lsn: formatLsn(current.flushLsn), term: String(current.term) });
    }, (atMs) => (this.#partialRetryAtMs = atMs));
    this.#partialJob = job.finally(() => this.#jobEnded(() => (this.#partialJob = null)));
  }

  /**
   * Deletes the objects of every non-Uploaded partial record, then persists the list without them, in the
   * partial-backup slot. A failure keeps the list as last persisted (`#partialDeps().persist` updates it only
   * after main has saved it) and is retried at `partialRetryAtMs`.
   */
  #startPartialGarbageCollection(): void {
    assert(this.#partialJob === null, 'one partial-backup job at a time');
    const job = runJob(this.owner, this.shared, 'partial backup garbage collection', async () => {
      this.#partialSegments = await collectPartialGarbage(this.#partialDeps(), this.#partialSegments);
    }, (atMs) => (this.#partialRetryAtMs = atMs));
    this.#partialJob = job.finally(() => this.#jobEnded(() => (this.#partialJob = null)));
  }

  /** Starts an eviction in its slot (manager_eviction.ts). */
  startEviction(): void {
    this.#eviction.startEviction();
  }

  #jobEnded(clear: () => void): void {
    clear();
    this.owner.kick();
  }

  /** The partial segment records (EvictionJobsHost: the eviction control compares the local `.partial` with them). */
  partialSegments(): readonly PartialRemoteSegment[] {
    return this.#partialSegments;
  }

  /** Persists manager state through main (also for the eviction control: EvictionJobsHost). */
  async persist(update: ManagerPersist): Promise<void> {
    await this.shared.host.persist(this.owner.ttid, update);
  }

  /** The timeline was restored from remote storage (EvictionJobsHost): local WAL starts at `flushLsn`'s segment. */
  onLocalWalRestored(flushLsn: Lsn): void {
    this.#lastRemovedSegno = this.#segno(flushLsn) - 1n;
    this.#publishLocalStart();
  }

  #partialDeps(): PartialBackupDeps {
    return {
      tenantId: this.owner.tenantId,
      timelineId: this.owner.timelineId,
      dir: this.owner.dir,
      segmentSizeBytes: this.owner.segmentSizeBytes,
      nodeId: this.shared.config.nodeId,
      remote: this.shared.remote,
      permits: this.shared.partialBackupPermits,
      failpoints: this.shared.failpoints,
      signal: this.owner.signal(),
      persist: async (segments) => {
        await this.persist({ partialSegments: segments });
        this.#partialSegments = structuredClone(segments);
      },
      current: () => partialCurrentOf(this.owner.snapshot()),
    };
  }

  /** Publishes where local WAL starts: no WAL below this segment start is on local disk. */
  #publishLocalStart(): void {
    this.block.set('removedUpToLsn', this.#lastRemovedSegno < 0n ? 0n : segmentStartLsn(this.#lastRemovedSegno + 1n, this.owner.segmentSizeBytes));
  }

  #segno(lsn: Lsn): bigint {
    return segmentNumber(lsn, this.owner.segmentSizeBytes);
  }
}
