/**
 * Piscina task entry point of the WAL writer pool: decode + CRC-verify, pwrite, fdatasync, and the other
 * segment-file operations of `ingest/writer_protocol.ts`. Runs in a worker thread, where blocking sync fs
 * calls are the job (async fs would queue on libuv's process-wide pool). A task finishes all its I/O
 * before it returns and keeps no file open across tasks: another worker may take the timeline's next
 * task, and a truncation may delete files meanwhile. Operating errors are returned as data; a throw here
 * is a bug and stops the node.
 */
import { WalCorruptionError } from '../src/errors.js';
import { RingView } from '../src/ingest/ring.js';
import type {
  InitSegmentTask,
  ScanResult,
  ScanTask,
  SimpleResult,
  WriteResult,
  WriteTask,
  WriterTask,
} from '../src/ingest/writer_protocol.js';
import { toIoErrorData } from '../src/storage/layout.js';
import { prepareSegment, truncateWalSync } from '../src/storage/segment_file.js';
import { readWalSync } from '../src/storage/segment_read.js';
import { SegmentWriter } from '../src/storage/segment_writer.js';
import { unreachable } from '../src/sync/assert.js';
import { segmentNumber, segmentOffsetBytes, segmentStartLsn, type Lsn } from '../src/wal/lsn.js';
import { initialDecoderState, WalRecordDecoder } from '../src/wal/record_decoder.js';
import { initialSegmentImage } from '../src/wal/segment_image.js';
import { NotFoundError } from '../src/errors.js';

export default function runTask(task: WriterTask): WriteResult | SimpleResult | ScanResult {
  switch (task.kind) {
    case 'write':
      return write(task);
    case 'prepare':
      return simple(() => prepareSegment(task.dir, task.segno, task.segmentSizeBytes, task));
    case 'truncate':
      return simple(() => truncateWalSync(task.dir, task.lsn, task.segmentSizeBytes, task));
    case 'init_segment':
      return simple(() => initSegment(task));
    case 'scan':
      return scan(task);
    default:
      return unreachable(task, 'unknown writer task');
  }
}

function simple(work: () => unknown): SimpleResult {
  try {
    work();
    return { ok: true };
  } catch (error) {
    return { ok: false, ...toIoErrorData(error) };
  }
}

function write(task: WriteTask): WriteResult {
  const lengthBytes = Number(task.endLsn - task.beginLsn);
  const pieces = new RingView(task.ring).pieces(task.beginLsn, lengthBytes);
  const startMs = performance.now();
  const decoder = new WalRecordDecoder(task.decoder);
  let corruption: WalCorruptionError | null = null;
  try {
    for (const piece of pieces) decoder.feed(piece);
  } catch (error) {
    if (!(error instanceof WalCorruptionError)) throw error;
    corruption = error;
  }
  const decodedMs = performance.now();
  // On corruption only the verified prefix is written; the caller then cuts the file at the last good
  // record end, which also removes any bytes of the bad record written by earlier batches.
  const goodEndLsn = corruption === null ? task.endLsn : decoder.lastRecordEndLsn;
  const writer = new SegmentWriter(task.dir, task.segmentSizeBytes, task);
  let writtenMs = decodedMs;
  let completedSegments = 0;
  try {
    if (goodEndLsn > task.beginLsn) {
      const goodBytes = Number(goodEndLsn - task.beginLsn);
      const first = pieces[0].subarray(0, Math.min(goodBytes, pieces[0].length));
      const second = pieces[1]?.subarray(0, goodBytes - first.length);
      const completed = second === undefined || second.length === 0 ? writer.writeWalAt(task.beginLsn, first) : writer.writeWalAt(task.beginLsn, first, second);
      writtenMs = performance.now();
      for (const segno of completed) writer.completeSegment(segno);
      completedSegments = completed.length;
      writer.flush();
    }
  } catch (error) {
    const data = toIoErrorData(error);
    return { ok: false, ...data, errorLsn: null, corruption: null, recordEndLsn: task.decoder.lastRecordEndLsn };
  } finally {
    writer.close();
  }
  const syncedMs = performance.now();
  if (corruption !== null) {
    return {
      ok: false,
      code: corruption.code,
      detail: corruption.message,
      errorLsn: corruption.lsn,
      corruption: corruption.kind,
      recordEndLsn: goodEndLsn,
    };
  }
  return {
    ok: true,
    decoder: decoder.snapshot(),
    recordEndLsn: decoder.lastRecordEndLsn,
    completedSegments,
    timings: { decodeMs: decodedMs - startMs, writeMs: writtenMs - decodedMs, fsyncMs: syncedMs - writtenMs },
  };
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

/** Crash recovery: the end of the last verified record at or after `startLsn`, reading segment by segment. */
function scan(task: ScanTask): ScanResult {
  const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: task.startLsn, segmentSizeBytes: task.segmentSizeBytes, pgVersion: task.pgVersion }));
  let lsn: Lsn = task.startLsn;
  let stop = 'end of segments';
  try {
    for (;;) {
      const segmentEnd = segmentStartLsn(segmentNumber(lsn, task.segmentSizeBytes) + 1n, task.segmentSizeBytes);
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
