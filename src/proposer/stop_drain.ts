/**
 * The proposer's clean stop (SIGTERM, a finished synthetic run): before the safekeeper connections close,
 * every streaming safekeeper should have acknowledged all the WAL of the window and the final commit_lsn.
 * Without this the last commit_lsn reaches the safekeepers only with the next broadcast
 * (COMMIT_BROADCAST_DELAY_MS later), which a stop cuts off, so their commit_lsn (up to which readers are
 * served) stays behind the last commit until the next proposer.
 * The proposer has stopped the source and set its `stopping` flag (links then send a new commit_lsn at once)
 * but keeps the links running; `drainFinalCommit` waits on AppendResponses, which carry each safekeeper's
 * flush_lsn and applied commit_lsn. Bounded by STOP_DRAIN_MS_MAX: a dead or stuck safekeeper is logged at
 * warn, never waited on longer. A link that is not streaming (down, recovering from a donor) is not waited on.
 * The window may end inside a record: the walsender sends what the primary flushed, and a background flush
 * ends at a page boundary. A safekeeper acknowledges whole records only, so its flush_lsn then stays short of
 * the window end. Such a link counts as done once it has all its WAL sent, has acknowledged a commit_lsn equal
 * to its flush_lsn, and no AppendResponse arrived for STOP_SETTLE_MS (WAL still in flight would bring one).
 * Abort-safe: `signal` (the links' token, cancelled by a fatal error) ends the wait at once. Main thread.
 */
import type { Logger } from '../log.js';
import { CancelToken, sleep } from '../sync/cancel.js';
import type { Watch } from '../sync/watch.js';
import type { Lsn } from '../wal/lsn.js';
import type { AcceptorLink } from './acceptor_link.js';
import { COMMIT_BROADCAST_DELAY_MS, STOP_DRAIN_MS_MAX, STOP_SETTLE_MS } from './limits.js';
import type { WalWindow } from './wal_window.js';

/** What the drain reads of a link. */
export type DrainedLink = Pick<AcceptorLink, 'name' | 'state' | 'flushLsn' | 'streamingAtLsn' | 'ackedCommitLsn'>;

/**
 * Streaming links that still lack WAL below `endLsn` or have not acknowledged `commitLsn`, by name. With
 * `settled` (no AppendResponse for STOP_SETTLE_MS), a link short of `endLsn` only by a record its safekeeper
 * cannot acknowledge yet (everything sent, commit_lsn = its flush_lsn acknowledged) is not owed. Pure.
 */
export function owingFinalCommit(links: readonly DrainedLink[], endLsn: Lsn, commitLsn: Lsn, settled = false): string[] {
  const owes = (link: DrainedLink): boolean => {
    if (link.state !== 'streaming') return false;
    if (link.ackedCommitLsn < commitLsn) return true;
    if (link.flushLsn >= endLsn) return false;
    return !(settled && link.streamingAtLsn >= endLsn && link.flushLsn === commitLsn);
  };
  return links.filter(owes).map((link) => link.name);
}

export interface DrainArgs {
  links: readonly DrainedLink[];
  window: WalWindow;
  /** The quorum's commit_lsn (it may still move while in-flight WAL is acknowledged). */
  commit: Watch<Lsn>;
  /** Bumped on every AppendResponse while someone waits on it. */
  acks: Watch<number>;
  log: Logger;
  signal: AbortSignal;
}

/** Waits as the header says; never throws. */
export async function drainFinalCommit(args: DrainArgs): Promise<void> {
  const { links, window, commit, acks, log, signal } = args;
  const startedMs = performance.now();
  const deadline = new CancelToken();
  const onAbort = (): void => deadline.cancel(signal.reason);
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  const timer = setTimeout(() => deadline.cancel(), STOP_DRAIN_MS_MAX);
  let owing = owingFinalCommit(links, window.endLsn, commit.value);
  let lastAckMs = startedMs;
  try {
    // Each round waits for an AppendResponse, or a short while: a link that drops out changes the answer without one.
    while (owing.length > 0 && !deadline.cancelled) {
      const round = deadline.child();
      const seenVersion = acks.version;
      try {
        await Promise.race([acks.changed(seenVersion, round.signal), sleep(COMMIT_BROADCAST_DELAY_MS, round.signal)]);
      } catch {
        // Only a cancellation rejects these waits: the deadline, or a fatal error cancelling the links.
      } finally {
        round.cancel();
        round.release();
      }
      if (acks.version !== seenVersion) lastAckMs = performance.now();
      owing = owingFinalCommit(links, window.endLsn, commit.value, performance.now() - lastAckMs >= STOP_SETTLE_MS);
    }
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
    deadline.cancel();
  }
  if (signal.aborted) return; // a fatal error: the proposer reports that instead
  const fields = { commit_lsn: commit.value, window_end_lsn: window.endLsn, waited_ms: Math.round(performance.now() - startedMs) };
  if (owing.length === 0) log.info(fields, 'stopping: every connected safekeeper has the final commit_lsn');
  else log.warn({ ...fields, safekeepers: owing }, 'stopping without every connected safekeeper acknowledging the final commit_lsn');
}
