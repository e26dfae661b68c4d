/**
 * Residency transitions on real files (timeline/eviction.ts, remote/wal_download.ts): segments in temp dirs,
 * the local-fs remote storage, partial objects uploaded by the real partial backup. Covered: the startup
 * cleanup of an offloaded timeline racing a guard that unevicts; an un-eviction whose download cannot be
 * written (a clean SK_STORAGE_IO, also through a real coordinator, which keeps serving); eviction of a
 * `.partial` with unacknowledged bytes after flush_lsn; the back-off of a failed eviction; and the offload
 * permits: an eviction never queues for one, a guard that must unevict waits for one until released or stopped.
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
import { uploadPartialSegment } from '../../src/remote/partial_backup.js';
import { RemoteStorage } from '../../src/remote/remote_storage.js';
import { UploadSlots } from '../../src/remote/upload_slots.js';
import { PartialSegmentMismatchError } from '../../src/remote/wal_download.js';
import { REMOTE_PARTIAL_TEMP_NAME, segmentPath, timelineDir } from '../../src/storage/layout.js';
import { Failpoints } from '../../src/sync/failpoints.js';
import { Semaphore } from '../../src/sync/semaphore.js';
import { segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { Coordinator, systemErrorAsStorageError } from '../../src/timeline/coordinator.js';
import type { CoordinatorOptions, ManagerPersist, TimelineRegistration } from '../../src/timeline/coordinator_protocol.js';
import { EvictionControl } from '../../src/timeline/eviction.js';
import { ManagerBackup } from '../../src/timeline/manager_backup.js';
import type { ManagerSnapshot } from '../../src/timeline/manager_decisions.js';
import { JOB_RETRY_MS, ManagerJobs, type JobsOwner } from '../../src/timeline/manager_jobs.js';
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

function makeShared(fixture: Fixture, options: { deleteOffloadedWal: boolean; nowMs?: () => number; random?: () => number; persisted?: ManagerPersist[]; offloadPermits?: Semaphore }): ManagerShared {
  return {
    config: managerConfig(fixture.dataDir, options.deleteOffloadedWal),
    host: { persist: async (_ttid, update) => void options.persisted?.push(update), reportBackupLsn: () => {}, reportActive: () => {}, log: () => {} },
    stateWatcher: new StateWatcher(),
    remote: fixture.remote,
    uploadSlots: new UploadSlots(1),
    partialBackupPermits: new Semaphore(1),
    offloadPermits: options.offloadPermits ?? new Semaphore(2),
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

describe('offload permits (eviction and un-eviction at once, over all timelines)', () => {
  const NOW_MS = 1_000_000;

  test('an eviction runs only with a free permit; without one it neither waits nor reads, and is tried again later', async () => {
    const fixture = await makeFixture();
    const permits = new Semaphore(1);
    const warnings: string[] = [];
    const shared = makeShared(fixture, { deleteOffloadedWal: true, nowMs: () => NOW_MS, random: () => 0.25, offloadPermits: permits });
    const jobs = makeJobs(fixture, shared, { kind: 'Present' }, new AbortController().signal, warnings);
    const releaseHeld = await permits.acquire(new AbortController().signal); // another timeline's eviction
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

  test('a guard that must unevict waits for a permit; releasing the guard ends its wait, and the next guard unevicts once one is free', async () => {
    const fixture = await makeFixture();
    await rm(partialPath(fixture.dir)); // evicted with delete_offloaded_wal: a guard downloads
    const permits = new Semaphore(1);
    const persisted: ManagerPersist[] = [];
    const shared = makeShared(fixture, { deleteOffloadedWal: true, offloadPermits: permits, persisted });
    const jobs = makeJobs(fixture, shared, OFFLOADED, new AbortController().signal);
    const releaseHeld = await permits.acquire(new AbortController().signal);
    const abandoned = jobs.acquireGuard(1).then(() => null, (error: unknown) => error);
    await waitFor(() => permits.waiting === 1, { what: 'the guard waiting for a permit' });
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

    await permits.acquire(new AbortController().signal); // never released: a resident timeline's guard must not need it
    await jobs.acquireGuard(3);
    assert.equal(jobs.facts(NOW_MS, NOW_MS).guards, 2);
  });

  test("the manager stopping ends a guard's wait for a permit", async () => {
    const fixture = await makeFixture();
    await rm(partialPath(fixture.dir));
    const permits = new Semaphore(1);
    const stop = new AbortController();
    const jobs = makeJobs(fixture, makeShared(fixture, { deleteOffloadedWal: true, offloadPermits: permits }), OFFLOADED, stop.signal);
    await permits.acquire(new AbortController().signal);
    const waiting = jobs.acquireGuard(1);
    await waitFor(() => permits.waiting === 1, { what: 'the guard waiting for a permit' });
    const reason = new ShutdownError();
    stop.abort(reason);
    await assert.rejects(waiting, (error) => error === reason);
    assert.equal(permits.waiting, 0);
    assert.equal(jobs.offloaded, true);
  });
});

/** A timeline's jobs over the fixture (no manager loop: the test starts jobs itself). Warnings go to `warnings`. */
function makeJobs(fixture: Fixture, shared: ManagerShared, evictionState: EvictionState, signal: AbortSignal, warnings: string[] = []): ManagerJobs {
  const owner: JobsOwner = {
    ttid: TTID,
    tenantId: TENANT_ID,
    timelineId: TIMELINE_ID,
    dir: fixture.dir,
    segmentSizeBytes: SEGMENT_BYTES,
    stopping: false,
    signal: () => signal,
    kick: () => {},
    snapshot: quietSnapshot,
    log: (level, message) => void (level === 'warn' && warnings.push(message)),
  };
  const block = new StateBlock();
  block.setMany(lsnSlots());
  const registration: TimelineRegistration = { ttid: TTID, tenantId: TENANT_ID, timelineId: TIMELINE_ID, segmentSizeBytes: SEGMENT_BYTES, stateChunkId: -1, stateBlockIndex: 0, partialSegments: fixture.segments, evictionState };
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
