/**
 * src/timeline/manager.ts: the timeline manager. There is one per timeline, running on the coordinator thread.
 * It owns its timeline's background jobs: control-file saves, WAL backup and partial backup, WAL removal, and eviction.
 * On each turn it reads one snapshot of the state block, decides from that snapshot alone which jobs to start or stop
 * (`manager_decisions.ts`, pure), then sleeps until the block changes, a job ends, a deadline passes or a message (such
 * as a guard request) arrives (`manager_wakeup.ts`). Invariants: local WAL is removed only after its upload is confirmed
 * and persisted and no reader needs it; nothing is evicted while a residency guard is held (`eviction.ts`). Nothing
 * restarts this loop, so a job failure becomes state (retry at a later deadline) and never a throw. `status` names the
 * current step.
 *
 * Passes are at least `MANAGER_PASS_INTERVAL_MS_MIN` apart, so a busy timeline's stream of changes coalesces into a few
 * passes per second. An idle manager has no timer, no wait of its own (its block's changes reach it through the
 * coordinator's StateWatcher, one wait per chunk of blocks) and costs no CPU; to keep 10,000 of them small, the backup
 * queue, the cancellation token and the promise `stop()` waits on are created on first use, and the ids and directory
 * are derived from `ttid`. Abort: `stop()` cancels every job (uploads abort; a removal or a rename finishes its file
 * first), waits for them, then leaves the state watcher.
 */
import { setMaxListeners } from 'node:events';
import { ttid, type EvictionState, type PartialRemoteSegment, type TenantId, type TimelineId } from '../acceptor/state.js';
import { ShutdownError } from '../errors.js';
import type { StateBlock } from '../ingest/state_block.js';
import { collectPartialGarbage, uploadPartialSegment, uploadedPartial, type PartialBackupDeps } from '../remote/partial_backup.js';
import type { RemoteStorage } from '../remote/remote_storage.js';
import { SegmentBackup } from '../remote/wal_backup.js';
import { readRemoteWal } from '../remote/wal_download.js';
import { timelineDir } from '../storage/layout.js';
import { AssertionError, assert } from '../sync/assert.js';
import { CancelToken, sleep } from '../sync/cancel.js';
import type { Failpoints } from '../sync/failpoints.js';
import type { Semaphore } from '../sync/semaphore.js';
import { formatLsn, lsnMax, segmentNumber, segmentStartLsn, type Lsn } from '../wal/lsn.js';
import type { LogLevel, ManagerPersist, TimelineMetrics, TimelineRegistration } from './coordinator_protocol.js';
import { EvictionControl } from './eviction.js';
import { partialCurrentOf, planPass, type ManagerFacts, type ManagerPlan, type ManagerSnapshot } from './manager_decisions.js';
import { ManagerWakeup } from './manager_wakeup.js';
import type { StateWatcher } from './state_watcher.js';
import { localSegmentRange, removeSegmentsUpTo } from './wal_removal.js';

/** Passes of one manager are at least this far apart; state changes in between coalesce. */
export const MANAGER_PASS_INTERVAL_MS_MIN = 100;
/** Abort listeners on a manager's signal: up to 64 parallel uploads (the config's ceiling) × a few each. */
const MANAGER_SIGNAL_LISTENERS_MAX = 512;
/** A failed save, removal, partial upload or eviction is retried after this long. */
export const JOB_RETRY_MS = 2_000;

export interface ManagerConfig {
  nodeId: bigint;
  /** Where timeline directories are (`storage/layout.ts`). */
  dataDir: string;
  noSync: boolean;
  controlFileSaveIntervalMs: number;
  partialBackupTimeoutMs: number;
  evictionMinResidentMs: number;
  enableOffload: boolean;
  deleteOffloadedWal: boolean;
  walBackupParallelJobs: number;
}

/** What the manager asks of the main thread (through the coordinator's RpcPort). */
export interface ManagerHost {
  persist(ttid: string, update: ManagerPersist): Promise<void>;
  reportBackupLsn(ttid: string, backupLsn: Lsn): void;
  reportActive(ttid: string, active: boolean): void;
  log(level: LogLevel, ttid: string, message: string, fields?: Record<string, unknown>): void;
}

