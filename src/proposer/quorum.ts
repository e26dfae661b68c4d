/**
 * Quorum arithmetic of the walproposer (protocol reference §4.7), as pure functions over plain LSNs so the
 * unit tests can drive them with fake acceptors.
 *
 * commit_lsn: the highest LSN a majority has flushed, counting only flushes at or above the term start
 * (like Raft, a leader never commits entries of earlier terms by counting replicas: a flush below the term
 * start may hold another term's WAL). truncate_lsn: the lowest flush over every safekeeper (offline ones keep
 * their last known value), capped at commit_lsn, so it never runs ahead of what is committed.
 * Members: each safekeeper counts once, so the configured list names each address once
 * (`duplicateSafekeeper`); two names of one node are caught later, by node id (`proposer.ts`).
 * Pure; any thread.
 */
import { formatHostPort, type HostPort } from '../config/value_parsers.js';
import { assert } from '../sync/assert.js';
import type { Lsn } from '../wal/lsn.js';

/** Votes (and acks) needed out of `memberCount` safekeepers: a strict majority. */
export function quorumSize(memberCount: number): number {
  assert(Number.isInteger(memberCount) && memberCount > 0, 'at least one safekeeper');
  return Math.floor(memberCount / 2) + 1;
}

/**
 * The quorum-th highest flush_lsn, with flushes below `termStartLsn` counted as 0. `flushLsns` has one
 * entry per configured safekeeper. 0 when no majority has reached the term start yet.
 */
export function quorumCommitLsn(flushLsns: readonly Lsn[], termStartLsn: Lsn): Lsn {
  const quorum = quorumSize(flushLsns.length);
  const counted = flushLsns.map((lsn) => (lsn >= termStartLsn ? lsn : 0n));
  counted.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const commit = counted[counted.length - quorum];
  assert(commit !== undefined, 'quorum within the member count');
  return commit;
}

/** min(flush over all safekeepers, commitLsn): what every safekeeper has, as far as it is committed. */
export function truncateLsnCandidate(flushLsns: readonly Lsn[], commitLsn: Lsn): Lsn {
  let lowest = commitLsn;
  for (const lsn of flushLsns) if (lsn < lowest) lowest = lsn;
  return lowest;
}

/**
 * The first address listed twice in `safekeepers` (host names compare case-insensitively), as
 * [first spelling, second spelling]; null if every address is distinct.
 */
export function duplicateSafekeeper(safekeepers: readonly HostPort[]): [string, string] | null {
  const seen = new Map<string, string>();
  for (const address of safekeepers) {
    const key = `${address.host.toLowerCase()}:${address.port}`;
    const earlier = seen.get(key);
    if (earlier !== undefined) return [earlier, formatHostPort(address)];
    seen.set(key, formatHostPort(address));
  }
  return null;
}
