/**
 * A timeline's residency (DESIGN § Timeline lifecycle, storage reference §5.1, §8): residency guards, and the
 * two transitions between `Present` and `Offloaded`. Owned by the timeline's manager; everything here runs
 * under one mutex, so a guard request waits for a running eviction and then unevicts, and an eviction
 * re-checks, under the mutex, that no guard or connection appeared since the manager decided.
 *
 * Evict (§8.1): check the local `.partial` against the uploaded partial object below flush_lsn, persist
 * `Offloaded(flush_lsn)` (through main), then with delete_offloaded_wal delete the local segment files from
 * flush_lsn's segment on (the partial one and any prepared next one).
 * Unevict (§8.2): use the local `.partial` if it matches the remote copy and is zeros after flush_lsn, else
 * download it (temp + rename, wal_download.ts), then persist `Present`. Both persist their new state only
 * after the files are in place, so a kill -9 at any step leaves `Offloaded` with or without local files,
 * which a restarted manager handles (it deletes leftovers, under the mutex like the rest, and a guard
 * downloads again).
 * Guard ids are chosen by main; a release that arrives while the grant is pending cancels the grant.
 * Permits (coordinator-wide, coordinator.ts): an eviction holds one of `evictionPermits`, taken by the manager
 * only if one is free (manager_eviction.ts), before it waits for the mutex. An un-eviction holds one of
 * `unevictionPermits`: a guard that finds the timeline offloaded tries for one under the mutex and, when none is
 * free, leaves the mutex and waits for one outside it, as the timeline's only permit waiter (its other guards
 * wait for that one to finish, then look again). So nobody holding the mutex ever waits for a permit, while a
 * permit holder may wait for the mutex: no cycle, since the mutex holder only does its own I/O. A guard of a
 * resident timeline waits for the mutex alone (behind an eviction, for one), never for a permit; an eviction
 * gives way to a guard that arrives while it compares, so such a guard finds the timeline offloaded (and needs
 * a permit) only if it came while `Offloaded` was being persisted.
 * Memory: the mutex, the guard sets and the permit waiter exist only once used (a node may hold 10,000 idle
 * timelines). Coordinator thread.
 */
import type { EvictionState, PartialRemoteSegment, TenantId, TimelineId } from '../acceptor/state.js';
import { CancelledError } from '../errors.js';
import { uploadedPartial } from '../remote/partial_backup.js';
import { PartialSegmentMismatchError, compareLocalPartial, downloadPartialSegment, type OffloadDeps } from '../remote/wal_download.js';
import { assert } from '../sync/assert.js';
import { Mutex } from '../sync/mutex.js';
import { formatLsn, segmentNumber, type Lsn } from '../wal/lsn.js';
import type { LogLevel, ManagerPersist } from './coordinator_protocol.js';
import type { ManagerSnapshot } from './manager_decisions.js';
import type { ManagerShared } from './manager_shared.js';
import { removeSegmentsFrom } from './wal_removal.js';

/** What the residency control needs from its manager. */
export interface EvictionContext {
  tenantId: TenantId;
  timelineId: TimelineId;
  dir: string;
  segmentSizeBytes: number;
  shared: ManagerShared;
  signal(): AbortSignal;
  snapshot(): ManagerSnapshot;
  partialSegments(): readonly PartialRemoteSegment[];
  persist(update: ManagerPersist): Promise<void>;
  /** The timeline is local again from `flushLsn`'s segment on. */
  onRestored(flushLsn: Lsn): void;
  log(level: LogLevel, message: string, fields?: Record<string, unknown>): void;
}

/** The one guard of a timeline that waits for an un-eviction permit; `ended` resolves when its acquireGuard ends. */
interface PermitWaiter {
  guardId: number;
  /** Ends the wait: main released the guard, or the manager stops. */
  abort: AbortController;
  ended: Promise<void>;
}

export class EvictionControl {
  #state: EvictionState;
  #mutex: Mutex | null = null;
  #guards: Set<number> | null = null;
  #pending: Set<number> | null = null;
  #abandoned: Set<number> | null = null;
  #permitWaiter: PermitWaiter | null = null;

  constructor(private readonly context: EvictionContext, initial: EvictionState) {
    this.#state = structuredClone(initial);
  }

