/**
 * The initial segment image (storage reference §2.7, Neon's `generate_wal_segment`): the segment a
 * timeline's first WAL lands in when that WAL starts mid-segment at LSN L. Written at the first election
 * of a compute-created timeline, and synthesised for readers below `timeline_start_lsn`. It makes the
 * bytes before L a valid WAL prefix, so PostgreSQL and pg_waldump accept the segment:
 *
 *   - a long page header at offset 0: tli 1, pageaddr = segment start, sysid, seg size, blcksz 8192;
 *   - if L is on the first page and past the long header: flags CONTRECORD|LONG and
 *     rem_len = offset(L) − 40, faking a record continued from the previous segment that ends at L;
 *   - otherwise the long header has flag LONG and rem_len 0, and the page holding L gets a short header
 *     (pageaddr = page start) with, when L is past that header, flag CONTRECORD and
 *     rem_len = (L mod 8192) − 24;
 *   - every other byte is zero.
 *
 * Pure; any thread. Headers are written little-endian by hand (they are a few fields).
 */
import { InvalidArgumentError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { type Lsn, PG_TIMELINE_ID, formatLsn, WAL_PAGE_SIZE_BYTES, isValidSegmentSize, pageOffsetBytes, pageStartLsn, segmentNumber, segmentOffsetBytes, segmentStartLsn } from './lsn.js';

/** xlp_info flag: the page starts with the continuation of a record from the previous page. */
const XLP_FIRST_IS_CONTRECORD = 0x0001;
/** xlp_info flag: the page has a long header (first page of a segment). */
const XLP_LONG_HEADER = 0x0002;
/** Size of XLogPageHeaderData: u16 magic, u16 info, u32 tli, u64 pageaddr, u32 rem_len, 4 pad. */
const SHORT_PAGE_HEADER_BYTES = 24;
/** Size of XLogLongPageHeaderData: the short header + u64 sysid, u32 seg_size, u32 xlog_blcksz. */
const LONG_PAGE_HEADER_BYTES = 40;

/** XLOG_PAGE_MAGIC per PostgreSQL major version. */
const XLOG_PAGE_MAGIC_BY_MAJOR: ReadonlyMap<number, number> = new Map([
  [14, 0xd10d],
  [15, 0xd110],
  [16, 0xd113],
  [17, 0xd116],
]);

/**
 * The WAL page magic for `pgVersion`, given as a full PG_VERSION_NUM (150008) or a bare major (15).
 * InvalidArgumentError for a version we do not know the WAL format of.
 */
export function xlogPageMagic(pgVersion: number): number {
  const major = pgVersion >= 10_000 ? Math.floor(pgVersion / 10_000) : pgVersion;
  const magic = XLOG_PAGE_MAGIC_BY_MAJOR.get(major);
  if (magic === undefined) throw new InvalidArgumentError(`unsupported PostgreSQL version ${pgVersion} (WAL format known for 14 to 17)`);
  return magic;
}

export interface InitialSegmentImageArgs {
  /** Where the timeline's first real record starts. */
  lsn: Lsn;
  segmentSizeBytes: number;
  /** PostgreSQL system identifier (xlp_sysid). */
  systemId: bigint;
  /** PG_VERSION_NUM (150008) or a bare major version (15). */
  pgVersion: number;
}

interface PageHeaderFields {
  magic: number;
  info: number;
  pageAddressLsn: Lsn;
  remainingBytes: number;
}

function writeShortHeader(view: DataView, offsetBytes: number, fields: PageHeaderFields): void {
  view.setUint16(offsetBytes + 0, fields.magic, true);
  view.setUint16(offsetBytes + 2, fields.info, true);
  view.setUint32(offsetBytes + 4, PG_TIMELINE_ID, true);
  view.setBigUint64(offsetBytes + 8, fields.pageAddressLsn, true);
  view.setUint32(offsetBytes + 16, fields.remainingBytes, true);
  // bytes 20..24 are padding and stay zero
}

/** The whole segment holding `args.lsn`, `segmentSizeBytes` long, as §2.7 lays it out. */
export function initialSegmentImage(args: InitialSegmentImageArgs): Uint8Array {
  const { lsn, segmentSizeBytes, systemId } = args;
  if (!isValidSegmentSize(segmentSizeBytes)) throw new InvalidArgumentError(`bad segment size ${segmentSizeBytes}`);
  if (systemId < 0n || systemId > 0xffff_ffff_ffff_ffffn) throw new InvalidArgumentError('system id is not a u64');
  const magic = xlogPageMagic(args.pgVersion);
  const segmentOffset = segmentOffsetBytes(lsn, segmentSizeBytes);
  const pageOffset = pageOffsetBytes(lsn);
  const firstPageOnly = segmentOffset < WAL_PAGE_SIZE_BYTES;
  // A record cannot start inside a page header: PostgreSQL never produces such an LSN.
  if (firstPageOnly && segmentOffset > 0 && segmentOffset < LONG_PAGE_HEADER_BYTES) {
    throw new InvalidArgumentError(`WAL start ${formatLsn(lsn)} lies inside the segment's long page header`);
  }
  if (!firstPageOnly && pageOffset > 0 && pageOffset < SHORT_PAGE_HEADER_BYTES) {
    throw new InvalidArgumentError(`WAL start ${formatLsn(lsn)} lies inside a page header`);
  }

  const image = new Uint8Array(segmentSizeBytes);
  const view = new DataView(image.buffer);
  const segmentStart = segmentStartLsn(segmentNumber(lsn, segmentSizeBytes), segmentSizeBytes);
  // Quirk fix: Neon's generate_wal_segment also sets XLP_FIRST_IS_CONTRECORD when L is right after a page
  // header (a fake record of 0 bytes). PostgreSQL's reader rejects a contrecord flag with rem_len 0
  // ("could not find a valid record"), so pg_waldump could not start there. We set it only for a real remainder.
  const fakeRecordOnFirstPage = firstPageOnly && segmentOffset > LONG_PAGE_HEADER_BYTES;
  writeShortHeader(view, 0, {
    magic,
    info: XLP_LONG_HEADER | (fakeRecordOnFirstPage ? XLP_FIRST_IS_CONTRECORD : 0),
    pageAddressLsn: segmentStart,
    remainingBytes: fakeRecordOnFirstPage ? segmentOffset - LONG_PAGE_HEADER_BYTES : 0,
  });
  view.setBigUint64(24, systemId, true);
  view.setUint32(32, segmentSizeBytes, true);
  view.setUint32(36, WAL_PAGE_SIZE_BYTES, true);

  if (!firstPageOnly) {
    const pageStart = segmentOffset - pageOffset;
    assert(pageStart > 0 && pageStart % WAL_PAGE_SIZE_BYTES === 0, 'short header goes at a later page start');
    writeShortHeader(view, pageStart, {
      magic,
      info: pageOffset > SHORT_PAGE_HEADER_BYTES ? XLP_FIRST_IS_CONTRECORD : 0,
      pageAddressLsn: pageStartLsn(lsn),
      remainingBytes: pageOffset > SHORT_PAGE_HEADER_BYTES ? pageOffset - SHORT_PAGE_HEADER_BYTES : 0,
    });
  }
  return image;
}
