/**
 * Batch checks of whole WAL records: their checksums, and (natively) the header chain of a run of them.
 * A record is good when `crc32c(record[0, 20), crc32c(record[24, xl_tot_len)))` equals its xl_crc (the u32
 * at offset 20).
 *
 * Design: the WAL writer checks every record, and records are a few hundred bytes, so a CRC package called
 * once per record spends more on the call than on the CRC (~100 ns of call and a ~30 ns view per record,
 * against ~25 ns of SSE 4.2 work), and walking the headers in JS (length, xl_prev, padding, page bounds)
 * cost the writer more than the CRC itself. Two batch forms, used by the decoder (record_decoder.ts):
 *   - `walk` (native only): from a record start, walk the run of good records that lie whole inside a page,
 *     checking length, xl_prev chain, XLOG_SWITCH and CRC in C; one call per page. It stops before anything
 *     it does not accept, and the decoder's own code takes over there (and reports what is wrong).
 *   - `verify`: given the offsets of records the decoder has parsed, find the first with a wrong CRC.
 * Implementations:
 *   - `native/wal_crc.c` (built by `npm ci`/`npm install` through node-gyp, see native/build.mjs): SSE 4.2
 *     `crc32` in C. Used when it built, loads, the CPU has SSE 4.2, and it passes a self-check at load.
 *   - otherwise `PORTABLE_RECORD_CHECKS`: no walk, and `verifyRecordsPortable`, a CRC call per record
 *     (crc.ts picks the fastest).
 * Pure functions; any thread.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { assert } from '../sync/assert.js';
import { RECORD_CRC_OFFSET_BYTES, RECORD_HEADER_BYTES, RM_LOGICALMSG_ID, computeRecordCrc } from './page.js';

/**
 * Checks the records starting at `starts[0..count)` inside `data` (each must lie whole inside it). Returns the
 * index of the first record whose CRC differs, or -1 when all match.
 */
export type RecordCrcVerifier = (data: Uint8Array, starts: Int32Array, count: number) => number;

/**
 * Walks the run of good records in `data[io[WALK_FROM], io[WALK_TO])` that starts at `io[WALK_FROM]` and
 * returns how many it walked (the contract is in native/wal_crc.c). `io` is a Uint32Array of
 * WALK_IO_LENGTH: the range, the LSN of its first byte, the record before the first (when known); on a
 * return > 0 also where the last walked record starts and ends.
 */
export type RecordWalker = (data: Uint8Array, io: Uint32Array) => number;
export const WALK_FROM = 0;
export const WALK_TO = 1;
export const WALK_LSN_HI = 2;
export const WALK_LSN_LO = 3;
export const WALK_PREV_KNOWN = 4;
export const WALK_PREV_HI = 5;
export const WALK_PREV_LO = 6;
export const WALK_LAST_START = 7;
export const WALK_LAST_END = 8;
export const WALK_IO_LENGTH = 9;

/** What the decoder checks whole records with. */
export interface RecordChecks {
  readonly verify: RecordCrcVerifier;
  /** null: the decoder walks record headers itself and batches only the CRCs. */
  readonly walk: RecordWalker | null;
}

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

function loadNative(): RecordChecks | null {
  const require = createRequire(import.meta.url);
  for (const relative of ADDON_PATHS) {
    const path = fileURLToPath(new URL(relative, import.meta.url));
    if (!existsSync(path)) continue;
    try {
      const addon = require(path) as { hardware?: unknown; verifyRecords?: unknown; walkRecords?: unknown };
      if (addon.hardware !== true || typeof addon.verifyRecords !== 'function' || typeof addon.walkRecords !== 'function') return null;
      const checks: RecordChecks = { verify: addon.verifyRecords as RecordCrcVerifier, walk: addon.walkRecords as RecordWalker };
      return selfCheck(checks) ? checks : null;
    } catch {
      return null; // built for another Node ABI, or not loadable here: the portable path works everywhere
    }
  }
  return null;
}

/**
 * The addon must accept good records and catch a flipped bit in a body and in a header, as the portable code
 * does; the walk must also stop at a broken xl_prev chain and report where the last good record lies.
 */
function selfCheck(checks: RecordChecks): boolean {
  // Four records back to back (8-aligned), each one's xl_prev the LSN of the one before.
  const totals = [RECORD_HEADER_BYTES, 201, 202, 203];
  const starts = new Int32Array(totals.length);
  for (let index = 1; index < totals.length; index++) starts[index] = ((starts[index - 1] as number) + (totals[index - 1] as number) + 7) & ~7;
  const lastEnd = (starts[3] as number) + (totals[3] as number);
  const bytes = new Uint8Array(lastEnd + 8);
  const view = new DataView(bytes.buffer);
  const lsnBase = 0x1000_0000; // the LSN of bytes[0], in the first 4 GiB
  totals.forEach((total, index) => {
    const start = starts[index] as number;
    for (let at = start + 4; at < start + total; at++) bytes[at] = (at * 31 + index) & 0xff;
    view.setUint32(start, total, true);
    bytes[start + 17] = RM_LOGICALMSG_ID; // not an XLOG record, so never a switch
    view.setUint32(start + 8, index === 0 ? 0 : lsnBase + (starts[index - 1] as number), true); // xl_prev
    view.setUint32(start + 12, 0, true);
    view.setUint32(start + RECORD_CRC_OFFSET_BYTES, computeRecordCrc(bytes, start, start + total), true);
  });
  const walk = checks.walk;
  if (walk === null) return false;
  const io = new Uint32Array(WALK_IO_LENGTH);
  const walked = (to: number): number => {
    io.set([0, to, 0, lsnBase, 0, 0, 0, 0, 0]);
    return walk(bytes, io);
  };
  if (checks.verify(bytes, starts, starts.length) !== -1 || verifyRecordsPortable(bytes, starts, starts.length) !== -1) return false;
  if (walked(bytes.length) !== 4 || io[WALK_LAST_START] !== starts[3] || io[WALK_LAST_END] !== lastEnd) return false;
  if (walked(lastEnd - 1) !== 3 || io[WALK_LAST_START] !== starts[2]) return false; // the last record is cut
  const flip = (at: number, bit: number): void => void (bytes[at] = (bytes[at] as number) ^ bit);
  flip((starts[2] as number) + 100, 0x10); // body of record 2
  const body = checks.verify(bytes, starts, starts.length);
  const bodyWalk = walked(bytes.length);
  flip((starts[2] as number) + 100, 0x10);
  flip((starts[3] as number) + 9, 0x01); // xl_prev of record 3: its CRC and the chain are both broken
  const header = checks.verify(bytes, starts, starts.length);
  const headerWalk = walked(bytes.length);
  flip((starts[3] as number) + 9, 0x01);
  return body === 2 && bodyWalk === 2 && header === 3 && headerWalk === 3;
}

const native = loadNative();

/** Whether the native batch checks are in use (the startup log and the benchmarks report it). */
export const RECORD_CRC_NATIVE = native !== null;

/** The portable checks: CRCs batched per record in JS, headers walked by the decoder. */
export const PORTABLE_RECORD_CHECKS: RecordChecks = { verify: verifyRecordsPortable, walk: null };

/** What the WAL decoder uses by default: native when available, else portable. */
export const recordChecks: RecordChecks = native ?? PORTABLE_RECORD_CHECKS;
