/**
 * A streaming, resumable WAL record decoder that checks WAL the way PostgreSQL's xlogreader does (PG 15+).
 * It does not keep records: it verifies them and reports where they end, which is what a safekeeper needs
 * to know how far received WAL is valid (flush_lsn) and where the end of WAL is after a crash.
 *
 * Design: a position-driven state machine. The byte at `lsn` is a page header iff its page offset is below
 * the header size (40 at a segment start, 24 elsewhere); otherwise it belongs to the current phase: a record
 * start, a record (header, then body), padding or post-XLOG_SWITCH bytes to skip, or a leading continuation
 * record to skip. A record's CRC runs over its body as bytes arrive, and only the 24-byte header is kept, so
 * the state is a few numbers plus 64 bytes. Hot path: one DataView per feed, the LSN as a segment base plus a
 * number offset (no bigint per record). Records that lie whole inside the fed piece and their page (most of
 * them) are checked in batches (record_crc.ts): with the native addon, the run of good ones from a record
 * start to the end of its page is walked in one call (length, xl_prev, CRC), and this code parses only
 * where the walk stops (a page header, a cut record, a switch, or something wrong, which it then names);
 * without it, each is parsed here and its CRC checked with the others in one batch call before `feed`
 * returns or throws. Either way an error names the first bad record and `lastRecordEndLsn` never covers
 * an unchecked one. A record cut by a page or piece end runs its CRC over each part as it arrives. With an
 * `onRecord` callback, each record is parsed here and checked before its callback.
 *
 * Checks (errors carry the LSN of the bad page, or of the record's start for record errors, including
 * missing_contrecord and bad_contrecord_length; unexpected_contrecord is a page error, as the page is wrong):
 *   page: magic, known xlp_info bits, long header exactly at segment starts with our segment size, 8 KiB pages
 *   and the first system id seen, xlp_pageaddr = page LSN; a continued record needs XLP_FIRST_IS_CONTRECORD
 *   and xlp_rem_len = bytes still missing; a page where a new record is expected needs the flag clear and
 *   rem_len 0 (unless `skipLeadingContrecord` asks to skip a continuation at the start).
 *   overwrite: a page flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD where a record (or a leading continuation
 *   being skipped) continues abandons it, as xlogreader.c does: the primary crashed with only that record's
 *   first part flushed, and its recovery wrote this page (an XLOG_OVERWRITE_CONTRECORD record first) where
 *   the rest would have gone. The page is then checked as one where a new record is expected, and decoding
 *   goes on from its first record. The abandoned record never completed, so `lastRecordEndLsn` (flush_lsn)
 *   never covered it and stays at its start; xl_prev of the next record is the record before it. Nothing
 *   about the abandoned record is kept, so the state needs no field for it and resumes anywhere.
 *   record: 24 <= xl_tot_len <= RECORD_BYTES_MAX, xl_prev = previous record start (once one is known), CRC.
 * Bytes after XLOG_SWITCH up to the segment end are not validated, as in PostgreSQL.
 * Not thread-safe; any thread (the state can be structured-cloned and resumed on another). After a throw the
 * decoder refuses more input; `lastRecordEndLsn` stays the end of the last good record.
 */
