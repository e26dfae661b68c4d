/**
 * TimelineRegistry: every timeline of this node, by ttid. At startup it loads each
 * `<data_dir>/<tenant>/<timeline>` dir (timeline_loader.ts opens one: control file, then the end of WAL
 * found by a scan in a writer worker). A timeline that fails to load is kept as `broken` with its reason,
 * and the node and the other timelines go on.
 *
 * Creation is crash-safe: the control file is written into a staging dir under `tmp/`, which is then
 * durably renamed into place; `tmp/` is cleared at startup. Deletion cancels the timeline, waits for its
 * gate, and only then touches files: it durably renames the dir into `tmp/` (one atomic step: after a
 * crash the timeline is either whole or gone) and then removes it. A tombstone (in memory, as in Neon)
 * refuses re-creation, by a proposer or over HTTP, for TOMBSTONE_TTL_MS after the delete began.
 *
 * Create and delete of one ttid race (a compute's first START_WAL_PUSH against an HTTP DELETE, a retried
 * DELETE). Invariants: a delete sets the tombstone before its first await, and a create publishes (map +
 * `onOpen`, which registers the manager) only after its last await and only without a tombstone, so no
 * timeline is published or registered once its delete has begun, let alone after its remote deletion. A
 * delete waits for a create in flight before touching files, and one running delete per ttid does the work
 * (`#deleting`): a second one joins it instead of removing files under tasks the first is still waiting for.
 * Main thread.
 */
import { mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  newTimelineState,
  ttid,
  type MembershipConfiguration,
  type ServerInfo,
  type TenantId,
  type TimelineId,
} from '../acceptor/state.js';
import { ConflictError, InvalidArgumentError, NotFoundError, ShutdownError } from '../errors.js';
import { StateBlockArena } from '../ingest/state_block_arena.js';
import type { PrepareResult, WriteResult } from '../ingest/writer_protocol.js';
import type { WriterPool } from '../ingest/writer_pool.js';
import { saveControlFile } from '../storage/control_file.js';
import { clearTmpDir, createStagingDir, deletingDirPath, isIdDirName, storageCall, storageError, timelineDir, tmpDirPath } from '../storage/layout.js';
import { assert } from '../sync/assert.js';
import type { CancelToken } from '../sync/cancel.js';
import { formatLsn, isValidSegmentSize, walEndLsnMax, type Lsn } from '../wal/lsn.js';
import { decoderStartProblem } from '../wal/record_decoder.js';
import { pageMagicForPgVersion } from '../wal/page.js';
import type { Timeline } from './timeline.js';
import { openTimeline } from './timeline_loader.js';
import type { LogSink } from '../log.js';

/** How long a graceful stop may spend starting control-file saves (see `shutdown`). */
const SHUTDOWN_SAVE_TIMEOUT_MS = 10_000;
/** Shutdown saves run this many at a time: each is a write, two fsyncs and a rename on libuv's pool. */
const SHUTDOWN_SAVES_PARALLEL = 8;
/** How long a deleted timeline's id refuses creation (reference: pruned after 24 h; a restart forgets them). */
export const TOMBSTONE_TTL_MS = 24 * 60 * 60 * 1000;

export interface RegistryOptions {
  dataDir: string;
  nodeId: bigint;
  noSync: boolean;
  ringSizeBytes: number;
  /** How long a timeline keeps its ring after its last proposer left (TimelineWal `releaseRing`). */
  ringReleaseDelayMs: number;
  pool: WriterPool;
  /** The node's root token; every timeline's token is a child of it. */
  cancel: CancelToken;
  log: Pick<LogSink, 'info' | 'warn' | 'error'>;
  onBatch?: (bytes: number, result: WriteResult) => void;
  onPrepared?: (result: PrepareResult) => void;
  /** Called with the bytes of each ring a timeline takes (positive) or releases (negative), for metrics. */
  onRingBytes?: (deltaBytes: number) => void;
  /** Called once for every timeline loaded or created (after it is in the map): e.g. start its manager. */
  onOpen?: (timeline: Timeline) => void;
  /** Deletes a timeline's remote objects (after its local deletion, unless `only_local`). Never runs before the timeline's manager is unregistered. */
  deleteRemote?: (tenantId: TenantId, timelineId: TimelineId) => Promise<number>;
  /** The clock tombstones expire by (ms); performance.now by default, a fake one in tests. */
  nowMs?: () => number;
}

export interface CreateTimelineArgs {
  tenantId: TenantId;
  timelineId: TimelineId;
  server: ServerInfo;
  startLsn: Lsn;
  commitLsn: Lsn;
  mconf?: MembershipConfiguration;
}

