/**
 * Piscina task entry point of the WAL writer pool: decode + CRC-verify, pwrite, fdatasync, and the other
 * segment-file operations of `ingest/writer_protocol.ts`. Runs in a worker thread, where blocking sync fs
 * calls are the job (async fs would queue on libuv's process-wide pool); the one exception is the sync of
 * a large batch, which overlaps its verification (`writeThenVerify`). A task finishes all its I/O
 * before it returns and keeps no file open across tasks: another worker may take the timeline's next
 * task, and a truncation may delete files meanwhile. Operating errors are returned as data; a throw here
 * is a bug and stops the node.
 */
import { WalCorruptionError } from '../src/errors.js';
import { RingView } from '../src/ingest/ring.js';
import type {
  InitSegmentTask,
  PrepareResult,
  ScanResult,
  ScanTask,
  SimpleResult,
  TaskTimings,
  WriteResult,
  WriteTask,
  WriterTask,
} from '../src/ingest/writer_protocol.js';
import { toIoErrorData } from '../src/storage/layout.js';
import { prepareSegment, syncSegmentIfExistsSync, truncateWalSync } from '../src/storage/segment_file.js';
import { readWalSync } from '../src/storage/segment_read.js';
import { SegmentWriter } from '../src/storage/segment_writer.js';
import { unreachable } from '../src/sync/assert.js';
import { formatLsn, segmentNumber, segmentOffsetBytes, segmentStartLsn, type Lsn } from '../src/wal/lsn.js';
import { decoderStartProblem, initialDecoderState, WalRecordDecoder } from '../src/wal/record_decoder.js';
import { initialSegmentImage } from '../src/wal/segment_image.js';
import { NotFoundError } from '../src/errors.js';

export default function runTask(task: WriterTask): WriteResult | Promise<WriteResult> | SimpleResult | PrepareResult | ScanResult {
  switch (task.kind) {
    case 'write':
      return write(task);
    case 'prepare':
      return attempt(() => ({ prepared: prepareSegment(task.dir, task.segno, task.segmentSizeBytes, task.fill, task) }));
    case 'truncate':
      return attempt(() => void truncateWalSync(task.dir, task.lsn, task.segmentSizeBytes, task));
    case 'init_segment':
      return attempt(() => initSegment(task));
    case 'scan':
      return scan(task);
    default:
      return unreachable(task, 'unknown writer task');
  }
}

/** Runs segment-file work; its result fields come back with `ok: true`, an fs failure as data. */
function attempt<T extends object>(work: () => T | void): ({ ok: true } & T) | { ok: false; code: string; detail: string } {
  try {
    return { ok: true, ...(work() ?? ({} as T)) };
  } catch (error) {
    return { ok: false, ...toIoErrorData(error) };
  }
}

/**
 * Batches of at least this many bytes are written first and verified while fdatasync runs on libuv's
 * thread pool: here verification costs about 1 ms per MiB and a sync of a few MiB several ms, so doing them
 * one after the other made the writer the bottleneck of a fast proposer. Smaller batches (a lone commit)
 * verify first and sync on this thread, which skips a thread-pool round trip on the latency path.
 */
export const OVERLAP_VERIFY_MIN_BYTES = 1024 * 1024;

function write(task: WriteTask): WriteResult | Promise<WriteResult> {
  const lengthBytes = Number(task.endLsn - task.beginLsn);
  const pieces = new RingView(task.ring).pieces(task.beginLsn, lengthBytes);
  return lengthBytes >= OVERLAP_VERIFY_MIN_BYTES && !task.noSync ? writeThenVerify(task, pieces) : verifyThenWrite(task, pieces);
}

