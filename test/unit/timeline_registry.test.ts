/**
 * TimelineRegistry create/delete lifecycle with real files in temp dirs and the real writer pool; only the
 * coordinator hooks (`onOpen` = register a manager, `deleteRemote`) are fakes, and the fake keeps the
 * coordinator's rules: a registered manager holds the timeline's gate until unregistered, and remote
 * deletion asserts that no manager is registered. Covers a create racing a delete at many offsets, a
 * retried delete while a task still holds the gate, and a delete cut short right after its rename.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import { ttid, type TenantId, type TimelineId } from '../../src/acceptor/state.js';
import { createWriterPool, type WriterPool } from '../../src/ingest/writer_pool.js';
import { segmentFileName } from '../../src/wal/lsn.js';
import { timelineDir, tmpDirPath } from '../../src/storage/layout.js';
import { CancelToken } from '../../src/sync/cancel.js';
import { moveTimelineDirToTmp, TimelineRegistry, TOMBSTONE_TTL_MS, type CreateTimelineArgs } from '../../src/timeline/registry.js';
import type { Timeline } from '../../src/timeline/timeline.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';

const TENANT = 'a'.repeat(32) as TenantId;
const TIMELINE = 'b'.repeat(32) as TimelineId;
const SEGMENT_BYTES = 16 << 20;
const ARGS: CreateTimelineArgs = { tenantId: TENANT, timelineId: TIMELINE, server: { pgVersion: 150000, systemId: 0n, walSegSizeBytes: SEGMENT_BYTES }, startLsn: 0n, commitLsn: 0n };
const silentLog = { info(): void {}, warn(): void {}, error(): void {} };

let pool: WriterPool;
const registries: TimelineRegistry[] = [];
before(() => {
  pool = createWriterPool(1);
});
after(async () => {
  for (const registry of registries) await registry.shutdown();
  await pool.close();
  await removeAllTempDirs();
});

/** The coordinator as the registry sees it, with the same ordering rules as `coordinator.ts`. */
class FakeCoordinator {
  readonly events: string[] = [];
  readonly managers = new Set<string>();

  register(timeline: Timeline): void {
    if (timeline.acceptor === null) return;
    const leave = timeline.gate.enter('timeline manager');
    this.managers.add(timeline.ttid);
    this.events.push('register');
    // Unregistering is a round trip to the coordinator thread: the gate stays held until it returns.
    timeline.cancel.onCancel(() => {
      setImmediate(() => {
        this.managers.delete(timeline.ttid);
        this.events.push('unregister');
        leave();
      });
    });
  }

  async deleteRemote(tenantId: TenantId, timelineId: TimelineId): Promise<number> {
    assert(!this.managers.has(ttid(tenantId, timelineId)), 'a timeline is unregistered before its remote objects go');
    this.events.push('delete_remote');
    await nextTurn();
    return 0;
  }
}

async function loadRegistry(dataDir: string, coordinator: FakeCoordinator, nowMs?: () => number): Promise<TimelineRegistry> {
  const registry = await TimelineRegistry.load({
    ...(nowMs !== undefined ? { nowMs } : {}),
    dataDir,
    nodeId: 1n,
    noSync: false,
    ringSizeBytes: 4 << 20,
    ringReleaseDelayMs: 0,
    pool,
    cancel: new CancelToken(),
    log: silentLog,
    onOpen: (timeline) => coordinator.register(timeline),
    deleteRemote: (tenantId, timelineId) => coordinator.deleteRemote(tenantId, timelineId),
  });
  registries.push(registry);
  return registry;
}

/** Settles without throwing: 'created', or the error code the create failed with. */
const outcome = (creating: Promise<Timeline>): Promise<string> => creating.then(() => 'created', (error: { code?: string }) => error.code ?? String(error));

