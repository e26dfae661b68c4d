/**
 * The timeline manager's decisions (src/timeline/manager_decisions.ts) from made-up snapshots: backup
 * targets and backup_lsn reports, control-file save timing, the removal horizon (persisted values, readers,
 * never the segment being written), dropping recycled segments and partial backup on a quiet timeline,
 * garbage collection alone while too many partial objects wait for deletion, and eviction's preconditions. Also
 * the partial object naming and the RpcPort's in-flight bound.
 */
import assert from 'node:assert/strict';
import { MessageChannel } from 'node:worker_threads';
import { describe, test } from 'node:test';
import type { PartialRemoteSegment } from '../../src/acceptor/state.js';
import { NotFoundError } from '../../src/errors.js';
import { needsUploading, partialObjectName } from '../../src/remote/partial_backup.js';
import { PARTIAL_GARBAGE_RECORDS_MAX, partialGarbageFull, planPass, removalLimitSegno, type ManagerFacts, type ManagerSettings, type ManagerSnapshot } from '../../src/timeline/manager_decisions.js';
import { CoordinatorBusyError, RpcPort } from '../../src/timeline/rpc_port.js';
import { segmentStartLsn } from '../../src/wal/lsn.js';
import { FailpointError, Failpoints, parseFailpointAction } from '../../src/sync/failpoints.js';

const SEG = 1 << 20;
const at = (segno: number, offset = 0): bigint => segmentStartLsn(BigInt(segno), SEG) + BigInt(offset);

function snapshot(overrides: Partial<ManagerSnapshot> = {}): ManagerSnapshot {
  const flush = at(6, 1000);
  return {
    flushLsn: flush,
    commitLsn: flush,
    backupLsn: at(1, 40),
    peerHorizonLsn: flush,
    remoteConsistentLsn: 0n,
    persistedCommitLsn: flush,
    persistedBackupLsn: at(1, 40),
    persistedPeerHorizonLsn: flush,
    persistedRemoteConsistentLsn: 0n,
    lastLogTerm: 2n,
    proposerCount: 0n,
    readerCount: 0n,
    readerHorizonLsn: 0n,
    syncedLsn: overrides.flushLsn ?? flush, // every byte received is durable: the usual idle state
    ...overrides,
  };
}

function facts(overrides: Partial<ManagerFacts> = {}): ManagerFacts {
  return {
    nowMs: 1_000_000,
    segmentSizeBytes: SEG,
    offloaded: false,
    uploadedEndSegno: 1n,
    backupRunning: 0,
    backupRetryAtMs: null,
    persistRunning: false,
    lastSaveMs: 1_000_000,
    saveRetryAtMs: 0,
    removalRunning: false,
    removalRetryAtMs: 0,
    lastRemovedSegno: 0n,
    recycledHeld: false,
    partialRunning: false,
    partialRetryAtMs: 0,
    partialSegments: [],
    lastChangeMs: 1_000_000,
    guards: 0,
    evictRunning: false,
    evictNotBeforeMs: 0,
    evictRetryAtMs: 0,
    ...overrides,
  };
}

const settings: ManagerSettings = { controlFileSaveIntervalMs: 300_000, partialBackupTimeoutMs: 60_000, enableOffload: true };

const uploaded = (s: ManagerSnapshot): PartialRemoteSegment => ({ status: 'Uploaded', name: 'x', flushLsn: s.flushLsn, commitLsn: s.commitLsn, term: s.lastLogTerm });

/** `count` records of objects whose deletes failed. */
const garbage = (count: number): PartialRemoteSegment[] => Array.from({ length: count }, (_, index) => ({ status: 'Deleting', name: `old-${index}`, flushLsn: 1n, commitLsn: 1n, term: 1n }));

