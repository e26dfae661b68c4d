/**
 * The pure and file-level pieces of replication out (src/send): the replication message codec, hot standby
 * feedback aggregation (Neon's test_hs_feedback*), the reader set's state-block publication, XLogData
 * chunking (§5.2), the WAL reader's sources (initial image, ring, files, the straddle of syncedLsn, cuts,
 * refusals), and TimelineWal.copyFromRing's validity window (a fake writer pool, so ring wrap is controlled).
 */
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { emptyPageserverFeedback, encodePageserverFeedback } from '../../src/acceptor/pageserver_feedback.js';
import { ProtocolViolationError, ShutdownError } from '../../src/errors.js';
import type { PgConnection, CopyBothSink } from '../../src/pg/connection.js';
import { parseTenantId, parseTimelineId } from '../../src/acceptor/state.js';
import { CancelToken } from '../../src/sync/cancel.js';
import { Watch } from '../../src/sync/watch.js';
import type { Timeline } from '../../src/timeline/timeline.js';
import type { TimelineRegistry } from '../../src/timeline/registry.js';
import { serveStartReplication } from '../../src/send/wal_sender.js';
import { StateBlock } from '../../src/ingest/state_block.js';
import { TimelineWal } from '../../src/ingest/timeline_wal.js';
import type { WriterPool } from '../../src/ingest/writer_pool.js';
import type { WriteResult, WriteTask } from '../../src/ingest/writer_protocol.js';
import { ReaderSet, ReaderSlot, aggregateHotStandbyFeedback, readersOf } from '../../src/send/reader_set.js';
import {
  decodeReaderMessage,
  encodeHotStandbyFeedback,
  encodeKeepalive,
  encodeStandbyReply,
  encodeXLogDataHeader,
  postgresNowUs,
} from '../../src/pg/replication_messages.js';
import { timelineHistory, TimelineHistoryNotFoundError } from '../../src/send/timeline_history.js';
import { WalNotAvailableError, WalReader, checkReadStart, type WalReaderSource } from '../../src/send/wal_reader.js';
import { xlogDataEndLsn } from '../../src/send/stream_rules.js';
import { segmentPath } from '../../src/storage/layout.js';
import { type Lsn, segmentStartLsn } from '../../src/wal/lsn.js';
import { initialSegmentImage } from '../../src/wal/segment_image.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

const signal = (): AbortSignal => new AbortController().signal;
/** Byte equality regardless of the view type (Buffer or Uint8Array). */
const assertBytes = (actual: Uint8Array, expected: Uint8Array, message?: string): void =>
  assert.ok(Buffer.from(actual.buffer, actual.byteOffset, actual.length).equals(expected), message ?? `bytes differ (${actual.length} vs ${expected.length})`);

