/**
 * CoordinatorClient: the main-thread half of the main ⇄ coordinator link (coordinator_protocol.ts). It
 * starts the coordinator worker, registers every loaded or created timeline with it, and serves what the
 * managers ask of main: control-file persists (main is their only writer; done under the timeline's
 * acceptor lock), confirmed backup_lsns (merged into the acceptor's in-memory overlay), the active set,
 * and log records. Callers get residency guards, checkpoints, on-demand remote WAL and failpoints here.
 *
 * Lifecycle: a registered timeline's Gate holds an entry named "timeline manager" until the coordinator
 * confirms that its manager stopped, so deleting or shutting down a timeline (cancel, then gate.close())
 * waits for every background job of it before any file is touched. `stop()` runs after the registry shut
 * down. A coordinator that throws or exits unexpectedly has a bug: the node crashes, as for any assertion.
 * Residency guards time out after GUARD_TIMEOUT_MS; a guard given up on is released even if the grant
 * arrives later (ids are chosen here, so the release can precede the grant). Main thread.
 */
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { SafekeeperError, ShutdownError } from '../errors.js';
import { workerFilename } from '../ingest/writer_pool.js';
import type { Logger } from '../log.js';
import * as metrics from '../metrics.js';
import { assert, unreachable } from '../sync/assert.js';
import type { FailpointState } from '../sync/failpoints.js';
import type { Lsn } from '../wal/lsn.js';
import type { TenantId, TimelineId } from '../acceptor/state.js';
import {
  COORDINATOR_REQUESTS_IN_FLIGHT_MAX,
  GUARD_TIMEOUT_MS,
  type CoordinatorMetrics,
  type CoordinatorNotice,
  type CoordinatorOptions,
  type CoordinatorRequest,
  type MainNotice,
  type MainReplies,
  type MainRequest,
} from './coordinator_protocol.js';
import { RpcPort } from './rpc_port.js';
import type { Timeline } from './timeline.js';

export interface ResidencyGuard {
  /** Idempotent. The manager may evict again once every guard is released. */
  release(): void;
}

/** What WAL readers and proposers need from the coordinator (so tests can fake it). */
export interface Residency {
  acquireGuard(timeline: Timeline, signal: AbortSignal): Promise<ResidencyGuard>;
}

/** The manager did not grant a residency guard in time (a slow unevict download, a stuck coordinator). */
export class GuardTimeoutError extends SafekeeperError {
  override readonly name = 'GuardTimeoutError';
  readonly code = 'SK_GUARD_TIMEOUT';
  readonly sqlState = '57014'; // query_canceled, as for a statement timeout
  override readonly httpStatus = 503;
}

/**
 * Starts the coordinator worker. Built (`.js`, ESM): the entry itself. Under tsx (`.ts`): through
 * `workers/ts_bootstrap.cjs`, which `require`s the entry, since only tsx's CommonJS hook is active in worker
 * threads on Node 20 (Piscina loads the writer workers the same way).
 */
function startWorker(options: CoordinatorOptions): Worker {
  const entry = workerFilename('coordinator');
  if (!entry.endsWith('.ts')) return new Worker(entry, { workerData: options, name: 'coordinator' });
  const bootstrap = fileURLToPath(new URL('../../workers/ts_bootstrap.cjs', import.meta.url));
  return new Worker(bootstrap, { workerData: { ...options, entry }, name: 'coordinator' });
}

