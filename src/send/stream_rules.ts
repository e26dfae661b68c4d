/**
 * The rules of a START_REPLICATION stream, apart from its I/O (wal_sender.ts runs the loop): where the
 * stream may read up to (§5.1), how its WAL is cut into XLogData messages (§5.2), when a caught-up
 * pageserver is sent away (§5.3), and the errors that end it when the acceptor's term or WAL moves under it.
 *
 * Design: pure functions over the acceptor's positions, so the bounds are the same in every place the
 * loop checks them (before a read, after it, and while waiting) and tests call them directly. Chunks end
 * on one shared 128 KiB grid, so readers following the tip read identical ranges and share ring copies.
 * Main thread; nothing here waits.
 */
import type { Acceptor } from '../acceptor/acceptor.js';
import { SafekeeperError } from '../errors.js';
import { StreamEndedError } from '../pg/sqlstate.js';
import { assert } from '../sync/assert.js';
import { type Lsn, WAL_PAGE_SIZE_BYTES, formatLsn, lsnMin } from '../wal/lsn.js';
import type { ReaderFeedback } from './reader_set.js';

/** walsender's MAX_SEND_SIZE (16 WAL pages), which Neon and the reference use too. */
export const XLOG_DATA_WAL_BYTES_MAX = 16 * WAL_PAGE_SIZE_BYTES;
assert(XLOG_DATA_WAL_BYTES_MAX % WAL_PAGE_SIZE_BYTES === 0, 'chunk grid boundaries are page boundaries');

/** In term mode the acceptor moved to another term. */
export class TermMismatchError extends SafekeeperError {
  override readonly name = 'TermMismatchError';
  readonly code = 'SK_TERM_MISMATCH';
  readonly sqlState = 'XX000'; // Neon reports it as a plain error
}

/** WAL already sent to this reader was truncated away (term mode, after a re-election). */
export class WalTruncatedError extends SafekeeperError {
  override readonly name = 'WalTruncatedError';
  readonly code = 'SK_WAL_TRUNCATED';
  readonly sqlState = 'XX000';
}

/** The end of what a stream may send (§5.1): commit_lsn (capped by flush_lsn) without a term; flush_lsn with one. */
export function availableEndLsn(acceptor: Pick<Acceptor, 'commitLsn' | 'flushLsn'>, term: bigint | null): Lsn {
  const flushLsn = acceptor.flushLsn;
  return term === null ? lsnMin(acceptor.commitLsn, flushLsn) : flushLsn;
}

/** Term mode: the acceptor's term must still be the requested one, else TermMismatchError. */
export function requireTerm(acceptor: Pick<Acceptor, 'term'>, term: bigint | null): void {
  if (term !== null && acceptor.term !== term) throw new TermMismatchError(`failed to acquire term ${term}, current term ${acceptor.term}`);
}

/**
 * The end of the XLogData starting at `lsn` (§5.2): at most XLOG_DATA_WAL_BYTES_MAX; when it stops before
 * `readableEndLsn`, at the next multiple of XLOG_DATA_WAL_BYTES_MAX, which is a page boundary (Neon rounds
 * lsn + 128 KiB down to a page; rounding to the 128 KiB grid also puts every reader's chunks on the same
 * boundaries, so readers following the tip share ring copies); never across a segment boundary.
 * Pure; exported for tests.
 */
export function xlogDataEndLsn(lsn: Lsn, readableEndLsn: Lsn, segmentSizeBytes: number): Lsn {
  assert(lsn < readableEndLsn, 'something to send');
  const chunk = BigInt(XLOG_DATA_WAL_BYTES_MAX);
  let endLsn = (lsn / chunk + 1n) * chunk;
  if (endLsn >= readableEndLsn) endLsn = readableEndLsn;
  const segment = BigInt(segmentSizeBytes);
  const segmentEndLsn = (lsn / segment + 1n) * segment;
  if (endLsn > segmentEndLsn) endLsn = segmentEndLsn;
  assert(endLsn > lsn, 'a chunk is never empty');
  return endLsn;
}

/** What the §5.3 rule looks at, read when the stream has waited a keepalive interval for new WAL. */
export interface CaughtUpFacts {
  /** The reader's latest feedback (its slot's). */
  feedback: ReaderFeedback;
  /** Computes (proposers) connected to the timeline now. */
  proposerCount: bigint;
  commitLsn: Lsn;
  applicationName: string | null;
}

/** §5.3: a pageserver (by its feedback) that has everything, with no compute connected, is sent away (StreamEndedError). */
export function checkPageserverCaughtUp(facts: CaughtUpFacts, lsn: Lsn): void {
  const feedback = facts.feedback;
  if (feedback.kind !== 'pageserver' || facts.proposerCount !== 0n) return;
  if (facts.commitLsn !== 0n && feedback.feedback.remoteConsistentLsn < facts.commitLsn) return;
  const name = facts.applicationName;
  // "ending streaming" is what the pageserver matches on; the rest mirrors Neon's Debug formatting.
  throw new StreamEndedError(`ending streaming to ${name === null ? 'None' : `Some(${JSON.stringify(name)})`} at ${formatLsn(lsn)}, receiver is caughtup and there is no computes`);
}