/** Verify, write the verified prefix, sync. On corruption only the verified prefix is written. */
function verifyThenWrite(task: WriteTask, pieces: Uint8Array[]): WriteResult {
  const startMs = performance.now();
  const decoder = new WalRecordDecoder(task.decoder);
  const corruption = verify(decoder, pieces);
  const decodedMs = performance.now();
  const goodEndLsn = corruption === null ? task.endLsn : decoder.lastRecordEndLsn;
  const writer = new SegmentWriter(task.dir, task.segmentSizeBytes, task);
  let writtenMs = decodedMs;
  let completed: bigint[] = [];
  try {
    if (goodEndLsn > task.beginLsn) {
      completed = writeRange(writer, task.beginLsn, pieces, Number(goodEndLsn - task.beginLsn));
      writtenMs = performance.now();
      for (const segno of completed) writer.completeSegment(segno);
      writer.flush();
    }
  } catch (error) {
    return ioFailure(task, error);
  } finally {
    writer.close();
  }
  const syncedMs = performance.now();
  if (corruption !== null) return corruptionFailure(corruption, goodEndLsn);
  return success(decoder, completed.length, { decodeMs: decodedMs - startMs, writeMs: writtenMs - decodedMs, fsyncMs: syncedMs - writtenMs });
}

/**
 * Write the whole batch, start fdatasync on the thread pool, verify meanwhile, then wait for the sync. A
 * segment written to its end is completed (renamed) only once its last byte is verified. On corruption the
 * bytes after the last good record are on disk, as a record cut by an earlier batch's end always could be:
 * the caller cuts the files there before anything else is written, and crash recovery verifies the tail it
 * keeps. What the result acknowledges is verified and durable either way.
 */
async function writeThenVerify(task: WriteTask, pieces: Uint8Array[]): Promise<WriteResult> {
  const startMs = performance.now();
  const writer = new SegmentWriter(task.dir, task.segmentSizeBytes, task);
  try {
    let completed: bigint[];
    let synced: Promise<boolean>;
    try {
      completed = writeRange(writer, task.beginLsn, pieces, Number(task.endLsn - task.beginLsn));
      synced = writer.flushAsync();
    } catch (error) {
      return ioFailure(task, error);
    }
    const writtenMs = performance.now();
    const decoder = new WalRecordDecoder(task.decoder);
    const corruption = verify(decoder, pieces);
    const decodedMs = performance.now();
    try {
      await synced;
    } catch (error) {
      return ioFailure(task, error);
    }
    // Includes whatever part of the verification the sync did not hide.
    const syncedMs = performance.now();
    const goodEndLsn = corruption === null ? task.endLsn : decoder.lastRecordEndLsn;
    try {
      // As verifyThenWrite would: a segment is complete when its last byte is verified.
      for (const segno of completed) {
        if (segmentStartLsn(segno + 1n, task.segmentSizeBytes) <= goodEndLsn) writer.completeSegment(segno);
      }
    } catch (error) {
      return ioFailure(task, error);
    }
    if (corruption !== null) return corruptionFailure(corruption, goodEndLsn);
    return success(decoder, completed.length, { decodeMs: decodedMs - writtenMs, writeMs: writtenMs - startMs, fsyncMs: syncedMs - writtenMs });
  } finally {
    writer.close();
  }
}

/** Feeds every piece; returns the corruption that stopped the decoder, or null. */
function verify(decoder: WalRecordDecoder, pieces: Uint8Array[]): WalCorruptionError | null {
  try {
    for (const piece of pieces) decoder.feed(piece);
    return null;
  } catch (error) {
    if (!(error instanceof WalCorruptionError)) throw error;
    return error;
  }
}

/** pwrites the first `lengthBytes` of the ring pieces at `beginLsn`; returns the segments written to their end. */
function writeRange(writer: SegmentWriter, beginLsn: Lsn, pieces: Uint8Array[], lengthBytes: number): bigint[] {
  const first = pieces[0]!.subarray(0, Math.min(lengthBytes, pieces[0]!.length));
  const second = pieces[1]?.subarray(0, lengthBytes - first.length);
  return second === undefined || second.length === 0 ? writer.writeWalAt(beginLsn, first) : writer.writeWalAt(beginLsn, first, second);
}

