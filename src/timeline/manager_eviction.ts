/**
 * A timeline manager's side of residency (`eviction.ts`): the eviction job and the residency guard grants.
 * The decisions (`manager_decisions.ts`) say when to evict; this module runs the eviction in its slot (one at a
 * time) and keeps what the next decision needs: the guard count, whether the timeline is offloaded, and when
 * an eviction may start (`evictNotBeforeMs`, a random fraction of eviction_min_resident after the manager
 * started or the timeline was restored) or be tried again (a failed eviction backs off as Neon's does).
 * Separate from `manager_jobs.ts` (the other jobs, and the local WAL bookkeeping a restore resets), which
 * delegates guards and evictions here: residency has state of its own (the control object, created and dropped
 * as needed, its permits and its own retry timing) that no other job touches.
 *
 * Memory: the EvictionControl is created on first use (a guard, an eviction, the start-up cleanup of an
 * offloaded timeline) and dropped when idle, keeping only its state, one shared object while `Present` (a node
 * may hold 10,000 idle timelines). Permits (coordinator-wide): an eviction takes one of `evictionPermits` only
 * if one is free and otherwise tries again later, as Neon's does (so no eviction queues, and nothing waits
 * behind a queue of them); an un-eviction holds one of the larger `unevictionPermits`, which only a guard of an
 * offloaded timeline waits for, outside the residency mutex (eviction.ts). A guard of a resident timeline waits
 * for no permit. Coordinator thread. Abort: the eviction runs under the manager's signal, and `job` is what the
 * manager's `ended()` waits for.
 */
import type { EvictionState, PartialRemoteSegment } from '../acceptor/state.js';
import type { StateBlock } from '../ingest/state_block.js';
import type { Lsn } from '../wal/lsn.js';
import type { ManagerPersist } from './coordinator_protocol.js';
import { EvictionControl } from './eviction.js';
import { JOB_RETRY_MS, runJob, type Job, type JobsOwner } from './manager_job_runner.js';
import type { ManagerShared } from './manager_shared.js';

/** What the eviction job and the guards use of the manager's other jobs (`ManagerJobs`). */
export interface EvictionJobsHost {
  /** The partial segment records (the partial-backup job keeps them). */
  partialSegments(): readonly PartialRemoteSegment[];
  /** Persists manager state through main. */
  persist(update: ManagerPersist): Promise<void>;
  /** The timeline is local again from `flushLsn`'s segment on: the WAL removal bookkeeping starts there. */
  onLocalWalRestored(flushLsn: Lsn): void;
}

export class ManagerEviction {
  /** Created on first use (a guard, an eviction): most idle timelines never need one. */
  #evictionControl: EvictionControl | null = null;
  #initialEviction: EvictionState;
  #evictJob: Job = null;
  #evictRetryAtMs = 0;
  #evictNotBeforeMs: number;

  /** `startMs`: when the manager was made (its clock); the first eviction is timed from it. */
  constructor(
    private readonly owner: JobsOwner,
    private readonly block: StateBlock,
    private readonly shared: ManagerShared,
    private readonly host: EvictionJobsHost,
    evictionState: EvictionState,
    startMs: number,
  ) {
    this.#evictNotBeforeMs = startMs + shared.random() * shared.config.evictionMinResidentMs;
    this.#initialEviction = shareablePresent(evictionState);
  }

  get offloaded(): boolean {
    return this.#evictionControl?.offloaded ?? this.#initialEviction.kind === 'Offloaded';
  }

  /** Residency guards held now (the decisions evict only when there are none). */
  get guardCount(): number {
    return this.#evictionControl?.guardCount ?? 0;
  }

  /** The running eviction, if any. */
  get job(): Promise<void> | null {
    return this.#evictJob;
  }

  /** No eviction starts before this (ms, the manager's clock). */
  get notBeforeMs(): number {
    return this.#evictNotBeforeMs;
  }

  /** When a failed or refused eviction may be tried again (ms, the manager's clock). */
  get retryAtMs(): number {
    return this.#evictRetryAtMs;
  }

  /** Finishes what a crash may have left half done in an offloaded timeline (the caller then calls `dropIdle`). */
  removeLeftovers(): Promise<void> {
    return this.#eviction().removeLeftovers();
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
      this.dropIdle();
    }
  }

  /** Releases guard `guardId`, or ends its pending grant (and any wait for a permit). */
  releaseGuard(guardId: number): void {
    if (this.#evictionControl?.releaseGuard(guardId) === true) this.owner.kick();
    this.dropIdle();
  }

  startEviction(): void {
    const job = runJob(this.owner, this.shared, 'eviction', async () => {
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
        this.dropIdle();
      }
      if (evicted) this.block.set('evicted', 1n);
      else this.#evictRetryAtMs = this.shared.nowMs() + JOB_RETRY_MS;
    }, () => (this.#evictRetryAtMs = this.#evictionFailedRetryAtMs()));
    this.#evictJob = job.finally(() => {
      this.#evictJob = null;
      this.owner.kick();
    });
  }

  /** Keeps only the eviction state once no guard, grant or transition needs the control object. */
  dropIdle(): void {
    const control = this.#evictionControl;
    if (control === null || !control.idle) return;
    this.#initialEviction = shareablePresent(control.state);
    this.#evictionControl = null;
  }

  /**
   * When a failed eviction is tried again: after a random fraction of eviction_min_resident, as Neon does, but
   * never sooner than other jobs retry. A failure that repeats (a local segment that differs from its remote
   * copy, remote storage down) then costs its segment read and GET that rarely, not every JOB_RETRY_MS.
   */
  #evictionFailedRetryAtMs(): number {
    return this.shared.nowMs() + Math.max(JOB_RETRY_MS, this.shared.random() * this.shared.config.evictionMinResidentMs);
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
        partialSegments: () => this.host.partialSegments(),
        persist: (update) => this.host.persist(update),
        onRestored: (flushLsn) => this.#onRestored(flushLsn),
        log: (level, message, fields) => owner.log(level, message, fields),
      },
      this.#initialEviction,
    );
    return this.#evictionControl;
  }

  #onRestored(flushLsn: Lsn): void {
    this.block.set('evicted', 0n);
    this.host.onLocalWalRestored(flushLsn);
    this.#evictNotBeforeMs = this.shared.nowMs() + this.shared.random() * this.shared.config.evictionMinResidentMs;
    this.owner.kick();
  }
}

/** One `Present` state for every manager that is not offloaded (no object each). Never changed. */
const PRESENT: EvictionState = Object.freeze({ kind: 'Present' });

function shareablePresent(state: EvictionState): EvictionState {
  return state.kind === 'Present' ? PRESENT : state;
}
