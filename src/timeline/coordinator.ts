/**
 * The coordinator: the worker-thread half of the background work (DESIGN § Threads). It hosts one
 * TimelineManager per registered timeline, the remote storage client (the only one in the process, so an
 * S3 stall can never delay an acknowledgement on the main thread), the upload-slot semaphore and the partial
 * backup, eviction and un-eviction permits that bound segment buffers in memory, the failpoints, and the
 * counters that main reads at /metrics scrape time.
 *
 * It answers the main thread's requests (coordinator_protocol.ts) and asks main to persist control files
 * (main is their only writer). Everything it does for a timeline goes through that timeline's manager.
 * Errors: a handler's operating error (SafekeeperError) becomes an error reply; a failed system call that
 * escaped its module's mapping does too (`systemErrorAsStorageError`, logged with its stack); anything else
 * is a bug and ends the thread (rpc_port.ts).
 * Shutdown: `shutdown` stops every manager (each waits for its jobs), closes remote storage and replies;
 * main then terminates the worker. Coordinator thread; entered from `workers/coordinator.ts`.
 */
import { getHeapStatistics } from 'node:v8';
import { StateBlock, StateBlockChunk } from '../ingest/state_block.js';
import { NotFoundError, SafekeeperError, ShutdownError } from '../errors.js';
import { openRemoteStorage } from '../remote/open.js';
import { timelineKeyPrefix, type RemoteOperation, type RemoteOutcome, type RemoteStorage } from '../remote/remote_storage.js';
import { storageError } from '../storage/layout.js';
import { ttid } from '../acceptor/state.js';
import { Failpoints, parseFailpointAction } from '../sync/failpoints.js';
import { UploadSlots } from '../remote/upload_slots.js';
import { Semaphore } from '../sync/semaphore.js';
import { assert, unreachable } from '../sync/assert.js';
import {
  COORDINATOR_REQUESTS_IN_FLIGHT_MAX,
  type CoordinatorMetrics,
  type CoordinatorNotice,
  type CoordinatorOptions,
  type CoordinatorRequest,
  type MainNotice,
  type MainRequest,
  type ManagerPersist,
} from './coordinator_protocol.js';
import { TimelineManager } from './manager.js';
import { describeError } from './manager_job_runner.js';
import type { ManagerCounters, ManagerHost, ManagerShared } from './manager_shared.js';
import { CoordinatorBusyError, RpcPort, type MessageEndpoint } from './rpc_port.js';
import { StateWatcher } from './state_watcher.js';

/**
 * Segment buffers held by uploads at once, over all timelines: 8 × 16 MiB = 128 MiB at most, and enough to
 * keep `REMOTE_REQUESTS_MAX_DEFAULT` requests busy with the smaller objects in between.
 */
export const UPLOAD_SLOTS = 8;

/**
 * Partial segment uploads at once, over all timelines: Neon's `--partial-backup-concurrency` default. Each
 * reads up to a segment (less one byte) into memory before its put, so 5 × 16 MiB at most; unbounded, every
 * timeline due at once (all of them, partial_backup_timeout after a restart) held one through an S3 slowdown.
 */
export const PARTIAL_BACKUP_PERMITS = 5;

/**
 * Evictions at once, over all timelines: Neon's 2. Each compares its local `.partial` with the remote copy,
 * holding both (up to 2 × 16 MiB) meanwhile. An eviction takes a permit only if one is free and otherwise
 * tries again later, so nothing ever waits for this one.
 */
export const EVICTION_PERMITS = 2;

/**
 * Un-evictions at once, over all timelines. Neon bounds none, but each holds up to two segments (the downloaded
 * object and the local copy it is compared with), and after a restart or an S3 slowdown every compute and reader
 * of an offloaded timeline asks at once (coordinator requests in flight go to 16,384), so we bound their memory:
 * 16 × 2 × 16 MiB = 512 MiB at the default segment size, next to the 128 MiB of upload slots and 80 MiB of partial
 * uploads. Each restore is one GET of at most a segment; at, say, a second each, 16 at once restore a few hundred
 * timelines within GUARD_TIMEOUT_MS, where sharing the eviction bound of 2 left most of those guards timing out.
 * Only a guard of an offloaded timeline waits for one, and only one guard per timeline (eviction.ts).
 */
export const UNEVICTION_PERMITS = 16;
assert(UNEVICTION_PERMITS > EVICTION_PERMITS, 'restores, which computes wait for, get more room than evictions, which nothing waits for');

