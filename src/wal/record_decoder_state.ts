/**
 * The WAL record decoder's resumable state (see `record_decoder.ts`): a plain object of numbers, bigints and
 * two small byte arrays, so it can be structured-cloned (postMessage'd to a worker) and resumed there. Also
 * the layout helpers the decoder shares with it. Pure; any thread.
 */
import { InvalidArgumentError, type WalCorruptionError } from '../errors.js';
import { formatLsn, isValidSegmentSize, type Lsn, WAL_PAGE_SIZE_BYTES } from './lsn.js';
import { LONG_PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, SHORT_PAGE_HEADER_BYTES, pageMagicForPgVersion } from './page.js';

export type WalCorruptionKind = WalCorruptionError['kind'];
export type DecoderPhase = 'record_start' | 'record' | 'skip' | 'contrecord_skip';

/** Everything needed to resume at `lsn`: primitives, bigints and two small byte arrays (structured-cloneable). */
export interface DecoderState {
  segmentSizeBytes: number;
  /** server_version_num, e.g. 150008. */
  pgVersion: number;
  /** The next byte expected. */
  lsn: Lsn;
  lastRecordEndLsn: Lsn;
  phase: DecoderPhase;
  /** Until the next page header: a continuation record found there is skipped instead of refused. */
  skipLeadingContrecord: boolean;
  /** 'skip': padding or post-switch bytes left; 'contrecord_skip': bytes of the leading continuation left. */
  skipBytes: number;
  /** 'record': where the record started, its xl_tot_len (0 until known), bytes consumed, CRC of the body so far. */
  recordStartLsn: Lsn;
  recordTotalBytes: number;
  recordReadBytes: number;
  recordCrc: number;
  /** 24 bytes; the first min(recordReadBytes, 24) are the current record's header. */
  recordHeader: Uint8Array;
  /** 40 bytes; when `lsn` is inside a page header, the bytes of it before `lsn`. */
  pageHeader: Uint8Array;
  /** Start of the last verified record, for the xl_prev check; null until one is seen. */
  prevRecordLsn: Lsn | null;
  /** xlp_sysid of the first long page header seen; later ones must match. */
  systemId: bigint | null;
}

export const PAGE_MASK = WAL_PAGE_SIZE_BYTES - 1;
/** Phase names by the decoder's internal phase number. */
export const PHASES: readonly DecoderPhase[] = ['record_start', 'record', 'skip', 'contrecord_skip'];

export const lsnOf = (hi: number, lo: number): Lsn => (BigInt(hi) << 32n) + BigInt(lo);
/** Page header size at a segment offset: long on the segment's first page. */
export const headerBytesAt = (segmentOffsetBytes: number): number => (segmentOffsetBytes < WAL_PAGE_SIZE_BYTES ? LONG_PAGE_HEADER_BYTES : SHORT_PAGE_HEADER_BYTES);

/**
 * Why a decoder cannot start at `startLsn`, or null if it can: it must be a record start (8-byte aligned, past
 * any page header) or a page or segment start, where a page header comes first. The acceptor checks a
 * proposer's start_streaming_at with it, since its WAL is decoded from there. `segmentSizeBytes` must be valid.
 */
export function decoderStartProblem(startLsn: Lsn, segmentSizeBytes: number): string | null {
  if (startLsn < 0n || startLsn % 8n !== 0n) return 'is not 8-byte aligned';
  const segmentOffsetBytes = Number(startLsn % BigInt(segmentSizeBytes));
  const pageOffsetBytes = segmentOffsetBytes & PAGE_MASK;
  if (pageOffsetBytes !== 0 && pageOffsetBytes < headerBytesAt(segmentOffsetBytes)) return 'is inside a page header';
  return null;
}

/**
 * The state for a decoder starting at `startLsn` (see `decoderStartProblem`). With `skipLeadingContrecord`
 * (page starts only), a continuation record at the first page is skipped; use it when starting at a segment
 * that is not known to begin with a record. Throws InvalidArgumentError for bad arguments.
 */
export function initialDecoderState(args: { startLsn: Lsn; segmentSizeBytes: number; pgVersion: number; skipLeadingContrecord?: boolean }): DecoderState {
  const { startLsn, segmentSizeBytes, pgVersion } = args;
  if (!isValidSegmentSize(segmentSizeBytes)) throw new InvalidArgumentError(`segment size ${segmentSizeBytes} is not a power of two in [1 MiB, 1 GiB]`);
  pageMagicForPgVersion(pgVersion); // throws for unknown versions
  const problem = decoderStartProblem(startLsn, segmentSizeBytes);
  if (problem !== null) throw new InvalidArgumentError(`decoder start ${formatLsn(startLsn)} ${problem}`);
  const skipLeadingContrecord = args.skipLeadingContrecord ?? false;
  if (skipLeadingContrecord && (startLsn & BigInt(PAGE_MASK)) !== 0n) throw new InvalidArgumentError('skipLeadingContrecord needs a page-aligned start');
  return {
    segmentSizeBytes, pgVersion, lsn: startLsn, lastRecordEndLsn: startLsn, phase: 'record_start', skipLeadingContrecord,
    skipBytes: 0, recordStartLsn: 0n, recordTotalBytes: 0, recordReadBytes: 0, recordCrc: 0,
    recordHeader: new Uint8Array(RECORD_HEADER_BYTES), pageHeader: new Uint8Array(LONG_PAGE_HEADER_BYTES), prevRecordLsn: null, systemId: null,
  };
}
