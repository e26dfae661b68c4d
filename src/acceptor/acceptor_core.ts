/**
 * AcceptorCore: the state every acceptor rule shares (acceptor.ts, acceptor_election.ts). It holds the
 * two storage interfaces, the in-memory overlay of control-file LSNs that reach disk lazily (Neon's
 * TimelineMemState), the current term's start and the held commit candidate, and it owns the two
 * operations that change them: the commit_lsn rule and the one persist path.
 *
 * Commit rule: commit_lsn := min(max(candidate, commit_lsn), flush_lsn), so an AppendResponse never
 * reports a commit the local WAL does not hold. When that crosses term_start_lsn for the first time, the
 * control file is persisted *before* the in-memory commit_lsn moves, so no reply can show a commit_lsn ≥
 * term_start_lsn that a restart would lose (what `--sync-safekeepers` relies on).
 *
 * Invariants: the in-memory LSNs only grow (persists max-merge into them, since `updateInMemory` may run
 * while a persist is in flight); `raiseCommitLsn` is the only writer of the in-memory commit_lsn after
 * construction; a persist never lowers the term or commit_lsn and keeps the term history ascending.
 * Main thread, serial per timeline (see acceptor.ts). Abort: waits take `signal`; an abort between two
 * persists leaves a valid state, as a crash would.
 */
