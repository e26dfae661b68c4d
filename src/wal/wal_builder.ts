/**
 * Synthetic WAL: lays out records exactly as PostgreSQL's XLogInsert does, so the bytes decode with our
 * decoder and with pg_waldump. Used by tests and by the proposer's synthetic load generator.
 *
 * Layout rules: every page starts with a header (long at segment starts) whose xlp_pageaddr is the page LSN;
 * a record continued onto a page sets XLP_FIRST_IS_CONTRECORD and xlp_rem_len = bytes of it still missing;
 * records start 8-byte aligned and xl_prev is the previous record's start; after an XLOG_SWITCH record the
 * rest of the segment is zero pages with headers, and the next record starts after the next segment's header.
 * `appendOverwriteContrecord` writes what PostgreSQL's recovery writes at the page where a crash cut a record:
 * a page flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD whose first record is XLOG_OVERWRITE_CONTRECORD.
 *
 * Output: `take()` returns every byte produced since the previous take, from the previous end position up to
 * the aligned end of the last record (the position PostgreSQL reports as the insert/flush end). A page
 * header is written only when a record needs the page, so a take never ends inside a page header.
 * Not thread-safe (plain object); any thread. Positions are kept as a segment base plus a number offset.
 */
import { assert } from '../sync/assert.js';
import type { Lsn } from './lsn.js';
import { WAL_PAGE_SIZE_BYTES, isValidSegmentSize } from './lsn.js';
import {
  LONG_PAGE_HEADER_BYTES, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RM_LOGICALMSG_ID, RM_XLOG_ID, SHORT_PAGE_HEADER_BYTES,
  XLOG_LOGICAL_MESSAGE, XLOG_OVERWRITE_CONTRECORD, XLOG_SWITCH, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
  encodeRecord, pageMagicForPgVersion, writePageHeader,
} from './page.js';

/** XLogRecordAssemble's main-data block ids: a 1-byte length up to 255 bytes, else a 4-byte length. */
const XLR_BLOCK_ID_DATA_SHORT = 255;
const XLR_BLOCK_ID_DATA_LONG = 254;
/** offsetof(xl_logical_message, message): u32 dbId, bool transactional, 3 pad, u64 prefix_size, u64 message_size. */
const LOGICAL_MESSAGE_HEADER_BYTES = 24;
/** sizeof(xl_overwrite_contrecord): XLogRecPtr overwritten_lsn, TimestampTz overwrite_time. */
const OVERWRITE_CONTRECORD_BYTES = 16;
const OUTPUT_BYTES_INITIAL = 64 * 1024;

export interface WalBuilderOptions {
  /** Where the first record goes: 8-byte aligned; a page or segment start gets its page header first. */
  startLsn: Lsn;
  segmentSizeBytes: number;
  /** server_version_num, e.g. 150008: picks xlp_magic. */
  pgVersion: number;
  systemId: bigint;
  /** PostgreSQL timeline id in page headers; 1 by default. */
  timelineId?: number;
  /** xl_prev of the first record; 0 by default (unknown, or the first record of a cluster). */
  prevLsn?: Lsn;
}

export interface BuiltRecord {
  startLsn: Lsn;
  /** Where the next record may start (the record end rounded up to 8, or the next segment after a switch). */
  endLsn: Lsn;
}

export interface AppendRecordArgs {
  rmid: number;
  info: number;
  xid?: number;
  /** The record body after the 24-byte header. */
  data: Uint8Array;
}

/** xl_tot_len of a non-transactional logical message with `prefixBytes` of prefix (without its NUL) and `payloadBytes`. */
export function logicalMessageRecordBytes(payloadBytes: number, prefixBytes = 2): number {
  const mainBytes = LOGICAL_MESSAGE_HEADER_BYTES + prefixBytes + 1 + payloadBytes;
  return RECORD_HEADER_BYTES + (mainBytes <= 255 ? 2 : 5) + mainBytes;
}

export class WalBuilder {
  readonly segmentSizeBytes: number;
  readonly #magic: number;
  readonly #systemId: bigint;
  readonly #timelineId: number;
  #segmentBaseLsn: Lsn;
  /** Offset of the next byte inside the current segment; always 8-byte aligned between appends. */
  #segmentOffsetBytes: number;
  #prevLsn: Lsn;
  #output = new Uint8Array(OUTPUT_BYTES_INITIAL);
  #outputLengthBytes = 0;

