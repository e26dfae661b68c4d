/**
 * A timeline manager's background jobs and their bookkeeping. The manager's loop
 * (`manager.ts`) decides when a job runs (`manager_decisions.ts`); this module starts it, holds its slot (at most one
 * job of each kind at a time) and keeps what the next decision needs: retry times, the last save, the last removed
 * segment, the partial segment records. Jobs: control-file saves (through main), WAL removal (`wal_removal.ts`),
 * partial segment upload and garbage collection (`remote/partial_backup.ts`), and eviction and restore with the
 * residency guards (`eviction.ts`). The segment backup queue retries on its own and is `manager_backup.ts`; this
 * module reads how far it got, for the decisions and for WAL read from remote storage.
 *
 * Nothing restarts the loop, so a job failure is logged and becomes a retry time (`JOB_RETRY_MS` later; a failed
 * eviction backs off as Neon's does), never a throw; an abort (the manager stopping) is silent. Every job ends by
 * kicking the loop. Memory: the eviction control is created on first use and dropped when idle (a node may hold
 * 10,000 idle timelines). Coordinator-wide permits bound the segments these jobs hold in memory: a partial upload
 * waits for one of `partialBackupPermits` (partial_backup.ts); an eviction takes one of `evictionPermits` only if
 * one is free and otherwise tries again later, as Neon's does (so no eviction queues, and nothing waits behind a
 * queue of them); an un-eviction holds one of the larger `unevictionPermits`, which only a guard of an offloaded
 * timeline waits for, outside the residency mutex (eviction.ts). A guard of a resident timeline waits for no permit.
 * Partial-backup records waiting for deletion are bounded: at PARTIAL_GARBAGE_RECORDS_MAX the partial-backup slot
 * runs garbage collection alone (retried like any job) until they are gone. Coordinator thread.
 * Abort: jobs run under the manager's signal (uploads abort; a removal or a rename finishes its file first), and
 * `ended()` waits for them.
 */
import type { EvictionState, PartialRemoteSegment } from '../acceptor/state.js';
import type { StateBlock } from '../ingest/state_block.js';
import { collectPartialGarbage, uploadPartialSegment, uploadedPartial, type PartialBackupDeps } from '../remote/partial_backup.js';
import { readRemoteWal } from '../remote/wal_download.js';
import { AssertionError, assert } from '../sync/assert.js';
import { formatLsn, segmentNumber, segmentStartLsn, type Lsn } from '../wal/lsn.js';
import type { ManagerPersist, TimelineRegistration } from './coordinator_protocol.js';
import { EvictionControl } from './eviction.js';
import type { TimelineManager } from './manager.js';
import type { ManagerBackup } from './manager_backup.js';
import { partialCurrentOf, type ManagerFacts, type ManagerSnapshot } from './manager_decisions.js';
import type { ManagerShared } from './manager_shared.js';
import { dropRecycledSegments, localWal, removeSegmentsUpTo } from './wal_removal.js';

/** A failed save, removal or partial upload is retried after this long; a failed eviction after at least this long. */
export const JOB_RETRY_MS = 2_000;

/** What the jobs and the backup queue use of their manager: identity, cancellation, wakeup, state block and log. */
export type JobsOwner = Pick<TimelineManager, 'ttid' | 'tenantId' | 'timelineId' | 'dir' | 'segmentSizeBytes' | 'stopping' | 'signal' | 'kick' | 'snapshot' | 'log'>;

type Job = Promise<void> | null;