export class TimelineRegistry {
  readonly #timelines = new Map<string, Timeline>();
  /** Creations in flight; each ends published or, when deleted meanwhile, discarded. */
  readonly #creating = new Map<string, Promise<Timeline>>();
  /** The running delete of each ttid; a second delete joins it. Removed when it settles, so a later one retries. */
  readonly #deleting = new Map<string, RunningDelete>();
  /** ttid → when its latest delete began, oldest first; see `#tombstoned`. */
  readonly #tombstones = new Map<string, number>();
  /** Every timeline's state block, broken ones included; a block is freed when its timeline is deleted. */
  readonly #stateBlocks = new StateBlockArena();

  private constructor(private readonly options: RegistryOptions) {}

  static async load(options: RegistryOptions): Promise<TimelineRegistry> {
    const registry = new TimelineRegistry(options);
    await clearTmpDir(options.dataDir);
    for (const tenant of await readdir(options.dataDir, { withFileTypes: true })) {
      if (!tenant.isDirectory() || !isIdDirName(tenant.name)) continue;
      for (const timeline of await readdir(`${options.dataDir}/${tenant.name}`, { withFileTypes: true })) {
        if (!timeline.isDirectory() || !isIdDirName(timeline.name)) continue;
        const loaded = await registry.#open(tenant.name as TenantId, timeline.name as TimelineId);
        registry.#timelines.set(loaded.ttid, loaded);
        options.onOpen?.(loaded);
      }
    }
    return registry;
  }

  get(tenantId: TenantId, timelineId: TimelineId): Timeline | undefined {
    return this.#timelines.get(ttid(tenantId, timelineId));
  }

  /** The timeline, or NotFoundError (404 / an ErrorResponse). */
  require(tenantId: TenantId, timelineId: TimelineId): Timeline {
    const timeline = this.get(tenantId, timelineId);
    if (timeline === undefined) throw new NotFoundError(`timeline ${ttid(tenantId, timelineId)} not found`);
    return timeline;
  }

  list(): Timeline[] {
    return [...this.#timelines.values()];
  }

  isDeleted(tenantId: TenantId, timelineId: TimelineId): boolean {
    return this.#tombstoned(ttid(tenantId, timelineId));
  }

  /**
   * Whether a delete of `key` began within TOMBSTONE_TTL_MS or still runs. Expired tombstones are dropped
   * here, so the map holds only the last day's deletes, however many ids were ever deleted.
   */
  #tombstoned(key: string): boolean {
    const expiredAtMs = this.#nowMs() - TOMBSTONE_TTL_MS;
    for (const [deleted, atMs] of this.#tombstones) {
      if (atMs > expiredAtMs) break; // insertion order is time order
      if (!this.#deleting.has(deleted)) this.#tombstones.delete(deleted);
    }
    return this.#tombstones.has(key);
  }

  #setTombstone(key: string): void {
    this.#tombstones.delete(key); // re-inserted last, keeping the map in time order
    this.#tombstones.set(key, this.#nowMs());
  }

