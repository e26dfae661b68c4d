/**
 * Page-header validation for the WAL record decoder (`record_decoder.ts`), kept apart so the decoder's loop
 * stays readable. Rules follow PostgreSQL's XLogReaderValidatePageHeader plus the continuation checks of
 * XLogReadRecord; see the decoder's header for the list. Runs once per 8 KiB page, so it may allocate on the
 * error path only. Pure apart from `PageCheckContext`, which it updates (first system id, one-shot skip flag).
 */
import { WalCorruptionError } from '../errors.js';
import { formatLsn, type Lsn, WAL_PAGE_SIZE_BYTES } from './lsn.js';
import { XLP_ALL_FLAGS, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER } from './page.js';
import { lsnOf } from './record_decoder_state.js';

export interface PageCheckContext {
  readonly magic: number;
  readonly segmentSizeBytes: number;
  /** Set from the first long header seen; later long headers must match. */
  systemId: bigint | null;
  /** One-shot: the next page may start with a continuation record, which the decoder then skips. */
  skipLeadingContrecord: boolean;
}

function fail(kind: WalCorruptionError['kind'], hi: number, lo: number, detail: string): never {
  const lsn = lsnOf(hi, lo);
  throw new WalCorruptionError(kind, lsn, `${detail} at ${formatLsn(lsn)}`);
}

/**
 * Validates the page header at `view[at]` for the page at LSN (pageHi, pageLo). `expectedRemainingBytes` is
 * how much of a continued record is still missing (0 when a new record is expected); continuation errors are
 * reported at (errorHi, errorLo), the continued record's start. Returns xlp_rem_len.
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
    if (!isContinuation) fail('missing_contrecord', errorHi, errorLo, `record continues on page ${formatLsn(lsnOf(pageHi, pageLo))} without a contrecord flag`);
    if (remainingBytes !== expectedRemainingBytes) {
      fail('bad_contrecord_length', errorHi, errorLo, `contrecord length ${remainingBytes} on page ${formatLsn(lsnOf(pageHi, pageLo))}, expected ${expectedRemainingBytes}`);
    }
    return remainingBytes;
  }
  if (isContinuation) {
    if (!skipAllowed) fail('unexpected_contrecord', pageHi, pageLo, 'contrecord flag where a new record was expected');
    if (remainingBytes === 0) fail('bad_page_header', pageHi, pageLo, 'contrecord flag with zero remaining length');
    return remainingBytes;
  }
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
