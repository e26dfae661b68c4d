/**
 * The WAL the ingest benchmark streams: valid PostgreSQL 15 WAL (page headers, CRC-32C on every record),
 * built once with WalBuilder as non-transactional logical messages of 100..399 payload bytes (records of
 * ~150..450 bytes, ~310 on average, the size range of ordinary OLTP records). Every timeline of a run starts
 * at the same `startLsn` and gets the same bytes, so one buffer serves them all; the benchmark slices it
 * into appends of any size, and records span appends freely.
 *
 * `recordEndOffsets` lists where records end (MAXALIGNed, the positions a safekeeper may acknowledge as
 * flush_lsn), so a run can stop on a record end and wait until flush_lsn covers everything it sent.
 * LSNs here are plain numbers: the benchmark stays far below 2^53.
 */
import { assert } from '../src/sync/assert.js';
import { RM_LOGICALMSG_ID, XLOG_LOGICAL_MESSAGE } from '../src/wal/page.js';
import { WalBuilder } from '../src/wal/wal_builder.js';

export const BENCH_SEGMENT_BYTES = 16 * 1024 * 1024;
export const BENCH_PG_VERSION = 150008;
export const BENCH_SYSTEM_ID = 7_400_000_000_000_000_001n;
/** Payload sizes cycle through this many variants. */
const PAYLOAD_VARIANTS = 64;
const PAYLOAD_BYTES_MIN = 100;
const PAYLOAD_BYTES_SPREAD = 300;
/** offsetof(xl_logical_message, message): u32 dbId, bool transactional, 3 pad, u64 prefix_size, u64 message_size. */
const LOGICAL_MESSAGE_HEADER_BYTES = 24;
const XLR_BLOCK_ID_DATA_LONG = 254;
const XLR_BLOCK_ID_DATA_SHORT = 255;
const PREFIX = Buffer.from('sk\0');
/** WalBuilder output is taken in pieces of about this size, so its internal buffer stays small. */
const TAKE_BYTES = 8 * 1024 * 1024;

export interface BenchWal {
  /** WAL bytes; bytes[0] is at startLsn. */
  readonly bytes: Buffer;
  readonly startLsn: number;
  /** Record ends as offsets from startLsn, ascending. */
  readonly recordEndOffsets: Uint32Array;
  readonly records: number;
  /** The segment size the WAL was built for (BENCH_SEGMENT_BYTES unless given to buildBenchWal). */
  readonly segmentSizeBytes?: number;
}

/** The record body of pg_logical_emit_message(false, 'sk', payload), exactly as WalBuilder lays it out. */
function logicalMessageBody(payloadBytes: number, fill: number): Uint8Array {
  const mainBytes = LOGICAL_MESSAGE_HEADER_BYTES + PREFIX.length + payloadBytes;
  const lengthBytes = mainBytes <= 255 ? 2 : 5;
  const data = Buffer.alloc(lengthBytes + mainBytes);
  if (lengthBytes === 2) {
    data[0] = XLR_BLOCK_ID_DATA_SHORT;
    data[1] = mainBytes;
  } else {
    data[0] = XLR_BLOCK_ID_DATA_LONG;
    data.writeUInt32LE(mainBytes, 1);
  }
  data.writeBigUInt64LE(BigInt(PREFIX.length), lengthBytes + 8);
  data.writeBigUInt64LE(BigInt(payloadBytes), lengthBytes + 16);
  PREFIX.copy(data, lengthBytes + LOGICAL_MESSAGE_HEADER_BYTES);
  data.fill(fill, lengthBytes + LOGICAL_MESSAGE_HEADER_BYTES + PREFIX.length);
  return data;
}

/** Builds at least `totalBytes` of WAL from `startLsn` (8-byte aligned, not inside a page header). */
export function buildBenchWal(startLsn: number, totalBytes: number, segmentSizeBytes: number = BENCH_SEGMENT_BYTES): BenchWal {
  assert(Number.isSafeInteger(startLsn + totalBytes * 2), 'benchmark LSNs stay exact as numbers');
  const builder = new WalBuilder({ startLsn: BigInt(startLsn), segmentSizeBytes, pgVersion: BENCH_PG_VERSION, systemId: BENCH_SYSTEM_ID });
  const bodies: Uint8Array[] = [];
  for (let variant = 0; variant < PAYLOAD_VARIANTS; variant += 1) {
    bodies.push(logicalMessageBody(PAYLOAD_BYTES_MIN + ((variant * 37) % PAYLOAD_BYTES_SPREAD), variant));
  }
  const bytes = Buffer.allocUnsafe(totalBytes + TAKE_BYTES * 2);
  let ends = new Uint32Array(Math.ceil(totalBytes / 128));
  let records = 0;
  let taken = 0;
  const takeInto = (): void => {
    const piece = builder.take();
    assert(taken + piece.length <= bytes.length, 'WAL buffer large enough');
    bytes.set(piece, taken);
    taken += piece.length;
  };
  const start = BigInt(startLsn);
  while (taken + builder.pendingBytes < totalBytes) {
    const record = builder.appendRecord({ rmid: RM_LOGICALMSG_ID, info: XLOG_LOGICAL_MESSAGE, data: bodies[records % PAYLOAD_VARIANTS]! });
    if (records === ends.length) {
      const grown = new Uint32Array(ends.length * 2);
      grown.set(ends);
      ends = grown;
    }
    ends[records] = Number(record.endLsn - start);
    records += 1;
    if (builder.pendingBytes >= TAKE_BYTES) takeInto();
  }
  takeInto();
  assert(taken === ends[records - 1], 'the WAL ends at the last record end');
  return { bytes: bytes.subarray(0, taken), startLsn, recordEndOffsets: ends.subarray(0, records), records, segmentSizeBytes };
}

/** The first record end at or after `offset` (the end of the WAL if none). */
export function recordEndAtOrAfter(wal: BenchWal, offset: number): number {
  const ends = wal.recordEndOffsets;
  let low = 0;
  let high = ends.length - 1;
  if (offset > ends[high]!) return ends[high]!;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (ends[middle]! < offset) low = middle + 1;
    else high = middle;
  }
  return ends[low]!;
}

/** The last record end at or before `offset` (0 if none). */
export function recordEndAtOrBefore(wal: BenchWal, offset: number): number {
  const after = recordEndAtOrAfter(wal, offset);
  if (after <= offset) return after;
  const ends = wal.recordEndOffsets;
  let low = 0;
  let high = ends.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >>> 1;
    if (ends[middle]! <= offset) low = middle;
    else high = middle - 1;
  }
  return ends[low]! <= offset ? ends[low]! : 0;
}
