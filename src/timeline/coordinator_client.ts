/**
 * CoordinatorClient: the main-thread half of the main ⇄ coordinator link (coordinator_protocol.ts). It
 * starts the coordinator worker, registers every loaded or created timeline with it, and serves what the
 * managers ask of main: control-file persists (main is their only writer; done under the timeline's
 * acceptor lock), confirmed backup_lsns (merged into the acceptor's in-memory overlay), the active set,
 * and log records. Callers get residency guards (the contract is residency.ts), checkpoints, on-demand
 * remote WAL and failpoints here; a /metrics scrape mirrors the coordinator's metrics (coordinator_metrics.ts).
 *
 * Lifecycle: a registered timeline's Gate holds an entry named "timeline manager" until the coordinator
 * confirms that its manager stopped, so deleting or shutting down a timeline (cancel, then gate.close())
 * waits for every background job of it before any file is touched. The unregister request that stops it
 * is never dropped: refused (the coordinator busy), it is retried with backoff (must_land_retry.ts) until it
 * lands or the coordinator stops; leaving the gate earlier would let a delete go on under a live manager.
 * Checkpoints (an HTTP endpoint with no limit of its own) are bounded here, so they cannot take the request
 * budget that guards and unregisters need. `stop()` runs after the registry shut
 * down. A coordinator that throws or exits unexpectedly has a bug: the node crashes, as for any assertion
 * (coordinator_thread.ts starts and watches the worker).
 * Residency guards time out after GUARD_TIMEOUT_MS; a guard given up on is released even if the grant
 * arrives later (ids are chosen here, so the release can precede the grant). Main thread.
 */
import type { Worker } from 'node:worker_threads';
import { ShutdownError, type SafekeeperError } from '../errors.js';
import { CONNECTIONS_MAX, SLOW_WAIT_MS } from '../limits.js';
import type { Logger } from '../log.js';
import * as metrics from '../metrics.js';
import { assert, unreachable } from '../sync/assert.js';
import type { FailpointState } from '../sync/failpoints.js';
import type { Lsn } from '../wal/lsn.js';
import type { TenantId, TimelineId } from '../acceptor/state.js';
import { CoordinatorMetricsMirror, publishTimelineLags } from './coordinator_metrics.js';
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
import { startCoordinatorThread } from './coordinator_thread.js';
import { retryUntilLanded } from './must_land_retry.js';
import { GuardTimeoutError, type Residency, type ResidencyGuard } from './residency.js';
import { CoordinatorBusyError, RpcPort } from './rpc_port.js';
import type { Timeline } from './timeline.js';

/**
 * Checkpoint requests in flight at once. A checkpoint is an operator's or a test's request (save now, one
 * manager pass); each holds one of the COORDINATOR_REQUESTS_IN_FLIGHT_MAX slots until its pass ends, and
 * those slots are what residency guards (one per pg connection) and unregisters need. More are refused (503).
 */
export const CHECKPOINTS_IN_FLIGHT_MAX = 64;
assert(CONNECTIONS_MAX + CHECKPOINTS_IN_FLIGHT_MAX < COORDINATOR_REQUESTS_IN_FLIGHT_MAX, 'guards and checkpoints together leave request slots for the rest');

export class CoordinatorClient implements Residency {
  readonly #worker: Worker;
  readonly #rpc: RpcPort;
  readonly #timelines = new Map<string, Timeline>();
  readonly #active = new Set<string>();
  readonly #metrics = new CoordinatorMetricsMirror();
  /** Chunks of state blocks the coordinator has (each is sent once, before its first registration). */
  readonly #stateChunksSent = new Set<number>();
  #nextGuardId = 1;
  #checkpointsInFlight = 0;
  #stopping = false;
  #unhookScrape: () => void;
  private constructor(options: CoordinatorOptions, private readonly log: Logger) {
    this.#worker = startCoordinatorThread(options, log, () => this.#stopping);
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

  /**
   * The timeline was cancelled: stop its manager, then leave its gate (delete and shutdown wait for that).
   * Unregister is idempotent, so a refusal is retried until it lands; the gate is left only once the manager
   * stopped, or once the coordinator is stopping (its shutdown stops every manager). A warning is logged at
   * the first refusal and then once per SLOW_WAIT_MS.
   */
  #unregister(timeline: Timeline, leave: () => void): void {
    const { ttid } = timeline;
    let warnedAtMs = -Infinity;
    const onFailure = (error: SafekeeperError, attempts: number): void => {
      if (performance.now() - warnedAtMs < SLOW_WAIT_MS) return;
      warnedAtMs = performance.now();
      this.log.warn({ err: error, ttid, attempts }, 'unregistering a timeline manager was refused; retrying');
    };
    const attempt = async (): Promise<void> => void (await this.#request('unregister', { kind: 'unregister', ttid }));
    void retryUntilLanded(attempt, { stopping: () => this.#stopping, onFailure })
      .then((outcome) => {
        if (outcome === 'stopped') this.log.info({ ttid }, 'coordinator stopping: its shutdown stops the timeline manager');
      })
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

  /** Deletes every remote object of a timeline that was deleted locally. Returns how many there were. */
  deleteRemote(tenantId: TenantId, timelineId: TimelineId): Promise<number> {
    return this.#request('delete_remote', { kind: 'delete_remote', tenantId, timelineId });
  }

  /**
   * Saves the control file now, runs a manager pass and waits for the WAL removal it starts.
   * CoordinatorBusyError (503) when CHECKPOINTS_IN_FLIGHT_MAX are running already.
   */
  async checkpoint(timeline: Timeline): Promise<void> {
    if (this.#checkpointsInFlight >= CHECKPOINTS_IN_FLIGHT_MAX) throw new CoordinatorBusyError(`too many checkpoints in flight (${CHECKPOINTS_IN_FLIGHT_MAX}); try again later`);
    this.#checkpointsInFlight += 1;
    try {
      await this.#request('checkpoint', { kind: 'checkpoint', ttid: timeline.ttid });
    } finally {
      this.#checkpointsInFlight -= 1;
    }
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
    this.#metrics.copy(await this.coordinatorMetrics());
    publishTimelineLags(await this.#request('timeline_metrics', { kind: 'timeline_metrics' }));
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
      case 'offloaded': {
        const timeline = this.#timelines.get(notice.ttid);
        if (timeline !== undefined) timeline.offloaded = notice.offloaded;
        return;
      }
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
