/**
 * The disk ceiling: a sequential pwrite + fdatasync loop with a given batch size, into a zero-filled
 * (preallocated) file like the segments the writer uses. Benchmarks print their numbers next to this one,
 * measured in the same run, so a ratio says how close the product gets to what the disk can do.
 *
 * A second loop, `measureZeroFilledCeiling`, writes the same way into a new 16 MiB segment file every 16 MiB,
 * each zero-filled ahead by another thread with the node's own `prepareSegment` and completed (renamed) when
 * full. That is the contract PostgreSQL-compatible segments impose on any safekeeper (Neon's too): every WAL
 * byte also costs a zero byte written and synced before it, so the device writes twice the WAL. It tells what
 * the disk leaves for WAL once that is paid, with no protocol, verification or backup. With `recycle`, each
 * completed segment but the last goes through the node's own WAL removal, which keeps it as `recycled-<name>`,
 * so every segment after the first few is zeroed over an old one's blocks: the node's steady state once
 * removal runs.
 */
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { segmentPath } from '../src/storage/layout.js';
import { completeSegmentSync } from '../src/storage/segment_file.js';
import { pwriteAll, writeZeros } from '../src/storage/segment_io.js';
import { Failpoints } from '../src/sync/failpoints.js';
import { removeSegmentsUpTo } from '../src/timeline/wal_removal.js';

export interface DiskCeiling {
  batchBytes: number;
  mibPerSecond: number;
  batchesPerSecond: number;
  fdatasyncLatencyMsP50: number;
  fdatasyncLatencyMsP99: number;
}

/** The plain ceiling's file and the zero-filled ceiling's segments: the node's default segment size. */
const SEGMENT_BYTES = 16 * 1024 * 1024;

function summary(batchBytes: number, bytes: number, seconds: number, latenciesMs: number[]): DiskCeiling {
  latenciesMs.sort((a, b) => a - b);
  const at = (q: number): number => latenciesMs[Math.min(latenciesMs.length - 1, Math.floor(q * latenciesMs.length))] ?? 0;
  return {
    batchBytes,
    mibPerSecond: bytes / seconds / (1 << 20),
    batchesPerSecond: latenciesMs.length / seconds,
    fdatasyncLatencyMsP50: at(0.5),
    fdatasyncLatencyMsP99: at(0.99),
  };
}

export function measureDiskCeiling(dir: string, batchBytes: number, durationMs = 1500): DiskCeiling {
  const path = join(dir, `ceiling-${batchBytes}.tmp`);
  const fd = openSync(path, 'w+');
  try {
    writeZeros(fd, path, 0, SEGMENT_BYTES);
    fdatasyncSync(fd);
    const batch = Buffer.alloc(batchBytes, 0x5a);
    const latenciesMs: number[] = [];
    let offset = 0;
    let bytes = 0;
    const startMs = performance.now();
    while (performance.now() - startMs < durationMs) {
      const beforeMs = performance.now();
      if (offset + batchBytes > SEGMENT_BYTES) offset = 0;
      pwriteAll(fd, path, batch, 0, batchBytes, offset);
      fdatasyncSync(fd);
      latenciesMs.push(performance.now() - beforeMs);
      offset += batchBytes;
      bytes += batchBytes;
    }
    return summary(batchBytes, bytes, (performance.now() - startMs) / 1000, latenciesMs);
  } finally {
    closeSync(fd);
    rmSync(path, { force: true });
  }
}

/** Shared counters between `measureZeroFilledCeiling` and bench/zero_fill_preparer.ts (Int32Array indexes). */
export const PREPARER_REQUESTED = 0;
export const PREPARER_PREPARED = 1;
export const PREPARER_STOP = -1;
export interface PreparerData {
  control: SharedArrayBuffer;
  dir: string;
  segmentBytes: number;
}

const PREPARE_WAIT_MS_MAX = 30_000;
const RECYCLING_REMOVAL = { noSync: false, recycleMax: 2, failpoints: new Failpoints(false), signal: new AbortController().signal };