describe('manager decisions', () => {
  test('backup targets every segment below commit_lsn and reports only confirmed uploads', () => {
    const plan = planPass(snapshot(), facts(), settings);
    assert.equal(plan.backupTargetSegno, 6n);
    assert.equal(plan.reportBackupLsn, null, 'nothing confirmed beyond backup_lsn yet');
    const later = planPass(snapshot(), facts({ uploadedEndSegno: 4n }), settings);
    assert.equal(later.reportBackupLsn, at(4));
    const done = planPass(snapshot({ backupLsn: at(6) }), facts({ uploadedEndSegno: 6n }), settings);
    assert.equal(done.backupTargetSegno, null);
    assert.equal(done.reportBackupLsn, null);
  });

  test('an idle, saved, backed-up timeline plans nothing and sets no timer', () => {
    const s = snapshot({ backupLsn: at(6), persistedBackupLsn: at(6), remoteConsistentLsn: at(6, 1000), persistedRemoteConsistentLsn: at(6, 1000) });
    const plan = planPass(s, facts({ uploadedEndSegno: 6n, lastRemovedSegno: 5n, partialSegments: [uploaded(s)] }), { ...settings, enableOffload: false });
    assert.deepEqual({ ...plan, status: undefined }, { backupTargetSegno: null, reportBackupLsn: null, active: false, save: false, removeUpToSegno: null, dropRecycled: false, uploadPartial: false, collectPartialGarbage: false, evict: false, wakeAtMs: Infinity, status: undefined });
    assert.equal(plan.status, 'idle');
  });

  test('control file: saved at the interval, or at once when persisted commit lags a segment', () => {
    const ahead = snapshot({ persistedCommitLsn: at(6, 10) });
    const wait = planPass(ahead, facts({ partialSegments: [uploaded(ahead)] }), settings);
    assert.equal(wait.save, false);
    assert.equal(wait.wakeAtMs, 1_000_000 + 300_000);
    assert.equal(planPass(ahead, facts({ nowMs: 1_300_000 }), settings).save, true);
    assert.equal(planPass(snapshot({ persistedCommitLsn: at(5, 999) }), facts(), settings).save, true, 'lags ≥ 1 segment');
    assert.equal(planPass(ahead, facts({ nowMs: 1_300_000, persistRunning: true }), settings).save, false, 'one save at a time');
    assert.equal(planPass(snapshot({ backupLsn: at(3) }), facts({ nowMs: 1_300_000 }), settings).save, true, 'backup_lsn ahead counts too');
  });

  test('removal horizon: persisted backup and commit, flush, readers; never the segment being written', () => {
    assert.equal(removalLimitSegno(snapshot({ persistedBackupLsn: at(4) }), SEG), 3n);
    assert.equal(removalLimitSegno(snapshot({ persistedBackupLsn: at(9), persistedCommitLsn: at(5, 7) }), SEG), 4n);
    assert.equal(removalLimitSegno(snapshot({ persistedBackupLsn: at(9), persistedCommitLsn: at(9), flushLsn: at(6, 3) }), SEG), 5n);
    assert.equal(removalLimitSegno(snapshot({ persistedBackupLsn: at(9), readerCount: 1n, readerHorizonLsn: at(2, 5) }), SEG), 1n);
    assert.equal(removalLimitSegno(snapshot({ persistedBackupLsn: at(9), readerCount: 1n, readerHorizonLsn: 0n }), SEG), -1n, 'a reader without a horizon yet holds everything');
    const plan = planPass(snapshot({ backupLsn: at(4), persistedBackupLsn: at(4) }), facts({ uploadedEndSegno: 4n, lastRemovedSegno: 0n }), settings);
    assert.equal(plan.removeUpToSegno, 3n);
    assert.equal(planPass(snapshot({ persistedBackupLsn: at(4) }), facts({ lastRemovedSegno: 3n }), settings).removeUpToSegno, null, 'already removed');
    // In-memory backup_lsn alone never allows removal: a restart would need the segments again.
    assert.equal(planPass(snapshot({ backupLsn: at(6) }), facts({ uploadedEndSegno: 6n }), settings).removeUpToSegno, null);
  });

  test('removal keeps the segment whose XLOG_SWITCH padding is not written yet, though flush_lsn is past it', () => {
    // The switch record in segment 6 is verified, so flush_lsn is segment 7's start; the padding after it
    // is still on its way (or in the ring), so the writer will write more of 6.partial.
    const switched = { flushLsn: at(7), commitLsn: at(7), persistedCommitLsn: at(7), backupLsn: at(7), persistedBackupLsn: at(7) };
    const padding = snapshot({ ...switched, syncedLsn: at(6, 5000) });
    assert.equal(removalLimitSegno(padding, SEG), 5n);
    assert.equal(planPass(padding, facts({ uploadedEndSegno: 7n, lastRemovedSegno: 4n }), settings).removeUpToSegno, 5n);
    assert.equal(planPass(padding, facts({ uploadedEndSegno: 7n, lastRemovedSegno: 5n }), settings).removeUpToSegno, null, 'nothing more until the padding is durable');
    // Once the padding is written, segment 6 is complete and may go.
    assert.equal(removalLimitSegno(snapshot({ ...switched, syncedLsn: at(7) }), SEG), 6n);
  });

  test('recycled segments are dropped once the timeline is quiet with no proposer, never during a removal', () => {
    const s = snapshot({ persistedBackupLsn: at(1, 40) }); // nothing to remove
    const held = facts({ recycledHeld: true });
    const early = planPass(s, { ...held, nowMs: 1_059_000 }, settings);
    assert.equal(early.dropRecycled, false);
    assert.equal(early.wakeAtMs <= 1_060_000, true, 'looks again when the quiet period ends');
    assert.equal(planPass(s, { ...held, nowMs: 1_060_000 }, settings).dropRecycled, true);
    assert.equal(planPass(s, { ...facts(), nowMs: 1_060_000 }, settings).dropRecycled, false, 'none held');
    assert.equal(planPass({ ...s, proposerCount: 1n }, { ...held, nowMs: 2_000_000 }, settings).dropRecycled, false, 'a proposer is connected');
    assert.equal(planPass(s, { ...held, nowMs: 2_000_000, removalRunning: true }, settings).dropRecycled, false, 'a removal runs');
    assert.equal(planPass(s, { ...held, nowMs: 2_000_000, removalRetryAtMs: 2_000_500 }, settings).dropRecycled, false, 'after a failure, at the retry time');
    const removable = snapshot({ backupLsn: at(4), persistedBackupLsn: at(4) });
    const both = planPass(removable, { ...held, nowMs: 2_000_000, uploadedEndSegno: 4n }, settings);
    assert.equal(both.removeUpToSegno, 3n);
    assert.equal(both.dropRecycled, false, 'removal first; the drop comes on a later pass');
  });

  test('partial backup waits for a quiet timeline, then uploads what changed', () => {
    const s = snapshot();
    const quiet = planPass(s, facts({ nowMs: 1_000_000 + 59_000 }), settings);
    assert.equal(quiet.uploadPartial, false);
    assert.equal(quiet.wakeAtMs <= 1_060_000, true);
    assert.equal(planPass(s, facts({ nowMs: 1_060_000 }), settings).uploadPartial, true);
    assert.equal(planPass(s, facts({ nowMs: 1_060_000, partialSegments: [uploaded(s)] }), settings).uploadPartial, false, 'already current');
    assert.equal(planPass(snapshot({ flushLsn: 0n, commitLsn: 0n, persistedCommitLsn: 0n }), facts({ nowMs: 2_000_000 }), settings).uploadPartial, false, 'no WAL yet');
    const below = planPass(s, facts({ nowMs: 1_060_000, partialSegments: garbage(PARTIAL_GARBAGE_RECORDS_MAX - 1) }), settings);
    assert.deepEqual([below.uploadPartial, below.collectPartialGarbage], [true, false], 'an upload, which collects the garbage after it');
    // The upload is current but a cleanup failed: the garbage is collected on its own, on the uploads' cadence.
    const leftover = [...garbage(1), uploaded(s)];
    const soon = planPass(s, facts({ nowMs: 1_030_000, partialSegments: leftover }), settings);
    assert.deepEqual([soon.uploadPartial, soon.wakeAtMs <= 1_060_000], [false, true]);
    const due = planPass(s, facts({ nowMs: 1_060_000, partialSegments: leftover }), settings);
    assert.deepEqual([due.uploadPartial, due.collectPartialGarbage], [true, true], 'collected, not left until the next upload');
  });

  test('while too many partial objects wait for deletion, the slot collects garbage alone, at once and at each retry', () => {
    // Deletes of older objects kept failing: each upload would leave one more record in the control file.
    const s = snapshot();
    const full = garbage(PARTIAL_GARBAGE_RECORDS_MAX);
    const stale = planPass(s, facts({ nowMs: 1_060_000, partialSegments: full }), settings);
    assert.deepEqual([stale.uploadPartial, stale.collectPartialGarbage, stale.status.split('+').includes('partial-gc')], [true, true, true], 'no upload: garbage collection');
    const busy = planPass(s, facts({ nowMs: 1_000_000, partialSegments: full }), settings);
    assert.equal(busy.collectPartialGarbage, true, 'without waiting for a quiet timeline, which may never come');
    const current = planPass(s, facts({ partialSegments: [...full, uploaded(s)] }), settings);
    assert.equal(current.collectPartialGarbage, true, 'even when the Uploaded object is current');
    assert.equal(current.evict, false, 'the collection runs first');
    // The start-up collection (or the last one) failed: tried again at the retry time, not only at a restart.
    const failed = planPass(s, facts({ nowMs: 1_001_000, partialSegments: full, partialRetryAtMs: 1_002_000 }), settings);
    assert.deepEqual([failed.uploadPartial, failed.collectPartialGarbage, failed.wakeAtMs], [false, false, 1_002_000]);
    const retried = planPass(s, facts({ nowMs: 1_002_000, partialSegments: full, partialRetryAtMs: 1_002_000 }), settings);
    assert.deepEqual([retried.uploadPartial, retried.collectPartialGarbage], [true, true]);
    const running = planPass(s, facts({ nowMs: 1_060_000, partialSegments: full, partialRunning: true }), settings);
    assert.deepEqual([running.uploadPartial, running.collectPartialGarbage], [false, false], 'one partial-backup job at a time');
    const offloaded = planPass(s, facts({ partialSegments: full, offloaded: true }), settings);
    assert.equal(offloaded.collectPartialGarbage, false, 'an offloaded timeline runs no job');
    assert.equal(partialGarbageFull(full), true);
    assert.equal(partialGarbageFull([...garbage(PARTIAL_GARBAGE_RECORDS_MAX - 1), uploaded(s)]), false, 'the Uploaded record is no garbage');
  });

  test('eviction needs everything remote, saved and removed, and no guard or connection', () => {
    const s = snapshot({ backupLsn: at(6), persistedBackupLsn: at(6) });
    const ready = facts({ uploadedEndSegno: 6n, lastRemovedSegno: 5n, partialSegments: [uploaded(s)] });
    assert.equal(planPass(s, ready, settings).evict, true);
    assert.equal(planPass(s, ready, { ...settings, enableOffload: false }).evict, false);
    assert.equal(planPass(s, { ...ready, guards: 1 }, settings).evict, false);
    assert.equal(planPass({ ...s, proposerCount: 1n }, ready, settings).evict, false);
    assert.equal(planPass({ ...s, readerCount: 1n, readerHorizonLsn: s.flushLsn }, ready, settings).evict, false);
    assert.equal(planPass(s, { ...ready, lastRemovedSegno: 4n }, settings).evict, false, 'older WAL still local');
    assert.equal(planPass({ ...s, persistedCommitLsn: at(6, 10) }, ready, settings).evict, false, 'control file not saved');
    assert.equal(planPass(s, { ...ready, partialSegments: [{ ...uploaded(s), flushLsn: at(6, 8) }] }, settings).evict, false, 'partial object stale');
    const notYet = planPass(s, { ...ready, evictNotBeforeMs: 1_000_500 }, settings);
    assert.equal(notYet.evict, false);
    assert.equal(notYet.wakeAtMs, 1_000_500);
    assert.equal(planPass(s, { ...ready, recycledHeld: true }, settings).evict, true, 'eviction deletes recycled segments itself');
    const dropFirst = planPass(s, { ...ready, recycledHeld: true, nowMs: 1_060_000 }, settings);
    assert.deepEqual([dropFirst.dropRecycled, dropFirst.evict], [true, false], 'a drop due now runs first, alone');
    assert.equal(planPass(s, { ...ready, offloaded: true }, settings).status, 'offloaded');
  });
});