describe('replication messages', () => {
  test('XLogData header and keepalive have the §5.2 layout', () => {
    const header = encodeXLogDataHeader(0x1_0000_0028n, 0x2_0000_0000n, -5n);
    assert.equal(header.length, 25);
    assert.equal(header[0], 0x77);
    assert.equal(header.readBigUInt64BE(1), 0x1_0000_0028n);
    assert.equal(header.readBigUInt64BE(9), 0x2_0000_0000n);
    assert.equal(header.readBigInt64BE(17), -5n);
    const keepalive = encodeKeepalive(0x16b3748n, 7n, true);
    assert.deepEqual([...keepalive], [0x6b, 0, 0, 0, 0, 0x01, 0x6b, 0x37, 0x48, 0, 0, 0, 0, 0, 0, 0, 7, 1]);
    assert.equal(postgresNowUs(946_684_800_000 + 1500), 1_500_000n, 'microseconds since 2000-01-01');
  });

  test('standby status, hot standby feedback and pageserver feedback decode; malformed r/h are protocol violations', () => {
    const reply = { writeLsn: 10n, flushLsn: 9n, applyLsn: 8n, replyTimeUs: -1n, replyRequested: true };
    assert.deepEqual(decodeReaderMessage(encodeStandbyReply(reply)), { tag: 'standby_reply', reply });
    const feedback = { timestampUs: 123n, xmin: (3n << 32n) | 4000n, catalogXmin: (1n << 32n) | 17n };
    assert.deepEqual(decodeReaderMessage(encodeHotStandbyFeedback(feedback)), { tag: 'hot_standby_feedback', feedback });
    // PostgreSQL sends xid then epoch: check the byte order directly.
    const raw = encodeHotStandbyFeedback(feedback);
    assert.equal(raw.readUInt32BE(9), 4000);
    assert.equal(raw.readUInt32BE(13), 3);
    const ps = { ...emptyPageserverFeedback(), remoteConsistentLsn: 0x5000n, diskConsistentLsn: 0x6000n, shardNumber: 2 };
    const body = encodePageserverFeedback(ps);
    const z = Buffer.concat([Buffer.from([0x7a]), Buffer.alloc(8), body]);
    assert.deepEqual(decodeReaderMessage(z), { tag: 'pageserver_feedback', feedback: ps });
    assert.throws(() => decodeReaderMessage(Buffer.from([0x72, 0, 1])), ProtocolViolationError);
    assert.throws(() => decodeReaderMessage(Buffer.concat([encodeStandbyReply(reply), Buffer.from([0])])), ProtocolViolationError);
    assert.throws(() => decodeReaderMessage(encodeHotStandbyFeedback(feedback).subarray(0, 20)), ProtocolViolationError);
    assert.throws(() => decodeReaderMessage(Buffer.from([0x7a, 0, 0])), ProtocolViolationError);
    assert.deepEqual(decodeReaderMessage(Buffer.from([0x51, 1])), { tag: 'unknown', firstByte: 0x51 });
    assert.deepEqual(decodeReaderMessage(Buffer.alloc(0)), { tag: 'unknown', firstByte: null });
  });

  test('TIMELINE_HISTORY answers as PostgreSQL does for a timeline without a history file', () => {
    assert.throws(() => timelineHistory(1), (error: unknown) => error instanceof TimelineHistoryNotFoundError && error.sqlState === '58P01' && error.message === 'could not open file "pg_wal/00000001.history": No such file or directory');
    assert.throws(() => timelineHistory(26), /pg_wal\/0000001A\.history/);
    assert.throws(() => timelineHistory(0), /invalid timeline 0/);
  });
});

describe('reader set', () => {
  const slotWith = (xmin: bigint, catalogXmin: bigint, timestampUs: bigint): ReaderSlot => {
    const slot = new ReaderSlot(1, { connId: 1, remoteAddress: 'x', applicationName: null, startLsn: 0n, term: null });
    slot.feedback = { kind: 'standby', reply: null, hotStandby: { xmin, catalogXmin, timestampUs } };
    return slot;
  };

  test('hot standby feedback: min of valid xmins and catalog_xmins, max ts of contributors (Neon test_hs_feedback)', () => {
    assert.deepEqual(aggregateHotStandbyFeedback([slotWith(0n, 0n, 1n)]), { timestampUs: 0n, xmin: 0n, catalogXmin: 0n });
    assert.equal(aggregateHotStandbyFeedback([slotWith(0n, 0n, 1n), slotWith(42n, 0n, 1n), slotWith(64n, 0n, 1n)]).xmin, 42n);
    assert.deepEqual(aggregateHotStandbyFeedback([slotWith(50n, 0n, 5n), slotWith(0n, 30n, 9n), slotWith(0n, 0n, 99n), slotWith(70n, 40n, 7n)]), {
      xmin: 50n,
      catalogXmin: 30n,
      timestampUs: 9n,
    });
  });

  test('readerCount and readerHorizonLsn follow registration and feedback; the aggregate drops a leaving standby', () => {
    const state = new StateBlock();
    const set = new ReaderSet(state);
    const info = (startLsn: Lsn): { connId: number; remoteAddress: string; applicationName: string | null; startLsn: Lsn; term: bigint | null } => ({ connId: 1, remoteAddress: 'a', applicationName: null, startLsn, term: null });
    const a = set.register(info(0x3000n));
    const b = set.register(info(0x2000n));
    assert.equal(state.get('readerCount'), 2n);
    assert.equal(state.get('readerHorizonLsn'), 0x2000n, 'the lowest start');
    set.recordStandbyReply(b, { writeLsn: 0x5000n, flushLsn: 0x4000n, applyLsn: 0n, replyTimeUs: 0n, replyRequested: false });
    assert.equal(state.get('readerHorizonLsn'), 0x3000n, 'b needs only from its flush position now');
    set.recordPageserverFeedback(a, { ...emptyPageserverFeedback(), diskConsistentLsn: 0x4800n });
    assert.equal(state.get('readerHorizonLsn'), 0x4000n);
    set.recordHotStandbyFeedback(b, { timestampUs: 1n, xmin: 77n, catalogXmin: 0n });
    assert.equal(set.hotStandbyFeedback.xmin, 77n);
    set.unregister(b);
    set.unregister(b); // idempotent
    assert.equal(set.hotStandbyFeedback.xmin, 0n);
    assert.equal(state.get('readerHorizonLsn'), 0x4800n);
    set.unregister(a);
    assert.equal(state.get('readerCount'), 0n);
    assert.equal(state.get('readerHorizonLsn'), 0n);
  });
});