export class ManagerJobs {
  /** Created on first use (a guard, an eviction): most idle timelines never need one. */
  #evictionControl: EvictionControl | null = null;
  #initialEviction: EvictionState;
  #partialSegments: PartialRemoteSegment[];
  #persistJob: Job = null;
  #removalJob: Job = null;
  #partialJob: Job = null;
  #evictJob: Job = null;
  #lastSaveMs: number;
  #saveRetryAtMs = 0;
  #removalRetryAtMs = 0;
  #partialRetryAtMs = 0;
  #evictRetryAtMs = 0;
  #evictNotBeforeMs: number;
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
    this.#evictNotBeforeMs = startMs + shared.random() * shared.config.evictionMinResidentMs;
    this.#initialEviction = shareablePresent(registration.evictionState);
  }

  get offloaded(): boolean {
    return this.#evictionControl?.offloaded ?? this.#initialEviction.kind === 'Offloaded';
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
      guards: (this.#evictionControl?.guardCount ?? 0),
      evictRunning: this.#evictJob !== null,
      evictNotBeforeMs: this.#evictNotBeforeMs,
      evictRetryAtMs: this.#evictRetryAtMs,
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
        await this.#eviction().removeLeftovers();
      }
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      if (!this.owner.stopping) this.owner.log('warn', 'timeline manager start: local WAL scan or cleanup failed', { err: describeError(error) });
    } finally {
      this.#dropIdleEviction();
    }
    if (this.#partialSegments.some((segment) => segment.status !== 'Uploaded')) this.#startPartialGarbageCollection();
  }

  /** Waits until every running job has ended (the manager is stopping and has cancelled its signal). */
  async ended(): Promise<void> {
    await Promise.all([this.#persistJob, this.#removalJob, this.#partialJob, this.#evictJob]);
  }

  /** Saves the control file (through main) and notes when. */
  async save(): Promise<void> {
    await this.#persist({});
    this.#lastSaveMs = this.shared.nowMs();
  }

  /**
   * Grants residency guard `guardId` (chosen by main), unevicting first when offloaded. It queues for the
   * residency mutex at once: a resident timeline's guard waits at most for a running eviction, never for a
   * permit; an offloaded one's takes an un-eviction permit (eviction.ts).
   */
  async acquireGuard(guardId: number): Promise<void> {
    try {
      await this.#eviction().acquireGuard(guardId);
    } finally {
      this.#dropIdleEviction();
    }
  }

  /** Releases guard `guardId`, or ends its pending grant (and any wait for a permit). */
  releaseGuard(guardId: number): void {
    if (this.#evictionControl?.releaseGuard(guardId) === true) this.owner.kick();
    this.#dropIdleEviction();
  }

  /** WAL from remote storage for a reader (§11): at most up to the end of `startLsn`'s segment. */
  async readRemoteWal(startLsn: Lsn, lengthBytes: number): Promise<Uint8Array> {
    const { owner } = this;
    const backupLsn = this.backup.backupLsn;
    const deps = { tenantId: owner.tenantId, timelineId: owner.timelineId, segmentSizeBytes: owner.segmentSizeBytes, remote: this.shared.remote, signal: owner.signal() };
    return readRemoteWal(deps, startLsn, lengthBytes, { backupLsn, uploadedPartial: uploadedPartial(this.#partialSegments) });
  }

  startSave(): void {
    const job = this.#runJob('control file save', () => this.save(), (atMs) => (this.#saveRetryAtMs = atMs));
    this.#persistJob = job.finally(() => this.#jobEnded(() => (this.#persistJob = null)));
  }

  startRemoval(removeUpToSegno: bigint): void {
    assert(removeUpToSegno < this.#segno(this.block.get('flushLsn')), 'removal never reaches the segment being written');
    const job = this.#runJob('WAL removal', async () => {
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
    const job = this.#runJob('recycled segment cleanup', async () => {
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
    const job = this.#runJob('partial segment upload', async () => {
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
    const job = this.#runJob('partial backup garbage collection', async () => {
      this.#partialSegments = await collectPartialGarbage(this.#partialDeps(), this.#partialSegments);
    }, (atMs) => (this.#partialRetryAtMs = atMs));
    this.#partialJob = job.finally(() => this.#jobEnded(() => (this.#partialJob = null)));
  }

  startEviction(): void {
    const job = this.#runJob('eviction', async () => {
      // Neon: no permit free, try again later. Nothing waits for an eviction permit (eviction.ts).
      const releasePermit = this.shared.evictionPermits.tryAcquire();
      if (releasePermit === null) {
        this.#evictRetryAtMs = this.#evictionFailedRetryAtMs();
        return;
      }
      let evicted: boolean;
      try {
        evicted = await this.#eviction().evict();
      } finally {
        releasePermit();
        this.#dropIdleEviction();
      }
      if (evicted) this.block.set('evicted', 1n);
      else this.#evictRetryAtMs = this.shared.nowMs() + JOB_RETRY_MS;
    }, () => (this.#evictRetryAtMs = this.#evictionFailedRetryAtMs()));
    this.#evictJob = job.finally(() => this.#jobEnded(() => (this.#evictJob = null)));
  }

  /**
   * When a failed eviction is tried again: after a random fraction of eviction_min_resident, as Neon does, but
   * never sooner than other jobs retry. A failure that repeats (a local segment that differs from its remote
   * copy, remote storage down) then costs its segment read and GET that rarely, not every JOB_RETRY_MS.
   */
  #evictionFailedRetryAtMs(): number {
    return this.shared.nowMs() + Math.max(JOB_RETRY_MS, this.shared.random() * this.shared.config.evictionMinResidentMs);
  }

  /**
   * Runs a job: its failure is logged and turned into a retry time (`setRetryAtMs`), never thrown; an abort
   * (the manager stopping) is silent. The returned promise is the job's slot, cleared when it ends, and the
   * loop is kicked then.
   */
  #runJob(name: string, work: () => Promise<void>, setRetryAtMs: (atMs: number) => void): Promise<void> {
    return (async () => {
      try {
        await work();
      } catch (error) {
        if (error instanceof AssertionError) throw error;
        if (!this.owner.stopping) {
          setRetryAtMs(this.shared.nowMs() + JOB_RETRY_MS);
          this.owner.log('warn', `${name} failed; will retry`, { err: describeError(error) });
        }
      }
    })();
  }

  #jobEnded(clear: () => void): void {
    clear();
    this.owner.kick();
  }

  #eviction(): EvictionControl {
    const { owner } = this;
    this.#evictionControl ??= new EvictionControl(
      {
        tenantId: owner.tenantId,
        timelineId: owner.timelineId,
        dir: owner.dir,
        segmentSizeBytes: owner.segmentSizeBytes,
        shared: this.shared,
        signal: () => owner.signal(),
        snapshot: () => owner.snapshot(),
        partialSegments: () => this.#partialSegments,
        persist: (update) => this.#persist(update),
        onRestored: (flushLsn) => this.#onRestored(flushLsn),
        log: (level, message, fields) => owner.log(level, message, fields),
      },
      this.#initialEviction,
    );
    return this.#evictionControl;
  }

  /** Keeps only the eviction state once no guard, grant or transition needs the control object. */
  #dropIdleEviction(): void {
    const control = this.#evictionControl;
    if (control === null || !control.idle) return;
    this.#initialEviction = shareablePresent(control.state);
    this.#evictionControl = null;
  }

  #onRestored(flushLsn: Lsn): void {
    this.block.set('evicted', 0n);
    this.#lastRemovedSegno = this.#segno(flushLsn) - 1n;
    this.#publishLocalStart();
    this.#evictNotBeforeMs = this.shared.nowMs() + this.shared.random() * this.shared.config.evictionMinResidentMs;
    this.owner.kick();
  }

  async #persist(update: ManagerPersist): Promise<void> {
    await this.shared.host.persist(this.owner.ttid, update);
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
        await this.#persist({ partialSegments: segments });
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

/** One `Present` state for every manager that is not offloaded (no object each). Never changed. */
const PRESENT: EvictionState = Object.freeze({ kind: 'Present' });

function shareablePresent(state: EvictionState): EvictionState {
  return state.kind === 'Present' ? PRESENT : state;
}

/** An error as a log field: its name and message. */
export function describeError(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}