describe('partial backup naming', () => {
  test('segment, term, flush and commit LSNs and the node id are in the name', () => {
    assert.equal(partialObjectName(16 << 20, { flushLsn: 0x16b9_1888n, commitLsn: 0x16b9_1000n, term: 3n }, 7n), '000000010000000000000016_3_0000000016B91888_0000000016B91000_sk7.partial');
    const current = { flushLsn: 10n, commitLsn: 9n, term: 2n };
    assert.equal(needsUploading([], current), true);
    assert.equal(needsUploading([{ status: 'Uploaded', name: 'a', ...current }], current), false);
    assert.equal(needsUploading([{ status: 'InProgress', name: 'a', ...current }], current), true);
    assert.equal(needsUploading([{ status: 'Uploaded', name: 'a', ...current, term: 1n }], current), true);
  });
});

describe('RpcPort', () => {
  test('replies, rebuilt errors, notifications, and a bound on requests in flight', async () => {
    const { port1, port2 } = new MessageChannel();
    const notices: unknown[] = [];
    let release: (() => void) | null = null;
    const server = new RpcPort(
      port2,
      {
        onRequest: async (body) => {
          const request = body as { kind: string };
          if (request.kind === 'missing') throw new NotFoundError('no such thing');
          if (request.kind === 'slow') await new Promise<void>((resolve) => (release = resolve));
          return { value: { echo: request.kind, lsn: 5n } };
        },
        onNotify: (body) => notices.push(body),
      },
      10,
    );
    const client = new RpcPort(port1, { onRequest: async () => ({ value: null }), onNotify: () => {} }, 1);
    assert.deepEqual(await client.request({ kind: 'hello' }), { echo: 'hello', lsn: 5n });
    await assert.rejects(client.request({ kind: 'missing' }), NotFoundError);
    const slow = client.request({ kind: 'slow' });
    await assert.rejects(client.request({ kind: 'other' }), CoordinatorBusyError);
    while (release === null) await new Promise((resolve) => setImmediate(resolve));
    (release as () => void)();
    await slow;
    client.notify({ kind: 'note' });
    while (notices.length === 0) await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(notices, [{ kind: 'note' }]);
    server.close();
    client.close();
    port1.close();
  });
});

describe('failpoints', () => {
  test('counts and chains: 2*off->error lets two hits pass and fails the third; pause waits for a change', async () => {
    const points = new Failpoints(true);
    const signal = new AbortController().signal;
    points.set('p', parseFailpointAction('2*off->error'));
    await points.hit('p', signal);
    await points.hit('p', signal);
    await assert.rejects(points.hit('p', signal), FailpointError);
    assert.deepEqual(points.list(), [{ name: 'p', action: 'error', hits: 3 }]);
    points.set('q', parseFailpointAction('pause'));
    let passed = false;
    const paused = points.hit('q', signal).then(() => (passed = true));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(passed, false);
    points.set('q', parseFailpointAction('off'));
    await paused;
    assert.throws(() => parseFailpointAction('explode'), /unknown failpoint action/);
    assert.throws(() => new Failpoints(false).set('x', parseFailpointAction('off')), /disabled/);
    await new Failpoints(false).hit('x', signal); // disabled: nothing happens
  });
});