describe('WAL sender', () => {
  test('a reply that arrives after the stream ended is dropped, not asserted on', async () => {
    // A standby answers every XLogData, so replies are in flight when a stream fails (the timeline deleted, a
    // read refused): the socket still hands them over after the reader's slot is gone. Fakes stand in for the
    // connection and the timeline, so the end of the stream is exact.
    const endLsn = segmentStartLsn(16n, SEGMENT_BYTES) + 8192n;
    const timelineCancel = new CancelToken();
    const acceptor = { state: { server: { walSegSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: SYSTEM_ID }, timelineStartLsn: endLsn, localStartLsn: endLsn }, commitLsn: endLsn, flushLsn: endLsn, term: 1n, lastLogTerm: 1n, updateInMemory: () => undefined };
    const wal = { copyFromRing: () => false, syncedLsn: endLsn, writeLsn: endLsn, cutSequence: 0, flush: new Watch(endLsn), progress: new Watch(0) };
    const timeline = {
      tenantId: 'a'.repeat(32),
      timelineId: 'b'.repeat(32),
      ttid: 'test',
      dir: makeTempDir('sk-sender-'),
      state: new StateBlock(),
      commit: new Watch(endLsn),
      wal,
      activeAcceptor: () => acceptor,
      setHotStandbyFeedbackSource: () => undefined,
      publishState: () => undefined,
      runTask: async (_name: string, work: (signal: AbortSignal) => Promise<void>) => work(timelineCancel.signal),
    };
    let sink: CopyBothSink | null = null;
    const conn = {
      id: 1,
      remoteAddress: 'test',
      startup: { applicationName: 'standby' },
      signal: new AbortController().signal,
      isClosed: false,
      writable: true,
      startCopyBoth: (copySink: CopyBothSink) => (sink = copySink),
      sendCopyData: () => true,
      sendCopyDataParts: () => true,
      drained: async () => undefined,
      write: () => true,
    };
    const log = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
    const ids = { tenantId: parseTenantId(timeline.tenantId), timelineId: parseTimelineId(timeline.timelineId) };
    const registry = { require: () => timeline };
    const streaming = serveStartReplication(conn as unknown as PgConnection, { startLsn: endLsn, pgTimeline: null, term: null }, ids, { registry: registry as unknown as TimelineRegistry, log });
    await waitFor(() => readersOf(timeline as unknown as Timeline).slots().length === 1);
    timelineCancel.cancel(new ShutdownError('timeline deleted'));
    await assert.rejects(streaming, ShutdownError);
    assert.equal(readersOf(timeline as unknown as Timeline).slots().length, 0);
    const reply = encodeStandbyReply({ writeLsn: endLsn, flushLsn: endLsn, applyLsn: endLsn, replyTimeUs: 0n, replyRequested: true });
    sink!.onCopyData(reply); // threw an AssertionError, which took the node down
    sink!.onCopyData(encodeHotStandbyFeedback({ timestampUs: 1n, xmin: 5n, catalogXmin: 0n }));
  });
});