/** The preparer thread: the compiled `.js` next to a build, else the `.ts` source through the tsx bootstrap the node's own workers use. */
function startPreparer(data: PreparerData): Worker {
  const here = fileURLToPath(import.meta.url);
  if (!here.endsWith('.ts')) return new Worker(new URL('./zero_fill_preparer.js', import.meta.url), { workerData: data });
  const bootstrap = fileURLToPath(new URL('../workers/ts_bootstrap.cjs', import.meta.url));
  return new Worker(bootstrap, { workerData: { ...data, entry: fileURLToPath(new URL('./zero_fill_preparer.ts', import.meta.url)) } });
}

/**
 * See the header: the ceiling loop into zero-filled 16 MiB segments prepared one ahead on another thread, new
 * files unless `recycle`.
 */
export async function measureZeroFilledCeiling(parentDir: string, batchBytes: number, durationMs = 1500, recycle = false): Promise<DiskCeiling> {
  const dir = mkdtempSync(join(parentDir, 'ceiling-segments-'));
  const control = new SharedArrayBuffer(8);
  const state = new Int32Array(control);
  const worker = startPreparer({ control, dir, segmentBytes: SEGMENT_BYTES });
  const request = (segno: number): void => {
    Atomics.store(state, PREPARER_REQUESTED, segno);
    Atomics.notify(state, PREPARER_REQUESTED);
  };
  const awaitPrepared = (segno: number): void => {
    const deadlineMs = performance.now() + PREPARE_WAIT_MS_MAX;
    for (let prepared = Atomics.load(state, PREPARER_PREPARED); prepared < segno; prepared = Atomics.load(state, PREPARER_PREPARED)) {
      // Bounded: a preparer that died (its error event cannot fire while this thread waits) must not hang the bench.
      if (performance.now() > deadlineMs) throw new Error(`the zero-fill preparer did not prepare segment ${segno} within ${PREPARE_WAIT_MS_MAX} ms`);
      Atomics.wait(state, PREPARER_PREPARED, prepared, 100);
    }
  };
  try {
    await once(worker, 'online');
    request(1); // the writer starts in a prepared segment, as a warmed timeline does
    awaitPrepared(1);
    const batch = Buffer.alloc(batchBytes, 0x5a);
    const latenciesMs: number[] = [];
    let segno = 1;
    let path = segmentPath(dir, 1n, SEGMENT_BYTES, true);
    let fd = openSync(path, 'r+');
    request(2);
    let offset = 0;
    let bytes = 0;
    const startMs = performance.now();
    while (performance.now() - startMs < durationMs) {
      const beforeMs = performance.now();
      const length = Math.min(batchBytes, SEGMENT_BYTES - offset);
      pwriteAll(fd, path, batch, 0, length, offset);
      fdatasyncSync(fd);
      latenciesMs.push(performance.now() - beforeMs);
      offset += length;
      bytes += length;
      if (offset === SEGMENT_BYTES) {
        closeSync(fd);
        completeSegmentSync(dir, BigInt(segno), SEGMENT_BYTES, { noSync: false });
        // The node's own WAL removal: it keeps the segment it removes for reuse (at most two are kept).
        if (recycle && segno > 1) await removeSegmentsUpTo(dir, SEGMENT_BYTES, BigInt(segno - 1), RECYCLING_REMOVAL);
        segno += 1;
        awaitPrepared(segno);
        path = segmentPath(dir, BigInt(segno), SEGMENT_BYTES, true);
        fd = openSync(path, 'r+');
        request(segno + 1);
        offset = 0;
      }
    }
    const seconds = (performance.now() - startMs) / 1000;
    closeSync(fd);
    return summary(batchBytes, bytes, seconds, latenciesMs);
  } finally {
    request(PREPARER_STOP);
    await worker.terminate();
    rmSync(dir, { recursive: true, force: true });
  }
}
