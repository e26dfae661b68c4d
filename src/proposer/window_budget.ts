/**
 * The WAL window's budget, as pure functions over LSNs so unit tests can run a whole catch-up with fake
 * acceptors: how far the source may run ahead (`sourceMayAppend`) and how much of the window's start the
 * proposer may drop (`windowTrimLsn`). `proposer.ts` applies both.
 *
 * WAL is owed to the quorum from max(commit_lsn, term start) on. WAL above that exists only in the window
 * and on the safekeepers that flushed it, so it stays in the window, and the source waits while
 * UNCOMMITTED_BYTES_MAX of it is outstanding. WAL below the term start (a source rewound to feed lagging
 * voters) is not owed: the donor flushed all of it before it voted, and serves it to any link in our term
 * (term-mode START_REPLICATION, `donor_reader.ts`), so it does not count against the budget and may leave
 * the window like committed WAL; a link whose next LSN is then below the window recovers from a donor.
 * Counting it from the source start, as we once did, stalled the proposer for good: commit_lsn stays 0 until
 * a majority reaches the term start, the window could not drop WAL below it, and with more than the budget
 * (or the window) between the source start and the term start the source paused with the voters that lag
 * still below the term start.
 * Invariants: the trim point is never above max(commit_lsn, term start), so WAL that is neither on a
 * majority nor on the donor stays; unless the window is nearly full it is never above the lowest flush_lsn,
 * so WAL a link still reads stays. Neither function touches commit_lsn, the only LSN ever reported to the
 * primary. A link below the window needs a donor in our term to be streaming (`recoveryDonor`); until one
 * is, it retries with backoff, as for committed WAL. Pure; main thread.
 */
import type { Lsn } from '../wal/lsn.js';
import { APPEND_BYTES_MAX, UNCOMMITTED_BYTES_MAX } from './limits.js';

/** What the budget reads of the window (`WalWindow` has these). */
export interface WindowExtent {
  readonly startLsn: Lsn;
  readonly endLsn: Lsn;
  readonly capacityBytes: number;
}

/** Where the WAL the quorum is owed begins: max(commit_lsn, term start). Below it, a donor has every byte. */
export const owedFromLsn = (commitLsn: Lsn, termStartLsn: Lsn): Lsn => (commitLsn > termStartLsn ? commitLsn : termStartLsn);

/**
 * Where the window may be trimmed to: what the slowest safekeeper still needs (`flushLsns`, one per
 * configured safekeeper; offline ones keep their last value), or, when the window is nearly full, only its
 * newer half (hysteresis, so the source gets room for many appends at once). Never above `owedFromLsn`.
 */
export function windowTrimLsn(window: WindowExtent, flushLsns: readonly Lsn[], commitLsn: Lsn, termStartLsn: Lsn): Lsn {
  let keepFromLsn = window.endLsn;
  for (const lsn of flushLsns) if (lsn < keepFromLsn) keepFromLsn = lsn;
  if (window.endLsn - window.startLsn >= BigInt(window.capacityBytes - 2 * APPEND_BYTES_MAX)) {
    const halfLsn = window.endLsn - BigInt(window.capacityBytes / 2);
    if (halfLsn > keepFromLsn) keepFromLsn = halfLsn;
  }
  const owedLsn = owedFromLsn(commitLsn, termStartLsn);
  return keepFromLsn < owedLsn ? keepFromLsn : owedLsn;
}

/** Whether the source may append now: the window has room, and at most UNCOMMITTED_BYTES_MAX are owed. */
export function sourceMayAppend(window: WindowExtent, commitLsn: Lsn, termStartLsn: Lsn): boolean {
  const windowBytes = window.endLsn - window.startLsn;
  const owedBytes = window.endLsn - owedFromLsn(commitLsn, termStartLsn);
  return windowBytes < BigInt(window.capacityBytes) && owedBytes <= BigInt(UNCOMMITTED_BYTES_MAX);
}
