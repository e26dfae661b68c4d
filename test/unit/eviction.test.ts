/**
 * Residency transitions on real files (timeline/eviction.ts, remote/wal_download.ts): segments in temp dirs,
 * the local-fs remote storage, partial objects uploaded by the real partial backup. Covered: the startup
 * cleanup of an offloaded timeline racing a guard that unevicts; an un-eviction whose download cannot be
 * written (a clean SK_STORAGE_IO, also through a real coordinator, which keeps serving); eviction of a
 * `.partial` with unacknowledged bytes after flush_lsn; the back-off of a failed eviction; the permits: an
 * eviction never queues for one, un-evictions run UNEVICTION_PERMITS at once with one waiter per timeline, a
 * guard that must unevict waits (outside the residency mutex) until released or stopped, and a resident
 * timeline's guard waits for none, an eviction of its own timeline giving way to it; and partial-backup garbage
 * collection through the jobs: a failed one keeps the list as persisted and is retried, and no object leaks.
 */
import assert from 'node:assert/strict';
import { mkdir, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { ttid as ttidOf, type EvictionState, type PartialRemoteSegment, type TenantId, type TimelineId } from '../../src/acceptor/state.js';
import { CancelledError, DiskFullError, SafekeeperError, ShutdownError, StorageIoError } from '../../src/errors.js';
import { StateBlock, StateBlockChunk, type SlotName } from '../../src/ingest/state_block.js';
import { LocalFsBackend } from '../../src/remote/local_fs.js';
import { partialObjectName, uploadPartialSegment } from '../../src/remote/partial_backup.js';
import { REMOTE_POLICY_DEFAULT, RemoteStorage, RemoteStorageError, objectKey, timelineKeyPrefix, type ByteRange, type RemoteBackend, type RemoteObjectHead, type RemoteObjectInfo } from '../../src/remote/remote_storage.js';
import { UploadSlots } from '../../src/remote/upload_slots.js';
import { PartialSegmentMismatchError } from '../../src/remote/wal_download.js';
import { REMOTE_PARTIAL_TEMP_NAME, segmentPath, timelineDir } from '../../src/storage/layout.js';
import { Failpoints } from '../../src/sync/failpoints.js';
import { Semaphore } from '../../src/sync/semaphore.js';
import { segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { Coordinator, EVICTION_PERMITS, UNEVICTION_PERMITS, systemErrorAsStorageError } from '../../src/timeline/coordinator.js';
import type { CoordinatorOptions, ManagerPersist, TimelineRegistration } from '../../src/timeline/coordinator_protocol.js';
import { EvictionControl } from '../../src/timeline/eviction.js';
import { ManagerBackup } from '../../src/timeline/manager_backup.js';
import { PARTIAL_GARBAGE_RECORDS_MAX, planPass, type ManagerSnapshot } from '../../src/timeline/manager_decisions.js';
import { JOB_RETRY_MS, type JobsOwner } from '../../src/timeline/manager_job_runner.js';
import { ManagerJobs } from '../../src/timeline/manager_jobs.js';
import type { ManagerConfig, ManagerShared } from '../../src/timeline/manager_shared.js';
import type { MessageEndpoint } from '../../src/timeline/rpc_port.js';
import { StateWatcher } from '../../src/timeline/state_watcher.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

const SEGMENT_BYTES = 1 << 20;
const TENANT_ID = 'a'.repeat(32) as TenantId;
const TIMELINE_ID = 'b'.repeat(32) as TimelineId;
const TTID = ttidOf(TENANT_ID, TIMELINE_ID);
const FLUSH_SEGNO = 5n;
/** Not page aligned: flush_lsn is the end of a record. */
const FLUSH_OFFSET_BYTES = 8192 + 120;
const FLUSH_LSN = segmentStartLsn(FLUSH_SEGNO, SEGMENT_BYTES) + BigInt(FLUSH_OFFSET_BYTES);
const TERM = 3n;
const EVICTION_MIN_RESIDENT_MS = 600_000;

after(() => removeAllTempDirs());

/** The segment up to flush_lsn (acknowledged WAL), then `tail` (bytes written but never acknowledged), then zeros. */
function segmentImage(tail: Uint8Array = new Uint8Array(0)): Buffer {
  const image = Buffer.alloc(SEGMENT_BYTES);
  for (let index = 0; index < FLUSH_OFFSET_BYTES; index++) image[index] = (index * 31 + 7) & 0xff || 1;
  image.set(tail, FLUSH_OFFSET_BYTES);
  return image;
}

const partialPath = (dir: string): string => segmentPath(dir, FLUSH_SEGNO, SEGMENT_BYTES, true);

function managerConfig(dataDir: string, deleteOffloadedWal: boolean): ManagerConfig {
  return {
    nodeId: 1n,
    dataDir,
    noSync: true,
    controlFileSaveIntervalMs: 300_000,
    partialBackupTimeoutMs: 900_000,
    evictionMinResidentMs: EVICTION_MIN_RESIDENT_MS,
    enableOffload: true,
    deleteOffloadedWal,
    walBackupParallelJobs: 1,
    walRecycleSegments: 0,
  };
}

/** A data dir with the timeline's dir, a remote storage root, and the partial object of `segmentImage()`. */
async function makeFixture(): Promise<{ dataDir: string; dir: string; remoteRoot: string; remote: RemoteStorage; segments: PartialRemoteSegment[] }> {
  const dataDir = makeTempDir('sk-eviction-');
  const dir = timelineDir(dataDir, TENANT_ID, TIMELINE_ID);
  const remoteRoot = join(dataDir, 'remote');
  await mkdir(dir, { recursive: true });
  const remote = new RemoteStorage(new LocalFsBackend(remoteRoot, { noSync: true }));
  await writeFile(partialPath(dir), segmentImage());
  const current = { flushLsn: FLUSH_LSN, commitLsn: FLUSH_LSN, term: TERM };
  const segments = await uploadPartialSegment(
    { tenantId: TENANT_ID, timelineId: TIMELINE_ID, dir, segmentSizeBytes: SEGMENT_BYTES, nodeId: 1n, remote, permits: new Semaphore(1), failpoints: new Failpoints(false), signal: new AbortController().signal, persist: async () => {}, current: () => current },
    [],
    current,
  );
  assert.equal(segments.length, 1);
  return { dataDir, dir, remoteRoot, remote, segments };
}

type Fixture = Awaited<ReturnType<typeof makeFixture>>;

interface SharedOptions {
  deleteOffloadedWal: boolean;
  nowMs?: () => number;
  random?: () => number;
  persisted?: ManagerPersist[];
  evictionPermits?: Semaphore;
  unevictionPermits?: Semaphore;
  remote?: RemoteStorage;
}

function makeShared(fixture: Fixture, options: SharedOptions): ManagerShared {
  return {
    config: managerConfig(fixture.dataDir, options.deleteOffloadedWal),
    host: { persist: async (_ttid, update) => void options.persisted?.push(structuredClone(update)), reportBackupLsn: () => {}, reportActive: () => {}, reportOffloaded: () => {}, log: () => {} },
    stateWatcher: new StateWatcher(),
    remote: options.remote ?? fixture.remote,
    uploadSlots: new UploadSlots(1),
    partialBackupPermits: new Semaphore(1),
    evictionPermits: options.evictionPermits ?? new Semaphore(EVICTION_PERMITS),
    unevictionPermits: options.unevictionPermits ?? new Semaphore(UNEVICTION_PERMITS),
    failpoints: new Failpoints(false),
    counters: { iterations: 0, segmentsUploaded: 0, bytesUploaded: 0, uploadFailures: 0, segmentsRemoved: 0, partialUploads: 0, evictions: 0, restores: 0 },
    nowMs: options.nowMs ?? (() => performance.now()),
    random: options.random ?? (() => 0.5),
  };
}

/** A quiet timeline whose partial object is current: what the manager decided to evict from. */
function quietSnapshot(): ManagerSnapshot {
  // Not a returned literal, so it may list more slots than ManagerSnapshot has (it is growing a syncedLsn).
  const snapshot = {
    flushLsn: FLUSH_LSN,
    syncedLsn: FLUSH_LSN,
    commitLsn: FLUSH_LSN,
    backupLsn: FLUSH_LSN,
    peerHorizonLsn: 0n,
    remoteConsistentLsn: FLUSH_LSN,
    persistedCommitLsn: FLUSH_LSN,
    persistedBackupLsn: FLUSH_LSN,
    persistedPeerHorizonLsn: 0n,
    persistedRemoteConsistentLsn: FLUSH_LSN,
    lastLogTerm: TERM,
    proposerCount: 0n,
    readerCount: 0n,
    readerHorizonLsn: 0n,
  };
  return snapshot;
}

function makeControl(fixture: Fixture, initial: EvictionState, deleteOffloadedWal: boolean): { control: EvictionControl; persisted: ManagerPersist[]; restored: Lsn[] } {
  const persisted: ManagerPersist[] = [];
  const restored: Lsn[] = [];
  const signal = new AbortController().signal;
  const control = new EvictionControl(
    {
      tenantId: TENANT_ID,
      timelineId: TIMELINE_ID,
      dir: fixture.dir,
      segmentSizeBytes: SEGMENT_BYTES,
      shared: makeShared(fixture, { deleteOffloadedWal }),
      signal: () => signal,
      snapshot: quietSnapshot,
      partialSegments: () => fixture.segments,
      persist: async (update) => void persisted.push(structuredClone(update)),
      onRestored: (flushLsn) => void restored.push(flushLsn),
      log: () => {},
    },
    initial,
  );
  return { control, persisted, restored };
}

const OFFLOADED: EvictionState = { kind: 'Offloaded', flushLsn: FLUSH_LSN };

const describeFailure = (reason: unknown): string => (reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason));

describe('startup cleanup of an offloaded timeline', () => {
  test('never deletes the segment a guard restores meanwhile, whichever starts first and however they interleave', async () => {
    const fixture = await makeFixture();
    for (const first of ['guard', 'cleanup'] as const) {
      for (const delayMs of [null, 0, 1, 2, 3, 5, 8]) {
        const trial = `${first} first, then the other after ${delayMs === null ? 'no wait' : `${delayMs} ms`}`;
        // A crash after Offloaded was persisted and before delete_offloaded_wal's delete: the matching .partial is still there.
        await writeFile(partialPath(fixture.dir), segmentImage());
        const { control, persisted, restored } = makeControl(fixture, OFFLOADED, true);
        const start = (which: 'guard' | 'cleanup'): Promise<void> => (which === 'guard' ? control.acquireGuard(1) : control.removeLeftovers());
        const started = [start(first)];
        if (delayMs !== null) await sleep(delayMs);
        started.push(start(first === 'guard' ? 'cleanup' : 'guard'));
        const results = await Promise.allSettled(started);
        for (const result of results) {
          if (result.status === 'rejected') assert.ok(result.reason instanceof SafekeeperError, `${trial}: ${describeFailure(result.reason)}`);
        }
        assert.deepEqual(results.map((result) => result.status), ['fulfilled', 'fulfilled'], trial);
        assert.equal(control.guardCount, 1, trial);
        assert.equal(control.offloaded, false, trial);
        assert.deepEqual(persisted, [{ evictionState: { kind: 'Present' } }], trial);
        assert.deepEqual(restored, [FLUSH_LSN], trial);
        assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage()), `${trial}: the granted guard's segment is on disk, whole`);
      }
    }
  });

  test('still removes the leftovers when no guard comes', async () => {
    const fixture = await makeFixture();
    const { control, persisted } = makeControl(fixture, OFFLOADED, true);
    await control.removeLeftovers();
    assert.deepEqual(await readdir(fixture.dir), []);
    assert.equal(control.offloaded, true);
    assert.equal(control.idle, true);
    assert.deepEqual(persisted, []);
  });
});

