/**
 * The disk ceiling: a sequential pwrite + fdatasync loop with a given batch size, into a zero-filled
 * (preallocated) file like the segments the writer uses. Benchmarks print their numbers next to this one,
 * measured in the same run, so a ratio says how close the product gets to what the disk can do.
 */
import { closeSync, fdatasyncSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pwriteAll, writeZeros } from '../src/storage/segment_io.js';

export interface DiskCeiling {
  batchBytes: number;
  mibPerSecond: number;
  batchesPerSecond: number;
  fdatasyncLatencyMsP50: number;
  fdatasyncLatencyMsP99: number;
}

const FILE_BYTES = 16 * 1024 * 1024;

export function measureDiskCeiling(dir: string, batchBytes: number, durationMs = 1500): DiskCeiling {
  const path = join(dir, `ceiling-${batchBytes}.tmp`);
  const fd = openSync(path, 'w+');
  try {
    writeZeros(fd, path, 0, FILE_BYTES);
    fdatasyncSync(fd);
    const batch = Buffer.alloc(batchBytes, 0x5a);
    const latenciesMs: number[] = [];
    let offset = 0;
    let bytes = 0;
    const startMs = performance.now();
    while (performance.now() - startMs < durationMs) {
      const beforeMs = performance.now();
      if (offset + batchBytes > FILE_BYTES) offset = 0;
      pwriteAll(fd, path, batch, 0, batchBytes, offset);
      fdatasyncSync(fd);
      latenciesMs.push(performance.now() - beforeMs);
      offset += batchBytes;
      bytes += batchBytes;
    }
    const seconds = (performance.now() - startMs) / 1000;
    latenciesMs.sort((a, b) => a - b);
    const at = (q: number): number => latenciesMs[Math.min(latenciesMs.length - 1, Math.floor(q * latenciesMs.length))] ?? 0;
    return {
      batchBytes,
      mibPerSecond: bytes / seconds / (1 << 20),
      batchesPerSecond: latenciesMs.length / seconds,
      fdatasyncLatencyMsP50: at(0.5),
      fdatasyncLatencyMsP99: at(0.99),
    };
  } finally {
    closeSync(fd);
    rmSync(path, { force: true });
  }
}