import { isDeepStrictEqual } from 'node:util';
import { AcceptorRefusedError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { type Lsn, lsnMax, lsnMin } from '../wal/lsn.js';
import type { AcceptorControlStore, AcceptorWalStore } from './acceptor_storage.js';
import type { MembershipConfiguration, TimelinePersistentState } from './state.js';
import { isValidHistory } from './term_history.js';

/** Control-file fields that advance in memory and reach disk lazily (Neon's TimelineMemState). */
export interface InMemoryLsns {
  commitLsn: Lsn;
  backupLsn: Lsn;
  peerHorizonLsn: Lsn;
  remoteConsistentLsn: Lsn;
}

/** One per Acceptor, which owns it; the election functions get it passed in. See the header. */
export class AcceptorCore {
  readonly control: AcceptorControlStore;
  readonly wal: AcceptorWalStore;
  /** Write only through `raiseCommitLsn` (commit) or by max-merge (the others). */
  readonly inMemory: InMemoryLsns;
  /** Where the current proposer's term starts; 0 until a ProposerElected in this process. */
  termStartLsn: Lsn = 0n;
  /** The highest commit_lsn heard since the last ProposerElected, not yet capped by flush_lsn. */
  commitCandidateLsn: Lsn = 0n;
  /** Aborted when the timeline shuts down: what a ProposerElected, once applying, runs under (acceptor_election.ts). */
  readonly lifetime: AbortSignal;
  readonly #onCommitAdvanced: (commitLsn: Lsn) => void;

  constructor(control: AcceptorControlStore, wal: AcceptorWalStore, onCommitAdvanced: (commitLsn: Lsn) => void, lifetime: AbortSignal) {
    const state = control.state;
    assert(isValidHistory(state.acceptorState.termHistory), 'stored term history is not ascending');
    assert(wal.flushLsn <= wal.writeLsn, 'flush_lsn ahead of write_lsn');
    this.control = control;
    this.wal = wal;
    this.#onCommitAdvanced = onCommitAdvanced;
    this.lifetime = lifetime;
    this.inMemory = {
      commitLsn: state.commitLsn,
      backupLsn: state.backupLsn,
      peerHorizonLsn: state.peerHorizonLsn,
      remoteConsistentLsn: state.remoteConsistentLsn,
    };
  }

  get term(): bigint {
    return this.control.state.acceptorState.term;
  }

  get mconf(): Readonly<MembershipConfiguration> {
    return this.control.state.mconf;
  }

  /** Protocol flush_lsn: durable record end, never below timeline_start_lsn (no WAL yet ≠ behind). */
  get flushLsn(): Lsn {
    return lsnMax(this.wal.flushLsn, this.control.state.timelineStartLsn);
  }

  /** The persisted state with the in-memory LSNs applied: what a persist would write now. */
  snapshot(): TimelinePersistentState {
    const next = structuredClone(this.control.state) as TimelinePersistentState;
    next.commitLsn = this.inMemory.commitLsn;
    next.backupLsn = this.inMemory.backupLsn;
    next.peerHorizonLsn = this.inMemory.peerHorizonLsn;
    next.remoteConsistentLsn = this.inMemory.remoteConsistentLsn;
    return next;
  }

  /** Refuses a message whose generation is not the stored one. */
  checkGeneration(what: string, generation: number): void {
    const stored = this.control.state.mconf.generation;
    if (generation !== stored) throw new AcceptorRefusedError(`refusing ${what} due to generation mismatch: request ${generation}, sk ${stored}`);
  }

  /** The commit_lsn a candidate yields now: min(max(candidate, commit), flush_lsn). */
  commitTarget(candidateLsn: Lsn): Lsn {
    return lsnMin(lsnMax(candidateLsn, this.inMemory.commitLsn), this.flushLsn);
  }

  /** Whether moving commit to what `candidateLsn` yields must persist first (it crosses term_start_lsn). */
  commitNeedsPersist(candidateLsn: Lsn): boolean {
    const commitLsn = this.commitTarget(candidateLsn);
    return commitLsn > this.inMemory.commitLsn && commitLsn >= this.termStartLsn && this.control.state.commitLsn < this.termStartLsn;
  }

  /** commit := min(max(candidate, commit), flush_lsn); persists first when it crosses term_start_lsn. Returns whether it persisted. */
  async advanceCommit(candidateLsn: Lsn, signal: AbortSignal): Promise<boolean> {
    this.commitCandidateLsn = lsnMax(this.commitCandidateLsn, candidateLsn);
    const commitLsn = this.commitTarget(this.commitCandidateLsn);
    if (commitLsn <= this.inMemory.commitLsn) return false; // flush_lsn below commit only for a timeline created with commit > start
    if (this.commitNeedsPersist(this.commitCandidateLsn)) {
      return this.persist((next) => void (next.commitLsn = commitLsn), signal); // durable before any reply shows it
    }
    this.raiseCommitLsn(commitLsn);
    return false;
  }

  /** The only writer of the in-memory commit_lsn after construction: max-merge, then tell `onCommitAdvanced`. */
  raiseCommitLsn(commitLsn: Lsn): void {
    if (commitLsn <= this.inMemory.commitLsn) return;
    this.inMemory.commitLsn = commitLsn;
    this.#onCommitAdvanced(commitLsn);
  }

  /** Persists the in-memory overlay plus `change`, then adopts the result (Neon's start/finish_change). Returns whether anything changed. */
  async persist(change: (next: TimelinePersistentState) => void, signal: AbortSignal): Promise<boolean> {
    const current = this.control.state;
    const next = this.snapshot();
    change(next);
    assert(next.acceptorState.term >= current.acceptorState.term, 'term went backwards');
    assert(isValidHistory(next.acceptorState.termHistory), 'term history not ascending');
    assert(next.commitLsn >= this.inMemory.commitLsn, 'commit_lsn went backwards');
    const changed = !isDeepStrictEqual(next, current);
    if (changed) await this.control.persist(next, signal);
    // Max-merge: updateInMemory() may have run while the persist was in flight; all four only grow.
    const inMemory = this.inMemory;
    this.raiseCommitLsn(next.commitLsn);
    inMemory.backupLsn = lsnMax(inMemory.backupLsn, next.backupLsn);
    inMemory.peerHorizonLsn = lsnMax(inMemory.peerHorizonLsn, next.peerHorizonLsn);
    inMemory.remoteConsistentLsn = lsnMax(inMemory.remoteConsistentLsn, next.remoteConsistentLsn);
    return changed;
  }
}