import { WalCorruptionError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { crc32cPortableRange, crc32cRange } from './crc.js';
import { formatLsn, isValidSegmentSize, type Lsn, WAL_PAGE_SIZE_BYTES } from './lsn.js';
import { LONG_PAGE_HEADER_BYTES, RECORD_BYTES_MAX, RECORD_CRC_OFFSET_BYTES, RECORD_HEADER_BYTES, isSwitchRecord, pageMagicForPgVersion } from './page.js';
import {
  recordChecks, type RecordChecks, type RecordCrcVerifier, type RecordWalker, WALK_FROM, WALK_IO_LENGTH, WALK_LAST_END, WALK_LAST_START, WALK_LSN_HI,
  WALK_LSN_LO, WALK_PREV_HI, WALK_PREV_KNOWN, WALK_PREV_LO, WALK_TO,
} from './record_crc.js';
import { CONTRECORD_OVERWRITTEN, checkPageHeader, type PageCheckContext } from './record_decoder_page.js';
import { type DecoderPhase, type DecoderState, PAGE_MASK, PHASES, type WalCorruptionKind, headerBytesAt, lsnOf } from './record_decoder_state.js';

// The state type and its constructor live next door to keep this file short; callers import them from here.
export { decoderStartProblem, initialDecoderState, type DecoderPhase, type DecoderState, type WalCorruptionKind } from './record_decoder_state.js';

const RECORD_START = 0;
const RECORD = 1;
const SKIP = 2;
const CONTRECORD_SKIP = 3;

const padTo8 = (offset: number): number => (8 - (offset & 7)) & 7;

/** Records whose CRC check waits for the batch call; one set per thread, as `feed` never nests. */
const PENDING_RECORDS_MAX = 1024;
const pendingStarts = new Int32Array(PENDING_RECORDS_MAX);
const pendingRecordHi = new Uint32Array(PENDING_RECORDS_MAX);
const pendingRecordLo = new Uint32Array(PENDING_RECORDS_MAX);
/** lastRecordEndLsn before each pending record: where the decoder stands if that record is the bad one. */
const pendingEndHi = new Uint32Array(PENDING_RECORDS_MAX);
const pendingEndLo = new Float64Array(PENDING_RECORDS_MAX);
let pendingCount = 0;
/** In/out numbers of the native record walk, one set per thread for the same reason. */
const walkIo = new Uint32Array(WALK_IO_LENGTH);

export class WalRecordDecoder {
  readonly #verifyRecords: RecordCrcVerifier;
  readonly #walkRecords: RecordWalker | null;
  readonly #segmentSizeBytes: number;
  readonly #pgVersion: number;
  readonly #page: PageCheckContext;
  #segmentBaseLsn: Lsn;
  /** hi/lo u32 halves of the segment base; segment sizes divide 2^32, so lo + offset never carries. */
  #segmentHi: number;
  #segmentLo: number;
  #offsetBytes: number;
  #phase: number;
  #skipBytes: number;
  #recordHi = 0;
  #recordLo = 0;
  #recordTotalBytes: number;
  #recordReadBytes: number;
  #recordCrc: number;
  readonly #recordHeader: Uint8Array;
  readonly #recordHeaderView: DataView;
  readonly #pageHeader: Uint8Array;
  readonly #pageHeaderView: DataView;
  #prevKnown: boolean;
  #prevHi = 0;
  #prevLo = 0;
  #endHi = 0;
  /** Not normalised: may equal 2^32 after a switch at the last segment of an xlogid; lsnOf() adds it exactly. */
  #endLo = 0;
  #failed = false;

  /** `checks` checks whole records in batches (tests pass the portable ones to cover both). */
  constructor(state: DecoderState, checks: RecordChecks = recordChecks) {
    assert(isValidSegmentSize(state.segmentSizeBytes), 'decoder state: segment size');
    this.#verifyRecords = checks.verify;
    this.#walkRecords = checks.walk;
    assert(state.recordHeader.length === RECORD_HEADER_BYTES && state.pageHeader.length === LONG_PAGE_HEADER_BYTES, 'decoder state: buffers');
    const phase = PHASES.indexOf(state.phase);
    assert(phase >= 0, 'decoder state: phase');
    this.#segmentSizeBytes = state.segmentSizeBytes;
    this.#pgVersion = state.pgVersion;
    this.#page = { magic: pageMagicForPgVersion(state.pgVersion), segmentSizeBytes: state.segmentSizeBytes, systemId: state.systemId, skipLeadingContrecord: state.skipLeadingContrecord };
    const segmentSize = BigInt(state.segmentSizeBytes);
    this.#segmentBaseLsn = state.lsn - (state.lsn % segmentSize);
    this.#segmentHi = Number(this.#segmentBaseLsn >> 32n);
    this.#segmentLo = Number(this.#segmentBaseLsn & 0xffff_ffffn);
    this.#offsetBytes = Number(state.lsn % segmentSize);
    this.#phase = phase;
    this.#skipBytes = state.skipBytes;
    this.#recordHi = Number(state.recordStartLsn >> 32n);
    this.#recordLo = Number(state.recordStartLsn & 0xffff_ffffn);
    this.#recordTotalBytes = state.recordTotalBytes;
    this.#recordReadBytes = state.recordReadBytes;
    this.#recordCrc = state.recordCrc;
    this.#recordHeader = state.recordHeader.slice();
    this.#recordHeaderView = new DataView(this.#recordHeader.buffer);
    this.#pageHeader = state.pageHeader.slice();
    this.#pageHeaderView = new DataView(this.#pageHeader.buffer);
    this.#prevKnown = state.prevRecordLsn !== null;
    if (state.prevRecordLsn !== null) {
      this.#prevHi = Number(state.prevRecordLsn >> 32n);
      this.#prevLo = Number(state.prevRecordLsn & 0xffff_ffffn);
    }
    this.#endHi = Number(state.lastRecordEndLsn >> 32n);
    this.#endLo = Number(state.lastRecordEndLsn & 0xffff_ffffn);
    assert(state.lastRecordEndLsn <= state.lsn || this.#phase === SKIP, 'decoder state: end ahead of position');
  }

  /** The position of the next byte expected. */
  get lsn(): Lsn {
    return this.#segmentBaseLsn + BigInt(this.#offsetBytes);
  }

  /**
   * End of the last complete verified record as the protocol's flush_lsn: rounded up to 8, or the next segment
   * start after an XLOG_SWITCH. It may run ahead of `lsn` by the padding or the switch's zero tail still to be
   * fed. Initially the start LSN.
   */
  get lastRecordEndLsn(): Lsn {
    return lsnOf(this.#endHi, this.#endLo);
  }

  snapshot(): DecoderState {
    assert(!this.#failed, 'snapshot of a failed decoder');
    return {
      segmentSizeBytes: this.#segmentSizeBytes, pgVersion: this.#pgVersion, lsn: this.lsn, lastRecordEndLsn: this.lastRecordEndLsn,
      phase: PHASES[this.#phase] as DecoderPhase, skipLeadingContrecord: this.#page.skipLeadingContrecord, skipBytes: this.#skipBytes,
      recordStartLsn: lsnOf(this.#recordHi, this.#recordLo), recordTotalBytes: this.#recordTotalBytes, recordReadBytes: this.#recordReadBytes,
      recordCrc: this.#recordCrc, recordHeader: this.#recordHeader.slice(), pageHeader: this.#pageHeader.slice(),
      prevRecordLsn: this.#prevKnown ? lsnOf(this.#prevHi, this.#prevLo) : null, systemId: this.#page.systemId,
    };
  }

  /**
   * Feeds the next bytes; chunk[0] is at `lsn`. Returns how many records completed (and verified) in this call.
   * `onRecord` gets each record's start and its end as flush_lsn (aligned, or the next segment after a switch).
   */
  feed(chunk: Uint8Array, onRecord?: (startLsn: Lsn, endLsn: Lsn, rmid: number, info: number) => void): number {
    assert(!this.#failed, 'decoder fed after a corruption error');
    pendingCount = 0;
    try {
      const completed = this.#feed(chunk, new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength), onRecord);
      this.#verifyPending(chunk);
      return completed;
    } catch (error) {
      this.#failed = true;
      // A bad record still pending comes before whatever stopped the decoder later: report that one.
      this.#verifyPending(chunk);
      throw error;
    }
  }

  /** Checks the pending records' CRCs; on a mismatch, rewinds lastRecordEndLsn to before the bad record and throws. */
  #verifyPending(chunk: Uint8Array): void {
    const count = pendingCount;
    if (count === 0) return;
    pendingCount = 0;
    const bad = this.#verifyRecords(chunk, pendingStarts, count);
    if (bad < 0) return;
    this.#endHi = pendingEndHi[bad] as number;
    this.#endLo = pendingEndLo[bad] as number;
    this.#fail('crc_mismatch', lsnOf(pendingRecordHi[bad] as number, pendingRecordLo[bad] as number), 'record CRC mismatch');
  }

  #feed(chunk: Uint8Array, view: DataView, onRecord: ((startLsn: Lsn, endLsn: Lsn, rmid: number, info: number) => void) | undefined): number {
    const length = chunk.length;
    let pos = 0;
    let completed = 0;
    while (pos < length) {
      if (this.#phase === SKIP) {
        const n = Math.min(this.#skipBytes, length - pos);
        this.#skipBytes -= n;
        pos += n;
        this.#advance(n);
        if (this.#skipBytes === 0) this.#phase = RECORD_START;
        continue;
      }
      const pageOffset = this.#offsetBytes & PAGE_MASK;
      const headerBytes = headerBytesAt(this.#offsetBytes);
      if (pageOffset < headerBytes) {
        pos += this.#pageHeaderBytes(chunk, view, pos, pageOffset, headerBytes);
        continue;
      }
      const pageLeft = WAL_PAGE_SIZE_BYTES - pageOffset;
      if (this.#phase === CONTRECORD_SKIP) {
        const n = Math.min(this.#skipBytes, pageLeft, length - pos);
        this.#skipBytes -= n;
        pos += n;
        this.#advance(n);
        if (this.#skipBytes === 0) this.#startSkip(padTo8(this.#offsetBytes));
        continue;
      }
      if (this.#phase === RECORD_START) {
        assert((pageOffset & 7) === 0, 'records start 8-byte aligned');
        if (this.#walkRecords !== null && onRecord === undefined) {
          const walked = this.#walk(this.#walkRecords, chunk, pos, Math.min(pageLeft, length - pos));
          if (walked > 0) {
            pos = walkIo[WALK_LAST_END] as number;
            completed += walked;
            continue;
          }
        }
        this.#recordHi = this.#segmentHi;
        this.#recordLo = this.#segmentLo + this.#offsetBytes;
        this.#recordReadBytes = 0;
        this.#recordTotalBytes = 0;
        this.#recordCrc = 0;
        this.#phase = RECORD;
        const available = Math.min(pageLeft, length - pos);
        if (available >= RECORD_HEADER_BYTES) {
          // Fast path: the whole header is here; maybe the whole record is.
          const totalBytes = view.getUint32(pos, true);
          this.#checkHeader(totalBytes, view.getUint32(pos + 8, true), view.getUint32(pos + 12, true));
          if (totalBytes <= available) {
            const index = pendingCount++;
            pendingStarts[index] = pos;
            pendingRecordHi[index] = this.#recordHi;
            pendingRecordLo[index] = this.#recordLo;
            pendingEndHi[index] = this.#endHi;
            pendingEndLo[index] = this.#endLo;
            if (onRecord !== undefined || pendingCount === PENDING_RECORDS_MAX) this.#verifyPending(chunk);
            pos += totalBytes;
            this.#advance(totalBytes);
            this.#finishRecord(view.getUint8(pos - totalBytes + 17), view.getUint8(pos - totalBytes + 16), onRecord);
            completed++;
            continue;
          }
          this.#recordTotalBytes = totalBytes;
          this.#recordHeader.set(chunk.subarray(pos, pos + RECORD_HEADER_BYTES));
          this.#recordReadBytes = RECORD_HEADER_BYTES;
          pos += RECORD_HEADER_BYTES;
          this.#advance(RECORD_HEADER_BYTES);
          continue;
        }
      }
      // Phase RECORD: finish the header, then the body, a page piece at a time.
      if (this.#recordReadBytes < RECORD_HEADER_BYTES) {
        const n = Math.min(RECORD_HEADER_BYTES - this.#recordReadBytes, pageLeft, length - pos);
        this.#recordHeader.set(chunk.subarray(pos, pos + n), this.#recordReadBytes);
        const before = this.#recordReadBytes;
        this.#recordReadBytes += n;
        pos += n;
        this.#advance(n);
        if (before < 4 && this.#recordReadBytes >= 4) {
          this.#recordTotalBytes = this.#recordHeaderView.getUint32(0, true);
          this.#checkTotalLength(this.#recordTotalBytes);
        }
        if (this.#recordReadBytes === RECORD_HEADER_BYTES) {
          this.#checkPrev(this.#recordHeaderView.getUint32(8, true), this.#recordHeaderView.getUint32(12, true));
        }
      } else {
        const n = Math.min(this.#recordTotalBytes - this.#recordReadBytes, pageLeft, length - pos);
        this.#recordCrc = crc32cRange(chunk, pos, pos + n, this.#recordCrc);
        this.#recordReadBytes += n;
        pos += n;
        this.#advance(n);
      }
      if (this.#recordReadBytes === this.#recordTotalBytes) {
        const crc = crc32cPortableRange(this.#recordHeader, 0, RECORD_CRC_OFFSET_BYTES, this.#recordCrc);
        if (crc !== this.#recordHeaderView.getUint32(RECORD_CRC_OFFSET_BYTES, true)) this.#fail('crc_mismatch', this.#recordLsn(), 'record CRC mismatch');
        this.#finishRecord(this.#recordHeader[17] as number, this.#recordHeader[16] as number, onRecord);
        completed++;
      }
    }
    return completed;
  }

  /**
   * The native walk over the good records that lie whole in chunk[pos, pos + available), all in one page,
   * the first starting at `pos`: the decoder moves past the last of them as if it had parsed each. Returns
   * how many (0: the caller parses the record at `pos` itself); the last one ends at walkIo[WALK_LAST_END].
   */
  #walk(walk: RecordWalker, chunk: Uint8Array, pos: number, available: number): number {
    const io = walkIo;
    const lsnLo = this.#segmentLo + this.#offsetBytes;
    io[WALK_FROM] = pos;
    io[WALK_TO] = pos + available;
    io[WALK_LSN_HI] = this.#segmentHi;
    io[WALK_LSN_LO] = lsnLo;
    io[WALK_PREV_KNOWN] = this.#prevKnown ? 1 : 0;
    io[WALK_PREV_HI] = this.#prevHi;
    io[WALK_PREV_LO] = this.#prevLo;
    const count = walk(chunk, io);
    if (count === 0) return 0;
    const lastStart = io[WALK_LAST_START] as number;
    const walkedBytes = (io[WALK_LAST_END] as number) - pos;
    this.#recordHi = this.#segmentHi;
    this.#recordLo = lsnLo + (lastStart - pos);
    this.#advance(walkedBytes);
    // The walk stops before a switch, so this is plain padding; the walk checked every CRC already.
    this.#finishRecord(chunk[lastStart + 17] as number, chunk[lastStart + 16] as number, undefined);
    return count;
  }

  /** Consumes up to the rest of a page header at `pageOffset`; validates it once complete. Returns bytes used. */
  #pageHeaderBytes(chunk: Uint8Array, view: DataView, pos: number, pageOffset: number, headerBytes: number): number {
    const n = Math.min(headerBytes - pageOffset, chunk.length - pos);
    const pageLo = this.#segmentLo + this.#offsetBytes - pageOffset;
    let headerView: DataView | null = null;
    let headerAt = 0;
    if (n === headerBytes) {
      headerView = view;
      headerAt = pos;
    } else {
      this.#pageHeader.set(chunk.subarray(pos, pos + n), pageOffset);
      if (pageOffset + n === headerBytes) headerView = this.#pageHeaderView;
    }
    if (headerView !== null) {
      // A record starts 8-aligned, so at least its 4-byte xl_tot_len is on the page before: the length is known.
      assert(this.#phase !== RECORD || this.#recordTotalBytes >= RECORD_HEADER_BYTES, 'continued record has a known length');
      const expected = this.#phase === RECORD ? this.#recordTotalBytes - this.#recordReadBytes : this.#phase === CONTRECORD_SKIP ? this.#skipBytes : 0;
      const errorLo = this.#phase === RECORD ? this.#recordLo : pageLo;
      const errorHi = this.#phase === RECORD ? this.#recordHi : this.#segmentHi;
      const remainingBytes = checkPageHeader(this.#page, headerView, headerAt, this.#segmentHi, pageLo, this.#offsetBytes === pageOffset, expected, errorHi, errorLo);
      if (remainingBytes === CONTRECORD_OVERWRITTEN) {
        this.#abandonContinuation();
      } else if (this.#phase === RECORD_START && remainingBytes > 0) {
        this.#phase = CONTRECORD_SKIP; // checkPageHeader allowed it: skipLeadingContrecord was set
        this.#skipBytes = remainingBytes;
      }
    }
    this.#offsetBytes += n; // a header never ends a segment
    return n;
  }

  /**
   * Drops the record being continued (or the leading continuation being skipped) at a page flagged
   * XLP_FIRST_IS_OVERWRITE_CONTRECORD: a new record starts after this page's header. As in xlogreader.c,
   * which restarts at the page and checks the next xl_prev against the last record it decoded, the end and
   * the xl_prev chain stay at the last complete record. We do not check that the new record is an
   * XLOG_OVERWRITE_CONTRECORD whose overwritten_lsn is the dropped record's start: xlogreader does not
   * (pg_waldump and logical decoding read any record there); only redo (xlogrecovery.c) compares
   * overwritten_lsn, and only when the record is one. Refusing WAL that PostgreSQL's reader accepts would
   * wedge every acceptor again, the CRC already vouches that PostgreSQL wrote the record, and after a start
   * at a page (skipLeadingContrecord) the dropped record's start is not known here.
   */
  #abandonContinuation(): void {
    assert(this.#phase === RECORD || this.#phase === CONTRECORD_SKIP, 'only a continuation is abandoned');
    this.#phase = RECORD_START;
    this.#skipBytes = 0;
    this.#recordTotalBytes = 0;
    this.#recordReadBytes = 0;
    this.#recordCrc = 0;
  }

  #checkHeader(totalBytes: number, prevLo: number, prevHi: number): void {
    this.#checkTotalLength(totalBytes);
    this.#checkPrev(prevLo, prevHi);
  }

  #checkTotalLength(totalBytes: number): void {
    if (totalBytes < RECORD_HEADER_BYTES || totalBytes > RECORD_BYTES_MAX) {
      this.#fail('bad_record_length', this.#recordLsn(), `invalid record length ${totalBytes}`);
    }
  }

  #checkPrev(prevLo: number, prevHi: number): void {
    if (this.#prevKnown && (prevLo !== this.#prevLo || prevHi !== this.#prevHi)) {
      this.#fail('bad_record_prev', this.#recordLsn(), `record has xl_prev ${formatLsn(lsnOf(prevHi, prevLo))}, expected ${formatLsn(lsnOf(this.#prevHi, this.#prevLo))}`);
    }
  }

  /** The record ends at the current position: move the flush point and skip padding (or the switch tail). */
  #finishRecord(rmid: number, info: number, onRecord: ((startLsn: Lsn, endLsn: Lsn, rmid: number, info: number) => void) | undefined): void {
    const skipBytes = isSwitchRecord(rmid, info) ? (this.#offsetBytes === 0 ? 0 : this.#segmentSizeBytes - this.#offsetBytes) : padTo8(this.#offsetBytes);
    this.#endHi = this.#segmentHi;
    this.#endLo = this.#segmentLo + this.#offsetBytes + skipBytes;
    this.#prevKnown = true;
    this.#prevHi = this.#recordHi;
    this.#prevLo = this.#recordLo;
    this.#startSkip(skipBytes);
    if (onRecord !== undefined) onRecord(this.#recordLsn(), this.lastRecordEndLsn, rmid, info);
  }

  #startSkip(skipBytes: number): void {
    this.#skipBytes = skipBytes;
    this.#phase = skipBytes === 0 ? RECORD_START : SKIP;
  }

  #advance(bytes: number): void {
    this.#offsetBytes += bytes;
    if (this.#offsetBytes === this.#segmentSizeBytes) {
      this.#segmentBaseLsn += BigInt(this.#segmentSizeBytes);
      this.#segmentHi = Number(this.#segmentBaseLsn >> 32n);
      this.#segmentLo = Number(this.#segmentBaseLsn & 0xffff_ffffn);
      this.#offsetBytes = 0;
    }
  }

  #recordLsn(): Lsn {
    return lsnOf(this.#recordHi, this.#recordLo);
  }

  #fail(kind: WalCorruptionKind, lsn: Lsn, detail: string): never {
    throw new WalCorruptionError(kind, lsn, `${detail} at ${formatLsn(lsn)}`);
  }
}