  constructor(options: WalBuilderOptions) {
    assert(isValidSegmentSize(options.segmentSizeBytes), 'segment size must be a power of two in [1 MiB, 1 GiB]');
    assert(options.startLsn % BigInt(RECORD_ALIGN_BYTES) === 0n, 'start LSN must be 8-byte aligned');
    this.segmentSizeBytes = options.segmentSizeBytes;
    this.#magic = pageMagicForPgVersion(options.pgVersion);
    this.#systemId = options.systemId;
    this.#timelineId = options.timelineId ?? 1;
    const segmentSize = BigInt(options.segmentSizeBytes);
    this.#segmentBaseLsn = options.startLsn - (options.startLsn % segmentSize);
    this.#segmentOffsetBytes = Number(options.startLsn % segmentSize);
    const pageOffset = this.#segmentOffsetBytes % WAL_PAGE_SIZE_BYTES;
    const headerBytes = this.#segmentOffsetBytes < WAL_PAGE_SIZE_BYTES ? LONG_PAGE_HEADER_BYTES : SHORT_PAGE_HEADER_BYTES;
    assert(pageOffset === 0 || pageOffset >= headerBytes, 'start LSN must not be inside a page header');
    this.#prevLsn = options.prevLsn ?? 0n;
  }

  /** The next write position: where the next record (or its page header) goes. */
  get lsn(): Lsn {
    return this.#segmentBaseLsn + BigInt(this.#segmentOffsetBytes);
  }

  /** Start LSN of the last appended record (the next record's xl_prev). */
  get prevRecordLsn(): Lsn {
    return this.#prevLsn;
  }

  get pendingBytes(): number {
    return this.#outputLengthBytes;
  }