export class Coordinator {
  readonly #managers = new Map<string, TimelineManager>();
  /** The chunks of state blocks main sent (each once, before any registration that uses it), watched. */
  readonly #stateWatcher = new StateWatcher();
  readonly #rpc: RpcPort;
  readonly #remote: RemoteStorage;
  readonly #failpoints: Failpoints;
  readonly #counters: ManagerCounters = { iterations: 0, segmentsUploaded: 0, bytesUploaded: 0, uploadFailures: 0, segmentsRemoved: 0, partialUploads: 0, evictions: 0, restores: 0 };
  readonly #remoteRequests: Record<string, number> = {};
  readonly #shared: ManagerShared;
  #stopping = false;

  constructor(endpoint: MessageEndpoint, readonly options: CoordinatorOptions) {
    this.#rpc = new RpcPort(endpoint, { onRequest: (body) => this.#onRequest(body as MainRequest), onNotify: (body) => this.#onNotify(body as MainNotice) }, COORDINATOR_REQUESTS_IN_FLIGHT_MAX);
    this.#remote = openRemoteStorage(options.remoteStorage, {
      noSync: options.noSync,
      policy: { requestTimeoutMs: options.remoteRequestTimeoutMs },
      observer: (operation: RemoteOperation, outcome: RemoteOutcome) => {
        const key = `${operation} ${outcome}`;
        this.#remoteRequests[key] = (this.#remoteRequests[key] ?? 0) + 1;
      },
      ...(options.s3Credentials !== undefined ? { credentials: options.s3Credentials } : {}),
    });
    this.#failpoints = new Failpoints(options.failpointsEnabled);
    const host: ManagerHost = {
      persist: (ttid, update) => this.#rpc.request<null>({ kind: 'persist', ttid, update } satisfies CoordinatorRequest).then(() => undefined),
      reportBackupLsn: (ttid, backupLsn) => this.#notify({ kind: 'backup_lsn', ttid, backupLsn }),
      reportActive: (ttid, active) => this.#notify({ kind: 'active', ttid, active }),
      reportOffloaded: (ttid, offloaded) => this.#notify({ kind: 'offloaded', ttid, offloaded }),
      log: (level, ttid, message, fields = {}) => this.#notify({ kind: 'log', level, ttid, message, fields }),
    };
    this.#shared = {
      config: {
        nodeId: options.nodeId,
        dataDir: options.dataDir,
        noSync: options.noSync,
        controlFileSaveIntervalMs: options.controlFileSaveIntervalMs,
        partialBackupTimeoutMs: options.partialBackupTimeoutMs,
        evictionMinResidentMs: options.evictionMinResidentMs,
        enableOffload: options.enableOffload,
        deleteOffloadedWal: options.deleteOffloadedWal,
        walBackupParallelJobs: options.walBackupParallelJobs,
        walRecycleSegments: options.walRecycleSegments,
      },
      host,
      stateWatcher: this.#stateWatcher,
      remote: this.#remote,
      uploadSlots: new UploadSlots(UPLOAD_SLOTS),
      partialBackupPermits: new Semaphore(PARTIAL_BACKUP_PERMITS),
      evictionPermits: new Semaphore(EVICTION_PERMITS),
      unevictionPermits: new Semaphore(UNEVICTION_PERMITS),
      failpoints: this.#failpoints,
      counters: this.#counters,
      nowMs: () => performance.now(),
      random: Math.random,
    };
  }

  #notify(notice: CoordinatorNotice): void {
    this.#rpc.notify(notice);
  }

  #manager(ttid: string): TimelineManager {
    const manager = this.#managers.get(ttid);
    if (manager === undefined) throw new NotFoundError(`timeline ${ttid} has no manager`);
    return manager;
  }

  #onNotify(notice: MainNotice): void {
    switch (notice.kind) {
      case 'state_chunk':
        this.#stateWatcher.addChunk(new StateBlockChunk(notice.chunkId, notice.blockCount, notice.buffer));
        return;
      case 'register': {
        if (this.#stopping || this.#managers.has(notice.timeline.ttid)) return;
        const chunk = this.#stateWatcher.chunk(notice.timeline.stateChunkId);
        assert(chunk !== undefined, 'a state block chunk arrives before the registrations that use it');
        const manager = new TimelineManager(notice.timeline, new StateBlock(chunk, notice.timeline.stateBlockIndex), this.#shared);
        this.#managers.set(notice.timeline.ttid, manager);
        manager.start();
        return;
      }
      case 'release_guard':
        this.#managers.get(notice.ttid)?.releaseGuard(notice.guardId);
        return;
      default:
        unreachable(notice, 'unknown notice from main');
    }
  }

  /** Answers one request from main; a system call's error that a handler let through is an operating error here. */
  async #onRequest(request: MainRequest): Promise<{ value: unknown; transfer?: ArrayBuffer[] }> {
    try {
      return await this.#answer(request);
    } catch (error) {
      const mapped = systemErrorAsStorageError(error, request.kind);
      if (mapped !== error) {
        const ttid = 'ttid' in request ? request.ttid : null;
        this.#notify({ kind: 'log', level: 'warn', ttid, message: 'unmapped fs error reached the coordinator request boundary', fields: { request: request.kind, err: describeError(error), stack: (error as Error).stack } });
      }
      throw mapped;
    }
  }

  async #answer(request: MainRequest): Promise<{ value: unknown; transfer?: ArrayBuffer[] }> {
    switch (request.kind) {
      case 'unregister': {
        const manager = this.#managers.get(request.ttid);
        if (manager !== undefined) {
          this.#managers.delete(request.ttid);
          await manager.stop();
        }
        return { value: null };
      }
      case 'checkpoint':
        await this.#manager(request.ttid).checkpoint();
        return { value: null };
      case 'delete_remote': {
        // Main unregisters a timeline (retrying while this thread is busy) before its delete gets here, so a
        // manager still registered means that unregister has not landed yet: refuse with a retryable error
        // (503), not an assertion. The local files are gone already; a later delete removes the objects.
        const key = ttid(request.tenantId, request.timelineId);
        if (this.#managers.has(key)) throw new CoordinatorBusyError(`timeline ${key} still has a manager running; its remote objects are kept, delete it again later`);
        const signal = new AbortController().signal;
        const objects = await this.#remote.list(timelineKeyPrefix(request.tenantId, request.timelineId), signal);
        await this.#remote.delete(objects.map((object) => object.key), signal);
        return { value: objects.length };
      }
      case 'acquire_guard':
        if (this.#stopping) throw new ShutdownError();
        await this.#manager(request.ttid).acquireGuard(request.guardId);
        return { value: null };
      case 'read_remote_wal': {
        const bytes = await this.#manager(request.ttid).readRemoteWal(request.startLsn, request.lengthBytes);
        const copy = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer ? bytes : bytes.slice();
        return { value: copy, transfer: [copy.buffer as ArrayBuffer] };
      }
      case 'metrics':
        return { value: this.#metrics() };
      case 'timeline_metrics':
        return { value: [...this.#managers.values()].map((manager) => manager.metrics) };
      case 'set_failpoint':
        this.#failpoints.set(request.name, parseFailpointAction(request.action));
        return { value: null };
      case 'list_failpoints':
        return { value: this.#failpoints.list() };
      case 'shutdown':
        this.#stopping = true;
        await Promise.all([...this.#managers.values()].map((manager) => manager.stop()));
        this.#managers.clear();
        this.#stateWatcher.close();
        await this.#remote.close();
        return { value: null };
      default:
        return unreachable(request, 'unknown request from main');
    }
  }

  #metrics(): CoordinatorMetrics {
    let uploadsRunning = 0;
    let active = 0;
    let evicted = 0;
    for (const manager of this.#managers.values()) {
      uploadsRunning += manager.uploadsRunning;
      if (manager.active) active += 1;
      if (manager.offloaded) evicted += 1;
    }
    const counters = this.#counters;
    return {
      managerIterationsTotal: counters.iterations,
      backupUploadsRunning: uploadsRunning,
      backupSegmentsUploadedTotal: counters.segmentsUploaded,
      backupBytesUploadedTotal: counters.bytesUploaded,
      backupUploadFailuresTotal: counters.uploadFailures,
      walSegmentsRemovedTotal: counters.segmentsRemoved,
      partialBackupUploadsTotal: counters.partialUploads,
      evictionsTotal: counters.evictions,
      restoresTotal: counters.restores,
      activeTimelines: active,
      evictedTimelines: evicted,
      heapUsedBytes: getHeapStatistics().used_heap_size,
      remoteRequestsTotal: { ...this.#remoteRequests },
    };
  }
}

/**
 * The request boundary's safety net. A failed system call (a Node error carrying `errno` and `syscall`) that a
 * handler let through unmapped is an operating error (a full or failing disk), not a bug: it becomes
 * DiskFullError, NotFoundError or StorageIoError (layout.ts `storageError`) and so an error reply, instead of
 * ending the coordinator and with it the node. Anything else (a TypeError, an AssertionError, Node's ERR_*
 * argument errors, which have no syscall) is returned unchanged and still ends the thread, as a bug should.
 */
export function systemErrorAsStorageError(error: unknown, requestKind: string): unknown {
  if (!(error instanceof Error) || error instanceof SafekeeperError) return error;
  const { errno, syscall, path } = error as NodeJS.ErrnoException;
  if (typeof errno !== 'number' || typeof syscall !== 'string') return error;
  return storageError(error, `${syscall} (${requestKind} request)`, path ?? 'unknown path');
}

/** The worker's entry: builds the coordinator on `endpoint` (parentPort). */
export function runCoordinator(endpoint: MessageEndpoint, options: CoordinatorOptions): Coordinator {
  return new Coordinator(endpoint, options);
}

export type { ManagerPersist };
