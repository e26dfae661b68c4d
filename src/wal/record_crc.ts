/**
 * Batch verification of WAL record checksums: given a buffer and the offsets of complete records inside it,
 * find the first record whose xl_crc is wrong. A record is good when
 * `crc32c(record[0, 20), crc32c(record[24, xl_tot_len)))` equals its xl_crc (the u32 at offset 20).
 *
 * Design: the WAL writer checks every record, and records are a few hundred bytes, so a CRC package called
 * once per record spends more on the call than on the CRC (~100 ns of call and a ~30 ns view per record,
 * against ~25 ns of SSE 4.2 work), plus ~35 ns for the 20 header bytes in JS. The decoder therefore collects
 * the offsets of the records that lie whole inside the piece it is fed and checks them in one call:
 *   - `native/wal_crc.c` (built by `npm ci`/`npm install` through node-gyp, see native/build.mjs): SSE 4.2
 *     `crc32` over every record in C, ~22 ns per record of the bench WAL. Used when it built, loads, the CPU
 *     has SSE 4.2, and it passes a self-check at load.
 *   - otherwise `verifyRecordsPortable`: the same contract, a CRC call per record (crc.ts picks the fastest).
 * Pure functions; any thread.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { assert } from '../sync/assert.js';
import { RECORD_CRC_OFFSET_BYTES, RECORD_HEADER_BYTES, computeRecordCrc } from './page.js';

/**
 * Checks the records starting at `starts[0..count)` inside `data` (each must lie whole inside it). Returns the
 * index of the first record whose CRC differs, or -1 when all match.
 */
export type RecordCrcVerifier = (data: Uint8Array, starts: Int32Array, count: number) => number;

export function verifyRecordsPortable(data: Uint8Array, starts: Int32Array, count: number): number {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  for (let index = 0; index < count; index++) {
    const start = starts[index] as number;
    assert(start >= 0 && start + RECORD_HEADER_BYTES <= data.length, 'record header inside the buffer');
    const crc = computeRecordCrc(data, start, start + view.getUint32(start, true));
    if (crc !== view.getUint32(start + RECORD_CRC_OFFSET_BYTES, true)) return index;
  }
  return -1;
}

/** Where native/build.mjs puts the addon, seen from src/wal/ (under tsx) and from dist/src/wal/ (built). */
const ADDON_PATHS = ['../../native/build/Release/wal_crc.node', '../../../native/build/Release/wal_crc.node'];

function loadNative(): RecordCrcVerifier | null {
  const require = createRequire(import.meta.url);
  for (const relative of ADDON_PATHS) {
    const path = fileURLToPath(new URL(relative, import.meta.url));
    if (!existsSync(path)) continue;
    try {
      const addon = require(path) as { hardware?: unknown; verifyRecords?: unknown };
      if (addon.hardware !== true || typeof addon.verifyRecords !== 'function') return null;
      const verify = addon.verifyRecords as RecordCrcVerifier;
      return selfCheck(verify) ? verify : null;
    } catch {
      return null; // built for another Node ABI, or not loadable here: the portable path works everywhere
    }
  }
  return null;
}

/** The addon must accept a good record and catch a flipped bit in the body and in the header, as the portable code does. */
function selfCheck(verify: RecordCrcVerifier): boolean {
  const bytes = new Uint8Array(64 + 3 * 256);
  const view = new DataView(bytes.buffer);
  const starts = new Int32Array([0, 64, 64 + 256, 64 + 512]);
  for (let index = 0; index < starts.length; index++) {
    const start = starts[index] as number;
    const total = index === 0 ? RECORD_HEADER_BYTES : 200 + index;
    for (let at = start + 4; at < start + total; at++) bytes[at] = (at * 31 + index) & 0xff;
    view.setUint32(start, total, true);
    view.setUint32(start + RECORD_CRC_OFFSET_BYTES, computeRecordCrc(bytes, start, start + total), true);
  }
  if (verify(bytes, starts, starts.length) !== -1 || verifyRecordsPortable(bytes, starts, starts.length) !== -1) return false;
  const flip = (at: number, bit: number): void => void (bytes[at] = (bytes[at] as number) ^ bit);
  flip(64 + 256 + 100, 0x10); // body of record 2
  const body = verify(bytes, starts, starts.length);
  flip(64 + 256 + 100, 0x10);
  flip(64 + 512 + 9, 0x01); // xl_prev of record 3
  const header = verify(bytes, starts, starts.length);
  return body === 2 && header === 3;
}

const native = loadNative();

/** Whether the native batch verifier is in use (the startup log and the benchmarks report it). */
export const RECORD_CRC_NATIVE = native !== null;

/** The verifier the WAL decoder uses by default: native when available, else portable. */
export const verifyRecords: RecordCrcVerifier = native ?? verifyRecordsPortable;
