/**
 * What the coordinator shares with every timeline manager (`manager.ts`) and its jobs:
 * the manager settings from the node's config, the host (the main thread, reached through the coordinator's RpcPort),
 * the state watcher, the remote storage client, the coordinator-wide upload slots and transfer permits, failpoints,
 * counters and the clock.
 * One object for all managers, so a manager adds one pointer, not a copy. Types only. Coordinator thread.
 */
import type { RemoteStorage } from '../remote/remote_storage.js';
import type { Failpoints } from '../sync/failpoints.js';
import type { Semaphore } from '../sync/semaphore.js';
import type { UploadSlots } from '../remote/upload_slots.js';
import type { Lsn } from '../wal/lsn.js';
import type { CoordinatorOptions, LogLevel, ManagerPersist } from './coordinator_protocol.js';
import type { StateWatcher } from './state_watcher.js';

/** The node settings a manager reads: the coordinator's own options, less what only the coordinator uses. */
export type ManagerConfig = Pick<
  CoordinatorOptions,
  | 'nodeId'
  | 'dataDir'
  | 'noSync'
  | 'controlFileSaveIntervalMs'
  | 'partialBackupTimeoutMs'
  | 'evictionMinResidentMs'
  | 'enableOffload'
  | 'deleteOffloadedWal'
  | 'walBackupParallelJobs'
  | 'walRecycleSegments'
>;

/** What the manager asks of the main thread (through the coordinator's RpcPort). */
export interface ManagerHost {
  persist(ttid: string, update: ManagerPersist): Promise<void>;
  reportBackupLsn(ttid: string, backupLsn: Lsn): void;
  reportActive(ttid: string, active: boolean): void;
  /** The timeline was evicted (its WAL offloaded to remote storage) or brought back: its HTTP status says so. */
  reportOffloaded(ttid: string, offloaded: boolean): void;
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
  uploadSlots: UploadSlots;
  /** Partial segment uploads at once, over all timelines (each holds its segment prefix in memory). */
  partialBackupPermits: Semaphore;
  /** Evictions at once, over all timelines (each holds up to two segments in memory); only ever try-acquired. */
  evictionPermits: Semaphore;
  /** Un-evictions at once, over all timelines (each holds up to two segments in memory); waited for outside the residency mutex. */
  unevictionPermits: Semaphore;
  failpoints: Failpoints;
  counters: ManagerCounters;
  nowMs: () => number;
  random: () => number;
}