describe('un-eviction whose download cannot be written', () => {
  const assertStorageIo = (error: unknown, pathPart: string): boolean => {
    assert.ok(error instanceof SafekeeperError, describeFailure(error));
    assert.equal(error.code, 'SK_STORAGE_IO');
    assert.match(error.message, new RegExp(pathPart.replace(/[.]/g, '\\.')));
    return true;
  };

  test('a directory where the temp file goes: the guard fails with SK_STORAGE_IO naming it, and the next one works', async () => {
    const fixture = await makeFixture();
    await rm(partialPath(fixture.dir)); // delete_offloaded_wal: nothing local, so the guard downloads
    const temp = join(fixture.dir, REMOTE_PARTIAL_TEMP_NAME);
    await mkdir(join(temp, 'in-the-way'), { recursive: true });
    const { control, persisted } = makeControl(fixture, OFFLOADED, true);
    await assert.rejects(control.acquireGuard(1), (error) => assertStorageIo(error, REMOTE_PARTIAL_TEMP_NAME));
    assert.equal(control.offloaded, true, 'still offloaded');
    assert.equal(control.guardCount, 0);
    assert.equal(control.idle, true);
    assert.deepEqual(persisted, []);
    await rm(temp, { recursive: true });
    await control.acquireGuard(2);
    assert.equal(control.guardCount, 1);
    assert.deepEqual(persisted, [{ evictionState: { kind: 'Present' } }]);
    assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage()));
  });

  test('the timeline directory replaced by a file: SK_STORAGE_IO, and a guard works once it is back', async () => {
    const fixture = await makeFixture();
    await rm(fixture.dir, { recursive: true });
    await writeFile(fixture.dir, 'not a directory');
    const { control, persisted } = makeControl(fixture, OFFLOADED, true);
    await assert.rejects(control.acquireGuard(1), (error) => assertStorageIo(error, fixture.dir));
    assert.equal(control.offloaded, true);
    await rm(fixture.dir);
    await mkdir(fixture.dir);
    await control.acquireGuard(2);
    assert.deepEqual(persisted, [{ evictionState: { kind: 'Present' } }]);
    assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage()));
  });

  test('through a coordinator: an SK_STORAGE_IO error reply, and the coordinator keeps serving', async () => {
    const fixture = await makeFixture();
    await rm(partialPath(fixture.dir));
    const temp = join(fixture.dir, REMOTE_PARTIAL_TEMP_NAME);
    await mkdir(join(temp, 'in-the-way'), { recursive: true });
    const main = new FakeMain();
    const options: CoordinatorOptions = {
      ...managerConfig(fixture.dataDir, true),
      enableOffload: false, // nothing but the guards runs
      remoteStorage: { kind: 'file', url: `file://${fixture.remoteRoot}`, path: fixture.remoteRoot },
      remoteRequestTimeoutMs: 10_000,
      failpointsEnabled: false,
    };
    const coordinator = new Coordinator(main.endpoint, options);
    assert.ok(coordinator);
    const chunk = new StateBlockChunk(0, 1);
    new StateBlock(chunk, 0).setMany(lsnSlots());
    main.notify({ kind: 'state_chunk', chunkId: 0, blockCount: 1, buffer: chunk.buffer });
    const registration: TimelineRegistration = { ttid: TTID, tenantId: TENANT_ID, timelineId: TIMELINE_ID, segmentSizeBytes: SEGMENT_BYTES, stateChunkId: 0, stateBlockIndex: 0, partialSegments: fixture.segments, evictionState: OFFLOADED };
    main.notify({ kind: 'register', timeline: registration });
    try {
      const refused = await main.request({ kind: 'acquire_guard', ttid: TTID, guardId: 1 });
      assert.equal(refused.ok, false);
      assert.ok(!refused.ok && refused.code === 'SK_STORAGE_IO' && refused.detail.includes(REMOTE_PARTIAL_TEMP_NAME), JSON.stringify(refused));
      assert.deepEqual(main.persisted, []);
      await rm(temp, { recursive: true });
      assert.deepEqual(await main.request({ kind: 'acquire_guard', ttid: TTID, guardId: 2 }), { ok: true, value: null });
      assert.deepEqual(main.persisted, [{ evictionState: { kind: 'Present' } }]);
      const metrics = await main.request({ kind: 'metrics' });
      assert.ok(metrics.ok && (metrics.value as { restoresTotal: number }).restoresTotal === 1);
      assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage()));
    } finally {
      assert.deepEqual(await main.request({ kind: 'shutdown' }), { ok: true, value: null });
    }
  });
});