  #nowMs(): number {
    return this.options.nowMs?.() ?? performance.now();
  }

  /** Creates a timeline, or returns the existing one (idempotent). Refused for a deleted timeline. */
  async create(args: CreateTimelineArgs): Promise<Timeline> {
    const key = ttid(args.tenantId, args.timelineId);
    const existing = this.#timelines.get(key) ?? this.#creating.get(key);
    if (existing !== undefined) return existing;
    if (this.options.cancel.cancelled) throw new ShutdownError();
    if (this.#tombstoned(key)) throw new ConflictError(`timeline ${key} was deleted`);
    pageMagicForPgVersion(args.server.pgVersion); // throws InvalidArgumentError naming the supported versions
    if (!isValidSegmentSize(args.server.walSegSizeBytes)) throw new InvalidArgumentError(`wal_seg_size ${args.server.walSegSizeBytes} is not a power of two in [1 MiB, 1 GiB]`);
    if (args.commitLsn < args.startLsn) throw new InvalidArgumentError('commit_lsn must not be below start_lsn');
    // Recovery decodes the WAL from commit_lsn, and the first election from start_lsn: both must be where a
    // record can start (0: no WAL yet, as a proposer's greeting creates it).
    for (const [name, lsn] of [['start_lsn', args.startLsn], ['commit_lsn', args.commitLsn]] as const) {
      if (lsn === 0n) continue;
      const problem = lsn >= walEndLsnMax(args.server.walSegSizeBytes) ? 'is in the last segment of the LSN space' : decoderStartProblem(lsn, args.server.walSegSizeBytes);
      if (problem !== null) throw new InvalidArgumentError(`${name} ${formatLsn(lsn)} ${problem}`);
    }
    const creating = this.#createAndPublish(key, args).finally(() => this.#creating.delete(key));
    this.#creating.set(key, creating);
    return creating;
  }

  /**
   * Deletes a timeline: cancel, wait for its tasks (its manager included), move its directory into `tmp/`
   * and remove it, then its remote objects unless `onlyLocal`. A crash before the move leaves the timeline
   * whole; after it, the timeline is gone locally (load clears `tmp/`) and a repeated delete removes any
   * remote objects left. A delete while one runs joins it, so neither returns before the timeline stopped.
   */
  async delete(tenantId: TenantId, timelineId: TimelineId, options: { onlyLocal?: boolean } = {}): Promise<DeleteResult> {
    const key = ttid(tenantId, timelineId);
    const onlyLocal = options.onlyLocal === true;
    this.#setTombstone(key); // before any await: from here on no create publishes this timeline
    const running = this.#deleting.get(key);
    if (running !== undefined) {
      if (!running.onlyLocal || onlyLocal) return running.result; // it does all this one asks for
      // The running delete keeps the remote objects and this one removes them: go after it. Its own caller
      // gets its error, if any; this delete tries again either way.
      const firstDirExisted = await running.result.then((result) => result.dirExisted, () => false);
      const own = await this.delete(tenantId, timelineId, options);
      return { dirExisted: firstDirExisted || own.dirExisted };
    }
    const result = this.#deleteOnce(key, tenantId, timelineId, onlyLocal).finally(() => this.#deleting.delete(key));
    this.#deleting.set(key, { onlyLocal, result });
    return result;
  }

  /**
   * Cancels every timeline, waits for all their tasks to finish, then saves each control file whose in-memory
   * LSNs (commit, backup, peer horizon, remote consistent) moved since its last save. Managers save those only
   * every control_file_save_interval, and after a restart readers are served up to the persisted commit_lsn:
   * without this save, WAL committed in the last interval before a clean stop would not be served again until
   * a proposer came back, which for a suspended compute can be hours.
   */
  async shutdown(): Promise<void> {
    const timelines = this.list();
    await Promise.all(timelines.map((timeline) => timeline.shutdown(new ShutdownError())));
    await Promise.all(timelines.map((timeline) => timeline.wal?.quiesce(new AbortController().signal)));
    await this.#saveInMemoryState(timelines);
  }

  /**
   * The shutdown save: SHUTDOWN_SAVES_PARALLEL at a time, none started after SHUTDOWN_SAVE_TIMEOUT_MS (one
   * started finishes its write). A save that fails or is not started loses nothing acknowledged: the WAL is
   * durable, and the LSNs are what the next proposer or manager pass brings back.
   */
  async #saveInMemoryState(timelines: readonly Timeline[]): Promise<void> {
    const signal = AbortSignal.timeout(SHUTDOWN_SAVE_TIMEOUT_MS);
    const queue = timelines.filter((timeline) => timeline.acceptor !== null);
    let saved = 0;
    let notSaved = 0;
    const saveNext = async (): Promise<void> => {
      for (let timeline = queue.pop(); timeline !== undefined; timeline = queue.pop()) {
        const acceptor = timeline.acceptor;
        assert(acceptor !== null, 'only timelines with an acceptor are queued');
        try {
          if (await timeline.acceptorLock.run(signal, () => acceptor.persistInMemory(signal))) saved += 1;
        } catch (error) {
          notSaved += 1;
          this.options.log.warn({ tenant_id: timeline.tenantId, timeline_id: timeline.timelineId, err: error }, 'control file not saved at shutdown');
        }
      }
    };
    await Promise.all(Array.from({ length: SHUTDOWN_SAVES_PARALLEL }, saveNext));
    if (saved + notSaved > 0) this.options.log.info({ saved, not_saved: notSaved }, 'control files saved at shutdown');
  }

  /** Creates the timeline on disk and opens it, then publishes it unless it was deleted meanwhile. */
  async #createAndPublish(key: string, args: CreateTimelineArgs): Promise<Timeline> {
    const timeline = await this.#createOnDisk(args);
    // No await from this check to `onOpen`: a delete that begins later finds the timeline in the map.
    if (this.#tombstones.has(key)) {
      // The delete that set the tombstone waits for this creation, then removes the directory (crash-safely).
      assert(this.#deleting.has(key), 'a tombstone set during a creation belongs to a running delete');
      await this.#stop(timeline, new ShutdownError(`timeline ${key} was deleted while being created`));
      throw new ConflictError(`timeline ${key} was deleted`);
    }
    this.#timelines.set(timeline.ttid, timeline); // the timeline's own string as the key: one copy per timeline
    this.options.onOpen?.(timeline);
    return timeline;
  }

  async #deleteOnce(key: string, tenantId: TenantId, timelineId: TimelineId, onlyLocal: boolean): Promise<DeleteResult> {
    const timeline = this.#timelines.get(key);
    this.#timelines.delete(key);
    const creating = this.#creating.get(key);
    // A creation in flight publishes nothing now (the tombstone is set), but it is still writing the directory:
    // let it finish first. Its caller owns its result or error; here only its end matters.
    if (creating !== undefined) await creating.then(ignoreResult, ignoreResult);
    assert(!this.#timelines.has(key), 'no timeline is published once its delete has begun');
    if (timeline !== undefined) await this.#stop(timeline, new ShutdownError(`timeline ${key} is being deleted`));
    // Local first: once the move is durable the timeline cannot load again, so it cannot upload again or
    // register a manager either. Remote objects go last; removing them first would leave, after a crash, a
    // timeline that loads with its backed-up (or offloaded) WAL gone from remote storage.
    const moved = await moveTimelineDirToTmp(this.options.dataDir, tenantId, timelineId, this.options.noSync);
    // What a failed removal leaves in tmp/ goes at the next startup.
    if (moved !== null) await storageCall('rm', moved, () => rm(moved, { recursive: true, force: true }));
    if (!onlyLocal && this.options.deleteRemote !== undefined) {
      const deleted = await this.options.deleteRemote(tenantId, timelineId);
      this.options.log.info({ tenant_id: tenantId, timeline_id: timelineId, remote_objects: deleted }, 'timeline deleted');
    }
    return { dirExisted: moved !== null };
  }

  /** Cancels `timeline`, waits for its tasks and write tasks, then frees its state block. */
  async #stop(timeline: Timeline, reason: ShutdownError): Promise<void> {
    await timeline.shutdown(reason);
    if (timeline.wal !== null) await timeline.wal.quiesce(new AbortController().signal);
    // Its manager has stopped (the gate waited for it) and no write task runs: nothing uses the block's place.
    this.#stateBlocks.free(timeline.state);
  }

  async #createOnDisk(args: CreateTimelineArgs): Promise<Timeline> {
    const { dataDir, noSync } = this.options;
    const state = newTimelineState({ ...args, nowMs: Date.now() });
    const staging = await createStagingDir(dataDir, args.tenantId, args.timelineId);
    await saveControlFile(staging, state, { noSync });
    const dir = timelineDir(dataDir, args.tenantId, args.timelineId);
    if (await exists(dir)) throw new ConflictError(`timeline directory ${dir} already exists but is not loaded`);
    await mkdir(dirname(dir), { recursive: true });
    await fsyncDir(dataDir, noSync);
    await rename(staging, dir);
    await fsyncDir(dirname(dir), noSync);
    this.options.log.info({ tenant_id: args.tenantId, timeline_id: args.timelineId }, 'timeline created');
    return this.#open(args.tenantId, args.timelineId);
  }

  /** Opens a timeline's directory (timeline_loader.ts) in a block of the arena; the block is freed if that throws. */
  async #open(tenantId: TenantId, timelineId: TimelineId): Promise<Timeline> {
    const stateBlock = this.#stateBlocks.allocate();
    try {
      return await openTimeline(this.options, stateBlock, tenantId, timelineId);
    } catch (error) {
      this.#stateBlocks.free(stateBlock);
      throw error;
    }
  }
}

