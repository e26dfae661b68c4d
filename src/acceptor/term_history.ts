/**
 * Term history helpers (protocol doc §4.2, §4.5). A history is a list of (term, start LSN) entries:
 * terms strictly ascending, LSNs non-decreasing (a term that wrote nothing starts where the next one
 * does). The acceptor's stored history may extend past its local WAL, because it is adopted wholesale
 * from the proposer before the WAL arrives; helpers that reason about local WAL cut it at flush_lsn.
 * Pure; any thread.
 */
import { ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';
import type { Lsn } from '../wal/lsn.js';
import type { TermHistory, TermLsn } from './state.js';

/**
 * The most entries a term history may have: the control file must hold it (storage/control_file.ts asserts
 * that this many entries of the largest size leave room there for the other fields). A history grows by one
 * entry per election, and Neon never trims it (neondatabase/neon#1562), so the bound sits just under what
 * the body allows rather than near what a timeline usually needs.
 */
export const TERM_HISTORY_ENTRIES_MAX = 10_000;

/** Why `history` is not a valid history, or null if it is. */
export function historyProblem(history: readonly TermLsn[]): string | null {
  for (let index = 1; index < history.length; index += 1) {
    const previous = history[index - 1];
    const current = history[index];
    assert(previous !== undefined && current !== undefined);
    if (current.term <= previous.term) return `terms not ascending at entry ${index} (${previous.term} then ${current.term})`;
    if (current.lsn < previous.lsn) return `LSNs decreasing at entry ${index} (${previous.lsn} then ${current.lsn})`;
  }
  return null;
}

export const isValidHistory = (history: readonly TermLsn[]): boolean => historyProblem(history) === null;

/** Neon's `up_to`: a copy without the entries that start after `flushLsn`. */
export function truncateHistory(history: readonly TermLsn[], flushLsn: Lsn): TermHistory {
  const kept: TermHistory = [];
  for (const entry of history) {
    if (entry.lsn > flushLsn) break;
    kept.push({ term: entry.term, lsn: entry.lsn });
  }
  return kept;
}

/** The term of the last entry that starts at or before `flushLsn`; 0 if none. */
export function lastLogTerm(history: readonly TermLsn[], flushLsn: Lsn): bigint {
  let term = 0n;
  for (const entry of history) {
    if (entry.lsn > flushLsn) break;
    term = entry.term;
  }
  return term;
}

/** Where the history's last term starts (the proposer's term start LSN). The history must not be empty. */
export function termStartLsn(history: readonly TermLsn[]): Lsn {
  const last = history[history.length - 1];
  assert(last !== undefined, 'term start of an empty history');
  return last.lsn;
}

/**
 * The highest point the proposer's history and the local WAL share (protocol doc §4.5 step 3), or
 * null when they share no term (the caller then streams from the proposer's first entry). Arguments
 * are not symmetric: the proposer's last term extends to infinity, the local one ends at
 * `localFlushLsn`. `localHistory` must already be cut at `localFlushLsn` (asserted).
 *
 * A shared term with different start LSNs cannot come from a correct proposer; Neon asserts, but as
 * it is remote input we throw ProtocolViolationError instead of crashing the node.
 */
export function findHighestCommonPoint(proposerHistory: readonly TermLsn[], localHistory: readonly TermLsn[], localFlushLsn: Lsn): TermLsn | null {
  const localLast = localHistory[localHistory.length - 1];
  if (localLast !== undefined) assert(localLast.lsn <= localFlushLsn, 'local history extends past local flush_lsn');

  let lastCommonIndex = -1;
  const sharedLength = Math.min(proposerHistory.length, localHistory.length);
  for (let index = 0; index < sharedLength; index += 1) {
    const proposed = proposerHistory[index];
    const local = localHistory[index];
    assert(proposed !== undefined && local !== undefined);
    if (proposed.term !== local.term) break;
    if (proposed.lsn !== local.lsn) {
      throw new ProtocolViolationError('ProposerElected', `term ${proposed.term} starts at ${proposed.lsn} in the proposer's history but at ${local.lsn} locally`);
    }
    lastCommonIndex = index;
  }
  if (lastCommonIndex < 0) return null;

  const common = proposerHistory[lastCommonIndex];
  assert(common !== undefined);
  // The common term ends where the next term starts; the proposer's last term never ends, and the
  // local last term ends at the local flush position. The common point is the earlier end.
  const proposerNext = proposerHistory[lastCommonIndex + 1];
  if (proposerNext === undefined) return { term: common.term, lsn: localFlushLsn };
  const localEnd = localHistory[lastCommonIndex + 1]?.lsn ?? localFlushLsn;
  return { term: common.term, lsn: proposerNext.lsn < localEnd ? proposerNext.lsn : localEnd };
}