describe('systemErrorAsStorageError (the coordinator request boundary)', () => {
  test('a failed system call becomes StorageIoError or DiskFullError; bugs pass unchanged', async () => {
    const dir = makeTempDir('sk-errno-');
    const eisdir = await readFile(dir).catch((error: unknown) => error);
    const mapped = systemErrorAsStorageError(eisdir, 'acquire_guard');
    assert.ok(mapped instanceof StorageIoError, describeFailure(mapped));
    assert.match(mapped.message, /EISDIR/);
    // A full disk cannot be had on demand: the error Node gives for one.
    const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    assert.ok(systemErrorAsStorageError(enospc, 'acquire_guard') instanceof DiskFullError);
    const typeError = new TypeError('x is undefined');
    assert.equal(systemErrorAsStorageError(typeError, 'acquire_guard'), typeError);
    const argumentError = await open(42 as unknown as string).catch((error: unknown) => error);
    assert.equal((argumentError as { code?: string }).code, 'ERR_INVALID_ARG_TYPE');
    assert.equal(systemErrorAsStorageError(argumentError, 'acquire_guard'), argumentError, "Node's argument errors are bugs");
    const operating = new StorageIoError('already mapped');
    assert.equal(systemErrorAsStorageError(operating, 'acquire_guard'), operating);
  });
});