export class CoordinatorClient implements Residency {
  readonly #worker: Worker;
  readonly #rpc: RpcPort;
  readonly #timelines = new Map<string, Timeline>();
  readonly #active = new Set<string>();
  readonly #lastTotals = new Map<string, number>();
  /** Chunks of state blocks the coordinator has (each is sent once, before its first registration). */
  readonly #stateChunksSent = new Set<number>();
  #nextGuardId = 1;
  #stopping = false;
  #unhookScrape: () => void;
  private constructor(options: CoordinatorOptions, private readonly log: Logger) {
    this.#worker = startWorker(options);
    this.#worker.on('error', (error) => {
      log.error({ err: error }, 'coordinator thread failed');
      setImmediate(() => {
        throw error;
      });
    });
    this.#worker.on('exit', (code) => {
      if (this.#stopping) return;
      const error = new Error(`coordinator thread exited unexpectedly (code ${code})`);
      log.error({ exit_code: code }, 'coordinator thread exited');
      setImmediate(() => {
        throw error;
      });
    });
    this.#rpc = new RpcPort(this.#worker, { onRequest: (body) => this.#onRequest(body as CoordinatorRequest), onNotify: (body) => this.#onNotify(body as CoordinatorNotice) }, COORDINATOR_REQUESTS_IN_FLIGHT_MAX);
    this.#unhookScrape = metrics.onScrape(() => this.collectMetrics());
  }

  static start(options: CoordinatorOptions, log: Logger): CoordinatorClient {
    return new CoordinatorClient(options, log);
  }

  /** Timelines in the active set (for the broker). */
  get activeTimelines(): ReadonlySet<string> {
    return this.#active;
  }

  /** Hands a timeline to a manager; broken timelines have none. Unregisters when the timeline is cancelled. */
  register(timeline: Timeline): void {
    const control = timeline.control;
    if (timeline.acceptor === null || control === null || this.#stopping || this.#timelines.has(timeline.ttid)) return;
    let leave: () => void;
    try {
      leave = timeline.gate.enter('timeline manager');
    } catch (error) {
      if (error instanceof ShutdownError) return; // being deleted already
      throw error;
    }
    const { ttid } = timeline;
    this.#timelines.set(ttid, timeline);
    const state = control.state;
    const chunk = timeline.state.chunk;
    if (!this.#stateChunksSent.has(chunk.id)) {
      assert(chunk.id >= 0, 'a registered timeline has its state block in a chunk of the registry');
      this.#stateChunksSent.add(chunk.id);
      this.#notify({ kind: 'state_chunk', chunkId: chunk.id, blockCount: chunk.blockCount, buffer: chunk.buffer });
    }
    this.#notify({
      kind: 'register',
      timeline: {
        ttid,
        tenantId: timeline.tenantId,
        timelineId: timeline.timelineId,
        segmentSizeBytes: state.server.walSegSizeBytes,
        stateChunkId: chunk.id,
        stateBlockIndex: timeline.state.index,
        partialSegments: structuredClone(state.partialBackup.segments),
        evictionState: structuredClone(state.evictionState),
      },
    });
    // An onCancel listener rather than an abort listener: the timeline's signal is not created for it.
    timeline.cancel.onCancel(() => this.#unregister(timeline, leave));
  }

  /** The timeline was cancelled: stop its manager, then leave its gate (delete and shutdown wait for that). */
  #unregister(timeline: Timeline, leave: () => void): void {
    const { ttid } = timeline;
    void this.#request('unregister', { kind: 'unregister', ttid })
      .catch((error: unknown) => this.log.warn({ err: error, ttid }, 'unregistering a timeline manager failed'))
      .finally(() => {
        this.#timelines.delete(ttid);
        this.#active.delete(ttid);
        leave();
      });
  }

  /** A residency guard for `timeline`: its manager unevicts it first when offloaded. */
  async acquireGuard(timeline: Timeline, signal: AbortSignal): Promise<ResidencyGuard> {
    const { ttid } = timeline;
    const guardId = this.#nextGuardId++;
    const release = (): void => this.#notify({ kind: 'release_guard', ttid, guardId });
    const onAbort = (): void => release();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      await this.#request('acquire_guard', { kind: 'acquire_guard', ttid, guardId }, { timeoutMs: GUARD_TIMEOUT_MS, onTimeout: () => new GuardTimeoutError(`no residency guard for ${ttid} within ${GUARD_TIMEOUT_MS} ms`) });
    } catch (error) {
      release(); // the grant may still come: the coordinator drops it on arrival
      throw error;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    if (signal.aborted) {
      release();
      signal.throwIfAborted();
    }
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        release();
      },
    };
  }

  /** Saves the control file now, runs a manager pass and waits for the WAL removal it starts. */
  /** Deletes every remote object of a timeline that was deleted locally. Returns how many there were. */
  deleteRemote(tenantId: TenantId, timelineId: TimelineId): Promise<number> {
    return this.#request('delete_remote', { kind: 'delete_remote', tenantId, timelineId });
  }

  async checkpoint(timeline: Timeline): Promise<void> {
    await this.#request('checkpoint', { kind: 'checkpoint', ttid: timeline.ttid });
  }

  /** WAL from remote storage (at most to the end of `startLsn`'s segment); NotFoundError when not there. */
  async readRemoteWal(ttid: string, startLsn: Lsn, lengthBytes: number): Promise<Uint8Array> {
    return this.#request('read_remote_wal', { kind: 'read_remote_wal', ttid, startLsn, lengthBytes });
  }

  async setFailpoint(name: string, action: string): Promise<void> {
    await this.#request('set_failpoint', { kind: 'set_failpoint', name, action });
  }

  async listFailpoints(): Promise<FailpointState[]> {
    return this.#request('list_failpoints', { kind: 'list_failpoints' });
  }

  async coordinatorMetrics(): Promise<CoordinatorMetrics> {
    return this.#request('metrics', { kind: 'metrics' });
  }

  /**
   * Copies the coordinator's counters into this thread's prom-client registry, and hands the per-timeline
   * lags (`timeline_metrics`) to their TimelineGauges, which show them in this scrape only.
   */
  async collectMetrics(): Promise<void> {
    if (this.#stopping) return;
    const snapshot = await this.coordinatorMetrics();
    const advance = (counter: { inc(value: number): void }, key: string, total: number): void => {
      const delta = total - (this.#lastTotals.get(key) ?? 0);
      if (delta > 0) counter.inc(delta);
      this.#lastTotals.set(key, total);
    };
    advance(metrics.managerIterationsTotal, 'iterations', snapshot.managerIterationsTotal);
    advance(metrics.backupSegmentsUploadedTotal, 'segments', snapshot.backupSegmentsUploadedTotal);
    advance(metrics.backupBytesUploadedTotal, 'bytes', snapshot.backupBytesUploadedTotal);
    advance(metrics.backupUploadFailuresTotal, 'failures', snapshot.backupUploadFailuresTotal);
    advance(metrics.walSegmentsRemovedTotal, 'removed', snapshot.walSegmentsRemovedTotal);
    advance(metrics.partialBackupUploadsTotal, 'partial', snapshot.partialBackupUploadsTotal);
    advance({ inc: (value) => metrics.evictionEventsCompletedTotal.inc({ kind: 'evict' }, value) }, 'evictions', snapshot.evictionsTotal);
    advance({ inc: (value) => metrics.evictionEventsCompletedTotal.inc({ kind: 'restore' }, value) }, 'restores', snapshot.restoresTotal);
    for (const [key, total] of Object.entries(snapshot.remoteRequestsTotal)) {
      const [operation = '', outcome = ''] = key.split(' ');
      advance({ inc: (value) => metrics.remoteStorageRequestsTotal.inc({ operation, outcome }, value) }, `remote ${key}`, total);
    }
    metrics.backupUploadsRunning.set(snapshot.backupUploadsRunning);
    metrics.activeTimelines.set(snapshot.activeTimelines);
    metrics.evictedTimelines.set(snapshot.evictedTimelines);
    metrics.coordinatorHeapUsedBytes.set(snapshot.heapUsedBytes);
    const timelines = await this.#request('timeline_metrics', { kind: 'timeline_metrics' });
    metrics.backupLagBytes.set(timelines.map((t) => ({ tenantId: t.tenantId, timelineId: t.timelineId, value: t.backupLagBytes })));
    metrics.removalLagBytes.set(timelines.map((t) => ({ tenantId: t.tenantId, timelineId: t.timelineId, value: t.removalLagBytes })));
  }

  /** Stops every manager and the worker. Call after the registry has shut its timelines down. */
  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#unhookScrape();
    await this.#request('shutdown', { kind: 'shutdown' }).catch((error: unknown) => this.log.warn({ err: error }, 'coordinator shutdown failed'));
    this.#stopping = true;
    this.#rpc.close();
    await this.#worker.terminate();
  }

  #request<K extends MainRequest['kind']>(_kind: K, body: Extract<MainRequest, { kind: K }>, options: { timeoutMs?: number; onTimeout?: () => SafekeeperError } = {}): Promise<MainReplies[K]> {
    return this.#rpc.request<MainReplies[K]>(body, options);
  }

  #notify(notice: MainNotice): void {
    this.#rpc.notify(notice);
  }

  async #onRequest(request: CoordinatorRequest): Promise<{ value: unknown }> {
    switch (request.kind) {
      case 'persist': {
        const timeline = this.#timelines.get(request.ttid);
        if (timeline === undefined) throw new ShutdownError(`timeline ${request.ttid} is no longer registered`);
        const acceptor = timeline.activeAcceptor();
        const signal = timeline.cancel.signal;
        const { partialSegments, evictionState } = request.update;
        await timeline.acceptorLock.run(signal, async () => {
          if (partialSegments === undefined && evictionState === undefined) await acceptor.persistInMemory(signal);
          else {
            await acceptor.persistManagerState(
              { ...(partialSegments !== undefined ? { partialBackup: { segments: partialSegments } } : {}), ...(evictionState !== undefined ? { evictionState } : {}) },
              signal,
            );
          }
        });
        timeline.publishState();
        return { value: null };
      }
      default:
        return unreachable(request.kind, 'unknown request from the coordinator');
    }
  }

  #onNotify(notice: CoordinatorNotice): void {
    switch (notice.kind) {
      case 'backup_lsn': {
        const timeline = this.#timelines.get(notice.ttid);
        if (timeline?.acceptor == null) return;
        timeline.acceptor.updateInMemory({ backupLsn: notice.backupLsn });
        timeline.publishState();
        return;
      }
      case 'active':
        if (notice.active) this.#active.add(notice.ttid);
        else this.#active.delete(notice.ttid);
        return;
      case 'log': {
        const [tenantId, timelineId] = notice.ttid?.split('/') ?? [];
        const fields = { ...notice.fields, ...(tenantId !== undefined ? { tenant_id: tenantId, timeline_id: timelineId } : {}), task: 'timeline manager' };
        this.log[notice.level](fields, notice.message);
        return;
      }
      default:
        unreachable(notice, 'unknown notice from the coordinator');
    }
  }
}

assert(GUARD_TIMEOUT_MS > 0, 'guards have a deadline');