describe('XLogData chunking', () => {
  const SEGMENT = 16 * 1024 * 1024;
  test('at most 128 KiB, on the 128 KiB grid when stopping early, up to the end otherwise, never across a segment', () => {
    assert.equal(xlogDataEndLsn(0x1000000n, 0x2000000n, SEGMENT), 0x1020000n);
    assert.equal(xlogDataEndLsn(0x1000028n, 0x2000000n, SEGMENT), 0x1020000n, 'rounded down to the page');
    assert.equal(xlogDataEndLsn(0x1000028n, 0x1000100n, SEGMENT), 0x1000100n, 'the end, unaligned');
    assert.equal(xlogDataEndLsn(0x1fff000n, 0x2100000n, SEGMENT), 0x2000000n, 'the segment end');
    assert.equal(xlogDataEndLsn(0x1001ff8n, 0x1021ff9n, SEGMENT), 0x1020000n);
    assert.equal(xlogDataEndLsn(0x1010000n, 0x1100000n, SEGMENT), 0x1020000n, 'to the 128 KiB grid, which every reader shares');
  });
});

const SEGMENT_BYTES = 1024 * 1024;
const PG_VERSION = 150008;
const SYSTEM_ID = 99n;

interface FakeWal {
  source: WalReaderSource;
  wal: { writeLsn: Lsn; syncedLsn: Lsn; cutSequence: number; ringOldestLsn: Lsn; copyFromRing: WalReaderSource['wal']['copyFromRing'] };
  bytes: Uint8Array;
  dir: string;
}

/** Two segments (16, 17) of patterned bytes, on disk as 16 complete and 17 `.partial`; a fake ring over the same bytes. */
function fakeWal(timelineStartLsn: Lsn, localStartLsn = timelineStartLsn): FakeWal {
  const dir = makeTempDir('sk-wal-reader-');
  const base = segmentStartLsn(16n, SEGMENT_BYTES);
  const bytes = new Uint8Array(2 * SEGMENT_BYTES);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = (i * 31 + (i >> 13)) & 0xff;
  writeFileSync(segmentPath(dir, 16n, SEGMENT_BYTES, false), bytes.subarray(0, SEGMENT_BYTES));
  writeFileSync(segmentPath(dir, 17n, SEGMENT_BYTES, true), bytes.subarray(SEGMENT_BYTES));
  const wal = {
    writeLsn: base + BigInt(bytes.length),
    syncedLsn: base + BigInt(bytes.length),
    cutSequence: 0,
    ringOldestLsn: base + BigInt(bytes.length),
    copyFromRing(lsn: Lsn, length: number, target: Uint8Array, targetOffset = 0): boolean {
      if (lsn < wal.ringOldestLsn || lsn + BigInt(length) > wal.writeLsn) return false;
      target.set(bytes.subarray(Number(lsn - base), Number(lsn - base) + length), targetOffset);
      return true;
    },
  };
  const source: WalReaderSource = { dir, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: SYSTEM_ID, timelineStartLsn, localStartLsn, removedUpToLsn: () => 0n, readRemote: null, recentChunks: null, wal };
  return { source, wal, bytes, dir };
}