describe('eviction of a .partial with unacknowledged bytes after flush_lsn', () => {
  const tail = Uint8Array.from({ length: 300 }, (_, index) => (index % 251) + 1);

  test('evicts, comparing only the bytes below flush_lsn with the uploaded partial, and deletes the segment', async () => {
    const fixture = await makeFixture();
    await writeFile(partialPath(fixture.dir), segmentImage(tail)); // a proposer died mid-record
    const { control, persisted } = makeControl(fixture, { kind: 'Present' }, true);
    assert.equal(await control.evict(), true);
    assert.equal(control.offloaded, true);
    assert.deepEqual(persisted, [{ evictionState: OFFLOADED }]);
    assert.deepEqual(await readdir(fixture.dir), []);
  });

  test('kept locally (delete_offloaded_wal off), the segment comes back from remote storage zero-filled after flush_lsn', async () => {
    const fixture = await makeFixture();
    await writeFile(partialPath(fixture.dir), segmentImage(tail));
    const { control, persisted } = makeControl(fixture, { kind: 'Present' }, false);
    assert.equal(await control.evict(), true);
    assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage(tail)), 'kept as it was');
    await control.acquireGuard(1);
    assert.deepEqual(persisted, [{ evictionState: OFFLOADED }, { evictionState: { kind: 'Present' } }]);
    assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage()), 'the unacknowledged tail is gone');
  });

  test('a difference below flush_lsn still refuses eviction', async () => {
    const fixture = await makeFixture();
    const damaged = segmentImage(tail);
    damaged.writeUInt8(damaged.readUInt8(FLUSH_OFFSET_BYTES - 1) ^ 0xff, FLUSH_OFFSET_BYTES - 1);
    await writeFile(partialPath(fixture.dir), damaged);
    const { control, persisted } = makeControl(fixture, { kind: 'Present' }, true);
    await assert.rejects(control.evict(), (error) => error instanceof PartialSegmentMismatchError && /below flush_lsn/.test(error.message));
    assert.equal(control.offloaded, false);
    assert.deepEqual(persisted, []);
    assert.ok((await readFile(partialPath(fixture.dir))).equals(damaged));
  });
});

describe('a failed eviction', () => {
  async function failedEvictionRetryAtMs(random: number): Promise<{ retryAtMs: number; nowMs: number; warnings: string[] }> {
    const fixture = await makeFixture();
    const damaged = segmentImage();
    damaged.writeUInt8(damaged.readUInt8(0) ^ 0xff, 0); // fails every attempt, as a local segment that differs from its remote copy would
    await writeFile(partialPath(fixture.dir), damaged);
    const nowMs = 1_000_000;
    const warnings: string[] = [];
    const shared = makeShared(fixture, { deleteOffloadedWal: true, nowMs: () => nowMs, random: () => random });
    const jobs = makeJobs(fixture, shared, { kind: 'Present' }, new AbortController().signal, warnings);
    jobs.startEviction();
    await jobs.ended();
    assert.equal(jobs.offloaded, false);
    return { retryAtMs: jobs.facts(nowMs, nowMs).evictRetryAtMs, nowMs, warnings };
  }

  test('is tried again after a random fraction of eviction_min_resident, not every JOB_RETRY_MS', async () => {
    const { retryAtMs, nowMs, warnings } = await failedEvictionRetryAtMs(0.5);
    assert.equal(retryAtMs, nowMs + 0.5 * EVICTION_MIN_RESIDENT_MS);
    assert.deepEqual(warnings, ['eviction failed; will retry']);
  });

  test('never sooner than JOB_RETRY_MS', async () => {
    const { retryAtMs, nowMs } = await failedEvictionRetryAtMs(0);
    assert.equal(retryAtMs, nowMs + JOB_RETRY_MS);
  });
});

