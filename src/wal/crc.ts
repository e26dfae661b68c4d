/**
 * CRC-32C (Castagnoli), the checksum PostgreSQL puts in every WAL record (`xl_crc`) and that our control
 * file uses. PostgreSQL's INIT_CRC32C/FIN_CRC32C is the standard CRC-32C (reflected, init and final xor
 * 0xFFFFFFFF), so `crc32c(b, crc32c(a))` equals `crc32c(a ++ b)`, and a record's xl_crc is
 * `crc32c(header[0, 20), crc32c(record[24, tot_len)))`.
 *
 * Design: the native `@node-rs/crc32` (SIMD, ~GB/s) does the work; it accepts any Uint8Array view and honours
 * its byteOffset, so callers pass `subarray` views and nothing is copied. A call costs a fixed ~100 ns, so for
 * tiny inputs (a 20-byte record header) the portable slicing-by-8 table code below is faster; the WAL decoder
 * picks per piece with CRC_NATIVE_BYTES_MIN. If the native package fails to load (an unsupported platform),
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

function loadNative(): NativeCrc | null {
  try {
    const require = createRequire(import.meta.url);
    const loaded = require('@node-rs/crc32') as { crc32c?: unknown };
    if (typeof loaded.crc32c !== 'function') return null;
    const native = loaded.crc32c as NativeCrc;
    // Refuse a native build that disagrees with the standard check value rather than corrupt checksums.
    if (native(new TextEncoder().encode('123456789'), 0) !== 0xe3069283) return null;
    return native;
  } catch {
    // Only a missing or unloadable binary lands here; the portable code is the documented fallback.
    return null;
  }
}

const native = loadNative();

/** True when the native implementation loaded; benchmarks and logs report it. */
export const CRC_NATIVE_AVAILABLE = native !== null;

/** Native CRC-32C (falls back to the portable code when the native package did not load). */
export const crc32cNative: (data: Uint8Array, previous?: number) => number =
  native === null ? crc32cPortable : (data, previous = 0) => native(data, previous) >>> 0;

/** CRC-32C over `data` continuing from `previous`; the fastest implementation for the input size. */
export function crc32c(data: Uint8Array, previous = 0): number {
  return data.length < CRC_NATIVE_BYTES_MIN ? crc32cPortable(data, previous) : crc32cNative(data, previous);
}
