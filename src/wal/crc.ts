/**
 * CRC-32C (Castagnoli), the checksum PostgreSQL puts in every WAL record (`xl_crc`) and that our control
 * file uses. PostgreSQL's INIT_CRC32C/FIN_CRC32C is the standard CRC-32C (reflected, init and final xor
 * 0xFFFFFFFF), so `crc32c(b, crc32c(a))` equals `crc32c(a ++ b)`, and a record's xl_crc is
 * `crc32c(header[0, 20), crc32c(record[24, tot_len)))`.
 *
 * Design: a native package does the work; both accept any Uint8Array view and honour its byteOffset, so
 * callers pass `subarray` views and nothing is copied. The writer calls it once per WAL record, so what
 * matters most is the fixed cost of a call, not the bulk rate:
 *   - `sse4_crc32` (optional dependency, a small N-API addon built at install, SSE 4.2 `crc32` instructions):
 *     ~100 ns for a 283-byte record body. Used when it built and the CPU has SSE 4.2.
 *   - `@node-rs/crc32` (prebuilt, SIMD): ~150–220 ns for the same body, most of it the call itself (an empty
 *     buffer costs ~93 ns). Used otherwise.
 * For tiny inputs (a 20-byte record header) the portable slicing-by-8 table code below is faster; the WAL
 * decoder picks per piece with CRC_NATIVE_BYTES_MIN. If no native package loads (an unsupported platform),
 * everything falls back to the portable code, which is correct but several times slower.
 * Pure functions; any thread. The tables are built once at module load (8 KiB).
 */
import { createRequire } from 'node:module';

/** Below this many bytes the portable code beats a native call (measured in bench; see wal_crc.test.ts). */
export const CRC_NATIVE_BYTES_MIN = 160; // measured: 128 B costs ~170 ns either way, 256 B is 1.4x faster natively

const POLYNOMIAL_REFLECTED = 0x82f63b78;
const TABLE_COUNT = 8;

/** Slicing-by-8 tables: TABLES[k * 256 + b] is the CRC of byte b followed by k zero bytes. */
const TABLES = buildTables();

function buildTables(): Uint32Array {
  const tables = new Uint32Array(TABLE_COUNT * 256);
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ POLYNOMIAL_REFLECTED : crc >>> 1;
    tables[byte] = crc >>> 0;
  }
  for (let byte = 0; byte < 256; byte++) {
    let crc = tables[byte] as number;
    for (let k = 1; k < TABLE_COUNT; k++) {
      crc = (tables[crc & 0xff] as number) ^ (crc >>> 8);
      tables[k * 256 + byte] = crc >>> 0;
    }
  }
  return tables;
}

/**
 * Portable CRC-32C over `data`, continuing from `previous` (the result of an earlier call; 0 starts fresh).
 * Returns an unsigned 32-bit number.
 */
export function crc32cPortable(data: Uint8Array, previous = 0): number {
  return crc32cPortableRange(data, 0, data.length, previous);
}

/** Portable CRC-32C over `data[start, end)` without creating a view (the decoder's per-record header path). */
export function crc32cPortableRange(data: Uint8Array, start: number, end: number, previous = 0): number {
  const t = TABLES;
  let crc = ~previous;
  let i = start;
  const end8 = end - ((end - start) % 8);
  // Indexing a typed array inside its length never yields undefined; the casts only satisfy the compiler.
  while (i < end8) {
    const low = crc ^ ((data[i] as number) | ((data[i + 1] as number) << 8) | ((data[i + 2] as number) << 16) | ((data[i + 3] as number) << 24));
    crc =
      (t[7 * 256 + (low & 0xff)] as number) ^
      (t[6 * 256 + ((low >>> 8) & 0xff)] as number) ^
      (t[5 * 256 + ((low >>> 16) & 0xff)] as number) ^
      (t[4 * 256 + (low >>> 24)] as number) ^
      (t[3 * 256 + (data[i + 4] as number)] as number) ^
      (t[2 * 256 + (data[i + 5] as number)] as number) ^
      (t[256 + (data[i + 6] as number)] as number) ^
      (t[data[i + 7] as number] as number);
    i += 8;
  }
  while (i < end) {
    crc = (t[(crc ^ (data[i] as number)) & 0xff] as number) ^ (crc >>> 8);
    i++;
  }
  return ~crc >>> 0;
}

type NativeCrc = (input: Uint8Array, initialState?: number | null) => number;

/** Standard CRC-32C check value: the CRC of the ASCII bytes "123456789". */
const CHECK_VALUE = 0xe3069283;

function loadNative(): { name: string; crc: NativeCrc } | null {
  const require = createRequire(import.meta.url);
  const candidates: [string, () => NativeCrc | null][] = [
    ['sse4_crc32', () => {
      const loaded = require('sse4_crc32') as { calculate?: unknown; hardware_support?: unknown };
      // Without SSE 4.2 its `calculate` is a C table loop: then @node-rs/crc32 (SIMD) is the better one.
      return loaded.hardware_support === true && typeof loaded.calculate === 'function' ? (loaded.calculate as NativeCrc) : null;
    }],
    ['@node-rs/crc32', () => {
      const loaded = require('@node-rs/crc32') as { crc32c?: unknown };
      return typeof loaded.crc32c === 'function' ? (loaded.crc32c as NativeCrc) : null;
    }],
  ];
  for (const [name, candidate] of candidates) {
    try {
      const crc = candidate();
      // Refuse a native build that disagrees with the standard check value rather than corrupt checksums.
      if (crc !== null && crc(new TextEncoder().encode('123456789'), 0) >>> 0 === CHECK_VALUE) return { name, crc };
    } catch {
      // Only a missing or unloadable binary lands here (the optional addon may not have built): try the next.
    }
  }
  return null;
}

const loaded = loadNative();
const native = loaded?.crc ?? null;

/** The native package in use ('sse4_crc32' or '@node-rs/crc32'), or null on the portable fallback. */
export const CRC_NATIVE_NAME = loaded?.name ?? null;

/** True when a native implementation loaded; benchmarks and tests report it. */
export const CRC_NATIVE_AVAILABLE = native !== null;

/** Native CRC-32C (falls back to the portable code when no native package loaded). `previous` is always passed:
 * sse4_crc32 refuses an undefined second argument. */
export const crc32cNative: (data: Uint8Array, previous?: number) => number =
  native === null ? crc32cPortable : (data, previous = 0) => native(data, previous) >>> 0;

/** CRC-32C over `data` continuing from `previous`; the fastest implementation for the input size. */
export function crc32c(data: Uint8Array, previous = 0): number {
  return data.length < CRC_NATIVE_BYTES_MIN ? crc32cPortable(data, previous) : crc32cNative(data, previous);
}

/** `crc32c(data.subarray(start, end), previous)`, with no view made for a piece the portable code takes. */
export function crc32cRange(data: Uint8Array, start: number, end: number, previous = 0): number {
  return end - start >= CRC_NATIVE_BYTES_MIN ? crc32cNative(data.subarray(start, end), previous) : crc32cPortableRange(data, start, end, previous);
}