describe('WalReader', () => {
  const base = segmentStartLsn(16n, SEGMENT_BYTES);
  const slice = (fake: FakeWal, from: Lsn, length: number): Uint8Array => fake.bytes.subarray(Number(from - base), Number(from - base) + length);

  test('below the timeline start it serves the initial segment image, stopping at the start', async () => {
    const startLsn = base + 8192n * 3n + 100n;
    const fake = fakeWal(startLsn);
    const reader = new WalReader(fake.source);
    const image = initialSegmentImage({ lsn: startLsn, segmentSizeBytes: SEGMENT_BYTES, systemId: SYSTEM_ID, pgVersion: PG_VERSION });
    const head = await reader.read(base, 128 * 1024, signal());
    assertBytes(head, image.subarray(0, Number(startLsn - base)), 'stops at the timeline start');
    assertBytes(await reader.read(base + 8192n, 10, signal()), image.subarray(8192, 8202));
    assert.equal(reader.bytesBySource.initial_image, Number(startLsn - base) + 10);
    await reader.close();
  });

  test('reads the ring while it holds the range, files below it, and both across syncedLsn', async () => {
    const fake = fakeWal(base + 40n);
    const reader = new WalReader(fake.source);
    // Everything in the ring.
    fake.wal.ringOldestLsn = base;
    assertBytes(await reader.read(base + 40n, 1000, signal()), slice(fake, base + 40n, 1000));
    assert.equal(reader.bytesBySource.ring, 1000);
    // Ring overwritten below the second segment: the first segment (complete name) and the .partial come from files.
    fake.wal.ringOldestLsn = base + BigInt(SEGMENT_BYTES) + 4096n;
    assertBytes(await reader.read(base + 5000n, 128 * 1024, signal()), slice(fake, base + 5000n, 128 * 1024));
    assertBytes(await reader.read(base + BigInt(SEGMENT_BYTES), 4096, signal()), slice(fake, base + BigInt(SEGMENT_BYTES), 4096));
    assert.equal(reader.bytesBySource.segment, 128 * 1024 + 4096);
    // Straddling syncedLsn: the part at and above it is only in the ring (not yet durable in files).
    const syncedLsn = base + BigInt(SEGMENT_BYTES) + 70_000n;
    fake.wal.syncedLsn = syncedLsn;
    fake.wal.ringOldestLsn = syncedLsn;
    const from = syncedLsn - 50_000n;
    assertBytes(await reader.read(from, 100_000, signal()), slice(fake, from, 100_000));
    assert.equal(reader.bytesBySource.ring, 1000 + 50_000);
    await reader.close();
  });

  test('a read during a cut waits for it to end; a cut below the range returns nothing', async () => {
    const fake = fakeWal(base + 40n);
    const reader = new WalReader(fake.source);
    fake.wal.cutSequence = 1;
    const reading = reader.read(base + 100n, 500, signal());
    setTimeout(() => (fake.wal.cutSequence = 2), 20);
    assertBytes(await reading, slice(fake, base + 100n, 500));
    fake.wal.cutSequence = 3;
    const cut = reader.read(base + 200_000n, 500, signal());
    setTimeout(() => {
      fake.wal.syncedLsn = base + 100_000n; // the cut moved the durable end below the range
      fake.wal.cutSequence = 4;
    }, 20);
    assert.equal((await cut).length, 0);
    await reader.close();
  });

  test('refuses WAL below the first segment, WAL not held locally, a timeline without WAL, and missing segments', async () => {
    const fake = fakeWal(base + 40n, base + 8192n);
    assert.throws(() => checkReadStart(fake.source, base - 1n), (error: unknown) => error instanceof WalNotAvailableError && /below the timeline's WAL/.test(error.message));
    assert.throws(() => checkReadStart(fake.source, base + 100n), /not held locally/);
    checkReadStart(fake.source, base); // the synthesised image
    checkReadStart(fake.source, base + 8192n);
    assert.throws(() => checkReadStart({ ...fake.source, localStartLsn: 0n }, base + 8192n), /no WAL yet/);
    assert.throws(() => checkReadStart({ ...fake.source, removedUpToLsn: () => base + BigInt(SEGMENT_BYTES) }, base + 9000n), /was removed locally/);
    rmSync(segmentPath(fake.dir, 17n, SEGMENT_BYTES, true));
    const reader = new WalReader(fake.source);
    await assert.rejects(reader.read(base + BigInt(SEGMENT_BYTES), 100, signal()), (error: unknown) => error instanceof WalNotAvailableError && /000000010000000000000011 is not found/.test(error.message));
    await reader.close();
  });

  test('WAL not held locally (below local start, removed, or a file gone meanwhile) comes from remote storage', async () => {
    const fake = fakeWal(base + 40n, base + 8192n);
    const remoteReads: [Lsn, number][] = [];
    let removedUpToLsn = 0n;
    const source: WalReaderSource = {
      ...fake.source,
      removedUpToLsn: () => removedUpToLsn,
      readRemote: async (lsn, lengthBytes) => {
        remoteReads.push([lsn, lengthBytes]);
        return slice(fake, lsn, Math.min(lengthBytes, 100_000)).slice(); // a short object end, as a partial segment has
      },
    };
    checkReadStart(source, base + 100n); // allowed: remote storage may have it
    const reader = new WalReader(source);
    assertBytes(await reader.read(base + 100n, 5000, signal()), slice(fake, base + 100n, 5000));
    assertBytes(await reader.read(base + 5100n, 3000, signal()), slice(fake, base + 5100n, 3000));
    assert.deepEqual(remoteReads, [[base + 100n, 512 * 1024]], 'one block serves both reads');
    removedUpToLsn = base + BigInt(SEGMENT_BYTES);
    assert.equal((await reader.read(base + 200_000n, 1000, signal())).length, 1000);
    assert.equal(remoteReads.length, 2, 'a removed segment is read remotely');
    removedUpToLsn = 0n;
    rmSync(segmentPath(fake.dir, 16n, SEGMENT_BYTES, false));
    assertBytes(await reader.read(base + 300_000n, 1000, signal()), slice(fake, base + 300_000n, 1000));
    assert.equal(remoteReads.length, 3, 'a segment file gone meanwhile is read remotely');
    assert.equal(reader.bytesBySource.remote, 5000 + 3000 + 1000 + 1000);
    await reader.close();
    const empty = new WalReader({ ...source, readRemote: async () => new Uint8Array(0) });
    await assert.rejects(empty.read(base + 100n, 10, signal()), /in neither the local files nor remote storage/);
    await empty.close();
  });
});

describe('TimelineWal.copyFromRing', () => {
  const RING_BYTES = 64 * 1024;
  const START = segmentStartLsn(16n, SEGMENT_BYTES) + 40n;

  /** A writer pool whose writes finish when the test says so. */
  function fakePool(): { pool: WriterPool; finishWrite: () => void; pending: () => number } {
    const waiting: (() => void)[] = [];
    const pool: WriterPool = {
      write: (task: WriteTask) =>
        new Promise<WriteResult>((resolve) =>
          waiting.push(() => resolve({ ok: true, decoder: task.decoder, recordEndLsn: task.endLsn, completedSegments: 0, timings: { decodeMs: 0, writeMs: 0, fsyncMs: 0 } })),
        ),
      prepare: async () => ({ ok: true, prepared: 'zeroed' }),
      run: async () => ({ ok: true }),
      scan: async () => ({ ok: true, endLsn: 0n, detail: '' }),
      close: async () => undefined,
    };
    return { pool, finishWrite: () => waiting.shift()?.(), pending: () => waiting.length };
  }

  test('serves a range only while the ring still holds all of it; a truncation forgets older bytes', async () => {
    const { pool, finishWrite, pending } = fakePool();
    const wal = new TimelineWal({ dir: makeTempDir('sk-ring-'), segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, ringSizeBytes: RING_BYTES, noSync: true, pool, state: new StateBlock() }, 0n);
    assert.equal(wal.cutSequence, 0);
    const truncating = wal.truncate(START, signal());
    assert.equal(wal.cutSequence % 2, 0, 'flushAll and quiesce come first');
    await truncating;
    assert.equal(wal.cutSequence, 2, 'odd while the cut ran, even after');
    const data = new Uint8Array(80 * 1024).map((_, i) => (i * 7) & 0xff);
    const out = new Uint8Array(64 * 1024);
    assert.equal(wal.tryAppend(START, data.subarray(0, 40 * 1024)), true);
    assert.equal(wal.copyFromRing(START, 40 * 1024, out), true);
    assert.deepEqual(out.subarray(0, 40 * 1024), data.subarray(0, 40 * 1024));
    assert.equal(wal.copyFromRing(START, 40 * 1024 + 1, out), false, 'not past writeLsn');
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(pending(), 1);
    finishWrite();
    await wal.progress.waitFor(() => wal.syncedLsn === START + 40n * 1024n, signal());
    assert.equal(wal.tryAppend(START + 40n * 1024n, data.subarray(40 * 1024)), true); // wraps, overwriting the oldest 16 KiB
    assert.equal(wal.copyFromRing(START, 1, out), false, 'overwritten');
    assert.equal(wal.copyFromRing(START + 16n * 1024n - 1n, 2, out), false, 'partly overwritten');
    assert.equal(wal.copyFromRing(START + 16n * 1024n, 64 * 1024, out), true);
    assert.deepEqual(out, data.subarray(16 * 1024));
    await new Promise((resolve) => setImmediate(resolve));
    finishWrite();
    await wal.truncate(START + 80n * 1024n, signal());
    assert.equal(wal.copyFromRing(START + 79n * 1024n, 1024, out), false, 'nothing before the cut is served from the ring');
  });

  test('a failed write in the padding after an XLOG_SWITCH moves to the next segment, and the ring serves none of the padding', async () => {
    const nextSegmentLsn = segmentStartLsn(17n, SEGMENT_BYTES);
    // The first batch ends with an XLOG_SWITCH: its record end is the next segment start. The second, the
    // start of the zero padding, fails on disk; a failed write reports the record end from before it.
    const results: ((task: WriteTask) => WriteResult)[] = [
      (task) => ({ ok: true, decoder: task.decoder, recordEndLsn: nextSegmentLsn, completedSegments: 0, timings: { decodeMs: 0, writeMs: 0, fsyncMs: 0 } }),
      () => ({ ok: false, code: 'SK_DISK_FULL', detail: 'no space left on device', errorLsn: null, corruption: null, recordEndLsn: nextSegmentLsn }),
    ];
    const pool: WriterPool = {
      write: async (task: WriteTask) => results.shift()!(task),
      prepare: async () => ({ ok: true, prepared: 'zeroed' }),
      run: async () => ({ ok: true }),
      scan: async () => ({ ok: true, endLsn: 0n, detail: '' }),
      close: async () => undefined,
    };
    const wal = new TimelineWal({ dir: makeTempDir('sk-ring-'), segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, ringSizeBytes: RING_BYTES, noSync: true, pool, state: new StateBlock() }, 0n);
    await wal.truncate(START, signal());
    const switchBatch = new Uint8Array(40 * 1024).fill(0x5a);
    assert.equal(wal.tryAppend(START, switchBatch), true);
    await wal.flushAll(signal());
    assert.equal(wal.flushLsn, nextSegmentLsn, 'acknowledged up to the next segment');
    const paddingLsn = START + BigInt(switchBatch.length);
    assert.equal(wal.tryAppend(paddingLsn, new Uint8Array(8 * 1024)), true);
    await wal.failure.waitFor((failure) => failure !== null, signal());
    await wal.flushAll(signal()); // resolves once the cut is done
    assert.equal(wal.writeLsn, nextSegmentLsn, 'positions at the last record end');
    const out = new Uint8Array(1024);
    assert.equal(wal.copyFromRing(paddingLsn + 8n * 1024n, 1024, out), false, 'padding never received');
    assert.equal(wal.copyFromRing(nextSegmentLsn - 1024n, 1024, out), false, 'the end of the switched segment');
    assert.equal(wal.copyFromRing(paddingLsn, 1024, out), false, 'the padding of the failed write');
  });
});
