/**
 * The main ⇄ coordinator protocol: every message that crosses between the main thread and the coordinator
 * worker (`workers/coordinator.ts`), as data. Carried by `RpcPort` (requests with replies, bounded in
 * flight; notifications without). LSNs are bigints, state blocks travel as their chunk's SharedArrayBuffer
 * (once per chunk) and an index, downloaded WAL as a transferred buffer.
 *
 * Main → coordinator
 *   notify  state_chunk     a chunk of state blocks (its SharedArrayBuffer), sent once, before the first
 *                           registration of a timeline whose block is in it
 *   notify  register        a timeline to manage: ids, segment size, state block (chunk id and index),
 *                           persisted partial backup list and eviction state (the LSNs are in the state block)
 *   notify  release_guard   a residency guard is dropped
 *   request unregister      stop the manager; replies once every job of it has ended
 *   request checkpoint      save the control file now, run a manager pass, wait for the removal it starts
 *   request acquire_guard   a residency guard (id chosen by main); the manager unevicts first if needed
 *   request read_remote_wal WAL from remote storage → Uint8Array (≤ one segment)
 *   request metrics         → CoordinatorMetrics (asked at /metrics scrape time)
 *   request timeline_metrics → TimelineMetrics[], every manager's lags (asked at /metrics scrape time)
 *   request set_failpoint / list_failpoints   (testing_failpoints only)
 *   request shutdown        stop every manager, close remote storage; the worker then exits
 * Coordinator → main
 *   request persist         persist the acceptor's in-memory LSNs (+ the manager's partial backup list or
 *                           eviction state) — main stays the only control-file writer
 *   notify  backup_lsn      an upload was confirmed: merge into the acceptor's in-memory backup_lsn
 *   notify  active          the timeline entered or left the active set (for the broker)
 *   notify  log             a log record, written by main's logger with the timeline's fields
 * Any thread (types only).
 */
import type { EvictionState, PartialRemoteSegment, TenantId, TimelineId } from '../acceptor/state.js';
import type { RemoteStorageConfig } from '../config/value_parsers.js';
import type { FailpointState } from '../sync/failpoints.js';
import type { Lsn } from '../wal/lsn.js';

/** Requests in flight in each direction. One guard per connection is the largest user. */
export const COORDINATOR_REQUESTS_IN_FLIGHT_MAX = 16_384;
/** A proposer or reader waits this long for a residency guard (an unevict downloads one segment). */
export const GUARD_TIMEOUT_MS = 30_000;

/** workerData of the coordinator: what it needs from the config, resolved. */
export interface CoordinatorOptions {
  nodeId: bigint;
  dataDir: string;
  noSync: boolean;
  remoteStorage: RemoteStorageConfig;
  remoteRequestTimeoutMs: number;
  controlFileSaveIntervalMs: number;
  partialBackupTimeoutMs: number;
  evictionMinResidentMs: number;
  enableOffload: boolean;
  deleteOffloadedWal: boolean;
  walBackupParallelJobs: number;
  walRecycleSegments: number;
  failpointsEnabled: boolean;
  /** S3 credentials for tests; production uses the SDK's default chain. */
  s3Credentials?: { accessKeyId: string; secretAccessKey: string };
}

export interface TimelineRegistration {
  ttid: string;
  tenantId: TenantId;
  timelineId: TimelineId;
  segmentSizeBytes: number;
  /** The timeline's state block: block `stateBlockIndex` of the chunk sent as `state_chunk` `stateChunkId`. */
  stateChunkId: number;
  stateBlockIndex: number;
  partialSegments: PartialRemoteSegment[];
  evictionState: EvictionState;
}

export type MainNotice =
  | { kind: 'state_chunk'; chunkId: number; blockCount: number; buffer: SharedArrayBuffer }
  | { kind: 'register'; timeline: TimelineRegistration }
  | { kind: 'release_guard'; ttid: string; guardId: number };

export type MainRequest =
  | { kind: 'unregister'; ttid: string }
  | { kind: 'checkpoint'; ttid: string }
  /** Removes every remote object of a deleted timeline (its manager is unregistered first). */
  | { kind: 'delete_remote'; tenantId: TenantId; timelineId: TimelineId }
  | { kind: 'acquire_guard'; ttid: string; guardId: number }
  | { kind: 'read_remote_wal'; ttid: string; startLsn: Lsn; lengthBytes: number }
  | { kind: 'metrics' }
  | { kind: 'timeline_metrics' }
  | { kind: 'set_failpoint'; name: string; action: string }
  | { kind: 'list_failpoints' }
  | { kind: 'shutdown' };

/** What each main request's reply carries. */
export interface MainReplies {
  unregister: null;
  checkpoint: null;
  /** How many objects were deleted. */
  delete_remote: number;
  acquire_guard: null;
  read_remote_wal: Uint8Array;
  metrics: CoordinatorMetrics;
  timeline_metrics: TimelineMetrics[];
  set_failpoint: null;
  list_failpoints: FailpointState[];
  shutdown: null;
}

/** The fields of the control file only the manager changes. Empty = persist the in-memory LSNs only. */
export interface ManagerPersist {
  partialSegments?: PartialRemoteSegment[];
  evictionState?: EvictionState;
}

export type CoordinatorRequest = { kind: 'persist'; ttid: string; update: ManagerPersist };

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export type CoordinatorNotice =
  | { kind: 'backup_lsn'; ttid: string; backupLsn: Lsn }
  | { kind: 'active'; ttid: string; active: boolean }
  | { kind: 'offloaded'; ttid: string; offloaded: boolean }
  | { kind: 'log'; level: LogLevel; ttid: string | null; message: string; fields: Record<string, unknown> };

export interface TimelineMetrics {
  tenantId: string;
  timelineId: string;
  /** flush_lsn − backup_lsn. */
  backupLagBytes: number;
  /** flush_lsn − start of local WAL (what removal has not removed yet). */
  removalLagBytes: number;
  evicted: boolean;
}

/** Cumulative counters (totals since the coordinator started) and current gauges. */
export interface CoordinatorMetrics {
  managerIterationsTotal: number;
  backupUploadsRunning: number;
  backupSegmentsUploadedTotal: number;
  backupBytesUploadedTotal: number;
  backupUploadFailuresTotal: number;
  walSegmentsRemovedTotal: number;
  partialBackupUploadsTotal: number;
  evictionsTotal: number;
  restoresTotal: number;
  activeTimelines: number;
  evictedTimelines: number;
  /** V8 heap in use on the coordinator thread (managers, remote storage client). */
  heapUsedBytes: number;
  /** `${operation} ${outcome}` → count. */
  remoteRequestsTotal: Record<string, number>;
}
