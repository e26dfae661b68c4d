/**
 * WAL positions. An LSN is always a bigint (LSNs exceed 2^53) and prints as X/Y (upper-case hex, no
 * padding), exactly like PostgreSQL. Segment math works for any power-of-two segment size from 1 MiB to
 * 1 GiB; offsets inside a segment or page are plain numbers (a segment is at most 1 GiB, so they are exact).
 * Pure functions; any thread.
 */
import { InvalidArgumentError } from '../errors.js';
import { assert } from '../sync/assert.js';

export type Lsn = bigint;

export const INVALID_LSN: Lsn = 0n;
export const LSN_MAX: Lsn = 0xffff_ffff_ffff_ffffn;
/** PostgreSQL's XLOG_BLCKSZ: WAL page size. */
export const WAL_PAGE_SIZE_BYTES = 8192;
export const SEGMENT_SIZE_BYTES_DEFAULT = 16 * 1024 * 1024;
export const SEGMENT_SIZE_BYTES_MIN = 1024 * 1024;
export const SEGMENT_SIZE_BYTES_MAX = 1024 * 1024 * 1024;
/** Segment files carry PostgreSQL timeline 1 in their names, as Neon does. */
export const PG_TIMELINE_ID = 1;

export function formatLsn(lsn: Lsn): string {
  return `${(lsn >> 32n).toString(16)}/${(lsn & 0xffff_ffffn).toString(16)}`.toUpperCase();
}

export function parseLsn(text: string): Lsn {
  const match = /^([0-9a-f]{1,8})\/([0-9a-f]{1,8})$/i.exec(text);
  if (match === null) throw new InvalidArgumentError(`not an LSN: ${JSON.stringify(text)}`);
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

/**
 * The end of the WAL a timeline may hold: the start of the last segment of the LSN space. A record ending in
 * that segment can report its end (or, after an XLOG_SWITCH, the next segment start) as 2^64, which no u64
 * field carries; PostgreSQL would need 16 EiB of WAL to get there, so refusing it costs nothing.
 */
export const walEndLsnMax = (segmentSizeBytes: number): Lsn => LSN_MAX + 1n - BigInt(segmentSizeBytes);

export const lsnMax = (a: Lsn, b: Lsn): Lsn => (a > b ? a : b);
export const lsnMin = (a: Lsn, b: Lsn): Lsn => (a < b ? a : b);

export function isValidSegmentSize(segmentSizeBytes: number): boolean {
  return (
    Number.isInteger(segmentSizeBytes) &&
    segmentSizeBytes >= SEGMENT_SIZE_BYTES_MIN &&
    segmentSizeBytes <= SEGMENT_SIZE_BYTES_MAX &&
    (segmentSizeBytes & (segmentSizeBytes - 1)) === 0
  );
}

function checkSegmentSize(segmentSizeBytes: number): void {
  assert(isValidSegmentSize(segmentSizeBytes), 'segment size must be a power of two in [1 MiB, 1 GiB]');
}

/** The segment number holding `lsn`. */
export function segmentNumber(lsn: Lsn, segmentSizeBytes: number): bigint {
  checkSegmentSize(segmentSizeBytes);
  return lsn / BigInt(segmentSizeBytes);
}

/** The offset of `lsn` inside its segment, in bytes. */
export function segmentOffsetBytes(lsn: Lsn, segmentSizeBytes: number): number {
  checkSegmentSize(segmentSizeBytes);
  return Number(lsn % BigInt(segmentSizeBytes));
}

/** The LSN at which segment `segno` starts. */
export function segmentStartLsn(segno: bigint, segmentSizeBytes: number): Lsn {
  checkSegmentSize(segmentSizeBytes);
  return segno * BigInt(segmentSizeBytes);
}

/** PostgreSQL's XLogFileName: `%08X%08X%08X` of (timeline, segno / segments-per-xlogid, segno % segments-per-xlogid). */
export function segmentFileName(segno: bigint, segmentSizeBytes: number, pgTimelineId = PG_TIMELINE_ID): string {
  checkSegmentSize(segmentSizeBytes);
  const segmentsPerXlogId = 0x1_0000_0000n / BigInt(segmentSizeBytes);
  const hex8 = (value: bigint | number): string => value.toString(16).toUpperCase().padStart(8, '0');
  return hex8(pgTimelineId) + hex8(segno / segmentsPerXlogId) + hex8(segno % segmentsPerXlogId);
}

/** Parses a 24-hex segment file name (optionally with `.partial`) into its segment number. Null if not one. */
export function parseSegmentFileName(name: string, segmentSizeBytes: number): { segno: bigint; partial: boolean } | null {
  const match = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$/.exec(name);
  if (match === null) return null;
  const segmentsPerXlogId = 0x1_0000_0000n / BigInt(segmentSizeBytes);
  const low = BigInt(`0x${match[3]}`);
  if (low >= segmentsPerXlogId) return null;
  return { segno: BigInt(`0x${match[2]}`) * segmentsPerXlogId + low, partial: match[4] !== undefined };
}

/** The start of the WAL page holding `lsn`. */
export const pageStartLsn = (lsn: Lsn): Lsn => lsn - (lsn % BigInt(WAL_PAGE_SIZE_BYTES));
export const pageOffsetBytes = (lsn: Lsn): number => Number(lsn % BigInt(WAL_PAGE_SIZE_BYTES));