/**
 * A backend over another whose gets wait while the gate is closed (as in an S3 slowdown) and whose deletes fail
 * (not retryable, so RemoteStorage does not retry them) while `deleteFailures` lasts. One gate may serve many.
 */
class Gate {
  getsWaiting = 0;
  deleteFailures = 0;
  #open = false;
  readonly #wakers = new Set<() => void>();

  open(): void {
    this.#open = true;
    for (const wake of this.#wakers) wake();
  }

  async pass(signal: AbortSignal): Promise<void> {
    if (this.#open) return;
    this.getsWaiting += 1;
    try {
      await new Promise<void>((resolve, reject) => {
        const wake = (): void => {
          this.#wakers.delete(wake);
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = (): void => {
          this.#wakers.delete(wake);
          reject(signal.reason);
        };
        this.#wakers.add(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    } finally {
      this.getsWaiting -= 1;
    }
  }
}

class GatedBackend implements RemoteBackend {
  readonly kind = 'file' as const;
  readonly description = 'gated test backend';
  constructor(private readonly inner: RemoteBackend, private readonly gate: Gate) {}
  put(key: string, body: Uint8Array, metadata: Record<string, string>, signal: AbortSignal): Promise<void> {
    return this.inner.put(key, body, metadata, signal);
  }
  async get(key: string, range: ByteRange | null, signal: AbortSignal): Promise<{ body: Uint8Array; sizeBytes: number; metadata: Record<string, string> }> {
    await this.gate.pass(signal);
    return this.inner.get(key, range, signal);
  }
  head(key: string, signal: AbortSignal): Promise<RemoteObjectHead | null> {
    return this.inner.head(key, signal);
  }
  list(prefix: string, signal: AbortSignal): Promise<RemoteObjectInfo[]> {
    return this.inner.list(prefix, signal);
  }
  async delete(keys: readonly string[], signal: AbortSignal): Promise<void> {
    if (this.gate.deleteFailures > 0) {
      this.gate.deleteFailures -= 1;
      throw new RemoteStorageError('delete failed (test)', false);
    }
    return this.inner.delete(keys, signal);
  }
  copy(fromKey: string, toKey: string, signal: AbortSignal): Promise<void> {
    return this.inner.copy(fromKey, toKey, signal);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The fixture's remote storage behind `gate`, with room for more requests at once than any permit bound here. */
const gatedRemote = (fixture: Fixture, gate: Gate): RemoteStorage => new RemoteStorage(new GatedBackend(new LocalFsBackend(fixture.remoteRoot, { noSync: true }), gate), { ...REMOTE_POLICY_DEFAULT, requestsMax: 4 * UNEVICTION_PERMITS });

const heldPermit = (permits: Semaphore): Promise<() => void> => permits.acquire(new AbortController().signal);

describe('eviction and un-eviction permits (over all timelines)', () => {
  const NOW_MS = 1_000_000;

  test('an eviction runs only with a free permit; without one it neither waits nor reads, and is tried again later', async () => {
    const fixture = await makeFixture();
    const permits = new Semaphore(1);
    const warnings: string[] = [];
    const shared = makeShared(fixture, { deleteOffloadedWal: true, nowMs: () => NOW_MS, random: () => 0.25, evictionPermits: permits });
    const jobs = makeJobs(fixture, shared, { kind: 'Present' }, new AbortController().signal, warnings);
    const releaseHeld = await heldPermit(permits); // another timeline's eviction
    jobs.startEviction();
    await jobs.ended(); // while the permit is still held: the eviction did not queue for it
    assert.equal(jobs.offloaded, false);
    assert.equal(permits.waiting, 0);
    assert.equal(jobs.facts(NOW_MS, NOW_MS).evictRetryAtMs, NOW_MS + 0.25 * EVICTION_MIN_RESIDENT_MS, "Neon's retry after a random fraction of eviction_min_resident");
    assert.deepEqual(warnings, [], 'a busy permit is not a failure');
    assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage()), 'nothing deleted');
    releaseHeld();
    jobs.startEviction();
    await jobs.ended();
    assert.equal(jobs.offloaded, true);
    assert.equal(permits.inUse, 0);
  });

  test('un-evictions run UNEVICTION_PERMITS at once, beyond the eviction bound, and only one guard per timeline waits for a permit', async () => {
    const gate = new Gate();
    const evictionPermits = new Semaphore(EVICTION_PERMITS);
    const unevictionPermits = new Semaphore(UNEVICTION_PERMITS);
    for (let held = 0; held < EVICTION_PERMITS; held++) await heldPermit(evictionPermits); // evictions elsewhere: not shared
    const timelines: Array<{ fixture: Fixture; jobs: ManagerJobs; persisted: ManagerPersist[] }> = [];
    for (let index = 0; index <= UNEVICTION_PERMITS; index++) {
      const fixture = await makeFixture();
      await rm(partialPath(fixture.dir)); // evicted with delete_offloaded_wal: a guard downloads
      const persisted: ManagerPersist[] = [];
      const shared = makeShared(fixture, { deleteOffloadedWal: true, persisted, evictionPermits, unevictionPermits, remote: gatedRemote(fixture, gate) });
      timelines.push({ fixture, persisted, jobs: makeJobs(fixture, shared, OFFLOADED, new AbortController().signal) });
    }
    // After a restart, a compute and a reader of every offloaded timeline ask at once.
    const grants = timelines.flatMap(({ jobs }) => [jobs.acquireGuard(1), jobs.acquireGuard(2)]);
    await waitFor(() => gate.getsWaiting === UNEVICTION_PERMITS && unevictionPermits.waiting === 1, { what: 'UNEVICTION_PERMITS downloads, and one timeline waiting' });
    assert.equal(unevictionPermits.inUse, UNEVICTION_PERMITS);
    gate.open();
    await Promise.all(grants);
    for (const { fixture, jobs, persisted } of timelines) {
      assert.equal(jobs.offloaded, false);
      assert.equal(jobs.facts(NOW_MS, NOW_MS).guards, 2);
      assert.deepEqual(persisted, [{ evictionState: { kind: 'Present' } }], 'one restore per timeline');
      assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage()));
    }
    assert.equal(unevictionPermits.inUse, 0);
    assert.equal(evictionPermits.inUse, EVICTION_PERMITS, 'still the evictions elsewhere');
  });

  test("a resident timeline's guard waits for no permit: not while an eviction runs elsewhere, nor behind its own, which gives way", async () => {
    const gate = new Gate(); // the evicting timeline's comparison GET hangs
    const evictionPermits = new Semaphore(EVICTION_PERMITS);
    const unevictionPermits = new Semaphore(1);
    await heldPermit(unevictionPermits); // every restore permit taken, by other timelines' downloads
    const evicting = await makeFixture();
    const persisted: ManagerPersist[] = [];
    const evictingShared = makeShared(evicting, { deleteOffloadedWal: true, persisted, evictionPermits, unevictionPermits, remote: gatedRemote(evicting, gate), nowMs: () => NOW_MS });
    const evictingJobs = makeJobs(evicting, evictingShared, { kind: 'Present' }, new AbortController().signal);
    evictingJobs.startEviction();
    await waitFor(() => gate.getsWaiting === 1, { what: 'the eviction comparing its segment' });
    assert.equal(evictionPermits.inUse, 1);

    const resident = await makeFixture();
    const residentJobs = makeJobs(resident, makeShared(resident, { deleteOffloadedWal: true, evictionPermits, unevictionPermits }), { kind: 'Present' }, new AbortController().signal);
    await residentJobs.acquireGuard(1); // at once, with the eviction elsewhere and no restore permit free
    assert.equal(residentJobs.facts(NOW_MS, NOW_MS).guards, 1);

    let granted = false;
    const ownGuard = evictingJobs.acquireGuard(1).then(() => void (granted = true));
    await sleep(20);
    assert.equal(granted, false, 'waits for the residency mutex, which the eviction holds');
    assert.equal(unevictionPermits.waiting, 0, 'and for no permit');
    gate.open();
    await ownGuard;
    await evictingJobs.ended();
    assert.equal(evictingJobs.offloaded, false, 'the eviction gave way to the guard that came while it compared');
    assert.deepEqual(persisted, [], 'nothing offloaded, nothing restored');
    const facts = evictingJobs.facts(NOW_MS, NOW_MS);
    assert.equal(facts.guards, 1);
    assert.equal(facts.evictRetryAtMs, NOW_MS + JOB_RETRY_MS, 'tried again later, as when a guard came before it started');
    assert.equal(evictionPermits.inUse, 0);
    assert.ok((await readFile(partialPath(evicting.dir))).equals(segmentImage()), 'the segment stays');
  });

  test('a guard that must unevict waits for a permit outside the residency mutex; releasing the guard ends its wait, and the next guard unevicts once one is free', async () => {
    const fixture = await makeFixture();
    await rm(partialPath(fixture.dir)); // evicted with delete_offloaded_wal: a guard downloads
    const permits = new Semaphore(1);
    const persisted: ManagerPersist[] = [];
    const shared = makeShared(fixture, { deleteOffloadedWal: true, unevictionPermits: permits, persisted });
    const jobs = makeJobs(fixture, shared, OFFLOADED, new AbortController().signal);
    const releaseHeld = await heldPermit(permits);
    const abandoned = jobs.acquireGuard(1).then(() => null, (error: unknown) => error);
    await waitFor(() => permits.waiting === 1, { what: 'the guard waiting for a permit' });
    await jobs.init(); // its start-up cleanup takes the residency mutex: the waiting guard does not hold it
    jobs.releaseGuard(1); // main gave up (its guard timeout, or the connection went away)
    const error = await abandoned;
    assert.ok(error instanceof CancelledError, describeFailure(error));
    assert.equal(permits.waiting, 0);
    assert.equal(jobs.offloaded, true);
    assert.deepEqual(persisted, []);
    assert.deepEqual(await readdir(fixture.dir), [], 'nothing downloaded');

    const granted = jobs.acquireGuard(2);
    await waitFor(() => permits.waiting === 1, { what: 'the second guard waiting for a permit' });
    releaseHeld();
    await granted;
    assert.equal(jobs.offloaded, false);
    assert.deepEqual(persisted, [{ evictionState: { kind: 'Present' } }]);
    assert.ok((await readFile(partialPath(fixture.dir))).equals(segmentImage()));
    assert.equal(permits.inUse, 0, 'the permit is returned once the timeline is restored');

    await heldPermit(permits); // never released: a resident timeline's guard must not need it
    await jobs.acquireGuard(3);
    assert.equal(jobs.facts(NOW_MS, NOW_MS).guards, 2);
  });

  test("the manager stopping ends a guard's wait for a permit, and that of the timeline's other guards", async () => {
    const fixture = await makeFixture();
    await rm(partialPath(fixture.dir));
    const permits = new Semaphore(1);
    const stop = new AbortController();
    const jobs = makeJobs(fixture, makeShared(fixture, { deleteOffloadedWal: true, unevictionPermits: permits }), OFFLOADED, stop.signal);
    await heldPermit(permits);
    const waiting = [jobs.acquireGuard(1), jobs.acquireGuard(2)];
    await waitFor(() => permits.waiting === 1, { what: 'one guard waiting for a permit' });
    const reason = new ShutdownError();
    stop.abort(reason);
    for (const result of await Promise.allSettled(waiting)) assert.ok(result.status === 'rejected' && result.reason === reason);
    assert.equal(permits.waiting, 0);
    assert.equal(jobs.offloaded, true);
  });
});

describe('partial-backup garbage collection (through the jobs)', () => {
  const NOW_MS = 1_000_000;
  const settings = { controlFileSaveIntervalMs: 300_000, partialBackupTimeoutMs: 900_000, enableOffload: true };
  const objectNames = async (remote: RemoteStorage): Promise<string[]> => (await remote.list(timelineKeyPrefix(TENANT_ID, TIMELINE_ID), new AbortController().signal)).map((object) => object.key.slice(timelineKeyPrefix(TENANT_ID, TIMELINE_ID).length));

  test('a failed start-up collection keeps the list as persisted, blocks uploads, and is planned again at its retry time', async () => {
    const fixture = await makeFixture();
    const gate = new Gate();
    gate.open();
    const remote = gatedRemote(fixture, gate);
    // Objects whose deletes kept failing before the restart: as many records as stop uploads.
    const garbage: PartialRemoteSegment[] = [];
    for (let index = 0; index < PARTIAL_GARBAGE_RECORDS_MAX; index++) {
      const current = { flushLsn: FLUSH_LSN - BigInt(index + 1), commitLsn: FLUSH_LSN - BigInt(index + 1), term: TERM };
      const name = partialObjectName(SEGMENT_BYTES, current, 1n);
      await remote.put(objectKey(TENANT_ID, TIMELINE_ID, name), new Uint8Array(8), new AbortController().signal);
      garbage.push({ status: 'Deleting', name, ...current });
    }
    const registered = [...garbage, ...fixture.segments];
    let nowMs = NOW_MS;
    const persisted: ManagerPersist[] = [];
    const warnings: string[] = [];
    const shared = makeShared(fixture, { deleteOffloadedWal: true, persisted, remote, nowMs: () => nowMs });
    const jobs = makeJobs(fixture, shared, { kind: 'Present' }, new AbortController().signal, warnings, { partialSegments: registered });
    gate.deleteFailures = 1; // an S3 blip during the start-up collection
    await jobs.init();
    await jobs.ended();
    assert.deepEqual(warnings, ['partial backup garbage collection failed; will retry']);
    assert.deepEqual(persisted, []);
    assert.deepEqual(jobs.facts(nowMs, nowMs).partialSegments, registered, 'the list as persisted');
    assert.equal(jobs.facts(nowMs, nowMs).partialRetryAtMs, NOW_MS + JOB_RETRY_MS);

    const stale = (): ManagerSnapshot => ({ ...quietSnapshot(), flushLsn: FLUSH_LSN + 100n, commitLsn: FLUSH_LSN + 100n, syncedLsn: FLUSH_LSN + 100n });
    const early = planPass(stale(), jobs.facts(nowMs, 0), settings);
    assert.deepEqual([early.uploadPartial, early.collectPartialGarbage, early.wakeAtMs], [false, false, NOW_MS + JOB_RETRY_MS]);
    nowMs += JOB_RETRY_MS;
    const plan = planPass(stale(), jobs.facts(nowMs, 0), settings);
    assert.deepEqual([plan.uploadPartial, plan.collectPartialGarbage], [true, true], 'no upload while the records wait: their collection');
    jobs.startPartialUpload(stale(), plan.collectPartialGarbage);
    await jobs.ended();
    assert.deepEqual(persisted, [{ partialSegments: fixture.segments }], 'collected, not uploaded');
    assert.deepEqual(jobs.facts(nowMs, 0).partialSegments, fixture.segments);
    assert.deepEqual(await objectNames(fixture.remote), fixture.segments.map((segment) => segment.name));
    assert.equal(planPass(stale(), jobs.facts(nowMs, 0), settings).collectPartialGarbage, false, 'uploads may start again');
  });

  test('a collection that fails after an upload keeps the new Uploaded record, and the next upload deletes every older object', async () => {
    const fixture = await makeFixture();
    const gate = new Gate();
    gate.open();
    let snapshot = quietSnapshot();
    const at = (offsetBytes: bigint): ManagerSnapshot => ({ ...quietSnapshot(), flushLsn: FLUSH_LSN + offsetBytes, commitLsn: FLUSH_LSN + offsetBytes, syncedLsn: FLUSH_LSN + offsetBytes });
    const persisted: ManagerPersist[] = [];
    const warnings: string[] = [];
    const shared = makeShared(fixture, { deleteOffloadedWal: true, persisted, remote: gatedRemote(fixture, gate), nowMs: () => NOW_MS });
    const jobs = makeJobs(fixture, shared, { kind: 'Present' }, new AbortController().signal, warnings, { snapshot: () => snapshot });
    const [first] = fixture.segments;
    assert.ok(first !== undefined);

    snapshot = at(100n);
    gate.deleteFailures = 1;
    jobs.startPartialUpload(snapshot, false);
    await jobs.ended();
    assert.deepEqual(warnings, ['partial segment upload failed; will retry']);
    const lastPersisted = persisted.at(-1)?.partialSegments;
    assert.ok(lastPersisted !== undefined);
    const second = partialObjectName(SEGMENT_BYTES, { flushLsn: snapshot.flushLsn, commitLsn: snapshot.commitLsn, term: TERM }, 1n);
    assert.deepEqual(lastPersisted.map((segment) => [segment.name, segment.status]), [[first.name, 'Deleting'], [second, 'Uploaded']]);
    assert.deepEqual(jobs.facts(NOW_MS, 0).partialSegments, lastPersisted, 'the in-memory list is the one persisted last');

    snapshot = at(200n);
    jobs.startPartialUpload(snapshot, false);
    await jobs.ended();
    const third = partialObjectName(SEGMENT_BYTES, { flushLsn: snapshot.flushLsn, commitLsn: snapshot.commitLsn, term: TERM }, 1n);
    assert.deepEqual(jobs.facts(NOW_MS, 0).partialSegments.map((segment) => [segment.name, segment.status]), [[third, 'Uploaded']]);
    assert.deepEqual(persisted.at(-1)?.partialSegments, jobs.facts(NOW_MS, 0).partialSegments);
    assert.deepEqual(await objectNames(fixture.remote), [third], 'no object leaked');
  });
});

/** A timeline's jobs over the fixture (no manager loop: the test starts jobs itself). Warnings go to `warnings`. */
function makeJobs(fixture: Fixture, shared: ManagerShared, evictionState: EvictionState, signal: AbortSignal, warnings: string[] = [], options: { snapshot?: () => ManagerSnapshot; partialSegments?: PartialRemoteSegment[] } = {}): ManagerJobs {
  const owner: JobsOwner = {
    ttid: TTID,
    tenantId: TENANT_ID,
    timelineId: TIMELINE_ID,
    dir: fixture.dir,
    segmentSizeBytes: SEGMENT_BYTES,
    stopping: false,
    signal: () => signal,
    kick: () => {},
    snapshot: options.snapshot ?? quietSnapshot,
    log: (level, message) => void (level === 'warn' && warnings.push(message)),
  };
  const block = new StateBlock();
  block.setMany(lsnSlots());
  const registration: TimelineRegistration = { ttid: TTID, tenantId: TENANT_ID, timelineId: TIMELINE_ID, segmentSizeBytes: SEGMENT_BYTES, stateChunkId: -1, stateBlockIndex: 0, partialSegments: structuredClone(options.partialSegments ?? fixture.segments), evictionState };
  return new ManagerJobs(owner, registration, block, shared, new ManagerBackup(owner, block, shared), shared.nowMs());
}

/** The state-block slots of a quiet timeline at FLUSH_LSN (what main publishes). */
function lsnSlots(): Partial<Record<SlotName, bigint>> {
  return {
    flushLsn: FLUSH_LSN,
    writeLsn: FLUSH_LSN,
    syncedLsn: FLUSH_LSN,
    commitLsn: FLUSH_LSN,
    backupLsn: FLUSH_LSN,
    remoteConsistentLsn: FLUSH_LSN,
    persistedCommitLsn: FLUSH_LSN,
    persistedBackupLsn: FLUSH_LSN,
    persistedRemoteConsistentLsn: FLUSH_LSN,
    lastLogTerm: TERM,
    term: TERM,
  };
}

type Reply = { ok: true; value: unknown } | { ok: false; code: string; detail: string };

/**
 * The main thread's end of the coordinator's port, in process: sends notices and requests, answers the
 * coordinator's persist requests (recording them), and ignores its notices.
 */
class FakeMain {
  readonly persisted: ManagerPersist[] = [];
  #listener: ((value: unknown) => void) | null = null;
  #nextId = 1;
  readonly #replies = new Map<number, (reply: Reply) => void>();

  readonly endpoint: MessageEndpoint = {
    postMessage: (value) => queueMicrotask(() => this.#fromCoordinator(structuredClone(value) as { type: string; id: number; body?: { kind: string; update?: ManagerPersist }; reply?: Reply })),
    on: (_event, listener) => void (this.#listener = listener),
  };

  notify(body: unknown): void {
    this.#send({ type: 'notify', body });
  }

  request(body: unknown): Promise<Reply> {
    const id = this.#nextId++;
    return new Promise((resolve) => {
      this.#replies.set(id, resolve);
      this.#send({ type: 'request', id, body });
    });
  }

  #send(envelope: unknown): void {
    assert.ok(this.#listener !== null, 'the coordinator listens');
    this.#listener(envelope);
  }

  #fromCoordinator(envelope: { type: string; id: number; body?: { kind: string; update?: ManagerPersist }; reply?: Reply }): void {
    if (envelope.type === 'reply') {
      const resolve = this.#replies.get(envelope.id);
      assert.ok(resolve !== undefined && envelope.reply !== undefined, 'a reply answers a request of ours');
      this.#replies.delete(envelope.id);
      resolve(envelope.reply);
      return;
    }
    if (envelope.type === 'request') {
      assert.equal(envelope.body?.kind, 'persist');
      if (envelope.body?.update !== undefined) this.persisted.push(envelope.body.update);
      this.#send({ type: 'reply', id: envelope.id, reply: { ok: true, value: null } });
    }
  }
}