  appendRecord(args: AppendRecordArgs): BuiltRecord {
    const xid = args.xid ?? 0;
    const startLsn = this.#skipPageHeaderIfAtPageStart();
    const record = encodeRecord({ rmid: args.rmid, info: args.info, xid, prevLsn: this.#prevLsn, data: args.data });
    this.#writeRecordBytes(record);
    this.#prevLsn = startLsn;
    const padBytes = (RECORD_ALIGN_BYTES - (this.#segmentOffsetBytes % RECORD_ALIGN_BYTES)) % RECORD_ALIGN_BYTES;
    this.#writeZeros(padBytes);
    return { startLsn, endLsn: this.lsn };
  }

  /** A pg_logical_emit_message(false, prefix, payload) record; pg_waldump shows it as LogicalMessage. */
  appendLogicalMessage(payload: Uint8Array, prefix = 'sk'): BuiltRecord {
    const prefixBytes = new TextEncoder().encode(prefix);
    const mainBytes = LOGICAL_MESSAGE_HEADER_BYTES + prefixBytes.length + 1 + payload.length;
    const lengthBytes = mainBytes <= 255 ? 2 : 5;
    const data = new Uint8Array(lengthBytes + mainBytes);
    const view = new DataView(data.buffer);
    if (lengthBytes === 2) {
      data[0] = XLR_BLOCK_ID_DATA_SHORT;
      data[1] = mainBytes;
    } else {
      data[0] = XLR_BLOCK_ID_DATA_LONG;
      view.setUint32(1, mainBytes, true);
    }
    // dbId 0 and transactional false leave their bytes zero.
    view.setBigUint64(lengthBytes + 8, BigInt(prefixBytes.length + 1), true);
    view.setBigUint64(lengthBytes + 16, BigInt(payload.length), true);
    data.set(prefixBytes, lengthBytes + LOGICAL_MESSAGE_HEADER_BYTES);
    data.set(payload, lengthBytes + LOGICAL_MESSAGE_HEADER_BYTES + prefixBytes.length + 1);
    return this.appendRecord({ rmid: RM_LOGICALMSG_ID, info: XLOG_LOGICAL_MESSAGE, data });
  }

  /** An XLOG_SWITCH record; the rest of its segment becomes zeros, as PostgreSQL writes it. */
  appendSwitch(): BuiltRecord {
    const record = this.appendRecord({ rmid: RM_XLOG_ID, info: XLOG_SWITCH, data: new Uint8Array(0) });
    // PostgreSQL (11+) leaves the rest of the segment after a switch all zeros, page headers included.
    while (this.#segmentOffsetBytes !== 0) this.#writeZeros(WAL_PAGE_SIZE_BYTES - (this.#segmentOffsetBytes % WAL_PAGE_SIZE_BYTES));
    return { startLsn: record.startLsn, endLsn: this.lsn };
  }

  /**
   * What PostgreSQL's CreateOverwriteContrecordRecord writes: at a page start (the builder must stand there,
   * so start a new builder at the page where the cut record went missing, with `prevLsn` the record before
   * it), a page header flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD (xlp_rem_len 0), then an
   * XLOG_OVERWRITE_CONTRECORD record naming `overwrittenLsn`, the cut record's start.
   */
  appendOverwriteContrecord(overwrittenLsn: Lsn, overwriteTimeUs = 0n): BuiltRecord {
    assert(this.#segmentOffsetBytes % WAL_PAGE_SIZE_BYTES === 0, 'an overwrite contrecord page starts where the builder stands');
    this.#writePageHeader(0, XLP_FIRST_IS_OVERWRITE_CONTRECORD);
    const data = new Uint8Array(2 + OVERWRITE_CONTRECORD_BYTES);
    data[0] = XLR_BLOCK_ID_DATA_SHORT;
    data[1] = OVERWRITE_CONTRECORD_BYTES;
    const view = new DataView(data.buffer);
    view.setBigUint64(2, overwrittenLsn, true);
    view.setBigInt64(10, overwriteTimeUs, true);
    return this.appendRecord({ rmid: RM_XLOG_ID, info: XLOG_OVERWRITE_CONTRECORD, data });
  }

  /** Bytes produced since the last take (a fresh copy), starting at the previous take's end. */
  take(): Uint8Array {
    const bytes = this.#output.slice(0, this.#outputLengthBytes);
    this.#outputLengthBytes = 0;
    return bytes;
  }

  /** At a page start a record begins after the page header: write it and return the record's LSN. */
  #skipPageHeaderIfAtPageStart(): Lsn {
    if (this.#segmentOffsetBytes % WAL_PAGE_SIZE_BYTES === 0) this.#writePageHeader(0);
    return this.lsn;
  }

  #writeRecordBytes(record: Uint8Array): void {
    let done = 0;
    while (done < record.length) {
      const pageOffset = this.#segmentOffsetBytes % WAL_PAGE_SIZE_BYTES;
      if (pageOffset === 0) this.#writePageHeader(record.length - done);
      const pieceBytes = Math.min(WAL_PAGE_SIZE_BYTES - (this.#segmentOffsetBytes % WAL_PAGE_SIZE_BYTES), record.length - done);
      this.#reserve(pieceBytes).set(record.subarray(done, done + pieceBytes), this.#outputLengthBytes - pieceBytes);
      this.#advance(pieceBytes);
      done += pieceBytes;
    }
  }

  /** A page header at the current (page-start) position; `remainingBytes` > 0 marks a continuation. */
  #writePageHeader(remainingBytes: number, extraInfo = 0): void {
    assert(this.#segmentOffsetBytes % WAL_PAGE_SIZE_BYTES === 0, 'page header at a page start');
    const isLong = this.#segmentOffsetBytes === 0;
    const size = isLong ? LONG_PAGE_HEADER_BYTES : SHORT_PAGE_HEADER_BYTES;
    const info = (isLong ? XLP_LONG_HEADER : 0) | (remainingBytes > 0 ? XLP_FIRST_IS_CONTRECORD : 0) | extraInfo;
    const long = isLong ? { systemId: this.#systemId, segmentSizeBytes: this.segmentSizeBytes, pageSizeBytes: WAL_PAGE_SIZE_BYTES } : null;
    const target = this.#reserve(size);
    writePageHeader(target, this.#outputLengthBytes - size, { magic: this.#magic, info, timelineId: this.#timelineId, pageAddrLsn: this.lsn, remainingBytes, long });
    this.#advance(size);
  }

  #writeZeros(count: number): void {
    if (count === 0) return;
    this.#reserve(count).fill(0, this.#outputLengthBytes - count, this.#outputLengthBytes);
    this.#advance(count);
  }

  /** Grows the output by `count` bytes and returns the buffer; the new bytes end at #outputLengthBytes. */
  #reserve(count: number): Uint8Array {
    const needed = this.#outputLengthBytes + count;
    if (needed > this.#output.length) {
      const grown = new Uint8Array(Math.max(needed, this.#output.length * 2));
      grown.set(this.#output.subarray(0, this.#outputLengthBytes));
      this.#output = grown;
    }
    this.#outputLengthBytes = needed;
    return this.#output;
  }

  #advance(count: number): void {
    this.#segmentOffsetBytes += count;
    assert(this.#segmentOffsetBytes <= this.segmentSizeBytes, 'writes never cross a segment end');
    if (this.#segmentOffsetBytes === this.segmentSizeBytes) {
      this.#segmentBaseLsn += BigInt(this.segmentSizeBytes);
      this.#segmentOffsetBytes = 0;
    }
  }
}