export interface DeleteResult {
  /** Whether the timeline's directory was there to remove (HTTP `dir_existed`). */
  dirExisted: boolean;
}

interface RunningDelete {
  onlyLocal: boolean;
  result: Promise<DeleteResult>;
}

/**
 * The one step of a delete that a crash can observe: renames the timeline dir into `tmp/` (same filesystem,
 * so atomic) and fsyncs the tenant dir, which load lists. Before it the timeline is whole; after it, gone:
 * never a control file without its segments, nor segments without a control file. Where the entry lands
 * in `tmp/` does not need to be durable, since `tmp/` is cleared at startup. Returns the new path, or null
 * when there was no dir. Exported so a test can stop a delete right here, as a crash would.
 */
export async function moveTimelineDirToTmp(dataDir: string, tenantId: TenantId, timelineId: TimelineId, noSync: boolean): Promise<string | null> {
  const dir = timelineDir(dataDir, tenantId, timelineId);
  const target = deletingDirPath(dataDir, tenantId, timelineId);
  await storageCall('mkdir', tmpDirPath(dataDir), () => mkdir(tmpDirPath(dataDir), { recursive: true }));
  try {
    await rename(dir, target);
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return null; // tmp/ exists: it is `dir` that does not
    throw storageError(error, 'rename', dir);
  }
  await fsyncDir(dirname(dir), noSync);
  return target;
}

/** A delete waits for a creation in flight to end, whatever its outcome (its caller owns that). */
function ignoreResult(): void {}

async function exists(path: string): Promise<boolean> {
  try {
    await (await open(path, 'r')).close();
    return true;
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return false;
    throw error;
  }
}

export async function fsyncDir(path: string, noSync: boolean): Promise<void> {
  if (noSync) return;
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
