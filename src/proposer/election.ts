/**
 * The walproposer's election rules (protocol reference §4.7, `pgxn/neon/walproposer.c`), as pure functions
 * over vote responses so unit tests can run elections over fake acceptors.
 *
 * - Term: 1 + the highest term among the greetings of the first majority that answered.
 * - Donor: the voter with the highest (last_log_term, flush_lsn); its flush_lsn is our term start LSN (0 when
 *   every voter is empty: the caller then asks the WAL source where a new timeline begins).
 * - Our history: the donor's history + (our term, term start). truncate_lsn starts as the highest voter's.
 * - Each acceptor's start point: the end of the last term its history shares with ours (Neon's
 *   SendProposerElected); it truncates its WAL there and we stream from there.
 * - Screening (`screenVoters`): a voter whose history is malformed, or gives a term it shares with the donor
 *   another start LSN, is refused; the election goes on with the rest if they are still a majority. One bad
 *   safekeeper must not stop the proposer, and a refused voter is exactly what the per-link path refuses.
 * Invariants: histories are ascending in term and LSN (checked); a shared term starts at the same LSN in both
 * histories (a remote acceptor breaking it is refused, not asserted). Pure; any thread.
 */
import type { VoteResponse } from '../acceptor/messages.js';
import type { TermHistory } from '../acceptor/state.js';
import { historyProblem } from '../acceptor/term_history.js';
import { ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';

export interface Voter {
  /** Position of the safekeeper in the configured list. */
  index: number;
  vote: VoteResponse;
}

export interface DonorChoice {
  index: number;
  lastLogTerm: bigint;
  /** The donor's flush_lsn: our term start LSN (0 if every voter is empty). */
  flushLsn: Lsn;
  history: TermHistory;
  /** The highest truncate_lsn among voters. */
  truncateLsn: Lsn;
}

/** The last term in a (flush-truncated) vote history; 0 if it is empty. */
export const lastLogTermOf = (history: TermHistory): bigint => history[history.length - 1]?.term ?? 0n;

/** Picks the donor among `voters` (at least one): highest (last_log_term, flush_lsn), the earliest on ties. */
export function chooseDonor(voters: readonly Voter[]): DonorChoice {
  assert(voters.length > 0, 'a donor needs voters');
  let best: DonorChoice | null = null;
  let truncateLsn = 0n;
  for (const { index, vote } of voters) {
    const problem = historyProblem(vote.termHistory);
    if (problem !== null) throw new ProtocolViolationError('VoteResponse', `term history: ${problem}`);
    const lastLogTerm = lastLogTermOf(vote.termHistory);
    if (best === null || lastLogTerm > best.lastLogTerm || (lastLogTerm === best.lastLogTerm && vote.flushLsn > best.flushLsn)) {
      best = { index, lastLogTerm, flushLsn: vote.flushLsn, history: vote.termHistory, truncateLsn: 0n };
    }
    if (vote.truncateLsn > truncateLsn) truncateLsn = vote.truncateLsn;
  }
  assert(best !== null);
  return { ...best, truncateLsn };
}

/** Our history: the donor's plus our own entry. Our term must be above every term in it. */
export function proposerHistory(donorHistory: TermHistory, term: bigint, termStartLsn: Lsn): TermHistory {
  const last = donorHistory[donorHistory.length - 1];
  if (last !== undefined) {
    assert(term > last.term, 'our term is above every term of the donor');
    assert(termStartLsn >= last.lsn, 'our term starts after the donor last term');
  }
  const history = donorHistory.map((entry) => ({ term: entry.term, lsn: entry.lsn }));
  history.push({ term, lsn: termStartLsn });
  assert(historyProblem(history) === null, 'proposer history is valid');
  return history;
}

/**
 * Where to start streaming to an acceptor with (flush-truncated) `acceptorHistory` and `acceptorFlushLsn`:
 * the end of the last term both histories share. Our last term never ends; an acceptor's last term ends at
 * its flush_lsn. No shared term: our first entry (the acceptor is empty or diverged from the start).
 * Throws ProtocolViolationError for a malformed acceptor history or a shared term that starts elsewhere.
 */
export function startStreamingLsn(history: TermHistory, term: bigint, acceptorHistory: TermHistory, acceptorFlushLsn: Lsn): Lsn {
  const first = history[0];
  assert(first !== undefined, 'a proposer history is never empty');
  const malformed = historyProblem(acceptorHistory);
  if (malformed !== null) throw new ProtocolViolationError('VoteResponse', `term history: ${malformed}`);
  const conflict = sharedTermConflict(history, acceptorHistory);
  if (conflict !== null) throw new ProtocolViolationError('VoteResponse', conflict);
  const common = sharedPrefixLength(history, acceptorHistory) - 1;
  if (common < 0) return first.lsn;
  const shared = history[common] as TermHistory[number];
  if (shared.term === term) return acceptorFlushLsn;
  const ourEnd = (history[common + 1] as TermHistory[number]).lsn;
  const theirEnd = acceptorHistory[common + 1]?.lsn ?? acceptorFlushLsn;
  return ourEnd < theirEnd ? ourEnd : theirEnd;
}

/** How many leading entries the two histories share by term. */
function sharedPrefixLength(ours: TermHistory, theirs: TermHistory): number {
  let length = 0;
  while (length < ours.length && length < theirs.length && (ours[length] as TermHistory[number]).term === (theirs[length] as TermHistory[number]).term) length += 1;
  return length;
}

/** A term both histories have but start at different LSNs (Neon asserts against it), described; else null. */
function sharedTermConflict(ours: TermHistory, theirs: TermHistory): string | null {
  const sharedLength = sharedPrefixLength(ours, theirs);
  for (let index = 0; index < sharedLength; index += 1) {
    const mine = ours[index] as TermHistory[number];
    const other = theirs[index] as TermHistory[number];
    if (mine.lsn !== other.lsn) return `term ${mine.term} starts at ${formatLsn(mine.lsn)} in our history but at ${formatLsn(other.lsn)} on the safekeeper`;
  }
  return null;
}

/**
 * Why a given vote cannot elect us, or null: its history must be ascending, below the vote's term (ours),
 * and start no term past its flush_lsn (an acceptor truncates the history it reports at its flush_lsn).
 */
export function voteProblem(vote: VoteResponse): string | null {
  const malformed = historyProblem(vote.termHistory);
  if (malformed !== null) return `term history: ${malformed}`;
  const last = vote.termHistory[vote.termHistory.length - 1];
  if (last === undefined) return null;
  if (last.term >= vote.term) return `term history reaches term ${last.term}, not below the vote's term ${vote.term}`;
  if (last.lsn > vote.flushLsn) return `term history starts term ${last.term} at ${formatLsn(last.lsn)}, past its flush_lsn ${formatLsn(vote.flushLsn)}`;
  return null;
}

export interface VoterRefusal {
  index: number;
  problem: string;
}

/**
 * Splits `voters` into those we elect with and those we refuse: a malformed vote (`voteProblem`), or one
 * whose history gives a term it shares with the donor another start LSN. The donor is chosen among the
 * well-formed votes and stays the donor of the kept ones (refusing voters lowers no maximum). Every kept
 * voter passes `startStreamingLsn` against a history built on that donor's.
 */
export function screenVoters(voters: readonly Voter[]): { voters: Voter[]; refused: VoterRefusal[] } {
  const refused: VoterRefusal[] = [];
  const wellFormed: Voter[] = [];
  for (const voter of voters) {
    const problem = voteProblem(voter.vote);
    if (problem === null) wellFormed.push(voter);
    else refused.push({ index: voter.index, problem });
  }
  if (wellFormed.length === 0) return { voters: [], refused };
  const donorHistory = chooseDonor(wellFormed).history;
  const kept: Voter[] = [];
  for (const voter of wellFormed) {
    const problem = sharedTermConflict(donorHistory, voter.vote.termHistory);
    if (problem === null) kept.push(voter);
    else refused.push({ index: voter.index, problem });
  }
  return { voters: kept, refused };
}