  get offloaded(): boolean {
    return this.#state.kind === 'Offloaded';
  }

  get state(): EvictionState {
    return structuredClone(this.#state);
  }

  /** No guard held or pending and no transition running: the manager may drop this object. */
  get idle(): boolean {
    return this.#guards === null && this.#pending === null && this.#abandoned === null && this.#mutex === null && this.#permitWaiter === null;
  }

  get guardCount(): number {
    return this.#guards?.size ?? 0;
  }

  /**
   * Grants guard `guardId`, unevicting first when offloaded, with an un-eviction permit (see the header: one is
   * waited for only outside the mutex). A guard released meanwhile is granted nothing and restores nothing: the
   * permit waiter rejects at once with CancelledError; another guard ends when the waiter it follows does.
   */
  async acquireGuard(guardId: number): Promise<void> {
    const pending = (this.#pending ??= new Set());
    assert(!pending.has(guardId) && this.#guards?.has(guardId) !== true, 'guard ids are unique');
    pending.add(guardId);
    const permit: { release: (() => void) | null } = { release: null };
    let waiter: PermitWaiter | null = null;
    let endWait = (): void => {};
    try {
      for (;;) {
        const granted = await this.#run(async () => {
          if (this.#abandoned?.has(guardId) === true) return true;
          if (this.#state.kind === 'Offloaded') {
            permit.release ??= this.context.shared.unevictionPermits.tryAcquire();
            if (permit.release === null) return false; // wait for one outside the mutex
            await this.#unevict();
          }
          if (this.#abandoned?.has(guardId) !== true) (this.#guards ??= new Set()).add(guardId);
          return true;
        });
        if (granted) return;
        if (this.#permitWaiter !== null) {
          await this.#permitWaiter.ended; // its restore serves this guard too; if it fails, look again
          continue;
        }
        const ended = new Promise<void>((resolve) => (endWait = resolve));
        waiter = { guardId, abort: new AbortController(), ended };
        this.#permitWaiter = waiter;
        permit.release = await this.#waitForPermit(waiter);
      }
    } finally {
      permit.release?.();
      if (waiter !== null && this.#permitWaiter === waiter) this.#permitWaiter = null;
      endWait();
      pending.delete(guardId);
      this.#abandoned?.delete(guardId);
      if (pending.size === 0 && this.#pending === pending) this.#pending = null;
      if (this.#abandoned?.size === 0) this.#abandoned = null;
    }
  }

  /** Returns whether a held guard was released (the manager then looks again). */
  releaseGuard(guardId: number): boolean {
    if (this.#guards?.delete(guardId) === true) {
      if (this.#guards.size === 0) this.#guards = null;
      return true;
    }
    if (this.#pending?.has(guardId) === true) {
      (this.#abandoned ??= new Set()).add(guardId);
      if (this.#permitWaiter?.guardId === guardId) this.#permitWaiter.abort.abort(new CancelledError(`residency guard ${guardId} was released while waiting for an un-eviction permit`));
    }
    return false;
  }

  /** §8.1, under the mutex. False when the timeline is no longer idle (nothing changed). */
  async evict(): Promise<boolean> {
    return this.#run(async () => {
      const { context } = this;
      const { failpoints, config, counters } = context.shared;
      const snapshot = context.snapshot();
      const uploaded = uploadedPartial(context.partialSegments());
      if (this.#state.kind === 'Offloaded' || !this.#unused(snapshot)) return false;
      if (uploaded === null || uploaded.flushLsn !== snapshot.flushLsn || uploaded.term !== snapshot.lastLogTerm || uploaded.commitLsn !== snapshot.persistedCommitLsn) return false;
      await failpoints.hit('evict-before-persist', context.signal());
      await compareLocalPartial(this.#offloadDeps(), uploaded, 'ignored');
      // A guard or connection that came during the comparison (a remote GET) wants this timeline resident: it
      // waits for the mutex, not for an un-eviction permit, so give way to it rather than make it restore.
      if (!this.#unused(context.snapshot())) return false;
      const offloaded: EvictionState = { kind: 'Offloaded', flushLsn: uploaded.flushLsn };
      await context.persist({ evictionState: offloaded });
      this.#state = offloaded;
      await failpoints.hit('evict-after-persist', context.signal());
      if (config.deleteOffloadedWal) await removeSegmentsFrom(context.dir, context.segmentSizeBytes, segmentNumber(uploaded.flushLsn, context.segmentSizeBytes), config.noSync);
      counters.evictions += 1;
      context.log('info', 'timeline evicted', { flush_lsn: formatLsn(uploaded.flushLsn), local_wal_deleted: config.deleteOffloadedWal });
      return true;
    });
  }

  /**
   * A restarted manager of an offloaded timeline: removes what an eviction killed midway left locally.
   * Under the mutex and deciding there: a guard served before the manager's start finished may have
   * unevicted meanwhile, and the segment it restored is then live WAL.
   */
  async removeLeftovers(): Promise<void> {
    await this.#run(async () => {
      const { context } = this;
      if (this.#state.kind !== 'Offloaded' || !context.shared.config.deleteOffloadedWal) return;
      await removeSegmentsFrom(context.dir, context.segmentSizeBytes, segmentNumber(this.#state.flushLsn, context.segmentSizeBytes), context.shared.config.noSync);
    });
  }

  /** No guard held or pending and no proposer or reader connected. */
  #unused(snapshot: ManagerSnapshot): boolean {
    return this.guardCount === 0 && this.#pending === null && snapshot.proposerCount === 0n && snapshot.readerCount === 0n;
  }

  /**
   * Waits, outside the mutex, for an un-eviction permit as this timeline's permit waiter, until one comes, main
   * releases the guard (`releaseGuard` aborts `waiter.abort`) or the manager stops. Abort-safe: an aborted wait
   * takes no permit.
   */
  async #waitForPermit(waiter: PermitWaiter): Promise<() => void> {
    const managerSignal = this.context.signal();
    const onStop = (): void => waiter.abort.abort(managerSignal.reason);
    if (managerSignal.aborted) onStop();
    else managerSignal.addEventListener('abort', onStop, { once: true });
    try {
      return await this.context.shared.unevictionPermits.acquire(waiter.abort.signal);
    } finally {
      managerSignal.removeEventListener('abort', onStop);
    }
  }

  /** §8.2, under the mutex, holding an un-eviction permit. */
  async #unevict(): Promise<void> {
    assert(this.#state.kind === 'Offloaded', 'unevict only an offloaded timeline');
    const { context } = this;
    const flushLsn = this.#state.flushLsn;
    const uploaded = uploadedPartial(context.partialSegments());
    assert(uploaded !== null && uploaded.flushLsn === flushLsn, 'an offloaded timeline has its partial segment uploaded');
    const deps = this.#offloadDeps();
    // Nothing writes an offloaded timeline's files, so a local copy that differs is damage, or the
    // unacknowledged tail eviction ignored: replace it with the remote copy, zero-filled after flush_lsn.
    const local = await compareLocalPartial(deps, uploaded, 'zeros').catch((error: unknown) => {
      if (!(error instanceof PartialSegmentMismatchError)) throw error;
      context.log('warn', 'local partial segment differs from its remote copy; downloading it again', { err: error.message });
      return 'absent' as const;
    });
    if (local === 'absent') await downloadPartialSegment(deps, uploaded);
    await context.shared.failpoints.hit('unevict-before-persist', context.signal());
    await context.persist({ evictionState: { kind: 'Present' } });
    this.#state = { kind: 'Present' };
    context.shared.counters.restores += 1;
    context.log('info', 'timeline restored from remote storage', { flush_lsn: formatLsn(flushLsn), downloaded: local === 'absent' });
    context.onRestored(flushLsn);
  }

  async #run<T>(work: () => Promise<T>): Promise<T> {
    const mutex = (this.#mutex ??= new Mutex());
    try {
      return await mutex.run(this.context.signal(), work);
    } finally {
      if (!mutex.locked && this.#mutex === mutex) this.#mutex = null;
    }
  }

  #offloadDeps(): OffloadDeps {
    const { context } = this;
    return {
      tenantId: context.tenantId,
      timelineId: context.timelineId,
      dir: context.dir,
      segmentSizeBytes: context.segmentSizeBytes,
      remote: context.shared.remote,
      failpoints: context.shared.failpoints,
      noSync: context.shared.config.noSync,
      signal: context.signal(),
    };
  }
}

