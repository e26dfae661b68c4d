/**
 * Page-header validation for the WAL record decoder (`record_decoder.ts`), kept apart so the decoder's loop
 * stays readable. Rules follow PostgreSQL's XLogReaderValidatePageHeader plus the continuation checks of
 * XLogDecodeNextRecord (xlogreader.c), including its XLP_FIRST_IS_OVERWRITE_CONTRECORD restart; see the
 * decoder's header for the list. Runs once per 8 KiB page, so it may allocate on the error path only. Pure
 * apart from `PageCheckContext`, which it updates (first system id, one-shot skip flag).
 */
import { WalCorruptionError } from '../errors.js';
import { formatLsn, type Lsn, WAL_PAGE_SIZE_BYTES } from './lsn.js';
import { XLP_ALL_FLAGS, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER } from './page.js';
import { lsnOf } from './record_decoder_state.js';

export interface PageCheckContext {
  readonly magic: number;
  readonly segmentSizeBytes: number;
  /** Set from the first long header seen; later long headers must match. */
  systemId: bigint | null;
  /** One-shot: the next page may start with a continuation record, which the decoder then skips. */
  skipLeadingContrecord: boolean;
}

/**
 * checkPageHeader's answer for a page that abandons the continued record: after a crash cut that record,
 * PostgreSQL's recovery wrote this page with XLP_FIRST_IS_OVERWRITE_CONTRECORD, and a new record starts
 * right after its header. Never a valid xlp_rem_len, which is a u32.
 */
export const CONTRECORD_OVERWRITTEN = -1;

function fail(kind: WalCorruptionError['kind'], hi: number, lo: number, detail: string): never {
  const lsn = lsnOf(hi, lo);
  throw new WalCorruptionError(kind, lsn, `${detail} at ${formatLsn(lsn)}`);
}

/**
 * Validates the page header at `view[at]` for the page at LSN (pageHi, pageLo). `expectedRemainingBytes` is
 * how much of a continued record is still missing (0 when a new record is expected); continuation errors are
 * reported at (errorHi, errorLo), the continued record's start. Returns xlp_rem_len, the length of a leading
 * continuation to skip (with skipLeadingContrecord), or CONTRECORD_OVERWRITTEN.
 */
export function checkPageHeader(
  context: PageCheckContext, view: DataView, at: number, pageHi: number, pageLo: number, isSegmentStart: boolean,
  expectedRemainingBytes: number, errorHi: number, errorLo: number,
): number {
  const magic = view.getUint16(at, true);
  if (magic !== context.magic) fail('bad_page_magic', pageHi, pageLo, `page magic 0x${magic.toString(16)}, expected 0x${context.magic.toString(16)}`);
  const info = view.getUint16(at + 2, true);
  if ((info & ~XLP_ALL_FLAGS) !== 0) fail('bad_page_header', pageHi, pageLo, `invalid page info bits 0x${info.toString(16)}`);
  const isLong = (info & XLP_LONG_HEADER) !== 0;
  if (isLong !== isSegmentStart) fail('bad_page_header', pageHi, pageLo, isLong ? 'long page header in mid-segment' : 'segment start without a long page header');
  if (isLong) checkLongFields(context, view, at, pageHi, pageLo);
  const addrLo = view.getUint32(at + 8, true);
  const addrHi = view.getUint32(at + 12, true);
  if (addrLo !== pageLo || addrHi !== pageHi) fail('bad_page_address', pageHi, pageLo, `page address ${formatLsn(lsnOf(addrHi, addrLo))}`);
  const remainingBytes = view.getUint32(at + 16, true);
  const isContinuation = (info & XLP_FIRST_IS_CONTRECORD) !== 0;
  const skipAllowed = context.skipLeadingContrecord;
  context.skipLeadingContrecord = false;
  if (expectedRemainingBytes > 0) {
    if ((info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0) {
      // As XLogDecodeNextRecord: the flag is looked at (before the contrecord flag) only while a record is
      // being continued, and then the read restarts at this page as if a new record were expected here, so
      // a contrecord flag too is an error ("contrecord is requested by"). Elsewhere the flag is ignored.
      checkNewRecordPage(isContinuation, remainingBytes, false, pageHi, pageLo);
      return CONTRECORD_OVERWRITTEN;
    }
    if (!isContinuation) fail('missing_contrecord', errorHi, errorLo, `record continues on page ${formatLsn(lsnOf(pageHi, pageLo))} without a contrecord flag`);
    if (remainingBytes !== expectedRemainingBytes) {
      fail('bad_contrecord_length', errorHi, errorLo, `contrecord length ${remainingBytes} on page ${formatLsn(lsnOf(pageHi, pageLo))}, expected ${expectedRemainingBytes}`);
    }
    return remainingBytes;
  }
  return checkNewRecordPage(isContinuation, remainingBytes, skipAllowed, pageHi, pageLo);
}

/** The rules for a page where a new record is expected. Returns the length of a leading continuation to skip, or 0. */
function checkNewRecordPage(isContinuation: boolean, remainingBytes: number, skipAllowed: boolean, pageHi: number, pageLo: number): number {
  if (isContinuation) {
    if (!skipAllowed) fail('unexpected_contrecord', pageHi, pageLo, 'contrecord flag where a new record was expected');
    if (remainingBytes === 0) fail('bad_page_header', pageHi, pageLo, 'contrecord flag with zero remaining length');
    return remainingBytes;
  }
  // Stricter than PostgreSQL, which does not look at xlp_rem_len here; it always writes 0 on such a page.
  if (remainingBytes !== 0) fail('bad_page_header', pageHi, pageLo, `remaining length ${remainingBytes} without a contrecord flag`);
  return 0;
}

function checkLongFields(context: PageCheckContext, view: DataView, at: number, pageHi: number, pageLo: number): void {
  const segmentSizeBytes = view.getUint32(at + 32, true);
  if (segmentSizeBytes !== context.segmentSizeBytes) fail('bad_page_header', pageHi, pageLo, `segment size ${segmentSizeBytes}, expected ${context.segmentSizeBytes}`);
  const pageSizeBytes = view.getUint32(at + 36, true);
  if (pageSizeBytes !== WAL_PAGE_SIZE_BYTES) fail('bad_page_header', pageHi, pageLo, `WAL block size ${pageSizeBytes}, expected ${WAL_PAGE_SIZE_BYTES}`);
  const systemId = view.getBigUint64(at + 24, true);
  if (context.systemId === null) context.systemId = systemId;
  else if (systemId !== context.systemId) fail('bad_page_header', pageHi, pageLo, `system id ${systemId}, expected ${context.systemId}`);
}