function success(decoder: WalRecordDecoder, completedSegments: number, timings: TaskTimings): WriteResult {
  return { ok: true, decoder: decoder.snapshot(), recordEndLsn: decoder.lastRecordEndLsn, completedSegments, timings };
}

/** Nothing of this batch counts: flush_lsn stays where the batch began. */
function ioFailure(task: WriteTask, error: unknown): WriteResult {
  return { ok: false, ...toIoErrorData(error), errorLsn: null, corruption: null, recordEndLsn: task.decoder.lastRecordEndLsn };
}

function corruptionFailure(corruption: WalCorruptionError, goodEndLsn: Lsn): WriteResult {
  return { ok: false, code: corruption.code, detail: corruption.message, errorLsn: corruption.lsn, corruption: corruption.kind, recordEndLsn: goodEndLsn };
}

function initSegment(task: InitSegmentTask): void {
  const image = initialSegmentImage({ lsn: task.lsn, segmentSizeBytes: task.segmentSizeBytes, systemId: task.systemId, pgVersion: task.pgVersion });
  const segmentStart = segmentStartLsn(segmentNumber(task.lsn, task.segmentSizeBytes), task.segmentSizeBytes);
  const writer = new SegmentWriter(task.dir, task.segmentSizeBytes, task);
  try {
    // Only the bytes before `lsn` matter: the rest of the image is zeros, as is a fresh segment.
    const headBytes = segmentOffsetBytes(task.lsn, task.segmentSizeBytes);
    if (headBytes > 0) writer.writeWalAt(segmentStart, image.subarray(0, headBytes));
    writer.flush();
  } finally {
    writer.close();
  }
}

/**
 * Crash recovery: the end of the last verified record at or after `startLsn`, reading segment by segment.
 * Each segment is fdatasynced before it is read (as Neon syncfs-es the data directory before its scan): the
 * end found here becomes flush_lsn, shown in votes and able to raise commit_lsn, so it must not count bytes
 * that a killed writer left only in the page cache.
 */
function scan(task: ScanTask): ScanResult {
  // commit_lsn from a control file that was written elsewhere or edited: no decoder starts there, so the
  // timeline is broken (not the node, which a throw here would stop from starting).
  const startProblem = decoderStartProblem(task.startLsn, task.segmentSizeBytes);
  if (startProblem !== null) return { ok: false, code: 'SK_WAL_CORRUPTION', detail: `commit_lsn ${formatLsn(task.startLsn)} ${startProblem}: no record starts there` };
  const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: task.startLsn, segmentSizeBytes: task.segmentSizeBytes, pgVersion: task.pgVersion }));
  let lsn: Lsn = task.startLsn;
  let stop = 'end of segments';
  try {
    for (;;) {
      const segno = segmentNumber(lsn, task.segmentSizeBytes);
      if (lsn === task.startLsn || segmentOffsetBytes(lsn, task.segmentSizeBytes) === 0) syncSegmentIfExistsSync(task.dir, segno, task.segmentSizeBytes, task);
      const segmentEnd = segmentStartLsn(segno + 1n, task.segmentSizeBytes);
      const chunkBytes = Number(segmentEnd - lsn < SCAN_CHUNK_BYTES ? segmentEnd - lsn : SCAN_CHUNK_BYTES);
      const bytes = readWalSync(task.dir, lsn, chunkBytes, task.segmentSizeBytes);
      decoder.feed(bytes);
      lsn += BigInt(chunkBytes);
    }
  } catch (error) {
    if (error instanceof WalCorruptionError) stop = `${error.kind} at ${error.message}`;
    else if (error instanceof NotFoundError) stop = 'no further segment';
    else return { ok: false, ...toIoErrorData(error) };
  }
  return { ok: true, endLsn: decoder.lastRecordEndLsn, detail: stop };
}

/** Recovery reads a segment in pieces of this size, so a scan holds at most this much WAL in memory. */
const SCAN_CHUNK_BYTES = 1024 * 1024;
