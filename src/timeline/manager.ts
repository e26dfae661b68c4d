/**
 * The timeline manager. There is one per timeline, running on the coordinator thread. It owns its
 * timeline's background jobs: control-file saves, WAL backup and partial backup, WAL removal, and eviction.
 * On each turn it reads one snapshot of the state block, decides from that snapshot alone which jobs to
 * start or stop (`manager_decisions.ts`, pure), starts them (`manager_jobs.ts`; the segment backup queue is
 * `manager_backup.ts`, eviction and guards `manager_eviction.ts`), then sleeps until the block changes, a job ends, a deadline passes or a message
 * (such as a guard request) arrives (`manager_wakeup.ts`). This file is the loop, the manager's public face
 * to the coordinator, and what its jobs share: its ids, its cancellation signal, its log and its snapshot
 * (what the coordinator shares is `manager_shared.ts`).
 *
 * Invariants: local WAL is removed only after its upload is confirmed and persisted and no reader needs
 * it; nothing is evicted while a residency guard is held (`eviction.ts`). Nothing restarts this loop, so a
 * job failure becomes state (retry at a later deadline) and never a throw. `status` names the current step.
 *
 * Passes are at least `MANAGER_PASS_INTERVAL_MS_MIN` apart, so a busy timeline's stream of changes
 * coalesces into a few passes per second. An idle manager has no timer, no wait of its own (its block's
 * changes reach it through the coordinator's StateWatcher, one wait per chunk of blocks) and costs no CPU;
 * to keep 10,000 of them small, the backup queue, the eviction control, the cancellation token and the
 * promise `stop()` waits on are created on first use (the first two by their modules), and the ids and
 * directory are derived from `ttid`. Abort: `stop()` cancels every job (uploads abort; a removal or a
 * rename finishes its file first), waits for them, then leaves the state watcher.
 */
import { setMaxListeners } from 'node:events';
import { ttid, type TenantId, type TimelineId } from '../acceptor/state.js';
import { ShutdownError } from '../errors.js';
import type { StateBlock } from '../ingest/state_block.js';
import { timelineDir } from '../storage/layout.js';
import { assert } from '../sync/assert.js';
import { CancelToken } from '../sync/cancel.js';
import type { Lsn } from '../wal/lsn.js';
import type { LogLevel, TimelineMetrics, TimelineRegistration } from './coordinator_protocol.js';
import { ManagerBackup } from './manager_backup.js';
import { planPass, type ManagerPlan, type ManagerSnapshot } from './manager_decisions.js';
import { ManagerJobs } from './manager_jobs.js';
import type { ManagerShared } from './manager_shared.js';
import { ManagerWakeup } from './manager_wakeup.js';

/** Passes of one manager are at least this far apart; state changes in between coalesce. */
export const MANAGER_PASS_INTERVAL_MS_MIN = 100;
/** Abort listeners on a manager's signal: up to 64 parallel uploads (the config's ceiling) × a few each. */
const MANAGER_SIGNAL_LISTENERS_MAX = 512;