describe('TimelineRegistry', () => {
  test('a deleted id refuses creation for TOMBSTONE_TTL_MS, then accepts it; expired tombstones are dropped', async () => {
    let nowMs = 0;
    const registry = await loadRegistry(makeTempDir('registry-tombstone'), new FakeCoordinator(), () => nowMs);
    await registry.create(ARGS);
    await registry.delete(TENANT, TIMELINE);
    const neverCreated = 'c'.repeat(32) as TimelineId;
    assert.deepEqual(await registry.delete(TENANT, neverCreated), { dirExisted: false }); // a tombstone all the same
    nowMs += TOMBSTONE_TTL_MS - 1;
    assert.equal(await outcome(registry.create(ARGS)), 'SK_CONFLICT');
    assert.equal(registry.isDeleted(TENANT, neverCreated), true);
    nowMs += 1;
    assert.equal(registry.isDeleted(TENANT, neverCreated), false, 'a day after the delete began');
    assert.equal(await outcome(registry.create(ARGS)), 'created');
    assert.equal(registry.get(TENANT, TIMELINE)?.acceptor?.state.timelineId, TIMELINE);
  });

  test('a create racing a delete never leaves the timeline published, on disk or registered after remote deletion', async () => {
    const offsets: Array<{ turns: number } | { ms: number }> = [];
    for (let turns = 0; turns <= 24; turns++) offsets.push({ turns });
    for (let ms = 1; ms <= 6; ms++) offsets.push({ ms });
    const outcomes = new Set<string>();
    for (const offset of offsets) {
      const dataDir = makeTempDir('sk-registry-race-');
      const coordinator = new FakeCoordinator();
      const registry = await loadRegistry(dataDir, coordinator);
      const creating = outcome(registry.create(ARGS));
      if ('turns' in offset) for (let turn = 0; turn < offset.turns; turn++) await nextTurn();
      else await sleep(offset.ms);
      const deleted = await registry.delete(TENANT, TIMELINE);
      const created = await creating;
      outcomes.add(created);
      assert.ok(created === 'created' || created === 'SK_CONFLICT', `create ended with ${created}`);
      assert.equal(deleted.dirExisted, true, 'the create had made the directory, so the delete found it');
      assert.equal(registry.get(TENANT, TIMELINE), undefined);
      assert.equal(registry.isDeleted(TENANT, TIMELINE), true);
      assert.equal(existsSync(timelineDir(dataDir, TENANT, TIMELINE)), false);
      assert.equal(coordinator.managers.size, 0);
      const remoteAt = coordinator.events.indexOf('delete_remote');
      assert.ok(remoteAt >= 0, 'remote objects were deleted');
      assert.ok(!coordinator.events.slice(remoteAt).includes('register'), `registered after delete_remote: ${coordinator.events.join('>')}`);
      await assert.rejects(registry.create(ARGS), { code: 'SK_CONFLICT' });
      // A restart finds nothing to load (the tombstone is gone then, so only the disk can say it).
      const reloaded = await loadRegistry(dataDir, new FakeCoordinator());
      assert.deepEqual(reloaded.list(), []);
    }
    assert.ok(outcomes.has('SK_CONFLICT'), 'some offsets hit the create in flight');
  });

  test('a second delete waits for the first, and neither touches files while a task holds the gate', async () => {
    const dataDir = makeTempDir('sk-registry-delete2-');
    const coordinator = new FakeCoordinator();
    const registry = await loadRegistry(dataDir, coordinator);
    const timeline = await registry.create(ARGS);
    const leaveTask = timeline.gate.enter('fake upload');
    const settled: string[] = [];
    const first = registry.delete(TENANT, TIMELINE).then((result) => (settled.push('first'), result));
    const second = registry.delete(TENANT, TIMELINE).then((result) => (settled.push('second'), result));
    await sleep(50);
    assert.deepEqual(settled, []);
    assert.equal(existsSync(timelineDir(dataDir, TENANT, TIMELINE)), true);
    assert.ok(!coordinator.events.includes('delete_remote'));
    assert.equal(timeline.cancel.cancelled, true, 'the first delete cancelled the timeline');
    leaveTask();
    assert.deepEqual(await first, { dirExisted: true });
    assert.deepEqual(await second, { dirExisted: true });
    assert.equal(existsSync(timelineDir(dataDir, TENANT, TIMELINE)), false);
    assert.deepEqual(coordinator.events.filter((event) => event === 'delete_remote'), ['delete_remote']);
  });

  test('a full delete arriving during an only_local one still removes the remote objects', async () => {
    const dataDir = makeTempDir('sk-registry-delete-local-');
    const coordinator = new FakeCoordinator();
    const registry = await loadRegistry(dataDir, coordinator);
    const timeline = await registry.create(ARGS);
    const leaveTask = timeline.gate.enter('fake upload');
    const local = registry.delete(TENANT, TIMELINE, { onlyLocal: true });
    const full = registry.delete(TENANT, TIMELINE);
    await sleep(20);
    assert.ok(!coordinator.events.includes('delete_remote'));
    leaveTask();
    assert.deepEqual(await local, { dirExisted: true });
    assert.deepEqual(await full, { dirExisted: true });
    assert.deepEqual(coordinator.events.filter((event) => event === 'delete_remote'), ['delete_remote']);
  });

  test('a repeated delete after the first finished runs again: no directory, remote objects deleted again', async () => {
    const dataDir = makeTempDir('sk-registry-redelete-');
    const coordinator = new FakeCoordinator();
    const registry = await loadRegistry(dataDir, coordinator);
    await registry.create(ARGS);
    assert.deepEqual(await registry.delete(TENANT, TIMELINE), { dirExisted: true });
    assert.deepEqual(await registry.delete(TENANT, TIMELINE), { dirExisted: false });
    assert.deepEqual(coordinator.events.filter((event) => event === 'delete_remote'), ['delete_remote', 'delete_remote']);
  });

  test('a delete cut short right after its rename leaves nothing that loads at restart', async () => {
    const dataDir = makeTempDir('sk-registry-crash-');
    const registry = await loadRegistry(dataDir, new FakeCoordinator());
    await registry.create(ARGS);
    const dir = timelineDir(dataDir, TENANT, TIMELINE);
    writeFileSync(join(dir, segmentFileName(1n, SEGMENT_BYTES)), Buffer.alloc(8192));
    // Before the rename, a restart loads the timeline whole.
    assert.equal((await loadRegistry(dataDir, new FakeCoordinator())).get(TENANT, TIMELINE)?.status, 'active');
    const moved = await moveTimelineDirToTmp(dataDir, TENANT, TIMELINE, false);
    assert.ok(moved !== null && moved.startsWith(tmpDirPath(dataDir)));
    assert.equal(existsSync(dir), false);
    assert.deepEqual(readdirSync(moved).sort(), [segmentFileName(1n, SEGMENT_BYTES), 'safekeeper.control'].sort());
    // The "crash": the rest of the delete never runs. The restart loads nothing and clears tmp/.
    const restarted = await loadRegistry(dataDir, new FakeCoordinator());
    assert.deepEqual(restarted.list(), []);
    assert.equal(existsSync(moved), false);
    assert.equal(await moveTimelineDirToTmp(dataDir, TENANT, TIMELINE, false), null, 'nothing left to move');
    assert.deepEqual(await restarted.delete(TENANT, TIMELINE), { dirExisted: false });
  });
});