/** Coordinator-wide counters every manager adds to. */
export interface ManagerCounters {
  iterations: number;
  segmentsUploaded: number;
  bytesUploaded: number;
  uploadFailures: number;
  segmentsRemoved: number;
  partialUploads: number;
  evictions: number;
  restores: number;
}

export interface ManagerShared {
  config: ManagerConfig;
  host: ManagerHost;
  /** Tells each manager when its state block changed. */
  stateWatcher: StateWatcher;
  remote: RemoteStorage;
  uploadSlots: Semaphore;
  failpoints: Failpoints;
  counters: ManagerCounters;
  nowMs: () => number;
  random: () => number;
}

type Job = Promise<void> | null;

export class TimelineManager {
  readonly ttid: string;
  readonly segmentSizeBytes: number;
  status = 'starting';
  readonly #block: StateBlock;
  readonly #wakeup: ManagerWakeup;
  /** Created on first use (a guard, an eviction): most idle timelines never need one. */
  #evictionControl: EvictionControl | null = null;
  #initialEviction: EvictionState;
  #cancel: CancelToken | null = null;
  #stopped = false;
  #backup: SegmentBackup | null = null;
  #backupStartSegno: bigint;
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
  #lastChangeMs: number;
  #seenFlushLsn = -1n;
  #seenCommitLsn = -1n;
  #seenTerm = -1n;
  #reportedBackupLsn = 0n;
  #active: boolean | null = null;
  #lastPassMs = -Infinity;
  #loop: 'new' | 'running' | 'ended' = 'new';
  /** What `stop()` waits on; made by the first `stop()` (an idle manager holds no promise). */
  #loopEnded: { promise: Promise<void>; resolve: () => void } | null = null;

  /** `block`: the timeline's state block, over the chunk main sent (`registration` names it). */
  constructor(registration: TimelineRegistration, block: StateBlock, private readonly shared: ManagerShared) {
    assert(registration.ttid === ttid(registration.tenantId, registration.timelineId), 'a ttid is tenant/timeline');
    this.ttid = registration.ttid;
    this.segmentSizeBytes = registration.segmentSizeBytes;
    this.#block = block;
    this.#wakeup = new ManagerWakeup(this.#block, shared.stateWatcher, shared.nowMs);
    this.#partialSegments = registration.partialSegments; // deserialized from the message: ours alone
    const now = shared.nowMs();
    this.#lastSaveMs = now;
    this.#lastChangeMs = now;
    this.#evictNotBeforeMs = now + shared.random() * shared.config.evictionMinResidentMs;
    this.#backupStartSegno = this.#segno(lsnMax(this.#block.get('backupLsn'), this.#block.get('localStartLsn')));
    this.#initialEviction = shareablePresent(registration.evictionState);
  }

