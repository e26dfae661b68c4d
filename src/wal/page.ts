/**
 * PostgreSQL WAL page and record headers: layouts, flag constants, and decode/encode helpers.
 *
 * Layouts (all little-endian; `access/xlog_internal.h`, `access/xlogrecord.h`):
 *   short page header (24 B): u16 xlp_magic, u16 xlp_info, u32 xlp_tli, u64 xlp_pageaddr, u32 xlp_rem_len, 4 pad
 *   long page header  (40 B): short header + u64 xlp_sysid, u32 xlp_seg_size, u32 xlp_xlog_blcksz
 *   record header     (24 B): u32 xl_tot_len, u32 xl_xid, u64 xl_prev, u8 xl_info, u8 xl_rmid, 2 pad, u32 xl_crc
 * Every page starts with a header; the first page of a segment has the long one. Records start 8-byte aligned
 * (MAXALIGN) and may be split anywhere across pages, including inside the record header.
 *
 * The decoder (`record_decoder.ts`) reads these fields inline with DataView for speed; the object helpers here
 * are for tests, tools and the synthetic WAL builder. Pure functions; any thread.
 */
import { InvalidArgumentError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { crc32cPortableRange, crc32cRange } from './crc.js';
import type { Lsn } from './lsn.js';
import { WAL_PAGE_SIZE_BYTES } from './lsn.js';

export const XLP_FIRST_IS_CONTRECORD = 0x0001;
export const XLP_LONG_HEADER = 0x0002;
export const XLP_BKP_REMOVABLE = 0x0004;
/** PG 15+: the first record on the page overwrites an aborted continuation record. */
export const XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008;
/** Any other xlp_info bit makes the page invalid, as in PostgreSQL's XLogReaderValidatePageHeader. */
export const XLP_ALL_FLAGS = 0x000f;

export const SHORT_PAGE_HEADER_BYTES = 24;
export const LONG_PAGE_HEADER_BYTES = 40;
export const RECORD_HEADER_BYTES = 24;
/** xl_crc sits at the end of the record header; the CRC covers the header bytes before it. */
export const RECORD_CRC_OFFSET_BYTES = 20;
/** PostgreSQL 16's XLogRecordMaxSize; PostgreSQL 15 cannot build a larger record either (MaxAllocSize). */
export const RECORD_BYTES_MAX = 1020 * 1024 * 1024;
/** Records and page headers are MAXALIGNed. */
export const RECORD_ALIGN_BYTES = 8;

export const RM_XLOG_ID = 0;
export const RM_LOGICALMSG_ID = 21;
/** xl_info's low 4 bits are generic flags; the rmgr-specific opcode is in the high 4. */
export const XLR_INFO_MASK = 0x0f;
export const XLOG_SWITCH = 0x40;
/** The record xlog.c's CreateOverwriteContrecordRecord puts first on an XLP_FIRST_IS_OVERWRITE_CONTRECORD page. */
export const XLOG_OVERWRITE_CONTRECORD = 0xd0;
export const XLOG_LOGICAL_MESSAGE = 0x00;

const PAGE_MAGIC_BY_MAJOR: ReadonlyMap<number, number> = new Map([
  [14, 0xd10d],
  [15, 0xd110],
  [16, 0xd113],
  [17, 0xd116],
]);

/** XLOG_PAGE_MAGIC for a server_version_num such as 150008. Throws InvalidArgumentError for other majors. */
export function pageMagicForPgVersion(pgVersionNum: number): number {
  const major = Number.isInteger(pgVersionNum) && pgVersionNum >= 10000 ? Math.floor(pgVersionNum / 10000) : -1;
  const magic = PAGE_MAGIC_BY_MAJOR.get(major);
  if (magic === undefined) throw new InvalidArgumentError(`unsupported PostgreSQL version ${pgVersionNum}: expected 14, 15, 16 or 17 (as server_version_num, e.g. 150008)`);
  return magic;
}

/** True when `(rmid, info)` is an XLOG_SWITCH record: after it, the next record starts at the next segment. */
export const isSwitchRecord = (rmid: number, info: number): boolean => rmid === RM_XLOG_ID && (info & ~XLR_INFO_MASK) === XLOG_SWITCH;

export interface LongPageHeaderFields {
  systemId: bigint;
  segmentSizeBytes: number;
  pageSizeBytes: number;
}

export interface PageHeader {
  magic: number;
  /** xlp_info flags (XLP_*). XLP_LONG_HEADER decides whether `long` is read and written. */
  info: number;
  timelineId: number;
  /** xlp_pageaddr: the LSN of the page itself. */
  pageAddrLsn: Lsn;
  /** xlp_rem_len: bytes of the continued record still missing at this page's start (0 without XLP_FIRST_IS_CONTRECORD). */
  remainingBytes: number;
  long: LongPageHeaderFields | null;
}

export const pageHeaderBytes = (info: number): number => (info & XLP_LONG_HEADER ? LONG_PAGE_HEADER_BYTES : SHORT_PAGE_HEADER_BYTES);

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function decodePageHeader(bytes: Uint8Array, offset = 0): PageHeader {
  assert(offset >= 0 && offset + SHORT_PAGE_HEADER_BYTES <= bytes.length, 'page header out of range');
  const view = viewOf(bytes);
  const info = view.getUint16(offset + 2, true);
  let long: LongPageHeaderFields | null = null;
  if (info & XLP_LONG_HEADER) {
    assert(offset + LONG_PAGE_HEADER_BYTES <= bytes.length, 'long page header out of range');
    long = {
      systemId: view.getBigUint64(offset + 24, true),
      segmentSizeBytes: view.getUint32(offset + 32, true),
      pageSizeBytes: view.getUint32(offset + 36, true),
    };
  }
  return {
    magic: view.getUint16(offset, true),
    info,
    timelineId: view.getUint32(offset + 4, true),
    pageAddrLsn: view.getBigUint64(offset + 8, true),
    remainingBytes: view.getUint32(offset + 16, true),
    long,
  };
}

/** Writes the header at `target[offset]` and returns its size (24 or 40 bytes). Padding bytes are zeroed. */
export function writePageHeader(target: Uint8Array, offset: number, header: PageHeader): number {
  const isLong = (header.info & XLP_LONG_HEADER) !== 0;
  assert(isLong === (header.long !== null), 'XLP_LONG_HEADER must match the presence of long fields');
  const size = isLong ? LONG_PAGE_HEADER_BYTES : SHORT_PAGE_HEADER_BYTES;
  assert(offset >= 0 && offset + size <= target.length, 'page header out of range');
  const view = viewOf(target);
  view.setUint16(offset, header.magic, true);
  view.setUint16(offset + 2, header.info, true);
  view.setUint32(offset + 4, header.timelineId, true);
  view.setBigUint64(offset + 8, header.pageAddrLsn, true);
  view.setUint32(offset + 16, header.remainingBytes, true);
  view.setUint32(offset + 20, 0, true);
  if (header.long !== null) {
    view.setBigUint64(offset + 24, header.long.systemId, true);
    view.setUint32(offset + 32, header.long.segmentSizeBytes, true);
    view.setUint32(offset + 36, header.long.pageSizeBytes, true);
  }
  return size;
}

export function encodePageHeader(header: PageHeader): Uint8Array {
  const bytes = new Uint8Array(pageHeaderBytes(header.info));
  writePageHeader(bytes, 0, header);
  return bytes;
}

export interface RecordHeader {
  /** xl_tot_len: header plus body, without the alignment padding after the record. */
  totalLengthBytes: number;
  xid: number;
  /** xl_prev: start LSN of the previous record (0 for the very first record of a cluster). */
  prevLsn: Lsn;
  info: number;
  rmid: number;
  crc: number;
}

export function decodeRecordHeader(bytes: Uint8Array, offset = 0): RecordHeader {
  assert(offset >= 0 && offset + RECORD_HEADER_BYTES <= bytes.length, 'record header out of range');
  const view = viewOf(bytes);
  return {
    totalLengthBytes: view.getUint32(offset, true),
    xid: view.getUint32(offset + 4, true),
    prevLsn: view.getBigUint64(offset + 8, true),
    info: view.getUint8(offset + 16),
    rmid: view.getUint8(offset + 17),
    crc: view.getUint32(offset + 20, true),
  };
}

export function writeRecordHeader(target: Uint8Array, offset: number, header: RecordHeader): number {
  assert(offset >= 0 && offset + RECORD_HEADER_BYTES <= target.length, 'record header out of range');
  const view = viewOf(target);
  view.setUint32(offset, header.totalLengthBytes, true);
  view.setUint32(offset + 4, header.xid, true);
  view.setBigUint64(offset + 8, header.prevLsn, true);
  view.setUint8(offset + 16, header.info);
  view.setUint8(offset + 17, header.rmid);
  view.setUint16(offset + 18, 0, true);
  view.setUint32(offset + 20, header.crc, true);
  return RECORD_HEADER_BYTES;
}

/**
 * The xl_crc of the complete record image `data[start, end)` (the whole buffer by default): CRC-32C over
 * [24, tot_len) continued over [0, 20). No view is made for a piece the portable code takes.
 */
export function computeRecordCrc(data: Uint8Array, start = 0, end = data.length): number {
  assert(start >= 0 && end - start >= RECORD_HEADER_BYTES && end <= data.length, 'a whole record inside the buffer');
  return crc32cPortableRange(data, start, start + RECORD_CRC_OFFSET_BYTES, crc32cRange(data, start + RECORD_HEADER_BYTES, end));
}

export interface RecordFields {
  rmid: number;
  info: number;
  xid?: number;
  prevLsn: Lsn;
  /** The record body, everything after the 24-byte header: block references, main-data header and main data. */
  data: Uint8Array;
}

/** A complete record image (header + body, no trailing padding) with xl_tot_len and xl_crc filled in. */
export function encodeRecord(fields: RecordFields): Uint8Array {
  const totalLengthBytes = RECORD_HEADER_BYTES + fields.data.length;
  assert(totalLengthBytes <= RECORD_BYTES_MAX, 'record too large');
  const record = new Uint8Array(totalLengthBytes);
  record.set(fields.data, RECORD_HEADER_BYTES);
  const header: RecordHeader = { totalLengthBytes, xid: fields.xid ?? 0, prevLsn: fields.prevLsn, info: fields.info, rmid: fields.rmid, crc: 0 };
  writeRecordHeader(record, 0, header);
  new DataView(record.buffer).setUint32(RECORD_CRC_OFFSET_BYTES, computeRecordCrc(record), true);
  return record;
}

/** Page size sanity: the decoder's positional math assumes 8 KiB pages and 8-byte-multiple header sizes. */
assert(WAL_PAGE_SIZE_BYTES === 8192, 'WAL pages are 8 KiB');
assert(SHORT_PAGE_HEADER_BYTES % RECORD_ALIGN_BYTES === 0 && LONG_PAGE_HEADER_BYTES % RECORD_ALIGN_BYTES === 0, 'page headers keep records aligned');