export class TimelineManager {
  readonly ttid: string;
  readonly segmentSizeBytes: number;
  status = 'starting';
  readonly #block: StateBlock;
  readonly #wakeup: ManagerWakeup;
  readonly #backup: ManagerBackup;
  readonly #jobs: ManagerJobs;
  #cancel: CancelToken | null = null;
  #stopped = false;
  #lastChangeMs: number;
  #seenFlushLsn = -1n;
  #seenCommitLsn = -1n;
  #seenTerm = -1n;
  #reportedBackupLsn = 0n;
  #active: boolean | null = null;
  /** Whether the main thread was last told the timeline is offloaded (it starts resident, as main assumes). */
  #reportedOffloaded = false;
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
    const now = shared.nowMs();
    this.#lastChangeMs = now;
    this.#backup = new ManagerBackup(this, block, shared);
    this.#jobs = new ManagerJobs(this, registration, block, shared, this.#backup, now);
  }

  /** Current lags, computed when asked (at /metrics scrape time). */
  get metrics(): TimelineMetrics {
    const flushLsn = this.#block.get('flushLsn');
    const backupLsn = this.#backup.backupLsn;
    const localStartLsn = this.#block.get('removedUpToLsn');
    return {
      tenantId: this.tenantId,
      timelineId: this.timelineId,
      backupLagBytes: flushLsn > backupLsn ? Number(flushLsn - backupLsn) : 0,
      removalLagBytes: flushLsn > localStartLsn ? Number(flushLsn - localStartLsn) : 0,
      evicted: this.#jobs.offloaded,
    };
  }

  get uploadsRunning(): number {
    return this.#backup.running;
  }

  get offloaded(): boolean {
    return this.#jobs.offloaded;
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
    void this.#jobs.init().then(() => this.#turn());
  }

  /** Wakes the loop for a new pass (job ended, request arrived). */
  kick(): void {
    this.#wakeup.kick();
  }

  /** Cancels every job and waits until the loop and all jobs have ended. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#cancel?.cancel(this.#stoppingError());
    this.kick();
    if (this.#loop !== 'running') return;
    this.#loopEnded ??= promiseWithResolve();
    await this.#loopEnded.promise;
  }

  /** Saves the control file now, runs a pass, and waits for the removal it starts. */
  async checkpoint(): Promise<void> {
    if (this.#stopped) throw this.#stoppingError();
    await this.#jobs.save();
    if (this.#stopped) return;
    this.#pass();
    await this.#jobs.removalJob;
  }

  /** Grants residency guard `guardId` (chosen by main), unevicting first when offloaded. */
  async acquireGuard(guardId: number): Promise<void> {
    await this.#jobs.acquireGuard(guardId);
  }

  releaseGuard(guardId: number): void {
    this.#jobs.releaseGuard(guardId);
  }

  /** WAL from remote storage for a reader (§11): at most up to the end of `startLsn`'s segment. */
  async readRemoteWal(startLsn: Lsn, lengthBytes: number): Promise<Uint8Array> {
    return this.#jobs.readRemoteWal(startLsn, lengthBytes);
  }

  /** Set by `stop()`: jobs that fail from now on are not retried or logged, and the loop ends at its next turn. */
  get stopping(): boolean {
    return this.#stopped;
  }

  /** The manager's cancellation signal, created on first use (an idle manager never needs one). */
  signal(): AbortSignal {
    if (this.#cancel === null) {
      this.#cancel = new CancelToken();
      // Each running upload and remote request listens on it (parallel jobs × a few): not a leak.
      setMaxListeners(MANAGER_SIGNAL_LISTENERS_MAX, this.#cancel.signal);
      if (this.#stopped) this.#cancel.cancel(this.#stoppingError());
    }
    return this.#cancel.signal;
  }

  /** One reading of the state-block slots the decisions (and the jobs) use. */
  snapshot(): ManagerSnapshot {
    const block = this.#block;
    return {
      flushLsn: block.get('flushLsn'),
      syncedLsn: block.get('syncedLsn'),
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

  #stoppingError(): ShutdownError {
    return new ShutdownError(`timeline manager ${this.ttid} is stopping`);
  }

  log(level: LogLevel, message: string, fields: Record<string, unknown> = {}): void {
    this.shared.host.log(level, this.ttid, message, fields);
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
      await this.#backup.stop();
      await this.#jobs.ended();
    } finally {
      this.#cancel?.release();
      this.status = 'stopped';
      this.#loop = 'ended';
      this.#loopEnded?.resolve();
    }
  }

  #pass(): ManagerPlan {
    const nowMs = this.shared.nowMs();
    this.#lastPassMs = nowMs;
    this.shared.counters.iterations += 1;
    const snapshot = this.snapshot();
    this.#noteChanges(snapshot, nowMs);
    this.#backup.skipTo(snapshot.backupLsn);
    const plan = planPass(snapshot, this.#jobs.facts(nowMs, this.#lastChangeMs), this.shared.config);
    this.status = plan.status;
    if (plan.backupTargetSegno !== null) this.#backup.advance(plan.backupTargetSegno);
    if (plan.reportBackupLsn !== null && plan.reportBackupLsn > this.#reportedBackupLsn) {
      this.#reportedBackupLsn = plan.reportBackupLsn;
      this.shared.host.reportBackupLsn(this.ttid, plan.reportBackupLsn);
    }
    if (plan.active !== this.#active) {
      this.#active = plan.active;
      this.shared.host.reportActive(this.ttid, plan.active);
    }
    if (this.#jobs.offloaded !== this.#reportedOffloaded) {
      this.#reportedOffloaded = this.#jobs.offloaded;
      this.shared.host.reportOffloaded(this.ttid, this.#reportedOffloaded);
    }
    if (plan.save) this.#jobs.startSave();
    if (plan.removeUpToSegno !== null) this.#jobs.startRemoval(plan.removeUpToSegno);
    else if (plan.dropRecycled) this.#jobs.startRecycledDrop();
    if (plan.uploadPartial) this.#jobs.startPartialUpload(snapshot, plan.collectPartialGarbage);
    if (plan.evict) this.#jobs.startEviction();
    return plan;
  }

  /** When flush, commit or last_log_term changed last: partial backup waits for a quiet timeline. */
  #noteChanges(snapshot: ManagerSnapshot, nowMs: number): void {
    if (this.#seenFlushLsn === snapshot.flushLsn && this.#seenCommitLsn === snapshot.commitLsn && this.#seenTerm === snapshot.lastLogTerm) return;
    if (this.#seenFlushLsn !== -1n) this.#lastChangeMs = nowMs;
    this.#seenFlushLsn = snapshot.flushLsn;
    this.#seenCommitLsn = snapshot.commitLsn;
    this.#seenTerm = snapshot.lastLogTerm;
  }
}

function promiseWithResolve(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => (resolve = done));
  return { promise, resolve };
}