  /** Current lags, computed when asked (at /metrics scrape time). */
  get metrics(): TimelineMetrics {
    const flushLsn = this.#block.get('flushLsn');
    const backupLsn = lsnMax(this.#block.get('backupLsn'), this.#backup?.uploadedEndLsn ?? 0n);
    const localStartLsn = this.#block.get('removedUpToLsn');
    return {
      tenantId: this.tenantId,
      timelineId: this.timelineId,
      backupLagBytes: flushLsn > backupLsn ? Number(flushLsn - backupLsn) : 0,
      removalLagBytes: flushLsn > localStartLsn ? Number(flushLsn - localStartLsn) : 0,
      evicted: this.#offloaded,
    };
  }

  get uploadsRunning(): number {
    return this.#backup?.running ?? 0;
  }

  get offloaded(): boolean {
    return this.#offloaded;
  }

  get active(): boolean {
    return this.#active === true;
  }

  /**
   * Ids and directory, derived from `ttid` when a job or a scrape needs them: an idle manager keeps one
   * string instead of four (10,000 managers on the coordinator).
   */
  get tenantId(): TenantId {
    return this.ttid.slice(0, this.ttid.indexOf('/')) as TenantId;
  }

  get timelineId(): TimelineId {
    return this.ttid.slice(this.ttid.indexOf('/') + 1) as TimelineId;
  }

  get dir(): string {
    return timelineDir(this.shared.config.dataDir, this.tenantId, this.timelineId);
  }

  start(): void {
    assert(this.#loop === 'new', 'a manager starts once');
    this.#loop = 'running';
    void this.#init().then(() => this.#turn());
  }

  /** Wakes the loop for a new pass (job ended, request arrived). */
  kick(): void {
    this.#wakeup.kick();
  }

  /** Cancels every job and waits until the loop and all jobs have ended. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#cancel?.cancel(new ShutdownError(`timeline manager ${this.ttid} is stopping`));
    this.kick();
    if (this.#loop !== 'running') return;
    this.#loopEnded ??= promiseWithResolve();
    await this.#loopEnded.promise;
  }

  /** Saves the control file now, runs a pass, and waits for the removal it starts. */
  async checkpoint(): Promise<void> {
    if (this.#stopped) throw new ShutdownError(`timeline manager ${this.ttid} is stopping`);
    await this.#persist({});
    if (this.#stopped) return;
    this.#lastSaveMs = this.shared.nowMs();
    this.#pass();
    await this.#removalJob;
  }

  /** Grants residency guard `guardId` (chosen by main), unevicting first when offloaded. */
  async acquireGuard(guardId: number): Promise<void> {
    try {
      await this.#eviction().acquireGuard(guardId);
    } finally {
      this.#dropIdleEviction();
    }
  }

  releaseGuard(guardId: number): void {
    if (this.#evictionControl?.releaseGuard(guardId) === true) this.kick();
    this.#dropIdleEviction();
  }

  /** WAL from remote storage for a reader (§11): at most up to the end of `startLsn`'s segment. */
  async readRemoteWal(startLsn: Lsn, lengthBytes: number): Promise<Uint8Array> {
    const backupLsn = lsnMax(this.#backup?.uploadedEndLsn ?? 0n, this.#block.get('backupLsn'));
    const deps = { tenantId: this.tenantId, timelineId: this.timelineId, segmentSizeBytes: this.segmentSizeBytes, remote: this.shared.remote, signal: this.#signal() };
    return readRemoteWal(deps, startLsn, lengthBytes, { backupLsn, uploadedPartial: uploadedPartial(this.#partialSegments) });
  }

  // ---- the loop ----

  /**
   * One turn of the loop: a pass, then arm the wakeup for the next turn. Not an async loop on purpose: an idle
   * manager keeps no suspended frame, only the callback armed here. Passes are at least
   * MANAGER_PASS_INTERVAL_MS_MIN apart; a wake earlier than that waits for the rest of the interval.
   */
  #turn(): void {
    if (this.#stopped) return void this.#finish();
    const sinceMs = this.shared.nowMs() - this.#lastPassMs;
    if (sinceMs < MANAGER_PASS_INTERVAL_MS_MIN) {
      this.#wakeup.arm(null, this.#lastPassMs + MANAGER_PASS_INTERVAL_MS_MIN, () => this.#throttled());
      return;
    }
    const seen = this.#block.changeCount;
    this.#wakeup.reset();
    const plan = this.#pass();
    this.#wakeup.arm(seen, plan.wakeAtMs, () => this.#turn());
  }

  /**
   * Woken during the throttle interval (by its timer, a kick, or a block wait armed earlier): only a stop
   * or the interval's end runs the next pass; state changes meanwhile are in that pass's snapshot.
   */
  #throttled(): void {
    if (this.#stopped || this.shared.nowMs() - this.#lastPassMs >= MANAGER_PASS_INTERVAL_MS_MIN) return this.#turn();
    this.#wakeup.arm(null, this.#lastPassMs + MANAGER_PASS_INTERVAL_MS_MIN, () => this.#throttled());
  }

  async #finish(): Promise<void> {
    this.status = 'stopping';
    this.#wakeup.release();
    try {
      await this.#backup?.stop();
      await Promise.all([this.#persistJob, this.#removalJob, this.#partialJob, this.#evictJob]);
    } finally {
      this.#cancel?.release();
      this.status = 'stopped';
      this.#loop = 'ended';
      this.#loopEnded?.resolve();
    }
  }

  /**
   * Learns where local WAL starts, and finishes what a crash may have left half done. A failure here is
   * logged and left to the jobs (removal lists the directory again; eviction cleanup repeats at restart).
   */
  async #init(): Promise<void> {
    try {
      const range = await localSegmentRange(this.dir, this.segmentSizeBytes);
      this.#lastRemovedSegno = range !== null ? range.lowest - 1n : this.#segno(this.#block.get('flushLsn')) - 1n;
      this.#publishLocalStart();
      if (this.#offloaded) {
        this.#block.set('evicted', 1n);
        await this.#eviction().removeLeftovers();
      }
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      this.#log('warn', 'timeline manager start: local WAL scan failed', { err: describeError(error) });
    }
    if (this.#partialSegments.some((segment) => segment.status !== 'Uploaded')) {
      const job = this.#runJob('partial backup garbage collection', async () => {
        this.#partialSegments = await collectPartialGarbage(this.#partialDeps(), this.#partialSegments);
      }, (atMs) => (this.#partialRetryAtMs = atMs));
      this.#partialJob = job.finally(() => this.#jobEnded(() => (this.#partialJob = null)));
    }
  }

  #pass(): ManagerPlan {
    const nowMs = this.shared.nowMs();
    this.#lastPassMs = nowMs;
    this.shared.counters.iterations += 1;
    const snapshot = this.#snapshot();
    this.#noteChanges(snapshot, nowMs);
    const knownSegno = this.#segno(lsnMax(snapshot.backupLsn, this.#block.get('localStartLsn')));
    if (this.#backup === null) this.#backupStartSegno = knownSegno > this.#backupStartSegno ? knownSegno : this.#backupStartSegno;
    else this.#backup.skipTo(knownSegno);
    const plan = planPass(snapshot, this.#facts(nowMs), this.shared.config);
    this.status = plan.status;
    if (plan.backupTargetSegno !== null) this.#backupQueue().advance(plan.backupTargetSegno);
    if (plan.reportBackupLsn !== null && plan.reportBackupLsn > this.#reportedBackupLsn) {
      this.#reportedBackupLsn = plan.reportBackupLsn;
      this.shared.host.reportBackupLsn(this.ttid, plan.reportBackupLsn);
    }
    if (plan.active !== this.#active) {
      this.#active = plan.active;
      this.shared.host.reportActive(this.ttid, plan.active);
    }
    if (plan.save) this.#startSave();
    if (plan.removeUpToSegno !== null) this.#startRemoval(plan.removeUpToSegno);
    if (plan.uploadPartial) this.#startPartialUpload(snapshot);
    if (plan.evict) this.#startEviction();
    return plan;
  }

  #snapshot(): ManagerSnapshot {
    const block = this.#block;
    return {
      flushLsn: block.get('flushLsn'),
      commitLsn: block.get('commitLsn'),
      backupLsn: block.get('backupLsn'),
      peerHorizonLsn: block.get('peerHorizonLsn'),
      remoteConsistentLsn: block.get('remoteConsistentLsn'),
      persistedCommitLsn: block.get('persistedCommitLsn'),
      persistedBackupLsn: block.get('persistedBackupLsn'),
      persistedPeerHorizonLsn: block.get('persistedPeerHorizonLsn'),
      persistedRemoteConsistentLsn: block.get('persistedRemoteConsistentLsn'),
      lastLogTerm: block.get('lastLogTerm'),
      proposerCount: block.get('proposerCount'),
      readerCount: block.get('readerCount'),
      readerHorizonLsn: block.get('readerHorizonLsn'),
    };
  }

  #facts(nowMs: number): ManagerFacts {
    const backup = this.#backup;
    return {
      nowMs,
      segmentSizeBytes: this.segmentSizeBytes,
      offloaded: this.#offloaded,
      uploadedEndSegno: backup?.uploadedEndSegno ?? this.#backupStartSegno,
      backupRunning: backup?.running ?? 0,
      backupRetryAtMs: backup?.retryAtMs ?? null,
      persistRunning: this.#persistJob !== null,
      lastSaveMs: this.#lastSaveMs,
      saveRetryAtMs: this.#saveRetryAtMs,
      removalRunning: this.#removalJob !== null,
      removalRetryAtMs: this.#removalRetryAtMs,
      lastRemovedSegno: this.#lastRemovedSegno,
      partialRunning: this.#partialJob !== null,
      partialRetryAtMs: this.#partialRetryAtMs,
      partialSegments: this.#partialSegments,
      lastChangeMs: this.#lastChangeMs,
      guards: (this.#evictionControl?.guardCount ?? 0),
      evictRunning: this.#evictJob !== null,
      evictNotBeforeMs: this.#evictNotBeforeMs,
      evictRetryAtMs: this.#evictRetryAtMs,
    };
  }

  /** When flush, commit or last_log_term changed last: partial backup waits for a quiet timeline. */
  #noteChanges(snapshot: ManagerSnapshot, nowMs: number): void {
    if (this.#seenFlushLsn === snapshot.flushLsn && this.#seenCommitLsn === snapshot.commitLsn && this.#seenTerm === snapshot.lastLogTerm) return;
    if (this.#seenFlushLsn !== -1n) this.#lastChangeMs = nowMs;
    this.#seenFlushLsn = snapshot.flushLsn;
    this.#seenCommitLsn = snapshot.commitLsn;
    this.#seenTerm = snapshot.lastLogTerm;
  }

  // ---- jobs ----

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
        if (!this.#stopped) {
          setRetryAtMs(this.shared.nowMs() + JOB_RETRY_MS);
          this.#log('warn', `${name} failed; will retry`, { err: describeError(error) });
        }
      }
    })();
  }

  #startSave(): void {
    const job = this.#runJob('control file save', async () => {
      await this.#persist({});
      this.#lastSaveMs = this.shared.nowMs();
    }, (atMs) => (this.#saveRetryAtMs = atMs));
    this.#persistJob = job.finally(() => this.#jobEnded(() => (this.#persistJob = null)));
  }

  #startRemoval(removeUpToSegno: bigint): void {
    assert(removeUpToSegno < this.#segno(this.#block.get('flushLsn')), 'removal never reaches the segment being written');
    const job = this.#runJob('WAL removal', async () => {
      const removed = await removeSegmentsUpTo(this.dir, this.segmentSizeBytes, removeUpToSegno, { noSync: this.shared.config.noSync, failpoints: this.shared.failpoints, signal: this.#signal() });
      this.#lastRemovedSegno = removeUpToSegno;
      this.shared.counters.segmentsRemoved += removed;
      this.#publishLocalStart();
      if (removed > 0) this.#log('debug', 'removed local WAL', { removed_segments: removed, up_to_segno: String(removeUpToSegno) });
    }, (atMs) => (this.#removalRetryAtMs = atMs));
    this.#removalJob = job.finally(() => this.#jobEnded(() => (this.#removalJob = null)));
  }

  #startPartialUpload(snapshot: ManagerSnapshot): void {
    const current = partialCurrentOf(snapshot);
    const job = this.#runJob('partial segment upload', async () => {
      this.#partialSegments = await uploadPartialSegment(this.#partialDeps(), this.#partialSegments, current);
      this.shared.counters.partialUploads += 1;
      this.#log('debug', 'uploaded partial segment', { flush_lsn: formatLsn(current.flushLsn), term: String(current.term) });
    }, (atMs) => (this.#partialRetryAtMs = atMs));
    this.#partialJob = job.finally(() => this.#jobEnded(() => (this.#partialJob = null)));
  }

  #startEviction(): void {
    const job = this.#runJob('eviction', async () => {
      const evicted = await this.#eviction().evict();
      this.#dropIdleEviction();
      if (evicted) this.#block.set('evicted', 1n);
      else this.#evictRetryAtMs = this.shared.nowMs() + JOB_RETRY_MS;
    }, (atMs) => (this.#evictRetryAtMs = atMs));
    this.#evictJob = job.finally(() => this.#jobEnded(() => (this.#evictJob = null)));
  }

  #jobEnded(clear: () => void): void {
    clear();
    this.kick();
  }

  get #offloaded(): boolean {
    return this.#evictionControl?.offloaded ?? this.#initialEviction.kind === 'Offloaded';
  }

  #eviction(): EvictionControl {
    this.#evictionControl ??= new EvictionControl(
      {
        tenantId: this.tenantId,
        timelineId: this.timelineId,
        dir: this.dir,
        segmentSizeBytes: this.segmentSizeBytes,
        shared: this.shared,
        signal: () => this.#signal(),
        snapshot: () => this.#snapshot(),
        partialSegments: () => this.#partialSegments,
        persist: (update) => this.#persist(update),
        onRestored: (flushLsn) => this.#onRestored(flushLsn),
        log: (level, message, fields) => this.#log(level, message, fields),
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
    this.#block.set('evicted', 0n);
    this.#lastRemovedSegno = this.#segno(flushLsn) - 1n;
    this.#publishLocalStart();
    this.#evictNotBeforeMs = this.shared.nowMs() + this.shared.random() * this.shared.config.evictionMinResidentMs;
    this.kick();
  }

  #backupQueue(): SegmentBackup {
    if (this.#backup !== null) return this.#backup;
    const { shared } = this;
    this.#backup = new SegmentBackup(
      {
        tenantId: this.tenantId,
        timelineId: this.timelineId,
        dir: this.dir,
        segmentSizeBytes: this.segmentSizeBytes,
        remote: shared.remote,
        uploadSlots: shared.uploadSlots,
        parallelJobs: shared.config.walBackupParallelJobs,
        failpoints: shared.failpoints,
        signal: this.#signal(),
        onSettled: () => this.kick(),
        onUploaded: (bytes) => {
          shared.counters.segmentsUploaded += 1;
          shared.counters.bytesUploaded += bytes;
        },
        onFailed: (segno, error) => {
          shared.counters.uploadFailures += 1;
          this.#log('warn', 'WAL segment upload failed; will retry', { segno: String(segno), err: describeError(error) });
        },
        nowMs: shared.nowMs,
      },
      this.#backupStartSegno,
    );
    return this.#backup;
  }

  async #persist(update: ManagerPersist): Promise<void> {
    await this.shared.host.persist(this.ttid, update);
  }

  #partialDeps(): PartialBackupDeps {
    return {
      tenantId: this.tenantId,
      timelineId: this.timelineId,
      dir: this.dir,
      segmentSizeBytes: this.segmentSizeBytes,
      nodeId: this.shared.config.nodeId,
      remote: this.shared.remote,
      failpoints: this.shared.failpoints,
      signal: this.#signal(),
      persist: async (segments) => {
        await this.#persist({ partialSegments: segments });
        this.#partialSegments = structuredClone(segments);
      },
      current: () => partialCurrentOf(this.#snapshot()),
    };
  }

  /** The manager's cancellation signal, created on first use (an idle manager never needs one). */
  #signal(): AbortSignal {
    if (this.#cancel === null) {
      this.#cancel = new CancelToken();
      // Each running upload and remote request listens on it (parallel jobs × a few): not a leak.
      setMaxListeners(MANAGER_SIGNAL_LISTENERS_MAX, this.#cancel.signal);
      if (this.#stopped) this.#cancel.cancel(new ShutdownError(`timeline manager ${this.ttid} is stopping`));
    }
    return this.#cancel.signal;
  }

  /** Publishes where local WAL starts: no WAL below this segment start is on local disk. */
  #publishLocalStart(): void {
    this.#block.set('removedUpToLsn', this.#lastRemovedSegno < 0n ? 0n : segmentStartLsn(this.#lastRemovedSegno + 1n, this.segmentSizeBytes));
  }

  #segno(lsn: Lsn): bigint {
    return segmentNumber(lsn, this.segmentSizeBytes);
  }

  #log(level: LogLevel, message: string, fields: Record<string, unknown> = {}): void {
    this.shared.host.log(level, this.ttid, message, fields);
  }
}

/** One `Present` state for every manager that is not offloaded (no object each). Never changed. */
const PRESENT: EvictionState = Object.freeze({ kind: 'Present' });

function shareablePresent(state: EvictionState): EvictionState {
  return state.kind === 'Present' ? PRESENT : state;
}

function promiseWithResolve(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => (resolve = done));
  return { promise, resolve };
}

function describeError(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}
